"""What logging the chosen model as an MLflow model adds to a run (harness.logged_model).

For each architecture: the model at the experiment's size (untrained: tracing and saving do not
depend on the weights), an MLflow run in a fresh SQLite store, then `log_model` timed, wall and
process CPU time (which keeps counting only this process's work when neighbours load the
machine), the median over rounds. Runs of `harness run` and final runs pay this once each after
training; a search's trials never do.

    .venv/bin/python benchmarks/bench_model_logging.py                              # MNIST-1D, 40 steps, h64
    .venv/bin/python benchmarks/bench_model_logging.py --set task.name=adding --archs lstm,gru   # 100 steps
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import tempfile
import time
import warnings

import torch


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archs", default="lstm,gru,rnn,brnn,mlp")
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override an experiment key, e.g. task.name=adding (repeatable)")
    return p.parse_args()


def main() -> int:
    from mlflow.tracking import MlflowClient

    from harness.config import parse_set, validate
    from harness.logged_model import log_model
    from harness.runner import build

    args = parse()
    torch.set_num_threads(args.threads)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    warnings.simplefilter("ignore")
    base = validate({"name": "bench-model", "task": {"name": "mnist1d"}, "model": {"hidden_size": args.hidden}})
    base = base.with_values(dict(parse_set(s) for s in args.sets))
    print(f"{base.task.name}, h{args.hidden}, {args.threads} threads, {platform.processor() or platform.machine()}, "
          f"torch {torch.__version__}, {os.cpu_count()} cores; median of {args.rounds} rounds")
    with tempfile.TemporaryDirectory() as tmp:
        client = MlflowClient(tracking_uri=f"sqlite:///{tmp}/mlflow.db")
        exp_id = client.create_experiment("bench", artifact_location=f"{tmp}/artifacts")
        for arch in args.archs.split(","):
            task, model = build(base.with_values({"model.arch": arch}))
            log_model(client, client.create_run(exp_id).info.run_id, model, task)  # warm-up: imports, first calls
            wall, cpu = [], []
            for _ in range(args.rounds):
                run_id = client.create_run(exp_id).info.run_id
                w, c = time.perf_counter(), time.process_time()
                log_model(client, run_id, model, task)
                wall.append(time.perf_counter() - w)
                cpu.append(time.process_time() - c)
            print(f"{arch:8s} wall {statistics.median(wall):6.2f} s   cpu {statistics.median(cpu):6.2f} s   "
                  f"(T = {task.seq_len}, {sum(p.numel() for p in model.parameters())} params)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
