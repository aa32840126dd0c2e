"""The MLflow store as harness writes to it: a client that waits out the store's outages,
experiments tagged and described, runs created with their tags and params, metrics and tags
written in batches (MLflow's limits), and runs found by their `harness.*` tags. Everything goes
through `MlflowClient` with explicit run ids (the fluent API keeps one active run per thread,
which concurrent trials would trample). What a run holds is harness.tracking's."""

from __future__ import annotations

import math
import time
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from mlflow.utils import get_results_from_paginated_fn
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE

from harness.config import tracking_uri
from harness.resilience import Client

FLUSH_S = 5.0  # seconds between metric writes while a run trains
BATCH = 1000  # MLflow's limit of metrics per log_batch

PARENT_TAG = "mlflow.parentRunId"


def get_client() -> MlflowClient:
    """A client of the tracking store whose calls wait out the store's outages (harness.resilience)."""
    return Client(tracking_uri=tracking_uri())


# An experiment of model training, not a GenAI app (traces, tokens), as MLflow 3's UI records it
# when a user picks the kind. 3.17's UI itself picks its view from the page's URL: harness.ui.runs_url.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
SPLIT_CONTEXT = {"train": "training", "val": "validation", "test": "test"}  # MLflow's dataset contexts


def experiment_id(client: MlflowClient, name: str, description: str = "") -> str:
    """The id of experiment `name`, created when missing; tagged as model development and, when
    `description` is given, described by it (MLflow shows `mlflow.note.content` as the
    experiment's description). An existing experiment (a resumed study) gets the tags it lacks
    or holds with another value."""
    tags = EXPERIMENT_KIND | ({MLFLOW_RUN_NOTE: description[:20_000]} if description else {})  # MLflow's limit
    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            return client.create_experiment(name, tags=tags)
        except Exception:  # another worker created it first
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
    for key, value in tags.items():
        if exp.tags.get(key) != value:
            client.set_experiment_tag(exp.experiment_id, key, value)
    return exp.experiment_id


def find_runs(client: MlflowClient, exp_id: str, **tags: str) -> list:
    """Runs of an experiment whose `harness.<key>` tags equal the given values."""
    filt = " and ".join(f"tags.`harness.{k}` = '{v}'" for k, v in tags.items())
    return get_results_from_paginated_fn(
        lambda n, token: client.search_runs([exp_id], filter_string=filt, max_results=n, page_token=token), 1000)


def _str(v: Any) -> str:
    return str(v)[:6000]


def start_run(
    client: MlflowClient, exp_id: str, name: str, *, tags: dict[str, Any], params: dict[str, Any], parent: str | None = None
) -> str:
    all_tags = {"harness.version": __import__("harness").__version__, **tags}
    if parent:
        all_tags[PARENT_TAG] = parent
    run = client.create_run(exp_id, run_name=name, tags={k: _str(v) for k, v in all_tags.items()})
    log_params(client, run.info.run_id, params)
    return run.info.run_id


def log_params(client: MlflowClient, run_id: str, params: dict[str, Any]) -> None:
    items = list(params.items())
    for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
        client.log_batch(run_id, params=[Param(k, _str(v)) for k, v in items[i : i + 100]])


def _write(client: MlflowClient, run_id: str, metrics: list[Metric]) -> None:
    for i in range(0, len(metrics), BATCH):
        client.log_batch(run_id, metrics=metrics[i : i + BATCH])


class MetricBuffer:
    """A run's metrics, kept in memory and written in batches: at most every `every_s` seconds
    (the first add writes at once, so the UI shows the run early) and on `flush(force=True)`."""

    def __init__(self, client: MlflowClient, run_id: str, every_s: float = FLUSH_S):
        self.client, self.run_id, self.every_s = client, run_id, every_s
        self.metrics: list[Metric] = []
        self.last = -math.inf

    def add(self, metrics: dict[str, float], step: int = 0) -> None:
        now = int(time.time() * 1000)
        self.metrics += [Metric(k, float(v), now, step) for k, v in metrics.items()]

    def flush(self, force: bool = False) -> None:
        if self.metrics and (force or time.monotonic() - self.last >= self.every_s):
            _write(self.client, self.run_id, self.metrics)
            self.metrics, self.last = [], time.monotonic()


def set_tags(client: MlflowClient, run_id: str, tags: dict[str, Any]) -> None:
    client.log_batch(run_id, tags=[RunTag(k, _str(v)) for k, v in tags.items()])
