"""What the training loop tells the code that watches it, and what it returns.

`fit` (harness.train) calls each `Callback` in the order given: `on_fit_start` once the model is
on its device, `on_epoch_end` after each epoch's validation, `on_grad_stats` for each gradient
record (harness.gradients), then `on_fit_end` with the `TrialResult`, or `on_fit_failure` when
anything raised (a callback included: raising `harness.errors.Pruned` stops a run on purpose).
Tracking (MLflow) and a sweep's pruning are callbacks; the loop knows neither.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # type names only: this module imports no torch
    from harness.gradflow import GradFlow
    from harness.gradients import GradStats


@dataclass
class TrialResult:
    """What one training run produced: tracking logs it, the sweep takes its objective from it."""

    metric: str
    maximize: bool
    n_params: int
    flops_per_sample: int | None
    kernel: str = "none"  # the recurrent layers' kernel path (harness.kernels)
    history: list[dict[str, float]] = field(default_factory=list)  # one dict per epoch
    best_epoch: int = 0
    best_val: float = math.nan
    epochs_run: int = 0
    stopped_early: bool = False  # train.patience ended it before the cap
    # It ran to the cap with its best epoch among the last max(patience, a tenth of the epochs),
    # or its validation curve still improving over them: the budget, not the architecture, set
    # its score.
    budget_limited: bool = False
    clip_share: float = math.nan  # share of all optimiser steps that train.clip_norm clipped
    test_loss: float = math.nan
    test_metric: float = math.nan
    test_per_example: list[float] = field(default_factory=list)  # the test metric of each test example
    steps: int = 0  # optimiser steps taken
    samples_trained: int = 0
    train_time_s: float = 0.0  # time in training steps only (no evaluation)
    total_time_s: float = 0.0
    speed: dict[str, float] = field(default_factory=dict)  # throughput, latency, memory, FLOP rate (harness.speed)
    contended: bool = False  # every epoch that sets the throughput shared the cores (harness.speed)
    gradflow: GradFlow | None = None  # the chosen checkpoint's gradient flow (harness.gradflow)
    # Where the run's wall time went, by phase (seconds): logged as time_<phase>_s (TIME_PHASES)
    timings: dict[str, float] = field(default_factory=dict)

    def final_metrics(self) -> dict[str, float]:
        m = self.metric
        return {
            "test_loss": self.test_loss,
            f"test_{m}": self.test_metric,
            f"best_val_{m}": self.best_val,
            "best_epoch": float(self.best_epoch),
            "epochs_run": float(self.epochs_run),
            "stopped_early": float(self.stopped_early),
            "budget_limited": float(self.budget_limited),
            "clip_share": self.clip_share,
            # the median over epochs 2..E that had the cores to themselves (harness.speed)
            "train_samples_per_s": self.speed.get("train_samples_per_s", math.nan),
            "total_time_s": self.total_time_s,
            **self.speed,
            **(self.gradflow.metrics() if self.gradflow is not None else {}),
            **self.time_metrics(),
        }

    def time_metrics(self) -> dict[str, float]:
        """`time_<phase>_s` for the phases timed so far (training steps from `train_time_s`)."""
        return {f"time_{k}_s": v for k, v in {**self.timings, "train": self.train_time_s}.items()}


# A run's phases, each logged as time_<phase>_s: the callbacks' start (params, datasets), training
# steps, validation, the callbacks after each epoch (metrics to MLflow, a pruner's report),
# gradient flow, test, latency, step benchmark, matmul peak; tracking adds artifacts and model.
TIME_PHASES = ("start", "train", "validate", "epoch_callbacks", "gradflow", "test", "latency", "bench", "peak")


def budget_window(epochs: int, patience: int | None) -> int:
    """The last epochs a run that reached the `epochs` cap is judged on for still improving:
    max(patience, a tenth of the cap, 1). The run's own `budget_limited` and the report's
    margin-aware reading (harness.report.stats.still_improving) use the same window."""
    return max(patience or 0, math.ceil(epochs / 10), 1)


@dataclass(frozen=True)
class FitStart:
    """The run about to train: its model (on `device`), task and gradient recorder."""

    model: Any  # torch.nn.Module
    task: Any  # harness.tasks.Task
    device: Any  # torch.device
    grad_stats: GradStats | None
    n_params: int
    flops_per_sample: int | None
    kernel: str = "none"  # the recurrent layers' kernel path (harness.kernels)
    # What the registries say of the run (harness.runner.registry_facts), for tracking to log
    # without looking them up: the task's defaults for unset options, the family, the metric's scale.
    facts: dict[str, Any] = field(default_factory=dict)


class Callback:
    """Override what you need; every hook does nothing by default."""

    def on_fit_start(self, start: FitStart) -> None:
        pass

    def on_epoch_end(self, epoch: int, record: dict[str, float]) -> None:
        pass

    def on_grad_stats(self, step: int, values: dict[str, float]) -> None:
        pass

    def on_fit_end(self, result: TrialResult) -> None:
        pass

    def on_fit_failure(self, error: BaseException, result: TrialResult) -> None:
        """`result` holds what the run did before `error` (its history so far)."""
