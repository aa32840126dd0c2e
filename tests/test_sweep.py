"""`harness sweep`: real Optuna storages (SQLite, journal file), real MLflow SQLite stores, real
worker processes killed with real signals."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from harness.archs import create_model
from harness.cli import _parser, _sweep_experiment
from harness.config import Experiment, load_experiment
from harness.errors import HarnessError
from harness.mlflow_store import get_client, start_run
from harness.runner import run_trial
from harness.sweep import run, workers
from harness.sweep.objective import objectives, result_keys
from harness.sweep.space import arch_choices
from harness.sweep.storage import make_storage, masked, resolve_storage
from harness.sweep.workers import Slot, is_gone, plan_slots, worker_id
from tests.conftest import EXPERIMENT, EXPERIMENTS


def load(path: Path, *sets: str):
    return load_experiment(path, list(sets))


def study_of(storage: str, name: str = "tiny") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=resolve_storage(storage) if storage else resolve_storage(None))


def runs_of(name: str = "tiny", role: str | None = None) -> list:
    client = MlflowClient()
    exp = client.get_experiment_by_name(name)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    return [r for r in runs if role is None or r.data.tags.get("harness.role") == role]


def states(study: optuna.Study) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in study.trials:
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


# ---------------------------------------------------------------- settings, no training


MODERN = ["indrnn", "ornn", "lru", "mingru", "minlstm", "mamba"]


def test_a_sweep_over_the_modern_families_runs_each_and_logs_its_kernel(exp_file, workdir):
    exp = load(exp_file, "sweep.sampler='grid'", "sweep.space_by_arch={}", "train.epochs=1", "task.n_train=128", "sweep.n_trials=6",
               f"sweep.space={{'model.arch' = {MODERN}, 'train.lr' = [0.01]}}")
    outcome = run(exp, progress=False)
    assert [t.state for t in outcome.study.trials] == [TrialState.COMPLETE] * len(MODERN)
    trials = {r.data.params["model.arch"]: r for r in runs_of(role="trial")}
    assert set(trials) == set(MODERN)
    families = {a: r.data.params["arch_family"] for a, r in trials.items()}
    assert families == {"indrnn": "IndRNN", "ornn": "ORNN", "lru": "LRU", "mingru": "minGRU", "minlstm": "minLSTM",
                        "mamba": "Mamba"}
    kernels = {a: r.data.params["kernel"] for a, r in trials.items()}
    assert kernels == {"indrnn": "loop", "ornn": "loop", "lru": "scan", "mingru": "logscan", "minlstm": "logscan",
                       "mamba": "scan"}
    assert all(int(r.data.params["flops_per_sample"]) > 0 for r in trials.values())


def test_cli_flags_override_the_file_and_unset_flags_override_nothing(exp_file):
    args = _parser().parse_args(["sweep", str(exp_file)])
    exp = _sweep_experiment(args)
    assert (exp.name, exp.sweep.n_trials, exp.sweep.sampler, exp.sweep.pruner, exp.sweep.jobs) == ("tiny", 3, "random", "none", "auto")
    assert exp.sweep.storage is None and exp.sweep.devices == [] and exp.sweep.repeat == 0 and Experiment().sweep.repeat == 5

    args = _parser().parse_args([
        "sweep", str(exp_file), "--n-trials", "7", "--timeout", "30", "--study", "other", "--storage", "journal:s.log",
        "--devices", "cpu", "--jobs", "2", "--repeat", "3", "--sampler", "tpe", "--pruner", "median",
        "--set", "sweep.n_trials=5", "--set", "train.epochs=4",
    ])
    exp = _sweep_experiment(args)
    assert exp.name == "other"
    s = exp.sweep
    assert (s.n_trials, s.timeout, s.storage, s.devices, s.jobs, s.repeat, s.sampler, s.pruner) == (
        7, 30.0, "journal:s.log", ["cpu"], 2, 3, "tpe", "median")
    assert exp.train.epochs == 4  # --set still applies
    assert exp.sweep.space["model.arch"].choices == ["rnn", "gru"]  # untouched by flags

    with pytest.raises(HarnessError, match="sweep.n_trials"):
        _sweep_experiment(_parser().parse_args(["sweep", str(exp_file), "--n-trials", "0"]))


def test_timeout_alone_means_no_trial_count(exp_file):
    exp = load(exp_file, "sweep.timeout=60")
    assert exp.sweep.n_trials == 3  # the file's count stays: both limits apply
    bare = exp_file.parent / "bare.toml"
    bare.write_text(EXPERIMENT.replace("n_trials = 3\n", "timeout = 60\n"))
    assert load(bare).sweep.n_trials is None and load(bare).sweep.timeout == 60
    assert load(bare, "sweep.timeout=5").with_values({"train.lr": 0.1}).sweep.n_trials is None
    bare.write_text(EXPERIMENT.replace("n_trials = 3\n", ""))
    assert load(bare).sweep.n_trials == 10


def test_objectives_storage_specs_and_passwords(exp_file, workdir):
    from harness.tasks import load_task

    task = load_task("mnist1d", n_train=64)
    exp = load(exp_file)
    assert [str(o) for o in objectives(exp, task)] == ["val_accuracy:max"]
    multi = load(exp_file, "sweep.objectives=['val_accuracy', 'train_samples_per_s:max', 'val_loss:min']")
    assert [(o.key, o.maximize) for o in objectives(multi, task)] == [
        ("val_accuracy", True), ("train_samples_per_s", True), ("val_loss", False)]
    for bad, message in ((["test_accuracy:max"], "never used to choose"), (["val_loss"], "which way"),
                         (["val_loss:up"], ":max or :min"), (["val_loss:min", "val_loss:max"], "twice")):
        with pytest.raises(HarnessError, match=message):
            objectives(load(exp_file, f"sweep.objectives={bad!r}"), task)

    with pytest.raises(HarnessError, match="'val_foo' is not a trial metric"):  # before any trial trains
        objectives(load(exp_file, "sweep.objectives=['val_foo:max']"), task)

    assert resolve_storage(None) == f"sqlite:///{workdir / 'optuna.db'}"
    assert resolve_storage("journal:runs/s.log") == f"journal:{workdir / 'runs' / 's.log'}"
    assert resolve_storage("study.journal") == f"journal:{workdir / 'study.journal'}"
    assert resolve_storage("postgresql://u:pw@db:5432/optuna") == "postgresql://u:pw@db:5432/optuna"
    with pytest.raises(HarnessError, match="sweep.storage"):
        resolve_storage("optuna.sqlite")
    assert masked("postgresql://u:secret@db/optuna") == "postgresql://u:***@db/optuna"
    assert masked("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"


def test_devices_plan_slots_and_threads(monkeypatch):
    visible = workers.visible_devices()
    slots, notice = plan_slots([], 1)
    if visible:  # a GPU machine: one worker per GPU, no notice
        assert [s.device for s in slots] == visible and notice is None
    else:
        assert [s.device for s in slots] == ["cpu"] and "no GPU visible" in notice

    cores = workers.cpu_count()
    slots, notice = plan_slots(["cpu"], 2)
    assert notice is None and [s.index for s in slots] == [0, 1] and {s.device for s in slots} == {"cpu"}
    assert all(s.threads == max(1, cores // 2) for s in slots)
    assert slots[0].env == {"OMP_NUM_THREADS": str(slots[0].threads)}
    assert plan_slots(["cpu"], 1)[0][0].threads is None  # one worker keeps torch's default
    # No more worker processes than cores: --jobs 1000 is an error, not 1000 torch processes.
    assert len(plan_slots(["cpu"], cores)[0]) == cores
    with pytest.raises(HarnessError, match=rf"sweep.jobs: {cores + 1} workers .* {cores} CPU cores; use --jobs {cores} or fewer"):
        plan_slots(["cpu"], cores + 1)

    with pytest.raises(HarnessError, match=r"sweep.devices: 'tpu'"):
        plan_slots(["tpu"], 1)
    with pytest.raises(HarnessError, match=r"sweep.devices: 'cuda:7' is not visible"):
        plan_slots(["cuda:7"], 1)
    with pytest.raises(HarnessError, match="sweep.jobs"):
        plan_slots(["cpu"], 0)
    assert len(plan_slots(["cpu"], "auto")[0]) == 1  # "auto" on a CPU: one worker, torch's threads

    # A spawned worker bound to cuda:1 sees one GPU; the user's own mask is kept.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    gpu = Slot(0, "cuda:1", spawned=True)
    assert gpu.env["CUDA_VISIBLE_DEVICES"] == "3" and gpu.run_device == "cuda:0"
    assert Slot(0, "cuda:1").run_device == "cuda:1"  # in the sweep's own process
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert Slot(0, "cuda:1", spawned=True).env["CUDA_VISIBLE_DEVICES"] == "1"


def dead_worker_token() -> str:
    """The identity of a real process of this machine that has exited."""
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    token = worker_id(p.pid)
    p.kill()
    p.wait()
    return token


def test_worker_identity_tells_a_dead_process():
    assert not is_gone(worker_id())
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        token = worker_id(p.pid)
        assert not is_gone(token)
        p.kill()
        p.wait()
        assert is_gone(token)
    finally:
        p.kill()
    host, boot, pid, start = token.split("|")
    assert not is_gone(f"another-host|{boot}|{pid}|{start}")  # only a heartbeat can tell
    host, boot, _, start = worker_id().split("|")
    assert is_gone(f"{host}|{boot}|{os.getpid()}|1.00")  # a live pid that started at another time: reused
    assert not is_gone("garbage")


@pytest.mark.parametrize(("name", "dims"), [
    ("quickstart", {"input_size": 1, "output_size": 10, "io": "many-to-one", "seq_len": 40}),
    ("rnn_types_fashion", {"input_size": 28, "output_size": 10, "io": "many-to-one", "seq_len": 28}),
    ("long_range_adding", {"input_size": 2, "output_size": 1, "io": "many-to-one", "seq_len": 200}),
])
def test_shipped_experiments_validate_and_build_every_choice(name, dims):
    import torch

    path = EXPERIMENTS / f"{name}.toml"
    first = path.read_text().splitlines()[0]
    assert first.startswith("# ") and len(first) > 20  # a one-line purpose
    exp = load_experiment(path)
    assert exp.name == name and exp.sweep.repeat >= 1
    archs = arch_choices(exp)
    assert set(exp.sweep.space_by_arch) <= set(archs) and len(archs) >= 3
    for arch in archs:  # every model option the sweep can pick builds a model that reads the task's shape
        options = [{}] + [{key.split(".", 1)[1]: v} for key, spec in exp.sweep.space_by_arch.get(arch, {}).items()
                          if key.startswith("model.") for v in spec.choices]
        for extra in options:
            model = create_model(arch, **dims, **{**exp.model.overrides(), **extra})
            out = model(torch.zeros(2, dims["seq_len"], dims["input_size"]))
            assert out.shape == (2, dims["output_size"]), (arch, extra)


# ---------------------------------------------------------------- in-process sweeps


def test_conditional_params_repeats_and_resume(exp_file, workdir):
    exp = load(exp_file, "sweep.n_trials=4", "sweep.repeat=2")
    outcome = run(exp, progress=False)
    study = outcome.study
    assert states(study) == {"COMPLETE": 4}
    archs = {t.params["model.arch"] for t in study.trials}
    assert archs == {"rnn", "gru"}  # the seeded sampler picks both
    for t in study.trials:  # model.activation exists for rnn trials only
        assert ("model.activation" in t.params) == (t.params["model.arch"] == "rnn")

    trial_runs = runs_of(role="trial")
    assert len(trial_runs) == 4
    for r in trial_runs:
        assert ("model.activation" in r.data.params) == (r.data.params["model.arch"] == "rnn")
        assert r.data.tags["harness.stage"] == "search" and r.data.tags["harness.state"] == "complete"
        t = study.trials[int(r.data.tags["harness.trial"])]
        assert t.user_attrs["mlflow_run_id"] == r.info.run_id

    (parent,) = runs_of(role="study")
    assert parent.info.status == "FINISHED"
    assert parent.data.params["sweep.storage"] == resolve_storage(None)
    finals = runs_of(role="final")
    assert len(finals) == 2 * len(archs)
    best = {}
    for t in study.trials:
        a = t.params["model.arch"]
        if a not in best or t.value > best[a].value:
            best[a] = t
    for r in finals:
        tags, params = r.data.tags, r.data.params
        assert r.info.status == "FINISHED" and tags["harness.stage"] == "final"
        assert tags["mlflow.parentRunId"] == parent.info.run_id
        source = best[params["model.arch"]]
        assert int(tags["harness.source_trial"]) == source.number
        assert float(params["train.lr"]) == pytest.approx(source.params["train.lr"])
    for a in archs:
        seeds = sorted(int(r.data.params["train.seed"]) for r in finals if r.data.params["model.arch"] == a)
        assert seeds == [1000, 1001]  # fresh: the search trained with seed 0; the same for every architecture
    assert any(line.startswith("final runs") for line in outcome.lines())

    # The same command again: the study is full, the repeats exist: nothing new, same parent.
    again = run(exp, progress=False)
    assert len(again.study.trials) == 4
    assert len(runs_of(role="final")) == len(finals) and len(runs_of(role="study")) == 1
    assert {f.run_id for f in again.finals} == {r.info.run_id for r in finals}


def test_timeout_alone_and_a_grid_bound_the_study(exp_file):
    bare = exp_file.parent / "timed.toml"
    bare.write_text(EXPERIMENT.replace("n_trials = 3\n", "timeout = 2\n"))
    t0 = time.time()
    study = run(load(bare), progress=False).study
    assert study.trials and all(t.state == TrialState.COMPLETE for t in study.trials)
    assert time.time() - t0 < 60  # stopped starting trials after 2 s

    grid = load(exp_file, "name='grid'", "sweep.sampler='grid'", "sweep.n_trials=10",
                "sweep.space={'model.arch' = ['rnn', 'gru']}", "sweep.space_by_arch={}")
    study = run(grid, progress=False).study
    assert sorted(t.params["model.arch"] for t in study.trials) == ["gru", "rnn"]  # the grid has 2 points


def test_pruning_prunes_a_study_built_to_need_it(exp_file, capsys):
    # A quarter of the trials cannot learn (lr 1e-9): their first-epoch validation loss stays at
    # the untrained model's, above the median of the ones that learn.
    exp = load(exp_file, "sweep.n_trials=6", "sweep.pruner='median'",
               "sweep.objectives=['val_loss:min']", "sweep.space={'train.lr' = [0.01, 0.02, 0.03, 1e-9]}", "train.batch_size=16",
               "sweep.space_by_arch={}")
    study = run(exp).study
    assert "complete ·" not in capsys.readouterr().out  # no live display when stdout is not a terminal
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED]
    assert pruned and len([t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]) == 6
    assert all(len(t.intermediate_values) < 2 for t in pruned)  # stopped before the last epoch
    assert study.best_trial.params["train.lr"] > 1e-9
    by_number = {int(r.data.tags["harness.trial"]): r for r in runs_of(role="trial")}
    for t in pruned:
        run_ = by_number[t.number]
        assert run_.info.status == "KILLED" and run_.data.tags["harness.state"] == "pruned"


def test_the_keys_an_objective_may_name_are_what_a_trial_holds(exp_file):
    # One real epoch of a bidirectional GRU (so every gradient-flow key exists), gradient flow on.
    exp = load(exp_file, "train.epochs=1", "model.arch=gru", "model.bidirectional=true", "tracking.gradflow=true")
    result = run_trial(exp)
    held = {k for k in {*result.final_metrics(), *result.history[0]} if not k.startswith("test_")}
    assert held == result_keys(exp, result.metric)
    assert "gradflow_rate" not in result_keys(exp.with_values({"tracking.gradflow": False}), result.metric)


def test_multi_objective_tags_and_prints_the_pareto_front(exp_file, capsys, monkeypatch):
    exp = load(exp_file, "sweep.n_trials=4", "sweep.sampler='nsga2'",
               "sweep.objectives=['val_accuracy:max', 'train_samples_per_s:max']")
    monkeypatch.setenv("FORCE_COLOR", "1")  # rich treats stdout as a terminal: the live display shows
    monkeypatch.setenv("COLUMNS", "160")
    outcome = run(exp)
    shown = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", capsys.readouterr().out)  # without colour codes
    assert "4/4" in shown and "4 complete · 0 pruned · 0 failed" in shown and "Pareto front" in shown
    front = {t.number for t in outcome.pareto}
    assert front and front == {t.number for t in outcome.study.best_trials}
    tags = {int(r.data.tags["harness.trial"]): r.data.tags["harness.pareto"] for r in runs_of(role="trial")}
    assert tags == {n: str(n in front).lower() for n in range(4)}
    lines = outcome.lines()
    assert any(line.startswith(f"Pareto front ({len(front)} trials") for line in lines)
    assert sum(line.startswith("  #") for line in lines) == len(front)


def test_journal_storage_recovers_a_trial_left_running_by_a_dead_worker(exp_file, workdir):
    exp = load(exp_file, "sweep.n_trials=1", "sweep.storage='journal:tiny.log'")
    study = run(exp, progress=False).study
    assert states(study) == {"COMPLETE": 1} and (workdir / "tiny.log").exists()

    # What a worker killed mid-trial leaves: a RUNNING trial with its worker and run ids, a
    # RUNNING MLflow run. (The worker here is a real process that has exited.)
    trial = study.ask()
    lr = trial.suggest_float("train.lr", 1e-3, 3e-2, log=True)
    arch = trial.suggest_categorical("model.arch", ["rnn", "gru"])
    client = get_client()
    exp_id = client.get_experiment_by_name("tiny").experiment_id
    run_id = start_run(client, exp_id, "dead", tags={"harness.role": "trial", "harness.study": "tiny",
                                                      "harness.trial": trial.number}, params={})
    trial.set_user_attr("mlflow_run_id", run_id)
    trial.set_user_attr("worker", dead_worker_token())
    orphan = start_run(client, exp_id, "orphan", tags={"harness.role": "trial", "harness.study": "tiny",
                                                        "harness.trial": 0}, params={})  # trial 0 is complete

    study = run(exp.with_values({"sweep.n_trials": 2}), progress=False).study
    lost = study.trials[trial.number]
    assert lost.state == TrialState.FAIL
    retry = [t for t in study.trials if t.number > trial.number and t.state == TrialState.COMPLETE]
    assert len(retry) == 1 and retry[0].params["train.lr"] == lr and retry[0].params["model.arch"] == arch
    assert states(study) == {"COMPLETE": 2, "FAIL": 1}
    dead = client.get_run(run_id)
    assert dead.info.status == "FAILED" and dead.data.tags["harness.failure"] == "worker_lost"
    assert client.get_run(orphan).info.status == "FAILED"
    retried = client.get_run(retry[0].user_attrs["mlflow_run_id"])
    assert retried.data.tags["harness.retry_of"] == str(trial.number)
    assert not [r for r in runs_of() if r.info.status == "RUNNING"]


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_heartbeat_fails_and_requeues_a_silent_trial_of_another_machine(exp_file, monkeypatch):
    import harness.sweep.storage as sweep_module

    monkeypatch.setattr(sweep_module, "HEARTBEAT_S", 1)
    monkeypatch.setattr(sweep_module, "GRACE_S", 2)
    exp = load(exp_file, "sweep.n_trials=1")
    run(exp, progress=False)
    storage = make_storage(resolve_storage(None))
    study = optuna.load_study(study_name="tiny", storage=storage)
    # A worker on another machine started a trial, beat once, then went silent.
    trial = study.ask()
    lr = trial.suggest_float("train.lr", 1e-3, 3e-2, log=True)
    trial.suggest_categorical("model.arch", ["rnn", "gru"])
    client = get_client()
    exp_id = client.get_experiment_by_name("tiny").experiment_id
    run_id = start_run(client, exp_id, "remote", tags={"harness.role": "trial", "harness.study": "tiny",
                                                       "harness.trial": trial.number}, params={})
    trial.set_user_attr("mlflow_run_id", run_id)
    trial.set_user_attr("worker", "gpu-node-7|0a1b2c3d|4242|99")
    storage.record_heartbeat(trial._trial_id)
    time.sleep(3)

    study = run(exp.with_values({"sweep.n_trials": 2}), progress=False).study
    assert study.trials[trial.number].state == TrialState.FAIL
    assert states(study) == {"COMPLETE": 2, "FAIL": 1}
    assert study.trials[-1].params["train.lr"] == lr  # re-queued with its parameters
    dead = client.get_run(run_id)
    assert dead.info.status == "FAILED" and dead.data.tags["harness.failure"] == "worker_lost"


def test_failed_trials_end_failed_with_their_reason_and_count(exp_file, caplog):
    # SGD at lr 1e4 on a ReLU RNN diverges within two steps: a result, not a reason to loop.
    exp = load(exp_file, "sweep.n_trials=2", "sweep.space={'train.lr' = [1e4]}", "sweep.space_by_arch={}",
               "model.arch='rnn'", "model.activation='relu'", "train.optimizer='sgd'")
    optuna.logging.enable_propagation()  # so caplog sees Optuna's records
    try:
        outcome = run(exp, progress=False)
    finally:
        optuna.logging.disable_propagation()
    assert states(outcome.study) == {"FAIL": 2}
    assert all(t.user_attrs["error"].startswith("Diverged: non-finite") for t in outcome.study.trials)
    for r in runs_of(role="trial"):
        assert r.info.status == "FAILED" and r.data.tags["harness.state"] == "failed"
        assert r.data.tags["harness.failure"] == "diverged" and "non-finite" in r.data.tags["harness.error"]
    assert outcome.lines()[0].endswith(": 2 fail")
    logged = [r for r in caplog.records if r.name.startswith("optuna")]
    failures = {r.getMessage().split(" failed")[0] for r in logged if "failed with parameters" in r.getMessage()}
    assert failures == {"Trial 0", "Trial 1"}  # one line each, no traceback, no "failed with value"
    assert all(r.exc_info is None and "failed with value" not in r.getMessage() for r in logged)


def test_bad_settings_stop_the_sweep_with_one_line(exp_file, workdir):
    with pytest.raises(HarnessError, match="sweep.space_by_arch.lstm"):
        run(load(exp_file, "sweep.space_by_arch={lstm = {'model.dropout' = [0.1]}}"), progress=False)
    with pytest.raises(HarnessError, match="not a trial metric"):
        run(load(exp_file, "sweep.objectives=['val_nothing:max']"), progress=False)
    # Refused before any trial trained, and before either store was written.
    assert not (workdir / "optuna.db").exists() and not (workdir / "mlflow.db").exists()


# ---------------------------------------------------------------- real processes, real signals


def sweep_cmd(exp_file: Path, *args: str) -> list[str]:
    """The command line; also creates the MLflow store's tables first, so the test's polling
    client and the command never migrate a new SQLite store at the same moment."""
    MlflowClient().search_experiments()
    return [sys.executable, "-m", "harness.cli", "sweep", str(exp_file), *args]


def wait_for(predicate, timeout: float = 90.0, what: str = "condition"):
    end = time.time() + timeout
    while time.time() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def running_trial_runs() -> list:
    client = MlflowClient()
    exp = client.get_experiment_by_name("tiny")
    if exp is None:
        return []
    return client.search_runs([exp.experiment_id], "attributes.status = 'RUNNING' and tags.`harness.role` = 'trial'")


# Long enough that a kill lands mid-trial: 12 epochs of 512 sequences (harness's own GRU kernel
# made 6 too quick for a test to see the first trial running).
SLOW = ["--set", "task.n_train=512", "--set", "train.epochs=12", "--set", "model.hidden_size=16"]


@pytest.mark.slow
def test_sigkill_mid_trial_then_rerun_completes_the_study(exp_file, workdir):
    cmd = sweep_cmd(exp_file, "--n-trials", "2", *SLOW)
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        (victim,) = wait_for(running_trial_runs, what="the first trial's MLflow run")
    finally:
        p.kill()
        p.wait()
    assert p.returncode == -signal.SIGKILL
    study = study_of(None)
    assert [t.state for t in study.trials] == [TrialState.RUNNING]  # what the kill left

    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    study = study_of(None)
    killed = study.trials[0]
    assert killed.state == TrialState.FAIL
    assert [t.state for t in study.trials].count(TrialState.COMPLETE) == 2
    retry = study.trials[1]
    assert retry.params == killed.params and retry.state == TrialState.COMPLETE
    client = MlflowClient()
    dead = client.get_run(victim.info.run_id)
    assert dead.info.status == "FAILED" and dead.data.tags["harness.failure"] == "worker_lost"
    assert not [r for r in runs_of() if r.info.status == "RUNNING"]
    assert "2 complete, 1 fail" in done.stdout


@pytest.mark.slow
def test_two_cpu_workers_share_sqlite_and_survive_one_killed(exp_file, workdir):
    cmd = sweep_cmd(exp_file, "--n-trials", "5", "--jobs", "2", *SLOW)
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        runs = wait_for(lambda: len(running_trial_runs()) == 2 and running_trial_runs(), what="two trials running at once")
        workers_seen = {r.data.tags["harness.worker"] for r in runs}
        assert len(workers_seen) == 2  # two processes, one trial each
        victim = max(runs, key=lambda r: r.info.start_time)  # the one with the most training left
        pid = int(victim.data.tags["harness.worker"].split("|")[2])
        assert pid != p.pid
        os.kill(pid, signal.SIGKILL)
        out, _ = p.communicate(timeout=300)
    finally:
        p.kill()
    assert p.returncode == 0, out
    assert "database is locked" not in out
    assert "exited with code -9" in out
    study = study_of(None)
    count = states(study)
    assert count["COMPLETE"] == 5 and count["FAIL"] == 1, count
    killed = next(t for t in study.trials if t.state == TrialState.FAIL)
    assert killed.user_attrs["mlflow_run_id"] == victim.info.run_id
    assert MlflowClient().get_run(victim.info.run_id).info.status == "FAILED"
    assert any(t.params == killed.params and t.state == TrialState.COMPLETE for t in study.trials)
    assert not [r for r in runs_of() if r.info.status == "RUNNING"]
    numbers = [t.number for t in study.trials]
    assert len(numbers) == len(set(numbers))


@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.0, 0.5])  # as the run opens (before the loop begins), and inside the loop
def test_ctrl_c_stops_cleanly(exp_file, workdir, delay):
    cmd = sweep_cmd(exp_file, "--n-trials", "3", *SLOW)
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        (victim,) = wait_for(running_trial_runs, what="a trial's MLflow run")
        time.sleep(delay)
        p.send_signal(signal.SIGINT)
        out, _ = p.communicate(timeout=60)
    finally:
        p.kill()
    assert p.returncode == 130, out
    study = study_of(None)  # the storage opens and holds a consistent study
    assert [t.state for t in study.trials] == [TrialState.FAIL]
    client = MlflowClient()
    assert client.get_run(victim.info.run_id).info.status == "KILLED"
    (parent,) = runs_of(role="study")
    assert parent.info.status == "KILLED"
    assert not [r for r in runs_of() if r.info.status == "RUNNING"]


@pytest.mark.slow
def test_final_runs_are_shared_among_the_workers_each_seed_once(exp_file, workdir):
    outcome = run(load(exp_file, "sweep.n_trials=2", "sweep.jobs=2", "sweep.repeat=3", "sweep.sampler=grid",
                       "sweep.space={\"model.arch\" = [\"rnn\", \"gru\"]}", "sweep.space_by_arch={}"), progress=False)
    finals = runs_of(role="final")
    assert len(finals) == 6 and all(r.info.status == "FINISHED" for r in finals)
    pairs = [(r.data.tags["harness.config"], r.data.tags["harness.seed"]) for r in finals]
    assert len(set(pairs)) == 6  # no (configuration, seed) trained twice
    assert len({r.data.tags["harness.worker"] for r in finals}) == 2  # both workers trained some
    assert sorted((f.arch, f.seed) for f in outcome.finals) == sorted((a, s) for a in ("gru", "rnn") for s in (1000, 1001, 1002))


def test_the_median_pruner_compares_a_trial_with_its_own_architecture_only():
    from optuna.distributions import CategoricalDistribution

    from harness.sweep.space import ByArchitecture

    study = optuna.create_study(direction="maximize")
    arch = {"model.arch": CategoricalDistribution(["gru", "rnn"])}
    for value in (0.9, 0.91, 0.92):  # three GRUs, fast learners
        study.add_trial(optuna.trial.create_trial(params={"model.arch": "gru"}, distributions=arch, value=value,
                                                  intermediate_values={1: value, 2: value}))
    slow = optuna.trial.create_trial(params={"model.arch": "rnn"}, distributions=arch, state=TrialState.RUNNING,
                                     intermediate_values={1: 0.3, 2: 0.4})
    plain = optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)
    assert plain.prune(study, slow)  # study-wide: the RNN is judged by the GRUs
    assert not ByArchitecture(plain).prune(study, slow)  # by architecture: no RNN has finished yet
    for value in (0.5, 0.6, 0.7):
        study.add_trial(optuna.trial.create_trial(params={"model.arch": "rnn"}, distributions=arch, value=value,
                                                  intermediate_values={1: value, 2: value}))
    assert ByArchitecture(plain).prune(study, slow)  # worse than the median RNN: pruned


def _budgets(exp: Experiment, n: int, storage: str | None = None) -> tuple[dict[str, int], optuna.Study]:
    """`n` trials of a study whose GRUs score far above everything else, sampled as a sweep does."""
    from harness.sweep.space import make_sampler, suggest

    study = optuna.create_study(direction="maximize", sampler=make_sampler(exp, False, 0, storage),
                                storage=storage)
    seen: dict[str, list[float]] = {}

    def objective(trial):
        values = suggest(trial, exp)
        seen.setdefault(values["model.arch"], []).append(values["train.lr"])
        return (1.0 if values["model.arch"] == "gru" else 0.1) - abs(values["train.lr"] - 0.01)

    study.optimize(objective, n_trials=n)
    return {a: len(v) for a, v in seen.items()}, study


def test_every_architecture_gets_the_same_search_budget_under_tpe(exp_file, workdir):
    exp_file.write_text(EXPERIMENT.replace('["rnn", "gru"]', '["rnn", "lstm", "gru"]').replace('"random"', '"tpe"'))
    exp = load(exp_file)
    assert _budgets(exp, 9)[0] == {"rnn": 3, "lstm": 3, "gru": 3}
    counts, study = _budgets(exp, 36, f"sqlite:///{workdir}/budgets.db")
    assert counts == {"rnn": 12, "lstm": 12, "gru": 12}
    # the architecture a trial was given is the one it trained, and its sampler reads only its own
    # (through the private twin of get_trials that TPE calls)
    assert all(t.user_attrs["harness_arch"] == t.params["model.arch"] for t in study.trials)
    from harness.sweep.optuna_private import same_architecture
    view = same_architecture(study, "gru")
    assert {t.params["model.arch"] for t in view._get_trials(deepcopy=False, use_cache=True)} == {"gru"}
    assert len(view.get_trials(deepcopy=False)) == 12
    # left to TPE, the architecture is one more dimension to exploit
    free, _ = _budgets(exp.with_values({"sweep.equal_budgets": False}), 36)
    assert free["gru"] > 12 and min(free.values()) < 12


def test_match_params_gives_every_architecture_one_size(exp_file):
    exp = load(exp_file, "name='matched'", "sweep.match_params=3000", "sweep.n_trials=2", "sweep.repeat=1",
               "sweep.space={'model.arch' = ['rnn', 'lstm']}", "sweep.space_by_arch={}")
    run(exp, progress=False)
    trained = [r for r in runs_of("matched") if r.data.tags.get("harness.role") in ("trial", "final")]
    assert {r.data.tags["harness.role"] for r in trained} == {"trial", "final"}
    counts = {r.data.params["model.arch"]: int(r.data.params["n_params"]) for r in trained}
    assert set(counts) == {"rnn", "lstm"}
    assert all(abs(n - 3000) <= 150 for n in counts.values()), counts
    widths = {r.data.params["model.arch"]: int(r.data.params["model.hidden_size"]) for r in trained}
    assert widths["rnn"] > 1.5 * widths["lstm"]  # an LSTM spends four gates' weights per unit
    assert all(r.data.params["match_params"] == "3000" for r in trained)

    with pytest.raises(HarnessError, match="match_params sets model.hidden_size"):
        run(load(exp_file, "name='m2'", "sweep.match_params=3000", "sweep.space={'model.hidden_size' = [8, 16]}",
                     "sweep.space_by_arch={}"))
    with pytest.raises(HarnessError, match=r"match_params = 5: the nearest rnn has .* more than 5% off"):
        run(load(exp_file, "name='m3'", "sweep.match_params=5"))
