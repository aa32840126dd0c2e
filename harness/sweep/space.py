"""The search space: what a trial samples (`suggest`), checked before anything is written
(`check_space`, and `check_study` against a resumed study), and the sampler and pruner that drive it.

`[sweep.space]` holds dotted keys (`model.*`, `task.*`, `train.*`) as a list of choices or a
range `{low, high, log?, step?}`; `[sweep.space_by_arch.<arch>]` adds keys sampled only when
that architecture is picked.
"""

from __future__ import annotations

import contextlib
import math
import warnings

import numpy as np
import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
    check_distribution_compatibility,
)
from optuna.trial import FrozenTrial

from harness.config import Experiment, ParamSpec
from harness.errors import HarnessError
from harness.locks import store_lock
from harness.runner import build
from harness.sweep import optuna_private
from harness.sweep.budgets import EqualBudgets
from harness.sweep.sizes import matched
from harness.tasks import Task, load_task


def arch_choices(exp: Experiment) -> list[str]:
    spec = exp.sweep.space.get("model.arch")
    return list(spec.choices) if spec and spec.choices else [exp.model.arch]


def dimensions(exp: Experiment, arch: str) -> dict[str, ParamSpec]:
    """What a trial that picked `arch` samples besides `model.arch`: `space`, then `arch`'s
    `space_by_arch` keys; in a grid each of those offers the union of every architecture's
    values (Optuna wants one distribution per name in a study, and a grid's trials carry fixed
    values)."""
    dims = {k: spec for k, spec in exp.sweep.space.items() if k != "model.arch"}
    for key, spec in exp.sweep.space_by_arch.get(arch, {}).items():
        if exp.sweep.sampler == "grid":
            spec = ParamSpec(choices=list(dict.fromkeys(
                v for by in exp.sweep.space_by_arch.values() if key in by for v in by[key].choices)))
        dims[key] = spec
    return dims


def precisions(exp: Experiment) -> set[str]:
    """Every `train.precision` a sweep may train in: the experiment's and the search space's."""
    found = {exp.train.precision}
    for arch in arch_choices(exp):
        spec = dimensions(exp, arch).get("train.precision")
        found |= set(spec.choices or ()) if spec is not None else set()
    return found


def distribution(spec: ParamSpec) -> BaseDistribution:
    """The Optuna distribution `_one` samples `spec` from."""
    if spec.choices is not None:
        return CategoricalDistribution(spec.choices)
    if spec.is_int:
        return IntDistribution(int(spec.low), int(spec.high), step=int(spec.step or 1), log=spec.log)
    return FloatDistribution(spec.low, spec.high, step=spec.step, log=spec.log)


def _one(trial: optuna.Trial, key: str, spec: ParamSpec):
    if spec.choices is not None:
        return trial.suggest_categorical(key, spec.choices)
    if spec.is_int:
        return trial.suggest_int(key, int(spec.low), int(spec.high), step=int(spec.step or 1), log=spec.log)
    return trial.suggest_float(key, spec.low, spec.high, step=spec.step, log=spec.log)


def suggest(trial: optuna.Trial, exp: Experiment) -> dict:
    """Sample the search space into dotted-key values; `space_by_arch` only for the chosen arch."""
    values = {}
    if "model.arch" in exp.sweep.space:
        values["model.arch"] = _one(trial, "model.arch", exp.sweep.space["model.arch"])
    arch = values.get("model.arch", exp.model.arch)
    for key, spec in dimensions(exp, arch).items():
        values[key] = _one(trial, key, spec)
    return values


def check_space(exp: Experiment, task: Task) -> None:
    """Every value a trial can be given, checked as that trial would check it, before anything
    is written: for each architecture the sweep picks, each choice and both ends of each range
    of its dimensions, set alone on the experiment (its settings validated, its task loaded
    when a `task.*` key changes, its model built). Then each dimension as an Optuna
    distribution, Optuna's warnings (a step that does not divide a range …) made errors."""
    archs = arch_choices(exp)
    for arch in exp.sweep.space_by_arch:
        if arch not in archs:
            raise HarnessError(f"sweep.space_by_arch.{arch}: this sweep never picks {arch!r} (it picks {', '.join(archs)})")
    if exp.sweep.sampler != "grid":  # a grid queues fixed values (see `dimensions`); samplers draw from one list per name
        lists: dict[str, tuple[str, list]] = {}
        for arch, by in exp.sweep.space_by_arch.items():
            for key, spec in by.items():
                if spec.choices is None:
                    continue
                first, choices = lists.setdefault(key, (arch, spec.choices))
                if choices != spec.choices:
                    raise HarnessError(f"sweep.space_by_arch: {key!r} lists other values for {arch} than for {first}; outside a "
                                       "grid Optuna needs one list per name: use sampler = 'grid', one list, or a range {low, high}")
    tasks = {_task_key(exp): task}
    if exp.sweep.match_params:
        if any("model.hidden_size" in by for by in [exp.sweep.space, *exp.sweep.space_by_arch.values()]):
            raise HarnessError("sweep.match_params sets model.hidden_size: remove it from sweep.space (and space_by_arch), "
                               "or remove match_params")
        for arch in archs:
            matched(exp.with_values({"model.arch": arch}), task)
    for arch in archs:
        _check_values(exp, {"model.arch": arch}, f"sweep.space: model.arch = {arch!r}" if len(archs) > 1 else None, tasks)
        for key, spec in dimensions(exp, arch).items():
            where = "sweep.space" if key in exp.sweep.space else f"sweep.space_by_arch.{arch}"
            for value in spec.choices if spec.choices is not None else [spec.low, spec.high]:
                _check_values(exp, {"model.arch": arch, key: value}, f"{where}: {key} = {value!r}", tasks)
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                try:
                    distribution(spec)
                except (ValueError, TypeError, Warning) as e:
                    raise HarnessError(f"{where}: {key}: {' '.join(str(e).split())}") from None


def _task_key(exp: Experiment) -> str:
    return repr(sorted({"name": exp.task.name, **exp.task.options()}.items(), key=str))


def _check_values(exp: Experiment, values: dict, where: str | None, tasks: dict) -> None:
    """Build the task and model of `exp` with `values` set; errors begin with `where`."""
    trial = exp.with_values(values, source=where or "experiment")
    try:
        key = _task_key(trial)
        if key not in tasks:
            tasks[key] = load_task(trial.task.name, **trial.task.options())
        build(trial, tasks[key])
    except HarnessError as e:
        raise HarnessError(f"{where}: {e}" if where else str(e)) from None
    except Exception as e:  # the factory's own refusal (a float size …): this value cannot be built
        raise HarnessError(f"{where or 'model.arch'}: {type(e).__name__}: {' '.join(str(e).split())[:300]}") from None


def check_study(study: optuna.Study, exp: Experiment) -> None:
    """A resumed study keeps the distribution its trials drew each name from: a space that
    draws a name another way (a list become a range …) fails here, not in every trial."""
    new = {k: distribution(s) for arch in arch_choices(exp) for k, s in dimensions(exp, arch).items()}
    if "model.arch" in exp.sweep.space:
        new["model.arch"] = distribution(exp.sweep.space["model.arch"])
    for trial in study.get_trials(deepcopy=False):
        for key, old in trial.distributions.items():
            try:
                if key in new:
                    check_distribution_compatibility(old, new[key])
            except ValueError as e:
                raise HarnessError(f"sweep.space: {key}: study {study.study_name!r} drew it as {old}, not {new[key]} "
                                   f"({e}); keep its space or choose another --study name") from None


def make_sampler(exp: Experiment, multi: bool, seed: int | None = None, storage: str | None = None) -> optuna.samplers.BaseSampler:
    """The study's sampler; with more than one architecture in a search that is not a grid and
    `sweep.equal_budgets` (the default), one per architecture, the same number of trials each
    (`harness.sweep.budgets`), counted under `storage`'s lock."""
    s, archs = exp.sweep.sampler, arch_choices(exp)
    if s == "grid":
        specs = [*exp.sweep.space.values(), *(s for by in exp.sweep.space_by_arch.values() for s in by.values())]
        if any(v.choices is None for v in specs):
            raise HarnessError("sweep.sampler: 'grid' needs every sweep.space and space_by_arch entry as a list of choices")
        # A grid study samples nothing: its points are queued trials (harness.sweep.grid).
        return optuna.samplers.RandomSampler(seed=seed)

    def one(seed: int | None) -> optuna.samplers.BaseSampler:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            if s == "random":
                return optuna.samplers.RandomSampler(seed=seed)
            if s == "qmc":
                return optuna.samplers.QMCSampler(seed=seed)
            if s == "nsga2":
                return optuna.samplers.NSGAIISampler(seed=seed)
            return optuna.samplers.TPESampler(seed=seed, multivariate=not multi, group=not multi)

    if len(archs) < 2 or not exp.sweep.equal_budgets:
        return one(seed)
    return EqualBudgets(archs, one, seed, lock=(lambda: store_lock(storage)) if storage else contextlib.nullcontext)


def worker_seed(seed: int | None, worker: int, n_existing: int) -> int | None:
    """A sampler seed per worker and per resume: equal seeds would propose equal trials."""
    if seed is None:
        return None
    return int(np.random.SeedSequence([seed, worker, n_existing]).generate_state(1)[0])


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
        return self.inner.prune(study if arch is None else optuna_private.same_architecture(study, arch), trial)


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
                # Two values are an edge too: the better of 64 and 128 may be 256.
                if len(values) < 2 or values[0] < value < values[-1]:
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
