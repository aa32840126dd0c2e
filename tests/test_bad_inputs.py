"""Bad input, as a new user or an adversary types it: every case ends with exit 2, one line on
stderr naming the field or file at fault, and nothing written in the working folder (no
`mlflow.db`, `optuna.db` or journal); a corrupt store is reported the same way and left as it was.

Every case fails before any training: the corpus runs in seconds."""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import optuna
import pytest
import torch
from mlflow.tracking import MlflowClient

from harness.cli import main

# A tiny experiment (the adding problem, 10 steps, one small GRU, one epoch): were a case to
# train, it would take a second, not minutes.
BASE = """\
name = "bad"
[task]
name = "adding"
seq_len = 10
train_size = 128
test_size = 32
[model]
arch = "gru"
hidden_size = 4
[train]
epochs = 1
batch_size = 32
[tracking]
grad_stats_every = 0
checkpoint = false
settings_file = false
learning_curve = false
gradflow = false
test_per_example = false
system_metrics = false
[sweep]
sampler = "random"
pruner = "none"
n_trials = 1
repeat = 0
devices = ["cpu"]
"""

EXP = "exp.toml"  # the experiment file each case writes in its fresh working folder


@dataclass
class Case:
    """`argv` (EXP stands for the experiment file: BASE plus `toml`), what stderr must name, and
    the files or environment the case sets up."""

    id: str
    argv: list[str]
    names: str
    toml: str = ""
    files: dict[str, bytes] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)


def run(names: str, *args: str, toml: str = "", **kw) -> Case:
    return Case("", ["run", EXP, *args], names, toml, **kw)


def sweep(names: str, *args: str, toml: str = "", **kw) -> Case:
    return Case("", ["sweep", EXP, *args], names, toml, **kw)


def space(names: str, body: str, *args: str, section: str = "sweep.space") -> Case:
    return sweep(names, *args, toml=f"[{section}]\n{body}\n")


ABOUT_A_FILE = {"afile": b"a file, not a folder\n"}
SERVER_DOWN = {"MLFLOW_TRACKING_URI": "http://127.0.0.1:1"}  # port 1: nothing listens there
NO_GPU_7 = torch.cuda.device_count() <= 7  # cuda:7 is a bad device on this machine

CASES = {
    # The experiment file itself.
    "missing-file": Case("", ["run", "nope.toml"], "nope.toml"),
    "missing-sweep-file": Case("", ["sweep", "missing.toml"], "missing.toml"),
    "binary-file": Case("", ["run", "bin.toml"], "bin.toml", files={"bin.toml": bytes(range(256)) * 4}),
    "utf16-file": Case("", ["sweep", "u16.toml"], "u16.toml", files={"u16.toml": BASE.encode("utf-16")}),
    "not-toml": Case("", ["run", "broken.toml"], "broken.toml", files={"broken.toml": b"[train\nepochs = 1\n"}),
    "a-folder": Case("", ["run", "experiments"], "experiments", files={"experiments/x.txt": b""}),
    "unknown-top-key": run("colour", "--set", "colour=1"),
    "unknown-train-key": run("train.lr_rate", "--set", "train.lr_rate=0.1"),
    "name-with-space": run("name", "--set", "name='two words'"),
    "name-500-chars": sweep("name", "--study", "s" * 500),
    "name-300-chars-run": run("name", "--set", f"name={'r' * 300}"),
    # Training settings.
    "seed-beyond-64-bits": run("train.seed", "--set", f"train.seed={2**64}"),
    "seed-negative": run("train.seed", "--set", "train.seed=-1"),
    "epochs-true": run("train.epochs", "--set", "train.epochs=true"),
    "epochs-false-sweep": sweep("train.epochs", "--set", "train.epochs=false"),
    "epochs-zero": run("train.epochs", "--set", "train.epochs=0"),
    "epochs-float": run("train.epochs", "--set", "train.epochs=1.5"),
    "epochs-word": run("train.epochs", "--set", "train.epochs=ten"),
    "lr-true": run("train.lr", "--set", "train.lr=true"),
    "lr-negative": run("train.lr", "--set", "train.lr=-1"),
    "batch-size-zero": run("train.batch_size", "--set", "train.batch_size=0"),
    "optimizer-unknown": run("train.optimizer", "--set", "train.optimizer=adamax"),
    "momentum-one": run("train.momentum", "--set", "train.momentum=1.0"),
    "clip-norm-zero": run("train.clip_norm", "--set", "train.clip_norm=0"),
    "patience-true": run("train.patience", "--set", "train.patience=true"),
    "weight-decay-negative": run("train.weight_decay", "--set", "train.weight_decay=-0.1"),
    "device-word": run("train.device", "--device", "gpu"),
    "device-cuda7-run": run("train.device", "--device", "cuda:7"),
    "device-cuda7-sweep": sweep("cuda:7", "--devices", "cuda:7"),
    "device-mps-run": run("train.device", "--device", "mps"),
    "devices-word": sweep("sweep.devices", "--devices", "tpu"),
    "precision-unknown": run("train.precision", "--set", "train.precision=fp8"),
    "precision-fp16-cpu-run": run("train.precision", "--set", "train.precision=fp16", "--device", "cpu"),
    "precision-fp16-cpu-sweep": sweep("train.precision", "--set", "train.precision=fp16"),
    "precision-fp16-cpu-space": space("train.precision", '"train.precision" = ["fp32", "fp16"]'),
    "kernel-unknown": run("model.kernel", "--set", "model.kernel=cudnn"),
    "kernel-torch-sigmoid": sweep("model.kernel", "--set", "model.kernel=torch", "--set", "model.arch=rnn-sigmoid"),
    "grad-stats-negative": run("tracking.grad_stats_every", "--set", "tracking.grad_stats_every=-1"),
    "system-interval-zero": run("tracking.system_metrics_interval", "--set", "tracking.system_metrics_interval=0"),
    "checkpoint-number": run("tracking.checkpoint", "--set", "tracking.checkpoint=3"),
    # Model and task options.
    "arch-typo": run("lstmm", "--arch", "lstmm"),
    "arch-module-missing": run("model.arch", "--arch", "no_such_module:factory"),
    "hidden-size-zero": run("model.hidden_size", "--set", "model.hidden_size=0"),
    "hidden-size-true": run("model.hidden_size", "--set", "model.hidden_size=true"),
    "dropout-1.5": run("model.dropout", "--set", "model.dropout=1.5"),
    "activation-unknown": sweep("model.activation", "--set", "model.activation=foo"),
    "model-option-unknown": run("model.colour", "--set", "model.colour=1"),
    "task-unknown": run("nope", "--set", "task.name=nope"),
    "task-option-unknown": run("task.colour", "--set", "task.colour=1"),
    "task-seq-len-one": run("task.seq_len", "--set", "task.seq_len=1"),
    "task-n-train-zero": run("task.n_train", "--set", "task.n_train=0"),
    "task-n-train-true": run("task.n_train", "--set", "task.n_train=true"),
    "task-val-size-1.0": run("task.val_size", "--set", "task.val_size=1.0"),
    "data-dir-missing": Case("", ["run", "m.toml", "--data-dir", "no/such/folder"], "data_dir",
                             files={"m.toml": b'[task]\nname = "mnist-rows"\ndownload = false\n'}),
    # --set itself.
    "set-without-equals": run("--set", "--set", "train.epochs"),
    "set-through-a-value": run("train.lr", "--set", "train.lr.x=1"),
    "reference-without-source": run("reference", toml='[[reference]]\nfamily = "GRU"\nmetric = "mse"\nvalue = 1.0\n'),
    # The search space (checked for every choice and both ends of every range before anything is written).
    "space-key-typo": space("model.hiden_size", '"model.hiden_size" = [8, 16]'),
    "space-negative-sizes": space("model.hidden_size", '"model.hidden_size" = { low = -4, high = 0 }'),
    "space-dropout-choices": space("model.dropout", '"model.dropout" = [1.5, 2.0]'),
    "space-high-end-bad": space("model.dropout", '"model.dropout" = { low = 0.0, high = 1.5 }'),
    "space-lr-negative-low": space("train.lr", '"train.lr" = { low = -1.0, high = 1.0 }'),
    "space-optimizer-choice": space("train.optimizer", '"train.optimizer" = ["adam", "adamax"]'),
    "space-epochs-bool": space("train.epochs", '"train.epochs" = [true, 2]'),
    "space-task-option": space("task.n_train", '"task.n_train" = [0, 64]'),
    "space-task-seq-len": space("task.seq_len", '"task.seq_len" = { low = 1, high = 8 }'),
    "space-arch-typo": space("model.arch", '"model.arch" = ["gru", "lstmm"]'),
    "space-float-sizes": space("model.hidden_size", '"model.hidden_size" = { low = 4.5, high = 8.5 }'),
    "space-bad-prefix": space("foo.bar", '"foo.bar" = [1, 2]'),
    "space-empty-choices": space("model.hidden_size", '"model.hidden_size" = []'),
    "space-low-above-high": space("train.lr", '"train.lr" = { low = 0.1, high = 0.01 }'),
    "space-log-from-zero": space("train.lr", '"train.lr" = { low = 0.0, high = 0.1, log = true }'),
    "space-log-with-step": space("train.lr", '"train.lr" = { low = 0.001, high = 0.1, log = true, step = 0.001 }'),
    "space-step-not-dividing": space("model.hidden_size", '"model.hidden_size" = { low = 4, high = 9, step = 2 }'),
    "space-bool-bound": space("model.hidden_size", '"model.hidden_size" = { low = true, high = 8 }'),
    "space-list-choices": space("model.hidden_size", '"model.hidden_size" = [[4, 8]]'),
    "space-by-arch-unpicked": space("sweep.space_by_arch.lstm", '"train.lr" = [0.01]', section="sweep.space_by_arch.lstm"),
    "space-by-arch-bad-value": sweep("model.hidden_size", "--set", "sweep.space={'model.arch' = ['gru', 'rnn']}",
                                     toml='[sweep.space_by_arch.rnn]\n"model.hidden_size" = [0, 4]\n'),
    "space-grid-with-range": space("sweep.sampler", '"train.lr" = { low = 0.001, high = 0.1 }', "--sampler", "grid"),
    "space-grid-after-gpu-notice": space("sweep.sampler", '"train.lr" = { low = 0.001, high = 0.1 }', "--sampler", "grid",
                                         "--set", "sweep.devices=[]"),
    "space-via-set": sweep("model.hidden_size", "--set", "sweep.space={'model.hidden_size' = { low = -4, high = 0 }}"),
    # Objectives.
    "objective-unknown-metric": sweep("val_foo", "--set", "sweep.objectives=['val_foo:max']"),
    "objective-test-split": sweep("test_mse", "--set", "sweep.objectives=['test_mse:min']"),
    "objective-no-direction": sweep("train_loss", "--set", "sweep.objectives=['train_loss']"),
    "objective-bad-direction": sweep("val_mse", "--set", "sweep.objectives=['val_mse:up']"),
    "objective-twice": sweep("sweep.objectives", "--set", "sweep.objectives=['val_mse:min', 'val_mse:min']"),
    "objective-a-string": sweep("sweep.objectives", "--set", "sweep.objectives='val_mse:min'"),
    # Sweep flags.
    "sampler-choice": sweep("--sampler", "--sampler", "bayes"),
    "pruner-choice": sweep("--pruner", "--pruner", "sometimes"),
    "jobs-zero": sweep("sweep.jobs", "--jobs", "0"),
    "jobs-1000": sweep("sweep.jobs", "--jobs", "1000"),
    "jobs-word": sweep("--jobs", "--jobs", "many"),
    "n-trials-zero": sweep("sweep.n_trials", "--n-trials", "0"),
    "n-trials-true": sweep("sweep.n_trials", "--set", "sweep.n_trials=true"),
    "timeout-negative": sweep("sweep.timeout", "--timeout", "-1"),
    "repeat-negative": sweep("sweep.repeat", "--repeat", "-1"),
    "seeds-zero": sweep("sweep.seeds", "--set", "sweep.seeds=0"),
    "sweep-seed-negative": sweep("sweep.seed", "--set", "sweep.seed=-1"),
    "study-name-slash": sweep("name", "--study", "a/b"),
    "storage-not-a-url": sweep("sweep.storage", "--storage", "optuna"),
    "storage-sqlite-through-a-file": sweep("afile", "--storage", "sqlite:///afile/optuna.db", files=ABOUT_A_FILE),
    "journal-through-a-file": sweep("afile", "--storage", "journal:afile/j.log", files=ABOUT_A_FILE),
    "journal-in-proc": sweep("/proc/harness-nope", "--storage", "journal:/proc/harness-nope/j.log"),
    "journal-with-bad-input": sweep("train.lr", "--storage", "journal:j.log", "--set", "train.lr=0"),
    "out-through-a-file": sweep("afile", "--out", "afile/reports", files=ABOUT_A_FILE),
    "out-unwritable": sweep("/proc/harness-nope", "--out", "/proc/harness-nope"),
    # Other commands.
    "report-out-through-a-file": Case("", ["report", "bad", "--out", "afile/r"], "afile", files=ABOUT_A_FILE),
    "report-out-unwritable": Case("", ["report", "bad", "--out", "/proc/harness-nope"], "/proc/harness-nope"),
    "report-no-store": Case("", ["report", "bad"], "MLflow store"),
    "report-study-and-all": Case("", ["report", "bad", "--all"], "--all"),
    "report-nothing": Case("", ["report"], "--all"),
    "unknown-command": Case("", ["frobnicate"], "frobnicate"),
    "list-what": Case("", ["list", "models"], "models"),
    "ui-port-too-big": Case("", ["ui", "--port", "70000"], "--port"),
    "ui-port-word": Case("", ["ui", "--port", "http"], "--port"),
    # The tracking store named by the environment.
    "tracking-uri-scheme-run": run("MLFLOW_TRACKING_URI", env={"MLFLOW_TRACKING_URI": "foo://bar"}),
    "tracking-uri-scheme-sweep": sweep("MLFLOW_TRACKING_URI", env={"MLFLOW_TRACKING_URI": "foo://bar"}),
    "tracking-uri-scheme-report": Case("", ["report", "bad"], "MLFLOW_TRACKING_URI", env={"MLFLOW_TRACKING_URI": "foo://bar"}),
    "tracking-uri-through-a-file": run("afile", env={"MLFLOW_TRACKING_URI": "sqlite:///afile/mlflow.db"}, files=ABOUT_A_FILE),
    # An MLflow server that is not there (MLflow's client would retry it for minutes), and `harness ui` on a server.
    "tracking-server-down-run": run("no MLflow server answers at http://127.0.0.1:1", env=SERVER_DOWN),
    "tracking-server-down-sweep": sweep("no MLflow server answers at http://127.0.0.1:1", env=SERVER_DOWN),
    "tracking-server-down-report": Case("", ["report", "bad"], "no MLflow server answers", env=SERVER_DOWN),
    "ui-on-a-server": Case("", ["ui"], "browse http://127.0.0.1:1", env=SERVER_DOWN),
}
if not NO_GPU_7:
    del CASES["device-cuda7-run"], CASES["device-cuda7-sweep"]
if torch.backends.mps.is_available():
    del CASES["device-mps-run"]


def tree(folder: Path) -> dict[str, str]:
    """Every file under `folder` and its content hash."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()}


def one_line_error(capsys, argv) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("harness: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_bad_input_is_one_line_and_writes_nothing(workdir, capsys, monkeypatch, case):
    (workdir / EXP).write_text(BASE + case.toml)
    for name, data in case.files.items():
        (workdir / name).parent.mkdir(parents=True, exist_ok=True)
        (workdir / name).write_bytes(data)
    for k, v in case.env.items():
        monkeypatch.setenv(k, v)
    before = tree(workdir)
    err = one_line_error(capsys, case.argv)
    assert case.names in err
    assert tree(workdir) == before  # no mlflow.db, optuna.db, journal or report, nothing changed
    assert not (workdir / "reports").exists()


# Corrupt stores: they existed before; the command says so on one line and leaves them as they were.


@pytest.fixture(scope="session")
def stores(tmp_path_factory) -> Path:
    """Real stores, made once (each case copies the one it needs): MLflow's with study `bad`
    deleted but not purged (`deleted.db`) or without it, Optuna's without it (SQLite and a
    journal), and Optuna's holding a trial of `bad` that drew `model.hidden_size` from a range
    (`drawn.db`)."""
    folder = tmp_path_factory.mktemp("stores")
    client = MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}")
    client.create_experiment("other")
    shutil.copy(folder / "mlflow.db", folder / "live.db")
    client.delete_experiment(client.create_experiment("bad"))
    shutil.copy(folder / "mlflow.db", folder / "deleted.db")
    shutil.copy(folder / "live.db", folder / "mlflow.db")
    optuna.create_study(study_name="other", storage=f"sqlite:///{folder / 'optuna.db'}")
    journal = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(folder / "j.log")))
    optuna.create_study(study_name="other", storage=journal).optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
    drawn = optuna.create_study(study_name="bad", storage=f"sqlite:///{folder / 'drawn.db'}")
    drawn.add_trial(optuna.trial.create_trial(params={"model.hidden_size": 6}, value=1.0,
                                              distributions={"model.hidden_size": optuna.distributions.IntDistribution(4, 8)}))
    return folder


def garbage(n: int = 8192) -> bytes:
    return hashlib.sha256(b"garbage").digest() * (n // 32)


def truncated(path: Path) -> bytes:
    data = path.read_bytes()
    return data[: len(data) // 3]


CORRUPT = {
    # (argv, the store file, its content from the `stores` folder, what stderr names, what the experiment adds to BASE)
    "report-garbage-mlflow": (["report", "bad"], "mlflow.db", lambda s: garbage(), "mlflow.db", ""),
    "report-truncated-mlflow": (["report", "bad"], "mlflow.db", lambda s: truncated(s / "mlflow.db"), "mlflow.db", ""),
    "report-deleted-study": (["report", "bad"], "mlflow.db", lambda s: (s / "deleted.db").read_bytes(), "bad", ""),
    "run-garbage-mlflow": (["run", EXP], "mlflow.db", lambda s: garbage(), "mlflow.db", ""),
    "run-truncated-mlflow": (["run", EXP], "mlflow.db", lambda s: truncated(s / "mlflow.db"), "mlflow.db", ""),
    "run-deleted-experiment": (["run", EXP], "mlflow.db", lambda s: (s / "deleted.db").read_bytes(), "bad", ""),
    "sweep-garbage-mlflow": (["sweep", EXP], "mlflow.db", lambda s: garbage(), "mlflow.db", ""),
    "sweep-truncated-mlflow": (["sweep", EXP], "mlflow.db", lambda s: truncated(s / "mlflow.db"), "mlflow.db", ""),
    "sweep-deleted-experiment": (["sweep", EXP], "mlflow.db", lambda s: (s / "deleted.db").read_bytes(), "bad", ""),
    "sweep-garbage-optuna": (["sweep", EXP], "optuna.db", lambda s: garbage(), "optuna.db", ""),
    "sweep-truncated-optuna": (["sweep", EXP], "optuna.db", lambda s: truncated(s / "optuna.db"), "optuna.db", ""),
    "sweep-garbage-journal": (["sweep", EXP, "--storage", "journal:j.log"], "j.log", lambda s: garbage(), "j.log", ""),
    "sweep-text-journal": (["sweep", EXP, "--storage", "journal:j.log"], "j.log", lambda s: b"not a record\n" * 9, "j.log", ""),
    "sweep-truncated-journal": (["sweep", EXP, "--storage", "journal:j.log"], "j.log", lambda s: truncated(s / "j.log"), "j.log", ""),
    # Not corrupt, but drawn another way: a resumed study whose space makes a list of a range.
    "sweep-space-drawn-otherwise": (["sweep", EXP], "optuna.db", lambda s: (s / "drawn.db").read_bytes(), "model.hidden_size",
                                    '[sweep.space]\n"model.hidden_size" = [4, 8]\n'),
}


@pytest.mark.parametrize(("argv", "store", "content", "names", "toml"), CORRUPT.values(), ids=CORRUPT.keys())
def test_a_corrupt_store_is_one_line_and_stays_as_it_was(workdir, capsys, stores, argv, store, content, names, toml):
    (workdir / EXP).write_text(BASE + toml)
    (workdir / store).write_bytes(content(stores))
    before = tree(workdir)
    err = one_line_error(capsys, argv)
    assert names in err
    # The store unchanged, and no other store created beside it (an intact store that was opened
    # keeps its machine lock file, `optuna.db.lock`: the one way commands on this machine share it).
    after = {k: v for k, v in tree(workdir).items() if not (k.endswith(".lock") and k.removesuffix(".lock") in before)}
    assert after == before
