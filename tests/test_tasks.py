"""Tasks: shapes and the I/O contract, splits, determinism, baselines, the MNIST path through
torchvision's real IDX reader (on files written here, and on Debian's Fashion-MNIST), and one
short training run per io kind."""

from __future__ import annotations

import gzip
import math
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.archs import IO_KINDS, create_model, get_model_fn, list_models, model_options
from harness.cli import main
from harness.config import validate
from harness.errors import HarnessError
from harness.runner import build
from harness.tasks import describe_task, list_tasks, load_task, task_defaults
from harness.tasks import mnist as mnist_module
from harness.tasks.metrics import accuracy, higher_is_better, list_metrics, symbol_accuracy
from harness.train import fit
from tests.conftest import EXPERIMENTS
from tests.idx_files import FILES, idx_bytes, write_mnist

N_TRAIN_IDX, N_TEST_IDX = 60, 20
MNIST_NAMES = [f"{d}-{f}" for d in ("mnist", "fashion") for f in ("rows", "pixels", "permuted")]

# name → (options, io, x shape per example, y shape per example, train + val, test): the sizes the
# built-in tasks promise. Tests of the task contract run over every registered task instead.
TASKS = {
    "mnist1d": ({}, "many-to-one", (40, 1), (), 4000, 1000),
    "mnist1d-generate": ({"train_size": 300, "test_size": 50}, "one-to-many", (12,), (40, 1), 300, 50),
    "digits": ({}, "many-to-one", (8, 8), (), 1438, 359),
    "digits-flat": ({}, "one-to-one", (64,), (), 1438, 359),
    "adding": ({"seq_len": 20, "train_size": 300, "test_size": 50}, "many-to-one", (20, 2), (1,), 300, 50),
    "copy": ({"delay": 5, "train_size": 300, "test_size": 50}, "many-to-many", (25, 10), (25,), 300, 50),
    "selective-copy": ({"seq_len": 20, "n_tokens": 4, "train_size": 300, "test_size": 50}, "many-to-many", (24, 10), (24,),
                       300, 50),
    "mqar": ({"n_pairs": 4, "n_queries": 3, "gap": 2, "train_size": 300, "test_size": 50}, "many-to-many", (13, 65), (13,),
             300, 50),
    "files": ({"path": str(EXPERIMENTS.parent / "examples" / "bearings.csv"), "id_column": "machine",
               "time_column": "minute", "label_column": "state"}, "many-to-one", (24, 2), (), 72, 18),
    "ucr": ({"dataset": "GunPoint", "val_size": 0.1}, "many-to-one", (150, 1), (), 50, 150),
    **{name: ({}, "many-to-one", (28, 28) if name.endswith("rows") else (784, 1), (), N_TRAIN_IDX, N_TEST_IDX)
       for name in MNIST_NAMES},
}


@pytest.fixture(scope="session")
def idx_root(tmp_path_factory) -> Path:
    """A data root with tiny MNIST files in torchvision's layout (plain) and Fashion-MNIST
    files in `fashion-mnist/` (gzip'd, different content)."""
    root = tmp_path_factory.mktemp("data")
    write_mnist(root / "MNIST" / "raw", N_TRAIN_IDX, N_TEST_IDX, gz=False, seed=0)
    write_mnist(root / "fashion-mnist", N_TRAIN_IDX, N_TEST_IDX, gz=True, seed=10)
    return root


def load(name: str, idx_root: Path, **extra):
    """A registered task, small: its test-size options if it has some, the tiny IDX files if it reads files.
    `ucr` skips where aeon, its optional reader, is not installed (there it is a one-line error)."""
    if name == "ucr":
        pytest.importorskip("aeon", reason="the ucr task needs aeon: pip install 'harness[ucr]'")
    options = dict(TASKS[name][0]) if name in TASKS else {}
    if "data_dir" in task_defaults(name):
        options |= {"data_dir": str(idx_root), "download": False}
    return load_task(name, **options | extra)


def read_written(idx_root: Path, fashion: bool) -> dict[str, np.ndarray]:
    """The payload bytes of the files `idx_root` holds, read without torchvision."""
    folder = idx_root / ("fashion-mnist" if fashion else "MNIST/raw")
    out = {}
    for f in FILES:
        data = gzip.decompress((folder / f"{f}.gz").read_bytes()) if fashion else (folder / f).read_bytes()
        out[f] = np.frombuffer(data[8 if "labels" in f else 16 :], np.uint8)
    return out


def rows(x: torch.Tensor) -> set[bytes]:
    return {r.numpy().tobytes() for r in x.reshape(len(x), -1)}


def test_every_task_is_listed_with_its_shape():
    assert set(TASKS) <= set(list_tasks())
    described = set()
    for name in list_tasks():
        line = describe_task(name)
        ios = [io for io in IO_KINDS if f"{io}:" in line]
        assert len(ios) == 1 and "→" in line, line
        described.add(ios[0])
    assert described == set(IO_KINDS)  # the built-in tasks cover every io kind


@pytest.mark.parametrize("name", list_tasks())
def test_every_registered_task_keeps_the_io_contract(name, idx_root):
    """What harness.archs and the loop rely on, for any task: dtypes, shapes by io kind, labels in
    range, a registered metric and loss, and a real model's output the loss and metric accept."""
    task = load(name, idx_root)
    assert task.name == name and task.io in IO_KINDS and task.metric in list_metrics()
    assert f"{task.io}:" in describe_task(name)  # `harness list tasks` says the io kind the task has
    classify = task.loss == "cross_entropy"
    for which in ("train", "val", "test"):
        x, y = task.split(which)
        assert len(x) == len(y) > 0
        assert x.dtype == torch.float32 and torch.isfinite(x).all()
        assert y.dtype == (torch.long if classify else torch.float32)
        if classify:
            labelled = y[y != -100]
            assert 0 <= int(labelled.min()) and int(labelled.max()) < task.output_size
        if task.io in ("one-to-one", "one-to-many"):
            assert x.shape[1:] == (task.input_size,)
        else:
            assert x.shape[1:] == (task.seq_len, task.input_size)
        if task.io in ("many-to-many", "one-to-many"):
            assert y.shape[1] == task.seq_len
    if task.io == "one-to-one":
        assert task.seq_len == 1
    for arch in list_models():  # every registered family reads the task and feeds its loss
        torch.manual_seed(0)
        small = {"hidden_size": 8} if "hidden_size" in model_options(get_model_fn(arch)) else {}
        model = create_model(arch, input_size=task.input_size, output_size=task.output_size, io=task.io,
                             seq_len=task.seq_len, **small)
        out = model(task.x_val[:4])
        loss, metric = task.loss_fn(out, task.y_val[:4]), task.metric_fn(out, task.y_val[:4])
        assert loss.ndim == metric.ndim == 0 and torch.isfinite(loss) and torch.isfinite(metric), arch
        loss.backward()  # the loss reaches every parameter (one step from a zero state: not the recurrent ones)
        assert all(p.grad is not None for p in model.parameters()) or task.seq_len == 1, arch


@pytest.mark.parametrize("name", TASKS)
def test_shapes_and_split_sizes(name, idx_root):
    _, io, x_shape, y_shape, n_train_val, n_test = TASKS[name]
    task = load(name, idx_root)
    assert task.io == io
    assert len(task.x_train) + len(task.x_val) == n_train_val and len(task.x_val) == round(0.1 * n_train_val)
    assert len(task.x_test) == n_test
    for which in ("train", "val", "test"):
        x, y = task.split(which)
        assert tuple(x.shape[1:]) == x_shape and tuple(y.shape[1:]) == y_shape


# (files and ucr standardise with the training split's statistics, so a new validation split
# rescales every split: test_files_task.py checks that their test sequences stay the same.)
@pytest.mark.parametrize("name", [n for n in list_tasks() if "split_seed" in task_defaults(n) and n not in ("files", "ucr")])
def test_splits_are_disjoint_and_deterministic(name, idx_root):
    """Every task with a validation split seed: disjoint splits, fixed by their seeds."""
    task = load(name, idx_root)
    train = rows(task.x_train)
    assert len(train) == len(task.x_train)  # no example repeats within the split
    assert not train & rows(task.x_val) and not train & rows(task.x_test) and not rows(task.x_val) & rows(task.x_test)
    again = load(name, idx_root)
    assert again.split_hashes() == task.split_hashes()
    other = load(name, idx_root, split_seed=1)
    assert other.split_hashes()["val"] != task.split_hashes()["val"]
    assert other.split_hashes()["test"] == task.split_hashes()["test"]  # validation never moves the test set
    assert rows(other.x_train) | rows(other.x_val) == train | rows(task.x_val)


@pytest.mark.parametrize("name", ["adding", "copy", "mnist1d-generate"])
def test_generated_data_follows_its_seed(name, idx_root):
    task = load(name, idx_root)
    assert load(name, idx_root, data_seed=1).split_hashes()["train"] != task.split_hashes()["train"]
    bigger = load(name, idx_root, train_size=400)
    assert bigger.split_hashes()["test"] == task.split_hashes()["test"]  # the test set is its own stream


def test_digits_test_split_follows_test_seed():
    a, b = load_task("digits"), load_task("digits", test_seed=1)
    assert a.split_hashes()["test"] != b.split_hashes()["test"]
    assert rows(a.x_train) | rows(a.x_val) | rows(a.x_test) == rows(b.x_train) | rows(b.x_val) | rows(b.x_test)
    flat = load_task("digits-flat")
    assert torch.equal(flat.x_test, a.x_test.reshape(len(a.x_test), 64))


def test_n_train_keeps_the_first_examples():
    full = load_task("adding", seq_len=10, train_size=200, test_size=10)
    few = load_task("adding", seq_len=10, train_size=200, test_size=10, n_train=7)
    assert torch.equal(few.x_train, full.x_train[:7]) and torch.equal(few.x_val, full.x_val)


def test_adding_targets_and_baseline():
    task = load_task("adding", seq_len=50, train_size=30_000, val_size=20_000, test_size=10)
    x, y = task.x_train, task.y_train
    markers = x[..., 1]
    assert torch.equal(markers.sum(1), torch.full((len(x),), 2.0))
    assert torch.equal(markers[:, :25].sum(1), torch.ones(len(x)))  # one marker in each half
    assert torch.allclose((x[..., 0] * markers).sum(1, keepdim=True), y)
    assert 0 <= float(x[..., 0].min()) and float(x[..., 0].max()) < 1
    assert task.baseline == pytest.approx(1 / 6, abs=0.006)


def test_copy_layout_and_baseline():
    delay = 30
    task = load_task("copy", delay=delay, train_size=6000, val_size=3000, test_size=10)
    x, y = task.x_train, task.y_train
    seq = x.argmax(-1)
    assert torch.equal(x.sum(-1), torch.ones(seq.shape))  # one-hot
    assert torch.equal(y[:, -10:], seq[:, :10]) and not y[:, :-10].any()
    assert bool((seq[:, :10] >= 1).all() and (seq[:, :10] <= 8).all())
    assert torch.equal(seq[:, 10 + delay - 1], torch.full((len(x),), 9)) and int((seq == 9).sum()) == len(x)
    assert task.baseline == pytest.approx(10 * math.log(8) / (delay + 20), rel=0.01)


def test_symbol_accuracy_counts_only_the_reproduced_symbols():
    y = torch.tensor([[0, 0, 3, 5]])
    out = torch.nn.functional.one_hot(torch.tensor([[1, 2, 3, 4]]), 9).float()
    assert symbol_accuracy(out, y).item() == 0.5  # wrong blanks do not count
    assert accuracy(out, y).item() == 0.25
    assert higher_is_better("symbol_accuracy") and load_task("copy", delay=1, train_size=20, test_size=5).maximize


def test_mnist1d_generate_renders_templates():
    task = load_task("mnist1d-generate", train_size=400, test_size=10)
    x, y = task.x_train, task.y_train[..., 0]
    onset = (x[:, 11] * 20).round().long()
    for i in range(20):
        signal = y[i].nonzero().flatten()
        assert int(signal.min()) >= onset[i] and int(signal.max()) < onset[i] + 20
    cls, scale = x[:, :10].argmax(1), x[:, 10] + 1
    same = ((cls == cls[0]) & (onset == onset[0])).nonzero().flatten()
    assert len(same) > 1  # two renderings of one template at one onset differ only by their scales
    assert torch.allclose(y[same[1]] / scale[same[1]], y[same[0]] / scale[same[0]], atol=1e-5)
    assert task.baseline > 0.5


# ---- MNIST family through torchvision's reader ---------------------------------------------


@pytest.mark.parametrize("name", MNIST_NAMES)
def test_mnist_reads_the_files_written(name, idx_root):
    written = read_written(idx_root, fashion=name.startswith("fashion"))
    images = torch.from_numpy(written["t10k-images-idx3-ubyte"].copy()).reshape(-1, 784).float() / 255
    task = load(name, idx_root)
    assert torch.equal(task.y_test, torch.from_numpy(written["t10k-labels-idx1-ubyte"].astype(np.int64)))
    got = task.x_test.reshape(len(task.x_test), 784)
    if not name.endswith("permuted"):
        assert torch.equal(got, images)
    else:  # the same one permutation of pixel positions for every image of every split
        assert torch.equal(got.sort(1).values, images.sort(1).values)
        pixels = load(name.replace("permuted", "pixels"), idx_root)
        every = lambda t: torch.cat([t.x_train, t.x_val, t.x_test])[..., 0].T  # noqa: E731 - (784, N) columns
        where = {col.numpy().tobytes(): j for j, col in enumerate(every(pixels))}
        perm = [where[col.numpy().tobytes()] for col in every(task)]
        assert sorted(perm) == list(range(784)) and perm != list(range(784))
        assert load(name, idx_root, perm_seed=1).split_hashes() != task.split_hashes()
    train_images = written["train-images-idx3-ubyte"].reshape(-1, 784)
    assert rows(torch.cat([task.x_train, task.x_val]).reshape(-1, 784).sort(1).values) == rows(
        (torch.from_numpy(train_images.copy()).float() / 255).sort(1).values)


def test_data_root_from_harness_data_and_layouts(tmp_path, monkeypatch, idx_root):
    monkeypatch.setenv("HARNESS_DATA", str(idx_root))
    assert len(load_task("mnist-rows", download=False).x_test) == N_TEST_IDX
    flat = tmp_path / "flat"
    write_mnist(flat, 30, 10, gz=True, seed=3)
    assert len(load_task("mnist-rows", data_dir=str(flat), download=False).x_test) == 10  # a named folder itself
    monkeypatch.setenv("HARNESS_DATA", str(flat))
    with pytest.raises(HarnessError, match="not found"):  # a root's own files could be either dataset
        load_task("mnist-rows", download=False)


def test_images_are_cached_and_the_cache_follows_the_files(tmp_path, cache_dir):
    folder = tmp_path / "MNIST" / "raw"
    write_mnist(folder, 30, 10, gz=True, seed=5)
    cached = lambda: set((cache_dir / "idx").glob("MNIST-*.pt"))  # noqa: E731 - the session's cache is shared
    before = cached()
    first = load_task("mnist-rows", data_dir=str(tmp_path), download=False)
    (entry,) = cached() - before  # these files got their own cache entry
    # A second load reads the cache, not the files: what it returns is what the entry holds.
    arrays = torch.load(entry, weights_only=True)
    torch.save({**arrays, "y_test": (arrays["y_test"] + 1) % 10}, entry)
    again = load_task("mnist-rows", data_dir=str(tmp_path), download=False)
    assert torch.equal(again.y_test, (first.y_test + 1) % 10) and cached() - before == {entry}
    write_mnist(folder, 40, 12, gz=True, seed=6)  # replaced files are read again, not served stale
    second = load_task("mnist-rows", data_dir=str(tmp_path), download=False)
    assert len(second.x_test) == 12 and len(first.x_test) == 10 and len(cached() - before) == 2


def test_missing_files_say_what_where_and_how(tmp_path, monkeypatch):
    monkeypatch.setitem(mnist_module.SOURCES, "fashion", (*mnist_module.SOURCES["fashion"][:3], ()))  # no Debian dir
    for name, needs_debian_hint in (("mnist-rows", False), ("fashion-pixels", True)):
        with pytest.raises(HarnessError) as e:
            load_task(name, data_dir=str(tmp_path), download=False)
        msg = str(e.value)
        assert "\n" not in msg and msg.startswith("task.data_dir:")
        assert all(f in msg for f in FILES) and str(tmp_path) in msg
        assert "--data-dir" in msg and "HARNESS_DATA" in msg and "download is off" in msg
        assert ("apt-get install dataset-fashion-mnist" in msg) == needs_debian_hint
    partial = tmp_path / "mnist"
    write_mnist(partial, 10, 5, gz=True)
    (partial / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(HarnessError, match=r"mnist lacks t10k-labels-idx1-ubyte"):
        load_task("mnist-rows", data_dir=str(tmp_path), download=False)


def _truncate(folder: Path) -> str:
    path = folder / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes())[:5000]))
    return path.name


def _not_gzip(folder: Path) -> str:
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(b"this is not gzip data at all")
    return "t10k-images-idx3-ubyte.gz"


def _bad_magic(folder: Path) -> str:
    (folder / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x77\x01" + b"\x00" * 20))
    return "train-labels-idx1-ubyte.gz"


def _wrong_count(folder: Path) -> str:
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.zeros(3, np.uint8))))
    return "t10k-labels-idx1-ubyte.gz"


def _wrong_size(folder: Path) -> str:
    (folder / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.zeros((30, 16, 16), np.uint8))))
    return "train-images-idx3-ubyte.gz"


@pytest.mark.parametrize("corrupt", [_truncate, _not_gzip, _bad_magic, _wrong_count, _wrong_size])
def test_a_corrupt_idx_file_is_named(corrupt, tmp_path):
    folder = tmp_path / "MNIST" / "raw"
    write_mnist(folder, 30, 10, gz=True, seed=7)
    culprit = corrupt(folder)
    with pytest.raises(HarnessError) as e:
        load_task("mnist-rows", data_dir=str(tmp_path), download=False)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("task.data_dir:") and culprit in msg
    assert "not a readable IDX file" in msg or "do not match (10 images, 3 labels)" in msg


@pytest.mark.parametrize(("options", "field"), [
    ({"download": "yes"}, "task.download"), ({"perm_seed": -1}, "task.perm_seed"), ({"val_size": 1.5}, "task.val_size"),
])
def test_bad_mnist_options_name_the_field(options, field, idx_root):
    with pytest.raises(HarnessError, match=field):
        load_task("mnist-permuted", data_dir=str(idx_root), **{"download": False, **options})


@pytest.mark.parametrize(("name", "options", "field"), [
    ("copy", {"delay": 0}, "task.delay"), ("adding", {"seq_len": 1}, "task.seq_len"),
    ("adding", {"train_size": 2.5}, "task.train_size"), ("digits", {"test_size": 0}, "task.test_size"),
    ("mnist1d", {"data_dir": "x"}, "task.data_dir"),
])
def test_bad_options_name_the_field(name, options, field):
    with pytest.raises(HarnessError, match=field):
        load_task(name, **options)


def test_cli_missing_mnist_is_one_line_exit_2(workdir, capsys):
    rc = main(["run", str(EXPERIMENTS / "quickstart.toml"), "--data-dir", str(workdir / "nothing"),
               "--set", "task.name=mnist-rows", "--set", "task.download=false", "--set", "train.epochs=1"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert err.count("\n") == 1 and err.startswith("harness: error: task.data_dir: MNIST IDX files not found")
    assert str(workdir / "nothing" / "MNIST" / "raw") in err


def test_cli_runs_mnist_rows_from_a_data_dir(workdir, capsys, idx_root):
    rc = main(["run", str(EXPERIMENTS / "quickstart.toml"), "--data-dir", str(idx_root), "--arch", "lstm",
               "--set", "task.name=mnist-rows", "--set", "task.download=false", "--set", "train.epochs=1",
               "--set", "model.hidden_size=8"])
    assert rc == 0, capsys.readouterr().err
    assert "lstm on mnist-rows: best val accuracy" in capsys.readouterr().out


@pytest.mark.skipif(not all((mnist_module.DEBIAN_FASHION / f"{f}.gz").is_file() for f in FILES),
                    reason="Debian's dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist; CI installs it)")
def test_fashion_found_where_debian_installs_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_DATA", str(tmp_path))  # nothing there: only the Debian folder has it
    task = load_task("fashion-rows", download=False)
    assert (len(task.x_train), len(task.x_val), len(task.x_test)) == (54_000, 6_000, 10_000)
    assert task.x_train.shape[1:] == (28, 28) and 0 <= float(task.x_train.min()) and float(task.x_train.max()) == 1.0
    assert torch.equal(task.y_test.bincount(), torch.full((10,), 1000))  # Fashion-MNIST's balanced test set
    assert len(rows(task.x_test)) > 9_900


# ---- one short training run per io kind ----------------------------------------------------


@pytest.mark.parametrize(("io", "task", "arch", "hidden", "epochs", "check"), [
    ("one-to-one", {"name": "digits-flat"}, "mlp", 64, 5, lambda r, t: r.test_metric > 0.85),
    ("many-to-one", {"name": "digits"}, "gru", 32, 5, lambda r, t: r.test_metric > 0.8),
    # beating the memoryless baseline needs memory: the copy wiring works end to end
    ("many-to-many", {"name": "copy", "delay": 1, "train_size": 2000, "test_size": 200}, "gru", 64, 10,
     lambda r, t: r.test_loss < 0.9 * t.baseline and r.test_metric > 0.25),
    ("one-to-many", {"name": "mnist1d-generate", "train_size": 1000, "test_size": 200}, "gru", 32, 5,
     lambda r, t: r.test_loss < 0.5 * t.baseline),
])
def test_training_learns_each_io_kind(io, task, arch, hidden, epochs, check):
    exp = validate({"task": task, "model": {"arch": arch, "hidden_size": hidden},
                    "train": {"epochs": epochs, "lr": 1e-2, "batch_size": 32, "device": "cpu", "seed": 0}})
    t, model = build(exp)
    assert t.io == io
    result = fit(model, t, exp.train, device=torch.device("cpu"))
    losses = [h["train_loss"] for h in result.history]
    assert losses[-1] < losses[0]
    # The chosen epoch is the best by the task's own direction (mse: lowest; accuracies: highest).
    vals = [h[f"val_{t.metric}"] for h in result.history]
    assert result.best_val == (max(vals) if t.maximize else min(vals)) == vals[result.best_epoch - 1]
    assert check(result, t), (result.test_loss, result.test_metric, t.baseline)


@pytest.mark.parametrize("arch", ["indrnn", "ornn", "lru", "mingru", "minlstm", "mamba"])
def test_each_modern_family_learns_the_digits_read_row_by_row(arch):
    """The families of harness.archs.sequence train in the one loop and learn: 8×8 digits by rows,
    5 epochs untuned, where guessing scores 0.1."""
    exp = validate({"task": {"name": "digits"}, "model": {"arch": arch, "hidden_size": 32},
                    "train": {"epochs": 5, "lr": 1e-2, "batch_size": 32, "device": "cpu", "seed": 0}})
    t, model = build(exp)
    result = fit(model, t, exp.train, device=torch.device("cpu"), gradflow=True)
    assert result.test_metric > 0.6, result.test_metric
    flow = result.gradflow  # measured through the layer's step-by-step states
    assert len(flow.state["forward"]) == t.seq_len and math.isfinite(statistics.median(flow.rates["forward"]))


def test_selective_copy_scatters_the_symbols_in_order_and_asks_for_them_at_the_markers():
    task = load_task("selective-copy", seq_len=30, n_tokens=5, vocab=6, train_size=200, test_size=20)
    tokens = task.x_train.argmax(-1)  # 0 noise, 1..6 symbols, 7 the marker
    for seq, target in zip(tokens, task.y_train, strict=True):
        symbols = seq[:30][seq[:30] > 0]
        assert len(symbols) == 5 and (seq[30:] == 7).all()
        assert target[:30].eq(-100).all() and torch.equal(target[30:], symbols - 1)
    starts = {int((seq[:30] > 0).nonzero()[0]) for seq in tokens}
    assert len(starts) > 5  # the spacing varies from sequence to sequence: selection by content
    assert task.baseline == pytest.approx(math.log(6), rel=0.05) and task.metric_baseline < 0.3


def test_mqar_asks_each_queried_key_for_the_value_it_was_paired_with():
    task = load_task("mqar", n_pairs=6, n_queries=4, gap=3, n_keys=10, n_values=7, train_size=200, test_size=20)
    tokens = task.x_train.argmax(-1)  # 0 noise, 1..10 keys, 11..17 values
    for seq, target in zip(tokens, task.y_train, strict=True):
        pairs = dict(zip(seq[0:12:2].tolist(), (seq[1:12:2] - 11).tolist(), strict=True))
        assert len(pairs) == 6 and all(1 <= k <= 10 for k in pairs) and (seq[12:15] == 0).all()
        queries = seq[15:].tolist()
        assert len(set(queries)) == 4 and target[:15].eq(-100).all()
        assert target[15:].tolist() == [pairs[k] for k in queries]
    assert task.baseline == pytest.approx(math.log(7), rel=0.05)


@pytest.mark.parametrize(("options", "message"), [
    ({"n_tokens": 30, "seq_len": 20}, r"^task\.n_tokens: 30 symbols cannot be scattered over seq_len = 20"),
    ({"task": "mqar", "n_pairs": 9, "n_keys": 8}, r"^task\.n_pairs: 9 pairs need as many distinct keys"),
    ({"task": "mqar", "n_queries": 9}, r"^task\.n_queries: each query asks a different pair"),
])
def test_recall_tasks_refuse_impossible_settings_in_one_line(options, message):
    name = options.pop("task", "selective-copy")
    with pytest.raises(HarnessError, match=message):
        load_task(name, **options, train_size=10, test_size=5)


def test_a_tasks_metric_baseline_is_the_best_input_blind_predictors_test_metric():
    from collections import Counter

    digits = load_task("digits")
    counts = Counter(digits.y_train.tolist())
    majority = max(range(10), key=lambda c: (counts[c], -c))  # the class scoring best on the training targets
    assert digits.metric_baseline == pytest.approx((digits.y_test == majority).float().mean().item())
    adding = load_task("adding", seq_len=8, train_size=300, test_size=60)
    mean = adding.y_train.float().mean(0)
    assert adding.metric_baseline == pytest.approx(((adding.y_test - mean) ** 2).mean().item(), rel=1e-5)
    copy = load_task("copy", delay=5, train_size=200, test_size=50)
    assert 0.05 < copy.metric_baseline < 0.25  # one symbol of eight predicted everywhere
