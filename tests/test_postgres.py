"""Workers sharing one study through a real PostgreSQL server (Debian's `postgresql` package;
the `postgres_url` fixture in conftest.py starts it)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from harness.sweep.storage import with_driver
from tests.conftest import EXPERIMENT, free_port


@pytest.mark.slow
@pytest.mark.postgres
def test_two_workers_on_one_postgres_study(postgres_url, workdir):
    exp_file = workdir / "tiny.toml"
    exp_file.write_text(EXPERIMENT)
    n = 6
    cmd = [sys.executable, "-m", "harness.cli", "sweep", str(exp_file), "--storage", postgres_url, "--n-trials", str(n),
           "--set", "task.n_train=384", "--set", "train.epochs=4"]
    # Two `harness sweep` commands, as on two machines, started together on one study.
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    try:
        outs = [p.communicate(timeout=300)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, out in zip(procs, outs, strict=True):
        assert p.returncode == 0, out

    study = optuna.load_study(study_name="tiny", storage=with_driver(postgres_url))
    numbers = [t.number for t in study.trials]
    assert len(numbers) == len(set(numbers))
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(complete) == n
    # Anything else is a trial started beyond n by a racing worker, failed before it sampled.
    assert all(t.user_attrs.get("harness_surplus") and not t.params for t in study.trials if t.state != TrialState.COMPLETE)
    assert len({t.user_attrs["worker"] for t in complete}) == 2  # both commands ran trials

    client = MlflowClient()
    exp = client.get_experiment_by_name("tiny")
    runs = {r.info.run_id: r for r in client.search_runs([exp.experiment_id], max_results=1000)}
    for t in complete:
        r = runs[t.user_attrs["mlflow_run_id"]]
        assert r.info.status == "FINISHED" and r.data.tags["harness.trial"] == str(t.number)
    assert sum(r.data.tags.get("harness.role") == "trial" for r in runs.values()) == n
    assert sum(r.data.tags.get("harness.role") == "study" for r in runs.values()) == 1
    assert not [r for r in runs.values() if r.info.status == "RUNNING"]


def test_unreachable_postgres_is_one_line(workdir):
    from harness.errors import HarnessError
    from harness.sweep.storage import make_storage

    url = f"postgresql://u:secret@127.0.0.1:{free_port()}/optuna"
    t0 = time.time()
    with pytest.raises(HarnessError) as e:
        make_storage(url)
    assert "sweep.storage: cannot open postgresql://u:***@127.0.0.1" in str(e.value) and "secret" not in str(e.value)
    assert "\n" not in str(e.value) and time.time() - t0 < 30



@pytest.mark.slow
@pytest.mark.postgres
def test_a_storage_password_never_reaches_mlflow(postgres_url, workdir):
    """The test server trusts every local connection, so a password in the URL is accepted and unused:
    any place it turns up in MLflow was written there by harness."""
    password = "s3cret-Pa55"
    url = postgres_url.replace("postgresql://postgres@", f"postgresql://postgres:{password}@")
    exp_file = workdir / "tiny.toml"
    exp_file.write_text(EXPERIMENT)
    done = subprocess.run([sys.executable, "-m", "harness.cli", "sweep", str(exp_file), "--storage", url, "--study", "secret",
                           "--n-trials", "1", "--repeat", "1", "--set", "task.n_train=128", "--set", "train.epochs=1"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert password not in done.stdout + done.stderr and "postgres:***@" in done.stdout
    client = MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name("secret").experiment_id], max_results=100)
    assert {r.data.tags["harness.role"] for r in runs} == {"study", "trial", "final"}
    for r in runs:
        text = " ".join([*r.data.params.values(), *r.data.tags.values(), *r.data.params, *r.data.tags])
        assert password not in text, r.info.run_name
        folder = Path(client.download_artifacts(r.info.run_id, "", str(workdir / "artifacts" / r.info.run_id)))
        for path in folder.rglob("*"):
            if path.is_file():
                assert password.encode() not in path.read_bytes(), path
    assert any((workdir / "artifacts").rglob("settings.json"))  # the file that used to hold it was searched
    assert password not in (workdir / "reports" / "secret.md").read_text()
