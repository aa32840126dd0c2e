"""Which trials count toward a study's `n_trials`: those that ended (complete, pruned, or failed
by their own error). A trial started beyond the count, or a second copy of a grid point, stops
before training, marked `harness_surplus`, and never counts."""

from __future__ import annotations

import optuna
from optuna.trial import FrozenTrial, TrialState

SURPLUS = "harness_surplus"  # the user attribute of a trial that never ran and never counts


def ended(t: FrozenTrial) -> bool:
    """Whether a trial counts toward `n_trials`: complete, pruned, or failed by its own error (a
    diverging configuration is a result). A trial lost with its worker, stopped by Ctrl-C or
    started beyond the count did not end: it is run again."""
    return t.state in (TrialState.COMPLETE, TrialState.PRUNED) or (t.state == TrialState.FAIL and "error" in t.user_attrs)


class Surplus(Exception):
    """The study already holds, or is running, its `n_trials` trials."""


def is_surplus(study: optuna.Study, trial: optuna.Trial, n: int) -> bool:
    """Whether `n` trials numbered before this one have ended, run or wait in the queue."""
    waiting = (TrialState.RUNNING, TrialState.WAITING)
    return sum(t.number < trial.number and (ended(t) or t.state in waiting) for t in study.get_trials(deepcopy=False)) >= n
