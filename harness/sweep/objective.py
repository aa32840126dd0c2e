"""What a trial optimises and how one trial runs: the objectives, and `TrialObjective`, the
callable Optuna calls once per trial.

A trial samples its settings, trains through the runner with two callbacks (its MLflow run and
`PruneOnSignal`, which reports each epoch to Optuna and prunes or stops), and returns its
objective values. A configuration's own failure (diverged, out of memory) fails the trial and
the sweep goes on; a fault of the machinery (a store, the network, the file system:
harness.resilience) interrupts it, to be run again (`TrialObjective.interrupted`); bad settings
(`HarnessError`) fail it and stop the worker, through `TrialObjective.bad_input`.
"""

from __future__ import annotations

from dataclasses import dataclass

import optuna

from harness.callbacks import TIME_PHASES, TrialResult
from harness.config import Experiment
from harness.errors import HarnessError, Pruned
from harness.mlflow_store import get_client, set_tags
from harness.resilience import infrastructure, reason
from harness.runner import run_tracked
from harness.sweep import grid, optuna_private, recovery, workers
from harness.sweep.counting import INTERRUPTED, SURPLUS, Surplus, is_surplus
from harness.sweep.sizes import matched
from harness.sweep.space import suggest
from harness.tasks import Task
from harness.tracking import MlflowRun, SeedGroupRun, run_name


@dataclass(frozen=True)
class Objective:
    key: str  # a trial-result key, e.g. val_accuracy or train_samples_per_s
    maximize: bool

    @property
    def direction(self) -> str:
        return "maximize" if self.maximize else "minimize"

    def __str__(self) -> str:
        return f"{self.key}:{'max' if self.maximize else 'min'}"


def result_keys(exp: Experiment, metric: str) -> set[str]:
    """The keys a trial's result holds, known before it trains (harness.train's epoch records,
    `TrialResult.final_metrics` with harness.speed's and harness.gradflow's figures; the test
    split's left out): what an objective may name. `train_gflops_per_s` and `peak_fraction`
    need a model that states its FLOPs, `gradflow_rate_bwd*` a bidirectional one."""
    epoch = {"train_loss", f"train_{metric}", "val_loss", f"val_{metric}", "lr", "epoch_time_s", "epoch_samples_per_s",
             "cpu_share"}
    final = {f"best_val_{metric}", "best_epoch", "epochs_run", "stopped_early", "budget_limited", "total_time_s",
             "train_samples_per_s", "train_samples_per_s_min", "train_samples_per_s_max", "bench_step_ms",
             "device_peak_gflops", "train_gflops_per_s", "peak_fraction", "peak_memory_mb",
             "infer_latency_ms_p50", "infer_latency_ms_p95", "infer_samples_per_s", "peak_cpu_share", "clip_share"}
    final |= {f"time_{phase}_s" for phase in TIME_PHASES if phase != "gradflow"}
    flow = {"gradflow_rate", "gradflow_rate_iqr", "gradflow_rate_bwd", "gradflow_rate_bwd_iqr",
            "time_gradflow_s"} if exp.tracking.gradflow else set()
    return epoch | final | flow


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
        known = result_keys(exp, task.metric)
        if key not in known:
            raise HarnessError(f"sweep.objectives: {key!r} is not a trial metric; try {', '.join(sorted(known))}")
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


class PruneOnSignal(workers.StopOnSignal):
    """A trial's loop callback: reports each epoch's first objective to Optuna, and prunes when
    Optuna says so.

    With several seeds (trained one after another) seed j's epoch e is step j·E + e (E: the epoch
    cap), and the value reported there is the mean over seeds 0..j of their value at epoch e (a
    seed that stopped early keeps its chosen value), so every trial is compared at the same step
    on the same quantity and pruning acts on the seeds' mean."""

    def __init__(self, trial: optuna.Trial, objective: Objective | None, epochs: int, seed_index: int = 0,
                 earlier: list[list[float]] | None = None):
        self.trial, self.objective, self.epochs = trial, objective, epochs
        self.seed_index, self.earlier, self.curve = seed_index, earlier or [], []

    def on_epoch_end(self, epoch: int, record: dict[str, float]) -> None:
        super().on_epoch_end(epoch, record)
        if self.objective is None or self.objective.key not in record:  # Optuna prunes single-objective studies only
            return
        self.curve.append(record[self.objective.key])
        others = [c[epoch - 1] if len(c) >= epoch else self.best(c) for c in self.earlier]
        self.trial.report(sum([*others, self.curve[-1]]) / (len(others) + 1), self.seed_index * self.epochs + epoch)
        # After the last epoch the work is done: keep the result rather than prune it.
        if epoch < self.epochs and self.trial.should_prune():
            raise Pruned(f"pruned at epoch {epoch}" + (f" of seed {self.seed_index + 1}" if self.seed_index else ""))

    def best(self, curve: list[float]) -> float:
        return max(curve) if self.objective.maximize else min(curve)


class TrialObjective:
    """The Optuna objective of one worker. A `HarnessError` (bad settings) fails the trial, stops
    the study and is kept in `bad_input` for the worker to raise once Optuna has let go. A fault
    of the machinery fails the trial as interrupted (user attribute `interrupted`: why), kept in
    `interrupted` for the worker to queue it again."""

    def __init__(self, plan: Plan, study: optuna.Study, slot: workers.Slot):
        self.plan, self.study, self.slot = plan, study, slot
        self.client = get_client()
        self.token = workers.worker_id()
        self.bad_input: HarnessError | None = None
        self.interrupted: tuple[optuna.Trial, str] | None = None  # the last trial's, when it was

    def __call__(self, trial: optuna.Trial) -> float | list[float]:
        plan = self.plan
        self.interrupted = None
        if plan.exp.sweep.sampler == "grid":
            if grid.owner_elsewhere(self.study, optuna_private.frozen(self.study, trial)):
                trial.set_user_attr(SURPLUS, True)
                raise Surplus(f"trial {trial.number}: its grid point is another trial's (or it is not one)")
        elif plan.n_trials and is_surplus(self.study, trial, plan.n_trials):
            trial.set_user_attr(SURPLUS, True)
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
        except Exception as e:
            if infrastructure(e):  # not the configuration's doing: it runs again
                self.interrupted = trial, reason(e)
                trial.set_user_attr(INTERRUPTED, reason(e))
                raise
            # the configuration's own failure (diverged, out of memory …): a result
            trial.set_user_attr("error", f"{type(e).__name__}: {e}"[:1000])
            raise
        return values if plan.multi else values[0]

    def _train(self, trial: optuna.Trial) -> list[float]:
        plan, exp = self.plan, self.plan.exp
        trial_exp = matched(exp.with_values({**suggest(trial, exp), "train.device": self.slot.run_device}))
        tags = {"harness.role": "trial", "harness.stage": "search", "harness.study": exp.name,
                "harness.trial": trial.number, "harness.worker": self.token, "harness.device": self.slot.device}
        retried = recovery.retry_of(self.study, trial)
        if retried is not None:
            tags["harness.retry_of"] = retried
        name, prune_on = run_name(trial_exp, trial.number), None if plan.multi else plan.objectives[0]
        epochs = trial_exp.train.epochs
        if exp.sweep.seeds == 1:
            run = MlflowRun(self.client, plan.exp_id, trial_exp, name=name, tags=tags, parent=plan.parent_run)
            # Recorded before anything else happens, so a worker that dies now leaves a run to close.
            trial.set_user_attr("mlflow_run_id", run.open())
            results, trial_run = [run_tracked(trial_exp, run, [PruneOnSignal(trial, prune_on, epochs)])], run.run_id
        else:
            group = SeedGroupRun(self.client, plan.exp_id, trial_exp, name=name, tags=tags, parent=plan.parent_run)
            trial.set_user_attr("mlflow_run_id", group.run_id)
            results, trial_run, curves, seed_runs = [], group.run_id, [], []
            try:
                for j in range(exp.sweep.seeds):
                    seed_exp = trial_exp.with_values({"train.seed": trial_exp.train.seed + j})
                    run = group.seed_run(seed_exp, j)
                    watch = PruneOnSignal(trial, prune_on, epochs, seed_index=j, earlier=curves)
                    results.append(run_tracked(seed_exp, run, [watch]))
                    curves.append(watch.curve)
                    seed_runs.append(run)
                group.finish(results, seed_runs[0])
            except BaseException as e:
                group.fail(e)
                raise
        try:
            return [sum(objective_value(r, o.key) for r in results) / len(results) for o in plan.objectives]
        except HarnessError as e:  # the runs trained, but the trial fails: say so in MLflow too
            set_tags(self.client, trial_run, {"harness.state": "failed", "harness.failure": "objective", "harness.error": str(e)})
            self.client.set_terminated(trial_run, "FAILED")
            raise

