"""Worker processes: which devices a sweep runs on, one worker process per slot, worker identity,
and Ctrl-C / SIGTERM as a clean stop.

A slot is one worker: a device and the torch thread count it should use. `plan_slots` picks
them (every visible CUDA GPU, else Apple MPS, else the CPU with a notice), `spawn` starts one
process per slot. Workers are *spawned*, never forked (CUDA and fork do not mix), with their
environment set before their interpreter starts: `CUDA_VISIBLE_DEVICES` binds each to its GPU,
`OMP_NUM_THREADS` splits the CPU between them.

A spawned worker hands the store outages it waited out (harness.resilience) to the sweep over a
queue (`drain`), so the terminal tells each outage once, not once per worker.

A worker's identity (`worker_id()`: host, boot time, pid and process start time, read through
psutil) is recorded on its trials, so a later sweep on the same machine can tell at once that a
RUNNING trial's process is gone (`is_gone`), without waiting for a heartbeat to go stale.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import psutil

from harness import resilience
from harness.callbacks import Callback
from harness.errors import HarnessError, MachineryError

MACHINERY_EXIT = 3  # a worker's exit code when it stopped on MachineryError


@dataclass(frozen=True)
class Slot:
    index: int  # worker number within one sweep invocation
    device: str  # as the user names it: cpu, mps, cuda:1
    threads: int | None = None  # torch threads; None leaves torch's default
    spawned: bool = False  # runs in its own process, which sees only its own GPU

    @property
    def env(self) -> dict[str, str]:
        """Environment a spawned worker starts with."""
        env = {"OMP_NUM_THREADS": str(self.threads)} if self.threads else {}
        if self.device.startswith("cuda"):
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            index = int(self.device.partition(":")[2] or 0)
            # Keep the user's own mask: cuda:1 under CUDA_VISIBLE_DEVICES=2,3 is physical GPU 3.
            env["CUDA_VISIBLE_DEVICES"] = visible.split(",")[index].strip() if visible else str(index)
        return env

    @property
    def run_device(self) -> str:
        """The device name the worker trains on: a spawned one sees only its own GPU, as cuda:0."""
        return "cuda:0" if self.spawned and self.device.startswith("cuda") else self.device


def visible_devices() -> list[str]:
    """Every visible CUDA GPU (`cuda:0`, …), else `mps` where Apple's GPU is usable, else none."""
    import torch

    if torch.cuda.is_available():
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    return ["mps"] if mps is not None and mps.is_available() else []


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def plan_slots(devices: list[str], jobs: int | str, train_device: str = "auto") -> tuple[list[Slot], str | None]:
    """Slots for `devices` (empty: `train.device`, or every visible GPU) × `jobs` workers each
    ("auto": one each; harness.sweep.capacity then sizes each GPU's from its memory).

    Returns the slots and a notice to show (the CPU fallback), or None.
    """
    jobs = 1 if jobs == "auto" else jobs
    if jobs < 1:
        raise HarnessError(f"sweep.jobs: must be at least 1 (got {jobs}); --jobs N runs N workers per device")
    notice = None
    field = "sweep.devices" if devices else "train.device"
    wanted = [d.strip().lower() for d in devices or ([] if train_device == "auto" else [train_device])]
    found = visible_devices() if not wanted or any(d.startswith(("cuda", "mps")) for d in wanted) else []
    if not wanted:
        wanted = found or ["cpu"]
        if not found:
            notice = f"no GPU visible: running on the CPU with {jobs} worker{'s' * (jobs > 1)} (--jobs N for more)"
    names: list[str] = []
    for d in wanted:
        if d == "cuda":  # every visible GPU
            expanded = [f for f in found if f.startswith("cuda")]
            if not expanded:
                raise HarnessError(f"{field}: 'cuda' asked for, but no CUDA GPU is visible; use --devices cpu")
            names += expanded
        elif d in ("cpu", "mps") or d.startswith("cuda:"):
            if d != "cpu" and d not in found:
                seen = ", ".join(found) or "none"
                raise HarnessError(f"{field}: {d!r} is not visible (visible GPUs: {seen}); use --devices cpu")
            names.append(d)
        else:
            raise HarnessError(f"{field}: {d!r} is not a device; use cpu, mps, cuda or cuda:N (comma-separated)")
    names = list(dict.fromkeys(names))
    n = len(names) * jobs
    if n > cpu_count():  # each worker is a process with torch in it, and wants a core to drive its device
        fit = max(1, cpu_count() // len(names))
        raise HarnessError(f"sweep.jobs: {jobs} worker{'s' * (jobs > 1)} per device × {len(names)} device{'s' * (len(names) > 1)} "
                           f"is {n} processes for {cpu_count()} CPU cores; use --jobs {fit} or fewer")
    return make_slots(dict.fromkeys(names, jobs)), notice


def make_slots(counts: dict[str, int]) -> list[Slot]:
    """`counts[device]` slots per device, numbered round-robin over the devices; the CPU cores
    split evenly among all of them (torch threads)."""
    n = sum(counts.values())
    threads = max(1, cpu_count() // n) if n > 1 else None
    order = [d for i in range(max(counts.values(), default=0)) for d in counts if i < counts[d]]
    return [Slot(i, d, threads) for i, d in enumerate(order)]


def _boot() -> str:
    return f"{psutil.boot_time():.0f}"


def _started(pid: int) -> str | None:
    """The process's start time, to tell a reused pid apart; None when no such process runs
    (a zombie has exited already)."""
    try:
        p = psutil.Process(pid)
        return None if p.status() == psutil.STATUS_ZOMBIE else f"{p.create_time():.2f}"
    except psutil.NoSuchProcess:
        return None


def worker_id(pid: int | None = None) -> str:
    """`host|boot|pid|start`: names this process on this machine, across pid reuse."""
    pid = pid or os.getpid()
    return f"{socket.gethostname()}|{_boot()}|{pid}|{_started(pid) or '-'}"


def is_gone(token: str) -> bool:
    """True only when `token` names a process of this machine that no longer runs."""
    try:
        host, boot, pid_text, start = token.split("|")
        pid = int(pid_text)
    except ValueError:
        return False
    if (host, boot) != (socket.gethostname(), _boot()):
        return False  # another machine's worker: only its heartbeat can tell
    try:
        now = _started(pid)
    except psutil.AccessDenied:  # another user's live process
        return False
    return now is None or (start != "-" and now != start)


_stop = threading.Event()


def stop_requested() -> bool:
    """Whether Ctrl-C or SIGTERM arrived (see `interruptible`)."""
    return _stop.is_set()


@contextmanager
def interruptible():
    """Ctrl-C and SIGTERM (a scheduler's stop) raise KeyboardInterrupt, so trials end as on
    Ctrl-C, and the request stays set: Python drops an exception raised inside a garbage-collector
    callback, so the sweep also checks `stop_requested()` between epochs and between trials."""
    _stop.clear()
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        _stop.set()
        raise KeyboardInterrupt(f"signal {signum}")

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)
        _stop.clear()


def _watch_parent(parent: int) -> None:
    """Stop this worker (as Ctrl-C would) when the sweep that started it is gone."""
    while True:
        time.sleep(2.0)
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGINT)
            return


class StopOnSignal(Callback):
    """Ends a run between epochs once a stop was requested (a Ctrl-C the interpreter swallowed)."""

    def on_epoch_end(self, epoch: int, record: dict[str, float]) -> None:
        if stop_requested():
            raise KeyboardInterrupt("stop requested")


def _child(slot: Slot, parent: int, outages, target: Callable, args: tuple) -> None:
    resilience.set_sink(outages.put)
    if hasattr(os, "setpgid"):
        # Out of the terminal's process group: Ctrl-C reaches the sweep once, which
        # forwards one SIGINT here, instead of interrupting this worker's clean-up twice.
        os.setpgid(0, 0)
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    try:
        with interruptible():
            import torch

            from harness.train import flush_denormals

            flush_denormals()  # before torch starts its threads
            if slot.threads:
                torch.set_num_threads(slot.threads)
            target(*args, slot)
    except HarnessError as e:
        print(f"harness: error: {e}", file=sys.stderr)
        sys.exit(2)
    except MachineryError as e:
        print(f"harness: worker {slot.index} on {slot.device} stopped: {e}", file=sys.stderr)
        sys.exit(MACHINERY_EXIT)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as e:
        if not resilience.infrastructure(e):
            raise
        # A store that stayed away past the patience: one line; the sweep re-queues the trial.
        print(f"harness: worker {slot.index} on {slot.device} stopped: {resilience.reason(e)}", file=sys.stderr)
        sys.exit(1)


def spawn(slots: list[Slot], target: Callable, *args) -> tuple[list[multiprocessing.Process], Any]:
    """Start `target(*args, slot)` in one spawned process per slot, each with its slot's env;
    returns the processes and the queue of the outages they waited out (`drain` it)."""
    ctx = multiprocessing.get_context("spawn")
    outages = ctx.Queue()
    procs = []
    for slot in slots:
        slot = replace(slot, spawned=True)
        p = ctx.Process(target=_child, args=(slot, os.getpid(), outages, target, args), name=f"harness-worker-{slot.index}")
        saved = {k: os.environ.get(k) for k in slot.env}
        os.environ.update(slot.env)  # the child's interpreter starts with this environment
        try:
            p.start()
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        procs.append(p)
    return procs, outages


def drain(outages) -> None:
    """Tell the outages the workers sent so far (harness.resilience.report merges their views)."""
    while True:
        try:
            resilience.report(outages.get_nowait())
        except queue.Empty:
            return


def stop(procs: list[multiprocessing.Process], grace_s: float = 30.0) -> None:
    """Ask workers to stop as on Ctrl-C (their trials end cleanly), then insist."""
    for sig, wait in ((signal.SIGINT, grace_s), (signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        alive = [p for p in procs if p.is_alive()]
        for p in alive:
            try:
                os.kill(p.pid, sig)
            except ProcessLookupError:
                pass
        for p in alive:
            p.join(wait / max(1, len(alive)))
        if not any(p.is_alive() for p in procs):
            return
