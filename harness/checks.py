"""What the user names for harness to write to (`--out` folders, a journal file, SQLite and
MLflow stores, an MLflow server), checked before anything is written: a place that cannot be
written, or a store that is not one, is a one-line `HarnessError`, and the check itself leaves
nothing behind."""

from __future__ import annotations

import os
import socket
import sqlite3
import tempfile
from contextlib import closing
from pathlib import Path
from urllib.parse import urlsplit

from harness.config import masked, tracking_uri
from harness.errors import HarnessError


def check_folder(path: str | Path, what: str) -> None:
    """Raise unless folder `path` exists and takes files, or can be created."""
    path = Path(path).expanduser().absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise HarnessError(f"{what}: cannot create {path}: {existing} is a file, not a folder")
    try:  # the one sure test, root and read-only mounts included: make something there
        tempfile.TemporaryDirectory(dir=existing).cleanup()
    except OSError as e:
        raise HarnessError(f"{what}: cannot create {path}: {existing} takes no files ({e.strerror}); choose another folder") from None


def check_file(path: str | Path, what: str) -> None:
    """Raise unless file `path` exists, or its folder can be created."""
    path = Path(path).expanduser().absolute()
    if path.exists() and not path.is_file():
        raise HarnessError(f"{what}: {path} is not a file")
    check_folder(path.parent, what)


def sqlite_path(url: str) -> Path | None:
    """The file of a `sqlite:///PATH` URL; None for any other URL."""
    if not url.startswith("sqlite:///"):
        return None
    return Path(url.removeprefix("sqlite:///").partition("?")[0]).expanduser().absolute()


def check_sqlite(url: str, what: str) -> None:
    """Raise unless the SQLite store at `url` (sqlite:///PATH) is an intact database or can be
    created. The file is opened read-only: a corrupt store stays as it was."""
    path = sqlite_path(url)
    if path is None:
        return
    check_file(path, what)
    if not path.exists():
        return
    try:  # as patient with a busy store as its writers are (harness.sweep.storage)
        with closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=60)) as db:
            # Reads every page (a fraction of a second for 200 MB): finds a truncated file as
            # well as one that never was a database.
            problems = [row[0] for row in db.execute("PRAGMA quick_check") if row[0] != "ok"]
    except sqlite3.OperationalError as e:
        problems = [] if "locked" in str(e) else [str(e)]  # locked: in use by others, so a database
    except sqlite3.Error as e:
        problems = [str(e)]
    if problems:
        raise HarnessError(f"{what}: {path} is not an intact SQLite database ({problems[0]}); "
                           "restore it from a backup or move it aside")


def is_server(uri: str) -> bool:
    """Whether the tracking URI names an MLflow server (`http://`, `https://`), not a store."""
    return uri.startswith(("http://", "https://"))


def check_server(uri: str, what: str) -> None:
    """Raise unless something answers at the MLflow server `uri`: MLflow's client retries a
    server that is not there for minutes before it gives up."""
    try:
        url = urlsplit(uri)
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=10).close()
    except (OSError, ValueError) as e:  # refused, unknown host, timed out; a port that is no number
        reason = getattr(e, "strerror", None) or str(e)
        raise HarnessError(f"{what}: no MLflow server answers at {masked(uri)} ({reason}); start it "
                           "(mlflow server, see docs/storage.md) or correct the URI") from None


def check_tracking(study: str | None = None) -> None:
    """Raise unless the MLflow tracking store can be used: a SQLite file intact or creatable, any
    other URI one MLflow opens, and `study`'s experiment, when the store holds it, not deleted
    (MLflow keeps a deleted experiment's name until it is purged, and refuses runs in it). A
    SQLite store that does not exist yet is not created here; a server must answer."""
    from mlflow.tracking import MlflowClient

    uri = tracking_uri()
    what = "MLFLOW_TRACKING_URI" if os.environ.get("MLFLOW_TRACKING_URI") else "mlflow.db"
    check_sqlite(uri, what)
    if is_server(uri):
        check_server(uri, what)
    path = sqlite_path(uri)
    if path is not None and not path.exists():
        return
    from harness.locks import store_lock

    try:
        with store_lock(uri):  # commands starting together on a new database: one makes its tables
            client = MlflowClient(tracking_uri=uri)
        found = client.get_experiment_by_name(study) if study else client.search_experiments(max_results=1)
    except Exception as e:  # an unknown scheme, a server that does not answer, a schema MLflow cannot read
        reason = " ".join(str(e).split())[:300] or type(e).__name__
        raise HarnessError(f"{what}: cannot open the MLflow store {masked(uri)}: {reason}") from None
    if study and found is not None and found.lifecycle_stage == "deleted":
        raise HarnessError(
            f"MLflow experiment {study!r} (id {found.experiment_id}) is deleted but not purged: restore it "
            f"(mlflow experiments restore --experiment-id {found.experiment_id}), purge it (mlflow gc), or choose another name")
