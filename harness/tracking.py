"""MLflow: one experiment per study, a parent run per study, a nested run per trial.

A training run becomes an MLflow run through `MlflowRun`, a training-loop callback
(harness.callbacks): whoever runs the loop hands it one; tracking never runs the loop. It says
what a run holds; harness.mlflow_store writes it (explicit run ids, batched writes).

What a trial's run holds (docs/run-metrics.md lists every key, unit and meaning):
- params: the resolved settings as dotted keys (the task's defaults filled in, the device
  resolved), `n_params`, `flops_per_sample`, `kernel` (the recurrent layers' kernel path,
  harness.kernels), `trial_number`, and what the registries say of the run: `arch_family`,
  `arch_bidirectional`, `task_io`, `task_metric`, `task_metric_scale`, `task_metric_margin`,
  (sequences of different lengths) `task_length_min` / `_median` / `_max`,
  `task_metric_direction`;
- the experiment: tagged as model training (`mlflow.experimentKind`, not a GenAI app) and
  described by the experiment file's `description` (`mlflow.note.content`);
- tags: `harness.role` (study | trial | run), `harness.study`, `harness.trial`, `harness.state`
  (complete | pruned | failed | interrupted: Ctrl-C or a fault of the machinery, see
  harness.resilience), on failure `harness.failure` (`diverged` or the exception's type),
  `harness.error` and, for divergence, `harness.failure_epoch` / `harness.failure_step`;
  `harness.git_commit` (also as `mlflow.source.git.commit`), `torch_version`, `device`,
  `split_hash.<split>`; once complete, `harness.contended` (true when every epoch that sets the
  training throughput shared the cores with other work);
- inputs: the task's train, validation and test splits as MLflow datasets (name: the task, digest:
  the split's hash, context: training | validation | test), which the UI's Dataset column shows;
  a sweep logs them to its study run before any worker starts, so trials link existing rows;
- metrics: per epoch (step = epoch), gradient statistics (step = optimiser step), final ones
  (step 0: the test split, speeds, the chosen checkpoint's `gradflow_rate[_bwd][_iqr]`), and
  MLflow's own `system/*` metrics;
- artifacts: settings.json, gradflow.csv (the chosen checkpoint's gradient flow,
  harness.gradflow), checkpoint.pt, test_per_example.npy (each test example's metric, float32, in
  test-split order); for runs and final runs, learning_curve.png and gradflow.png
  (`tracking.plots`) and the chosen model as an MLflow model (harness.logged_model).

Metrics are buffered and written in one batch at most every `FLUSH_S` seconds and when the run
ends, never per optimiser step.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from typing import Any

import numpy as np
import torch
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from harness.artifacts import write_artifacts
from harness.callbacks import Callback, FitStart, TrialResult
from harness.config import Experiment, TrackingSettings
from harness.errors import Diverged, Pruned
from harness.logged_model import log_model
from harness.mlflow_store import (
    SPLIT_CONTEXT,
    MetricBuffer,
    _str,
    _write,
    experiment_id,
    find_runs,
    log_params,
    set_tags,
    start_run,
)
from harness.provenance import device_name, git_commit
from harness.resilience import infrastructure, reason
from harness.tasks import Task


def study_run(client: MlflowClient, exp: Experiment, study: str) -> tuple[str, str]:
    """(experiment id, parent run id) of a study; the parent is reused when it exists."""
    exp_id = experiment_id(client, study, exp.description)
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


def run_tags(dev: torch.device, hashes: dict[str, str]) -> dict[str, str]:
    """Where a run ran and on which data: versions, device, split hashes, harness commit."""
    tags = {"torch_version": torch.__version__, "device": device_name(dev), **{f"split_hash.{k}": v for k, v in hashes.items()}}
    commit = git_commit()
    if commit:
        tags |= {"harness.git_commit": commit, "mlflow.source.git.commit": commit.removesuffix("+dirty")}
    return tags


def dataset_inputs(task: Task, hashes: dict[str, str]) -> list[DatasetInput]:
    """The task's splits as MLflow dataset inputs: one dataset per split, named after the task,
    its digest the split's hash, its context the split's role; the data itself stays out of MLflow
    (source `code`: built by the task's code; profile: its number of examples)."""
    source = json.dumps({"tags": {"harness.task": task.name}})
    return [DatasetInput(Dataset(task.name, hashes[split], "code", source,
                                 profile=json.dumps({"num_rows": len(task.split(split)[0])})),
                         tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)])
            for split, context in SPLIT_CONTEXT.items()]


def run_params(exp: Experiment, start: FitStart) -> dict[str, Any]:
    """The resolved settings as dotted keys, the model's size and analytic FLOPs, and what the
    registries say of the run (`FitStart.facts`: its architecture's family and direction, the
    task's defaults, the metric's scale), the task's io, metric and the metric's direction (the
    report ranks by it)."""
    task = start.task
    params = {k: v for k, v in exp.flat().items() if k.split(".")[0] in ("task", "model", "train", "tracking")}
    for key, value in start.facts.items():  # the task's own defaults fill unset options only
        if not key.startswith("task.") or params.get(key) is None:
            params[key] = value
    params |= {"train.device": str(start.device),
               "tracking.grad_stats_every": start.grad_stats.every if start.grad_stats else 0,
               "n_params": start.n_params, "flops_per_sample": start.flops_per_sample, "kernel": start.kernel,
               "task_io": task.io, "task_metric": task.metric,
               "task_metric_direction": "maximize" if task.maximize else "minimize",
               "torch_threads": torch.get_num_threads()}  # speed is per thread count: a search and its finals must match
    if task.baseline is not None:  # the loss of the best input-blind predictor: learning starts below it
        params["task_baseline"] = task.baseline
    if exp.sweep.match_params:  # model.hidden_size was chosen to bring n_params near it
        params["match_params"] = exp.sweep.match_params
    params["task_metric_baseline"] = task.metric_baseline  # its test metric: a model here learned nothing
    if task.variable_length:  # sequences of different lengths: how different
        lengths = torch.cat([task.lengths(w) for w in ("train", "val", "test")]).float()
        params |= {"task_length_min": int(lengths.min()), "task_length_median": float(lengths.median()),
                   "task_length_max": int(lengths.max())}
    return params


def start_system_metrics(client: MlflowClient, run_id: str, cfg: TrackingSettings):
    """MLflow's own system-metrics sampler (CPU, memory, disk, network; GPU with nvidia-ml-py)
    on a background thread for this run, or None when off or unavailable (it needs psutil)."""
    if not cfg.system_metrics:
        return None
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
    except ImportError as e:
        warnings.warn(f"system metrics off: {e} (pip install psutil)", stacklevel=2)
        return None
    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)  # no start/stop chatter per trial
    monitor = SystemMetricsMonitor(run_id, sampling_interval=cfg.system_metrics_interval, tracking_uri=client.tracking_uri)
    monitor.start()
    return monitor


def failure_tags(e: BaseException) -> tuple[dict[str, Any], str]:
    """The tags and final status of a run that ended with `e`."""
    if isinstance(e, Pruned):
        return {"harness.state": "pruned"}, "KILLED"
    if isinstance(e, KeyboardInterrupt) or infrastructure(e):  # not the configuration's doing
        return {"harness.state": "interrupted", "harness.failure": type(e).__name__, "harness.error": reason(e)}, "KILLED"
    tags = {"harness.state": "failed", "harness.error": str(e) or repr(e)}
    if isinstance(e, Diverged):
        return tags | {"harness.failure": "diverged", "harness.failure_epoch": e.epoch, "harness.failure_step": e.step}, "FAILED"
    return tags | {"harness.failure": type(e).__name__}, "FAILED"


def end_failed(client: MlflowClient, run_id: str, error: BaseException) -> None:
    """End a run that is still RUNNING as `error` ends one (KILLED for Ctrl-C or a fault of the
    machinery, FAILED with the reason otherwise): for a run opened before training that failed
    before the loop began."""
    if client.get_run(run_id).info.status == "RUNNING":
        tags, status = failure_tags(error)
        set_tags(client, run_id, tags)
        client.set_terminated(run_id, status)


class MlflowRun(Callback):
    """One training run as one MLflow run: created when the loop starts (`run_id` is set then),
    metrics buffered as epochs and gradient records come, artifacts and the final status at the
    end. It ends FINISHED, KILLED (pruned, interrupted) or FAILED with the reason in its tags.
    `mlflow_model`: a run that logs its chosen model as an MLflow model when `tracking.mlflow_model`
    says so (runs and final runs; a search's trials keep the checkpoint only)."""

    def __init__(self, client: MlflowClient, exp_id: str, exp: Experiment, *, name: str, tags: dict[str, Any],
                 parent: str | None = None, mlflow_model: bool = False):
        self.client, self.exp_id, self.exp = client, exp_id, exp
        self.mlflow_model = mlflow_model and exp.tracking.mlflow_model
        self.name, self.tags, self.parent = name, tags, parent
        self.run_id: str | None = None
        self.start: FitStart | None = None
        self.monitor = None
        self.params: dict[str, Any] = {}
        self.inputs: list[DatasetInput] = []
        self.buffer: MetricBuffer | None = None  # from the loop's start; a run can fail before it

    def open(self) -> str:
        """Create the run now (RUNNING, its tags only), before training: e.g. to claim work that
        other processes then see as taken. Training opens it anyway."""
        if self.run_id is None:
            self.run_id = start_run(self.client, self.exp_id, self.name, tags=self.tags, params={}, parent=self.parent)
        return self.run_id

    def on_fit_start(self, start: FitStart) -> None:
        self.start = start
        self.open()
        params = run_params(self.exp, start)
        if "harness.trial" in self.tags:
            params["trial_number"] = self.tags["harness.trial"]
        log_params(self.client, self.run_id, params)
        self.params = params  # what a seed group copies, without reading the run back
        hashes = start.task.split_hashes()
        set_tags(self.client, self.run_id, run_tags(start.device, hashes))
        self.inputs = dataset_inputs(start.task, hashes)  # a seed group logs its first seed's too
        self.client.log_inputs(self.run_id, datasets=self.inputs)
        self.buffer = MetricBuffer(self.client, self.run_id)
        self.monitor = start_system_metrics(self.client, self.run_id, self.exp.tracking)

    def end_failed(self, error: BaseException) -> None:
        """End the run as `error` ends one, if training did not (it failed before its loop began)."""
        end_failed(self.client, self.run_id, error)

    def on_grad_stats(self, step: int, values: dict[str, float]) -> None:
        self.buffer.add(values, step=step)

    def on_epoch_end(self, epoch: int, record: dict[str, float]) -> None:
        self.buffer.add(record, step=epoch)
        self.buffer.flush()

    def on_fit_end(self, result: TrialResult) -> None:
        try:  # step 0; no final key is also an epoch key, whose latest value would hide it
            self.buffer.add({k: v for k, v in result.final_metrics().items() if k not in result.history[-1]})
            self._write(result, self.start.model)
        except BaseException as e:
            self._end(*failure_tags(e))
            raise
        self._end({"harness.state": "complete", "harness.contended": str(result.contended).lower()}, "FINISHED")

    def on_fit_failure(self, error: BaseException, result: TrialResult) -> None:
        if self.run_id is None:  # failed before the run existed
            return
        try:  # keep what the run logged up to here, all artifacts but the checkpoint, and where its time went
            if self.start is not None:
                if self.buffer is not None:
                    self.buffer.add(result.time_metrics())
                self._write(result, None)
        finally:
            self._end(*failure_tags(error))

    def _write(self, result: TrialResult, model: torch.nn.Module | None) -> None:
        if self.buffer is not None:
            self.buffer.flush(force=True)
        t0 = time.perf_counter()
        plots = self.exp.tracking.plots
        plots = plots is True or plots == "all" or (plots == "finals" and self.tags.get("harness.role") in ("final", "run"))
        write_artifacts(self.client, self.run_id, self.exp, metric=result.metric, history=result.history,
                        best_epoch=result.best_epoch if model is not None else 0, flow=result.gradflow, model=model,
                        test_per_example=result.test_per_example if model is not None else (), plots=plots)
        times = {"time_artifacts_s": time.perf_counter() - t0}
        if self.mlflow_model and model is not None:
            t0 = time.perf_counter()
            log_model(self.client, self.run_id, model, self.start.task)
            times["time_model_s"] = time.perf_counter() - t0
        now = int(time.time() * 1000)
        _write(self.client, self.run_id, [Metric(k, v, now, 0) for k, v in times.items()])

    def _end(self, tags: dict[str, Any], status: str) -> None:
        if self.monitor is not None:
            self.monitor.finish()
        set_tags(self.client, self.run_id, tags)
        self.client.set_terminated(self.run_id, status)


class SeedGroupRun:
    """One configuration trained with several seeds, as one MLflow run (the sweep's trial) whose
    nested runs are the seeds (`harness.role=seed`). It holds the configuration's params, the
    seeds' datasets and, once the seeds are done, the seeds' mean of every final metric
    (`<key>_std`: their spread) and of each epoch's metrics, so it reads like a single run; a
    seed's failure fails it."""

    def __init__(self, client: MlflowClient, exp_id: str, exp: Experiment, *, name: str, tags: dict[str, Any],
                 parent: str | None = None):
        self.client, self.exp_id, self.name, self.tags = client, exp_id, name, tags
        params = {k: v for k, v in exp.flat().items() if k.split(".")[0] in ("task", "model", "train", "tracking")}
        if "harness.trial" in tags:
            params["trial_number"] = tags["harness.trial"]
        self.run_id = start_run(client, exp_id, name, tags={**tags, "harness.seeds": exp.sweep.seeds}, params=params,
                                parent=parent)
        self.params = {k: _str(v) for k, v in params.items()}

    def seed_run(self, exp: Experiment, index: int) -> MlflowRun:
        tags = {**self.tags, "harness.role": "seed", "harness.seed_index": index}
        return MlflowRun(self.client, self.exp_id, exp, name=f"{self.name}-s{exp.train.seed}", tags=tags, parent=self.run_id)

    def finish(self, results: list[TrialResult], first_seed: MlflowRun) -> None:
        # sizes, families, the task's defaults: what the first seed's run logged beyond the configuration
        extra = {k: v for k, v in first_seed.params.items() if k not in self.params}
        finals = [r.final_metrics() for r in results]
        per_epoch = set(results[0].history[-1]) if results[0].history else set()
        metrics = []
        for key in finals[0]:
            values = np.array([f[key] for f in finals], dtype=float)
            if key not in per_epoch:  # as in MlflowRun: a per-epoch key already ends on its last epoch
                metrics.append(Metric(key, float(values.mean()), 0, 0))
            metrics.append(Metric(f"{key}_std", float(values.std(ddof=1)), 0, 0))
        for epoch in range(1, max(len(r.history) for r in results) + 1):
            rows = [r.history[epoch - 1] for r in results if len(r.history) >= epoch]
            metrics += [Metric(k, float(np.mean([row[k] for row in rows])), 0, epoch) for k in rows[0]]
        log_params(self.client, self.run_id, extra)
        if first_seed.inputs:  # every seed trains on the same splits
            self.client.log_inputs(self.run_id, datasets=first_seed.inputs)
        _write(self.client, self.run_id, metrics)
        contended = any(r.contended for r in results)  # the mean holds an unreliable figure
        set_tags(self.client, self.run_id, {"harness.state": "complete", "harness.contended": str(contended).lower()})
        self.client.set_terminated(self.run_id, "FINISHED")

    def fail(self, error: BaseException) -> None:
        tags, status = failure_tags(error)
        set_tags(self.client, self.run_id, tags)
        self.client.set_terminated(self.run_id, status)
