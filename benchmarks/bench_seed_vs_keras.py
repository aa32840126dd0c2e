"""The seed model in harness (torch) against the reference notebook's Keras 3 / TensorFlow, fp32 and bf16.

The network is the reference Keras notebook's (harness's `seed-lstm`, experiments/seed_fashion_lstm.toml):
LSTM(128, every step) → Dropout(0.2) → LSTM(128) → Dense(64, ReLU) → Dropout(0.2) → Dense(10) softmax,
Keras's initialisation, Adam lr 1e-3, batch 32, on Fashion-MNIST rows (28 steps × 28). Four configurations:

  harness fp32           `run_trial` of the experiment: harness's own loop, as a trial runs it, tracking off
                         (no MLflow, no gradient statistics, no gradient-flow measurement)
  harness bf16           the same with `train.precision = "bf16"` (torch.autocast, harness.precision)
  keras fp32             `model.fit` / `model.evaluate`, Keras's defaults (its jit_compile="auto" included)
  keras mixed_bfloat16   the same after keras.mixed_precision.set_global_policy("mixed_bfloat16"), the
                         softmax kept in float32 as Keras's mixed-precision guide says

Both read identical arrays: this process loads the task through harness's loader (the experiment's
validation split and seed, the first --n-train training examples) and writes them to .npy files;
the Keras worker reads those, the harness worker loads the task itself and checks that its splits'
hashes are the exported ones. Every configuration runs in its own subprocess, one at a time, so
torch's and TensorFlow's thread pools never share a process or the cores; each uses --threads
intra-op threads (torch.set_num_threads; TensorFlow's intra-op pool) and flushes denormals (harness's
workers do; TensorFlow does by default). Round r runs harness fp32, harness bf16, keras fp32, keras
mixed_bfloat16, each with seed r (so accuracy medians span seeds).

Throughput is measured alike in both: training samples ÷ time in training steps, over epochs 2..E (epoch 1
holds compilation, tracing and warm-up). An epoch's training time runs from its start to the end of its
last step: harness's own per-epoch timing (`epoch_samples_per_s`, exact with gradient statistics off);
in Keras from `on_epoch_begin` to `on_test_begin` (validation starts right after the last step).
"epoch" throughput adds each epoch's validation (both at batch 1024); "trial s" is the whole run after
the model is built: training, test, and in harness its post-run measurements; "after s" is the part
of it after the last epoch (test, and harness's step benchmark, matmul peak and inference latency). "cpu" is the process's
CPU time over training ÷ (wall × threads): well under 1 means the run waited for the cores (or, for
Keras, that TensorFlow's pools left a thread idle: compare rounds). Test
accuracy is harness's as a trial reports it (the weights of the best validation epoch) and Keras's after
the last epoch (the notebook's way); with the notebook's 3 epochs the two rarely differ by much.

The table gives each configuration's medians over rounds and per-round ratios (median over rounds):
harness ÷ Keras at each policy, and harness's faster configuration ÷ Keras's faster one. Nothing is
asserted: on a shared machine these numbers swing (a busy neighbour slows torch 10-30×).

    .venv/bin/python benchmarks/bench_seed_vs_keras.py                          # 3 epochs, full train set, 3 rounds
    .venv/bin/python benchmarks/bench_seed_vs_keras.py --epochs 2 --rounds 1 --n-train 2000   # a quick check
    .venv/bin/python benchmarks/bench_seed_vs_keras.py --keras-python /path/to/tf-venv/bin/python
    tox -e peers                                                                # installs TensorFlow, runs this
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXPERIMENT = ROOT / "experiments" / "seed_fashion_lstm.toml"
SPLITS = ("train", "val", "test")
CONFIGS = (("harness", "fp32"), ("harness", "bf16"), ("keras", "fp32"), ("keras", "bf16"))
LABEL = {("harness", "fp32"): "harness fp32", ("harness", "bf16"): "harness bf16",
         ("keras", "fp32"): "keras fp32", ("keras", "bf16"): "keras mixed_bfloat16"}
EVAL_BATCH = 1024  # harness's eval_batch_size default; Keras's validation and test use the same


def throughputs(n: int, epochs: list[tuple[float, float, float]]) -> dict[str, float]:
    """From (train s, epoch s, train CPU s) per epoch: the figures over epochs 2..E."""
    timed = epochs[1:]
    train, wall, cpu = (sum(e[i] for e in timed) for i in range(3))
    return {"train_sps": n * len(timed) / train, "epoch_sps": n * len(timed) / wall, "cpu_train_s": cpu, "train_s": train}


# --- the harness worker (imports torch and harness, never TensorFlow) ---------------------------------

def harness_worker(args: argparse.Namespace) -> dict:
    from harness.train import flush_denormals

    flush_denormals()  # as harness's CLI and sweep workers do, before torch starts its threads
    import torch

    from harness.callbacks import Callback
    from harness.config import validate
    from harness.runner import prepare, run_trial

    torch.set_num_threads(args.threads)
    meta = json.loads((args.data / "meta.json").read_text())
    exp = validate(meta["experiment"]).with_values({"train.seed": args.seed, "train.precision": args.precision})
    prepared = prepare(exp, "cpu")
    task = prepared.task
    if task.split_hashes() != meta["hashes"]:
        raise SystemExit(f"harness loaded other data than was exported: {task.split_hashes()} != {meta['hashes']}")
    ends: list[tuple[float, float]] = []  # (wall, process CPU) at each epoch's end, validation included

    class Stamp(Callback):
        def on_fit_start(self, start) -> None:
            ends.append((time.perf_counter(), time.process_time()))

        def on_epoch_end(self, epoch: int, record: dict) -> None:
            ends.append((time.perf_counter(), time.process_time()))

    t0 = time.perf_counter()
    result = run_trial(exp, [Stamp()], prepared=prepared)
    t1 = time.perf_counter()
    n = len(task.x_train)
    epochs = []
    for i, rec in enumerate(result.history):
        train = n / rec["epoch_samples_per_s"]
        epochs.append((train, ends[i + 1][0] - ends[i][0], rec["cpu_share"] * train * torch.get_num_threads()))
    return {**throughputs(n, epochs), "test_accuracy": result.test_metric, "trial_s": t1 - t0, "after_s": t1 - ends[-1][0],
            "precision": f"train.precision={exp.train.precision}",
            "threads": torch.get_num_threads(), "version": f"torch {torch.__version__}"}


# --- the Keras worker (imports TensorFlow and Keras, never torch or harness) ----------------------------

def keras_worker(args: argparse.Namespace) -> dict:
    import numpy as np
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)  # before TensorFlow starts its pools
    import keras

    d = {f"{k}_{s}": np.load(args.data / f"{k}_{s}.npy") for k in "xy" for s in SPLITS}
    keras.utils.set_random_seed(args.seed)
    if args.precision == "bf16":
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    _, steps, features = d["x_train"].shape
    model = keras.Sequential([
        keras.Input((steps, features)),
        keras.layers.LSTM(128, return_sequences=True),
        keras.layers.Dropout(0.2),
        keras.layers.LSTM(128),
        keras.layers.Dense(64, activation="relu"),
        keras.layers.Dropout(0.2),
        keras.layers.Dense(10),
        keras.layers.Activation("softmax", dtype="float32"),  # the guide's float32 output under mixed precision
    ])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    marks: list[dict[str, tuple[float, float]]] = []

    class Stamp(keras.callbacks.Callback):
        def _mark(self, key: str) -> None:
            marks[-1].setdefault(key, (time.perf_counter(), time.process_time()))

        def on_epoch_begin(self, epoch, logs=None):
            marks.append({})
            self._mark("begin")

        def on_test_begin(self, logs=None):
            self._mark("trained")

        def on_epoch_end(self, epoch, logs=None):
            self._mark("trained")  # without validation the epoch's end is its training's end
            self._mark("end")

    t0 = time.perf_counter()
    model.fit(d["x_train"], d["y_train"], batch_size=32, epochs=args.epochs, shuffle=True, verbose=0,
              validation_data=(d["x_val"], d["y_val"]), validation_batch_size=EVAL_BATCH, callbacks=[Stamp()])
    _, accuracy = model.evaluate(d["x_test"], d["y_test"], batch_size=EVAL_BATCH, verbose=0)
    t1 = time.perf_counter()
    epochs = [(m["trained"][0] - m["begin"][0], m["end"][0] - m["begin"][0], m["trained"][1] - m["begin"][1])
              for m in marks]
    policy = keras.mixed_precision.global_policy().name
    return {**throughputs(len(d["x_train"]), epochs), "test_accuracy": float(accuracy), "trial_s": t1 - t0,
            "after_s": t1 - marks[-1]["end"][0],
            "precision": f"policy {policy}, jit_compile={model.jit_compile}", "threads": args.threads,
            "version": f"tensorflow {tf.__version__}, keras {keras.__version__}"}


# --- the driver ------------------------------------------------------------------------------------------

def export(args: argparse.Namespace, out: Path) -> tuple[int, dict]:
    """Load the task as harness does, write its splits as .npy and the experiment as JSON."""
    import numpy as np

    from harness.config import load_experiment
    from harness.tasks import load_task

    sets = [f"train.epochs={args.epochs}", "train.device='cpu'", "tracking.grad_stats_every=0",
            "tracking.gradflow=false", *args.sets]
    if args.n_train:
        sets.append(f"task.n_train={args.n_train}")
    exp = load_experiment(EXPERIMENT, sets)
    task = load_task(exp.task.name, **exp.task.options())
    for s in SPLITS:
        x, y = task.split(s)
        np.save(out / f"x_{s}.npy", x.numpy())
        np.save(out / f"y_{s}.npy", y.numpy())
    meta = {"experiment": exp.model_dump(exclude_none=True), "hashes": task.split_hashes()}
    (out / "meta.json").write_text(json.dumps(meta))
    return len(task.x_train), exp.model_dump()


def launch(args: argparse.Namespace, framework: str, precision: str, seed: int, data: Path) -> dict:
    python = args.keras_python if framework == "keras" else sys.executable
    cmd = [python, __file__, "--worker", framework, "--precision", precision, "--seed", str(seed),
           "--epochs", str(args.epochs), "--threads", str(args.threads), "--data", str(data)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "TF_CPP_MIN_LOG_LEVEL": "2", "OMP_NUM_THREADS": str(args.threads), "MPLBACKEND": "Agg"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip() or done.stdout.strip()).splitlines()[-1:] or ["no output"]
        return {"error": f"exit {done.returncode}: {tail[0]}", "stderr": done.stderr}
    return json.loads(lines[-1].removeprefix("RESULT "))


def _median(values: list[float], fmt: str) -> str:
    return f"{statistics.median(values):{fmt}}" if values else "–"



def cpu_name() -> str:
    from harness.provenance import device_name  # here: the Keras worker's environment need not hold harness

    return device_name()


def main(args: argparse.Namespace) -> int:
    results: dict[tuple[str, str], list[dict]] = {c: [] for c in CONFIGS}
    failed = False
    with tempfile.TemporaryDirectory(prefix="seed-vs-keras-") as tmp:
        data = Path(tmp)
        n, exp = export(args, data)
        print(f"seed-lstm on {exp['task']['name']}: {n} training examples, {args.epochs} epochs (throughput over "
              f"epochs 2..{args.epochs}), batch {exp['train']['batch_size']}, Adam lr {exp['train']['lr']}; "
              f"{args.threads} intra-op thread(s), {cpu_name()}, {os.cpu_count()} cores; {args.rounds} round(s)\n")
        print("| round | configuration | train samples/s | epoch samples/s | cpu | test accuracy | trial s | after s | precision |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in range(args.rounds):
            for c in CONFIGS:
                got = launch(args, *c, seed=args.seed + r, data=data)
                if "error" in got:
                    failed = True
                    print(f"| {r + 1} | {LABEL[c]} | FAILED: {got['error']} | | | | | | |", flush=True)
                    if args.verbose:
                        print(got["stderr"], file=sys.stderr)
                    continue
                results[c].append(got)
                share = got["cpu_train_s"] / (got["train_s"] * got["threads"])
                print(f"| {r + 1} | {LABEL[c]} | {got['train_sps']:.0f} | {got['epoch_sps']:.0f} | {share:.2f} | "
                      f"{got['test_accuracy']:.4f} | {got['trial_s']:.1f} | {got['after_s']:.1f} | "
                      f"{got['precision']} |", flush=True)
    versions = sorted({g["version"] for rows in results.values() for g in rows})
    print(f"\nmedians over rounds ({'; '.join(versions)}):\n")
    print("| configuration | train samples/s | epoch samples/s | test accuracy | trial s | after s |")
    print("|---|---|---|---|---|---|")
    for c in CONFIGS:
        rows = results[c]
        print(f"| {LABEL[c]} | {_median([g['train_sps'] for g in rows], '.0f')} | "
              f"{_median([g['epoch_sps'] for g in rows], '.0f')} | {_median([g['test_accuracy'] for g in rows], '.4f')} | "
              f"{_median([g['trial_s'] for g in rows], '.1f')} | {_median([g['after_s'] for g in rows], '.1f')} |")
    print("\n| ratio of train samples/s (per round, median over rounds) | × |")
    print("|---|---|")
    # Per round: both sides of a ratio ran minutes apart, not rounds apart.
    paired = [dict(zip(CONFIGS, g, strict=True)) for g in zip(*(results[c] for c in CONFIGS), strict=False)]
    for num, den, label in ((("harness", "fp32"), ("keras", "fp32"), "harness fp32 ÷ keras fp32"),
                            (("harness", "bf16"), ("keras", "bf16"), "harness bf16 ÷ keras mixed_bfloat16"),
                            (("harness", "bf16"), ("harness", "fp32"), "harness bf16 ÷ harness fp32"),
                            (("keras", "bf16"), ("keras", "fp32"), "keras mixed_bfloat16 ÷ keras fp32")):
        print(f"| {label} | {_median([p[num]['train_sps'] / p[den]['train_sps'] for p in paired], '.2f')} |")
    best = [max(p[c]["train_sps"] for c in CONFIGS[:2]) / max(p[c]["train_sps"] for c in CONFIGS[2:]) for p in paired]
    print(f"| harness's faster ÷ Keras's faster | {_median(best, '.2f')} |")
    if not paired:
        print("\n(no round had all four configurations: no ratios)")
    return 1 if failed else 0


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=3, help="epochs per run, ≥ 2: the first is warm-up (default 3, the notebook's)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--n-train", type=int, default=None, help="keep the first N training examples (default: all 54,000)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="intra-op threads of each framework (default: all cores)")
    p.add_argument("--seed", type=int, default=0, help="round r trains with seed + r")
    p.add_argument("--keras-python", default=sys.executable,
                   help="the interpreter with TensorFlow (default: this one); the Keras worker imports no torch")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a harness experiment key, e.g. tracking.grad_stats_every=100 (repeatable)")
    p.add_argument("--verbose", action="store_true", help="print a failed worker's stderr")
    p.add_argument("--worker", choices=("harness", "keras"), help=argparse.SUPPRESS)
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help=argparse.SUPPRESS)
    p.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.epochs < 2:
        p.error("--epochs: at least 2 (the first epoch is warm-up and not timed)")
    return args


if __name__ == "__main__":
    ARGS = parse()
    if ARGS.worker:
        result = (harness_worker if ARGS.worker == "harness" else keras_worker)(ARGS)
        print("RESULT " + json.dumps(result), flush=True)
        sys.exit(0)
    sys.exit(main(ARGS))
