"""The `files` task: a user's own CSV, Parquet or .npz becomes a task with no code. Small real
files written here, read by pandas and NumPy; every mistake in a file is one line."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from harness.cli import main
from harness.errors import HarnessError
from harness.tasks import load_task


def series(n: int = 40, steps: int = 6, seed: int = 0) -> pd.DataFrame:
    """A long table: sequences whose class ('up' or 'down') is the sign of their trend, rows shuffled."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        label = "up" if i % 2 else "down"
        slope = 1.0 if label == "up" else -1.0
        for t in range(steps):
            rows.append({"sid": f"s{i:03d}", "t": t, "a": slope * t + rng.normal(0, 0.1), "b": 10 + rng.normal(), "label": label})
    return pd.DataFrame(rows).sample(frac=1, random_state=0)


def ragged(n: int, shortest: int, kinds: int) -> pd.DataFrame:
    """`series(n)` with sequences of `shortest` to `shortest + kinds - 1` steps (by sequence number)."""
    df = series(n=n)
    return df[df["t"] < shortest + df["sid"].str[1:].astype(int) % kinds]


def test_a_csv_becomes_a_many_to_one_classification_split_by_sequence_and_stratified(tmp_path):
    df = series()
    path = tmp_path / "series.csv"
    df.to_csv(path, index=False)
    task = load_task("files", path=str(path), id_column="sid", time_column="t", test_size=0.25, val_size=0.2)
    assert (task.io, task.loss, task.metric, task.output_size, task.input_size, task.seq_len) == (
        "many-to-one", "cross_entropy", "accuracy", 2, 2, 6)
    assert (len(task.x_train), len(task.x_val), len(task.x_test)) == (24, 6, 10)
    for y in (task.y_train, task.y_test):  # stratified: both classes in equal shares
        assert y.tolist().count(0) == y.tolist().count(1)
    # each sequence in time order: 'a' rises for 'up' (class 1), falls for 'down' (class 0)
    rising = task.x_train[:, -1, 0] > task.x_train[:, 0, 0]
    assert torch.equal(rising, task.y_train == 1)
    # standardised with the training split's statistics only
    assert torch.allclose(task.x_train.mean((0, 1)), torch.zeros(2), atol=1e-5)
    assert torch.allclose(task.x_train.std((0, 1)), torch.ones(2), atol=1e-5)
    assert not torch.allclose(task.x_test.mean((0, 1)), torch.zeros(2), atol=1e-3)
    # no sequence in two splits: every sequence's rows are distinct, so compare whole sequences
    seen = [tuple(s.flatten().tolist()) for s in (*task.x_train, *task.x_val, *task.x_test)]
    assert len(set(seen)) == 40


def test_a_new_validation_split_keeps_the_test_sequences(tmp_path):
    df = series()
    df["n"] = df["sid"].str[1:].astype(float)  # a feature naming the sequence
    df.to_csv(tmp_path / "s.csv", index=False)
    one, other = (load_task("files", path=str(tmp_path / "s.csv"), id_column="sid", time_column="t", split_seed=seed)
                  for seed in (0, 1))
    names = [t.x_test[:, 0, -1].numpy() for t in (one, other)]  # standardised by different training splits
    assert np.corrcoef(*names)[0, 1] == pytest.approx(1.0)  # the same sequences, in the same order
    assert not torch.equal(one.y_val, other.y_val) or not torch.allclose(one.x_val, other.x_val)


def test_a_label_per_step_makes_a_many_to_many_regression_and_parquet_reads_the_same(tmp_path):
    df = series(n=20)
    df["label"] = df["a"] * 2.5  # a value per step
    df.to_parquet(tmp_path / "s.parquet")
    df.to_csv(tmp_path / "s.csv", index=False)
    tasks = [load_task("files", path=str(tmp_path / name), id_column="sid", time_column="t", feature_columns=["a"])
             for name in ("s.parquet", "s.csv")]
    task = tasks[0]
    assert (task.io, task.loss, task.metric, task.output_size, task.input_size) == ("many-to-many", "mse", "mse", 1, 1)
    assert task.y_train.shape == (len(task.x_train), 6, 1) and task.baseline > 0
    assert torch.allclose(tasks[0].x_train, tasks[1].x_train) and torch.allclose(tasks[0].y_test, tasks[1].y_test)


def test_an_npz_of_arrays_with_a_label_per_sequence(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 5, 3)).astype(np.float32)
    y = (x[:, :, 0].sum(1) > 0).astype(np.int64)
    np.savez(tmp_path / "a.npz", x=x, y=y)
    task = load_task("files", path=str(tmp_path / "a.npz"))
    assert (task.io, task.output_size, task.input_size, task.seq_len) == ("many-to-one", 2, 3, 5)
    assert len(task.x_train) + len(task.x_val) + len(task.x_test) == 30


def test_the_table_can_carry_its_own_train_and_test_split(tmp_path):
    df = series(n=20)
    df["part"] = np.where(df["sid"] < "s005", "test", "train")
    df.to_csv(tmp_path / "s.csv", index=False)
    task = load_task("files", path=str(tmp_path / "s.csv"), id_column="sid", time_column="t", split_column="part")
    assert len(task.x_test) == 5 and len(task.x_train) + len(task.x_val) == 15


def test_sequences_of_different_lengths_are_padded_and_carry_their_lengths(tmp_path):
    df = ragged(30, 2, 5)  # 2 to 6 steps
    df["label"] = np.where(df["t"] % 2 == 0, "even", "odd")  # a label per step
    df.to_csv(tmp_path / "s.csv", index=False)
    task = load_task("files", path=str(tmp_path / "s.csv"), id_column="sid", time_column="t")
    assert task.variable_length and task.io == "many-to-many" and task.seq_len == 6
    for x, y, n in zip(task.x_train, task.y_train, task.len_train, strict=True):
        assert not x[n:].any() and (y[n:] == -100).all() and (y[:n] >= 0).all()
    assert sorted(torch.cat([task.len_train, task.len_val, task.len_test]).tolist()) == sorted([2, 3, 4, 5, 6] * 6)
    df["label"] = df["a"] * 1.5  # values per step: NaN where a sequence has ended
    df.to_csv(tmp_path / "v.csv", index=False)
    values = load_task("files", path=str(tmp_path / "v.csv"), id_column="sid", time_column="t")
    n = int(values.len_train[0])
    assert values.loss == "mse" and torch.isnan(values.y_train[0, n:]).all() and not torch.isnan(values.y_train[0, :n]).any()


def test_a_files_experiment_of_different_lengths_trains_end_to_end(tmp_path, workdir):
    ragged(60, 3, 4).to_csv(workdir / "series.csv", index=False)
    (workdir / "var.toml").write_text(
        'name = "var"\n[task]\nname = "files"\npath = "series.csv"\nid_column = "sid"\ntime_column = "t"\n'
        '[model]\narch = "bigru"\nhidden_size = 8\n[train]\nepochs = 2\nlr = 0.02\nbatch_size = 8\n'
        '[tracking]\nmlflow_model = true\n')
    assert main(["run", "var.toml"]) == 0


def test_a_model_that_cannot_read_lengths_is_refused_for_sequences_of_different_lengths(tmp_path, workdir):
    ragged(20, 3, 3).to_csv(workdir / "series.csv", index=False)
    (workdir / "fixed.py").write_text(
        "from torch import nn\n"
        "class Last(nn.Module):\n"
        "    def __init__(self, i, o):\n        super().__init__(); self.gru, self.head = nn.GRU(i, 8, batch_first=True), nn.Linear(8, o)\n"
        "    def forward(self, x):\n        return self.head(self.gru(x)[0][:, -1])\n"
        "def last(*, input_size, output_size, io, seq_len=1):\n    return Last(input_size, output_size)\n")
    (workdir / "p.toml").write_text('name = "p"\n[task]\nname = "files"\npath = "series.csv"\nid_column = "sid"\n'
                                    'time_column = "t"\n[model]\narch = "fixed:last"\n')
    with pytest.raises(HarnessError, match=r"^model\.arch: fixed:last's forward takes no `lengths`, and the task's sequences differ"):
        from harness.config import load_experiment
        from harness.runner import prepare
        prepare(load_experiment(workdir / "p.toml"))


def test_a_files_experiment_trains_end_to_end(tmp_path, workdir):
    series(n=60).to_csv(workdir / "series.csv", index=False)
    (workdir / "mine.toml").write_text(
        'name = "mine"\n[task]\nname = "files"\npath = "series.csv"\nid_column = "sid"\ntime_column = "t"\n'
        '[model]\narch = "gru"\nhidden_size = 8\n[train]\nepochs = 3\nlr = 0.02\nbatch_size = 8\n'
        '[tracking]\nmlflow_model = false\n')
    assert main(["run", "mine.toml"]) == 0


def bad(tmp_path, df: pd.DataFrame, **options):
    path = tmp_path / "bad.csv"
    df.to_csv(path, index=False)
    return lambda: load_task("files", path=str(path), **{"id_column": "sid", "time_column": "t", **options})


@pytest.mark.parametrize(("change", "options", "message"), [
    (lambda df: df.drop(columns=["label"]), {}, r"^task\.label_column: column 'label' is not in the file; it has sid, t, a, b"),
    (lambda df: df.assign(a=df["a"].where(df.index != df.index[3])), {}, r"^task: column 'a' has 1 missing value\(s\) \(NaN\)"),
    (lambda df: df.assign(label=np.where(df["t"] > 2, "up", "down")), {"io": "many-to-one"},
     r"^task: label 'label' varies inside sequence 's000'.*set io = 'many-to-many'"),
    (lambda df: df[(df["sid"] != "s001") | (df["t"] == 0)], {}, r"^task: sequence 's001' \(sid\) has 1 step; a sequence needs at least 2"),
    (lambda df: df.assign(b=df["b"].astype(object).where(df.index != df.index[0], "ten")), {},
     r"^task: feature column 'b' is not numeric \('ten' in it\)"),
    (lambda df: df.assign(part=np.where((df["sid"] == "s002") & (df["t"] == 0), "test", "train")), {"split_column": "part"},
     r"^task\.split_column: sequence 's002' appears in both train and test"),
    (lambda df: df, {"time_column": "when"}, r"^task\.time_column: column 'when' is not in the file"),
    (lambda df: pd.concat([df, df.iloc[:1]]), {}, r"^task\.time_column: sequence 's\d+' has two rows at t = \d+$"),
    (lambda df: df, {"target": "value"}, r"^task\.target: label 'label' holds text"),
    (lambda df: df.assign(b=df["b"].where(df.index != df.index[5], np.inf)), {}, r"^task: feature column 'b' holds infinite values"),
    (lambda df: df, {"id_column": "who", "split_column": "label"}, r"^task\.id_column: column 'who' is not in the file"),
])
def test_every_mistake_in_a_file_is_one_line_naming_it(tmp_path, change, options, message):
    with pytest.raises(HarnessError, match=message) as e:
        bad(tmp_path, change(series()), **options)()
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(("options", "message"), [
    ({}, r"^task\.path: name the file"),
    ({"path": "nowhere.csv"}, r"^task\.path: nowhere\.csv does not exist"),
    ({"path": "data.xlsx"}, r"^task\.path: 'data\.xlsx' is not a \.csv, \.parquet or \.npz file"),
])
def test_a_missing_or_unknown_file_is_one_line(options, message):
    with pytest.raises(HarnessError, match=message):
        load_task("files", **options)


def test_bad_npz_arrays_are_one_line_and_nothing_is_unpickled(tmp_path):
    ragged = np.empty(2, dtype=object)
    ragged[0], ragged[1] = np.zeros((3, 2)), np.zeros((4, 2))
    np.savez(tmp_path / "r.npz", x=ragged, y=np.zeros(2))
    with pytest.raises(HarnessError, match=r"^task\.path: r\.npz holds an object array .* zero-padded as x"):
        load_task("files", path=str(tmp_path / "r.npz"))
    np.savez(tmp_path / "s.npz", x=np.zeros((4, 5, 2), np.float32), y=np.zeros((4, 3)))
    with pytest.raises(HarnessError, match=r"^task\.path: y has 3 labels per sequence but x 5 steps"):
        load_task("files", path=str(tmp_path / "s.npz"))
    np.savez(tmp_path / "m.npz", x=np.zeros((4, 5, 2), np.float32), y=np.zeros(4))
    with pytest.raises(HarnessError, match=r"^task\.io: 'many-to-many' needs a label per step, but 'y' holds one per sequence"):
        load_task("files", path=str(tmp_path / "m.npz"), io="many-to-many")
    np.savez(tmp_path / "l.npz", x=np.zeros((4, 5, 2), np.float32), y=np.zeros(4), lengths=np.full(4, 3.0))
    with pytest.raises(HarnessError, match=r"^task\.path: lengths must hold one integer per sequence"):
        load_task("files", path=str(tmp_path / "l.npz"))


def test_bad_npz_arrays_are_one_line(tmp_path):
    np.savez(tmp_path / "a.npz", x=np.zeros((4, 5, 2), np.float32))
    with pytest.raises(HarnessError, match=r"^task\.path: a\.npz has no array 'y'; it has x"):
        load_task("files", path=str(tmp_path / "a.npz"))
    np.savez(tmp_path / "b.npz", x=np.zeros((4, 5, 2), np.float32), y=np.zeros(3))
    with pytest.raises(HarnessError, match=r"^task\.path: x holds 4 sequences but y 3 labels"):
        load_task("files", path=str(tmp_path / "b.npz"))
    x = np.zeros((4, 5, 2), np.float32)
    x[2, 1, 0] = np.nan
    np.savez(tmp_path / "c.npz", x=x, y=np.zeros(4))
    with pytest.raises(HarnessError, match=r"^task\.path: x\[2\] holds NaN"):
        load_task("files", path=str(tmp_path / "c.npz"))
