"""Several machines, as docs/storage.md sets them up: one PostgreSQL server holding the Optuna
study and, in a database of its own, MLflow's runs; one `mlflow server` over it that also serves
the artifacts; two `harness sweep` commands in folders of their own, as on two machines, sharing
the study and logging over HTTP. The command lines are the recipe's word for word (checked
below), but for the hosts, ports, folders, URLs and experiment file."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import optuna
import psutil
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from harness.sweep.storage import with_driver
from tests.conftest import EXPERIMENT, REPO, free_port

N_TRIALS = 4
ASSIGNMENT = re.compile(r"[A-Z_]+=")  # a command line's leading VAR=value


def server_line(backend: str, artifacts: Path, port: int) -> list[str]:
    """The tracking server's command line, on the machine that holds the databases."""
    return ["MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
            "--workers", "1", "--backend-store-uri", backend, "--serve-artifacts", "--artifacts-destination", str(artifacts),
            "--allowed-hosts", f"127.0.0.1:{port}"]


def worker_lines(server: str, storage: str) -> tuple[list[str], list[str]]:
    """Each worker machine's command lines: which server to log to, then the sweep."""
    return ["export", f"MLFLOW_TRACKING_URI={server}"], ["harness", "sweep", "tiny.toml", "--storage", storage]


def runnable(line: list[str]) -> tuple[dict[str, str], list[str]]:
    """A command line's leading settings, and its command as this interpreter runs it
    (`mlflow …` as `python -m mlflow …`)."""
    n = next(i for i, a in enumerate(line) if not ASSIGNMENT.match(a))
    program = {"harness": "harness.cli"}.get(line[n], line[n])
    return dict(a.split("=", 1) for a in line[:n]), [sys.executable, "-m", program, *line[n + 1:]]


def shape(line: list[str]) -> list[str]:
    """A command line with what names a place blanked (host, port, folder, URL past its scheme,
    experiment file): what the docs and the test must share."""
    places = {"--host", "--port", "--artifacts-destination", "--allowed-hosts"}
    return ["…" if i and line[i - 1] in places else f"{a.partition('://')[0]}://…" if "://" in a
            else "….toml" if a.endswith(".toml") else a for i, a in enumerate(line)]


def recipe(program: str) -> list[str]:
    """The command line of docs/storage.md's several-machines recipe that runs `program`."""
    text = (REPO / "docs" / "storage.md").read_text().split("## Many machines", 1)[1]
    for block in re.findall(r"^```bash\n(.*?)^```", text, re.M | re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if re.match(rf"([A-Z_]+=\S+ +)*{program} ", line):
                return shlex.split(line, comments=True)
    raise AssertionError(f"docs/storage.md shows no `{program}` command on several machines")


def test_the_docs_recipe_is_the_tests_commands():
    assert shape(recipe("mlflow server")) == shape(server_line("postgresql+psycopg2://db", Path("art"), 5000))
    export, sweep = worker_lines("http://dbhost:5000", "postgresql://db")
    assert shape(recipe("export")) == shape(export) and shape(recipe("harness sweep")) == shape(sweep)


def group(pgid: int) -> list[psutil.Process]:
    """The live processes of process group `pgid`."""
    found = []
    for p in psutil.process_iter(["status"]):
        try:
            if os.getpgid(p.pid) == pgid and p.info["status"] != psutil.STATUS_ZOMBIE:
                found.append(p)
        except (OSError, psutil.Error):
            pass
    return found


@contextmanager
def serving(line: list[str], cwd: Path, url: str) -> Iterator[None]:
    """The server of command line `line`, run by harness's keeper (`python -m harness.ui`) in a
    process group of its own, from when `url` answers to the end of the block; then every process
    of the group is checked gone."""
    settings, command = runnable(line)
    log = cwd / "server.log"
    with log.open("w") as out:
        keeper = subprocess.Popen([sys.executable, "-m", "harness.ui", *command], cwd=cwd, env={**os.environ, **settings},
                                  stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=5)
                break
            except OSError:
                assert keeper.poll() is None and time.time() < deadline, log.read_text()[-3000:]
                time.sleep(0.5)
        assert len(group(keeper.pid)) >= 3  # the keeper, mlflow and uvicorn
        yield
    except BaseException:
        print(log.read_text()[-3000:])  # the server's side of a failure, shown with it
        raise
    finally:
        keeper.stdin.close()  # the keeper stops its group: SIGTERM, then SIGKILL
        keeper.wait(timeout=60)
        left = group(keeper.pid)
        for p in left:
            p.kill()
        assert not left, [p.cmdline() for p in left]


@pytest.mark.slow
@pytest.mark.postgres
def test_two_machines_share_a_postgres_study_and_an_mlflow_server(postgres, workdir):
    storage = postgres("machines_optuna")
    backend = postgres("machines_mlflow").replace("postgresql://", "postgresql+psycopg2://")  # the driver harness installs
    port, artifacts = free_port(), workdir / "artifact-root"
    uri = f"http://127.0.0.1:{port}"
    with serving(server_line(backend, artifacts, port), workdir, uri):
        machines = [workdir / "machine-a", workdir / "machine-b"]
        for m in machines:  # the same experiment file on each
            m.mkdir()
            (m / "tiny.toml").write_text(EXPERIMENT.replace("n_trials = 3", f"n_trials = {N_TRIALS}"))
        export, sweep = worker_lines(uri, storage)
        settings, command = runnable(sweep)
        env = {**os.environ, **dict([export[1].split("=", 1)]), **settings}
        sweeps = [subprocess.Popen(command, cwd=m, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                  for m in machines]
        try:
            outs = [p.communicate(timeout=300)[0] for p in sweeps]
        finally:
            for p in sweeps:
                p.kill()
        for p, out in zip(sweeps, outs, strict=True):
            assert p.returncode == 0, out
            assert f"browse the runs: {uri}" in out and "View run" not in out  # not MLflow's two links per run
        for m in machines:  # each wrote its report, and kept no store of its own
            assert (m / "reports" / "tiny.md").read_text().startswith("# Study `tiny`")
            assert not {"mlflow.db", "optuna.db", "mlruns", "mlartifacts"} & {p.name for p in m.iterdir()}

        study = optuna.load_study(study_name="tiny", storage=with_driver(storage))
        numbers = [t.number for t in study.trials]
        assert len(numbers) == len(set(numbers))
        complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
        assert len(complete) == N_TRIALS
        # Anything else is a trial started beyond N_TRIALS by a racing command, failed before it sampled.
        assert all(t.user_attrs.get("harness_surplus") for t in study.trials if t.state != TrialState.COMPLETE)
        assert len({t.user_attrs["worker"] for t in complete}) == 2  # both machines ran trials

        client = MlflowClient(tracking_uri=uri)
        exp = client.get_experiment_by_name("tiny")
        assert exp.artifact_location.startswith("mlflow-artifacts:")  # served: no client sees the server's folder
        runs = client.search_runs([exp.experiment_id], max_results=1000)
        (parent,) = [r for r in runs if r.data.tags.get("harness.role") == "study"]
        trial_runs = {r.info.run_id: r for r in runs if r.data.tags.get("harness.role") == "trial"}
        assert len(trial_runs) == N_TRIALS
        for t in complete:
            r = trial_runs[t.user_attrs["mlflow_run_id"]]
            assert r.info.status == "FINISHED" and r.data.tags["harness.trial"] == str(t.number)
            assert r.data.tags["mlflow.parentRunId"] == parent.info.run_id

        # A trial's file through the server, into a folder that is not the artifact root.
        trial = complete[0]
        run_id = trial.user_attrs["mlflow_run_id"]
        got = Path(client.download_artifacts(run_id, "settings.json", str(workdir / "download")))
        settings = json.loads(got.read_text())
        assert settings["model"]["arch"] == trial.params["model.arch"] and settings["train"]["lr"] == trial.params["train.lr"]
        assert got.read_bytes() == (artifacts / exp.experiment_id / run_id / "artifacts" / "settings.json").read_bytes()
