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
from optuna.trial import FrozenTrial

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
        if exp.sweep.sampler == "grid":
            # Optuna wants one distribution per name in a study: a grid's trials carry fixed values,
            # so every architecture's key offers the union of all their values.
            union = dict.fromkeys(v for by in exp.sweep.space_by_arch.values() if key in by for v in by[key].choices)
            spec = ParamSpec(choices=list(union))
        values[key] = _one(trial, key, spec)
    return values


def check_models(exp: Experiment, task: Task) -> None:
    """Build every architecture the sweep can pick once, so bad overrides fail before training."""
    archs = arch_choices(exp)
    for arch in exp.sweep.space_by_arch:
        if arch not in archs:
            raise HarnessError(f"sweep.space_by_arch.{arch}: this sweep never picks {arch!r} (it picks {', '.join(archs)})")
    if exp.sweep.sampler != "grid":  # a grid queues fixed values (see `suggest`); samplers draw from one list per name
        lists: dict[str, tuple[str, list]] = {}
        for arch, by in exp.sweep.space_by_arch.items():
            for key, spec in by.items():
                if spec.choices is None:
                    continue
                first, choices = lists.setdefault(key, (arch, spec.choices))
                if choices != spec.choices:
                    raise HarnessError(f"sweep.space_by_arch: {key!r} lists other values for {arch} than for {first}; outside a "
                                       "grid Optuna needs one list per name: use sampler = 'grid', one list, or a range {low, high}")
    for arch in archs:
        create_model(arch, input_size=task.input_size, output_size=task.output_size, io=task.io,
                     seq_len=task.seq_len, **exp.model.overrides())


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
            specs = [*exp.sweep.space.values(), *(s for by in exp.sweep.space_by_arch.values() for s in by.values())]
            if any(v.choices is None for v in specs):
                raise HarnessError("sweep.sampler: 'grid' needs every sweep.space and space_by_arch entry as a list of choices")
            # A grid study samples nothing: its points are queued trials (harness.sweep.grid).
            return optuna.samplers.RandomSampler(seed=seed)
        return optuna.samplers.TPESampler(seed=seed, multivariate=not multi, group=not multi)


def worker_seed(seed: int | None, worker: int, n_existing: int) -> int | None:
    """A sampler seed per worker and per resume: equal seeds would propose equal trials."""
    if seed is None:
        return None
    return int(np.random.SeedSequence([seed, worker, n_existing]).generate_state(1)[0])


class _SameArchitecture:
    """A study seen through one architecture: its trials are only those of `arch`."""

    def __init__(self, study: optuna.Study, arch: str):
        self._study, self._arch = study, arch

    def __getattr__(self, name: str):
        return getattr(self._study, name)

    def get_trials(self, deepcopy: bool = True, states=None) -> list[FrozenTrial]:
        return [t for t in self._study.get_trials(deepcopy=deepcopy, states=states) if t.params.get("model.arch") == self._arch]


class ByArchitecture(optuna.pruners.BasePruner):
    """Prunes a trial against the trials of its own architecture only. Families learn at their own
    pace (an Elman RNN's epoch-1 accuracy is below every gated net's; on the adding and copy tasks a
    gated net sits at the baseline for epochs before it learns), so a median over all trials prunes
    whole families on their plateau: a study-wide median pruner stopped 15 of 24 trials of
    rnn_types_fashion and left each family its first configuration."""

    def __init__(self, inner: optuna.pruners.BasePruner):
        self.inner = inner

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        arch = trial.params.get("model.arch")
        return self.inner.prune(study if arch is None else _SameArchitecture(study, arch), trial)


def make_pruner(exp: Experiment) -> optuna.pruners.BasePruner:
    if exp.sweep.pruner == "median":
        return ByArchitecture(optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1))
    if exp.sweep.pruner == "hyperband":
        # a trial reports seeds × epochs steps (see objective.PruneOnSignal)
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=exp.train.epochs * exp.sweep.seeds)
    return optuna.pruners.NopPruner()


EDGE = 0.05  # a best value within this share of a range's ends (log-scaled for log ranges) is on its edge


def edges(exp: Experiment, best: dict[str, FrozenTrial]) -> list[str]:
    """For each architecture's best trial, the searched numeric dimensions whose value lies on
    the edge of their range or grid: the optimum may lie beyond, so the comparison is not done."""
    out = []
    for arch, trial in best.items():
        space = {**exp.sweep.space, **exp.sweep.space_by_arch.get(arch, {})}
        for key, spec in space.items():
            value = trial.params.get(key)
            if not _numeric(value):
                continue
            if spec.choices is not None:
                values = sorted({v for v in spec.choices if _numeric(v)})
                # Two values are a choice (forget_bias 0 or 1), not a range with an inside.
                if len(values) < 3 or values[0] < value < values[-1]:
                    continue
                where = "lowest" if value == values[0] else "highest"
                out.append(f"{arch}: best {key} = {value:g} is the {where} of {[float(f'{v:g}') for v in values]}")
            else:
                scale = math.log if spec.log else float
                share = (scale(value) - scale(spec.low)) / (scale(spec.high) - scale(spec.low))
                if EDGE < share < 1 - EDGE:
                    continue
                where = "low" if share <= EDGE else "high"
                out.append(f"{arch}: best {key} = {value:.3g} is at the {where} end of its range [{spec.low:g}, {spec.high:g}]")
    return out


def _numeric(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)
