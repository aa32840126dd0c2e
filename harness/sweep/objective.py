"""What a trial optimises and how one trial runs: the objectives, the count of trials that
ended, and `TrialObjective`, the callable Optuna calls once per trial.

A trial samples its settings, trains through the runner with two callbacks (its MLflow run and
`PruneOnSignal`, which reports each epoch to Optuna and prunes or stops), and returns its
objective values. A configuration's own failure (diverged, out of memory) fails the trial and
the sweep goes on; bad settings (`HarnessError`) fail it and stop the worker, through
`TrialObjective.bad_input`.
"""

from __future__ import annotations

from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial, TrialState

from harness.callbacks import FitStart, TrialResult
from harness.config import Experiment
from harness.errors import HarnessError, Pruned
from harness.runner import run_trial
from harness.sweep import recovery, workers
from harness.sweep.space import suggest
from harness.tasks import Task
from harness.tracking import MlflowRun, get_client, run_name, set_tags


def ended(t: FrozenTrial) -> bool:
    """Whether a trial counts toward `n_trials`: complete, pruned, or failed by its own error (a
    diverging configuration is a result). A trial lost with its worker, stopped by Ctrl-C or
    started beyond the count did not end: it is run again."""
    return t.state in (TrialState.COMPLETE, TrialState.PRUNED) or (t.state == TrialState.FAIL and "error" in t.user_attrs)


class Surplus(Exception):
    """The study already holds, or is running, its `n_trials` trials."""


@dataclass(frozen=True)
class Objective:
    key: str  # a trial-result key, e.g. val_accuracy or train_samples_per_s
    maximize: bool

    @property
    def direction(self) -> str:
        return "maximize" if self.maximize else "minimize"

    def __str__(self) -> str:
        return f"{self.key}:{'max' if self.maximize else 'min'}"


def objectives(exp: Experiment, task: Task) -> list[Objective]:
    """`["val_accuracy:max", …]`; default: the task's validation metric, its natural way."""
    if not exp.sweep.objectives:
        return [Objective(f"val_{task.metric}", task.maximize)]
    out = []
    for item in exp.sweep.objectives:
        key, _, way = item.partition(":")
        if way not in ("max", "min", ""):
            raise HarnessError(f"sweep.objectives: {item!r} must end in :max or :min")
        if key.startswith("test_"):
            raise HarnessError(f"sweep.objectives: {key!r} is a test metric; the test split is never used to choose (use val_…)")
        if key == f"val_{task.metric}" and not way:
            way = "max" if task.maximize else "min"
        if not way:
            raise HarnessError(f"sweep.objectives: say which way {key!r} is better: {key}:max or {key}:min")
        out.append(Objective(key, way == "max"))
    if len({o.key for o in out}) < len(out):
        raise HarnessError(f"sweep.objectives: {exp.sweep.objectives} names a key twice")
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


@dataclass(frozen=True)
class Plan:
    """What every worker of one sweep invocation shares; picklable for spawned workers."""

    exp: Experiment
    objectives: list[Objective]
    storage: str
    exp_id: str
    parent_run: str
    n_trials: int | None  # ended trials the study should hold (grid-capped)
    deadline: float | None  # wall-clock time after which no trial starts
    n_existing: int  # trials in the study when this invocation started (seeds the samplers)
    metric: str  # the task's metric (accuracy, mse)

    @property
    def multi(self) -> bool:
        return len(self.objectives) > 1


def is_surplus(study: optuna.Study, trial: optuna.Trial, n: int) -> bool:
    """Whether `n` trials numbered before this one have ended, run or wait in the queue."""
    waiting = (TrialState.RUNNING, TrialState.WAITING)
    return sum(t.number < trial.number and (ended(t) or t.state in waiting) for t in study.get_trials(deepcopy=False)) >= n


class PruneOnSignal(workers.StopOnSignal):
    """A trial's loop callback: records its MLflow run on the Optuna trial (so a dead worker's run
    can be closed), reports each epoch's first objective, and prunes when Optuna says so."""

    def __init__(self, trial: optuna.Trial, run: MlflowRun, objective: Objective | None, epochs: int):
        self.trial, self.run, self.objective, self.epochs = trial, run, objective, epochs

    def on_fit_start(self, start: FitStart) -> None:
        self.trial.set_user_attr("mlflow_run_id", self.run.run_id)  # the run starts first (callback order)

    def on_epoch_end(self, epoch: int, record: dict[str, float]) -> None:
        super().on_epoch_end(epoch, record)
        if self.objective is None or self.objective.key not in record:  # Optuna prunes single-objective studies only
            return
        self.trial.report(record[self.objective.key], epoch)
        # After the last epoch the work is done: keep the result rather than prune it.
        if epoch < self.epochs and self.trial.should_prune():
            raise Pruned(f"pruned at epoch {epoch}")


class TrialObjective:
    """The Optuna objective of one worker. A `HarnessError` (bad settings) fails the trial, stops
    the study and is kept in `bad_input` for the worker to raise once Optuna has let go."""

    def __init__(self, plan: Plan, study: optuna.Study, slot: workers.Slot):
        self.plan, self.study, self.slot = plan, study, slot
        self.client = get_client()
        self.token = workers.worker_id()
        self.bad_input: HarnessError | None = None

    def __call__(self, trial: optuna.Trial) -> float | list[float]:
        plan = self.plan
        if plan.n_trials and is_surplus(self.study, trial, plan.n_trials):
            trial.set_user_attr("harness_surplus", True)
            raise Surplus(f"trial {trial.number}: the study already holds or runs its {plan.n_trials} trials")
        trial.set_user_attr("worker", self.token)
        trial.set_user_attr("device", self.slot.device)
        try:
            values = self._train(trial)
        except Pruned as e:
            raise optuna.TrialPruned(str(e)) from None
        except HarnessError as e:
            self.bad_input = e
            self.study.stop()
            raise
        except Exception as e:  # the configuration's own failure (diverged, out of memory …): a result
            trial.set_user_attr("error", f"{type(e).__name__}: {e}"[:1000])
            raise
        return values if plan.multi else values[0]

    def _train(self, trial: optuna.Trial) -> list[float]:
        plan, exp = self.plan, self.plan.exp
        trial_exp = exp.with_values({**suggest(trial, exp), "train.device": self.slot.run_device})
        tags = {"harness.role": "trial", "harness.stage": "search", "harness.study": exp.name,
                "harness.trial": trial.number, "harness.worker": self.token, "harness.device": self.slot.device}
        retried = recovery.retry_of(self.study, trial)
        if retried is not None:
            tags["harness.retry_of"] = retried
        run = MlflowRun(self.client, plan.exp_id, trial_exp, name=run_name(trial_exp, trial.number), tags=tags,
                        parent=plan.parent_run)
        watch = PruneOnSignal(trial, run, None if plan.multi else plan.objectives[0], trial_exp.train.epochs)
        result = run_trial(trial_exp, [run, watch])
        try:
            return [objective_value(result, o.key) for o in plan.objectives]
        except HarnessError as e:  # the run trained, but the trial fails: say so in MLflow too
            set_tags(self.client, run.run_id, {"harness.state": "failed", "harness.failure": "objective", "harness.error": str(e)})
            self.client.set_terminated(run.run_id, "FAILED")
            raise
