"""Equal search budgets: with the architecture in the search space, a sampler other than a grid
gives every architecture the same number of trials, each searched by a sampler of its own.

Left to TPE, the architecture is one more dimension to exploit: rnn_types_fashion's 24 trials went
GRU 10, BRNN 6, LSTM 5, RNN 3, and a family tuned three times was compared with one tuned ten
times. Here each trial is given the architecture with the fewest trials so far (ties: the order of
`sweep.space`'s list), decided under the store's lock so that workers on any machine count each
other's, and its other dimensions come from that architecture's own sampler, which sees only that
architecture's trials (as in Greff et al. 2017, "LSTM: A Search Space Odyssey": a search per
variant, the same budget each).
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from harness.sweep import optuna_private
from harness.sweep.counting import SURPLUS, ended

ARCH_KEY = "model.arch"


def counts(study: optuna.Study, archs: list[str], but: int | None = None) -> Counter:
    """Trials per architecture that count toward the budget: ended, running or queued (not a
    surplus trial, nor one the machinery ended: its retry counts instead); trial `but` left out."""
    live = (TrialState.RUNNING, TrialState.WAITING)
    out = Counter({a: 0 for a in archs})
    for t in study.get_trials(deepcopy=False):
        if t.number != but and SURPLUS not in t.user_attrs and (ended(t) or t.state in live):
            arch = optuna_private.architecture(t)
            if arch in out:
                out[arch] += 1
    return out


class EqualBudgets(optuna.samplers.BaseSampler):
    """Hands each trial the least-tried architecture and samples the rest with `make(seed)`'s
    sampler for that architecture, seeing only its trials. `lock` guards the count across
    workers (the store's lock); a trial queued with its architecture fixed keeps it."""

    def __init__(self, archs: list[str], make: Callable[[int | None], optuna.samplers.BaseSampler],
                 seed: int | None = None, lock: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext):
        self.archs, self.lock = list(archs), lock
        self.inner = {a: make(None if seed is None else seed + i) for i, a in enumerate(self.archs)}
        self.given: dict[int, str] = {}

    def _arch(self, trial: FrozenTrial) -> str:
        return self.given.get(trial.number) or optuna_private.architecture(trial) or self.archs[0]

    def _view(self, study: optuna.Study, trial: FrozenTrial) -> tuple[optuna.samplers.BaseSampler, optuna.Study]:
        arch = self._arch(trial)
        return self.inner[arch], optuna_private.same_architecture(study, arch)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        arch = optuna_private.architecture(trial)
        if arch not in self.inner:
            with self.lock():
                n = counts(study, self.archs, but=trial.number)
                arch = min(self.archs, key=lambda a: n[a])
                optuna_private.give_architecture(study, trial, arch)
        self.given[trial.number] = arch
        self.inner[arch].before_trial(optuna_private.same_architecture(study, arch), trial)

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        sampler, view = self._view(study, trial)
        space = sampler.infer_relative_search_space(view, trial)
        space.pop(ARCH_KEY, None)  # given, never sampled
        return space

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        sampler, view = self._view(study, trial)
        return sampler.sample_relative(view, trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        if param_name == ARCH_KEY:
            return self._arch(trial)
        sampler, view = self._view(study, trial)
        return sampler.sample_independent(view, trial, param_name, param_distribution)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values) -> None:
        sampler, view = self._view(study, trial)
        sampler.after_trial(view, trial, state, values)
        self.given.pop(trial.number, None)

    def reseed_rng(self) -> None:
        for sampler in self.inner.values():
            sampler.reseed_rng()
