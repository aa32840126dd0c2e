"""Sweep workers per GPU: how much more work N workers sharing one device get done than one, and
what `sweep.jobs = "auto"` picks. Two measurements, each N of --jobs (default 1, 2, 4, 8, 16) in turn:

  throughput  N processes on the device, each training one model (an architecture at an
              experiment's shapes, as benchmarks/bench_compile.py sets them: `seed-lstm` at the seed
              model's, batch 32; the others at the quickstart's) with harness's step on random
              batches, started together behind a barrier for --seconds: samples/s summed over the
              workers, per worker, and the device memory in use (eager, or the step captured in a
              CUDA graph with --graphed, as benchmarks/bench_cuda_graphs.py captures it)
  sweep       `harness sweep EXPERIMENT --jobs N --timeout T` in a fresh MLflow store and Optuna
              storage (SQLite), final runs off: the trials it completed × 3600 ÷ its wall time, its
              start-up included, and ÷ the trials' span (the first trial's start to the last one's
              end); and `--jobs auto`, the default's choice, named from its output
  rate        the same over the trials' span for a study already swept (STORAGE STUDY): a study run
              end to end, whose final runs come after its trials

The ratio each row gives is to N = 1 in the same run. Nothing is asserted.

    python benchmarks/bench_gpu_jobs.py throughput --archs seed-lstm,gru --seconds 10
    python benchmarks/bench_gpu_jobs.py sweep experiments/quickstart.toml --timeout 60
    python benchmarks/bench_gpu_jobs.py rate runs/optuna.db quickstart
    python benchmarks/bench_gpu_jobs.py throughput --device cpu --archs gru --jobs 1,2 --seconds 3   # the script
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import queue
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_compile import HOME_SHAPE, ROOT, case_settings  # noqa: E402
from bench_cuda_graphs import batches, build, make_step  # noqa: E402

from harness.sweep.workers import cpu_count  # noqa: E402


def train_for(rank: int, s: dict, device: str, graphed: bool, seconds: float, threads: int, barrier, results) -> None:
    """One worker: warm up, wait for the others, then train for `seconds`; put (rank, samples, s, used)."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    step = make_step(build(s, dev), s, dev, "fp32", graphed=graphed)[0]
    x, y = batches(s, dev, seed=rank)(s["train"]["batch_size"])
    for _ in range(10):
        step(x, y)
    if cuda:
        torch.cuda.synchronize(dev)
    used = (lambda free, total: total - free)(*torch.cuda.mem_get_info(dev)) if cuda else 0
    barrier.wait(timeout=300)  # every worker warm (one that dies is seen by the parent, which stops the rest)
    t0 = time.perf_counter()
    n = 0
    while time.perf_counter() - t0 < seconds:
        for _ in range(10):  # a sync every ten steps: the queue stays short, the host rarely waits
            step(x, y)
        if cuda:
            torch.cuda.synchronize(dev)
        n += 10
    results.put((rank, n * s["train"]["batch_size"], time.perf_counter() - t0, used))


def throughput(args: argparse.Namespace) -> None:
    ctx = mp.get_context("spawn")
    print(f"training throughput against workers per device ({args.device}), each worker one process, "
          f"{'the step captured in a CUDA graph' if args.graphed else 'eager'}, fp32, {args.seconds:g} s each\n")
    print("| arch | shape | batch | workers | samples/s, all | per worker | ÷ one worker | device memory in use |")
    print("|---|---|---|---|---|---|---|---|")
    for arch in args.archs.split(","):
        s = case_settings(args.shape or HOME_SHAPE.get(arch, "quickstart"), arch, args.sets)
        one = None
        for n in args.jobs:
            barrier, results = ctx.Barrier(n), ctx.Queue()
            threads = max(1, cpu_count() // n) if n > 1 else 0  # the cores split as harness's workers split them
            procs = [ctx.Process(target=train_for, args=(r, s, args.device, args.graphed, args.seconds, threads, barrier,
                                                         results)) for r in range(n)]
            for p in procs:
                p.start()
            got, deadline = [], time.monotonic() + args.seconds + 180
            # A worker that dies (out of memory, say) is seen at once, not after the deadline
            while len(got) < n and time.monotonic() < deadline and not any(p.exitcode for p in procs):
                try:
                    got.append(results.get(timeout=1))
                except queue.Empty:
                    pass
            if len(got) < n:
                dead = [p.exitcode for p in procs if p.exitcode]
                print(f"| {arch} | {s['shape']} | {s['train']['batch_size']} | {n} | FAILED: {len(got)} of {n} workers "
                      "reported" + (f"; exit codes {dead}" if dead else f" within {args.seconds + 180:g} s") + " | | | |",
                      flush=True)
            for p in procs:
                p.join(timeout=5)
                if p.is_alive():
                    p.kill()
            if len(got) < n:
                continue
            total = sum(samples / secs for _, samples, secs, _ in got)
            one = total if n == 1 else one  # the ratio is to one worker, or none where that failed
            used = max(u for *_, u in got)
            print(f"| {arch} | {s['shape']} | {s['train']['batch_size']} | {n} | {total:,.0f} | {total / n:,.0f} | "
                  f"{f'{total / one:.2f}' if one else '–'} | {used / 2**30:.1f} GiB |", flush=True)


def span_rate(storage: str, name: str) -> tuple[int, int, float, float]:
    """(trials complete, workers that ran them, the trials' span in s, trials/hour over it): the span
    runs from the first trial's start to the last complete one's end, so a process's start-up and
    the final runs after the search stay out of it."""
    import optuna

    trials = optuna.load_study(study_name=name, storage=storage).trials
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not done:
        return 0, 0, 0.0, 0.0
    span = (max(t.datetime_complete for t in done) - min(t.datetime_start for t in trials if t.datetime_start)).total_seconds()
    workers = len({t.user_attrs.get("worker") for t in done})
    return len(done), workers, span, len(done) * 3600 / span


def rate(args: argparse.Namespace) -> None:
    storage = args.storage if "://" in args.storage else f"sqlite:///{Path(args.storage).resolve()}"
    complete, workers, span, per_hour = span_rate(storage, args.study)
    print(f"`{args.study}` in {args.storage}: trials/hour over its trials' span\n")
    print("| study | workers that ran trials | trials complete | span s | trials/hour |")
    print("|---|---|---|---|---|")
    print(f"| {args.study} | {workers} | {complete} | {span:.0f} | {per_hour:,.0f} |")


def sweep(args: argparse.Namespace) -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    name = Path(args.experiment).stem
    print(f"`harness sweep {args.experiment}` against --jobs, each in a fresh store, --timeout {args.timeout:g} s, "
          f"final runs off ({', '.join(args.sets) or 'the file as committed'})\n")
    print("| --jobs | workers | trials complete | wall s | trials/hour | ÷ one worker | trials' span s | trials/hour over it | ÷ one worker |")
    print("|---|---|---|---|---|---|---|---|---|")
    one = one_span = None
    for jobs in [*map(str, args.jobs), *(["auto"] if args.auto else [])]:
        with tempfile.TemporaryDirectory(prefix="bench-gpu-jobs-") as tmp:
            storage = f"sqlite:///{tmp}/optuna.db"
            env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlflow.db",
                   "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
            cmd = [sys.executable, "-m", "harness.cli", "sweep", str(Path(args.experiment).resolve()), "--jobs", jobs,
                   "--timeout", str(args.timeout), "--repeat", "0", "--storage", storage, "--out", f"{tmp}/reports",
                   *(f"--set={s}" for s in args.sets)]
            t0 = time.perf_counter()
            done = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True)
            wall = time.perf_counter() - t0
            if done.returncode:
                tail = (done.stderr.strip() or done.stdout.strip()).splitlines()[-1:] or ["no output"]
                print(f"| {jobs} | – | FAILED: {tail[0][:200]} | {wall:.0f} | | | | | |", flush=True)
                continue
            said = re.search(r"(?:sweep\.jobs = auto: |on the CPU with )(\d+) worker", done.stdout + done.stderr)
            workers = said.group(1) if said else jobs
            complete, _, span, per_span = span_rate(storage, name)
            per_wall = complete * 3600 / wall
            one, one_span = (per_wall, per_span) if jobs == "1" else (one, one_span)
            print(f"| {jobs} | {workers} | {complete} | {wall:.0f} | {per_wall:,.0f} | {f'{per_wall / one:.2f}' if one else '–'} "
                  f"| {span:.0f} | {per_span:,.0f} | {f'{per_span / one_span:.2f}' if one_span else '–'} |", flush=True)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="what", required=True)
    tp = sub.add_parser("throughput", help="samples/s of N training processes sharing the device")
    tp.add_argument("--archs", default="seed-lstm,gru")
    tp.add_argument("--shape", choices=["quickstart", "seed"], help="every architecture at this experiment's shapes")
    tp.add_argument("--device", default="cuda")
    tp.add_argument("--seconds", type=float, default=10)
    tp.add_argument("--graphed", action="store_true", help="each worker's step captured in a CUDA graph")
    sp = sub.add_parser("sweep", help="trials/hour of `harness sweep --jobs N`")
    sp.add_argument("experiment", nargs="?", default=str(ROOT / "experiments" / "quickstart.toml"))
    sp.add_argument("--timeout", type=float, default=60, help="sweep.timeout: no trial starts after it")
    sp.add_argument("--no-auto", dest="auto", action="store_false", help="leave out --jobs auto")
    rp = sub.add_parser("rate", help="trials/hour over the trials' span of a study already swept")
    rp.add_argument("storage", help="its Optuna storage: a SQLite file or a database URL")
    rp.add_argument("study", help="the study's name")
    for q in (tp, sp):
        q.add_argument("--jobs", type=lambda t: [int(v) for v in t.split(",")], default=[1, 2, 4, 8, 16])
        q.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                       help="override an experiment key, e.g. train.epochs=20 (repeatable)")
    return p.parse_args(argv)


if __name__ == "__main__":
    ARGS = parse()
    {"throughput": throughput, "sweep": sweep, "rate": rate}[ARGS.what](ARGS)
