"""Runs written straight into a real MLflow store with the params, metrics and tags harness's
sweeps log: what the report and leaderboard tests read, with known values and no training."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient


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
