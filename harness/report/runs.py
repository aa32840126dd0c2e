"""A study's runs, read from MLflow into a pandas DataFrame: one row per run with `params.*`,
`metrics.*` (latest value), `tags.*`, `status`, `run_id`, `run_name`, and the columns the
report groups and ranks by, read from what each run logged (`family`, the metric's direction),
never from names written into the report's code."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from mlflow.tracking import MlflowClient
from mlflow.utils import get_results_from_paginated_fn

from harness.config import tracking_uri
from harness.errors import HarnessError


def open_store() -> MlflowClient:
    """A client on the tracking store; a missing SQLite file is an error, not a new empty store."""
    uri = tracking_uri()
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        raise HarnessError(f"no MLflow store at {uri}; run `harness sweep` here first or set MLFLOW_TRACKING_URI")
    return MlflowClient(tracking_uri=uri)


def study_runs(study: str, client: MlflowClient, role: str = "trial") -> pd.DataFrame:
    """The runs of `study` with `harness.role = role` (empty when there are none)."""
    exp = client.get_experiment_by_name(study)
    if exp is None:
        raise HarnessError(f"no study {study!r} in the MLflow store {tracking_uri()}; run `harness sweep` first")
    filt = f"tags.`harness.role` = '{role}'"
    found = get_results_from_paginated_fn(
        lambda n, token: client.search_runs([exp.experiment_id], filt, max_results=n, page_token=token), 1000)
    rows = []
    for r in found:
        row = {"run_id": r.info.run_id, "run_name": r.info.run_name, "status": r.info.status}
        row |= {f"params.{k}": v for k, v in r.data.params.items()}
        row |= {f"metrics.{k}": v for k, v in r.data.metrics.items()}
        row |= {f"tags.{k}": v for k, v in r.data.tags.items()}
        rows.append(row)
    runs = pd.DataFrame(rows)
    if not runs.empty:
        # What the architecture registry said of each run (logged by harness since 0.1).
        runs["family"] = col(runs, "params.arch_family").fillna("unknown")
    return runs


def trial_runs(study: str, client: MlflowClient | None = None) -> pd.DataFrame:
    """The study's search trials; an error when it has none."""
    runs = study_runs(study, client or open_store())
    if runs.empty:
        raise HarnessError(f"study {study!r} has no trial runs in {tracking_uri()}")
    return runs


def col(runs: pd.DataFrame, key: str) -> pd.Series:
    return runs[key] if key in runs else pd.Series([None] * len(runs), index=runs.index)


def num(runs: pd.DataFrame, key: str) -> pd.Series:
    return pd.to_numeric(col(runs, key), errors="coerce")


def metric_name(runs: pd.DataFrame) -> tuple[str, bool]:
    """The task's metric and whether higher is better, as the runs logged them
    (`task_metric`, `task_metric_direction`)."""
    logged = runs[["params.task_metric", "params.task_metric_direction"]].dropna() if {
        "params.task_metric", "params.task_metric_direction"} <= set(runs) else pd.DataFrame()
    if logged.empty:
        raise HarnessError("the study's runs do not say their metric (params task_metric and task_metric_direction); "
                           "they were logged by an older harness: run the sweep again under a new --study name")
    metric, direction = logged.iloc[0]
    return metric, direction == "maximize"


def state(runs: pd.DataFrame) -> pd.Series:
    """complete | pruned | failed, from `harness.state` (else the run's status)."""
    return col(runs, "tags.harness.state").fillna(runs["status"].str.lower())
