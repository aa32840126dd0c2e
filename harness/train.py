"""The one training loop, shared by every task and architecture.

`fit` trains a model on a task's tensors, evaluates validation every epoch, restores the
epoch the validation metric chose, measures the test split once at the end, then the model's
inference latency and the run's memory and FLOP rate (`harness.speed`). It knows nothing of
Optuna or MLflow: callers pass `on_epoch`, which may raise (to prune) and which is where
tracking logs, and optionally a `GradStats` (`harness.gradients`) that records gradient
statistics on its steps. A non-finite loss or gradient raises `Diverged` (see `FiniteCheck`).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from harness import speed
from harness.archs import count_params, create_model, model_flops
from harness.config import Experiment, TrainSettings
from harness.errors import HarnessError
from harness.gradients import Diverged, FiniteCheck, GradStats, clip_, grad_norm
from harness.tasks import Task, load_task

__all__ = ["Diverged", "TrialResult", "build", "evaluate", "fit", "make_optimizer", "resolve_device"]


@dataclass
class TrialResult:
    """What one training run produced; tracking logs it, the sweep returns its objective."""

    metric: str
    maximize: bool
    n_params: int
    flops_per_sample: int | None
    history: list[dict[str, float]] = field(default_factory=list)  # one dict per epoch
    best_epoch: int = 0
    best_val: float = math.nan
    test_loss: float = math.nan
    test_metric: float = math.nan
    steps: int = 0  # optimiser steps taken
    samples_trained: int = 0
    train_time_s: float = 0.0  # time in training steps only (no evaluation)
    total_time_s: float = 0.0
    speed: dict[str, float] = field(default_factory=dict)  # latency, memory, FLOP rate (harness.speed)
    run_id: str | None = None  # set by tracking

    def final_metrics(self) -> dict[str, float]:
        m = self.metric
        return {
            "test_loss": self.test_loss,
            f"test_{m}": self.test_metric,
            f"best_val_{m}": self.best_val,
            "best_epoch": float(self.best_epoch),
            # the last epoch's rate, past the first epoch's warm-up (MLflow's latest value too)
            "train_samples_per_s": self.history[-1]["train_samples_per_s"] if self.history else math.nan,
            "total_time_s": self.total_time_s,
            **self.speed,
        }


def flush_denormals() -> None:
    """Treat subnormal floats as zero on the CPU. Vanishing gradients through time end up as
    subnormals, which x86 cores process ~100x slower: without this a long many-to-one RNN
    trains 2-3x slower and the speed comparison favours whichever model vanishes least. Set
    before torch starts its threads (a later call only covers the calling thread)."""
    torch.set_flush_denormal(True)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise HarnessError(f"train.device: {name!r} is not a device (auto, cpu, cuda, cuda:N, mps)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise HarnessError(f"train.device: {name!r} asked for, but no CUDA GPU is visible")
    return dev


def build(exp: Experiment) -> tuple[Task, nn.Module]:
    """Load the experiment's task and build its model (seeded by `train.seed`)."""
    task = load_task(exp.task.name, **exp.task.options())
    torch.manual_seed(exp.train.seed)
    model = create_model(
        exp.model.arch, input_size=task.input_size, output_size=task.output_size,
        io=task.io, seq_len=task.seq_len, **exp.model.overrides(),
    )
    return task, model


def make_optimizer(params, cfg: TrainSettings) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


@torch.no_grad()
def evaluate(model: nn.Module, task: Task, which: str, device: torch.device, batch_size: int) -> tuple[float, float]:
    """Mean loss and metric of a split, in eval mode."""
    model.eval()
    x, y = task.split(which)
    loss = metric = 0.0
    for i in range(0, len(x), batch_size):
        xb, yb = x[i : i + batch_size].to(device), y[i : i + batch_size].to(device)
        out = model(xb)
        n = len(xb)
        loss += task.loss_fn(out, yb).item() * n
        metric += task.metric_fn(out, yb).item() * n
    return loss / len(x), metric / len(x)


def fit(
    model: nn.Module,
    task: Task,
    cfg: TrainSettings,
    *,
    device: torch.device,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    grad_stats: GradStats | None = None,
) -> TrialResult:
    """Train, select the best validation epoch, test once. Raises `Diverged` on NaN/inf.

    `on_epoch(epoch, record)` runs after each epoch's validation; `grad_stats` records on its
    steps (its probe forward then replaces the plain one: same output, every h_t kept).
    """
    start = time.perf_counter()
    model.to(device)
    speed.reset_peak_memory(device)
    result = TrialResult(
        metric=task.metric, maximize=task.maximize,
        n_params=count_params(model), flops_per_sample=model_flops(model, task.seq_len),
    )
    x_train, y_train = task.x_train.to(device), task.y_train.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(params, cfg)
    check = FiniteCheck(device)
    gen = torch.Generator().manual_seed(cfg.seed)
    best_state = None
    n, m, step = len(x_train), task.metric, 0
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        t0 = time.perf_counter()
        order = torch.randperm(n, generator=gen).to(device)
        total_loss = total_metric = torch.zeros((), device=device)
        for i in range(0, n, cfg.batch_size):
            step += 1
            idx = order[i : i + cfg.batch_size]
            xb, yb = x_train[idx], y_train[idx]
            probing = grad_stats is not None and grad_stats.due(step)
            out, hidden = grad_stats.forward(model, xb) if probing else (model(xb), None)
            loss = task.loss_fn(out, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            norm = grad_norm(params)
            if grad_stats is not None:
                grad_stats.observe(norm)
            failure = check.update(epoch, step, loss, norm)
            if grad_stats is not None and (probing or (failure is not None and failure.step == step)):
                grad_stats.record(step, epoch, norm, hidden)
            if failure is not None:
                raise failure
            if cfg.clip_norm is not None:
                clip_(params, cfg.clip_norm, norm)
            opt.step()
            # Accumulate on device: no host sync per step.
            total_loss = total_loss + loss.detach() * len(idx)
            total_metric = total_metric + task.metric_fn(out.detach(), yb) * len(idx)
        failure = check.flush()
        if failure is not None:
            raise failure
        train_loss = total_loss.item() / n
        train_time = time.perf_counter() - t0
        result.steps, result.samples_trained, result.train_time_s = step, result.samples_trained + n, result.train_time_s + train_time
        val_loss, val_metric = evaluate(model, task, "val", device, cfg.eval_batch_size)
        record = {
            "train_loss": train_loss, f"train_{m}": total_metric.item() / n,
            "val_loss": val_loss, f"val_{m}": val_metric,
            "lr": opt.param_groups[0]["lr"],
            "epoch_time_s": time.perf_counter() - t0,
            "train_samples_per_s": n / train_time,
        }
        result.history.append(record)
        better = val_metric > result.best_val if task.maximize else val_metric < result.best_val
        if best_state is None or better:
            result.best_val, result.best_epoch = val_metric, epoch
            best_state = copy.deepcopy(model.state_dict())
        if on_epoch is not None:
            on_epoch(epoch, record)
    model.load_state_dict(best_state)
    result.test_loss, result.test_metric = evaluate(model, task, "test", device, cfg.eval_batch_size)
    result.speed = speed.inference_latency(model, task.x_test[: cfg.batch_size], device)
    result.speed["peak_memory_mb"] = speed.peak_memory_mb(device)
    result.total_time_s = time.perf_counter() - start
    result.speed |= speed.training_speed(result.flops_per_sample, record["train_samples_per_s"], device)
    return result
