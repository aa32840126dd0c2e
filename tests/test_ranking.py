"""A ranking that means something: exact grids under several workers and resumes, seeds in the
search, early stopping, edges of the search space, final runs counted once per (configuration,
seed), and the field's LSTM default. The statistics themselves are checked in test_report.py."""

from __future__ import annotations

import subprocess
from collections import Counter

import numpy as np
import optuna
import pytest
import torch
from mlflow.tracking import MlflowClient
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from harness.archs import create_model
from harness.cli import main
from harness.config import validate
from harness.errors import HarnessError, Pruned
from harness.runner import build
from harness.sweep import run
from harness.sweep.objective import Objective, PruneOnSignal
from harness.sweep.space import edges
from harness.train import fit
from tests.conftest import EXPERIMENTS
from tests.test_sweep import SLOW, load, runs_of, study_of, sweep_cmd, wait_for
from tests.test_tracking import datasets

GRID = ["--set", "sweep.sampler='grid'", "--set", "sweep.space_by_arch={}", "--set", "sweep.repeat=0",
        "--set", "sweep.space={'model.arch' = ['rnn', 'gru', 'lstm', 'mlp'], 'train.lr' = [0.003, 0.01]}"]


def done_points() -> int:
    try:
        return sum(points(study_of(None)).values())
    except KeyError:  # the command has not created the study yet
        return 0


def points(study: optuna.Study, state: TrialState = TrialState.COMPLETE) -> Counter:
    return Counter((t.params["model.arch"], t.params["train.lr"]) for t in study.trials if t.state == state)


@pytest.mark.slow
def test_a_grid_with_two_workers_killed_and_resumed_runs_each_point_exactly_once(exp_file, workdir):
    four = ["--set", "sweep.space={'model.arch' = ['rnn', 'gru'], 'train.lr' = [0.003, 0.01]}"]
    cmd = sweep_cmd(exp_file, "--jobs", "2", "--n-trials", "4", *GRID, *four, *SLOW)
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:  # kill the command once a point is done and the other worker's runs
        wait_for(lambda: done_points() >= 1, timeout=180, what="a grid point done")
    finally:
        p.kill()
        p.wait()
    left = study_of(None)
    assert 1 <= sum(points(left).values()) < 4  # a partial grid

    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    study = study_of(None)
    grid = {(a, lr) for a in ("rnn", "gru") for lr in (0.003, 0.01)}
    assert points(study) == Counter(dict.fromkeys(grid, 1))  # every point once, none twice
    # Whatever else the study holds never ran a point again: lost trials and surplus copies.
    for t in study.trials:
        assert t.state == TrialState.COMPLETE or t.user_attrs.get("harness_surplus") or "error" not in t.user_attrs


@pytest.mark.slow
def test_two_commands_at_once_train_each_final_configuration_and_seed_once(exp_file, workdir):
    cmd = sweep_cmd(exp_file, "--n-trials", "2", "--repeat", "2")
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    second = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    outs = [p.communicate(timeout=600)[0] for p in (first, second)]
    assert first.returncode == 0 and second.returncode == 0, outs
    finals = [r for r in runs_of(role="final") if r.info.status == "FINISHED"]
    keys = Counter((r.data.tags["harness.config"], r.data.params["train.seed"]) for r in finals)
    archs = {r.data.params["model.arch"] for r in finals}
    assert keys and set(keys.values()) == {1} and len(keys) == 2 * len(archs)
    # The seeds are the same for every architecture: the comparison is paired.
    seeds = {a: sorted(r.data.params["train.seed"] for r in finals if r.data.params["model.arch"] == a) for a in archs}
    assert all(s == ["1000", "1001"] for s in seeds.values()), seeds


def test_seeds_in_the_search_are_nested_runs_and_the_objective_is_their_mean(exp_file, workdir):
    outcome = run(load(exp_file, "sweep.n_trials=2", "sweep.seeds=2"), progress=False)
    client = MlflowClient()
    trials = runs_of(role="trial")
    assert len(trials) == 2
    for trial_run in trials:
        t = outcome.study.trials[int(trial_run.data.tags["harness.trial"])]
        seeds = [r for r in runs_of(role="seed") if r.data.tags["mlflow.parentRunId"] == trial_run.info.run_id]
        assert sorted(int(r.data.params["train.seed"]) for r in seeds) == [0, 1]
        values = [r.data.metrics["best_val_accuracy"] for r in seeds]
        assert t.value == pytest.approx(np.mean(values))  # Optuna's objective
        m = trial_run.data.metrics
        assert m["best_val_accuracy"] == pytest.approx(np.mean(values)) and m["best_val_accuracy_std"] == pytest.approx(
            np.std(values, ddof=1))
        assert trial_run.data.params["arch_family"] in ("RNN", "GRU") and trial_run.data.params["n_params"]
        assert len(datasets(trial_run)) == 3 and all(datasets(r) == datasets(trial_run) for r in seeds)  # the seeds' splits
        curve = client.get_metric_history(trial_run.info.run_id, "val_accuracy")
        assert [h.step for h in curve] == [1, 2]  # the seeds' mean per epoch, for the learning curves


def test_pruning_compares_the_seeds_mean_at_one_step_per_seed_and_epoch():
    # Synthetic epochs fed to the callback a trial's seeds train with, on a real Optuna trial.
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.NopPruner())
    trial = study.ask()
    objective = Objective("val_accuracy", maximize=True)
    seed0 = PruneOnSignal(trial, objective, epochs=3)
    for epoch, value in enumerate([0.5, 0.7, 0.6], 1):
        seed0.on_epoch_end(epoch, {"val_accuracy": value})
    # Seed 1 stops early after two epochs (no step 6); seed 2's third epoch is averaged with
    # seed 1's best (0.9), the checkpoint it stopped with.
    seed1 = PruneOnSignal(trial, objective, epochs=3, seed_index=1, earlier=[seed0.curve])
    for epoch, value in enumerate([0.9, 0.8], 1):
        seed1.on_epoch_end(epoch, {"val_accuracy": value})
    seed2 = PruneOnSignal(trial, objective, epochs=3, seed_index=2, earlier=[seed0.curve, seed1.curve])
    for epoch, value in enumerate([0.1, 0.2, 0.3], 1):
        seed2.on_epoch_end(epoch, {"val_accuracy": value, "val_loss": 9.0})
    assert study.trials[0].intermediate_values == pytest.approx({
        1: 0.5, 2: 0.7, 3: 0.6,                        # seed j's epoch e is step j·3 + e
        4: (0.5 + 0.9) / 2, 5: (0.7 + 0.8) / 2,         # the mean over the seeds so far
        7: (0.5 + 0.9 + 0.1) / 3, 8: (0.7 + 0.8 + 0.2) / 3, 9: (0.6 + 0.9 + 0.3) / 3})


def test_a_pruned_epoch_raises_except_the_last_and_minimising_keeps_a_stopped_seeds_lowest():
    class Always(optuna.pruners.BasePruner):
        def prune(self, study, trial):
            return True

    study = optuna.create_study(direction="minimize", pruner=Always())
    trial = study.ask()
    loss = Objective("val_loss", maximize=False)
    seed0 = PruneOnSignal(trial, loss, epochs=2)
    with pytest.raises(Pruned, match="pruned at epoch 1$"):
        seed0.on_epoch_end(1, {"val_loss": 2.0})
    seed0.on_epoch_end(2, {"val_loss": 1.0})  # the last epoch: the work is done, kept
    seed1 = PruneOnSignal(trial, loss, epochs=2, seed_index=1, earlier=[[2.0]])  # seed 0 stopped after one epoch
    with pytest.raises(Pruned, match="pruned at epoch 1 of seed 2"):
        seed1.on_epoch_end(1, {"val_loss": 4.0})
    assert study.trials[0].intermediate_values == {1: 2.0, 2: 1.0, 3: 3.0}
    quiet = PruneOnSignal(trial, None, epochs=2)  # a multi-objective study: nothing reported
    quiet.on_epoch_end(1, {"val_loss": 5.0})
    assert quiet.curve == [] and len(study.trials[0].intermediate_values) == 3


def test_patience_stops_a_run_that_no_longer_improves():
    exp = validate({"task": {"name": "digits"}, "model": {"arch": "gru", "hidden_size": 8},
                    "train": {"epochs": 6, "lr": 1e-9, "patience": 2, "device": "cpu"}})
    task, model = build(exp)
    result = fit(model, task, exp.train, device=torch.device("cpu"))  # lr 1e-9: nothing moves after epoch 1
    assert result.stopped_early and result.epochs_run == 3 and len(result.history) == 3 and result.best_epoch == 1
    assert not result.budget_limited
    final = result.final_metrics()
    assert (final["stopped_early"], final["epochs_run"], final["budget_limited"]) == (1.0, 3.0, 0.0)

    exp = exp.with_values({"train.patience": None, "train.epochs": 2, "train.lr": 1e-2})
    task, model = build(exp)
    capped = fit(model, task, exp.train, device=torch.device("cpu"))
    assert not capped.stopped_early and capped.epochs_run == 2
    assert capped.budget_limited == (capped.best_epoch == 2)  # without patience: the last tenth (one epoch) of the cap


def test_still_improving_looks_at_the_last_tenth_or_the_patience_and_at_the_curve():
    from harness.train import still_improving

    flat_then_climbing = [0.1, 0.5, 0.6, 0.6, 0.55, 0.5, 0.52, 0.54, 0.56, 0.58]  # best at 3, climbing again
    assert still_improving(flat_then_climbing, best_epoch=3, window=3, maximize=True)  # 0.58 > 0.5, 3 epochs before
    assert not still_improving(flat_then_climbing[:6], best_epoch=3, window=2, maximize=True)  # falling at the end
    assert still_improving([0.5, 0.4, 0.3], best_epoch=3, window=1, maximize=False)  # MSE still falling
    assert not still_improving([0.5, 0.3, 0.3], best_epoch=2, window=1, maximize=False)  # flat: the cap did not bind


def test_the_edge_warning_fires_when_the_best_is_the_last_grid_value(exp_file, workdir):
    exp = load(exp_file, "name='edge'", "sweep.sampler='grid'", "sweep.space_by_arch={}", "sweep.repeat=0",
               "sweep.space={'model.arch' = ['gru'], 'train.lr' = [0.00001, 0.001, 0.03]}")
    outcome = run(exp, progress=False)
    best = outcome.study.best_trial.params["train.lr"]
    assert best == 0.03, outcome.study.trials  # 1e-5 and 1e-3 barely move in 2 epochs of 256 examples
    assert outcome.edges == ["gru: best train.lr = 0.03 is the highest of [1e-05, 0.001, 0.03]"]
    assert any("on the edge of the search space" in line for line in outcome.lines())
    (parent,) = runs_of("edge", role="study")
    assert parent.data.tags["harness.edges"] == outcome.edges[0]
    assert main(["report", "edge", "--out", str(workdir / "out")]) == 0
    assert "On the edge of the search space**: gru: best train.lr = 0.03" in (workdir / "out" / "edge.md").read_text()


def test_edges_of_a_log_range():
    exp = validate({"sweep": {"space": {"train.lr": {"low": 1e-4, "high": 1e-1, "log": True}, "model.hidden_size": [16, 32, 64]}}})

    def trial(lr, hidden):
        return create_trial(params={"train.lr": lr, "model.hidden_size": hidden}, value=0.5,
                            distributions={"train.lr": FloatDistribution(1e-4, 1e-1, log=True),
                                           "model.hidden_size": optuna.distributions.CategoricalDistribution([16, 32, 64])})

    assert edges(exp, {"gru": trial(3e-3, 32)}) == []  # mid-range on a log scale, a middle choice
    two = validate({"sweep": {"space": {"model.hidden_size": [64, 128]}}})  # the better of two may lie beyond
    assert edges(two, {"gru": create_trial(params={"model.hidden_size": 128}, value=0.5, distributions={
        "model.hidden_size": optuna.distributions.CategoricalDistribution([64, 128])})}) == [
        "gru: best model.hidden_size = 128 is the highest of [64.0, 128.0]"]
    found = edges(exp, {"rnn": trial(1.1e-4, 16), "lstm": trial(0.09, 64)})
    assert found == ["rnn: best train.lr = 0.00011 is at the low end of its range [0.0001, 0.1]",
                     "rnn: best model.hidden_size = 16 is the lowest of [16.0, 32.0, 64.0]",
                     "lstm: best train.lr = 0.09 is at the high end of its range [0.0001, 0.1]",
                     "lstm: best model.hidden_size = 64 is the highest of [16.0, 32.0, 64.0]"]


def test_an_lstm_starts_with_forget_gate_bias_one_and_zero_gives_torchs_mean():
    for name in ("lstm", "bilstm"):
        torch.manual_seed(0)
        model = create_model(name, input_size=3, output_size=2, io="many-to-one", seq_len=5, hidden_size=4, num_layers=2)
        for pname, p in model.rnn.named_parameters():
            if pname.startswith("bias_"):
                forget = p[4:8]
                assert torch.equal(forget, torch.full_like(forget, 1.0 if pname.startswith("bias_ih") else 0.0)), pname
    zero = create_model("lstm", input_size=3, output_size=2, io="many-to-one", seq_len=5, hidden_size=4, forget_bias=0)
    assert float(zero.rnn.bias_ih_l0[4:8].detach().abs().sum() + zero.rnn.bias_hh_l0[4:8].detach().abs().sum()) == 0


def test_a_run_keeps_each_test_examples_metric(workdir, capsys):
    assert main(["run", str(EXPERIMENTS / "quickstart.toml"), "--set", "task.name='digits'", "--set", "model.arch='gru'", "--set", "model.hidden_size=8",
                 "--set", "train.epochs=1", "--set", "tracking.system_metrics=false"]) == 0
    client = MlflowClient()
    (r,) = client.search_runs([client.get_experiment_by_name("quickstart").experiment_id])
    values = np.load(client.download_artifacts(r.info.run_id, "test_per_example.npy", str(workdir)))
    assert values.shape == (359,) and set(np.unique(values)) <= {0.0, 1.0}  # digits: 359 test images, right or wrong
    assert values.mean() == pytest.approx(r.data.metrics["test_accuracy"], abs=1e-6)


def test_a_grid_gives_each_architecture_its_own_values(exp_file, workdir):
    exp = load(exp_file, "sweep.sampler='grid'", "sweep.n_trials=10", "sweep.repeat=0",
               "sweep.space={'model.arch' = ['rnn', 'gru']}",
               "sweep.space_by_arch={rnn = {'train.lr' = [0.001, 0.003]}, gru = {'train.lr' = [0.01]}}")
    outcome = run(exp, progress=False)
    assert sorted((t.params["model.arch"], t.params["train.lr"]) for t in outcome.study.trials) == [
        ("gru", 0.01), ("rnn", 0.001), ("rnn", 0.003)]  # 3 points, not 2 × 3
    assert all(t.state == TrialState.COMPLETE for t in outcome.study.trials)


def test_per_architecture_lists_of_one_name_need_a_grid(exp_file, workdir):
    exp = load(exp_file, "sweep.space_by_arch={rnn = {'train.lr' = [0.001, 0.003]}, gru = {'train.lr' = [0.01]}}")
    with pytest.raises(HarnessError, match=r"^sweep.space_by_arch: 'train.lr' lists other values for gru than for rnn"):
        run(exp, progress=False)
    assert not (workdir / "optuna.db").exists() and not runs_of_any()  # refused before anything was written


def runs_of_any() -> list:
    client = MlflowClient()
    return [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]


def test_an_integer_range_samples_integers(exp_file, workdir):
    exp = load(exp_file, "sweep.n_trials=3", "sweep.space_by_arch={}",
               "sweep.space={'model.arch' = ['gru'], 'model.hidden_size' = { low = 4, high = 12, step = 4 }}")
    outcome = run(exp, progress=False)
    sizes = [t.params["model.hidden_size"] for t in outcome.study.trials]
    assert all(t.state == TrialState.COMPLETE for t in outcome.study.trials)
    assert all(isinstance(h, int) and h in (4, 8, 12) for h in sizes), sizes
    assert {r.data.params["model.hidden_size"] for r in runs_of(role="trial")} == {str(h) for h in sizes}
