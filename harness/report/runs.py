"""A study's runs, read from MLflow into a pandas DataFrame: one row per run with `params.*`,
`metrics.*` (latest value), `tags.*`, `status`, `run_id`, `run_name`, and the columns the
report groups and ranks by, read from what each run logged (`family`, the metric's direction),
never from names written into the report's code."""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient
from mlflow.utils import get_results_from_paginated_fn

from harness.config import tracking_uri, with_driver
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
    engine = _database(client.tracking_uri)
    runs = _read_tables(engine, exp.experiment_id, role) if engine is not None else _search(client, exp.experiment_id, role)
    if not runs.empty:
        # What the architecture registry said of each run (logged by harness since 0.1).
        runs["family"] = col(runs, "params.arch_family").fillna("unknown")
    return runs


def _search(client: MlflowClient, exp_id: str, role: str) -> pd.DataFrame:
    """Through MLflow's search_runs (any store: a tracking server, a file store)."""
    filt = f"tags.`harness.role` = '{role}'"
    found = get_results_from_paginated_fn(
        lambda n, token: client.search_runs([exp_id], filt, max_results=n, page_token=token), PAGE)
    rows = []
    for r in found:
        row = {"run_id": r.info.run_id, "run_name": r.info.run_name, "status": r.info.status, "start_time": r.info.start_time,
               "end_time": r.info.end_time}
        row |= {f"params.{k}": v for k, v in r.data.params.items()}
        row |= {f"metrics.{k}": v for k, v in r.data.metrics.items()}
        row |= {f"tags.{k}": v for k, v in r.data.tags.items()}
        rows.append(row)
    return pd.DataFrame(rows)


# MLflow's SQL stores: the same rows search_runs returns, read from its tables (runs, params,
# latest_metrics, tags) in four queries. search_runs builds an ORM object for every param, metric
# and tag of every run: most of a big study's report time (4.5 s of 12 for 1,000 runs).
_ROLE_RUNS = ("SELECT r.run_uuid FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid WHERE r.experiment_id = :exp "
              "AND r.lifecycle_stage = 'active' AND t.key = 'harness.role' AND t.value = :role")


@functools.cache
def _database(uri: str):
    """An engine on the store's database, or None for stores that are not one."""
    if not uri.startswith(("sqlite:", "postgresql", "mysql", "mssql")):
        return None
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    return sqlalchemy.create_engine(with_driver(uri), poolclass=NullPool)


def _read_tables(engine, exp_id: str, role: str) -> pd.DataFrame:
    from sqlalchemy import text

    args = {"exp": int(exp_id), "role": role}
    with engine.connect() as conn:
        def read(sql: str) -> pd.DataFrame:
            return pd.read_sql(text(sql.format(ids=_ROLE_RUNS)), conn, params=args)

        runs = read("SELECT run_uuid AS run_id, name AS run_name, status, start_time, end_time FROM runs "
                    "WHERE run_uuid IN ({ids}) ORDER BY start_time DESC, run_uuid")  # search_runs' order
        if runs.empty:
            return pd.DataFrame()
        metrics = read("SELECT run_uuid, key, value, is_nan FROM latest_metrics WHERE run_uuid IN ({ids})")
        metrics["value"] = metrics["value"].astype(float).mask(metrics["is_nan"].astype(bool))  # NaN is stored as 0
        wide = [read(f"SELECT run_uuid, key, value FROM {table} WHERE run_uuid IN ({{ids}})").assign(key=lambda d, p=prefix: p + d["key"])
                for table, prefix in (("params", "params."), ("tags", "tags."))]
        wide.insert(1, metrics.drop(columns="is_nan").assign(key="metrics." + metrics["key"]))
    parts = [w.pivot(index="run_uuid", columns="key", values="value") for w in wide if not w.empty]
    return runs.join(pd.concat(parts, axis=1), on="run_id") if parts else runs


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


# The phases a run logs as time_<phase>_s (harness.callbacks.TIME_PHASES, and tracking's files
# and model), grouped as the report names them.
SPENT = {"training steps": ("train",), "validation": ("validate",),
         "test, latency and gradient flow": ("test", "latency", "gradflow"), "speed measurements": ("bench", "peak"),
         "MLflow logging": ("start", "epoch_callbacks", "artifacts"), "model export": ("model",)}


def time_spent(runs: pd.DataFrame, worker_s: float) -> dict[str, float]:
    """Where `worker_s` seconds of the workers' time went, in seconds: the phases `runs` logged
    (every trained run: search trials of one seed, seed runs, final runs), `the rest of each run`
    (its wall time beyond them: building the model, loading data, closing it) and `outside the
    runs` (start-up, Optuna, workers waiting for each other). Empty without phases, or when the
    runs' walls exceed `worker_s` (runs of commands from before harness counted it)."""
    if runs.empty or "metrics.time_train_s" not in runs or not worker_s > 0:
        return {}
    out = {name: float(sum(num(runs, f"metrics.time_{p}_s").fillna(0).sum() for p in phases))
           for name, phases in SPENT.items()}
    after = float(num(runs, "metrics.time_best_model_s").fillna(0).sum())  # logged once its run had ended
    walls = float(((runs["end_time"] - runs["start_time"]) / 1000).sum())
    outside = worker_s - walls - after
    if outside < -0.01 * worker_s:
        return {}
    out["the rest of each run (building the model, loading data, closing it)"] = max(walls - sum(out.values()), 0.0)
    out["model export"] += after
    return out | {"outside the runs (start-up, Optuna, workers waiting for each other)": max(outside, 0.0)}


def trained_runs(trials: pd.DataFrame, seeds: pd.DataFrame, finals: pd.DataFrame) -> pd.DataFrame:
    """Every run that trained: the trials, a trial of several seeds by its seed runs, the finals."""
    single = trials[num(trials, "tags.harness.seeds").fillna(1) <= 1] if not trials.empty else trials
    return pd.concat([single, seeds, finals], ignore_index=True)


def val_curve(client: MlflowClient, run_id: str, metric: str) -> pd.Series:
    """A run's validation metric per epoch (indexed by epoch, in order; a step logged twice keeps
    its last value, as get_metric_history's order gives it). From a SQL store's metrics table in
    one query (get_metric_history builds an ORM object per point: 10 ms a run)."""
    engine = _database(client.tracking_uri)
    if engine is None:
        points = [(m.step, m.value) for m in client.get_metric_history(run_id, f"val_{metric}")]
    else:
        from sqlalchemy import text

        with engine.connect() as conn:
            points = conn.execute(text("SELECT step, CASE WHEN is_nan THEN NULL ELSE value END FROM metrics "
                                       "WHERE run_uuid = :run AND key = :key ORDER BY timestamp, step"),
                                  {"run": run_id, "key": f"val_{metric}"}).all()
    return pd.Series(dict(points), dtype=float).sort_index()


def artifact_dirs(client: MlflowClient, run_ids: list[str]) -> dict[str, Path]:
    """The runs' artifact folders that lie on this machine's disk, by run id (a SQL store with local
    artifacts: read in place, where `download_artifacts` would copy each file through MLflow's
    artifact repository, 15 ms a file); runs whose artifacts live elsewhere are left out."""
    engine = _database(client.tracking_uri)
    if engine is None or not run_ids:
        return {}
    from sqlalchemy import bindparam, text

    query = text("SELECT run_uuid, artifact_uri FROM runs WHERE run_uuid IN :ids").bindparams(bindparam("ids", expanding=True))
    with engine.connect() as conn:
        rows = conn.execute(query, {"ids": list(run_ids)}).all()
    found = {}
    for run_id, uri in rows:
        parsed = urlparse(uri or "")
        path = Path(unquote(parsed.path)) if parsed.scheme in ("", "file") and parsed.path else None
        if path is not None and path.is_dir():
            found[run_id] = path
    return found


def artifact(client: MlflowClient, run_id: str, name: str, local: dict[str, Path], tmp: str) -> Path:
    """A run's artifact `name` as a file: in place when its folder is in `local` (artifact_dirs),
    downloaded into `tmp` otherwise. Raises when the run did not log it."""
    if run_id in local:
        path = local[run_id] / name
        if not path.is_file():
            raise FileNotFoundError(path)
        return path
    return Path(client.download_artifacts(run_id, name, tmp))


def per_example(client: MlflowClient, run_ids: list[str]) -> np.ndarray | None:
    """Each run's test metric per example (`test_per_example.npy`), stacked seeds × examples, or
    None when a run did not keep them."""
    rows = []
    local = artifact_dirs(client, run_ids)
    with tempfile.TemporaryDirectory() as tmp:
        for run_id in run_ids:
            try:
                path = artifact(client, run_id, "test_per_example.npy", local, f"{tmp}/{run_id}")
            except Exception:  # not logged (tracking.test_per_example = false, or an older run)
                return None
            rows.append(np.load(path))
    if len({len(r) for r in rows}) != 1:
        return None
    return np.stack(rows)
