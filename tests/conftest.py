"""Shared fixtures: every test that tracks gets its own working dir and SQLite MLflow store;
tests that need PostgreSQL share one throw-away server (Debian's `postgresql` package)."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO / "experiments"


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One data cache per test session (MNIST-1D is generated once)."""
    return tmp_path_factory.mktemp("harness-cache")


@pytest.fixture(autouse=True)
def _isolated_cache(cache_dir, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(cache_dir))


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """A temporary working directory holding its own `mlflow.db` and `optuna.db`."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return tmp_path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pg_bin() -> Path | None:
    """The folder of Debian's PostgreSQL server binaries (the newest version), if installed."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


class PgServer:
    """A throw-away PostgreSQL server on 127.0.0.1 with its own data directory, from Debian's
    binaries: `start`, `stop` (and start again: a restart), `createdb(name)` → its URL, `remove`.
    As root it runs the server as the `postgres` user, which PostgreSQL requires."""

    def __init__(self, bin_dir: Path):
        self.bin = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="harness-pg-"))  # not under pytest's tmp: the server user must reach it
        self.data, self.port = self.root / "data", free_port()
        self.as_server = []
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            shutil.chown(self.root, "postgres")
            self.as_server = ["runuser", "-u", "postgres", "--"]
        self.pg("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync")

    def pg(self, program: str, *args: str) -> None:
        subprocess.run([*self.as_server, str(self.bin / program), *args], check=True, capture_output=True, text=True, timeout=120)

    def start(self) -> None:
        self.pg("pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"), "-w", "-t", "60",
                "-o", f"-h 127.0.0.1 -p {self.port} -k {self.root} -c fsync=off", "start")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (`fast`: connections are cut, as in a restart or a failover)."""
        if (self.data / "postmaster.pid").exists():
            self.pg("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def createdb(self, name: str) -> str:
        self.pg("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name)
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def remove(self) -> None:
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory) -> Path:
    """An MLflow SQLite store with its tables made, once a session: a new store runs MLflow's
    schema migrations, 1.5-2.5 s each time."""
    folder = tmp_path_factory.mktemp("empty-store")
    MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}").search_experiments()
    return folder / "mlflow.db"


@pytest.fixture
def store(workdir, empty_store) -> Path:
    """`workdir` holding an empty MLflow store already made (a copy of `empty_store`): for tests
    that write runs themselves. Tests of what a command does to a missing or new store use
    `workdir`."""
    shutil.copy(empty_store, workdir / "mlflow.db")
    return workdir


@pytest.fixture(scope="session")
def pg_binaries() -> Path:
    """The folder of Debian's PostgreSQL server binaries. Off CI a machine without them skips
    the tests that use it; CI installs them (.ci/run) and runs them."""
    bin_dir = pg_bin()
    if bin_dir is None:
        assert not os.environ.get("CI"), "CI must install Debian's postgresql (see .ci/run)"
        pytest.skip("PostgreSQL server binaries not found under /usr/lib/postgresql (apt-get install postgresql)")
    return bin_dir


@pytest.fixture(scope="session")
def postgres(pg_binaries):
    """The session's PostgreSQL server, stopped after the session: `postgres(name)` creates
    database `name` and returns its URL."""
    server = PgServer(pg_binaries)
    try:
        server.start()
        yield server.createdb
    finally:
        server.remove()


@pytest.fixture(scope="module")
def postgres_url(postgres, request) -> str:
    """A database of its own on the session's PostgreSQL server, named after the test module."""
    return postgres(request.module.__name__.rpartition(".")[2])


# Small and fast: 256 MNIST-1D sequences, hidden size 8, nothing tracked beyond metrics.
EXPERIMENT = """\
# A tiny study for the sweep tests.
name = "tiny"

[task]
name = "mnist1d"
n_train = 256

[model]
arch = "gru"
hidden_size = 8

[train]
epochs = 2
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
n_trials = 3
sampler = "random"
pruner = "none"
seed = 0
repeat = 0

[sweep.space]
"model.arch" = ["rnn", "gru"]
"train.lr" = { low = 1e-3, high = 3e-2, log = true }

[sweep.space_by_arch.rnn]
"model.activation" = ["tanh", "relu"]
"""


@pytest.fixture
def exp_file(workdir) -> Path:
    """EXPERIMENT written into the test's working directory."""
    path = workdir / "tiny.toml"
    path.write_text(EXPERIMENT)
    return path
