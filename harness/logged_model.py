"""The chosen checkpoint as an MLflow model (`mlflow.pytorch`), with a signature and an input example.

Runs of `harness run` log one, named `model`, unless `tracking.mlflow_model = false`; of a sweep's
final runs, each architecture's best seed by validation (`"best"`, the default: tracing costs
seconds per run on long sequences, and the seeds differ only by chance) or every one (`"all"`,
or `true`); a search's trials never do (they keep checkpoint.pt).
`mlflow.pytorch.load_model(f"runs:/{run_id}/model")` gives it back on the CPU, in eval mode: its
outputs are the run's own. The input example is the first test inputs; the signature is inferred
from the model's outputs on them, with a free batch axis.

It is saved as torch.export's graph (MLflow's `pt2` format): loading it runs no pickled code and
needs torch only, not harness or the architecture's code. Tracing walks the recurrence step by step
(about 30 ms a step: 26 s for a GRU at 784 steps), so a task longer than `EXPORT_MAX_STEPS` steps
is pickled instead (MLflow's `pickle` format, a fraction of a second): the same
`mlflow.pytorch.load_model`, with harness importable where it loads. A model torch.export cannot
trace (a plug-in with data-dependent control flow) is pickled too, with a warning: loading that one
needs its class importable.
"""

from __future__ import annotations

import copy
import logging
import tempfile
import warnings
from pathlib import Path

import torch
from mlflow.tracking import MlflowClient

from harness.tasks import Task

NAME = "model"  # the model's URI within its run: runs:/<run_id>/model
# Test inputs in the input example: more than one, since torch.export fixes a batch axis of size 1.
EXAMPLE_ROWS = 5
# Longer tasks are pickled rather than traced: tracing costs about 1 s per 30-40 steps.
EXPORT_MAX_STEPS = 50


def log_model(client: MlflowClient, run_id: str, model: torch.nn.Module, task: Task) -> str:
    """Log a CPU copy of `model` in eval mode to run `run_id` (of `client`'s store); its URI."""
    import mlflow.pytorch
    from mlflow.models import infer_signature

    net = copy.deepcopy(model).cpu().eval()
    example = task.x_test[:EXAMPLE_ROWS].cpu()
    with torch.no_grad():
        out = net(example)
    args = {"name": NAME, "run_id": run_id, "input_example": example.numpy(),
            "signature": infer_signature(example.numpy(), out.numpy()),
            # given, not inferred: inferring them loads the model again in a subprocess (seconds)
            "pip_requirements": mlflow.pytorch.get_default_pip_requirements()}
    if mlflow.get_tracking_uri() != client.tracking_uri:  # log_model writes to the process's store, not a client's
        mlflow.set_tracking_uri(client.tracking_uri)
    run = client.get_run(run_id)

    def logged(fmt: str) -> str:
        # Created here: log_model alone would put it in the fluent API's active experiment, not the run's.
        model_id = client.create_logged_model(run.info.experiment_id, name=NAME, source_run_id=run_id,
                                              params=run.data.params).model_id
        try:
            return mlflow.pytorch.log_model(net, serialization_format=fmt, model_id=model_id, **args).model_uri
        except Exception:
            client.delete_logged_model(model_id)  # a run's `model` is the one that was logged
            raise

    if (task.seq_len or 1) > EXPORT_MAX_STEPS or task.variable_length:  # (padded input: its lengths a keyword)
        # MLflow warns on every pickled save; harness chose it, and docs/run-metrics.md says why
        mlflow_log = logging.getLogger("mlflow.pytorch")
        level = mlflow_log.level
        mlflow_log.setLevel(logging.ERROR)
        try:
            return logged("pickle")
        finally:
            mlflow_log.setLevel(level)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.export's notes on recurrent layers' flat weights, each run
            return logged("pt2")
    except Exception as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        warnings.warn(f"torch.export cannot trace {type(model).__name__} ({reason}): its MLflow model is pickled, "
                      "and loading it needs the class importable", stacklevel=2)
        return logged("pickle")


def log_model_from_checkpoint(client: MlflowClient, run_id: str) -> str:
    """Log the model of finished run `run_id` from its checkpoint.pt, rebuilt from the settings it
    logged (`harness.rerun`); its URI."""
    from harness.rerun import experiment_from_run
    from harness.runner import build

    task, model = build(experiment_from_run(run_id))
    with tempfile.TemporaryDirectory() as tmp:
        path = client.download_artifacts(run_id, "checkpoint.pt", tmp)
        model.load_state_dict(torch.load(Path(path), weights_only=True))
    return log_model(client, run_id, model, task)
