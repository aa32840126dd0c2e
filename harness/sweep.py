"""`harness sweep`: an Optuna study over architectures and hyperparameters, on every device.

The experiment's `[sweep]` section is the study: objectives, the search space (`[sweep.space]`
plus per-architecture `[sweep.space_by_arch.<arch>]`), sampler, pruner (fed each epoch's
validation value), `n_trials` and/or `timeout`, seed. One worker per device slot
(`harness.workers`) runs trials against the shared storage; each trial is a validated
`Experiment`, trained by the one loop and tracked as an MLflow run nested under the study's run.

Storage: a SQLite file (`optuna.db`) by default, `postgresql://…` for workers on many machines,
a journal file (`journal:PATH`, or a path ending .log / .journal) for many processes on one
machine. Running the same command again resumes the study and its MLflow parent run.

Promises:
- the study ends holding exactly `n_trials` ended trials (complete, pruned, or failed by their
  own error, see `ended`) however many workers race for the last ones: a trial started beyond
  that count fails at once, before sampling, marked with the user attribute `harness_surplus`;
- a trial whose worker died is failed and queued again with the same parameters — at once when
  the worker ran on this machine (its process is gone), after the heartbeat grace period
  otherwise (RDB storages) — and its MLflow run is closed FAILED (`harness.failure=worker_lost`);
  no run of the study is left RUNNING by a sweep that ends;
- Ctrl-C (or SIGTERM) fails the running trials, ends their runs KILLED and leaves the storage
  consistent; the next run of the command resumes;
- multi-objective studies tag their Pareto-optimal trial runs `harness.pareto=true`;
- `repeat = K` re-trains each architecture's best trial with K fresh seeds as runs tagged
  `harness.role=final` / `harness.stage=final` under the study's run (trial runs are
  `harness.role=trial` / `harness.stage=search`, so finals never count as search trials).
"""

from __future__ import annotations

import copy
import logging
import math
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState
from rich import progress as live
from rich.console import Console

from harness import workers
from harness.archs import create_model
from harness.config import Experiment, ParamSpec, default_storage, tracking_uri
from harness.errors import HarnessError
from harness.tasks import Task, load_task
from harness.tracking import find_runs, get_client, run_name, set_tags, study_run, tracked_fit
from harness.train import TrialResult
from harness.workers import Slot

HEARTBEAT_S = 10  # a worker's trial records a heartbeat this often (RDB storages)
GRACE_S = 60  # a RUNNING trial without a heartbeat for this long is failed and re-queued
MAX_RETRY = 2  # times a trial whose worker died is queued again
POLL_S = 2.0  # how often a waiting worker, or the sweep watching its workers, looks again


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


def arch_choices(exp: Experiment) -> list[str]:
    spec = exp.sweep.space.get("model.arch")
    return list(spec.choices) if spec and spec.choices else [exp.model.arch]


def suggest(trial: optuna.Trial, exp: Experiment) -> dict:
    """Sample the search space into dotted-key values; `space_by_arch` only for the chosen arch."""
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
    archs = arch_choices(exp)
    for arch in exp.sweep.space_by_arch:
        if arch not in archs:
            raise HarnessError(f"sweep.space_by_arch.{arch}: this sweep never picks {arch!r} (it picks {', '.join(archs)})")
    for arch in archs:
        create_model(arch, input_size=task.input_size, output_size=task.output_size, io=task.io,
                     seq_len=task.seq_len, **exp.model.overrides())


def grid_size(exp: Experiment) -> int | None:
    if exp.sweep.sampler != "grid":
        return None
    return math.prod(len(v.choices) for v in exp.sweep.space.values() if v.choices)


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
            grid = {k: v.choices for k, v in exp.sweep.space.items()}
            if any(c is None for c in grid.values()) or exp.sweep.space_by_arch:
                raise HarnessError("sweep.sampler: 'grid' needs every sweep.space entry as a list of choices (and no space_by_arch)")
            return optuna.samplers.GridSampler(grid, seed=seed)
        return optuna.samplers.TPESampler(seed=seed, multivariate=not multi, group=not multi)


def worker_seed(seed: int | None, worker: int, n_existing: int) -> int | None:
    """A sampler seed per worker and per resume: equal seeds would propose equal trials."""
    if seed is None:
        return None
    return int(np.random.SeedSequence([seed, worker, n_existing]).generate_state(1)[0])


def make_pruner(exp: Experiment) -> optuna.pruners.BasePruner:
    if exp.sweep.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)
    if exp.sweep.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=exp.train.epochs)
    return optuna.pruners.NopPruner()


# ---------------------------------------------------------------- storage


def resolve_storage(spec: str | None) -> str:
    """A storage spec as a URL: unset → SQLite `optuna.db` here; `journal:PATH` or a path
    ending .log / .journal → `journal:<absolute path>`; anything else must be a database URL."""
    if not spec:
        return default_storage()
    if spec.startswith("journal:") or spec.endswith((".log", ".journal")) and "://" not in spec:
        path = Path(spec.removeprefix("journal:")).expanduser()
        return f"journal:{path.resolve()}"
    if "://" not in spec:
        raise HarnessError(f"sweep.storage: {spec!r} is neither a database URL (sqlite:///optuna.db, "
                           "postgresql://user:pass@host/db) nor a journal file (journal:PATH or *.log)")
    return spec


def masked(url: str) -> str:
    """The URL without its password, fit to print and log."""
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in creds:
        return url
    return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}"


def with_driver(url: str) -> str:
    """`postgresql://` with the driver that is installed: SQLAlchemy 2.1 means psycopg 3 by
    it, 2.0 psycopg2; harness's `postgres` extra installs psycopg2."""
    if not url.startswith("postgresql://"):
        return url
    import importlib.util

    for module, driver in (("psycopg", "psycopg"), ("psycopg2", "psycopg2")):
        if importlib.util.find_spec(module) is not None:
            return url.replace("postgresql://", f"postgresql+{driver}://", 1)
    raise HarnessError(f"sweep.storage: {masked(url)} needs a PostgreSQL driver; pip install 'harness[postgres]'")


def make_storage(url: str) -> optuna.storages.BaseStorage:
    """The Optuna storage for a resolved URL, with heartbeats where the storage has them."""
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend

        path = Path(url.removeprefix("journal:"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    # SQLite: wait for a busy database rather than fail (several local workers share the file).
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    kwargs = {"engine_kwargs": engine, "heartbeat_interval": HEARTBEAT_S, "grace_period": GRACE_S}
    for attempt in range(3):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    return optuna.storages.RDBStorage(with_driver(url), **kwargs, heartbeat_stale_trial_callback=lost_trial)
                except TypeError:  # Optuna < 4.9 names it failed_trial_callback
                    return optuna.storages.RDBStorage(with_driver(url), **kwargs, failed_trial_callback=lost_trial)
        except ModuleNotFoundError as e:
            raise HarnessError(f"sweep.storage: {masked(url)} needs the {e.name!r} module; pip install 'harness[postgres]'") from None
        except Exception as e:  # the database's own reason (refused, no such database, bad password …)
            if attempt < 2:  # workers starting together race to create Optuna's tables: look again
                time.sleep(1 + attempt)
                continue
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise HarnessError(f"sweep.storage: cannot open {masked(url)}: {reason}") from None
    raise AssertionError("unreachable")


# ---------------------------------------------------------------- dead workers


def close_run(client, run_id: str, failure: str, error: str) -> bool:
    """End a RUNNING MLflow run as FAILED with its reason; False if it had ended already."""
    try:
        if client.get_run(run_id).info.status != "RUNNING":
            return False
    except Exception:  # deleted or unknown run
        return False
    set_tags(client, run_id, {"harness.state": "failed", "harness.failure": failure, "harness.error": error})
    client.set_terminated(run_id, "FAILED")
    return True


def _retry() -> optuna.storages.RetryFailedTrialCallback:
    cls = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None) or optuna.storages.RetryFailedTrialCallback
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cls(max_retry=MAX_RETRY)


def lost_trial(study: optuna.Study, trial: FrozenTrial) -> None:
    """A failed trial whose worker died: close its MLflow run and queue it again (same params)."""
    run_id = trial.user_attrs.get("mlflow_run_id")
    if run_id:
        worker = trial.user_attrs.get("worker", "?")
        close_run(get_client(), run_id, "worker_lost", f"worker {worker} stopped during trial {trial.number}")
    retry = copy.deepcopy(trial)
    # The retry starts clean: no run, no worker, so nothing mistakes it for the dead one.
    retry.user_attrs = {k: v for k, v in trial.user_attrs.items() if k not in ("mlflow_run_id", "worker", "device")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _retry()(study, retry)


def fail_lost_trials(study: optuna.Study) -> list[int]:
    """Fail the RUNNING trials whose worker process on this machine is gone, or whose heartbeat
    is stale (RDB storages); each is re-queued by `lost_trial`. Returns their numbers."""
    storage = study._storage  # Optuna's own fail_stale_trials works on these privates too
    lost = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        token = t.user_attrs.get("worker")
        if not token or not workers.is_gone(token):
            continue
        try:
            if not storage.set_trial_state_values(t._trial_id, TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:  # another process got there first
            continue
        lost.append(t.number)
        lost_trial(study, storage.get_trial(t._trial_id))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optuna.storages.fail_stale_trials(study)  # heartbeats; no-op for journal storages
    return lost


def close_orphan_runs(client, exp_id: str, study: optuna.Study) -> int:
    """End RUNNING runs of the study nobody runs any more: trial runs whose Optuna trial is not
    RUNNING, final runs whose process on this machine is gone."""
    runs = client.search_runs([exp_id], f"attributes.status = 'RUNNING' and tags.`harness.study` = '{study.study_name}'",
                              max_results=5000)
    # Trial states read after the runs: a run seen above belongs to a trial that exists by now.
    states = {t.number: t.state for t in study.get_trials(deepcopy=False)}
    n = 0
    for run in runs:
        tags = run.data.tags
        role, token = tags.get("harness.role"), tags.get("harness.worker", "")
        if role == "trial":
            try:
                number = int(tags.get("harness.trial", ""))
            except ValueError:
                continue
            orphan = states.get(number) != TrialState.RUNNING
        else:
            orphan = role == "final" and workers.is_gone(token)
        if orphan:
            n += close_run(client, run.info.run_id, "worker_lost", f"worker {token or '?'} stopped; its trial is not running")
    return n


# ---------------------------------------------------------------- workers


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


def make_objective(plan: Plan, study: optuna.Study, slot: Slot, device: str, stop: list) -> Callable:
    """The Optuna objective of one worker. A `HarnessError` (bad settings) stops the worker and
    is re-raised after Optuna has failed the trial (`stop` carries it out)."""
    exp, objs, multi = plan.exp, plan.objectives, plan.multi
    client = get_client()
    token = workers.worker_id()

    def objective(trial: optuna.Trial):
        if plan.n_trials and is_surplus(study, trial, plan.n_trials):
            trial.set_user_attr("harness_surplus", True)
            raise Surplus(f"trial {trial.number}: the study already holds or runs its {plan.n_trials} trials")
        trial.set_user_attr("worker", token)
        trial.set_user_attr("device", slot.device)

        def report(epoch: int, record: dict[str, float]) -> None:
            _check_stop(epoch, record)
            if multi or objs[0].key not in record:  # Optuna prunes single-objective studies only
                return
            trial.report(record[objs[0].key], epoch)
            # After the last epoch the work is done: keep the result rather than prune it.
            if epoch < trial_exp.train.epochs and trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {epoch}")

        try:
            trial_exp = exp.with_values({**suggest(trial, exp), "train.device": device})
            tags = {"harness.role": "trial", "harness.stage": "search", "harness.study": exp.name,
                    "harness.trial": trial.number, "harness.worker": token, "harness.device": slot.device}
            retry_of = study._storage.get_trial_system_attrs(trial._trial_id).get("failed_trial")
            if retry_of is not None:
                tags["harness.retry_of"] = retry_of
            result = tracked_fit(
                client, plan.exp_id, trial_exp, name=run_name(trial_exp, trial.number), tags=tags, parent=plan.parent_run,
                on_epoch=report, on_start=lambda run_id: trial.set_user_attr("mlflow_run_id", run_id),
                pruned=(optuna.TrialPruned,),
            )
            try:
                values = [objective_value(result, o.key) for o in objs]
            except HarnessError as e:  # the run trained, but the trial fails: say so in MLflow too
                set_tags(client, result.run_id, {"harness.state": "failed", "harness.failure": "objective", "harness.error": str(e)})
                client.set_terminated(result.run_id, "FAILED")
                raise
        except optuna.TrialPruned:
            raise
        except HarnessError as e:
            stop.append(e)
            study.stop()
            raise
        except Exception as e:  # the configuration's own failure (diverged, out of memory …): a result
            trial.set_user_attr("error", f"{type(e).__name__}: {e}"[:1000])
            raise
        return values if multi else values[0]

    return objective


class _OneLineFailures(logging.Filter):
    """Optuna logs a failed trial with its traceback and again with its value: keep one line
    (the MLflow run holds the error), and none for Ctrl-C or a surplus trial."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        record.exc_info = None
        return not isinstance(exc, (KeyboardInterrupt, Surplus)) and "failed with value None" not in record.getMessage()


def quiet_optuna() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    log = logging.getLogger("optuna.study._optimize")
    if not any(isinstance(f, _OneLineFailures) for f in log.filters):
        log.addFilter(_OneLineFailures())


def work(plan: Plan, slot: Slot, on_trial: Callable[[optuna.Study], None] | None = None) -> None:
    """One worker: run trials on `slot` until the study holds `n_trials` ended trials or the
    deadline passes. Runs in the sweep's own process (one slot) or in a spawned one."""
    quiet_optuna()
    exp, n = plan.exp, plan.n_trials
    device = slot.run_device
    sampler = make_sampler(exp, plan.multi, worker_seed(exp.sweep.seed, slot.index, plan.n_existing))
    study = optuna.load_study(study_name=exp.name, storage=make_storage(plan.storage), sampler=sampler, pruner=make_pruner(exp))
    stop: list[HarnessError] = []
    objective = make_objective(plan, study, slot, device, stop)
    while plan.deadline is None or time.time() < plan.deadline:
        if workers.stop_requested():
            raise KeyboardInterrupt("stop requested")
        if n is not None:
            trials = study.get_trials(deepcopy=False)
            finished = sum(ended(t) for t in trials)
            running = sum(t.state == TrialState.RUNNING for t in trials)
            if finished >= n:
                break
            if finished + running >= n:  # the rest run elsewhere: wait, and take over any that die
                fail_lost_trials(study)
                time.sleep(POLL_S)
                continue
        study.optimize(objective, n_trials=1, catch=(Exception,), gc_after_trial=False)
        if stop:
            raise stop[0]
        if on_trial is not None:
            on_trial(study)


def run_pool(plan: Plan, slots: list[Slot], study: optuna.Study, progress: Progress) -> None:
    """Spawn one worker per slot and watch them; a worker that dies has its trial re-queued."""
    procs = workers.spawn(slots, work, plan)
    try:
        while any(p.is_alive() for p in procs):
            time.sleep(POLL_S)
            if any(p.exitcode not in (None, 0) for p in procs):
                fail_lost_trials(study)
            progress.update(study)
    except KeyboardInterrupt:
        workers.stop(procs)
        raise
    finally:
        fail_lost_trials(study)
    if any(p.exitcode == 2 for p in procs):
        raise HarnessError("a worker stopped on bad settings; its message is above")
    for p, slot in zip(procs, slots, strict=True):
        if p.exitcode:
            print(f"harness: worker {slot.index} on {slot.device} exited with code {p.exitcode}; its trial was failed and queued again",
                  file=sys.stderr)


# ---------------------------------------------------------------- progress


class Progress:
    """A live line: trials finished of n, complete / pruned / failed, best value, elapsed, ETA.
    Quiet unless stdout is a terminal."""

    def __init__(self, study: optuna.Study, plan: Plan, enabled: bool | None = None):
        console = Console()
        self.enabled = console.is_terminal if enabled is None else enabled
        self.plan = plan
        self.bar = live.Progress(
            live.TextColumn("[bold]{task.description}"), live.BarColumn(), live.MofNCompleteColumn(),
            live.TextColumn("{task.fields[stats]}"), live.TimeElapsedColumn(), live.TextColumn("ETA"), live.TimeRemainingColumn(),
            console=console, disable=not self.enabled, transient=False,
        )
        counts = self._counts(study)
        self.task = self.bar.add_task(study.study_name, total=plan.n_trials, completed=counts["ended"], stats=self._stats(study, counts))

    @staticmethod
    def _counts(study: optuna.Study) -> dict[str, int]:
        trials = study.get_trials(deepcopy=False)
        count = {s: sum(t.state == s for t in trials) for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)}
        return {
            "ended": sum(ended(t) for t in trials), "complete": count[TrialState.COMPLETE], "pruned": count[TrialState.PRUNED],
            "failed": sum(t.state == TrialState.FAIL and not t.user_attrs.get("harness_surplus") for t in trials),
            "running": count[TrialState.RUNNING],
        }

    def _stats(self, study: optuna.Study, c: dict[str, int]) -> str:
        text = f"{c['complete']} complete · {c['pruned']} pruned · {c['failed']} failed · {c['running']} running"
        if c["complete"]:
            if self.plan.multi:
                text += f" · Pareto front {len(study.best_trials)}"
            else:
                text += f" · best {study.best_value:.4g}"
        if self.plan.deadline:
            text += f" · stops starting in {max(0, self.plan.deadline - time.time()):.0f}s"
        return text

    def update(self, study: optuna.Study) -> None:
        if self.enabled:
            counts = self._counts(study)
            self.bar.update(self.task, completed=counts["ended"], stats=self._stats(study, counts))

    def __enter__(self) -> Progress:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.bar.__exit__(*exc)


# ---------------------------------------------------------------- the sweep


def parent_run(client, exp: Experiment, storage: str) -> tuple[str, str]:
    """The study's MLflow experiment and parent run, reused when it exists. Two sweeps starting
    together on different machines may both create one: the oldest wins, the other is deleted."""
    logged = exp.with_values({"sweep.storage": masked(storage)})  # never log a database password
    exp_id, run_id = study_run(client, logged, exp.name)
    runs = find_runs(client, exp_id, role="study", study=exp.name)
    if len(runs) > 1:
        keep = min(runs, key=lambda r: (r.info.start_time, r.info.run_id)).info.run_id
        if keep != run_id:
            client.delete_run(run_id)
            client.update_run(keep, status="RUNNING")
            run_id = keep
    return exp_id, run_id


def best_per_arch(study: optuna.Study, exp: Experiment, obj: Objective) -> dict[str, FrozenTrial]:
    """Each architecture's best complete trial by the (first) objective."""
    best: dict[str, FrozenTrial] = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        arch = t.params.get("model.arch", exp.model.arch)
        value, current = t.values[0], best[arch].values[0] if arch in best else None
        if current is None or (value > current if obj.maximize else value < current):
            best[arch] = t
    return best


@dataclass
class FinalRun:
    arch: str
    source_trial: int
    seed: int
    value: float  # the first objective
    test_metric: float
    run_id: str


def _check_stop(epoch: int, record: dict[str, float]) -> None:
    if workers.stop_requested():  # a Ctrl-C the interpreter swallowed
        raise KeyboardInterrupt("stop requested")


def run_repeats(plan: Plan, study: optuna.Study, k: int, device: str) -> list[FinalRun]:
    """Re-train each architecture's best trial with seeds train.seed+1 … +k as final runs; those
    already FINISHED (an earlier, interrupted call) are kept, not repeated."""
    exp, obj = plan.exp, plan.objectives[0]
    client = get_client()
    token = workers.worker_id()
    runs = find_runs(client, plan.exp_id, role="final", study=exp.name)
    done = {(r.data.tags.get("harness.source_trial"), r.data.params.get("train.seed")): r
            for r in runs if r.info.status == "FINISHED"}
    out = []
    for arch, t in best_per_arch(study, exp, obj).items():
        base = exp.with_values(t.params)
        for i in range(1, k + 1):
            seed = base.train.seed + i
            run = done.get((str(t.number), str(seed)))
            if run is not None:
                m = run.data.metrics
                out.append(FinalRun(arch, t.number, seed, m.get(f"best_{obj.key}", m.get(obj.key, math.nan)),
                                    m.get(f"test_{plan.metric}", math.nan), run.info.run_id))
                continue
            fexp = base.with_values({"train.seed": seed, "train.device": device})
            tags = {"harness.role": "final", "harness.stage": "final", "harness.study": exp.name, "harness.source_trial": t.number,
                    "harness.repeat": i, "harness.worker": token}
            if workers.stop_requested():
                raise KeyboardInterrupt("stop requested")
            try:
                result = tracked_fit(client, plan.exp_id, fexp, name=f"{run_name(fexp)}-final-s{seed}", tags=tags,
                                     parent=plan.parent_run, on_epoch=_check_stop)
            except Exception as e:  # recorded FAILED in MLflow by tracked_fit; the other repeats go on
                print(f"harness: final run of {arch} (trial #{t.number}) seed {seed} failed: {e}", file=sys.stderr)
                continue
            out.append(FinalRun(arch, t.number, seed, objective_value(result, obj.key), result.test_metric, result.run_id))
    return out


def tag_pareto(client, exp_id: str, study: optuna.Study) -> list[FrozenTrial]:
    """Tag each complete trial run `harness.pareto` true or false (the front moves as a study
    resumes, so earlier tags are corrected); returns the front."""
    front = study.best_trials
    numbers = {t.number for t in front}
    for run in find_runs(client, exp_id, role="trial", study=study.study_name):
        if run.data.tags.get("harness.state") != "complete":
            continue
        want = str(int(run.data.tags.get("harness.trial", -1)) in numbers).lower()
        if run.data.tags.get("harness.pareto") != want:
            set_tags(client, run.info.run_id, {"harness.pareto": want})
    return front


@dataclass
class SweepOutcome:
    study: optuna.Study
    objectives: list[Objective]
    storage: str
    pareto: list[FrozenTrial]
    finals: list[FinalRun]

    def lines(self) -> list[str]:
        """What the command prints at the end: counts, best or Pareto front, final runs."""
        trials = self.study.get_trials(deepcopy=False)
        count = {s: sum(t.state == s and not t.user_attrs.get("harness_surplus") for t in trials) for s in TrialState}
        parts = [f"{count[s]} {s.name.lower()}" for s in TrialState if count[s]]
        out = [f"study {self.study.study_name!r} ({masked(self.storage)}): {', '.join(parts) or 'no trials'}"]
        objs = self.objectives

        def describe(t: FrozenTrial) -> str:
            values = ", ".join(f"{o.key}={v:.4g}" for o, v in zip(objs, t.values, strict=True))
            params = ", ".join(f"{k.split('.')[-1]}={v:.3g}" if isinstance(v, float) else f"{k.split('.')[-1]}={v}"
                               for k, v in t.params.items())
            return f"  #{t.number}: {values}  ({params})"

        if len(objs) > 1 and self.pareto:
            out.append(f"Pareto front ({len(self.pareto)} trials, tagged harness.pareto=true):")
            out += [describe(t) for t in sorted(self.pareto, key=lambda t: t.number)]
        elif len(objs) == 1 and count[TrialState.COMPLETE]:
            out.append(f"best {objs[0]}:")
            out.append(describe(self.study.best_trial))
        if self.finals:
            out.append(f"final runs (best trial per architecture, fresh seeds; {objs[0].key} / test):")
            for arch in dict.fromkeys(f.arch for f in self.finals):
                fs = [f for f in self.finals if f.arch == arch]
                vals, tests = [f.value for f in fs], [f.test_metric for f in fs]
                sd = f" ± {statistics.stdev(vals):.3g}" if len(vals) > 1 else ""
                out.append(f"  {arch} (trial #{fs[0].source_trial}, {len(fs)} seed{'s' * (len(fs) > 1)}): {statistics.mean(vals):.4g}{sd}"
                           f" / {statistics.mean(tests):.4g}")
        return out


def run(
    exp: Experiment, *, study_name: str | None = None, storage: str | None = None, progress: bool | None = None,
) -> SweepOutcome:
    """Run (or resume) the study until it holds `sweep.n_trials` ended trials or `timeout`
    passes, on every slot `sweep.devices` × `sweep.jobs` gives, then tag the Pareto front and
    run the repeats. `progress`: None shows the live display when stdout is a terminal."""
    if study_name:
        exp = exp.with_values({"name": study_name})
    url = resolve_storage(storage or exp.sweep.storage)
    task = load_task(exp.task.name, **exp.task.options())
    objs = objectives(exp, task)
    check_models(exp, task)
    slots, notice = workers.plan_slots(exp.sweep.devices, exp.sweep.jobs, exp.train.device)
    if notice:
        print(f"harness: {notice}", file=sys.stderr)
    quiet_optuna()
    with workers.machine_lock(url):
        study = optuna.create_study(
            study_name=exp.name, storage=make_storage(url), load_if_exists=True,
            sampler=make_sampler(exp, len(objs) > 1), pruner=make_pruner(exp), directions=[o.direction for o in objs],
        )
    if [d.name.lower() for d in study.directions] != [o.direction for o in objs]:
        raise HarnessError(f"study {exp.name!r} exists with other objectives; choose another --study name")
    with workers.machine_lock(tracking_uri()):
        client = get_client()
        exp_id, parent = parent_run(client, exp, url)
    status, pareto, finals = "FAILED", [], []
    try:
        fail_lost_trials(study)
        close_orphan_runs(client, exp_id, study)
        caps = [c for c in (exp.sweep.n_trials, grid_size(exp)) if c is not None]
        plan = Plan(
            exp=exp, objectives=objs, storage=url, exp_id=exp_id, parent_run=parent, n_trials=min(caps) if caps else None,
            deadline=time.time() + exp.sweep.timeout if exp.sweep.timeout else None, n_existing=len(study.trials),
            metric=task.metric,
        )
        with workers.interruptible():
            with Progress(study, plan, progress) as bar:
                if len(slots) == 1:
                    work(plan, slots[0], on_trial=bar.update)
                else:
                    run_pool(plan, slots, study, bar)
                bar.update(study)
            if plan.multi:
                pareto = tag_pareto(client, exp_id, study)
            if exp.sweep.repeat:
                finals = run_repeats(plan, study, exp.sweep.repeat, slots[0].run_device)
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        fail_lost_trials(study)
        close_orphan_runs(client, exp_id, study)
        client.set_terminated(parent, status)
    return SweepOutcome(study, objs, url, pareto, finals)
