"""Exact grids: a grid study runs every point of its grid exactly once, however many workers,
commands or resumes share it.

Each worker's own sampler would draw the grid in its own order (and repeat or skip points), so
a grid study samples nothing: its points are queued as Optuna trials with fixed parameters
(`enqueue_missing`), which workers pop one at a time (a state change that only one process
wins: a row lock on a server, the store's lock on SQLite, harness.sweep.storage.Storage). Two commands queueing at once may queue a point twice: the lowest-numbered
trial of a point owns it, and any other copy stops before training (`owner_elsewhere`), marked
like a surplus trial. A resumed study queues what is missing: points never queued, or whose
trial was lost or interrupted (a fault of the machinery) and not re-queued; within one sweep a
point is retried `MAX_RETRY` times (harness.sweep.recovery), then left to the next.
"""

from __future__ import annotations

import itertools
import json
import random

import optuna
from optuna.trial import FrozenTrial, TrialState

from harness.config import Experiment
from harness.sweep import optuna_private
from harness.sweep.counting import SURPLUS, settled
from harness.sweep.space import arch_choices


def all_points(exp: Experiment) -> list[dict]:
    """Every point of the grid: per architecture, the product of the shared dimensions and that
    architecture's own (`space_by_arch`), so each family can have its own learning rates."""
    space = exp.sweep.space
    shared = {k: s.choices for k, s in space.items() if k != "model.arch"}
    grid = []
    for arch in arch_choices(exp):
        dims = {**({"model.arch": [arch]} if "model.arch" in space else {}), **shared,
                **{k: s.choices for k, s in exp.sweep.space_by_arch.get(arch, {}).items()}}
        grid += [dict(zip(dims, values, strict=True)) for values in itertools.product(*dims.values())]
    return grid


def points(exp: Experiment) -> list[dict]:
    """The points the study runs (`n_trials` of them when it is smaller), in an order fixed by `sweep.seed`."""
    grid = all_points(exp)
    random.Random(exp.sweep.seed or 0).shuffle(grid)
    return grid[: exp.sweep.n_trials] if exp.sweep.n_trials else grid


def _key(params: dict) -> str:
    return json.dumps(params, sort_keys=True, default=str)


def point_of(t: FrozenTrial) -> str | None:
    """The grid point a trial was queued with (None: not queued, so not part of the grid)."""
    fixed = optuna_private.queued_params(t)
    return _key(fixed) if fixed else None


def _holds(t: FrozenTrial, since: int | None = None) -> bool:
    """Whether a trial holds its point: queued, running, or ended (a lost or surplus one does not),
    or, when numbered `since` or later, interrupted with its retries spent."""
    if t.user_attrs.get(SURPLUS):
        return False
    return t.state in (TrialState.WAITING, TrialState.RUNNING) or settled(t, since)


def enqueue_missing(study: optuna.Study, exp: Experiment, since: int | None = None) -> int:
    """Queue every point no trial holds; returns how many were queued. `since`: the first trial
    of this sweep, whose points interrupted time after time wait for the next sweep."""
    held = {point_of(t) for t in study.get_trials(deepcopy=False) if _holds(t, since)}
    missing = [p for p in points(exp) if _key(p) not in held]
    for p in missing:
        study.enqueue_trial(p)
    return len(missing)


def owner_elsewhere(study: optuna.Study, trial: FrozenTrial) -> bool:
    """Whether this trial must not run: it was not queued from the grid, or a lower-numbered
    trial holds its point."""
    mine = point_of(trial)
    if mine is None:
        return True
    return any(t.number < trial.number and point_of(t) == mine and _holds(t) for t in study.get_trials(deepcopy=False))
