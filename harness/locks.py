"""The lock harness holds on a shared store while making what it may lack. Light on purpose (no
torch, no Optuna): the report's store check takes it too."""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path

from filelock import FileLock

from harness.config import with_driver


@contextlib.contextmanager
def store_lock(url: str):
    """Hold an exclusive lock on a store while making what it may lack (tables, a study, a grid's
    queue, a final run's claim): neither Optuna nor MLflow creates a database's tables safely in
    parallel, and "read, then insert if missing" races. A SQLite store is locked across this
    machine's processes by a file beside the database (`optuna.db.lock`, so nothing piles up in
    the temp folder); a PostgreSQL database across every machine by an advisory lock, held on a
    connection of its own. Other stores (an MLflow server, a journal file) lock themselves.
    A database that does not answer is not locked here: the caller's own call tells why."""
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(f"{path}.lock"):
            yield
        return
    if not url.startswith(("postgresql://", "postgresql+")):
        yield
        return
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    engine = sqlalchemy.create_engine(with_driver(url), poolclass=NullPool)
    try:
        conn = engine.connect()
    except sqlalchemy.exc.SQLAlchemyError:
        engine.dispose()
        yield
        return
    try:
        conn.execute(sqlalchemy.text("select pg_advisory_lock(:key)"), {"key": _LOCK_KEY})
        yield
    finally:
        try:  # ending the session releases the lock too, when the server went away meanwhile
            conn.execute(sqlalchemy.text("select pg_advisory_unlock(:key)"), {"key": _LOCK_KEY})
            conn.close()
        except sqlalchemy.exc.SQLAlchemyError:
            conn.invalidate()
        engine.dispose()


# One advisory-lock key for harness in each database (the keys are per database): a stable
# 64-bit number from a name, as PostgreSQL's key space is shared with other applications.
_LOCK_KEY = int.from_bytes(hashlib.blake2b(b"harness.store_lock", digest_size=8).digest(), "big", signed=True)
