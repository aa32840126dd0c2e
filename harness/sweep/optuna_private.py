"""The one place harness touches Optuna's private API; each function says why no public one fits.

Checked against Optuna 5.0 (`tox -e oldest`) and 5.1; if Optuna renames these, only this file changes.
"""

from __future__ import annotations

import optuna
from optuna.trial import FrozenTrial, TrialState

# The logger of Optuna's optimize loop, which reports every failed trial with its traceback: the
# one place a filter can make those one line (harness.sweep.pool).
OPTIMIZE_LOGGER = "optuna.study._optimize"


def queued_params(t: FrozenTrial) -> dict | None:
    """The parameters a trial was queued with by `Study.enqueue_trial` (None: not queued): Optuna
    keeps them in a system attribute and offers no accessor."""
    return t.system_attrs.get("fixed_params")


def retry_history(t: FrozenTrial) -> list[int]:
    """The numbers of the trials this one retries (Optuna's RetryFailedTrialCallback's record)."""
    return t.system_attrs.get("retry_history", [])


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


class _SameArchitecture:
    """A study seen through one architecture: its trials are only those of `arch`."""

    def __init__(self, study: optuna.Study, arch: str):
        self._study, self._arch = study, arch

    def __getattr__(self, name: str):
        return getattr(self._study, name)

    def _mine(self, trials: list[FrozenTrial]) -> list[FrozenTrial]:
        return [t for t in trials if architecture(t) == self._arch]

    def get_trials(self, deepcopy: bool = True, states=None) -> list[FrozenTrial]:
        return self._mine(self._study.get_trials(deepcopy=deepcopy, states=states))

    def _get_trials(self, deepcopy: bool = True, states=None, use_cache: bool = False) -> list[FrozenTrial]:
        # TPE and NSGA-II read a study's trials through this private twin of get_trials.
        return self._mine(self._study._get_trials(deepcopy=deepcopy, states=states, use_cache=use_cache))


ARCH = "harness_arch"  # the user attribute: the architecture a trial was given before it sampled it


def architecture(t: FrozenTrial) -> str | None:
    """The architecture a trial trains: sampled, given (`ARCH`) or fixed by the queue."""
    return t.params.get("model.arch") or t.user_attrs.get(ARCH) or (queued_params(t) or {}).get("model.arch")


def same_architecture(study: optuna.Study, arch: str) -> optuna.Study:
    """The study as a sampler or pruner of one architecture should see it: only its trials.
    Optuna has no public way to hand a sampler a subset of a study (its own Hyperband pruner
    subclasses Study for its brackets)."""
    return _SameArchitecture(study, arch)  # type: ignore[return-value]


def give_architecture(study: optuna.Study, trial: FrozenTrial, arch: str) -> None:
    """Record `arch` on a trial before it samples anything, so that other workers count it:
    a sampler's before_trial receives a FrozenTrial, which cannot set attributes."""
    _storage(study).set_trial_user_attr(_trial_id(trial), ARCH, arch)
    trial.user_attrs[ARCH] = arch
