"""Infrastructure faults: what counts as one, and calls that outlast one.

An exception from the tracking store, the Optuna storage, the network or the file system is the
machinery's, never the architecture's (`infrastructure`): a trial it ends is interrupted and run
again (harness.sweep.objective), not counted as the configuration's failure.

A call into a store that is away for a while (a server restarting, a failover, a busy SQLite file)
waits for it: `retrying` wraps a store's methods so each call is tried again with backoff for up to
`PATIENCE_S` seconds (`HARNESS_STORE_PATIENCE_S`), and a row that another process created between
the call's check and its insert (`conflict`: a unique constraint) is re-read by calling again. Each
outage is told in one line once it ends (`report`); a spawned worker hands its outages to the
sweep's process (`set_sink`), which merges the workers' views of the same outage into that line.
`Client` is MLflow's client with every method wrapped so.
"""

from __future__ import annotations

import inspect
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import wraps
from typing import Any

import requests.exceptions
import sqlalchemy.exc
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import ErrorCode
from mlflow.tracking import MlflowClient

PATIENCE_S = float(os.environ.get("HARNESS_STORE_PATIENCE_S", "120"))  # how long a call waits for a store
CONFLICT_TRIES = 3  # calls again on a unique-constraint conflict before giving up
MERGE_S = 5.0  # outages of one store this close together are one

# Errors of a connection (refused, dropped, timed out) or of a store too busy to answer now.
_TRANSIENT = (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError, sqlalchemy.exc.DisconnectionError,
              sqlalchemy.exc.TimeoutError, requests.exceptions.ConnectionError, requests.exceptions.Timeout,
              requests.exceptions.RetryError, ConnectionError, TimeoutError)
_UNAVAILABLE = {ErrorCode.Name(ErrorCode.TEMPORARILY_UNAVAILABLE), ErrorCode.Name(ErrorCode.REQUEST_LIMIT_EXCEEDED)}
# What the stores, the network and the file system raise: never a model's or its training's doing.
_MACHINERY = (MlflowException, sqlalchemy.exc.SQLAlchemyError, requests.exceptions.RequestException, OSError)


def chain(e: BaseException | None) -> Iterator[BaseException]:
    """`e` and the exceptions it was raised from or during, outermost first."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


# An OperationalError that no wait mends: the store's schema is not what the call expects.
_LASTING = ("no such table", "no such column", "has no column", "syntax error")


def transient(e: BaseException) -> bool:
    """A store that did not answer now and may answer soon: a connection refused or dropped, a
    timeout, a locked SQLite file, a server's 503."""
    if any(s in str(x) for x in chain(e) for s in _LASTING):
        return False
    return any(isinstance(x, _TRANSIENT) or getattr(x, "error_code", None) in _UNAVAILABLE for x in chain(e))


def conflict(e: BaseException) -> bool:
    """A unique constraint: another process inserted the row this call was about to insert (an
    MLflow server reports its database's error as text)."""
    return any(isinstance(x, sqlalchemy.exc.IntegrityError) or "IntegrityError" in str(x) for x in chain(e))


def infrastructure(e: BaseException) -> bool:
    """Whether `e` is the machinery's: from a store, the network or the file system."""
    from optuna.exceptions import StorageInternalError

    return any(isinstance(x, (*_MACHINERY, StorageInternalError)) for x in chain(e))


def reason(e: BaseException) -> str:
    """The root of `e` in a few words: `OperationalError: connection … refused`."""
    root = next((x for x in chain(e) if isinstance(x, _TRANSIENT)), None) or list(chain(e))[-1]
    text = " ".join(str(root).split()).removeprefix("(psycopg2.OperationalError) ")
    return f"{type(root).__name__}: {text[:160]}" if text else type(root).__name__


@dataclass(frozen=True)
class Outage:
    store: str
    start: float  # wall-clock seconds
    end: float
    reason: str
    gave_up: bool = False

    def line(self) -> str:
        when = time.strftime("%H:%M:%S", time.localtime(self.start))
        told = f"harness: {self.store} did not answer for {self.end - self.start:.0f} s from {when} ({self.reason}); "
        return told + ("a call gave up" if self.gave_up else "its calls waited and went on")


_printed: dict[str, float] = {}  # store → end of the last outage told


def report(outage: Outage) -> None:
    """Print an outage in one line, unless it is one already told (several workers saw it)."""
    if outage.start <= _printed.get(outage.store, -1.0) + MERGE_S:
        _printed[outage.store] = max(_printed[outage.store], outage.end)
        return
    _printed[outage.store] = outage.end
    print(outage.line(), file=sys.stderr, flush=True)


_sink: Callable[[Outage], Any] = report
_open: dict[str, tuple[float, str]] = {}  # store → (start, reason) of an outage in progress
_lock = threading.Lock()
_local = threading.local()


def set_sink(sink: Callable[[Outage], Any]) -> None:
    """Where this process's outages go: `report` (the default), or a spawned worker's queue to its sweep."""
    global _sink
    _sink = sink


def _began(store: str, e: BaseException) -> None:
    with _lock:
        _open.setdefault(store, (time.time(), reason(e)))


def _ended(store: str, gave_up: bool = False) -> None:
    with _lock:
        began = _open.pop(store, None)
    if began is not None:
        _sink(Outage(store, began[0], time.time(), began[1], gave_up))


def call(fn: Callable[[], Any], store: str) -> Any:
    """`fn()`, tried again while `store` does not answer (for up to `PATIENCE_S`, waits doubling
    from 0.5 s to 10 s) and at once on a unique-constraint conflict (a few times)."""
    start, wait, conflicts = time.monotonic(), 0.5, 0
    while True:
        try:
            value = fn()
        except Exception as e:
            if conflict(e) and conflicts < CONFLICT_TRIES:
                conflicts += 1
                continue
            if not transient(e):
                raise
            _began(store, e)
            if time.monotonic() - start + wait > PATIENCE_S:
                _ended(store, gave_up=True)
                raise
            time.sleep(wait)
            wait = min(2 * wait, 10.0)
            continue
        _ended(store)
        return value


def retrying(method: Callable, store: Callable[[Any], str]) -> Callable:
    """`method` as a call that outlasts an outage of `store(self)`. Only the outermost such call
    of a thread retries: a wrapped method calling another waits once, not once per level."""

    @wraps(method)
    def wrapper(self, *args, **kwargs):
        if getattr(_local, "inside", False):
            return method(self, *args, **kwargs)
        _local.inside = True
        try:
            return call(lambda: method(self, *args, **kwargs), store(self))
        finally:
            _local.inside = False

    return wrapper


def wrap_methods(cls: type, base: type, store: Callable[[Any], str], skip: frozenset[str] = frozenset()) -> type:
    """`cls` (a subclass of `base`) with every method `base` defines, but `__dunder__` ones and
    `skip`, made `retrying`."""
    for name, fn in vars(base).items():
        if inspect.isfunction(fn) and not name.startswith("__") and name not in skip:
            setattr(cls, name, retrying(fn, store))
    return cls


def _store_name(client: MlflowClient) -> str:
    from harness.config import masked

    return f"the MLflow tracking store {masked(client.tracking_uri)}"


class Client(MlflowClient):
    """MLflow's client whose every call outlasts an outage of its store (`retrying`)."""


wrap_methods(Client, MlflowClient, _store_name)
