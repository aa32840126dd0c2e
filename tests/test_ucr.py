"""The `ucr` task: UCR/UEA archive sets read with aeon's loaders, each with the archive's own split."""

from __future__ import annotations

import pytest
import torch

from harness.errors import HarnessError
from harness.tasks import load_task

pytest.importorskip("aeon", reason="the ucr task needs aeon: pip install 'harness[ucr]'")


@pytest.mark.parametrize(("dataset", "shape", "classes", "n_test"), [
    ("GunPoint", (150, 1), 2, 150),
    ("BasicMotions", (100, 6), 4, 40),
    ("ArrowHead", (251, 1), 3, 175),
    ("OSULeaf", (427, 1), 6, 242),
    ("ACSF1", (1460, 1), 10, 100),
])
def test_archive_sets_keep_their_own_test_split_and_carve_validation_from_train(dataset, shape, classes, n_test):
    task = load_task("ucr", dataset=dataset)
    assert (task.io, task.seq_len, task.input_size, task.output_size) == ("many-to-one", shape[0], shape[1], classes)
    assert len(task.x_test) == n_test  # the archive's test set, untouched
    assert set(task.y_val.tolist()) <= set(task.y_train.tolist())
    assert torch.allclose(task.x_train.mean((0, 1)), torch.zeros(shape[1]), atol=1e-4)


def test_an_archive_set_aeon_cannot_load_offline_is_one_line():
    with pytest.raises(HarnessError, match=r"^task\.dataset: aeon could not load 'NoSuchSet'.*offline, the sets in aeon's wheel"):
        load_task("ucr", dataset="NoSuchSet")


def test_japanese_vowels_series_of_different_lengths_are_padded_with_their_lengths():
    task = load_task("ucr", dataset="JapaneseVowels")
    assert task.variable_length and (task.input_size, task.output_size) == (12, 9) and len(task.x_test) == 370
    lengths = torch.cat([task.len_train, task.len_val, task.len_test])
    assert int(lengths.min()) == 7 and int(lengths.max()) == 29 == task.seq_len
    for x, n in zip(task.x_train, task.len_train, strict=True):  # zero after each series' end, not before
        assert not x[n:].any() and x[n - 1].any()


@pytest.mark.parametrize(("dataset", "published"), [
    ("GunPoint", 1 - 0.0867), ("ArrowHead", 1 - 0.2000), ("OSULeaf", 1 - 0.4793), ("ACSF1", 1 - 0.4600),
])
def test_one_nearest_neighbour_gives_the_archives_own_euclidean_accuracy(dataset, published):
    # The UCR archive's DataSummary.csv (Dau et al. 2019) states each set's 1-NN Euclidean test
    # error, train split against test split: the same figure from harness's task means the splits,
    # the series and the labels are the archive's (standardising one channel keeps every distance's
    # order; validation is part of the archive's train split).
    task = load_task("ucr", dataset=dataset)
    train = torch.cat([task.x_train, task.x_val]).flatten(1).double()
    labels = torch.cat([task.y_train, task.y_val])
    nearest = torch.cdist(task.x_test.flatten(1).double(), train).argmin(1)
    assert (labels[nearest] == task.y_test).double().mean().item() == pytest.approx(published, abs=5e-5)
