"""One trial: resolve it once (`prepare`: the device and its precision checked, the task loaded
once per process, the model built), then run the one training loop with the callbacks the caller
gives (tracking, a sweep's pruning). The CLI, a sweep's trials, seed runs and final runs, and the
sweep's check of its space all go through here (`run_tracked` puts an MLflow run around it).
Imports neither Optuna nor MLflow."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from harness.archs import arch_info, create_model
from harness.callbacks import Callback, TrialResult
from harness.config import Experiment
from harness.errors import HarnessError
from harness.gradients import GradStats, default_every
from harness.precision import check_precision
from harness.tasks import Task, shared_task, task_defaults
from harness.tasks.metrics import margin as metric_margin
from harness.tasks.metrics import scale as metric_scale
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


def build(exp: Experiment, task: Task | None = None) -> tuple[Task, nn.Module]:
    """The experiment's task (`task`, else loaded once per process: `harness.tasks.shared_task`)
    and its model, built now (seeded by `train.seed`)."""
    task = task or shared_task(exp.task.name, **exp.task.options())
    torch.manual_seed(exp.train.seed)
    model = create_model(
        exp.model.arch, input_size=task.input_size, output_size=task.output_size,
        io=task.io, seq_len=task.seq_len, **exp.model.overrides(),
    )
    if task.variable_length and not takes_lengths(model):
        raise HarnessError(f"model.arch: {exp.model.arch}'s forward takes no `lengths`, and the task's sequences differ in "
                           "length; give its forward(x, lengths=None) (see harness.archs) or pad the task's sequences to one length")
    return task, model


def takes_lengths(model: nn.Module) -> bool:
    """Whether `model(x, lengths=...)` reads sequences of different lengths (see harness.archs)."""
    try:
        return "lengths" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def registry_facts(exp: Experiment, task: Task) -> dict[str, Any]:
    """What the registries say of a run, for tracking to log: the task's own defaults for options
    the experiment leaves unset (`task.<option>`), the architecture's family and direction, the
    metric's scale and equivalence margin."""
    arch = arch_info(exp.model.arch, **exp.model.overrides())
    defaults = {f"task.{k}": v for k, v in task_defaults(exp.task.name).items()}
    return {**defaults, "arch_family": arch.family, "arch_bidirectional": arch.bidirectional,
            "task_metric_scale": metric_scale(task.metric), "task_metric_margin": metric_margin(task.metric)}


@dataclass(frozen=True)
class Prepared:
    """A trial resolved and checked: its device (precision supported there), task, fresh model and
    what the registries say of it."""

    exp: Experiment
    device: torch.device
    task: Task
    model: nn.Module
    facts: dict[str, Any]


def prepare(exp: Experiment, device: str | None = None) -> Prepared:
    """Resolve `exp` once: `device` (default `train.device`) and its precision checked, the task
    (shared per process) and the model built. A bad device, precision, task option or model
    override raises a `HarnessError` here, before anything is written or trained."""
    dev = resolve_device(device or exp.train.device)
    check_precision(exp.train.precision, dev)
    task, model = build(exp)
    return Prepared(exp, dev, task, model, registry_facts(exp, task))


def run_tracked(exp: Experiment, run, callbacks: Sequence[Callback] = (), *, prepared: Prepared | None = None) -> TrialResult:
    """Train `exp` as the MLflow run `run` (a `harness.tracking.MlflowRun`, itself a callback):
    opened now unless the caller opened it to claim its work, trained with `callbacks`, and ended
    FINISHED, KILLED or FAILED with its reason, whether it fails in the loop (the run ends itself)
    or before (ended here)."""
    run.open()
    try:
        return run_trial(exp, [run, *callbacks], prepared=prepared)
    except BaseException as e:
        run.end_failed(e)
        raise


def run_trial(exp: Experiment, callbacks: Sequence[Callback] = (), *, prepared: Prepared | None = None,
              device: str | None = None) -> TrialResult:
    """Train `exp` once and return its result. `prepared`: `prepare(exp, device)` already done (a
    caller that validates before writing anything passes it on rather than resolving twice);
    `device` overrides `train.device`. Callbacks hear of the run as it goes, and of its failure
    before the exception propagates."""
    p = prepared or prepare(exp, device)
    every = exp.tracking.grad_stats_every
    every = default_every(p.device) if every is None else every
    stats = GradStats(p.model, every=every, clip_norm=exp.train.clip_norm) if every else None
    return fit(p.model, p.task, exp.train, device=p.device, callbacks=callbacks, grad_stats=stats,
               gradflow=exp.tracking.gradflow, facts=p.facts)
