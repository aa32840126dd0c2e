"""Runs written straight into a real MLflow store with the params, metrics and tags harness's
sweeps log: what the report and leaderboard tests read, with known values and no training; and a
callback that keeps the training loop's gradient records."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from harness.callbacks import Callback


def write_run(client: MlflowClient, exp_id: str, name: str, *, params: dict[str, Any], tags: dict[str, Any],
              metrics: dict[str, float] | None = None, curve: tuple[str, Sequence[float]] | None = None,
              status: str = "FINISHED") -> str:
    """One ended run: `metrics` at step 0, `curve` = (key, values) at steps 1, 2, …; its id."""
    run_id = client.create_run(exp_id, run_name=name).info.run_id
    logged = [Metric(k, float(v), 0, 0) for k, v in (metrics or {}).items() if v is not None]
    if curve is not None:
        logged += [Metric(curve[0], float(v), 0, step) for step, v in enumerate(curve[1], start=1)]
    client.log_batch(run_id, metrics=logged, params=[Param(k, str(v)) for k, v in params.items()],
                     tags=[RunTag(k, str(v)) for k, v in tags.items()])
    client.set_terminated(run_id, status)
    return run_id


def study_run(client: MlflowClient, exp_id: str, study: str, **tags: str) -> str:
    """The study's own (parent) run, as `harness sweep` opens it."""
    return client.create_run(exp_id, run_name=study, tags={"harness.role": "study", "harness.study": study, **tags}).info.run_id


FAMILY = {"rnn": "RNN", "lstm": "LSTM", "gru": "GRU", "brnn": "BRNN"}


def write_study(client, name, finals: dict[str, list[float]], *, metric="accuracy", maximize=True, task="digits",
                baseline: float | None = None, sizes: dict[str, int] | None = None, clip: dict[str, float] | None = None,
                commit: str = "", repro: dict[str, str] | None = None):
    """A study (its parent run, then runs of it) whose architectures' final runs scored `finals` (seeds 1000, 1001, …),
    one search trial each; `commit`: the harness commit its parent run records, `repro` its other `harness.repro.*` tags."""
    exp_id = client.create_experiment(name)
    repro = {**({"git_commit": commit} if commit else {}), **(repro or {})}
    study_run(client, exp_id, name, **{f"harness.repro.{k}": v for k, v in repro.items()})
    for number, (arch, values) in enumerate(finals.items()):
        for role, seeds in (("trial", [values[0]]), ("final", values)):
            for i, v in enumerate(seeds):
                params = {"model.arch": arch, "arch_family": FAMILY[arch], "task.name": task, "task_metric": metric,
                          "task_metric_scale": "log" if metric == "mse" else "linear",
                          "task_metric_direction": "maximize" if maximize else "minimize", "train.seed": 1000 + i,
                          "trial_number": number, "n_params": (sizes or {}).get(arch, 10),
                          **({"task_metric_baseline": baseline} if baseline is not None else {})}
                tags = {"harness.role": role, "harness.study": name, "harness.state": "complete",
                        "harness.config": f"c-{arch}", "harness.source_trial": str(number)}
                metrics = {f"test_{metric}": v, f"best_val_{metric}": v, "train_samples_per_s": 100.0 * (number + 1),
                           **({"clip_share": clip[arch]} if clip else {})}
                write_run(client, exp_id, f"{arch}-{role}-{i}", params=params, tags=tags, metrics=metrics)


class Records(Callback):
    """The gradient records the training loop hands its callbacks, as (step, metrics)."""

    def __init__(self):
        self.records = []

    def on_grad_stats(self, step, values):
        self.records.append((step, values))
