"""Experiment files → validated settings; `--set` overrides; one-line errors naming the field."""

from __future__ import annotations

import pytest

from harness.config import load_experiment, parse_set, validate
from harness.errors import HarnessError
from tests.conftest import EXPERIMENTS


def test_quickstart_loads_and_compares_the_four_families():
    exp = load_experiment(EXPERIMENTS / "quickstart.toml")
    assert exp.name == "quickstart"
    assert exp.task.name == "mnist1d"
    assert {"rnn", "lstm", "gru", "brnn"} <= set(exp.sweep.space["model.arch"].choices)


@pytest.mark.parametrize("path", sorted(EXPERIMENTS.glob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_experiment_validates_and_says_its_purpose(path):
    exp = load_experiment(path)
    assert exp.name and exp.description, "an experiment names its study and says its question"
    assert path.read_text().startswith("#"), "first line must be a one-line purpose comment"


@pytest.mark.parametrize(
    ("item", "key", "value"),
    [
        ("train.epochs=3", "train.epochs", 3),
        ("train.lr=1e-2", "train.lr", 0.01),
        ("task.name=digits", "task.name", "digits"),  # bare words are strings
        ('task.name="digits"', "task.name", "digits"),
        ("model.bidirectional=true", "model.bidirectional", True),
        ("sweep.objectives=['val_accuracy:max']", "sweep.objectives", ["val_accuracy:max"]),
    ],
)
def test_set_values_are_toml_literals(item, key, value):
    assert parse_set(item) == (key, value)


def test_sets_override_the_file_and_reach_model_and_task_options():
    exp = load_experiment(
        EXPERIMENTS / "quickstart.toml",
        ["train.epochs=1", "train.batch_size=16", "train.seed=7", "task.n_train=100", "model.hidden_size=8", "train.lr=0.5"],
    )
    assert (exp.train.epochs, exp.train.batch_size, exp.train.seed, exp.train.lr) == (1, 16, 7, 0.5)
    assert exp.task.options()["n_train"] == 100
    assert exp.model.overrides()["hidden_size"] == 8


def test_flat_settings_are_what_gets_logged():
    flat = validate({"model": {"arch": "gru", "hidden_size": 32}}).flat()
    assert flat["model.arch"] == "gru" and flat["model.hidden_size"] == 32 and flat["train.lr"] == 1e-3
    assert not any(k.startswith("sweep.space") for k in flat)


def test_with_values_revalidates():
    exp = validate({})
    assert exp.with_values({"train.lr": 0.1}).train.lr == 0.1
    with pytest.raises(HarnessError, match=r"^experiment: train\.lr: "):
        exp.with_values({"train.lr": -1.0})


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"train": {"lr": 0}}, "train.lr"),
        ({"train": {"epochs": "many"}}, "train.epochs"),
        ({"train": {"optimizer": "adamax"}}, "train.optimizer"),
        ({"train": {"lrate": 0.1}}, "train.lrate"),
        ({"sweep": {"sampler": "bayes"}}, "sweep.sampler"),
        ({"sweep": {"space": {"train.lr": {"low": 1, "high": 0}}}}, "sweep.space.train.lr"),
        ({"sweep": {"space": {"optimizer": ["adam"]}}}, "sweep.space"),
        ({"task": {"n_train": 0}}, "task.n_train"),
        ({"name": "has space"}, "name"),
    ],
)
def test_bad_values_fail_with_one_line_naming_the_field(raw, field):
    with pytest.raises(HarnessError) as e:
        validate(raw, "x.toml")
    msg = str(e.value)
    assert msg.startswith(f"x.toml: {field}")
    assert "\n" not in msg


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(HarnessError, match="not found"):
        load_experiment(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nlr = 1")
    with pytest.raises(HarnessError, match="not valid TOML"):
        load_experiment(bad)
    with pytest.raises(HarnessError, match="expected KEY=VALUE"):
        load_experiment(EXPERIMENTS / "quickstart.toml", ["train.lr"])


def test_bare_experiment_name_resolves_under_experiments(monkeypatch):
    monkeypatch.chdir(EXPERIMENTS.parent)
    assert load_experiment("quickstart").name == "quickstart"


def test_references_are_validated_and_stay_out_of_the_flat_settings(tmp_path):
    ok = tmp_path / "ok.toml"
    ok.write_text('[[reference]]\nfamily = "GRU"\nmetric = "accuracy"\nvalue = 0.91\nsource = "Paper 2020, table 2"\n')
    exp = load_experiment(ok)
    assert [(r.family, r.value, r.note) for r in exp.reference] == [("GRU", 0.91, "")]
    assert not any(k.startswith("reference") for k in exp.flat())  # logged as one JSON tag, not as params
    bad = tmp_path / "bad.toml"
    bad.write_text('[[reference]]\nfamily = "GRU"\nmetric = "accuracy"\nvalue = "high"\n')
    with pytest.raises(HarnessError) as e:
        load_experiment(bad)
    assert str(e.value).startswith(f"{bad}: reference.0.") and "\n" not in str(e.value)


def test_the_recorded_command_masks_a_database_password():
    from harness.provenance import command_line

    line = command_line(["sweep", "exp file.toml", "--storage", "postgresql://user:s3cret@db.example/optuna"])
    assert "s3cret" not in line
    assert line == "harness sweep 'exp file.toml' --storage 'postgresql://user:***@db.example/optuna'"  # as a shell reads it
    joined = command_line(["sweep", "--storage=postgresql://user:s3cret@db.example/optuna"])
    assert joined == "harness sweep '--storage=postgresql://user:***@db.example/optuna'"
