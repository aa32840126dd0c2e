"""A logged run is reusable: its chosen model loads as an MLflow model and predicts as the run did.
Real SQLite MLflow stores, real (tiny) training runs and sweeps."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow.models import Model
from mlflow.tracking import MlflowClient

from harness.archs import create_model
from harness.cli import main
from harness.logged_model import log_model
from harness.sweep import run as sweep
from harness.tasks import load_task
from tests.test_cli import QUICK, SMALL
from tests.test_sweep import EXPERIMENT, load

QUIET = [*SMALL, "--set", "tracking.system_metrics=false"]


def the_runs(study: str = "quickstart") -> list:
    client = MlflowClient()
    return client.search_runs([client.get_experiment_by_name(study).experiment_id], order_by=["attributes.start_time"])


def history(run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in MlflowClient().get_metric_history(run_id, key)]


def models_of(run) -> list:
    found = MlflowClient().search_logged_models([run.info.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'")
    return [m for m in found if m.status.name == "READY"]


def test_a_run_logs_its_model_which_loads_and_predicts_as_the_run_did(workdir, capsys):
    assert main(["run", QUICK, "--arch", "lstm", *QUIET]) == 0
    (run,) = the_runs()
    uri = f"runs:/{run.info.run_id}/model"
    assert uri in capsys.readouterr().out
    (logged,) = models_of(run)
    assert logged.name == "model" and logged.params["model.arch"] == "lstm"

    model = mlflow.pytorch.load_model(uri)
    assert isinstance(model, torch.fx.GraphModule)  # torch.export's graph, read from the store: no harness class
    task = load_task("mnist1d", n_train=256)
    with torch.no_grad():
        out = model(task.x_test)
    assert task.metric_fn(out, task.y_test).item() == pytest.approx(run.data.metrics["test_accuracy"], abs=1e-7)
    assert task.loss_fn(out, task.y_test).item() == pytest.approx(run.data.metrics["test_loss"], rel=1e-6)

    # the same outputs as the run's checkpoint in a model built by harness
    state = torch.load(MlflowClient().download_artifacts(run.info.run_id, "checkpoint.pt", str(workdir)), weights_only=True)
    net = create_model("lstm", input_size=1, output_size=10, io="many-to-one", seq_len=40, hidden_size=8)
    net.load_state_dict(state)
    with torch.no_grad():
        torch.testing.assert_close(out, net.eval()(task.x_test), rtol=1e-5, atol=1e-6)

    # saved as torch.export's graph, with the first test inputs as its example and a free batch axis
    folder = mlflow.artifacts.download_artifacts(uri, dst_path=str(workdir / "model"))
    assert (Path(folder) / "data" / "model.pt2").is_file()
    meta = Model.load(folder)
    assert np.array_equal(meta.load_input_example(folder), task.x_test[:5].numpy())
    assert [s.shape for s in meta.signature.inputs.inputs] == [(-1, 40, 1)]
    assert [s.shape for s in meta.signature.outputs.inputs] == [(-1, 10)]


def test_a_final_run_logs_its_model(workdir):
    (workdir / "tiny.toml").write_text(EXPERIMENT)
    sweep(load(workdir / "tiny.toml", "sweep.n_trials=1", "sweep.repeat=1", "tracking.mlflow_model=true"), progress=False)
    runs = {r.data.tags["harness.role"]: r for r in the_runs("tiny")}
    trial, final = runs["trial"], runs["final"]
    assert not models_of(trial)  # a search's trials keep no model (checkpoint.pt at most)
    (logged,) = models_of(final)
    assert final.data.params["train.seed"] == "1000"

    task = load_task("mnist1d", n_train=256)
    with torch.no_grad():
        out = mlflow.pytorch.load_model(f"models:/{logged.model_id}")(task.x_test)
    assert task.metric_fn(out, task.y_test).item() == pytest.approx(final.data.metrics["test_accuracy"], abs=1e-7)



class Branchy(torch.nn.Module):
    """A plug-in whose forward branches on its data: torch.export cannot trace it."""

    def __init__(self):
        super().__init__()
        self.head = torch.nn.Linear(40, 10)

    def forward(self, x):
        y = self.head(x.flatten(1))
        return y if x.sum() > 0 else -y


def test_a_model_torch_export_cannot_trace_is_pickled_instead(workdir):
    client = MlflowClient()
    run_id = client.create_run(client.create_experiment("plug")).info.run_id
    task, model = load_task("mnist1d", n_train=256), Branchy()
    with pytest.warns(UserWarning, match="torch.export cannot trace Branchy"):
        log_model(client, run_id, model, task)
    (logged,) = models_of(client.get_run(run_id))  # the failed attempt is not left beside it
    loaded = mlflow.pytorch.load_model(f"runs:/{run_id}/model")
    assert isinstance(loaded, Branchy)  # unpickled: its class is importable here
    with torch.no_grad():
        assert torch.equal(loaded(task.x_test), model(task.x_test))
