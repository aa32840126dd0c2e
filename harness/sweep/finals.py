"""Final runs: each architecture's best trial trained again with fresh seeds, as runs tagged
`harness.role=final` under the study's run (what the report's confidence intervals come from)."""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial, TrialState

from harness.config import Experiment
from harness.runner import run_trial
from harness.sweep import workers
from harness.sweep.objective import Objective, Plan, objective_value
from harness.tracking import MlflowRun, find_runs, get_client, run_name


@dataclass
class FinalRun:
    arch: str
    source_trial: int
    seed: int
    value: float  # the first objective
    test_metric: float
    run_id: str


def best_per_arch(study: optuna.Study, exp: Experiment, obj: Objective) -> dict[str, FrozenTrial]:
    """Each architecture's best complete trial by the (first) objective."""
    best: dict[str, FrozenTrial] = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        arch = t.params.get("model.arch", exp.model.arch)
        value, current = t.values[0], best[arch].values[0] if arch in best else None
        if current is None or (value > current if obj.maximize else value < current):
            best[arch] = t
    return best


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
            tracked = MlflowRun(client, plan.exp_id, fexp, name=f"{run_name(fexp)}-final-s{seed}", tags=tags, parent=plan.parent_run)
            try:
                result = run_trial(fexp, [tracked, workers.StopOnSignal()])
            except Exception as e:  # recorded FAILED in MLflow by its run; the other repeats go on
                print(f"harness: final run of {arch} (trial #{t.number}) seed {seed} failed: {e}", file=sys.stderr)
                continue
            out.append(FinalRun(arch, t.number, seed, objective_value(result, obj.key), result.test_metric, tracked.run_id))
    return out
