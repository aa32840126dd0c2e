"""`ucr`: real time-series classification sets of the UCR/UEA archive, read with aeon's own loaders
(`pip install 'harness[ucr]'`). The sets aeon ships in its wheel load offline; any other archive
name goes through `aeon.datasets.load_classification`, which downloads it.

Each set keeps the archive's own train/test split (the test split is the archive's test set,
measured once); validation is carved from the archive's train split (`val_size`, stratified by
class, `split_seed`). Each channel is standardised with the training split's mean and standard
deviation. aeon gives (N, channels, T): harness reads (N, T, channels), many-to-one, one class
per series (classes in sorted order).
"""

from __future__ import annotations

import importlib

import numpy as np
import torch

from harness.errors import HarnessError
from harness.tasks import Task, register_task

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

    Offline: ACSF1, ArrowHead, BasicMotions, GunPoint, ItalyPowerDemand, OSULeaf (fixed length)
    from aeon's wheel; JapaneseVowels' series vary in length, which this harness does not read yet.
    """
    from harness.tasks.files import _split  # the stratified split the files task makes

    x_train, y_train = load_archive(dataset, "train")
    x_test, y_test = load_archive(dataset, "test")
    lengths = sorted({s.shape[-1] for s in (*x_train, *x_test)})
    if len(lengths) > 1:
        raise HarnessError(f"task.dataset: {dataset}'s series have {lengths[0]} to {lengths[-1]} steps; this harness reads "
                           "series of one length")
    classes = sorted(set(y_train.tolist()) | set(y_test.tolist()))
    index = {c: i for i, c in enumerate(classes)}
    x = torch.from_numpy(np.stack(x_train)).transpose(1, 2).contiguous()  # (N, T, channels)
    xt = torch.from_numpy(np.stack(x_test)).transpose(1, 2).contiguous()
    y = torch.tensor([index[c] for c in y_train.tolist()])
    yt = torch.tensor([index[c] for c in y_test.tolist()])
    train, val = _split(len(x), y.numpy(), val_size, split_seed, "val_size")
    mean, std = x[train].mean((0, 1)), x[train].std((0, 1)).clamp_min(1e-8)
    x, xt = (x - mean) / std, (xt - mean) / std
    return Task(name="ucr", io="many-to-one", x_train=x[train], y_train=y[train], x_val=x[val], y_val=y[val],
                x_test=xt, y_test=yt, input_size=x.shape[-1], output_size=len(classes), seq_len=x.shape[1])
