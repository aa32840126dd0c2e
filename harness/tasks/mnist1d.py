"""`mnist1d` and `mnist1d-generate`: MNIST-1D (Greydanus 2020), offline by the `mnist1d` package.

`mnist1d` is the dataset with the package's default arguments: 4,000 training and 1,000 test
sequences of length 40, ten classes; read as 40 steps × 1 feature. Generated once and cached
under the cache directory (`HARNESS_CACHE`, default ~/.cache/harness).

`mnist1d-generate` runs the other way: from a class label, an amplitude and an onset, produce
the 40-step signal of that digit's MNIST-1D template.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from harness.tasks import Task, mean_baseline, positive_int, register_task, split_train_val


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


GEN_STEPS, GEN_WIDTH = 40, 20  # output steps; steps the template spans once dilated


def template_signals(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n random (class, scale, onset) conditions and the signals they render.

    x (n, 12): class one-hot, scale − 1 (scale ∈ [0.8, 1.2], MNIST-1D's `scale_coeff`), onset
    / 20; y (n, 40, 1): the class's template (whitened, linearly dilated to 20 steps) times the
    scale, starting at the onset, zero elsewhere.
    """
    from mnist1d.data import get_templates

    g = torch.Generator().manual_seed(seed)
    templates = torch.tensor(get_templates()["x"], dtype=torch.float32) * 6.0  # undo the package's /6
    dilated = torch.nn.functional.interpolate(templates[:, None], size=GEN_WIDTH, mode="linear", align_corners=True)[:, 0]
    cls = torch.randint(0, len(templates), (n,), generator=g)
    scale = 0.8 + 0.4 * torch.rand(n, generator=g)
    onset = torch.randint(0, GEN_STEPS - GEN_WIDTH + 1, (n,), generator=g)
    rel = torch.arange(GEN_STEPS) - onset[:, None]  # position inside the template, per step
    inside = (rel >= 0) & (rel < GEN_WIDTH)
    y = torch.where(inside, dilated[cls[:, None], rel.clamp(0, GEN_WIDTH - 1)], 0.0) * scale[:, None]
    x = torch.cat([
        torch.nn.functional.one_hot(cls, len(templates)).float(),
        (scale - 1)[:, None], (onset.float() / (GEN_STEPS - GEN_WIDTH))[:, None],
    ], 1)
    return x, y.unsqueeze(-1)


@register_task
def mnist1d_generate(
    train_size: int = 4_000, test_size: int = 1_000, val_size: float | int = 0.1, data_seed: int = 0, split_seed: int = 0
) -> Task:
    """MNIST-1D templates, one-to-many: 12 (class one-hot, scale, onset) → 40 steps × 1, MSE."""
    positive_int("train_size", train_size, 2)
    positive_int("test_size", test_size)
    train_seed, test_seed = torch.randint(0, 2**62, (2,), generator=torch.Generator().manual_seed(data_seed)).tolist()
    x, y = template_signals(train_size, train_seed)
    x_test, y_test = template_signals(test_size, test_seed)
    x_train, y_train, x_val, y_val = split_train_val(x, y, val_size=val_size, seed=split_seed)
    return Task(
        name="mnist1d-generate", io="one-to-many",
        x_train=x_train, y_train=y_train, x_val=x_val, y_val=y_val, x_test=x_test, y_test=y_test,
        input_size=x.shape[1], output_size=1, seq_len=GEN_STEPS, loss="mse", metric="mse",
        baseline=mean_baseline(y_train, y_val),
    )
