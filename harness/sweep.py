"""`harness sweep`: an Optuna study over architectures and hyperparameters.

The search space comes from the experiment's `[sweep.space]` (dotted keys: `model.arch`,
`train.lr`, `model.hidden_size`, …) and `[sweep.space_by_arch.<arch>]` (parameters that
exist only for one architecture). Each trial is a validated `Experiment`, trained by the one
loop and tracked as a nested MLflow run. The default storage is a SQLite file, so running the
same command again resumes the same study.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import optuna
from optuna.trial import TrialState

from harness.archs import create_model
from harness.config import Experiment, ParamSpec, default_storage
from harness.errors import HarnessError
from harness.tasks import Task, load_task
from harness.tracking import get_client, run_name, study_run, tracked_fit
from harness.train import TrialResult

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


@dataclass(frozen=True)
class Objective:
    key: str  # a trial-result key, e.g. val_accuracy or train_samples_per_s
    maximize: bool

    @property
    def direction(self) -> str:
        return "maximize" if self.maximize else "minimize"


def objectives(exp: Experiment, task: Task) -> list[Objective]:
    """`["val_accuracy:max", …]`; default: the task's validation metric, its natural way."""
    if not exp.sweep.objectives:
        return [Objective(f"val_{task.metric}", task.maximize)]
    out = []
    for item in exp.sweep.objectives:
        key, _, way = item.partition(":")
        if way not in ("max", "min", ""):
            raise HarnessError(f"sweep.objectives: {item!r} must end in :max or :min")
        if key == f"val_{task.metric}" and not way:
            way = "max" if task.maximize else "min"
        if not way:
            raise HarnessError(f"sweep.objectives: say which way {key!r} is better: {key}:max or {key}:min")
        out.append(Objective(key, way == "max"))
    return out


def objective_value(result: TrialResult, key: str) -> float:
    """The selected epoch's value for `val_*` keys; the run's final value otherwise."""
    if key == f"val_{result.metric}":
        return result.best_val
    final = result.final_metrics()
    if key in final:
        return final[key]
    best = result.history[result.best_epoch - 1]
    if key in best:
        return best[key]
    raise HarnessError(f"sweep.objectives: {key!r} is not a trial metric; try {', '.join(sorted({*final, *best}))}")


def suggest(trial: optuna.Trial, exp: Experiment) -> dict:
    """Sample the experiment's search space into dotted-key values."""
    space = exp.sweep.space
    values = {}

    def one(key: str, spec: ParamSpec):
        if spec.choices is not None:
            return trial.suggest_categorical(key, spec.choices)
        if spec.is_int:
            return trial.suggest_int(key, int(spec.low), int(spec.high), step=int(spec.step or 1), log=spec.log)
        return trial.suggest_float(key, spec.low, spec.high, step=spec.step, log=spec.log)

    if "model.arch" in space:
        values["model.arch"] = one("model.arch", space["model.arch"])
    arch = values.get("model.arch", exp.model.arch)
    for key, spec in space.items():
        if key != "model.arch":
            values[key] = one(key, spec)
    for key, spec in exp.sweep.space_by_arch.get(arch, {}).items():
        values[key] = one(key, spec)
    return values


def check_models(exp: Experiment, task: Task) -> None:
    """Build every architecture the sweep can pick once, so bad overrides fail before training."""
    spec = exp.sweep.space.get("model.arch")
    for arch in spec.choices if spec and spec.choices else [exp.model.arch]:
        create_model(arch, input_size=task.input_size, output_size=task.output_size, io=task.io,
                     seq_len=task.seq_len, **exp.model.overrides())


def make_sampler(exp: Experiment, multi: bool) -> optuna.samplers.BaseSampler:
    s, seed = exp.sweep.sampler, exp.sweep.seed
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


def make_pruner(exp: Experiment) -> optuna.pruners.BasePruner:
    if exp.sweep.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)
    if exp.sweep.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=exp.train.epochs)
    return optuna.pruners.NopPruner()


def run_sweep(exp: Experiment, *, study_name: str | None = None, storage: str | None = None) -> optuna.Study:
    """Run (or resume) the study until it holds `sweep.n_trials` finished trials or `timeout` passes."""
    study_name = study_name or exp.name
    task = load_task(exp.task.name, **exp.task.options())
    objs = objectives(exp, task)
    check_models(exp, task)
    multi = len(objs) > 1
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=study_name, storage=storage or default_storage(), load_if_exists=True,
        sampler=make_sampler(exp, multi), pruner=make_pruner(exp), directions=[o.direction for o in objs],
    )
    if [d.name.lower() for d in study.directions] != [o.direction for o in objs]:
        raise HarnessError(f"study {study_name!r} exists with other objectives; choose another --study name")
    client = get_client()
    exp_id, parent = study_run(client, exp, study_name)

    def objective(trial: optuna.Trial):
        trial_exp = exp.with_values(suggest(trial, exp))

        def report(epoch: int, record: dict[str, float]) -> None:
            if not multi:
                value = record[objs[0].key] if objs[0].key in record else math.nan
                trial.report(value, epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at epoch {epoch}")

        tags = {"harness.role": "trial", "harness.study": study_name, "harness.trial": trial.number}
        result = tracked_fit(
            client, exp_id, trial_exp, name=run_name(trial_exp, trial.number), tags=tags, parent=parent,
            on_epoch=report, on_start=lambda run_id: trial.set_user_attr("mlflow_run_id", run_id),
            pruned=(optuna.TrialPruned,),
        )
        values = [objective_value(result, o.key) for o in objs]
        return values if multi else values[0]

    n = exp.sweep.n_trials
    done = sum(t.state in FINISHED for t in study.get_trials(deepcopy=False))
    remaining = None if n is None else max(0, n - done)
    try:
        if remaining != 0:
            study.optimize(
                objective, n_trials=remaining, timeout=exp.sweep.timeout, catch=(Exception,),
                callbacks=[optuna.study.MaxTrialsCallback(n, states=FINISHED)] if n else None,
            )
    finally:
        client.set_terminated(parent, "FINISHED")
    return study
