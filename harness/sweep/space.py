"""The search space: what a trial samples (`suggest`), checked before the study starts
(`check_models`), and the sampler and pruner that drive it.

`[sweep.space]` holds dotted keys (`model.*`, `task.*`, `train.*`) as a list of choices or a
range `{low, high, log?, step?}`; `[sweep.space_by_arch.<arch>]` adds keys sampled only when
that architecture is picked.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import optuna

from harness.archs import create_model
from harness.config import Experiment, ParamSpec
from harness.errors import HarnessError
from harness.tasks import Task


def arch_choices(exp: Experiment) -> list[str]:
    spec = exp.sweep.space.get("model.arch")
    return list(spec.choices) if spec and spec.choices else [exp.model.arch]


def _one(trial: optuna.Trial, key: str, spec: ParamSpec):
    if spec.choices is not None:
        return trial.suggest_categorical(key, spec.choices)
    if spec.is_int:
        return trial.suggest_int(key, int(spec.low), int(spec.high), step=int(spec.step or 1), log=spec.log)
    return trial.suggest_float(key, spec.low, spec.high, step=spec.step, log=spec.log)


def suggest(trial: optuna.Trial, exp: Experiment) -> dict:
    """Sample the search space into dotted-key values; `space_by_arch` only for the chosen arch."""
    space = exp.sweep.space
    values = {}
    if "model.arch" in space:
        values["model.arch"] = _one(trial, "model.arch", space["model.arch"])
    arch = values.get("model.arch", exp.model.arch)
    for key, spec in space.items():
        if key != "model.arch":
            values[key] = _one(trial, key, spec)
    for key, spec in exp.sweep.space_by_arch.get(arch, {}).items():
        values[key] = _one(trial, key, spec)
    return values


def check_models(exp: Experiment, task: Task) -> None:
    """Build every architecture the sweep can pick once, so bad overrides fail before training."""
    archs = arch_choices(exp)
    for arch in exp.sweep.space_by_arch:
        if arch not in archs:
            raise HarnessError(f"sweep.space_by_arch.{arch}: this sweep never picks {arch!r} (it picks {', '.join(archs)})")
    for arch in archs:
        create_model(arch, input_size=task.input_size, output_size=task.output_size, io=task.io,
                     seq_len=task.seq_len, **exp.model.overrides())


def grid_size(exp: Experiment) -> int | None:
    if exp.sweep.sampler != "grid":
        return None
    return math.prod(len(v.choices) for v in exp.sweep.space.values() if v.choices)


def make_sampler(exp: Experiment, multi: bool, seed: int | None = None) -> optuna.samplers.BaseSampler:
    s = exp.sweep.sampler
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if s == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if s == "qmc":
            return optuna.samplers.QMCSampler(seed=seed)
        if s == "nsga2":
            return optuna.samplers.NSGAIISampler(seed=seed)
        if s == "grid":
            grid = {k: v.choices for k, v in exp.sweep.space.items()}
            if any(c is None for c in grid.values()) or exp.sweep.space_by_arch:
                raise HarnessError("sweep.sampler: 'grid' needs every sweep.space entry as a list of choices (and no space_by_arch)")
            return optuna.samplers.GridSampler(grid, seed=seed)
        return optuna.samplers.TPESampler(seed=seed, multivariate=not multi, group=not multi)


def worker_seed(seed: int | None, worker: int, n_existing: int) -> int | None:
    """A sampler seed per worker and per resume: equal seeds would propose equal trials."""
    if seed is None:
        return None
    return int(np.random.SeedSequence([seed, worker, n_existing]).generate_state(1)[0])


def make_pruner(exp: Experiment) -> optuna.pruners.BasePruner:
    if exp.sweep.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)
    if exp.sweep.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=exp.train.epochs)
    return optuna.pruners.NopPruner()
