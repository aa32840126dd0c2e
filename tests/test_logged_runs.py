"""A logged run is reusable: its chosen model loads as an MLflow model and predicts as the run did,
and `harness run --from-run` trains it again from its params, to the same metrics on the CPU.
Real SQLite MLflow stores, real (tiny) training runs and sweeps."""

from __future__ import annotations

import re
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow.models import Model
from mlflow.tracking import MlflowClient

from harness.archs import create_model
from harness.cli import main
from harness.errors import HarnessError
from harness.logged_model import EXPORT_MAX_STEPS, log_model
from harness.rerun import experiment_from_run, value_of
from harness.sweep import run as sweep
from harness.tasks import load_task
from harness.train import flush_denormals
from tests.conftest import EXPERIMENT
from tests.test_cli import QUICK, SMALL
from tests.test_sweep import load

# Small and quick: 8×8 digits read row by row (8 steps), 256 training images, hidden size 8.
TINY = [*SMALL, "--set", "task.name='digits'", "--set", "tracking.system_metrics=false"]
DIGITS = {"name": "digits", "n_train": 256}


def the_runs(study: str = "quickstart") -> list:
    client = MlflowClient()
    return client.search_runs([client.get_experiment_by_name(study).experiment_id], order_by=["attributes.start_time"])


def history(run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in MlflowClient().get_metric_history(run_id, key)]


def models_of(run) -> list:
    found = MlflowClient().search_logged_models([run.info.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'")
    return [m for m in found if m.status.name == "READY"]


@pytest.mark.parametrize("arch", ["lstm", "gru", "rnn-sigmoid"])
def test_a_run_logs_its_model_which_loads_and_predicts_as_the_run_did(workdir, capsys, arch):
    """GRU and Elman RNNs train on harness's own scan on the CPU: their graph records the plain
    recurrence (torch's kernel where there is one), which autograd can run too."""
    assert main(["run", QUICK, "--arch", arch, *TINY]) == 0
    (run,) = the_runs()
    uri = f"runs:/{run.info.run_id}/model"
    assert uri in capsys.readouterr().out
    (logged,) = models_of(run)
    assert logged.name == "model" and logged.params["model.arch"] == arch

    model = mlflow.pytorch.load_model(uri)
    assert isinstance(model, torch.fx.GraphModule)  # torch.export's graph, read from the store: no harness class
    task = load_task(**DIGITS)
    out = model(task.x_test).detach()  # with gradients on, as a user would call it
    assert task.metric_fn(out, task.y_test).item() == pytest.approx(run.data.metrics["test_accuracy"], abs=1e-7)
    assert task.loss_fn(out, task.y_test).item() == pytest.approx(run.data.metrics["test_loss"], rel=1e-6)

    # the same outputs as the run's checkpoint in a model built by harness
    state = torch.load(MlflowClient().download_artifacts(run.info.run_id, "checkpoint.pt", str(workdir)), weights_only=True)
    net = create_model(arch, input_size=8, output_size=10, io="many-to-one", seq_len=8, hidden_size=8)
    net.load_state_dict(state)
    with torch.no_grad():
        torch.testing.assert_close(out, net.eval()(task.x_test), rtol=1e-5, atol=1e-6)

    # saved as torch.export's graph, with the first test inputs as its example and a free batch axis
    folder = mlflow.artifacts.download_artifacts(uri, dst_path=str(workdir / "model"))
    assert (Path(folder) / "data" / "model.pt2").is_file()
    meta = Model.load(folder)
    assert np.array_equal(meta.load_input_example(folder), task.x_test[:5].numpy())
    assert [s.shape for s in meta.signature.inputs.inputs] == [(-1, 8, 8)]
    assert [s.shape for s in meta.signature.outputs.inputs] == [(-1, 10)]


def test_from_run_trains_again_with_the_logged_settings_to_the_same_metrics(workdir, capsys):
    assert main(["run", QUICK, "--arch", "gru", *TINY, "--set", "train.lr=0.003", "--set", "tracking.mlflow_model=false"]) == 0
    (first,) = the_runs()
    assert main(["run", "--from-run", first.info.run_id]) == 0
    _, again = the_runs()
    assert re.search(rf"MLflow run {again.info.run_id}\b", capsys.readouterr().out)

    assert again.data.params == first.data.params  # every setting read back as it was logged
    assert again.data.tags["harness.rerun_of"] == first.info.run_id and again.data.tags["harness.role"] == "run"
    for key in ("test_accuracy", "test_loss", "best_val_accuracy", "best_epoch"):
        assert again.data.metrics[key] == first.data.metrics[key], key
    assert history(again.info.run_id, "val_loss") == history(first.info.run_id, "val_loss")
    assert len(history(first.info.run_id, "val_loss")) == 2
    assert not models_of(again)  # tracking.mlflow_model = false came along

    # --set and the flags on top of the logged settings
    shorter = experiment_from_run(first.info.run_id, ["train.epochs=1", "model.hidden_size=4"])
    assert (shorter.train.epochs, shorter.model.hidden_size, shorter.train.lr, shorter.task.name) == (1, 4, 0.003, "digits")


def test_from_run_refuses_what_is_no_harness_training_run_and_writes_nothing(workdir, capsys):
    def refused(argv: list[str], message: str) -> None:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("harness: error: ") and message in err, err
        assert err.count("\n") == 1 and "Traceback" not in err

    refused(["run", "--from-run", "0123abcd"], "no MLflow store")
    assert not (workdir / "mlflow.db").exists()  # not created by looking

    client = MlflowClient()
    exp_id = client.create_experiment("elsewhere")
    plain = client.create_run(exp_id).info.run_id
    empty = client.create_run(exp_id, tags={"harness.role": "trial", "harness.study": "elsewhere"}).info.run_id
    parent = client.create_run(exp_id, tags={"harness.role": "study", "harness.study": "elsewhere"}).info.run_id
    bad = client.create_run(exp_id, tags={"harness.role": "run", "harness.study": "elsewhere"}).info.run_id
    for key, value in {"task.name": "mnist1d", "model.arch": "gru", "train.lr": "-1"}.items():
        client.log_param(bad, key, value)
    before = [(r.info.run_id, r.info.status) for r in client.search_runs([exp_id])]

    refused(["run", "--from-run", "0123abcd"], "no run '0123abcd' in the MLflow store")
    refused(["run", "--from-run", plain], "is not a harness run")
    refused(["run", "--from-run", empty], "logged no settings")
    refused(["run", "--from-run", parent], "parent run")
    refused(["run", "--from-run", bad], f"run {bad}: train.lr")
    refused(["run", QUICK, "--from-run", bad], "not both")
    assert [(r.info.run_id, r.info.status) for r in client.search_runs([exp_id])] == before
    assert sorted(e.name for e in client.search_experiments()) == ["Default", "elsewhere"]


def test_logged_values_read_back_as_they_were():
    for value in (3, 0.001, 1e-05, 2.5e20, True, False, None, [1, "a"], {"k": 1.5}, "adam", "/some/path", "cpu"):
        assert value_of("model.x", str(value)) == value
    assert value_of("train.device", "123") == "123"  # declared text stays text
    assert value_of("model.arch", "None") == "None"


def test_the_best_final_seed_logs_its_model_and_trains_again_with_its_seed(workdir, capsys):
    """By default (`tracking.mlflow_model = "best"`) one model per architecture: the final run with
    the best validation score logs it once the seeds are done, from its checkpoint."""
    flush_denormals()  # as the command does: the rerun below goes through it
    (workdir / "tiny.toml").write_text(EXPERIMENT)
    sweep(load(workdir / "tiny.toml", "sweep.n_trials=1", "sweep.repeat=3", "task.name='digits'", "tracking.checkpoint=true",
               "tracking.mlflow_model='best'"), progress=False)
    runs = {r.data.tags["harness.role"]: r for r in the_runs("tiny")}
    trial = runs["trial"]
    finals = [r for r in the_runs("tiny") if r.data.tags["harness.role"] == "final"]
    assert not models_of(trial)  # a search's trials keep no model (checkpoint.pt at most)
    final = max(finals, key=lambda r: (r.data.metrics["best_val_accuracy"], -int(r.data.params["train.seed"])))
    assert [bool(models_of(r)) for r in finals] == [r is final for r in finals]
    (logged,) = models_of(final)
    seed = final.data.params["train.seed"]
    assert final.data.tags["harness.model_of_best_seed"] == f"seed {seed}, the best of 3 by val_accuracy"

    task = load_task(**DIGITS)
    with torch.no_grad():
        out = mlflow.pytorch.load_model(f"models:/{logged.model_id}")(task.x_test)
    assert task.metric_fn(out, task.y_test).item() == pytest.approx(final.data.metrics["test_accuracy"], abs=1e-7)

    exp = experiment_from_run(trial.info.run_id)  # a trial's settings come back too, its searched values in them
    assert (exp.name, exp.model.arch, exp.train.seed) == ("tiny", trial.data.params["model.arch"], 0)
    assert exp.train.lr == float(trial.data.params["train.lr"])

    assert main(["run", "--from-run", final.info.run_id, "--set", "tracking.mlflow_model=false"]) == 0
    again = next(r for r in the_runs("tiny") if r.data.tags["harness.role"] == "run")
    assert again.data.params["train.seed"] == seed and again.data.tags["harness.rerun_of"] == final.info.run_id
    for key in ("test_accuracy", "test_loss"):
        assert again.data.metrics[key] == final.data.metrics[key], key
    assert history(again.info.run_id, "val_loss") == history(final.info.run_id, "val_loss")
    with pytest.raises(HarnessError, match="parent run"):
        experiment_from_run(runs["study"].info.run_id)


@pytest.mark.parametrize("setting", ["'all'", "'best'"])
def test_every_final_run_logs_its_model_or_none_does(workdir, setting, capsys):
    """"all" logs each final run's as it ends; "best" without checkpoints has no weights to log, and
    says so (false: none, as test_from_run_trains_again_… shows for `harness run`)."""
    (workdir / "tiny.toml").write_text(EXPERIMENT)
    sweep(load(workdir / "tiny.toml", "sweep.n_trials=1", "sweep.repeat=2", "task.name='digits'",
               f"tracking.mlflow_model={setting}", "tracking.checkpoint=false"), progress=False)
    finals = [r for r in the_runs("tiny") if r.data.tags["harness.role"] == "final"]
    assert len(finals) == 2
    assert [len(models_of(r)) for r in finals] == [int(setting == "'all'")] * 2
    assert not [r for r in finals if "harness.model_of_best_seed" in r.data.tags]
    note = "'s best final run: tracking.checkpoint = false keeps no weights"
    assert (note in capsys.readouterr().err) == (setting == "'best'")


def test_a_long_sequences_model_is_pickled_rather_than_traced_step_by_step(workdir):
    """Tracing unrolls the recurrence (26 s for a GRU at 784 steps): past EXPORT_MAX_STEPS the model
    is pickled, loads with mlflow.pytorch.load_model all the same, and predicts as harness's own."""
    client = MlflowClient()
    run_id = client.create_run(client.create_experiment("long")).info.run_id
    task = load_task("adding", seq_len=EXPORT_MAX_STEPS + 1, train_size=64, test_size=16)
    model = create_model("gru", input_size=task.input_size, output_size=task.output_size, io=task.io,
                         seq_len=task.seq_len, hidden_size=8)
    log_model(client, run_id, model, task)
    loaded = mlflow.pytorch.load_model(f"runs:/{run_id}/model")
    assert type(loaded) is type(model) and not isinstance(loaded, torch.fx.GraphModule)
    folder = mlflow.artifacts.download_artifacts(f"runs:/{run_id}/model", dst_path=str(workdir / "model"))
    assert not (Path(folder) / "data" / "model.pt2").exists()
    with torch.no_grad():
        torch.testing.assert_close(loaded(task.x_test), model.eval()(task.x_test))


class Branchy(torch.nn.Module):
    """A plug-in whose forward branches on its data: torch.export cannot trace it."""

    def __init__(self):
        super().__init__()
        self.head = torch.nn.Linear(64, 10)

    def forward(self, x):
        y = self.head(x.flatten(1))
        return y if x.sum() > 0 else -y


def test_a_model_torch_export_cannot_trace_is_pickled_instead(workdir):
    client = MlflowClient()
    run_id = client.create_run(client.create_experiment("plug")).info.run_id
    task, model = load_task(**DIGITS), Branchy()
    with pytest.warns(UserWarning, match="torch.export cannot trace Branchy"):
        log_model(client, run_id, model, task)
    (logged,) = models_of(client.get_run(run_id))  # the failed attempt is not left beside it
    loaded = mlflow.pytorch.load_model(f"runs:/{run_id}/model")
    assert isinstance(loaded, Branchy)  # unpickled: its class is importable here
    with torch.no_grad():
        assert torch.equal(loaded(task.x_test), model(task.x_test))
