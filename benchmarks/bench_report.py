"""How long `harness report` takes on big studies: 1,000 and 10,000 search trials.

Writes a synthetic study of 1,000 trial runs through MLflow into a SQLite store (each run with the
params, metrics and tags a real trial logs: ~35 params, ~25 final metrics, a 20-epoch validation
curve, ~25 tags; four architectures; five final runs each with their per-example test metrics and
gradient-flow profile). Bigger studies copy its trial runs' rows in SQL under new run ids (MLflow
writes about 3 runs a second here: 10,000 would take an hour). Then each size's report is timed in
a fresh process, whole and without the imports, best of --repeats. The stores are kept in --cache.

    python benchmarks/bench_report.py                 # 1000 and 10000
    python benchmarks/bench_report.py --sizes 1000
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ARCHS = {"rnn": "RNN", "lstm": "LSTM", "gru": "GRU", "brnn": "BRNN"}


def fill(uri: str, name: str, n: int) -> None:
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.create_experiment(name)
    parent = client.create_run(exp, run_name=name, tags={"harness.role": "study", "harness.study": name}).info.run_id
    rng = np.random.default_rng(0)
    now = int(time.time() * 1000)

    def run(arch: str, number: int, role: str, seed: int, value: float) -> str:
        rid = client.create_run(exp, run_name=f"{arch}-#{number}", tags={"mlflow.parentRunId": parent}).info.run_id
        params = {"model.arch": arch, "arch_family": ARCHS[arch], "arch_bidirectional": arch == "brnn", "task.name": "mnist1d",
                  "task_io": "many-to-one", "task_metric": "accuracy", "task_metric_direction": "maximize",
                  "train.seed": seed, "train.lr": float(10 ** rng.uniform(-4, -1.5)), "model.hidden_size": int(rng.choice([32, 64, 128])),
                  "trial_number": number, "n_params": 10000, "flops_per_sample": 1e6, "kernel": "aten",
                  **{f"train.opt{i}": i for i in range(20)}}
        metrics = {"best_val_accuracy": value, "test_accuracy": value - 0.01, "train_samples_per_s": float(rng.uniform(1e3, 3e4)),
                   "peak_fraction": 0.3, "gradflow_rate": -0.05, "best_epoch": 12, "budget_limited": 0.0,
                   **{f"extra_{i}": float(i) for i in range(18)}}
        steps = [Metric("val_accuracy", value * (1 - 0.5 ** (e + 1)), now, e + 1) for e in range(20)]
        tags = {"harness.role": role, "harness.study": name, "harness.state": "complete", "harness.contended": "false",
                "harness.config": f"c-{arch}", "harness.source_trial": "0", **{f"split_hash.s{i}": "ab" * 8 for i in range(8)}}
        client.log_batch(rid, metrics=[Metric(k, v, now, 0) for k, v in metrics.items()] + steps,
                         params=[Param(k, str(v)) for k, v in params.items()], tags=[RunTag(k, str(v)) for k, v in tags.items()])
        client.set_terminated(rid, "FINISHED")
        return rid

    for i in range(n):
        arch = list(ARCHS)[i % 4]
        run(arch, i, "trial", 0, float(rng.uniform(0.2, 0.95)))
    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "test_per_example.npy", rng.integers(0, 2, 1000).astype(np.float32))
        header = "direction,quantity," + ",".join(f"t{t}" for t in range(1, 41))
        (Path(tmp) / "gradflow.csv").write_text(header + "\nforward,state," + ",".join(str(0.9 ** t) for t in range(40, 0, -1)) + "\n")
        for arch_index, arch in enumerate(ARCHS):
            for seed in range(1000, 1005):
                rid = run(arch, arch_index, "final", seed, 0.9)
                client.log_artifacts(rid, tmp)
    client.set_terminated(parent, "FINISHED")


def clone(src: Path, dst: Path, factor: int) -> None:
    """`dst`: `src` with its trial runs' rows (runs, params, tags, metrics) copied `factor` − 1 times
    under new run ids."""
    import shutil
    import sqlite3

    shutil.copy(src, dst)
    con = sqlite3.connect(dst)
    # The original trials, fixed before any copy lands; a copy's id ends in `k` and its number, never hex.
    con.execute("create temp table trials as select run_uuid from tags where key = 'harness.role' and value = 'trial'")
    for table in ("runs", "params", "tags", "metrics", "latest_metrics"):
        cols = [r[1] for r in con.execute(f"pragma table_info({table})")]
        picked = ", ".join("substr(run_uuid, 1, 29) || printf('k%02d', ?)" if c == "run_uuid" else c for c in cols)
        for k in range(1, factor):
            con.execute(f"insert into {table} ({', '.join(cols)}) select {picked} from {table} "
                        "where run_uuid in (select run_uuid from temp.trials)", (k,))
    con.commit()
    con.close()


def timed_report(uri: str, name: str, out: str) -> tuple[float, float]:
    """Seconds for `harness report` in a fresh process: the whole command (what a user waits for,
    imports included), and its `write_report` alone (imports excluded)."""
    code = ("import time, sys; t0 = time.perf_counter(); from harness.report import write_report; "
            f"t = time.perf_counter(); write_report({name!r}, {out!r}); print(time.perf_counter() - t)")
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "harness.cli", "report", name, "--out", out], env=env,
                   capture_output=True, text=True, check=True)
    whole = time.perf_counter() - t
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return whole, float(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=[1000, 10000])
    ap.add_argument("--cache", default=".bench-report", help="folder keeping the generated stores")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    cache = Path(args.cache)
    cache.mkdir(exist_ok=True)
    base = cache / "runs1000.db"
    if not base.exists():
        t = time.perf_counter()
        fill(f"sqlite:///{base.resolve()}", "big", 1000)
        print(f"wrote 1000 trial runs + 20 final runs through MLflow in {time.perf_counter() - t:.0f} s")
    for n in args.sizes:
        db = cache / f"runs{n}.db"
        if not db.exists():
            clone(base, db, n // 1000)
        with tempfile.TemporaryDirectory() as out:
            times = [timed_report(f"sqlite:///{db.resolve()}", "big", out) for _ in range(args.repeats)]
        whole, inner = [t[0] for t in times], [t[1] for t in times]
        print(f"{n:>6} trial runs: `harness report` in {min(whole):.2f} s, of which write_report {min(inner):.2f} s "
              f"(best of {args.repeats}; all: {', '.join(f'{w:.2f}/{i:.2f}' for w, i in times)})")


if __name__ == "__main__":
    main()
