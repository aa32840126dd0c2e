"""The `harness` command end to end: real Optuna SQLite storage, real SQLite MLflow store."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import psutil
import pytest
from mlflow.tracking import MlflowClient

from harness.cli import main
from tests.conftest import EXPERIMENTS, free_port

QUICK = str(EXPERIMENTS / "quickstart.toml")
SMALL = ["--set", "train.epochs=2", "--set", "task.n_train=256", "--set", "model.hidden_size=8"]


def test_list_archs_and_tasks(capsys):
    assert main(["list", "archs"]) == 0
    out = capsys.readouterr().out
    for name in ("rnn", "lstm", "gru", "brnn", "bilstm", "bigru", "seed-lstm", "mlp"):
        assert any(line.split()[0] == name for line in out.splitlines()), name
    assert main(["list", "tasks"]) == 0
    tasks = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert tasks == sorted(tasks) and {"mnist1d", "mnist1d-generate", "adding", "copy"} <= set(tasks)
    assert main(["list", "archs", "*gru"]) == 0
    assert capsys.readouterr().out.split() [0] == "bigru"


def test_run_trains_once_and_logs_one_mlflow_run(workdir, capsys):
    assert main(["run", QUICK, "--arch", "gru", *SMALL]) == 0
    out = capsys.readouterr().out
    assert "gru on mnist1d" in out
    client = MlflowClient()
    exp = client.get_experiment_by_name("quickstart")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["model.arch"] == "gru" and run.data.params["task.n_train"] == "256"
    assert run.data.tags["harness.role"] == "run"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")]
    assert steps == [1, 2]
    printed = float(re.search(r"test accuracy (\d\.\d+)", out)[1])
    assert printed == pytest.approx(run.data.metrics["test_accuracy"], abs=5e-5) and run.info.run_id in out
    assert run.data.params["kernel"] == "harness" and "samples/s (harness" in out  # the GRU on harness's scan, named
    assert exp.tags["mlflow.note.content"].startswith("Which recurrent architecture")  # the file's description
    assert len(run.inputs.dataset_inputs) == 3


@pytest.mark.slow
def test_sweep_nests_trials_under_the_study_and_reports_every_arch(workdir, capsys):
    # Random sampler over the four families with a fixed seed: every trial is a real run. (The
    # quickstart's per-family learning-rate lists are a grid's: one shared range here.)
    args = ["sweep", QUICK, "--n-trials", "4", "--study", "smoke", "--sampler", "random", "--pruner", "none", "--repeat", "1", *SMALL,
            "--set", "tracking.mlflow_model=false",  # the final runs' models are tested in test_logged_runs
            "--set", "sweep.space_by_arch={}", "--set", "sweep.space={'model.arch' = ['rnn', 'lstm', 'gru', 'brnn'], "
            "'train.lr' = { low = 1e-3, high = 1e-2, log = true }}"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "report: reports/smoke.md" in out and "harness ui" in out

    client = MlflowClient()
    exp = client.get_experiment_by_name("smoke")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("harness.role") == "study"]
    trials = [r for r in runs if r.data.tags.get("harness.role") == "trial"]
    assert len(parents) == 1 and len(trials) == 4
    parent = parents[0].info.run_id
    assert all(t.data.tags["mlflow.parentRunId"] == parent for t in trials)
    assert sorted(int(t.data.params["trial_number"]) for t in trials) == [0, 1, 2, 3]
    for t in trials:
        assert t.info.status == "FINISHED"
        assert t.info.run_name.startswith(t.data.params["model.arch"] + "-h8-#")
        assert {"train.lr", "model.arch", "model.hidden_size", "n_params"} <= set(t.data.params)
        for key in ("train_loss", "val_loss", "train_accuracy", "val_accuracy", "epoch_samples_per_s", "cpu_share"):
            assert [m.step for m in client.get_metric_history(t.info.run_id, key)] == [1, 2], key
        # the run's speed, once: epoch 2's (epoch 1 holds warm-up), marked if it shared the cores
        [speed] = client.get_metric_history(t.info.run_id, "train_samples_per_s")
        assert speed.step == 0 and t.data.tags["harness.contended"] in ("true", "false")
        assert speed.value == pytest.approx(client.get_metric_history(t.info.run_id, "epoch_samples_per_s")[1].value)
        assert t.data.params["kernel"] in ("onednn", "aten", "harness", "none")

    archs = {t.data.params["model.arch"] for t in trials}
    report = (workdir / "reports" / "smoke.md").read_text()
    families = report.split("## Families")[1].split("\n## ")[0]
    rows = [line for line in families.splitlines() if line.startswith("| ") and "architecture" not in line]
    assert {row.split("|")[1].strip() for row in rows} == archs
    assert (workdir / "reports" / "smoke_curves.png").stat().st_size > 1000
    # Where the workers' time went: every share of it, training among them, adding up to the whole.
    (spent,) = [line for line in report.splitlines() if line.startswith("- where the workers' time went")]
    shares = {name.strip(): int(pct) for name, pct in re.findall(r"([^,]+?) (\d+)%", spent.split("): ", 1)[1])}
    assert "training steps" in shares and shares["training steps"] > 0 and 97 <= sum(shares.values()) <= 103, spent
    # In MLflow: an experiment the UI opens on its runs (the page printed), the answer on the study run.
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    assert f"/#/experiments/{exp.experiment_id}/runs?workflowType=machine_learning&orderByKey=" in out
    assert parents[0].data.tags["mlflow.note.content"] == report.splitlines()[4] != ""  # the headline

    # Re-running the same command resumes: nothing new to do, same parent run, report again.
    assert main(args) == 0
    runs = client.search_runs([exp.experiment_id])
    assert sum(r.data.tags.get("harness.role") == "study" for r in runs) == 1
    assert sum(r.data.tags.get("harness.role") == "trial" for r in runs) == 4

    # `harness report` reads MLflow alone, into another folder: the same report but for the wall time,
    # which the resuming command added to.
    assert main(["report", "smoke", "--out", str(workdir / "elsewhere")]) == 0
    again = (workdir / "elsewhere" / "smoke.md").read_text()
    assert again.split("## Reproduction")[0] == report.split("## Reproduction")[0]
    assert "harness sweep " + " ".join(args[1:3]) in again.split("## Reproduction")[1]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", QUICK, "--set", "train.lr=-1"], "train.lr"),
        (["run", QUICK, "--arch", "lstmm"], "did you mean"),
        (["run", QUICK, "--set", "model.hidden_size=0"], "model.hidden_size"),
        (["run", QUICK, "--set", "task.name=nope"], "unknown task 'nope'"),
        (["run", QUICK, "--set", "task.colour=1"], "task.colour"),
        (["sweep", "missing.toml"], "not found"),
        (["report", "no-such-study"], "no MLflow store"),
    ],
)
def test_bad_input_exits_2_with_one_line(workdir, capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("harness: error: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_bad_input_leaves_no_half_written_store(workdir):
    assert main(["run", QUICK, "--set", "model.dropout=1.5"]) == 2
    assert main(["sweep", QUICK, "--set", "model.activation=foo"]) == 2
    client = MlflowClient()
    exp = client.get_experiment_by_name("quickstart")
    assert exp is None or not client.search_runs([exp.experiment_id])
    assert not (workdir / "optuna.db").exists()


def test_installed_command_runs():
    exe = shutil.which("harness", path=os.path.dirname(sys.executable)) or shutil.which("harness")
    assert exe, "the console script `harness` is not installed"
    out = subprocess.run([exe, "list", "archs"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "lstm" in out.stdout
    bad = subprocess.run([exe, "frobnicate"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


@pytest.mark.slow
def test_ui_serves_the_tracking_store_on_localhost(workdir):
    assert main(["run", QUICK, *SMALL, "--set", "train.epochs=1"]) == 0
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness.cli", "ui", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=workdir, env={**os.environ}, start_new_session=True,
    )
    try:
        deadline, body = time.time() + 90, ""
        while time.time() < deadline and not body:
            try:
                req = urllib.request.Request(
                    f"http://127.0.0.1:{port}/ajax-api/2.0/mlflow/experiments/search",
                    data=b'{"max_results": 10}', headers={"Content-Type": "application/json"},
                )
                body = urllib.request.urlopen(req, timeout=5).read().decode()
            except OSError:
                assert proc.poll() is None, proc.stdout.read().decode()
                time.sleep(1)
        assert "quickstart" in body
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and any workers it started
        proc.wait(timeout=30)


def ctrl_c_reaches_it() -> None:
    """For `preexec_fn`: SIGINT handled as a terminal's Ctrl-C is. A test run started in the background
    by a non-interactive shell inherits SIGINT ignored, and so would every command it starts."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def kill_all(proc: subprocess.Popen, started: list[psutil.Process]) -> None:
    """Kill a command and every process it started, whichever are still there."""
    for p in started:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    if proc.poll() is None:
        proc.kill()


def _start_ui(workdir) -> tuple[subprocess.Popen, int, list[psutil.Process]]:
    """`harness ui` on a free port, once the port answers; with every process it started."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "ui", "--port", str(port)], cwd=workdir,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            preexec_fn=ctrl_c_reaches_it)
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert proc.poll() is None, "harness ui exited before serving"
            time.sleep(0.5)
    else:
        raise AssertionError("the UI never answered")
    started = psutil.Process(proc.pid).children(recursive=True)
    assert len(started) >= 3  # the keeper, mlflow ui, uvicorn (and its workers)
    return proc, port, started


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return False
    except ConnectionRefusedError:
        return True


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "Ctrl-C"])
def test_the_ui_leaves_nothing_behind_when_it_is_stopped(workdir, sig):
    proc, port, started = _start_ui(workdir)
    try:
        os.kill(proc.pid, sig)
        gone, alive = psutil.wait_procs(started, timeout=30)  # the keeper's grace is 5 s; a loaded machine is slow
        assert not alive, [p.cmdline() for p in alive]
        assert _refused(port)
        assert proc.wait(timeout=15) == (-signal.SIGKILL if sig == signal.SIGKILL else 130)
    finally:  # whatever the outcome, nothing of this test keeps running
        kill_all(proc, started)


def test_the_keeper_exits_with_the_servers_code_when_the_server_stops_on_its_own():
    # The command still holds the keeper's stdin, as `harness ui` does while the server runs.
    keeper = subprocess.Popen([sys.executable, "-m", "harness.ui", sys.executable, "-c", "raise SystemExit(3)"],
                              stdin=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        assert keeper.wait(timeout=60) == 3, keeper.stderr.read().decode()  # not an abort at shutdown
    finally:
        keeper.kill()
        keeper.stdin.close()


def test_the_ui_refuses_a_port_in_use(workdir, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        assert main(["ui", "--port", str(s.getsockname()[1])]) == 2
    err = capsys.readouterr().err
    assert err.startswith("harness: error: --port: ") and err.count("\n") == 1
    assert not (workdir / "mlflow.db").exists()


def test_the_ui_of_an_unknown_study_is_a_one_line_error_and_starts_nothing(workdir, capsys):
    assert main(["ui", "nope", "--port", str(free_port())]) == 2  # no store yet: none is created
    err = capsys.readouterr().err
    assert err.startswith("harness: error: no study 'nope'") and err.count("\n") == 1
    assert not (workdir / "mlflow.db").exists()
    MlflowClient().create_experiment("other")
    assert main(["ui", "nope", "--port", str(free_port())]) == 2
    err = capsys.readouterr().err
    assert err == "harness: error: no study 'nope' in the MLflow store; `harness ui` without a name lists them all\n"


def test_a_diverging_run_exits_1_with_one_line_and_a_failed_run(workdir, capsys):
    argv = ["run", QUICK, "--arch", "rnn", *SMALL, "--set", "train.lr=1e12", "--set", "train.clip_norm=1e30",
            "--set", "model.activation='relu'", "--set", "train.optimizer='sgd'"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "diverged" in err and "Traceback" not in err and err.count("\n") == 1
    assert "a smaller train.clip_norm (now 1e+30)" in err and "set train.clip_norm" not in err  # it is set already
    client = MlflowClient()
    (run,) = client.search_runs([client.get_experiment_by_name("quickstart").experiment_id])
    assert run.info.status == "FAILED" and run.data.tags["harness.failure"] == "diverged"


def test_a_sweep_whose_timeout_ends_before_any_trial_says_no_report_on_stderr(workdir, capsys):
    argv = ["sweep", QUICK, *SMALL, "--timeout", "0.001", "--jobs", "1", "--repeat", "0", "--devices", "cpu"]
    assert main(argv) == 1
    out, err = capsys.readouterr()
    assert "study 'quickstart'" in out and "no report" not in out  # its grid points queued, none run
    assert err.startswith("harness: no report: ") and err.count("\n") == 1
