"""`harness ui` in a real browser: headless Chromium (Debian's `chromium`) loads the page the
command prints for a tiny real study and must find its runs in the UI's model-training view,
with their datasets. A screenshot of the page is kept for people to look at: in
`$HARNESS_ARTIFACTS` when set (CI keeps it), else `<repo>/artifacts/`."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from mlflow.tracking import MlflowClient

from harness.report import write_report
from harness.sweep import run
from tests.conftest import EXPERIMENT, REPO, free_port
from tests.test_cli import ctrl_c_reaches_it, kill_all
from tests.test_sweep import load

CHROMIUM = shutil.which("chromium")

# Off CI a machine without Chromium skips this; CI installs it (see .ci/run) and runs it.
pytestmark = pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"),
                                reason="Debian's chromium is not installed (CI installs it)")


def browse(url: str, profile: Path, *flags: str) -> str:
    """What headless Chromium's `flags` make of `url` once the page settled (its DOM on stdout
    with --dump-dom). A fresh profile: the UI's view comes from the URL, not a remembered choice."""
    done = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                           f"--user-data-dir={profile}", "--window-size=1600,1000", "--virtual-time-budget=15000",
                           *flags, url], capture_output=True, text=True, timeout=120)
    return done.stdout


@pytest.mark.slow
def test_the_printed_page_shows_the_studys_runs_and_their_datasets(workdir, capsys):
    assert CHROMIUM, "CI must install Debian's chromium (see .ci/run)"
    tiny = workdir / "tiny.toml"
    tiny.write_text(EXPERIMENT.replace('name = "tiny"', 'name = "tiny"\ndescription = "Does a GRU read MNIST-1D?"', 1))
    run(load(tiny, "sweep.n_trials=2", "sweep.repeat=0", "train.epochs=1"), progress=False)
    headline = write_report("tiny", workdir / "reports").read_text().splitlines()[4]  # the study run's description
    client = MlflowClient()
    exp_id = client.get_experiment_by_name("tiny").experiment_id
    runs = client.search_runs([exp_id])
    trials = [r for r in runs if r.data.tags["harness.role"] == "trial"]
    (parent,) = [r.info.run_id for r in runs if r.data.tags["harness.role"] == "study"]
    names, train_hash = [t.info.run_name for t in trials], trials[0].data.tags["split_hash.train"]

    port = free_port()
    log = workdir / "ui.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "ui", "tiny", "--port", str(port)], cwd=workdir,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=ctrl_c_reaches_it)
    started: list[psutil.Process] = []
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None, log.read_text()
                time.sleep(0.5)
        else:
            raise AssertionError("the UI never answered:\n" + log.read_text())
        started = psutil.Process(proc.pid).children(recursive=True)
        base = f"http://127.0.0.1:{port}"
        printed = log.read_text().splitlines()[1:3]
        # The runs in the model-training view, best validation accuracy first; the study run's page.
        assert printed == [f"tiny: {base}/#/experiments/{exp_id}/runs?workflowType=machine_learning"
                           "&orderByKey=metrics.%60best_val_accuracy%60&orderByAsc=false",
                           f"  study run: {base}/#/experiments/{exp_id}/runs/{parent}?workflowType=machine_learning"]
        runs_page = printed[0].split(": ", 1)[1]

        folder = Path(os.environ.get("HARNESS_ARTIFACTS") or REPO / "artifacts")
        folder.mkdir(parents=True, exist_ok=True)
        shot = folder / "ui-runs.png"
        deadline, dom = time.time() + 120, ""
        while time.time() < deadline and not all(name in dom for name in names):  # the server may still be warming up
            shot.unlink(missing_ok=True)
            dom = browse(runs_page, workdir / "profile", "--dump-dom", f"--screenshot={shot}")
        with capsys.disabled():  # shown however the test ends
            print(f"\nscreenshot of `harness ui`'s runs page: {shot}")
        # The runs table (not the GenAI overview), the trials' datasets, the description.
        assert len(names) == 2 and all(name in dom for name in names), dom[-3000:]
        best, other = sorted(trials, key=lambda t: -t.data.metrics["best_val_accuracy"])
        if best.data.metrics["best_val_accuracy"] > other.data.metrics["best_val_accuracy"]:
            assert dom.index(best.info.run_name) < dom.index(other.info.run_name)  # ranked, not folded
        assert f"mnist1d ({train_hash})" in dom and "Does a GRU read MNIST-1D?" in dom
        assert "Model training" in dom and "No data available" not in dom
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # of the page just checked
        # The study run's page: its description is the report's headline.
        dom = browse(printed[1].split(": ", 1)[1], workdir / "profile", "--dump-dom")
        # A GRU that learned in one epoch leads in bold; one that did not is told so, in plain words.
        assert headline.startswith(("**GRU**", "No architecture learned: ")), headline
        assert headline.split("**")[-1] in dom and "**GRU**" not in dom, dom[-3000:]  # markdown, rendered

        started = psutil.Process(proc.pid).children(recursive=True)  # all of them, the server's workers up
        proc.send_signal(signal.SIGINT)  # Ctrl-C: the command stops the server and every process it started
        assert proc.wait(timeout=60) == 130
        assert not psutil.wait_procs(started, timeout=30)[1]
    finally:  # whatever the outcome, nothing of this test keeps running
        kill_all(proc, started)
