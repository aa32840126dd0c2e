"""No trial lost to the machinery: workers racing on a new store, a tracking store that fails a
call (a test double of MLflow's store, not of harness), an MLflow server and a PostgreSQL server
stopped and started again mid-sweep (real processes), a model too large for memory."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import psutil
import pytest
import sqlalchemy
import sqlalchemy.exc
from mlflow.exceptions import MlflowException
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from harness import cli, resilience
from harness.config import load_experiment
from harness.errors import Diverged, HarnessError
from harness.mlflow_store import get_client
from harness.runner import run_trial
from harness.sweep import grid, pool, run
from harness.sweep.counting import INTERRUPTED, MAX_RETRY, ended, interrupted
from harness.sweep.storage import with_driver
from harness.tracking import MlflowRun
from tests.conftest import PgServer, free_port

# A grid of short trials: 4 architectures × 2 learning rates on a small MNIST-1D, one epoch.
GRID = """\
name = "grid"

[task]
name = "mnist1d"
n_train = 192

[model]
arch = "gru"
hidden_size = 8

[train]
epochs = 1
batch_size = 64
lr = 0.01

[tracking]
grad_stats_every = 0
system_metrics = false
checkpoint = false
learning_curve = false
gradflow = false
mlflow_model = false

[sweep]
sampler = "grid"
pruner = "none"
repeat = 0

[sweep.space]
"model.arch" = ["rnn", "lstm", "gru", "brnn"]
"train.lr" = [0.003, 0.03]
"""
POINTS = 8


def grid_file(folder: Path, text: str = GRID) -> Path:
    path = folder / "grid.toml"
    path.write_text(text)
    return path


def check_grid_complete(study: optuna.Study, points: int = POINTS) -> None:
    """Every point complete exactly once; nothing else counted (a copy of a point stopped before
    training is surplus, an interrupted trial was run again)."""
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(complete) == points, {t.number: (t.state.name, t.user_attrs) for t in study.trials}
    assert len({grid.point_of(t) for t in complete}) == points
    assert not [t for t in study.trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert not [t for t in study.trials if t.state == TrialState.FAIL and ended(t)]  # no failure counted


def check_runs(client: MlflowClient, study: optuna.Study, name: str = "grid") -> list:
    """Each complete trial's run FINISHED, none left RUNNING, one study run; the trial runs."""
    exp = client.get_experiment_by_name(name)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"]
    assert sum(r.data.tags.get("harness.role") == "study" for r in runs) == 1
    by_id = {r.info.run_id: r for r in runs}
    for t in study.trials:
        if t.state == TrialState.COMPLETE:
            assert by_id[t.user_attrs["mlflow_run_id"]].info.status == "FINISHED"
    return [r for r in runs if r.data.tags.get("harness.role") == "trial"]


# ---------------------------------------------------------------- what counts as the machinery


def test_what_counts_as_a_fault_of_the_machinery():
    def raised(outer: Exception, inner: Exception) -> Exception:
        try:
            try:
                raise inner
            except Exception as e:
                raise outer from e
        except Exception as e:
            return e

    locked = sqlalchemy.exc.OperationalError("INSERT", {}, Exception("database is locked"))
    in_mlflow = raised(MlflowException("SQLAlchemy database error", error_code="TEMPORARILY_UNAVAILABLE"), locked)
    assert resilience.transient(in_mlflow) and resilience.infrastructure(in_mlflow) and not resilience.conflict(in_mlflow)
    in_optuna = raised(optuna.exceptions.StorageInternalError("commit"), locked)
    assert resilience.transient(in_optuna) and resilience.infrastructure(in_optuna)
    unique = raised(MlflowException("(sqlite3.IntegrityError) UNIQUE constraint failed"),
                    sqlalchemy.exc.IntegrityError("INSERT", {}, Exception("UNIQUE constraint failed")))
    assert resilience.conflict(unique) and not resilience.transient(unique)
    schema = sqlalchemy.exc.OperationalError("SELECT", {}, Exception("no such table: runs"))
    assert resilience.infrastructure(schema) and not resilience.transient(schema)  # no wait mends it
    assert resilience.transient(ConnectionRefusedError(111, "Connection refused"))
    assert resilience.reason(in_mlflow).startswith("OperationalError: ") and "database is locked" in resilience.reason(in_mlflow)
    for own in (Diverged(1, 3, "loss"), RuntimeError("CUDA out of memory"), MemoryError(), HarnessError("bad"), ValueError()):
        assert not resilience.infrastructure(own)

    # A trial's state: interrupted ones never count, in studies written before this too.
    def failed(**attrs):
        return optuna.trial.create_trial(state=TrialState.FAIL, user_attrs=attrs)

    assert interrupted(failed(**{INTERRUPTED: "OperationalError: locked"})) and not ended(failed(**{INTERRUPTED: "x"}))
    legacy = failed(error="MlflowException: (sqlite3.IntegrityError) UNIQUE constraint failed: datasets.experiment_id")
    assert interrupted(legacy) and not ended(legacy)
    diverged = failed(error="Diverged: non-finite loss at epoch 1, step 2")
    assert ended(diverged) and not interrupted(diverged)


def test_a_call_waits_out_an_outage_and_tells_it_once(capfd, monkeypatch):
    monkeypatch.setattr(resilience, "_printed", {})
    failures = iter([ConnectionRefusedError(111, "Connection refused")] * 2)

    def flaky():
        e = next(failures, None)
        if e:
            raise e
        return "answered"

    t0 = time.monotonic()
    assert resilience.call(flaky, "the test store") == "answered"
    assert 1.0 <= time.monotonic() - t0 < 10  # waited 0.5 s, then 1 s
    lines = capfd.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("harness: the test store did not answer for ")
    assert "ConnectionRefusedError" in lines[0] and lines[0].endswith("its calls waited and went on")
    # Another worker's view of the same outage (harness.sweep.workers.drain) is not told again.
    resilience.report(resilience.Outage("the test store", time.time() - 2, time.time(), "ConnectionRefusedError"))
    assert capfd.readouterr().err == ""

    # Past the patience the call gives up with the store's own error, told in one line.
    monkeypatch.setattr(resilience, "PATIENCE_S", 1.0)
    monkeypatch.setattr(resilience, "_printed", {})
    with pytest.raises(ConnectionRefusedError):
        resilience.call(lambda: (_ for _ in ()).throw(ConnectionRefusedError(111, "refused")), "the test store")
    (line,) = capfd.readouterr().err.splitlines()
    assert line.endswith("a call gave up")


def _log_same_datasets(uri: str, exp_id: str, barrier, results) -> None:
    from mlflow.entities import Dataset, DatasetInput

    from harness.resilience import Client

    client = Client(tracking_uri=uri)
    run_id = client.create_run(exp_id).info.run_id
    datasets = [DatasetInput(Dataset("task", f"digest-{i}", "code", "{}")) for i in range(3)]
    barrier.wait()  # every process inserts the same new rows at the same moment
    try:
        client.log_inputs(run_id, datasets=datasets)
        results.put("ok")
    except Exception as e:
        results.put(f"{type(e).__name__}: {e}"[:200])


def test_processes_logging_the_same_new_dataset_at_once_all_succeed(tmp_path):
    """MLflow checks for a dataset's row, then inserts it, without a lock: four processes doing it at
    the same moment made three of them fail with a unique-constraint error (12 of 12 racing calls
    over 4 rounds with MLflow's own client). Harness's client re-reads the row instead."""
    ctx = multiprocessing.get_context("spawn")
    for attempt in range(2):
        uri = f"sqlite:///{tmp_path / f'mlflow-{attempt}.db'}"
        exp_id = MlflowClient(tracking_uri=uri).create_experiment("race")
        barrier, results = ctx.Barrier(4), ctx.Queue()
        procs = [ctx.Process(target=_log_same_datasets, args=(uri, exp_id, barrier, results)) for _ in range(4)]
        for p in procs:
            p.start()
        outcomes = [results.get(timeout=120) for _ in procs]
        for p in procs:
            p.join(30)
        assert outcomes == ["ok"] * 4
        with sqlite3.connect(tmp_path / f"mlflow-{attempt}.db") as db:
            assert db.execute("select count(*) from datasets").fetchone()[0] == 3
            assert db.execute("select count(*) from inputs").fetchone()[0] == 12  # every run linked to each


def _claim_waiting_trials(url: str, barrier, results) -> None:
    from harness.sweep.storage import make_storage

    storage = make_storage(url)
    study_id = storage.get_study_id_from_name("race")
    waiting = [t._trial_id for t in storage.get_all_trials(study_id, states=(TrialState.WAITING,))]
    barrier.wait()  # every process claims the same queued trials at the same moment, as Optuna's ask does
    results.put(sorted(i for i in waiting if storage.set_trial_state_values(i, TrialState.RUNNING)))


def test_processes_claiming_the_same_queued_trial_at_once_one_wins(tmp_path):
    """Optuna claims a queued trial with SELECT … FOR UPDATE, then sets it RUNNING: SQLite ignores
    FOR UPDATE, so two workers could both claim one trial and train it twice (CI saw "Cannot tell a
    COMPLETE trial" and a lost point). Harness's storage claims under the store's lock."""
    ctx = multiprocessing.get_context("spawn")
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="race", storage=url)
    for i in range(12):
        study.enqueue_trial({"x": i})
    barrier, results = ctx.Barrier(3), ctx.Queue()
    procs = [ctx.Process(target=_claim_waiting_trials, args=(url, barrier, results)) for _ in range(3)]
    for p in procs:
        p.start()
    claims = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
    won = [i for c in claims for i in c]
    assert len(won) == len(set(won)) == 12, claims  # each trial claimed by exactly one process


# ---------------------------------------------------------------- a store that fails a call


class FaultyStore:
    """Makes MLflow's SQL store fail `log_inputs` for the trial runs `when(params)` picks, `times`
    times in all (None: always), with `error`: a test double of the store, under harness's client."""

    def __init__(self, monkeypatch, error: Exception, when=lambda params: True, times: int | None = 1):
        self.error, self.when, self.left, self.failed = error, when, times, 0
        real = SqlAlchemyStore.log_inputs

        def log_inputs(store, run_id, datasets=None, models=None):
            run = store.get_run(run_id)
            if run.data.tags.get("harness.role") == "trial" and self.when(run.data.params) and self.left != 0:
                self.left = None if self.left is None else self.left - 1
                self.failed += 1
                raise self.error
            return real(store, run_id, datasets, models)

        monkeypatch.setattr(SqlAlchemyStore, "log_inputs", log_inputs)

    def mend(self) -> None:
        self.left = 0


def locked() -> MlflowException:
    try:
        raise sqlalchemy.exc.OperationalError("INSERT INTO datasets", {}, Exception("database is locked"))
    except sqlalchemy.exc.OperationalError as e:
        try:
            raise MlflowException("SQLAlchemy database error", error_code="TEMPORARILY_UNAVAILABLE") from e
        except MlflowException as wrapped:
            return wrapped


@pytest.fixture
def fast_retries(monkeypatch):
    """A store's patience of 1 s and no pause between interrupted trials: the same paths, sooner."""
    monkeypatch.setattr(resilience, "PATIENCE_S", 1.0)
    monkeypatch.setattr(resilience, "_printed", {})
    monkeypatch.setattr(pool, "BACKOFF_S", (0.05, 0.05))


def test_a_fault_on_a_trials_first_dataset_log_interrupts_it_and_the_grid_completes(workdir, fast_retries, monkeypatch,
                                                                                    capfd):
    store = FaultyStore(monkeypatch, locked(), times=3)  # longer than the 1 s patience of one call
    outcome = run(load_experiment(grid_file(workdir)), progress=False)
    assert store.failed == 3
    study = outcome.study
    check_grid_complete(study)
    (lost,) = [t for t in study.trials if t.state == TrialState.FAIL]
    assert lost.user_attrs[INTERRUPTED].startswith("OperationalError") and "error" not in lost.user_attrs
    (retry,) = [t for t in study.trials if t.system_attrs.get("failed_trial") == lost.number]
    assert retry.state == TrialState.COMPLETE and grid.point_of(retry) == grid.point_of(lost)

    trial_runs = check_runs(get_client(), study)
    (killed,) = [r for r in trial_runs if r.info.status != "FINISHED"]
    assert killed.info.status == "KILLED" and killed.data.tags["harness.state"] == "interrupted"
    assert killed.data.tags["harness.trial"] == str(lost.number)
    assert [r.data.tags.get("harness.retry_of") for r in trial_runs if r.data.tags["harness.trial"] == str(retry.number)] \
        == [str(lost.number)]
    assert outcome.lines()[0].endswith(f"{POINTS} complete, 1 interrupted")
    err = capfd.readouterr().err
    assert f"harness: trial {lost.number} interrupted (OperationalError" in err and "queued again" in err
    assert "did not answer for" in err and "a call gave up" in err
    assert "Traceback" not in err and "Warning" not in err


def test_a_point_the_machinery_keeps_failing_waits_for_the_next_sweep(workdir, fast_retries, monkeypatch, capfd):
    """An error that no wait mends (a full disk, say): each try of the point is interrupted at
    once; after MAX_RETRY retries the sweep ends without it, and the next sweep runs it."""
    disk = MlflowException("(sqlite3.OperationalError) disk I/O error")
    gru = FaultyStore(monkeypatch, disk, when=lambda p: p.get("model.arch") == "gru" and p.get("train.lr") == "0.03",
                      times=None)
    path = grid_file(workdir)
    outcome = run(load_experiment(path), progress=False)
    assert gru.failed == MAX_RETRY + 1
    study = outcome.study
    assert sum(t.state == TrialState.COMPLETE for t in study.trials) == POINTS - 1
    assert sum(interrupted(t) for t in study.trials) == MAX_RETRY + 1
    assert outcome.lines()[0].endswith(f"{POINTS - 1} complete, {MAX_RETRY + 1} interrupted")
    err = capfd.readouterr().err
    assert err.count("queued again") == MAX_RETRY and "the next harness sweep runs it again" in err
    assert "Traceback" not in err

    gru.mend()
    outcome = run(load_experiment(path), progress=False)
    check_grid_complete(outcome.study)
    check_runs(get_client(), outcome.study)


def test_a_store_that_fails_every_trial_stops_the_sweep_in_one_line(workdir, fast_retries, monkeypatch, capfd):
    """A store that refuses every trial's writes would fail each point in turn: the worker stops
    after `STOP_AFTER` interrupted trials in a row, and the points wait for the next sweep."""
    store = FaultyStore(monkeypatch, MlflowException("(sqlite3.OperationalError) disk I/O error"), times=None)
    path = grid_file(workdir)
    assert cli.main(["sweep", str(path)]) == 1
    assert store.failed == pool.STOP_AFTER < POINTS * (MAX_RETRY + 1)
    err = capfd.readouterr().err.strip().splitlines()
    assert err[-1] == (f"harness: error: {pool.STOP_AFTER} trials in a row were interrupted, the last by MlflowException: "
                       "(sqlite3.OperationalError) disk I/O error; mend it and run the same command again to resume")
    assert not [line for line in err if "Traceback" in line]

    store.mend()
    assert cli.main(["sweep", str(path)]) == 0
    check_grid_complete(optuna.load_study(study_name="grid", storage=f"sqlite:///{workdir / 'optuna.db'}"))


def test_a_run_whose_store_fails_before_training_ends_interrupted_in_one_line(workdir, monkeypatch, capfd):
    """The store fails the run's first dataset log, before the loop's first epoch: every callback's
    failure hook still works, and no warning with a source line reaches the terminal."""
    FaultyStore(monkeypatch, MlflowException("(sqlite3.OperationalError) disk I/O error"), times=None)
    exp = load_experiment(grid_file(workdir))
    client = get_client()
    exp_id = client.create_experiment("one")
    run = MlflowRun(client, exp_id, exp, name="one", tags={"harness.role": "trial", "harness.trial": 0})
    with pytest.raises(MlflowException, match="disk I/O error"):
        run_trial(exp, [run])
    stored = client.get_run(run.run_id)
    assert stored.info.status == "KILLED" and stored.data.tags["harness.state"] == "interrupted"
    assert stored.data.tags["harness.error"].startswith("MlflowException: (sqlite3.OperationalError) disk I/O error")
    err = capfd.readouterr().err
    assert "Warning" not in err and "no attribute" not in err and "Traceback" not in err


def test_a_model_too_large_for_memory_is_one_line(workdir):
    path = grid_file(workdir)
    for command in ("run", "sweep"):
        out = subprocess.run([sys.executable, "-m", "harness.cli", command, str(path), "--set", "model.hidden_size=1000000000"],
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 2, out.stderr
        (line,) = out.stderr.strip().splitlines()
        assert "model.hidden_size=1000000000" in line and "EiB" in line and "more than this machine's" in line
    # A size torch can count but this machine cannot hold: an LSTM's 4·H² recurrent weights alone
    # (32·H² bytes with their gradients) twice its memory.
    hidden = int((psutil.virtual_memory().total / 16) ** 0.5)
    out = subprocess.run([sys.executable, "-m", "harness.cli", "run", str(path), "--set", "model.arch='lstm'",
                          "--set", f"model.hidden_size={hidden}"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 2
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith(f"harness: error: model.hidden_size={hidden}: lstm's ") and "parameters need" in line
    assert "GiB for fp32 weights and gradients, more than this machine's" in line
    assert not {"mlflow.db", "optuna.db"} & {p.name for p in workdir.iterdir()}  # nothing written


# ---------------------------------------------------------------- many workers on a new store


def start_sweeps(folder: Path, storage: str | None, n: int = 2, jobs: int = 2) -> list[subprocess.Popen]:
    cmd = [sys.executable, "-m", "harness.cli", "sweep", "grid.toml", "--jobs", str(jobs),
           *(["--storage", storage] if storage else [])]
    return [subprocess.Popen(cmd, cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(n)]


def finish(procs: list[subprocess.Popen], timeout: float = 400) -> list[str]:
    try:
        outs = [p.communicate(timeout=timeout)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, out in zip(procs, outs, strict=True):
        assert p.returncode == 0 and "Traceback" not in out, out
    return outs


@pytest.mark.slow
def test_four_workers_on_a_new_sqlite_store_never_lose_a_grid_point(tmp_path, monkeypatch):
    """Two `harness sweep --jobs 2` started together on new stores, as the quickstart's two workers
    do: every grid point complete exactly once, no failed trial, one row per split. (The race is
    timing-dependent; the spawned-barrier test above makes it every time.)"""
    for attempt in range(1):
        folder = tmp_path / f"round-{attempt}"
        folder.mkdir()
        grid_file(folder)
        uri = f"sqlite:///{folder / 'mlflow.db'}"
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        finish(start_sweeps(folder, None))
        study = optuna.load_study(study_name="grid", storage=f"sqlite:///{folder / 'optuna.db'}")
        check_grid_complete(study)
        assert not [t for t in study.trials if t.state == TrialState.FAIL and not t.user_attrs.get("harness_surplus")]
        check_runs(MlflowClient(tracking_uri=uri), study)
        with sqlite3.connect(folder / "mlflow.db") as db:
            assert db.execute("select count(*) from datasets").fetchone()[0] == 3


@pytest.mark.slow
@pytest.mark.postgres
def test_four_workers_on_a_new_postgres_study_and_store_never_lose_a_grid_point(postgres, tmp_path, monkeypatch):
    """The same on PostgreSQL, which has the same unique constraint: the study and MLflow's runs
    each in a new database of the session's server (on its first round it found two commands racing
    to create MLflow's tables: harness.locks.store_lock)."""
    for attempt in range(1):
        folder = tmp_path / f"round-{attempt}"
        folder.mkdir()
        grid_file(folder)
        storage = postgres(f"stress_optuna_{attempt}")
        uri = with_driver(postgres(f"stress_mlflow_{attempt}"))
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        finish(start_sweeps(folder, storage))
        study = optuna.load_study(study_name="grid", storage=with_driver(storage))
        check_grid_complete(study)
        assert not [t for t in study.trials if t.state == TrialState.FAIL and not t.user_attrs.get("harness_surplus")]
        client = MlflowClient(tracking_uri=uri)
        check_runs(client, study)
        with sqlalchemy.create_engine(uri).connect() as db:
            assert db.execute(sqlalchemy.text("select count(*) from datasets")).scalar() == 3


# ---------------------------------------------------------------- servers that come back


def wait_until(predicate, timeout: float, what: str):
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def complete_trials(storage: str) -> int:
    try:
        study = optuna.load_study(study_name="grid", storage=storage)
    except Exception:  # not created yet, or the server is away
        return 0
    return sum(t.state == TrialState.COMPLETE for t in study.trials)


def outage_lines(out: str, store: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith(f"harness: the {store}") and "did not answer" in line]


class MlflowServer:
    """`mlflow server` over a SQLite store on 127.0.0.1, in a process group of its own, which
    `stop` ends (SIGTERM, then SIGKILL) and `start` begins again on the same port."""

    def __init__(self, folder: Path):
        self.folder, self.port = folder, free_port()
        self.uri, self.proc = f"http://127.0.0.1:{self.port}", None

    def start(self) -> None:
        cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
               "--backend-store-uri", f"sqlite:///{self.folder / 'server.db'}", "--serve-artifacts",
               "--artifacts-destination", str(self.folder / "artifacts"), "--allowed-hosts", f"127.0.0.1:{self.port}"]
        log = (self.folder / "server.log").open("a")
        self.proc = subprocess.Popen(cmd, cwd=self.folder, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                     env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})

        def answers() -> bool:
            assert self.proc.poll() is None, (self.folder / "server.log").read_text()[-2000:]
            try:
                return urllib.request.urlopen(f"{self.uri}/health", timeout=5).status == 200
            except OSError:
                return False

        wait_until(answers, 120, "the MLflow server")

    def stop(self) -> None:
        for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.proc.wait(wait)
                time.sleep(1)  # its workers leave with it
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                continue
            return


@pytest.mark.slow
def test_an_mlflow_server_restarted_mid_sweep_costs_no_trial(workdir, monkeypatch):
    server = MlflowServer(workdir)
    server.start()
    try:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
        grid_file(workdir, GRID.replace("epochs = 1", "epochs = 3"))
        storage = f"sqlite:///{workdir / 'optuna.db'}"
        (sweep,) = start_sweeps(workdir, None, n=1, jobs=1)
        wait_until(lambda: complete_trials(storage) >= 1 or sweep.poll() is not None, 240, "a first trial")
        server.stop()
        time.sleep(10)
        server.start()
        (out,) = finish([sweep])
        study = optuna.load_study(study_name="grid", storage=storage)
        check_grid_complete(study)
        assert not [t for t in study.trials if t.state == TrialState.FAIL]  # not even interrupted: the calls waited
        trial_runs = check_runs(MlflowClient(tracking_uri=server.uri), study)
        assert len(trial_runs) == POINTS and all(r.info.status == "FINISHED" for r in trial_runs)
        assert all("val_accuracy" in r.data.metrics and r.data.metrics.get("epochs_run") == 3 for r in trial_runs)
    finally:
        server.stop()
    lines = outage_lines(out, "MLflow tracking store")
    assert len(lines) == 1 and lines[0].endswith("its calls waited and went on"), out


@pytest.mark.slow
@pytest.mark.postgres
def test_a_postgres_server_restarted_mid_sweep_costs_no_trial(pg_binaries, workdir):
    server = PgServer(pg_binaries)  # a server of its own: the session's keeps serving the other tests
    try:
        server.start()
        storage = server.createdb("restart")
        grid_file(workdir, GRID.replace("epochs = 1", "epochs = 3"))
        sweeps = start_sweeps(workdir, storage, n=1, jobs=2)
        wait_until(lambda: complete_trials(with_driver(storage)) >= 1 or sweeps[0].poll() is not None, 240, "a first trial")
        server.stop()
        time.sleep(10)
        server.start()
        (out,) = finish(sweeps)
        study = optuna.load_study(study_name="grid", storage=with_driver(storage))
        check_grid_complete(study)
        assert not [t for t in study.trials if t.state == TrialState.FAIL]
        trial_runs = check_runs(MlflowClient(), study)
    finally:
        server.remove()
    assert len(trial_runs) == POINTS and all(r.info.status == "FINISHED" for r in trial_runs)
    lines = outage_lines(out, "Optuna storage")
    assert len(lines) == 1 and lines[0].endswith("its calls waited and went on"), out
    assert "***" not in lines[0] or "postgres@" not in lines[0]  # named as masked() names it
