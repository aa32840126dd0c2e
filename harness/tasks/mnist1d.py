"""`mnist1d`: MNIST-1D (Greydanus 2020), generated offline by the `mnist1d` package.

Its defaults: 4,000 training and 1,000 test sequences of length 40, ten classes; read as 40
steps × 1 feature. Generated once and cached under the cache directory.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from harness.tasks import Task, register_task, split_train_val


def cache_dir() -> Path:
    return Path(os.environ.get("HARNESS_CACHE", Path.home() / ".cache" / "harness"))


def mnist1d_arrays(seed: int = 42) -> dict[str, torch.Tensor]:
    """MNIST-1D's arrays with the package's default arguments, cached as a tensor file."""
    path = cache_dir() / f"mnist1d-seed{seed}.pt"
    if path.exists():
        return torch.load(path, weights_only=True)
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.seed = seed
    data = make_dataset(args)
    arrays = {
        "x": torch.tensor(data["x"], dtype=torch.float32),
        "y": torch.tensor(data["y"], dtype=torch.long),
        "x_test": torch.tensor(data["x_test"], dtype=torch.float32),
        "y_test": torch.tensor(data["y_test"], dtype=torch.long),
        "templates_x": torch.tensor(data["templates"]["x"], dtype=torch.float32),
        "templates_y": torch.tensor(data["templates"]["y"], dtype=torch.long),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(arrays, tmp)
    tmp.replace(path)  # atomic: concurrent workers never read a half-written cache
    return arrays


@register_task
def mnist1d(val_size: float | int = 0.1, split_seed: int = 0, data_seed: int = 42) -> Task:
    """MNIST-1D, many-to-one: 40 steps × 1 → 10 classes."""
    a = mnist1d_arrays(data_seed)
    x_train, y_train, x_val, y_val = split_train_val(a["x"], a["y"], val_size=val_size, seed=split_seed)
    return Task(
        name="mnist1d", io="many-to-one",
        x_train=x_train.unsqueeze(-1), y_train=y_train, x_val=x_val.unsqueeze(-1), y_val=y_val,
        x_test=a["x_test"].unsqueeze(-1), y_test=a["y_test"],
        input_size=1, output_size=10, seq_len=a["x"].shape[1],
    )
