"""`ucr`: real time-series classification sets of the UCR/UEA archive, read with aeon's own loaders
(`pip install 'harness[ucr]'`). The sets aeon ships in its wheel load offline; any other archive
name goes through `aeon.datasets.load_classification`, which downloads it.

Each set keeps the archive's own train/test split (the test split is the archive's test set,
measured once); validation is carved from the archive's train split (`val_size`, stratified by
class, `split_seed`). Each channel is standardised with the training split's mean and standard
deviation (over real steps). aeon gives (N, channels, T): harness reads (N, T, channels),
many-to-one, one class per series (classes in sorted order); series of different lengths
(JapaneseVowels) are zero-padded and carry their lengths.
"""

from __future__ import annotations

import importlib
import warnings

import numpy as np
import torch

from harness.errors import HarnessError
from harness.tasks import Task, positive_int, register_task

# Archive name → aeon's loader of the copy in its wheel (offline).
BUNDLED = {
    "ACSF1": "load_acsf1", "ArrowHead": "load_arrow_head", "BasicMotions": "load_basic_motions",
    "GunPoint": "load_gunpoint", "ItalyPowerDemand": "load_italy_power_demand", "JapaneseVowels": "load_japanese_vowels",
    "OSULeaf": "load_osuleaf",
}


def _aeon_datasets():
    try:
        return importlib.import_module("aeon.datasets")
    except ImportError:
        raise HarnessError("task.name: 'ucr' reads the archive with aeon, which is not installed: pip install 'harness[ucr]'") from None


def load_archive(dataset: str, split: str):
    """(list of (channels, T) arrays, labels) of one split, from aeon."""
    datasets = _aeon_datasets()
    try:
        if dataset in BUNDLED:
            with warnings.catch_warnings():
                # aeon 1.6 warns that it will drop OSULeaf and ACSF1 from its wheel in 1.7 (hence
                # the extra's bound below 1.7): said on every load, it says nothing to a user here.
                warnings.simplefilter("ignore", FutureWarning)
                x, y = getattr(datasets, BUNDLED[dataset])(split=split)
        else:
            x, y = datasets.load_classification(dataset, split=split)
    except Exception as e:  # not bundled and offline, or not an archive name
        raise HarnessError(f"task.dataset: aeon could not load {dataset!r} ({' '.join(str(e).split())[:160]}); offline, "
                           f"the sets in aeon's wheel are {', '.join(BUNDLED)}") from None
    return [np.asarray(s, dtype=np.float32) for s in x], np.asarray(y)


@register_task
def ucr(dataset: str = "GunPoint", val_size: float | int = 0.2, split_seed: int = 0) -> Task:
    """A UCR/UEA archive set, many-to-one: `dataset` (GunPoint: 150 steps × 1 → 2 classes), the archive's train/test split, via aeon.

    Offline: ACSF1, ArrowHead, BasicMotions, GunPoint, ItalyPowerDemand, JapaneseVowels (7–29
    steps: zero-padded, with each series' length), OSULeaf, from aeon's wheel.
    """
    from harness.tasks.files import pad, split_indices, standardise  # the split and padding the files task makes

    positive_int("split_seed", split_seed, 0)

    x_train, y_train = load_archive(dataset, "train")
    x_test, y_test = load_archive(dataset, "test")
    classes = sorted(set(y_train.tolist()) | set(y_test.tolist()))
    index = {c: i for i, c in enumerate(classes)}
    # aeon gives (channels, T) per series: harness reads (T, channels), padded to the longest
    x, lengths = pad([s.T for s in (*x_train, *x_test)])
    y = torch.tensor([index[c] for c in (*y_train.tolist(), *y_test.tolist())])
    n = len(x_train)
    train, val = split_indices(n, y[:n].numpy(), val_size, split_seed, "val_size")
    test = np.arange(n, len(x))
    x = standardise(x, lengths, train)
    which = (("train", train), ("val", val), ("test", test))
    parts = {f"x_{k}": x[i] for k, i in which} | {f"y_{k}": y[i] for k, i in which}
    if lengths is not None:
        parts |= {f"len_{k}": lengths[i] for k, i in which}
    return Task(name="ucr", io="many-to-one", **parts, input_size=x.shape[-1], output_size=len(classes), seq_len=x.shape[1])
