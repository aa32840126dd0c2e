"""What a trial's MLflow run holds, read back from a real SQLite store: every documented key
with plausible values, the artifacts (the chosen checkpoint's gradient flow among them), and
failures (diverged, errors, pruned)."""

from __future__ import annotations

import csv
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch

from harness.archs import count_params
from harness.callbacks import Callback
from harness.config import validate
from harness.errors import Diverged, Pruned
from harness.gradflow import fixed_batch, measure
from harness.mlflow_store import experiment_id, get_client
from harness.runner import build, run_tracked, run_trial
from harness.tracking import MlflowRun, device_name, git_commit, study_run
from harness.train import evaluate

EPOCH_KEYS = {"train_loss", "val_loss", "train_accuracy", "val_accuracy", "lr", "epoch_time_s", "epoch_samples_per_s",
              "cpu_share"}
GRAD_KEYS = {"grad_norm", "grad_norm_clipped", "clip_fraction", "grad_nonfinite", "grad_norm/rnn.layer0", "grad_norm/head"}
GRADFLOW_KEYS = {"gradflow_rate", "gradflow_rate_iqr", "gradflow_rate_bwd", "gradflow_rate_bwd_iqr"}  # a bidirectional model
FINAL_KEYS = {"test_loss", "test_accuracy", "best_val_accuracy", "best_epoch", "infer_latency_ms_p50",
              "infer_latency_ms_p95", "infer_samples_per_s", "peak_memory_mb", "device_peak_gflops",
              "train_samples_per_s", "train_samples_per_s_min", "train_samples_per_s_max", "bench_step_ms",
              "train_gflops_per_s", "peak_fraction", "total_time_s", *GRADFLOW_KEYS}


def experiment(**sections) -> object:
    raw = {"name": "t", "task": {"name": "mnist1d", "n_train": 512}, "model": {"arch": "brnn", "hidden_size": 12},
           "train": {"epochs": 2, "clip_norm": 1.0, "lr": 3e-3}, "tracking": {"grad_stats_every": 3}}
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value}
    return validate(raw)


def tracked(client, exp_id, exp, name, tags, parent=None, callbacks=()):
    """Train `exp` as one MLflow run, as `harness run` does; returns (result, run id)."""
    run = MlflowRun(client, exp_id, exp, name=name, tags=tags, parent=parent)
    return run_trial(exp, [run, *callbacks]), run.run_id


def run_it(exp):
    client = get_client()
    result, run_id = tracked(client, experiment_id(client, exp.name, exp.description), exp, "r", {"harness.role": "run"})
    return client, result, client.get_run(run_id)


def steps(client, run_id: str, key: str) -> list[int]:
    return [m.step for m in client.get_metric_history(run_id, key)]


@pytest.mark.slow
def test_trial_run_holds_every_key(workdir):
    exp = experiment(tracking={"system_metrics_interval": 0.2})
    client, result, run = run_it(exp)
    data, run_id = run.data, run.info.run_id
    assert run.info.status == "FINISHED" and data.tags["harness.state"] == "complete"

    # Params: the resolved settings (task defaults filled in), size and analytic FLOPs.
    task, model = build(exp)
    p = data.params
    # What the registries say: the family the report groups by, the direction it ranks by.
    assert (p["arch_family"], p["arch_bidirectional"], p["task_metric"], p["task_metric_direction"]) == (
        "BRNN", "True", "accuracy", "maximize")
    assert p["model.arch"] == "brnn" and p["model.hidden_size"] == "12" and p["train.clip_norm"] == "1.0"
    assert p["task.val_size"] == "0.1" and p["train.device"] == "cpu" and p["tracking.grad_stats_every"] == "3"
    assert p["n_params"] == str(count_params(model)) and p["flops_per_sample"] == str(model.flops(40))
    assert p["kernel"] == "harness"  # the Elman RNN runs harness's scan on the CPU
    # Tags: where and on which data it ran.
    t = data.tags
    assert t["torch_version"] == torch.__version__ and t["device"] == device_name(torch.device("cpu"))
    assert t["harness.contended"] == str(result.contended).lower()
    assert {f"split_hash.{k}": v for k, v in task.split_hashes().items()} == {k: v for k, v in t.items() if k.startswith("split_hash.")}
    if git_commit() is not None:  # run from a git checkout
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent).stdout.strip()
        assert t["harness.git_commit"].startswith(head) and t["mlflow.source.git.commit"] == head

    m = data.metrics
    assert EPOCH_KEYS | GRAD_KEYS | FINAL_KEYS <= set(m)
    assert any(k.startswith("system/cpu_utilization") for k in m)  # MLflow's own system metrics
    # Per epoch, step = epoch: the values the loop measured.
    for key in EPOCH_KEYS:
        history = client.get_metric_history(run_id, key)
        assert [h.step for h in history] == [1, 2]
        assert [h.value for h in history] == pytest.approx([h[key] for h in result.history], rel=1e-6), key
    # Gradient statistics, step = optimiser step: the first, then every 3rd of 2 × 8 steps.
    for key in GRAD_KEYS:
        assert steps(client, run_id, key) == [1, 3, 6, 9, 12, 15], key
    records = [{k: client.get_metric_history(run_id, k)[i].value for k in GRAD_KEYS} for i in range(6)]
    for g, since in zip(records, (1, 2, 3, 3, 3, 3), strict=True):  # optimiser steps each record covers
        assert g["grad_nonfinite"] == 0
        assert g["grad_norm_clipped"] == pytest.approx(min(g["grad_norm"], 1.0), rel=1e-5)
        assert math.hypot(g["grad_norm/rnn.layer0"], g["grad_norm/head"]) == pytest.approx(g["grad_norm"], rel=1e-4)
        # clip_fraction: the share of those steps above clip_norm 1, the record's own step among them
        clipped = g["clip_fraction"] * since
        assert clipped == pytest.approx(round(clipped), abs=1e-4)
        assert round(clipped) >= 1 if g["grad_norm"] > 1.0 else round(clipped) <= since - 1
    # Final, measured once: what the run's result holds, logged at step 0.
    final = result.final_metrics()
    for key in FINAL_KEYS:
        assert m[key] == pytest.approx(final[key], rel=1e-6), key
        assert [h.step for h in client.get_metric_history(run_id, key)] == [0], key
    assert m["best_val_accuracy"] == max(h["val_accuracy"] for h in result.history)
    assert m["best_epoch"] == 1 + [h["val_accuracy"] for h in result.history].index(m["best_val_accuracy"])
    assert 0 < m["infer_latency_ms_p50"] <= m["infer_latency_ms_p95"]
    assert m["peak_fraction"] == pytest.approx(m["train_gflops_per_s"] / m["device_peak_gflops"])
    assert m["total_time_s"] >= sum(h["epoch_time_s"] for h in result.history)
    # Where the time went, phase by phase: training steps as the loop counted them, the phases inside
    # the training function within its total time, the files and the model after it.
    assert m["time_train_s"] == pytest.approx(result.train_time_s) and m["time_train_s"] < sum(h["epoch_time_s"] for h in result.history)
    inside = ("start", "train", "validate", "epoch_callbacks", "gradflow", "test", "latency")
    assert all(m[f"time_{p}_s"] > 0 for p in (*inside, "bench", "peak", "artifacts")) and "time_model_s" not in m  # none logged
    assert sum(m[f"time_{p}_s"] for p in inside) <= m["total_time_s"]
    run_info = client.get_run(run_id).info
    assert sum(v for k, v in m.items() if k.startswith("time_")) <= (run_info.end_time - run_info.start_time) / 1000

    # Artifacts.
    folder = Path(client.download_artifacts(run_id, "", str(workdir / "artifacts")))
    assert sorted(p.name for p in folder.iterdir()) == [
        "checkpoint.pt", "gradflow.csv", "gradflow.png", "learning_curve.png", "settings.json", "test_per_example.npy"]
    assert validate(json.loads((folder / "settings.json").read_text())) == exp
    for png in ("gradflow.png", "learning_curve.png"):
        assert (folder / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The checkpoint is the chosen epoch's: loaded as plain tensors, it gives the logged test values.
    fresh = build(exp)[1]
    fresh.load_state_dict(torch.load(folder / "checkpoint.pt", weights_only=True))
    assert evaluate(fresh, task, "test", torch.device("cpu"), 1024) == pytest.approx((m["test_loss"], m["test_accuracy"]))
    # The gradient flow logged is that checkpoint's, on the first 256 validation examples: its
    # rates at step 0 and its profiles, one row per direction's state and one for the input.
    flow = measure(fresh, *fixed_batch(task), task.loss_fn, torch.device("cpu"))
    assert {k: m[k] for k in GRADFLOW_KEYS} == pytest.approx(flow.metrics(), rel=1e-9)
    assert m["gradflow_rate"] < 0 and m["gradflow_rate_bwd"] < 0 < m["gradflow_rate_iqr"]
    with (folder / "gradflow.csv").open() as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["direction", "quantity", *(f"t{i}" for i in range(1, 41))]  # T = 40 columns
    expected = {("forward", "state"): flow.state["forward"], ("backward", "state"): flow.state["backward"],
                ("all", "input"): flow.inputs}
    assert [tuple(r[:2]) for r in rows[1:]] == list(expected)
    for r in rows[1:]:
        assert [float(v) for v in r[2:]] == pytest.approx(expected[tuple(r[:2])], rel=1e-5)
    # Each test example's metric, in test-split order: 1 exactly where the checkpoint is right.
    per_example = np.load(folder / "test_per_example.npy")
    with torch.no_grad():
        right = (fresh.eval()(task.x_test).argmax(-1) == task.y_test).numpy()
    assert per_example.dtype == np.float32 and np.array_equal(per_example, right.astype(np.float32))
    assert per_example.mean() == pytest.approx(m["test_accuracy"], abs=1e-6)


def test_artifacts_system_metrics_and_grad_stats_are_optional(workdir):
    off = {"checkpoint": False, "settings_file": False, "learning_curve": False, "gradflow": False,
           "test_per_example": False, "system_metrics": False, "system_metrics_interval": 0.1, "grad_stats_every": 0}
    client, _, run = run_it(experiment(train={"epochs": 1}, tracking=off))
    assert client.list_artifacts(run.info.run_id) == []
    assert not any(k.startswith(("grad", "system/")) for k in run.data.metrics)  # grad_*, gradflow_*
    assert {"val_accuracy", "test_accuracy", "peak_fraction"} <= set(run.data.metrics)


def datasets(run) -> set[tuple[str, str, str]]:
    """A run's dataset inputs as (name, digest, context)."""
    return {(d.dataset.name, d.dataset.digest, {t.key: t.value for t in d.tags}["mlflow.data.context"])
            for d in run.inputs.dataset_inputs}


def test_a_run_logs_its_splits_as_datasets_in_a_described_model_training_experiment(workdir):
    off = {"checkpoint": False, "settings_file": False, "learning_curve": False, "gradflow": False,
           "test_per_example": False, "system_metrics": False, "grad_stats_every": 0}
    exp = experiment(train={"epochs": 1}, tracking=off).with_values({"description": "Which RNN reads MNIST-1D best?"})
    client, _, run = run_it(exp)
    task, run_id, exp_id = build(exp)[0], run.info.run_id, run.info.experiment_id
    hashes = task.split_hashes()
    assert datasets(run) == {("mnist1d", hashes["train"], "training"), ("mnist1d", hashes["val"], "validation"),
                             ("mnist1d", hashes["test"], "test")}
    assert {k: v for k, v in run.data.tags.items() if k.startswith("split_hash.")} == {
        f"split_hash.{k}": v for k, v in hashes.items()}  # still there: the report reads them
    rows = {d.dataset.digest: json.loads(d.dataset.profile)["num_rows"] for d in run.inputs.dataset_inputs}
    assert rows == {hashes[s]: len(task.split(s)[0]) for s in ("train", "val", "test")}
    # What the UI's Dataset filter asks MLflow's search.
    for found in ("dataset.context = 'validation'", f"dataset.name = 'mnist1d' and dataset.digest = '{hashes['test']}'"):
        assert [r.info.run_id for r in client.search_runs([exp_id], found)] == [run_id], found
    assert client.search_runs([exp_id], "dataset.digest = '000000000000'") == []
    # The experiment: model training (the UI's runs, not its GenAI overview), described by the file.
    tags = client.get_experiment(exp_id).tags
    assert tags["mlflow.experimentKind"] == "custom_model_development"
    assert tags["mlflow.note.content"] == "Which RNN reads MNIST-1D best?"


def test_a_resumed_study_tags_and_describes_an_experiment_made_before(workdir):
    client = get_client()
    exp_id = client.create_experiment("old")  # as harness made them before: no kind, no description
    exp = experiment().with_values({"description": "Now described"})
    assert study_run(client, exp, "old")[0] == exp_id
    tags = client.get_experiment(exp_id).tags
    assert (tags["mlflow.experimentKind"], tags["mlflow.note.content"]) == ("custom_model_development", "Now described")
    study_run(client, experiment(), "old")  # an experiment file without a description keeps the one given
    assert client.get_experiment(exp_id).tags["mlflow.note.content"] == "Now described"


def test_diverged_run_is_failed_and_the_study_goes_on(workdir):
    """A relu RNN at lr 1.0 without clipping diverges; the study's next trial completes."""
    base = validate({"name": "study", "task": {"name": "adding", "seq_len": 50, "train_size": 400},
                     "model": {"arch": "rnn-relu", "hidden_size": 32}, "train": {"epochs": 2},
                     "tracking": {"system_metrics": False}})
    client = get_client()
    exp_id, parent = study_run(client, base, "study")
    study = optuna.create_study(study_name="study", storage=f"sqlite:///{workdir / 'optuna.db'}")
    for lr in (1.0, 1e-3):
        study.enqueue_trial({"train.lr": lr})

    def objective(trial: optuna.Trial) -> float:
        exp = base.with_values({"train.lr": trial.suggest_categorical("train.lr", [1.0, 1e-3])})
        tags = {"harness.role": "trial", "harness.study": "study", "harness.trial": trial.number}
        return tracked(client, exp_id, exp, f"t{trial.number}", tags, parent)[0].best_val

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study.optimize(objective, n_trials=2, catch=(Diverged,))
    assert [t.state.name for t in study.trials] == ["FAIL", "COMPLETE"]
    runs = {r.data.tags["harness.trial"]: r for r in client.search_runs([exp_id], "tags.`harness.role` = 'trial'")}
    failed, done = runs["0"], runs["1"]
    assert failed.info.status == "FAILED" and failed.data.tags["harness.failure"] == "diverged"
    assert failed.data.tags["harness.state"] == "failed" and failed.data.tags["harness.failure_epoch"] == "1"
    assert "non-finite" in failed.data.tags["harness.error"]
    # What it logged up to the diverging step is kept, that step's gradient record last.
    grads = client.get_metric_history(failed.info.run_id, "grad_norm")
    assert len(grads) >= 2 and grads[0].step == 1
    assert grads[-1].step == int(failed.data.tags["harness.failure_step"]) > 1
    last_nonfinite = client.get_metric_history(failed.info.run_id, "grad_nonfinite")[-1]
    assert last_nonfinite.step == grads[-1].step and (last_nonfinite.value > 0 or not math.isfinite(grads[-1].value))
    assert {a.path for a in client.list_artifacts(failed.info.run_id)} == {"settings.json"}  # no epoch ended, none chosen
    assert not any(k.startswith("gradflow") for k in failed.data.metrics)
    assert done.info.status == "FINISHED" and math.isfinite(done.data.metrics["best_val_mse"])
    assert done.data.tags[ "mlflow.parentRunId"] == parent == failed.data.tags["mlflow.parentRunId"]


def test_errors_and_pruning_close_the_run(workdir):
    class Raise(Callback):
        def __init__(self, error: Exception):
            self.error = error

        def on_epoch_end(self, epoch, record):
            raise self.error

    exp = experiment(train={"epochs": 2}, tracking={"system_metrics": False, "checkpoint": False})
    client = get_client()
    exp_id = experiment_id(client, exp.name)
    with pytest.raises(RuntimeError):
        tracked(client, exp_id, exp, "boom", {"harness.role": "run"}, callbacks=[Raise(RuntimeError("disk on fire"))])
    with pytest.raises(Pruned):
        tracked(client, exp_id, exp, "prune", {"harness.role": "run"}, callbacks=[Raise(Pruned("at epoch 1"))])
    runs = {r.info.run_name: r for r in client.search_runs([exp_id])}
    assert runs["boom"].info.status == "FAILED"
    assert runs["boom"].data.tags["harness.failure"] == "RuntimeError" and runs["boom"].data.tags["harness.error"] == "disk on fire"
    assert runs["prune"].info.status == "KILLED" and runs["prune"].data.tags["harness.state"] == "pruned"
    assert client.get_metric_history(runs["prune"].info.run_id, "val_accuracy")[0].step == 1  # logged before the prune


def test_a_tracked_run_that_fails_before_its_loop_is_ended_with_its_reason(workdir):
    """`run_tracked` opens the run first (a sweep's claim on its work) and ends it FAILED with the
    reason when the trial cannot even be built: no run is left RUNNING."""
    exp = experiment(model={"hidden_size": 0}, tracking={"system_metrics": False})
    client = get_client()
    run = MlflowRun(client, experiment_id(client, exp.name), exp, name="unbuildable", tags={"harness.role": "run"})
    with pytest.raises(Exception, match="hidden_size"):
        run_tracked(exp, run)
    stored = client.get_run(run.run_id)
    assert stored.info.status == "FAILED" and stored.data.tags["harness.state"] == "failed"
    assert "hidden_size" in stored.data.tags["harness.error"]


def test_a_run_sharing_the_cores_is_tagged_contended_and_alone_it_is_not(workdir):
    """Two torch threads against spinning Python processes, one per core (at least two): every
    epoch gets about half the CPU it asks for; the same run alone gets nearly all of it."""
    exp = experiment(model={"arch": "gru", "hidden_size": 32}, train={"epochs": 4},
                     task={"n_train": 1024}, tracking={"system_metrics": False, "gradflow": False, "checkpoint": False})
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(max(2, os.cpu_count() or 2))]
        try:
            time.sleep(0.5)  # the spinners are up
            client, shared, shared_run = run_it(exp)
        finally:
            for proc in busy:
                proc.kill()
                proc.wait()
        _, alone, alone_run = run_it(exp)
    finally:
        torch.set_num_threads(threads)
    shares = [[m.value for m in client.get_metric_history(r.info.run_id, "cpu_share")] for r in (shared_run, alone_run)]
    assert all(s < 0.8 for s in shares[0]), shares
    assert shared_run.data.tags["harness.contended"] == "true" and shared.contended
    # Every epoch contended: the figure is the median over epochs 2..E all the same, and marked.
    rates = [h["epoch_samples_per_s"] for h in shared.history[1:]]
    assert shared_run.data.metrics["train_samples_per_s"] == pytest.approx(statistics.median(rates), rel=1e-9)
    assert alone_run.data.tags["harness.contended"] == "false" and not alone.contended
    assert max(shares[1][1:]) >= 0.8, shares


@pytest.mark.parametrize(("plots", "role", "drawn"), [("finals", "trial", False), ("finals", "final", True),
                                                      ("all", "seed", True), (False, "run", False)])
def test_the_pngs_are_drawn_for_the_runs_people_open(workdir, plots, role, drawn):
    exp = experiment(task={"n_train": 128}, train={"epochs": 1}, tracking={"plots": plots, "system_metrics": False})
    client = get_client()
    _, run_id = tracked(client, experiment_id(client, exp.name), exp, "r", {"harness.role": role})
    names = {a.path for a in client.list_artifacts(run_id)}
    assert "gradflow.csv" in names and "settings.json" in names  # written for every run
    pngs = {"learning_curve.png", "gradflow.png"} & names
    assert pngs == ({"learning_curve.png", "gradflow.png"} if drawn else set())


def test_a_gpu_study_names_its_driver_cuda_and_cudnn_and_its_report_shows_them(monkeypatch):
    from types import SimpleNamespace

    from harness import provenance
    from harness.report import reproduction

    assert [provenance.cudnn_text(v) for v in (90800, 91002, 8902)] == ["9.8.0", "9.10.2", "8.9.2"]
    assert provenance.gpu_software("580.159.04", "13.0", 91002) == "driver 580.159.04, CUDA 13.0, cuDNN 9.10.2"
    assert provenance.gpu_software(None, "13.0", None) == "CUDA 13.0"
    assert provenance.driver_version() is None or provenance.driver_version()[0].isdigit()  # no GPU: None, not an error
    # A sweep's slots on a GPU (its name and driver stand in for the device this machine lacks)
    monkeypatch.setattr(provenance, "device_name", lambda dev: "NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(provenance, "driver_version", lambda: "580.159.04")
    tags = provenance.study_tags(experiment(), "sqlite:///o.db", ["cuda:0", "cuda:0"])
    assert tags["harness.repro.device"] == "NVIDIA H100 80GB HBM3"
    assert tags["harness.repro.gpu_software"] == provenance.gpu_software(
        "580.159.04", torch.version.cuda, torch.backends.cudnn.version()) and "driver 580.159.04" in tags["harness.repro.gpu_software"]
    assert "harness.repro.gpu_software" not in provenance.study_tags(experiment(), "sqlite:///o.db", ["cpu"])
    lines = reproduction(SimpleNamespace(name="s", tags=tags, spent={}))
    assert f"- GPU software: {tags['harness.repro.gpu_software']}" in lines


def test_a_commit_is_dirty_only_with_uncommitted_changes_to_what_runs_execute(tmp_path):
    from harness.provenance import commit_of

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@example.org", *args],
                              check=True, capture_output=True, text=True).stdout.strip()

    files = {"harness/train.py": "loop", "experiments/e.toml": "name = 'e'", "pyproject.toml": "[project]",
             "docs/d.md": "doc", "reports/r.md": "report", "tests/t.py": "test"}
    git("init", "-q")
    for path, text in files.items():
        (tmp_path / path).parent.mkdir(exist_ok=True)
        (tmp_path / path).write_text(text)
    git("add", ".")
    git("commit", "-q", "-m", "all")
    head = git("rev-parse", "HEAD")
    assert commit_of(tmp_path) == head
    for path in ("docs/d.md", "reports/r.md", "tests/t.py"):  # what runs do not execute
        (tmp_path / path).write_text("changed")
    (tmp_path / "harness" / "new.py").write_text("untracked")  # as before: untracked files do not count
    assert commit_of(tmp_path) == head
    for path in ("harness/train.py", "experiments/e.toml", "pyproject.toml"):
        (tmp_path / path).write_text("changed")
        assert commit_of(tmp_path) == head + "+dirty", path
        git("checkout", "--", path)
    assert commit_of(tmp_path / "docs") is None  # not the checkout's top folder
