"""`adding` and `copy`: the generated long-range problems, the same data for the same seed.

Both draw training and test sets from separate seeded streams, so the test set does not change
when `train_size` does; validation is carved from the training set (`split_seed`). Each
reports the loss of the best predictor that ignores its input as `Task.baseline`, measured on
the generated validation data: a model only learns the task once it beats that number.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from harness.tasks import Task, cross_entropy, mean_baseline, positive_int, register_task, split_train_val

# copy: class 0 is the blank, 1..8 the symbols, 9 the delimiter (inputs only).
N_SYMBOLS, N_CATEGORIES, BLANK, DELIMITER = 10, 8, 0, 9


def _rngs(seed: int) -> tuple[np.random.Generator, np.random.Generator]:
    train, test = np.random.SeedSequence(seed).spawn(2)
    return np.random.default_rng(train), np.random.default_rng(test)


def adding_data(n: int, seq_len: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """x (n, seq_len, 2): values U(0, 1) and a marker channel with one 1 in each half;
    y (n, 1): the sum of the two marked values."""
    values = rng.random((n, seq_len), dtype=np.float32)
    half = seq_len // 2
    first = rng.integers(0, half, n)
    second = rng.integers(half, seq_len, n)
    markers = np.zeros((n, seq_len), dtype=np.float32)
    rows = np.arange(n)
    markers[rows, first] = markers[rows, second] = 1.0
    y = values[rows, first] + values[rows, second]
    return torch.from_numpy(np.stack([values, markers], -1)), torch.from_numpy(y[:, None])


def copy_data(n: int, delay: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """x (n, delay + 20, 10) one-hot; y (n, delay + 20) class indices (see module constants)."""
    steps = delay + 2 * N_SYMBOLS
    symbols = rng.integers(1, N_CATEGORIES + 1, (n, N_SYMBOLS))
    seq = np.full((n, steps), BLANK, dtype=np.int64)
    seq[:, :N_SYMBOLS] = symbols
    seq[:, N_SYMBOLS + delay - 1] = DELIMITER
    target = np.full((n, steps), BLANK, dtype=np.int64)
    target[:, -N_SYMBOLS:] = symbols
    x = F.one_hot(torch.from_numpy(seq), N_CATEGORIES + 2).float()
    return x, torch.from_numpy(target)


def _splits(make, train_size: int, test_size: int, val_size: float | int, data_seed: int, split_seed: int) -> dict:
    """Task fields x_/y_ train/val/test of a generated task: `make(n, rng)` draws train and test
    from separate seeded streams, and validation is carved from train."""
    positive_int("train_size", train_size, 2)
    positive_int("test_size", test_size)
    train_rng, test_rng = _rngs(data_seed)
    x, y = make(train_size, train_rng)
    x_test, y_test = make(test_size, test_rng)
    x_train, y_train, x_val, y_val = split_train_val(x, y, val_size=val_size, seed=split_seed)
    return dict(x_train=x_train, y_train=y_train, x_val=x_val, y_val=y_val, x_test=x_test, y_test=y_test)


@register_task
def adding(
    seq_len: int = 100, train_size: int = 10_000, test_size: int = 1_000,
    val_size: float | int = 0.1, data_seed: int = 0, split_seed: int = 0,
) -> Task:
    """Adding problem, many-to-one: 100 steps × 2 → 1 value (steps: seq_len), MSE; baseline ≈ 0.167.

    Hochreiter & Schmidhuber (1997), in the form of Le et al. (2015) and Arjovsky et al. (2016):
    channel 0 holds values drawn from U(0, 1), channel 1 marks one step in the first half and
    one in the second; the target is the sum of the two marked values. Predicting 1 (the mean)
    gives MSE 1/6, the baseline.
    """
    positive_int("seq_len", seq_len, 2)
    d = _splits(lambda n, rng: adding_data(n, seq_len, rng), train_size, test_size, val_size, data_seed, split_seed)
    return Task(
        name="adding", io="many-to-one", **d,
        input_size=2, output_size=1, seq_len=seq_len, loss="mse", metric="mse",
        baseline=mean_baseline(d["y_train"], d["y_val"]),
    )


def copy_baseline(y_train: torch.Tensor, y_val: torch.Tensor) -> float:
    """Cross-entropy on validation of the memoryless predictor: at each step, the training
    targets' class frequencies at that step (blanks, then uniform over the 8 symbols)."""
    n_classes = N_CATEGORIES + 1
    freq = F.one_hot(y_train, n_classes).float().mean(0)  # (steps, classes)
    logits = freq.clamp_min(1e-12).log().expand(len(y_val), -1, -1)
    return cross_entropy(logits, y_val).item()


@register_task
def copy(
    delay: int = 100, train_size: int = 10_000, test_size: int = 1_000,
    val_size: float | int = 0.1, data_seed: int = 0, split_seed: int = 0,
) -> Task:
    """Copy memory, many-to-many: 120 steps × 10 → 120 steps × 9 classes (steps: delay + 20), cross-entropy.

    Arjovsky et al. (2016): 10 symbols drawn from 8 categories, `delay` - 1 blanks, a delimiter,
    then 10 blanks during which the model must reproduce the symbols in order. The loss is the
    per-step cross-entropy over all delay + 20 steps; the metric (`symbol_accuracy`) counts only
    the reproduced symbols. The memoryless baseline is 10·log 8 / (delay + 20).
    """
    positive_int("delay", delay)
    d = _splits(lambda n, rng: copy_data(n, delay, rng), train_size, test_size, val_size, data_seed, split_seed)
    return Task(
        name="copy", io="many-to-many", **d,
        input_size=N_CATEGORIES + 2, output_size=N_CATEGORIES + 1, seq_len=delay + 2 * N_SYMBOLS,
        loss="cross_entropy", metric="symbol_accuracy", baseline=copy_baseline(d["y_train"], d["y_val"]),
    )
