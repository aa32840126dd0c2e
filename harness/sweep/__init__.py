"""`harness sweep`: an Optuna study over architectures and hyperparameters, on every device.

This module runs a sweep from start to end (`run`); each job lives in its own module:
`space` (search space, sampler, pruner), `storage` (URLs, drivers, masking; the store lock is harness.locks),
`recovery` (lost trials, orphan runs), `objective` (one trial), `pool` and `workers` (worker
processes), `progress`, `finals` (fresh-seed re-runs), `pareto`; `optuna_private` is the one
adapter over Optuna's private API.

The experiment's `[sweep]` section is the study: objectives, the search space (`[sweep.space]`
plus per-architecture `[sweep.space_by_arch.<arch>]`), sampler, pruner (fed each epoch's
validation value), `n_trials` and/or `timeout`, seed. One worker per device slot
(`workers`) runs trials against the shared storage; each trial is a validated
`Experiment`, trained by the one loop and tracked as an MLflow run nested under the study's run.

Storage: a SQLite file (`optuna.db`) by default, `postgresql://…` for workers on many machines,
a journal file (`journal:PATH`, or a path ending .log / .journal) for many processes on one
machine. Running the same command again resumes the study and its MLflow parent run.

Promises:
- the study ends holding exactly `n_trials` ended trials (complete, pruned, or failed by their
  own error, see `ended`) however many workers race for the last ones: a trial started beyond
  that count fails at once, before sampling, marked with the user attribute `harness_surplus`;
- a grid study runs each point of its grid exactly once, whatever the workers, concurrent
  commands or resumes (`grid`); `seeds = k` trains each configuration with k seeds, the
  objective being their mean;
- a trial whose worker died is failed and queued again with the same parameters — at once when
  the worker ran on this machine (its process is gone), after the heartbeat grace period
  otherwise (RDB storages) — and its MLflow run is closed FAILED (`harness.failure=worker_lost`);
  no run of the study is left RUNNING by a sweep that ends;
- a fault of the machinery (a store, the network, the file system) is never a configuration's
  result: a call waits out a store's outage (harness.resilience: each outage told in one line), and
  a trial one ends anyway is interrupted and queued again (`MAX_RETRY` times a sweep; a grid point
  still missing is queued by the next sweep); the splits' dataset rows are made once, on the
  study's run, before any worker starts, so workers never race to create them;
- Ctrl-C (or SIGTERM) fails the running trials, ends their runs KILLED and leaves the storage
  consistent; the next run of the command resumes;
- multi-objective studies tag their Pareto-optimal trial runs `harness.pareto=true`;
- `repeat = K` re-trains each architecture's best trial with K fresh seeds as runs tagged
  `harness.role=final` / `harness.stage=final` under the study's run (trial runs are
  `harness.role=trial` / `harness.stage=search`, so finals never count as search trials);
  `repeat = "auto"` chooses K by power from the search's seed spread (`finals.auto_repeat`).
"""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass, replace

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from harness import provenance
from harness.checks import check_tracking
from harness.config import Experiment, tracking_uri
from harness.errors import HarnessError
from harness.locks import store_lock
from harness.mlflow_store import find_runs, get_client, set_tags
from harness.precision import check_precision
from harness.sweep import grid, workers
from harness.sweep.capacity import size_slots
from harness.sweep.counting import SURPLUS, interrupted
from harness.sweep.finals import FinalRun, auto_repeat, best_per_arch, run_finals
from harness.sweep.objective import Objective, Plan, objectives
from harness.sweep.pareto import tag_pareto
from harness.sweep.pool import quiet_optuna, run_pool, work
from harness.sweep.progress import Progress
from harness.sweep.recovery import close_orphan_runs, fail_lost_trials
from harness.sweep.space import check_space, check_study, edges, make_pruner, make_sampler, precisions
from harness.sweep.storage import make_storage, masked, resolve_storage
from harness.tasks import shared_task
from harness.tracking import dataset_inputs, study_run

__all__ = ["SweepOutcome", "run"]


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


@dataclass
class SweepOutcome:
    study: optuna.Study
    objectives: list[Objective]
    storage: str
    pareto: list[FrozenTrial]
    finals: list[FinalRun]
    edges: list[str]

    def lines(self) -> list[str]:
        """What the command prints at the end: counts, best or Pareto front, final runs."""
        trials = [t for t in self.study.get_trials(deepcopy=False) if not t.user_attrs.get(SURPLUS)]
        count = {s.name.lower(): sum(t.state == s and not interrupted(t) for t in trials) for s in TrialState}
        count["interrupted"] = sum(map(interrupted, trials))  # by the machinery: run again, never a result
        parts = [f"{n} {state}" for state, n in count.items() if n]
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
        elif len(objs) == 1 and count["complete"]:
            out.append(f"best {objs[0]}:")
            out.append(describe(self.study.best_trial))
        if self.edges:
            out.append("on the edge of the search space (the optimum may lie beyond; widen the range):")
            out += [f"  {e}" for e in self.edges]
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
    source: dict[str, str] | None = None,
) -> SweepOutcome:
    """Run (or resume) the study until it holds `sweep.n_trials` ended trials or `timeout`
    passes, on every slot `sweep.devices` × `sweep.jobs` gives, then tag the Pareto front and
    run the repeats. `progress`: None shows the live display when stdout is a terminal;
    `source`: the command and experiment file, recorded for the report's reproduction section."""
    if study_name:
        exp = exp.with_values({"name": study_name})
    # Everything is checked before anything is written: storage spec, devices, task, objectives,
    # every value of the search space, sampler, then both stores (read, not created).
    url = resolve_storage(storage or exp.sweep.storage)
    slots, notice = workers.plan_slots(exp.sweep.devices, exp.sweep.jobs, exp.train.device)
    for precision in precisions(exp):
        for slot in slots:
            check_precision(precision, torch.device(slot.device))
    task = shared_task(exp.task.name, **exp.task.options())
    objs = objectives(exp, task)
    check_space(exp, task)
    slots, sized = size_slots(slots, exp)  # each GPU's workers against its memory
    sampler = make_sampler(exp, len(objs) > 1)
    check_tracking(exp.name)
    quiet_optuna()
    with store_lock(url):
        study = optuna.create_study(
            study_name=exp.name, storage=make_storage(url), load_if_exists=True,
            sampler=sampler, pruner=make_pruner(exp), directions=[o.direction for o in objs],
        )
    if [d.name.lower() for d in study.directions] != [o.direction for o in objs]:
        raise HarnessError(f"study {exp.name!r} exists with other objectives; choose another --study name")
    check_study(study, exp)
    with store_lock(tracking_uri()):
        client = get_client()
        exp_id, parent = parent_run(client, exp, url)
        set_tags(client, parent, provenance.study_tags(exp, url, [s.device for s in slots], source))
        set_tags(client, parent, {"harness.margin": "" if exp.report.margin is None else str(exp.report.margin)})
        # The splits' dataset rows, made once here: workers starting together then only link them.
        client.log_inputs(parent, datasets=dataset_inputs(task, task.split_hashes()))
    for line in (notice, sized):  # after the checks: a bad input's error stays the one line printed
        if line:
            print(f"harness: {line}", file=sys.stderr)
    status, pareto, finals, edge = "FAILED", [], [], []
    started = time.monotonic()
    try:
        fail_lost_trials(study)
        close_orphan_runs(client, exp_id, study)
        if exp.sweep.sampler == "grid":
            with store_lock(url):  # commands starting together queue each point once
                grid.enqueue_missing(study, exp)
        grid_size = len(grid.all_points(exp)) if exp.sweep.sampler == "grid" else None
        caps = [c for c in (exp.sweep.n_trials, grid_size) if c is not None]
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
            edge = edges(exp, best_per_arch(study, exp, objs[0]))
            set_tags(client, parent, {"harness.edges": "; ".join(edge)})
            if exp.sweep.repeat == "auto":
                n, tags = auto_repeat(plan, study, client)
                set_tags(client, parent, tags)
                plan = replace(plan, exp=exp.with_values({"sweep.repeat": n}))
            if plan.exp.sweep.repeat:
                finals = run_finals(plan, study, slots)
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        fail_lost_trials(study)
        close_orphan_runs(client, exp_id, study)
        provenance.add_wall_time(client, parent, time.monotonic() - started, len(slots))
        client.set_terminated(parent, status)
    return SweepOutcome(study, objs, url, pareto, finals, edge)
