"""`harness ui`: the MLflow UI as processes that cannot outlive the command, however it ends.

`mlflow ui` is several processes (the CLI, uvicorn and its workers; MLflow's job runner and its
huey consumers too, unless turned off, as `harness ui` does), and no process can clean up after a
SIGKILL of its own. So the command stays a
small supervisor and the server lives one step away:

    harness ui ──pipe──▶ keeper (its own session and process group) ──▶ mlflow ui and children

The keeper starts `mlflow ui` in its process group (every process of the server inherits it;
none of MLflow's leaves it) and then reads its stdin: the read end of a pipe whose only write end the command holds. The
kernel closes that end when the command exits by any means, Ctrl-C, SIGTERM or SIGKILL alike, so
the keeper reads end-of-file and stops its whole group (SIGTERM, then SIGKILL after `GRACE_S`).
When the server exits on its own the keeper stops what is left and exits with its code. In its
own session the group is out of the terminal's reach: a Ctrl-C reaches the command alone,
which closes the pipe, so the server is stopped once and in order.

Where to look: MLflow 3's UI opens an experiment on its GenAI overview (traces, tokens) unless
told otherwise, so the command prints each study's runs page in the UI's model-training view
(`runs_url`), its runs listed best first (`ranked`), and its study run's page.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from urllib.parse import quote, urlencode

import psutil

from harness.errors import HarnessError

GRACE_S = 5.0  # seconds the server's processes get to exit on SIGTERM before SIGKILL


def runs_url(base: str, exp_id: str, run_id: str | None = None, **query: str) -> str:
    """The UI's page of an experiment's runs (of one run, given `run_id`) in its model-training
    view, which the `workflowType` parameter selects on any page (else the UI opens the view the
    browser last used, GenAI at first); `query`: more of the page's URL parameters."""
    params = urlencode({"workflowType": "machine_learning", **query}, quote_via=quote)
    return f"{base}/#/experiments/{exp_id}/runs{f'/{run_id}' if run_id else ''}?{params}"


def ranked(client, exp_id: str) -> dict[str, str]:
    """The runs page's parameters that list every run, best selection score (`best_val_<metric>`)
    first: sorted by anything but time, the UI stops folding a study's runs under its study run.
    Empty before a run has trained (its metric is not known yet)."""
    found = client.search_runs([exp_id], "params.task_metric != ''", max_results=1)
    if not found:
        return {}
    p = found[0].data.params
    return {"orderByKey": f"metrics.`best_val_{p['task_metric']}`",
            "orderByAsc": str(p.get("task_metric_direction") == "minimize").lower()}


def study_urls(client, base: str, study: str | None = None) -> list[str]:
    """Lines naming `study`'s runs page and its study run's page in the UI at `base`; without a
    name, every experiment harness wrote runs to, by name. An unknown name is an error."""
    if study:
        exps = [client.get_experiment_by_name(study)]
        if exps[0] is None:
            raise HarnessError(f"no study {study!r} in the MLflow store; `harness ui` without a name lists them all")
    else:
        exps = sorted((e for e in client.search_experiments()
                       if client.search_runs([e.experiment_id], f"tags.`harness.study` = '{e.name}'", max_results=1)),
                      key=lambda e: e.name)
    lines = []
    for exp in exps:
        lines.append(f"{exp.name}: {runs_url(base, exp.experiment_id, **ranked(client, exp.experiment_id))}")
        parent = client.search_runs([exp.experiment_id], "tags.`harness.role` = 'study'", max_results=1)
        if parent:
            lines.append(f"  study run: {runs_url(base, exp.experiment_id, parent[0].info.run_id)}")
    return lines


def check_port(port: int) -> None:
    """Raise unless 127.0.0.1:`port` is free to listen on."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will: a closed port's TIME_WAIT is free
        try:
            s.bind(("127.0.0.1", port))
        except OSError as e:
            raise HarnessError(f"--port: 127.0.0.1:{port} cannot be used ({e.strerror}); choose another --port") from None


def serve(cmd: list[str], env: dict[str, str] | None = None) -> int:
    """Run `cmd` (the server, with environment `env`) under a keeper until it ends or this process
    does; its exit code."""
    keeper = subprocess.Popen([sys.executable, "-m", "harness.ui", *cmd], stdin=subprocess.PIPE, start_new_session=True,
                              env=env)
    try:
        return keeper.wait()
    finally:  # Ctrl-C, or an error: the keeper stops the server (a kill closes the pipe all the same)
        keeper.stdin.close()
        keeper.wait()


def _stop_group() -> None:
    """Stop every other process of this process group: SIGTERM, then SIGKILL after `GRACE_S`."""
    me, group = os.getpid(), os.getpgid(0)
    members = []
    for p in psutil.process_iter():
        try:
            if p.pid != me and os.getpgid(p.pid) == group:
                members.append(p)
        except (ProcessLookupError, psutil.Error):
            pass
    for p in members:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(members, timeout=GRACE_S)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=GRACE_S)


def keep(cmd: list[str]) -> int:
    """The keeper's life: start `cmd` in this group, stop the group at end-of-file on stdin or when
    `cmd` exits, whichever comes first; `cmd`'s exit code (0 when stopped from outside)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # only the pipe says when to stop
    server = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)
    done = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.buffer.read(), done.set()), daemon=True).start()
    threading.Thread(target=lambda: (server.wait(), done.set()), daemon=True).start()
    done.wait()
    code = server.poll()  # None: stopped from outside
    _stop_group()
    return code or 0


if __name__ == "__main__":
    code = keep(sys.argv[1:])
    # Not sys.exit: the thread still blocked reading stdin (the server exited on its own) makes
    # the interpreter's shutdown abort ("could not acquire lock for <stdin>"), losing the code.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
