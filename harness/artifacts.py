"""A run's files, written into a temporary folder and logged as MLflow artifacts in one call:
settings.json, learning_curve.png, gradflow.csv and gradflow.png (harness.gradflow's measurement),
checkpoint.pt and test_per_example.npy, each as its `[tracking]` setting asks."""

from __future__ import annotations

import csv
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from mlflow.tracking import MlflowClient

from harness.config import Experiment, masked
from harness.gradflow import METRICS, GradFlow

__all__ = ["learning_curve", "plot_gradflow", "write_artifacts", "write_gradflow"]


def learning_curve(history: list[dict[str, float]], metric: str, best_epoch: int, path: Path) -> Path:
    """Loss and metric per epoch, train and validation, the chosen epoch marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = range(1, len(history) + 1)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, key in zip(axes, ("loss", metric), strict=True):
        for split in ("train", "val"):
            ax.plot(epochs, [h[f"{split}_{key}"] for h in history], marker="o", ms=3, label=split)
        if best_epoch:
            ax.axvline(best_epoch, color="grey", ls=":", label=f"chosen (epoch {best_epoch})")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(key)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_artifacts(
    client: MlflowClient, run_id: str, exp: Experiment, *, metric: str, history: list[dict[str, float]],
    best_epoch: int, flow: GradFlow | None, model: torch.nn.Module | None, test_per_example: list[float] = (),
    plots: bool = True,
) -> None:
    """The run's files, each as its `[tracking]` setting asks; `model` None: no checkpoint;
    `plots` False: no PNGs (a search's trials: drawing them cost more than the rest together)."""
    cfg = exp.tracking
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if cfg.settings_file:
            settings = exp.model_dump(mode="json")
            if settings["sweep"].get("storage"):  # a database password never reaches MLflow
                settings["sweep"]["storage"] = masked(settings["sweep"]["storage"])
            (folder / "settings.json").write_text(json.dumps(settings, indent=2))
        if cfg.learning_curve and history and plots:
            learning_curve(history, metric, best_epoch, folder / "learning_curve.png")
        if flow is not None:  # measured only when `tracking.gradflow` is on
            write_gradflow(flow, folder, plot=plots)
        if cfg.checkpoint and model is not None:
            # load with torch.load(path, weights_only=True): plain tensors only, no pickled code
            torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, folder / "checkpoint.pt")
        if cfg.test_per_example and len(test_per_example):
            np.save(folder / "test_per_example.npy", np.asarray(test_per_example, dtype=np.float32))
        if any(folder.iterdir()):
            client.log_artifacts(run_id, tmp)


def write_gradflow(flow: GradFlow, folder: Path, plot: bool = True) -> list[Path]:
    """gradflow.csv (direction, quantity, t1 … tT; an input read once fills t1 only) and, with
    `plot`, gradflow.png (the profiles on a log scale, one panel per direction and one for the input)."""
    folder = Path(folder)
    steps = max(len(p) for *_, p in flow.rows())
    csv_path = folder / "gradflow.csv"
    with csv_path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["direction", "quantity", *(f"t{t}" for t in range(1, steps + 1))])
        for direction, quantity, profile in flow.rows():
            w.writerow([direction, quantity, *(f"{v:.6g}" for v in profile), *[""] * (steps - len(profile))])
    return [csv_path, plot_gradflow(flow, folder / "gradflow.png")] if plot else [csv_path]


def plot_gradflow(flow: GradFlow, path: Path) -> Path:
    """The median profiles against t on a log scale, each state panel titled with its rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = flow.rows()
    metrics = flow.metrics()
    fig, axes = plt.subplots(1, len(rows), figsize=(5 * len(rows), 3.8), squeeze=False)
    for ax, (direction, quantity, profile) in zip(axes[0], rows, strict=True):
        ax.plot(range(1, len(profile) + 1), profile, marker="o" if len(profile) < 30 else None, ms=3)
        ax.set_yscale("log")
        ax.set_xlabel("time step t")
        symbol = "s_t" if quantity == "state" else "x_t"
        title = f"‖∂L/∂{symbol}‖, {direction}" if quantity == "state" else f"‖∂L/∂{symbol}‖ (input)"
        key = METRICS.get(direction) if quantity == "state" else None
        if key in metrics:
            title += f"\nrate {metrics[key]:.3g}/step (IQR {metrics[key + '_iqr']:.3g})"
        ax.set_ylabel("median over examples (log)")
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
