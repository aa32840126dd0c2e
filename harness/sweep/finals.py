"""Final runs: each architecture's best configuration trained again with fresh seeds, as runs
tagged `harness.role=final` under the study's run: the sample the report's comparison rests on.

The seeds are `train.seed + 1000 + i` (i < `sweep.repeat`), the same for every architecture, so
families can be compared seed by seed (paired), and never used in the search. A final run is
tagged with its configuration (`harness.config`, a hash of the trial's parameters) and seed and
claimed before it trains, so however many commands run the repeats, each (configuration, seed)
is trained once; the report also keeps one run per (configuration, seed). A final run that a
fault of the machinery interrupted is trained again (`MAX_RETRY` times), as a search's trial is.
With `tracking.mlflow_model = "best"` (the default), once the final runs are done each
architecture's best seed by the validation objective (never the test metric) logs its model.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial, TrialState

from harness.config import Experiment, tracking_uri
from harness.locks import store_lock
from harness.logged_model import log_model_from_checkpoint
from harness.mlflow_store import find_runs, get_client, set_tags
from harness.resilience import infrastructure, reason
from harness.runner import run_tracked
from harness.sweep import workers
from harness.sweep.counting import MAX_RETRY
from harness.sweep.objective import Objective, Plan, objective_value
from harness.sweep.sizes import matched
from harness.sweep.storage import make_storage
from harness.tracking import MlflowRun, run_name

SEED_OFFSET = 1000  # final seeds start here above train.seed: far from the search's seeds
BACKOFF_S = 2.0  # the wait before a final run the machinery interrupted trains again (doubling)


@dataclass
class FinalRun:
    arch: str
    config: str  # harness.config: the source configuration's hash
    source_trial: int
    seed: int
    value: float  # the first objective
    test_metric: float
    run_id: str


def config_hash(params: dict) -> str:
    """A short, stable name for a configuration: its trial's parameters, hashed."""
    return hashlib.sha1(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:10]


def final_seeds(exp: Experiment, k: int) -> list[int]:
    return [exp.train.seed + SEED_OFFSET + i for i in range(k)]


def best_per_arch(study: optuna.Study, exp: Experiment, obj: Objective) -> dict[str, FrozenTrial]:
    """Each architecture's best complete trial by the (first) objective."""
    best: dict[str, FrozenTrial] = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        arch = t.params.get("model.arch", exp.model.arch)
        value, current = t.values[0], best[arch].values[0] if arch in best else None
        if current is None or (value > current if obj.maximize else value < current):
            best[arch] = t
    return best


def auto_repeat(plan: Plan, study: optuna.Study, client) -> tuple[int, dict[str, str]]:
    """`sweep.repeat = "auto"`: the number of final seeds that detects a difference of the report's
    margin between two architectures with 80% power at α = 0.05 after Holm over the comparisons
    with the best (its first, strictest step), between `repeat_min` and `repeat_max`. The seed spread
    is the search's: each architecture's best trial's sd over its `sweep.seeds` seeds of the best
    validation metric (relative, on a log-scale metric), pooled; the paired differences' sd is
    taken as √2 times it (no credit for the seeds' correlation). Returns the number and, as the
    study run's tags, its inputs."""
    from harness.report.stats import margin_on_scale, margin_text, seeds_for
    from harness.tasks import metrics

    s = plan.exp.sweep
    spreads, metric = [], None
    best = best_per_arch(study, plan.exp, plan.objectives[0])
    for t in best.values():
        if "mlflow_run_id" not in t.user_attrs:
            continue
        run = client.get_run(t.user_attrs["mlflow_run_id"])
        metric = run.data.params.get("task_metric", metric)
        sd, mean = (run.data.metrics.get(f"best_val_{metric}{k}") for k in ("_std", ""))
        if sd is not None and mean:
            spreads.append(sd / abs(mean) if metrics.scale(metric) == "log" else sd)
    if metric is None or not spreads:
        return s.repeat_max, {"harness.repeat_auto": str(s.repeat_max), "harness.repeat_inputs": "no seed spread was recorded"}
    scale = metrics.scale(metric)
    margin = plan.exp.report.margin or metrics.margin(metric)
    sd_diff = math.sqrt(2 * sum(x * x for x in spreads) / len(spreads))
    comparisons = max(len(best) - 1, 1)
    wanted = seeds_for(margin_on_scale(margin, scale), sd_diff, comparisons)
    n = min(max(wanted, s.repeat_min), s.repeat_max)
    inputs = (f"a difference of {margin_text(margin, scale)} in {metric} with 80% power at α = 0.05/{comparisons} "
              f"(Holm over {len(best)} architectures), the paired seeds' sd taken as {sd_diff:.3g} (√2 × the search's "
              f"pooled seed sd{' of log ' + metric if scale == 'log' else ''}), asks for {wanted} seeds")
    print(f"harness: repeat = auto: {n} final seeds ({inputs}; repeat_min {s.repeat_min}, repeat_max {s.repeat_max})",
          file=sys.stderr)
    return n, {"harness.repeat_auto": str(n), "harness.repeat_wanted": str(wanted), "harness.repeat_inputs": inputs}


def _taken(client, plan: Plan) -> dict[tuple[str, str], object]:
    """(config, seed) → the final run that holds it: finished, or running in a live process."""
    held = {}
    for r in find_runs(client, plan.exp_id, role="final", study=plan.exp.name):
        running = r.info.status == "RUNNING" and not workers.is_gone(r.data.tags.get("harness.worker", ""))
        if r.info.status == "FINISHED" or running:
            key = (r.data.tags.get("harness.config"), r.data.tags.get("harness.seed"))
            if key not in held or r.info.status == "FINISHED":
                held[key] = r
    return held


def run_repeats(plan: Plan, study: optuna.Study, k: int, device: str) -> list[FinalRun]:
    """Train each architecture's best configuration with the final seeds; a (configuration, seed)
    another process finished or is running is not trained again (the finished ones are returned)."""
    exp, obj = plan.exp, plan.objectives[0]
    client = get_client()
    token = workers.worker_id()
    out = []
    for arch, t in best_per_arch(study, exp, obj).items():
        base, config = matched(exp.with_values(t.params)), config_hash(t.params)
        for i, seed in enumerate(final_seeds(exp, k)):
            for attempt in range(MAX_RETRY + 1):  # a run the machinery interrupted is trained again
                if workers.stop_requested():
                    raise KeyboardInterrupt("stop requested")
                fexp = base.with_values({"train.seed": seed, "train.device": device})
                tags = {"harness.role": "final", "harness.stage": "final", "harness.study": exp.name,
                        "harness.source_trial": t.number, "harness.config": config, "harness.seed": seed,
                        "harness.repeat": i + 1, "harness.worker": token}
                tracked = MlflowRun(client, plan.exp_id, fexp, name=f"{run_name(fexp)}-final-s{seed}", tags=tags,
                                    parent=plan.parent_run, mlflow_model=exp.tracking.mlflow_model in ("all", True))
                with store_lock(tracking_uri()):  # check and claim as one step for the store's commands
                    held = _taken(client, plan).get((config, str(seed)))
                    if held is None:
                        tracked.open()
                if held is not None:
                    if held.info.status == "FINISHED":
                        m = held.data.metrics
                        out.append(FinalRun(arch, config, t.number, seed, m.get(f"best_{obj.key}", m.get(obj.key, math.nan)),
                                            m.get(f"test_{plan.metric}", math.nan), held.info.run_id))
                    break
                try:
                    result = run_tracked(fexp, tracked, [workers.StopOnSignal()])
                except BaseException as e:  # the run is ended, with its reason
                    if not isinstance(e, Exception):
                        raise
                    again = infrastructure(e) and attempt < MAX_RETRY
                    print(f"harness: final run of {arch} (trial #{t.number}) seed {seed} "
                          f"{f'interrupted ({reason(e)})' if infrastructure(e) else f'failed: {e}'}"
                          f"{'; training it again' if again else ''}", file=sys.stderr)
                    if again:
                        time.sleep(BACKOFF_S * 2 ** attempt)
                        continue
                    break
                out.append(FinalRun(arch, config, t.number, seed, objective_value(result, obj.key), result.test_metric,
                                    tracked.run_id))
                break
    return out


def repeat_worker(plan: Plan, slot: workers.Slot) -> None:
    """One spawned worker's share of the final runs: the claims give each (configuration, seed) to one worker."""
    study = optuna.load_study(study_name=plan.exp.name, storage=make_storage(plan.storage))
    run_repeats(plan, study, plan.exp.sweep.repeat, slot.run_device)


def run_finals(plan: Plan, study: optuna.Study, slots: list[workers.Slot]) -> list[FinalRun]:
    """The final runs on every slot (one spawned worker each when there are several), then
    collected here; a run no worker finished (its worker died, or it failed) is trained here."""
    if len(slots) > 1:
        procs, outages = workers.spawn(slots, repeat_worker, plan)
        try:
            for p in procs:
                while p.is_alive():
                    p.join(2.0)
                    workers.drain(outages)
        except KeyboardInterrupt:
            workers.stop(procs)
            raise
        workers.drain(outages)
    finals = run_repeats(plan, study, plan.exp.sweep.repeat, slots[0].run_device)
    if plan.exp.tracking.mlflow_model == "best":
        log_best_models(plan, finals)
    return finals


BEST_MODEL = "harness.model_of_best_seed"  # a final run's tag: the seed whose model was logged, of how many


def log_best_models(plan: Plan, finals: list[FinalRun]) -> None:
    """Each architecture's best final run by the first objective logs its model, from its
    checkpoint, once however many commands finish the study (claimed by a tag under the store's
    lock). A model that cannot be logged is said in one line: the runs and the report stand."""
    client, obj = get_client(), plan.objectives[0]
    for arch in dict.fromkeys(f.arch for f in finals):
        runs = [f for f in finals if f.arch == arch and math.isfinite(f.value)]
        if not runs:
            continue
        best = (max if obj.maximize else min)(runs, key=lambda f: f.value)
        if not plan.exp.tracking.checkpoint:
            print(f"harness: no MLflow model for {arch}'s best final run: tracking.checkpoint = false keeps no weights "
                  "to log (set tracking.mlflow_model = \"all\" to log each final run's as it ends)", file=sys.stderr)
            continue
        with store_lock(tracking_uri()):  # check and claim as one step (logging it takes the lock itself)
            if BEST_MODEL in client.get_run(best.run_id).data.tags:
                continue
            set_tags(client, best.run_id, {BEST_MODEL: "being logged"})
        try:
            t0 = time.perf_counter()
            log_model_from_checkpoint(client, best.run_id)
        except Exception as e:
            client.delete_tag(best.run_id, BEST_MODEL)  # the next sweep tries again
            print(f"harness: the MLflow model of {arch}'s best final run ({best.run_id}) could not be logged: "
                  f"{reason(e)}", file=sys.stderr)
            continue
        # outside the run's own wall time (it had ended): the report counts it apart (harness.report.runs.time_spent)
        client.log_metric(best.run_id, "time_best_model_s", time.perf_counter() - t0, step=0)
        set_tags(client, best.run_id, {BEST_MODEL: f"seed {best.seed}, the best of {len(runs)} by {obj.key}"})
