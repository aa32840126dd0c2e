"""MLflow: one experiment per study, a parent run per study, a nested run per trial.

Everything goes through `MlflowClient` with explicit run ids (the fluent API keeps one
active run per thread, which concurrent trials would trample). Metrics are written once per
epoch in one batch, never per optimiser step.

Tags every harness run carries: `harness.role` (study | trial | run), `harness.study`, and for
trials `harness.trial` and `harness.state` (complete | pruned | failed); failures add
`harness.failure` (e.g. `diverged`) and `harness.error`.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from typing import Any

import torch
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from harness.archs import count_params, model_flops
from harness.config import Experiment, tracking_uri
from harness.train import Diverged, TrialResult, build, fit, resolve_device

PARENT_TAG = "mlflow.parentRunId"


def get_client() -> MlflowClient:
    return MlflowClient(tracking_uri=tracking_uri())


def experiment_id(client: MlflowClient, name: str, create: bool = True) -> str | None:
    exp = client.get_experiment_by_name(name)
    if exp is None and create:
        try:
            return client.create_experiment(name)
        except Exception:  # another worker created it first
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
    return None if exp is None else exp.experiment_id


def find_runs(client: MlflowClient, exp_id: str, **tags: str) -> list:
    """Runs of an experiment whose `harness.<key>` tags equal the given values."""
    filt = " and ".join(f"tags.`harness.{k}` = '{v}'" for k, v in tags.items())
    runs, token = [], None
    while True:
        page = client.search_runs([exp_id], filter_string=filt, max_results=1000, page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            return runs


def _str(v: Any) -> str:
    return str(v)[:6000]


def start_run(
    client: MlflowClient, exp_id: str, name: str, *, tags: dict[str, Any], params: dict[str, Any], parent: str | None = None
) -> str:
    all_tags = {"harness.version": __import__("harness").__version__, **tags}
    if parent:
        all_tags[PARENT_TAG] = parent
    run = client.create_run(exp_id, run_name=name, tags={k: _str(v) for k, v in all_tags.items()})
    items = list(params.items())
    for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
        client.log_batch(run.info.run_id, params=[Param(k, _str(v)) for k, v in items[i : i + 100]])
    return run.info.run_id


def log_metrics(client: MlflowClient, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])


def set_tags(client: MlflowClient, run_id: str, tags: dict[str, Any]) -> None:
    client.log_batch(run_id, tags=[RunTag(k, _str(v)) for k, v in tags.items()])


def study_run(client: MlflowClient, exp: Experiment, study: str) -> tuple[str, str]:
    """(experiment id, parent run id) of a study; the parent is reused when it exists."""
    exp_id = experiment_id(client, study)
    runs = find_runs(client, exp_id, role="study", study=study)
    if runs:
        run_id = runs[0].info.run_id
        client.update_run(run_id, status="RUNNING")
        return exp_id, run_id
    tags = {"harness.role": "study", "harness.study": study}
    return exp_id, start_run(client, exp_id, study, tags=tags, params=exp.flat())


def run_name(exp: Experiment, number: int | None = None) -> str:
    hidden = exp.model.overrides().get("hidden_size")
    name = exp.model.arch + (f"-h{hidden}" if hidden else "")
    return name if number is None else f"{name}-#{number}"


def tracked_fit(
    client: MlflowClient,
    exp_id: str,
    exp: Experiment,
    *,
    name: str,
    tags: dict[str, Any],
    parent: str | None = None,
    device: str | None = None,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    on_start: Callable[[str], None] | None = None,
    pruned: tuple[type[BaseException], ...] = (),
) -> TrialResult:
    """Build and train `exp` as one MLflow run; the run ends FINISHED, KILLED (pruned) or FAILED.

    `on_start(run_id)` is called once the run exists. Exceptions propagate after the run is
    closed, so the caller (the sweep) can decide.
    """
    dev = resolve_device(device or exp.train.device)
    task, model = build(exp)
    info = {
        "torch_version": torch.__version__, "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu",
        **{f"split_hash.{k}": v for k, v in task.split_hashes().items()},
    }
    params = {k: v for k, v in exp.flat().items() if k.split(".")[0] in ("task", "model", "train")}
    params |= {"n_params": count_params(model), "flops_per_sample": model_flops(model, task.seq_len)}
    if "harness.trial" in tags:
        params["trial_number"] = tags["harness.trial"]
    run_id = start_run(client, exp_id, name, tags={**tags, **info}, params=params, parent=parent)
    if on_start is not None:  # e.g. the sweep records the run id so a dead worker's run can be closed
        on_start(run_id)

    def epoch_hook(epoch: int, record: dict[str, float]) -> None:
        log_metrics(client, run_id, record, step=epoch)
        if on_epoch is not None:
            on_epoch(epoch, record)

    try:
        result = fit(model, task, exp.train, device=dev, on_epoch=epoch_hook)
    except pruned:
        set_tags(client, run_id, {"harness.state": "pruned"})
        client.set_terminated(run_id, "KILLED")
        raise
    except Diverged as e:
        set_tags(client, run_id, {"harness.state": "failed", "harness.failure": "diverged",
                                  "harness.failure_epoch": e.epoch, "harness.failure_step": e.step, "harness.error": str(e)})
        client.set_terminated(run_id, "FAILED")
        raise
    except BaseException as e:
        set_tags(client, run_id, {"harness.state": "failed", "harness.failure": type(e).__name__, "harness.error": str(e) or repr(e)})
        client.set_terminated(run_id, "KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
        raise
    log_metrics(client, run_id, result.final_metrics())
    set_tags(client, run_id, {"harness.state": "complete"})
    client.set_terminated(run_id, "FINISHED")
    result.run_id = run_id
    return result
