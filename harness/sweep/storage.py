"""Where a study lives: storage specs → URLs, the PostgreSQL driver, passwords masked, the
Optuna storage opened with retries and heartbeats, calls that outlast the database's outages
(a restart, a failover: harness.resilience); the lock on a store while it is made is harness.locks.

Specs: unset → SQLite `optuna.db` in the working directory; `journal:PATH` or a path ending
.log / .journal → Optuna's journal file (many processes on one machine); any database URL
(`sqlite:///…`, `postgresql://user:pass@host/db` for workers on many machines).
"""

from __future__ import annotations

import contextlib
import time
import warnings
from pathlib import Path

import optuna
from optuna.trial import TrialState

from harness.checks import check_file, check_sqlite
from harness.config import default_storage, masked, with_driver
from harness.errors import HarnessError
from harness.locks import store_lock
from harness.resilience import retrying, wrap_methods
from harness.sweep.recovery import lost_trial

__all__ = ["make_storage", "masked", "resolve_storage", "with_driver"]

HEARTBEAT_S = 10  # a worker's trial records a heartbeat this often (RDB storages)
GRACE_S = 60  # a RUNNING trial without a heartbeat for this long is failed and re-queued


def resolve_storage(spec: str | None) -> str:
    """A storage spec as a URL: unset → SQLite `optuna.db` here; `journal:PATH` or a path
    ending .log / .journal → `journal:<absolute path>`; anything else must be a database URL.
    A file store's path is checked (its folder can be made, an existing SQLite file is intact)."""
    if not spec:
        url = default_storage()
    elif spec.startswith("journal:") or spec.endswith((".log", ".journal")) and "://" not in spec:
        path = Path(spec.removeprefix("journal:")).expanduser()
        check_file(path, "sweep.storage")
        return f"journal:{path.resolve()}"
    elif "://" not in spec:
        raise HarnessError(f"sweep.storage: {spec!r} is neither a database URL (sqlite:///optuna.db, "
                           "postgresql://user:pass@host/db) nor a journal file (journal:PATH or *.log)")
    else:
        url = spec
    check_sqlite(url, "sweep.storage")
    return url


class Storage(optuna.storages.RDBStorage):
    """Optuna's RDB storage whose every call waits out an outage of its database (harness.resilience):
    a PostgreSQL server restarted mid-sweep costs no trial."""

    def set_trial_state_values(self, trial_id: int, state: TrialState, values=None) -> bool:
        # Optuna claims a queued trial by reading it WAITING with SELECT … FOR UPDATE, then setting
        # it RUNNING. SQLite ignores FOR UPDATE: two workers could both claim one grid point and
        # train it twice. There, a claim is made under the store's lock.
        claim = state == TrialState.RUNNING and self.url.startswith("sqlite:///")
        with store_lock(self.url) if claim else contextlib.nullcontext():
            return _set_trial_state_values(self, trial_id, state, values)


def _store(storage: Storage) -> str:
    return f"the Optuna storage {masked(storage.url)}"


_set_trial_state_values = retrying(optuna.storages.RDBStorage.set_trial_state_values, _store)
wrap_methods(Storage, optuna.storages.RDBStorage, _store,
             skip=frozenset({"remove_session", "get_heartbeat_interval", "get_heartbeat_stale_trial_callback",
                             "set_trial_state_values"}))


def make_storage(url: str) -> optuna.storages.BaseStorage:
    """The Optuna storage for a resolved URL, with heartbeats where the storage has them."""
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend

        path = Path(url.removeprefix("journal:"))
        path.parent.mkdir(parents=True, exist_ok=True)
        try:  # read (replayed) here, never rewritten: a journal that is not one fails now
            journal = optuna.storages.JournalStorage(JournalFileBackend(str(path)))
            journal.get_all_studies()  # replays every whole line: one that is not a record raises
            # Optuna skips a last line without its newline (a write in progress) and appends after
            # it, which breaks the journal for good: one still unfinished a second later is damage.
            for wait in (1.0, 0.0):
                if not path.stat().st_size or _last_byte(path) == b"\n":
                    return journal
                time.sleep(wait)
            raise ValueError("its last line is incomplete")
        except Exception as e:
            raise HarnessError(f"sweep.storage: {path} is not an Optuna journal ({type(e).__name__}: "
                               f"{' '.join(str(e).split())[:200]}); restore it or move it aside") from None
    # SQLite: wait for a busy database rather than fail (several local workers share the file). A
    # server: test a pooled connection before use, so one the server dropped (a restart) is replaced.
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    kwargs = {"engine_kwargs": engine, "heartbeat_interval": HEARTBEAT_S, "grace_period": GRACE_S}
    for attempt in range(3):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    return Storage(with_driver(url), **kwargs, heartbeat_stale_trial_callback=lost_trial)
                except TypeError:  # Optuna < 4.9 names it failed_trial_callback
                    return Storage(with_driver(url), **kwargs, failed_trial_callback=lost_trial)
        except ModuleNotFoundError as e:
            raise HarnessError(f"sweep.storage: {masked(url)} needs the {e.name!r} module; pip install 'harness[postgres]'") from None
        except Exception as e:  # the database's own reason (refused, no such database, bad password …)
            if attempt < 2:  # workers starting together race to create Optuna's tables: look again
                time.sleep(1 + attempt)
                continue
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise HarnessError(f"sweep.storage: cannot open {masked(url)}: {reason}") from None
    raise AssertionError("unreachable")


def _last_byte(path: Path) -> bytes:
    with path.open("rb") as f:
        f.seek(-1, 2)
        return f.read(1)


