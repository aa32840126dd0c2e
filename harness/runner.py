"""One trial: build the task and the model, then run the one training loop with the callbacks
the caller gives (tracking, a sweep's pruning). Imports neither Optuna nor MLflow."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from harness.archs import create_model
from harness.callbacks import Callback, TrialResult
from harness.config import Experiment
from harness.errors import HarnessError
from harness.gradients import GradStats, default_every
from harness.precision import check_precision
from harness.tasks import Task, shared_task
from harness.train import fit


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise HarnessError(f"train.device: {name!r} is not a device (auto, cpu, cuda, cuda:N, mps)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise HarnessError(f"train.device: {name!r} asked for, but no CUDA GPU is visible")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise HarnessError(f"train.device: {name!r} asked for, but Apple's MPS is not available here")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise HarnessError(f"train.device: {name!r} asked for, but only cuda:0 to cuda:{torch.cuda.device_count() - 1} are visible")
    return dev


def build(exp: Experiment) -> tuple[Task, nn.Module]:
    """The experiment's task (loaded once per process: `harness.tasks.shared_task`) and its model,
    built now (seeded by `train.seed`)."""
    task = shared_task(exp.task.name, **exp.task.options())
    torch.manual_seed(exp.train.seed)
    model = create_model(
        exp.model.arch, input_size=task.input_size, output_size=task.output_size,
        io=task.io, seq_len=task.seq_len, **exp.model.overrides(),
    )
    return task, model


def run_trial(
    exp: Experiment,
    callbacks: Sequence[Callback] = (),
    *,
    built: tuple[Task, nn.Module] | None = None,
    device: str | None = None,
) -> TrialResult:
    """Train `exp` once and return its result. `built`: the task and model already made by
    `build(exp)` (a caller that validates before writing anything passes them on rather than
    loading twice); `device` overrides `train.device`. Callbacks hear of the run as it goes,
    and of its failure before the exception propagates."""
    dev = resolve_device(device or exp.train.device)
    check_precision(exp.train.precision, dev)
    task, model = built or build(exp)
    every = exp.tracking.grad_stats_every
    every = default_every(dev) if every is None else every
    stats = GradStats(model, every=every, clip_norm=exp.train.clip_norm) if every else None
    return fit(model, task, exp.train, device=dev, callbacks=callbacks, grad_stats=stats, gradflow=exp.tracking.gradflow)
