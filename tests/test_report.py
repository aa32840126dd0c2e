"""The report reads a real SQLite MLflow store; runs are written here with known values."""

from __future__ import annotations

import pytest
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from harness.archs import arch_info
from harness.cli import main
from harness.errors import HarnessError
from harness.report import write_report
from harness.tasks import _registry as tasks
from harness.tasks import load_task, register_task
from harness.tasks.metrics import _metrics as metrics
from harness.tasks.metrics import register_metric

FAMILY = {"lstm": "LSTM", "rnn": "RNN", "bigru": "BRNN"}  # what the registry logs for these runs


def _run(client, exp_id, name, *, arch, role="trial", state="complete", val=None, test=None, speed=None, **extra_tags):
    run = client.create_run(exp_id, run_name=name)
    rid = run.info.run_id
    tags = {"harness.role": role, "harness.study": "s", "harness.state": state, **extra_tags}
    params = {"model.arch": arch, "n_params": 100, "task.name": "digits", "task_io": "many-to-one", "task_metric": "accuracy",
              "task_metric_direction": "maximize", "arch_family": FAMILY[arch]}
    metrics = {k: v for k, v in {"best_val_accuracy": val, "test_accuracy": test, "train_samples_per_s": speed}.items() if v is not None}
    client.log_batch(rid, metrics=[Metric(k, v, 0, 1) for k, v in metrics.items()],
                     params=[Param(k, str(v)) for k, v in params.items()], tags=[RunTag(k, v) for k, v in tags.items()])
    if val is not None:
        client.log_batch(rid, metrics=[Metric("val_accuracy", val - 0.1, 0, 1), Metric("val_accuracy", val, 0, 2)])
    client.set_terminated(rid, {"complete": "FINISHED", "pruned": "KILLED", "failed": "FAILED"}[state])


@pytest.fixture
def study(workdir):
    client = MlflowClient()
    exp_id = client.create_experiment("s")
    _run(client, exp_id, "lstm-#0", arch="lstm", val=0.90, test=0.88, speed=1000.0)
    _run(client, exp_id, "lstm-#1", arch="lstm", val=0.95, test=0.91, speed=900.0)
    _run(client, exp_id, "lstm-#2", arch="lstm", state="pruned")
    _run(client, exp_id, "rnn-#3", arch="rnn", val=0.50, test=0.52, speed=3000.0)
    _run(client, exp_id, "rnn-#4", arch="rnn", state="failed", **{"harness.failure": "diverged"})
    _run(client, exp_id, "bigru-#5", arch="bigru", val=0.97, test=0.93, speed=400.0)
    for i, (v, t) in enumerate([(0.94, 0.90), (0.96, 0.92), (0.95, 0.94)]):  # finals never count as search trials
        _run(client, exp_id, f"lstm-final-{i}", arch="lstm", role="final", val=v, test=t, speed=1.0)
    return workdir


def test_report_ranks_architectures_by_their_best_search_trial(study):
    text = write_report("s").read_text()
    rows = [line.split("|") for line in text.split("## Final runs")[0].splitlines() if line.startswith("| ") and "family" not in line]
    cells = [[c.strip() for c in r[1:-1]] for r in rows]
    assert [c[0] for c in cells] == ["bigru", "lstm", "rnn"]  # by best val accuracy, descending
    lstm = cells[1]
    assert lstm[1:5] == ["LSTM", "3", "1", "0"]  # family, trials, pruned, failed
    assert (lstm[5], lstm[6], lstm[-1]) == ("0.95", "0.91", "lstm-#1")  # best trial and its test
    assert cells[0][1] == "BRNN" and cells[2][4] == "1"


def test_final_runs_give_mean_and_t_confidence_interval(study):
    text = write_report("s").read_text()
    final = next(line for line in text.split("## Final runs")[1].splitlines() if line.startswith("| lstm"))
    cells = [c.strip() for c in final.split("|")[1:-1]]
    # test accuracy 0.90, 0.92, 0.94: mean 0.92, sd 0.02, t(0.975, 2) = 4.303 → ±0.0497
    assert cells[2] == "3" and float(cells[5]) == pytest.approx(0.92) and float(cells[6]) == pytest.approx(0.0497, abs=1e-4)


def test_unfinished_trials_are_explained(study):
    text = write_report("s").read_text()
    section = text.split("## Trials that did not finish")[1]
    assert "diverged" in section and "pruned" in section
    assert (study / "reports" / "s_curves.png").stat().st_size > 1000
    assert (study / "reports" / "s_speed.png").stat().st_size > 1000


@pytest.mark.parametrize(
    ("arch", "overrides", "expected"),
    [("rnn", {}, "RNN"), ("rnn-sigmoid", {}, "RNN"), ("brnn", {}, "BRNN"), ("bilstm", {}, "BRNN"),
     ("lstm", {"bidirectional": True}, "BRNN"), ("brnn", {"bidirectional": False}, "RNN"), ("seed-lstm", {}, "LSTM"),
     ("gru", {"bidirectional": False}, "GRU"), ("mlp", {}, "MLP")],
)
def test_families_come_from_the_registry(arch, overrides, expected):
    assert arch_info(arch, **overrides).family == expected


def test_a_plug_in_without_a_family_is_custom(workdir):
    (workdir / "family_plugins.py").write_text(
        "from harness.archs import describe_model\nfrom harness.archs.recurrent import gru\n"
        "def tiny_gru(**kw):\n    return gru(**{'hidden_size': 8, **kw})\n"
        "@describe_model(family='GRU')\ndef said_gru(**kw):\n    return gru(**{'hidden_size': 8, **kw})\n")
    assert arch_info("family_plugins:tiny_gru").family == "custom"
    assert arch_info("family_plugins:said_gru").family == "GRU"
    assert arch_info("family_plugins:said_gru", bidirectional=True).family == "BRNN"


@pytest.fixture
def lower_is_better_task():
    """A task whose metric is registered here, lower is better, and which harness has never heard of."""

    @register_metric(higher_is_better=False)
    def abs_error(out, y):
        return (out - y).abs().mean()

    @register_task
    def noisy_sum(seq_len: int = 10, train_size: int = 300, test_size: int = 60, split_seed: int = 0):
        """many-to-one: the adding problem, scored by mean absolute error."""
        from dataclasses import replace

        base = load_task("adding", seq_len=seq_len, train_size=train_size, test_size=test_size, split_seed=split_seed)
        return replace(base, name="noisy-sum", metric="abs_error")

    yield "noisy-sum"
    del tasks.entries["noisy-sum"], metrics.entries["abs_error"]


@pytest.mark.slow
def test_a_lower_is_better_metric_is_ranked_ascending(workdir, lower_is_better_task, capsys):
    """A grid over three architectures on a task whose metric the report's code never names."""
    (workdir / "exp.toml").write_text(
        'name = "low"\n[task]\nname = "noisy-sum"\n[train]\nepochs = 2\nlr = 0.01\n'
        '[tracking]\nsystem_metrics = false\ncheckpoint = false\n'
        '[sweep]\nsampler = "grid"\npruner = "none"\n[sweep.space]\n"model.arch" = ["rnn", "gru", "mlp"]\n'
        '"model.hidden_size" = [8]\n')
    assert main(["sweep", str(workdir / "exp.toml"), "--out", str(workdir / "out")]) == 0
    text = (workdir / "out" / "low.md").read_text()
    assert "metric `abs_error` (lower is better)" in text
    header = next(line for line in text.splitlines() if line.startswith("| architecture"))
    column = [c.strip() for c in header.split("|")].index("best val abs_error")
    rows = [line.split("|") for line in text.split("## Architectures")[1].split("##")[0].splitlines()
            if line.startswith("| ") and not line.startswith("| architecture")]
    values = [float(r[column]) for r in rows]
    assert len(values) == 3 and values == sorted(values) and values[0] < values[-1]
    assert {r[2].strip() for r in rows} == {"RNN", "GRU", "MLP"}  # families as the registry logged them


def test_unknown_study_and_missing_store(workdir):
    with pytest.raises(HarnessError, match="no MLflow store"):
        write_report("s")
    MlflowClient().create_experiment("other")
    with pytest.raises(HarnessError, match="no study 's'"):
        write_report("s")
