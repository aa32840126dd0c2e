"""Which trials count toward a study's `n_trials`: those that ended (complete, pruned, or failed
by their own error). A trial started beyond the count, or a second copy of a grid point, stops
before training, marked `harness_surplus`, and never counts; nor does a trial a fault of the
machinery ended (`interrupted`): it is run again."""

from __future__ import annotations

import optuna
from optuna.trial import FrozenTrial, TrialState

from harness.sweep import optuna_private

SURPLUS = "harness_surplus"  # the user attribute of a trial that never ran and never counts
INTERRUPTED = "interrupted"  # the user attribute of a trial a store, the network or the file system ended: why
MAX_RETRY = 2  # times a trial that did not end (its worker died, or it was interrupted) is queued again
# How trials interrupted by the machinery read in studies from before harness told them apart.
_MACHINERY_ERRORS = ("MlflowException:", "StorageInternalError:", "OperationalError:", "IntegrityError:", "ConnectionError:")


def interrupted(t: FrozenTrial) -> bool:
    """Whether a failed trial was ended by the machinery (harness.resilience), not by its configuration."""
    return t.state == TrialState.FAIL and (INTERRUPTED in t.user_attrs or
                                           str(t.user_attrs.get("error", "")).startswith(_MACHINERY_ERRORS))


def ended(t: FrozenTrial) -> bool:
    """Whether a trial counts toward `n_trials`: complete, pruned, or failed by its own error (a
    diverging configuration is a result). A trial lost with its worker, interrupted (Ctrl-C, a
    store that did not answer) or started beyond the count did not end: it is run again."""
    if t.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return t.state == TrialState.FAIL and "error" in t.user_attrs and not interrupted(t)


def retries_spent(t: FrozenTrial) -> bool:
    """Whether `t` is the last retry of its trial (`MAX_RETRY` retries before it)."""
    return len(optuna_private.retry_history(t)) >= MAX_RETRY


def settled(t: FrozenTrial, since: int | None = None) -> bool:
    """Whether this sweep is done with `t`: it ended, or (numbered `since` or later) it was
    interrupted with its retries spent and waits for the next sweep."""
    return ended(t) or (since is not None and t.number >= since and interrupted(t) and retries_spent(t))


class Surplus(Exception):
    """The study already holds, or is running, its `n_trials` trials."""


def is_surplus(study: optuna.Study, trial: optuna.Trial, n: int) -> bool:
    """Whether `n` trials numbered before this one have ended, run or wait in the queue."""
    waiting = (TrialState.RUNNING, TrialState.WAITING)
    return sum(t.number < trial.number and (ended(t) or t.state in waiting) for t in study.get_trials(deepcopy=False)) >= n
