"""A study's runs, read from MLflow into a pandas DataFrame: one row per run with `params.*`,
`metrics.*` (latest value), `tags.*`, `status`, `run_id`, `run_name`, and the columns the
report groups and ranks by, read from what each run logged (`family`, the metric's direction),
never from names written into the report's code."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient
from mlflow.utils import get_results_from_paginated_fn

from harness.config import tracking_uri
from harness.errors import HarnessError
from harness.scales import DEFAULT_MARGIN

PAGE = 50_000  # MLflow's largest page: each page re-runs the query, so few pages read a big study fastest


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
        lambda n, token: client.search_runs([exp.experiment_id], filt, max_results=n, page_token=token), PAGE)
    rows = []
    for r in found:
        row = {"run_id": r.info.run_id, "run_name": r.info.run_name, "status": r.info.status, "start_time": r.info.start_time,
               "end_time": r.info.end_time}
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


INTERRUPTED = ("KeyboardInterrupt", "worker_lost")  # ended by the user or a lost worker: not the architecture's doing


def state(runs: pd.DataFrame) -> pd.Series:
    """complete | pruned | failed | interrupted, from `harness.state` and `harness.failure` (else the
    run's status)."""
    states = col(runs, "tags.harness.state").fillna(runs["status"].str.lower())
    return states.mask(col(runs, "tags.harness.failure").isin(INTERRUPTED), "interrupted")


def metric_scale(runs: pd.DataFrame) -> str:
    """`linear` or `log`, as the runs logged it (`task_metric_scale`); runs from before harness
    logged it were compared on the linear scale."""
    logged = col(runs, "params.task_metric_scale").dropna()
    return str(logged.iloc[0]) if len(logged) else "linear"


def metric_margin(runs: pd.DataFrame) -> float:
    """The metric's default equivalence margin, as the runs logged it (`task_metric_margin`)."""
    logged = num(runs, "params.task_metric_margin").dropna()
    return float(logged.iloc[0]) if len(logged) else DEFAULT_MARGIN[metric_scale(runs)]


def study_tags(study: str, client: MlflowClient) -> dict[str, str]:
    """The tags of the study's own (parent) run (e.g. `harness.edges`, `harness.repro.*`), with its
    `_run_id`, `_start_time` / `_end_time` (ms) and the experiment's description as
    `harness.description`."""
    runs = study_runs(study, client, role="study")
    if runs.empty:
        return {}
    row = runs.iloc[0]
    tags = {k.removeprefix("tags."): v for k, v in row.items() if k.startswith("tags.") and isinstance(v, str)}
    times = {"run_id": row["run_id"]} | {k: str(int(row[k])) for k in ("start_time", "end_time") if pd.notna(row.get(k))}
    description = row.get("params.description")
    return tags | {f"_{k}": v for k, v in times.items()} | ({"harness.description": description} if isinstance(description, str) and description else {})


def select_finals(finals: pd.DataFrame, best_trials: dict[str, int]) -> pd.DataFrame:
    """The final runs the comparison uses: finished, one per (configuration, seed) (the first, if
    two commands both trained it), and per architecture only its best configuration's (the one
    `best_trials` names; else, after a resume moved the best, the configuration with most seeds)."""
    if finals.empty:
        return finals
    done = finals[finals["status"] == "FINISHED"].sort_values("start_time", kind="stable")
    done = done.assign(config=col(done, "tags.harness.config").fillna(done["run_id"]),
                       seed=num(done, "params.train.seed"), source=num(done, "tags.harness.source_trial"))
    done = done.drop_duplicates(["config", "seed"], keep="first")
    keep = []
    for arch, group in done.groupby("params.model.arch", sort=False):
        best = group[group["source"] == best_trials.get(arch)]
        if best.empty:
            sizes = group.groupby("config").size()
            best = group[group["config"] == sizes.idxmax()]
        keep.append(best)
    return pd.concat(keep) if keep else done.iloc[:0]


def val_curve(client: MlflowClient, run_id: str, metric: str) -> pd.Series:
    """A run's validation metric per epoch (indexed by epoch, in order)."""
    return pd.Series({m.step: m.value for m in client.get_metric_history(run_id, f"val_{metric}")}, dtype=float).sort_index()


def per_example(client: MlflowClient, run_ids: list[str]) -> np.ndarray | None:
    """Each run's test metric per example (`test_per_example.npy`), stacked seeds × examples, or
    None when a run did not keep them."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for run_id in run_ids:
            try:
                path = client.download_artifacts(run_id, "test_per_example.npy", tmp)
            except Exception:  # not logged (tracking.test_per_example = false, or an older run)
                return None
            rows.append(np.load(path))
    if len({len(r) for r in rows}) != 1:
        return None
    return np.stack(rows)
