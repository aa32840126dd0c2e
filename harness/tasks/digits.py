"""`digits` and `digits-flat`: scikit-learn's bundled 8×8 handwritten digits, for quick checks.

1,797 images with 17 grey levels, scaled to [0, 1]. scikit-learn ships no test split, so one
is carved with its own seed (`test_seed`) before validation is carved from the rest
(`split_seed`): changing the validation split never moves the test set.
"""

from __future__ import annotations

import torch

from harness.tasks import Task, register_task, split_train_val


def _splits(test_size: float | int, test_seed: int, val_size: float | int, split_seed: int):
    from sklearn.datasets import load_digits  # scikit-learn is slow to import; only when used

    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32).div_(16.0)
    y = torch.tensor(d.target, dtype=torch.long)
    x, y, x_test, y_test = split_train_val(x, y, val_size=test_size, seed=test_seed, field="test_size")
    return (*split_train_val(x, y, val_size=val_size, seed=split_seed), x_test, y_test)


def _rows(x: torch.Tensor) -> torch.Tensor:
    return x.view(-1, 8, 8)  # each image row is one step


@register_task
def digits(test_size: float | int = 0.2, test_seed: int = 0, val_size: float | int = 0.1, split_seed: int = 0) -> Task:
    """8×8 digits (scikit-learn), many-to-one: 8 steps × 8 → 10 classes."""
    x_train, y_train, x_val, y_val, x_test, y_test = _splits(test_size, test_seed, val_size, split_seed)
    return Task(
        name="digits", io="many-to-one",
        x_train=_rows(x_train), y_train=y_train, x_val=_rows(x_val), y_val=y_val, x_test=_rows(x_test), y_test=y_test,
        input_size=8, output_size=10, seq_len=8,
    )


@register_task
def digits_flat(test_size: float | int = 0.2, test_seed: int = 0, val_size: float | int = 0.1, split_seed: int = 0) -> Task:
    """8×8 digits (scikit-learn), one-to-one: 64 features → 10 classes (no time axis)."""
    x_train, y_train, x_val, y_val, x_test, y_test = _splits(test_size, test_seed, val_size, split_seed)
    return Task(
        name="digits-flat", io="one-to-one",
        x_train=x_train, y_train=y_train, x_val=x_val, y_val=y_val, x_test=x_test, y_test=y_test,
        input_size=64, output_size=10, seq_len=1,
    )
