"""The one place harness touches Optuna's private API; each function says why no public one fits.

Checked against Optuna 4.2–5.x; if Optuna renames these, only this file changes.
"""

from __future__ import annotations

import optuna
from optuna.trial import FrozenTrial, TrialState


def _storage(study: optuna.Study) -> optuna.storages.BaseStorage:
    # No public accessor: Optuna's own fail_stale_trials reads study._storage too.
    return study._storage


def _trial_id(trial: optuna.Trial | FrozenTrial) -> int:
    # Storages address trials by an internal id that Trial and FrozenTrial keep private.
    return trial._trial_id


def fail_running(study: optuna.Study, trial: FrozenTrial) -> FrozenTrial | None:
    """Mark a RUNNING trial FAIL from outside its worker (Study.tell only ends trials this process
    asked for); returns the failed trial, or None when another process ended it first."""
    storage = _storage(study)
    try:
        if not storage.set_trial_state_values(_trial_id(trial), TrialState.FAIL):
            return None
    except optuna.exceptions.UpdateFinishedTrialError:
        return None
    return storage.get_trial(_trial_id(trial))


def frozen(study: optuna.Study, trial: optuna.Trial) -> FrozenTrial:
    """A running trial's stored state (its system attributes, e.g. which trial it retries):
    Trial no longer exposes them, and study.get_trials copies every trial of the study."""
    return _storage(study).get_trial(_trial_id(trial))
