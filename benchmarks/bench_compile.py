"""What torch.compile buys harness's training step on the CPU, per family, and what it costs to compile.

Each case is an architecture at an experiment's shapes: the quickstart's (MNIST-1D, 40 steps × 1,
hidden 64, batch 64, Adam, clip 1.0) for `rnn`, `lstm`, `gru`, `bigru`, `bilstm`, `mlp`, and the seed
experiment's (Fashion-MNIST rows, 28 × 28, batch 32, Adam) for `seed-lstm`; --all-shapes runs every
architecture at both. The step is harness's: forward, the task's loss, backward, the global gradient
norm, clipping where the experiment clips, the optimiser's step (harness.train's pieces). Runners:

  eager              the model as harness runs it today
  compiled           torch.compile(model) (--mode), the optimiser eager. Dynamo does not wrap
                     nn.RNN / nn.LSTM / nn.GRU modules: the graph breaks there. torch's LSTM then runs
                     eager; harness's own scans (`rnn`, `gru` on the CPU, kernel = auto) are Python,
                     which Dynamo enters as frames of their own and compiles in pieces between further
                     breaks (the table gives the graphs and each break's reason)
  compiled allow_rnn only with --allow-rnn: torch._dynamo.config.allow_rnn, the recurrence traced and
                     unrolled over the steps; oneDNN off for it (with oneDNN, inductor's mkldnn_rnn_layer
                     call fails in torch 2.14). Its compile takes minutes at 40 steps

Each case runs in a fresh process with a fresh inductor cache, so every compile is cold. The
compiler's own start-up (imports, the first C++ build) is measured on a tiny model first and
printed apart: a sweep worker pays it once. "cold compile" is what a trial pays on top of eager
for its first calls: a training step at the batch size, one at the epoch's last, smaller batch
(a recompile, after which Dynamo keeps a dynamic-batch graph), and the evaluation pass's batches
in eval mode; each first call's time less the eager call's. Then steps are timed round-robin:
each round times --steps steps of every runner (order alternating between rounds) and takes
eager ÷ runner, the speed-up; the median over rounds resists other processes' bursts. A case
still running at --case-timeout (default 60 s; harness's scans compile for minutes, being unrolled
over the steps) is stopped: its compile time is reported as at least the time it had been compiling.

A typical trial is estimated as the eager step time × the experiment's steps at its epoch cap
(the quickstart: 57 steps × 60 epochs; patience usually ends it sooner, so the estimate is
generous to compilation). Verdict: adopt only where compiled is ≥ 1.3× faster and its cold
compile is under a tenth of that trial. Nothing is asserted; on a shared machine timings swing.

    .venv/bin/python benchmarks/bench_compile.py                       # 1 thread, 7 cases, a few minutes
    .venv/bin/python benchmarks/bench_compile.py --archs lstm,gru --rounds 9 --threads 2
    .venv/bin/python benchmarks/bench_compile.py --archs rnn,gru,bigru --set model.kernel=torch   # torch's kernels
    .venv/bin/python benchmarks/bench_compile.py --allow-rnn --archs rnn   # the unrolled recurrence (slow)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from harness.provenance import device_name

ROOT = Path(__file__).resolve().parent.parent
SHAPES = {"quickstart": "quickstart", "seed": "seed_fashion_lstm"}  # shape name → experiment file
HOME_SHAPE = {"seed-lstm": "seed"}  # where each architecture runs by default; the rest: quickstart
SPEEDUP_MIN = 1.3
COMPILE_SHARE_MAX = 0.1


def case_settings(shape: str, arch: str, sets: list[str]) -> dict:
    """What a worker needs: the experiment's model, training and the task's shapes and sizes."""
    from harness.config import load_experiment
    from harness.tasks import load_task

    exp = load_experiment(ROOT / "experiments" / f"{SHAPES[shape]}.toml", [f"model.arch='{arch}'", *sets])
    task = load_task(exp.task.name, **exp.task.options())
    overrides = exp.model.overrides()
    if arch == "seed-lstm":  # its own sizes are the point; the quickstart's hidden 64 is for the one-layer nets
        overrides.pop("hidden_size", None)
    return {
        "arch": arch, "shape": shape, "overrides": overrides, "train": exp.train.model_dump(),
        "io": task.io, "seq_len": task.seq_len, "input_size": task.input_size, "output_size": task.output_size,
        "x_shape": list(task.x_train.shape[1:]), "n_train": len(task.x_train), "n_val": len(task.x_val),
        "loss": task.loss, "y_kind": "class" if task.loss == "cross_entropy" else "value",
        "y_shape": list(task.y_train.shape[1:]),
    }


# --- the worker: one case, in its own process -------------------------------------------------------------

def worker(args: argparse.Namespace) -> dict:
    import time

    started = time.perf_counter()
    from harness.train import flush_denormals

    flush_denormals()  # as harness's workers do, before torch starts its threads
    import copy

    import torch
    import torch._dynamo
    from torch._dynamo.utils import counters

    from harness.archs import create_model
    from harness.config import TrainSettings
    from harness.gradients import clip_, grad_norm
    from harness.tasks import LOSSES
    from harness.train import make_optimizer

    torch.set_num_threads(args.threads)
    s = json.loads(args.case)
    cfg = TrainSettings(**s["train"])
    loss_fn = LOSSES[s["loss"]]
    gen = torch.Generator().manual_seed(0)

    def batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(n, *s["x_shape"], generator=gen)
        if s["y_kind"] == "class":
            return x, torch.randint(0, s["output_size"], (n, *s["y_shape"]), generator=gen)
        return x, torch.randn(n, *s["y_shape"], generator=gen)

    # The compiler's start-up, paid once per process: imports, the first C++ build.
    t0 = time.perf_counter()
    tiny = torch.compile(torch.nn.Linear(4, 4))
    tiny(torch.randn(2, 4)).sum().backward()
    startup = time.perf_counter() - t0
    torch._dynamo.reset()
    counters.clear()

    torch.manual_seed(cfg.seed)
    base = create_model(s["arch"], input_size=s["input_size"], output_size=s["output_size"], io=s["io"],
                        seq_len=s["seq_len"], **s["overrides"])

    def runner(model):
        params = [p for p in model.parameters() if p.requires_grad]
        opt = make_optimizer(params, cfg)

        def step(xb, yb):
            model.train()
            loss = loss_fn(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            norm = grad_norm(params)
            if cfg.clip_norm is not None:
                clip_(params, cfg.clip_norm, norm)
            opt.step()

        @torch.no_grad()
        def evaluate(xb, yb):
            model.eval()
            loss_fn(model(xb), yb).item()

        return step, evaluate

    # One compiled runner per process: Dynamo's cache is per code object, and two compiled copies of
    # one class would share (and count) each other's graphs.
    compiled = "compiled allow_rnn" if args.allow_rnn else "compiled"
    runners = {"eager": runner(base), compiled: runner(torch.compile(copy.deepcopy(base), mode=args.mode))}

    def call(name, fn, *a):
        if name == "compiled allow_rnn":  # traced recurrence; oneDNN's fused layer fails under inductor
            with torch._dynamo.config.patch(allow_rnn=True), torch.backends.mkldnn.flags(enabled=False):
                fn(*a)
        else:
            fn(*a)

    # A trial's first calls: train at the batch size, at the epoch's tail batch, evaluation's batches.
    b, ev = cfg.batch_size, min(cfg.eval_batch_size, s["n_val"])
    first_calls = [("step", batch(b))]
    if s["n_train"] % b:
        first_calls.append(("step", batch(s["n_train"] % b)))
    first_calls.append(("eval", batch(ev)))
    if s["n_val"] % ev:
        first_calls.append(("eval", batch(s["n_val"] % ev)))
    out = {"startup_s": startup, "runners": {}, "steps_per_epoch": math.ceil(s["n_train"] / b), "torch": torch.__version__}
    out["trial_steps"] = out["steps_per_epoch"] * cfg.epochs
    # Eager first: its first calls' time once warm (what a compiled first call is compared with), and
    # a step time, printed before compiling, so that a case stopped at --case-timeout still has them.
    eager_first = 0.0
    for timed in (False, True):
        for kind, (xb, yb) in first_calls:
            t0 = time.perf_counter()
            runners["eager"][0 if kind == "step" else 1](xb, yb)
            eager_first += (time.perf_counter() - t0) if timed else 0.0
    xb, yb = batch(b)
    blocks = []
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(args.steps):
            runners["eager"][0](xb, yb)
        blocks.append((time.perf_counter() - t0) / args.steps)
    print("EAGER " + json.dumps({"step_ms": statistics.median(blocks) * 1e3, "trial_steps": out["trial_steps"],
                                 "startup_s": startup, "elapsed_s": time.perf_counter() - started}), flush=True)
    for name, (step, evaluate) in runners.items():
        row = out["runners"][name] = {"first_s": 0.0}
        if name == "eager":
            continue
        counters.clear()
        try:
            for kind, (xb, yb) in first_calls:
                t0 = time.perf_counter()
                call(name, step if kind == "step" else evaluate, xb, yb)
                row["first_s"] += time.perf_counter() - t0
            row["graphs"] = counters["stats"]["unique_graphs"]
            # A module Dynamo refuses to wrap is counted under "unimplemented" only, other breaks under both
            reasons = [k.splitlines()[0] for k in (*counters["unimplemented"], *counters["graph_break"])]
            row["break_reasons"] = list(dict.fromkeys(reasons))
        except Exception as e:  # a runner that fails is a row with its reason
            row["error"] = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:200]}"
    live = {k: v for k, v in runners.items() if "error" not in out["runners"][k]}
    xb, yb = batch(b)
    for name in live:
        for _ in range(args.warmup):
            call(name, live[name][0], xb, yb)
    times: dict[str, list[float]] = {k: [] for k in live}
    for r in range(args.rounds):
        order = list(live) if r % 2 == 0 else list(reversed(live))
        for name in order:
            t0 = time.perf_counter()
            for _ in range(args.steps):
                call(name, live[name][0], xb, yb)
            times[name].append((time.perf_counter() - t0) / args.steps)
    for name in live:
        row = out["runners"][name]
        row["step_ms"] = statistics.median(times[name]) * 1e3
        row["speedup"] = statistics.median(e / t for e, t in zip(times["eager"], times[name], strict=True))
        row["cold_s"] = max(0.0, row["first_s"] - eager_first)
    return out


# --- the driver ------------------------------------------------------------------------------------------

def launch(args: argparse.Namespace, settings: dict, allow_rnn: bool) -> dict:
    """Run one case's worker; past --case-timeout, stop it (its process group: inductor's compile
    workers too) and return what it printed before compiling, marked unfinished."""
    with tempfile.TemporaryDirectory(prefix="bench-compile-inductor-") as cache:
        cmd = [sys.executable, __file__, "--worker", json.dumps(settings), "--threads", str(args.threads),
               "--rounds", str(args.rounds), "--steps", str(args.steps), "--warmup", str(args.warmup),
               "--mode", args.mode, *(["--allow-rnn"] if allow_rnn else [])]
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache, "OMP_NUM_THREADS": str(args.threads),
               "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT,
                                start_new_session=True)
        try:
            stdout, stderr = proc.communicate(timeout=args.case_timeout or None)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            stdout, stderr = proc.communicate()
            eager = [line for line in stdout.splitlines() if line.startswith("EAGER ")]
            if not eager:
                return {"error": f"no eager timing within --case-timeout {args.case_timeout} s"}
            return {"unfinished": True, **json.loads(eager[-1].removeprefix("EAGER "))}
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = (stderr.strip() or stdout.strip()).splitlines()[-1:] or ["no output"]
        return {"error": f"exit {proc.returncode}: {tail[0]}"}
    return json.loads(lines[-1].removeprefix("RESULT "))



def main(args: argparse.Namespace) -> int:
    archs = args.archs.split(",")
    cases = [(a, sh) for a in archs for sh in SHAPES] if args.all_shapes else [(a, HOME_SHAPE.get(a, "quickstart")) for a in archs]
    print(f"torch.compile (mode {args.mode}) against eager, training step on the CPU ({device_name()}, {args.threads} thread(s)); "
          f"{args.rounds} rounds × {args.steps} steps after {args.warmup} warm-up steps; each case in a fresh process, "
          f"cold inductor cache\n")
    print("| arch | shape | runner | step ms | eager ÷ runner | cold compile s | trial est. s | compile ÷ trial "
          "| graphs; breaks | verdict |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    failed, startups = False, []
    for arch, shape in cases:
        settings = case_settings(shape, arch, args.sets)
        for allow_rnn in (False, True) if args.allow_rnn else (False,):
            failed |= report(args, arch, shape, launch(args, settings, allow_rnn), startups, allow_rnn)
    if startups:
        print(f"\ncompiler start-up, once per process (imports, first C++ build): median {statistics.median(startups):.1f} s; "
              f"verdict rule: adopt only where compiled ≥ {SPEEDUP_MIN}× faster and cold compile < "
              f"{COMPILE_SHARE_MAX:.0%} of a typical trial")
    return 1 if failed else 0


def report(args: argparse.Namespace, arch: str, shape: str, got: dict, startups: list[float], allow_rnn: bool) -> bool:
    """Print one worker's rows; True if anything failed. Each compiled row's ratio is to its own process's eager."""
    failed, with_eager = False, not allow_rnn
    if "error" in got:
        print(f"| {arch} | {shape} | – | FAILED: {got['error']} | | | | | | |", flush=True)
        return True
    startups.append(got["startup_s"])
    if got.get("unfinished"):
        trial = got["step_ms"] / 1e3 * got["trial_steps"]
        cold = args.case_timeout - got["elapsed_s"]  # at least: compiling began then and had not finished
        name = "compiled allow_rnn" if allow_rnn else "compiled"
        if with_eager:
            print(f"| {arch} | {shape} | eager | {got['step_ms']:.2f} | 1.00 | – | {trial:.0f} ({got['trial_steps']} steps) "
                  f"| – | – | – |", flush=True)
        verdict = "keep eager: " + (f"compile ≥ {COMPILE_SHARE_MAX:.0%} of a trial" if cold >= COMPILE_SHARE_MAX * trial
                                    else "undecided: raise --case-timeout")
        print(f"| {arch} | {shape} | {name} | unfinished | – | > {cold:.0f} (stopped at --case-timeout) | {trial:.0f} | "
              f"> {cold / trial:.2f} | – | {verdict} |", flush=True)
        return False
    trial = got["runners"]["eager"]["step_ms"] / 1e3 * got["trial_steps"]
    for name, row in got["runners"].items():
        if "error" in row:
            failed = True
            print(f"| {arch} | {shape} | {name} | FAILED: {row['error']} | | | | | | |", flush=True)
            continue
        if name == "eager":
            if not with_eager:
                continue
            print(f"| {arch} | {shape} | eager | {row['step_ms']:.2f} | 1.00 | – | {trial:.0f} "
                  f"({got['trial_steps']} steps) | – | – | – |", flush=True)
            continue
        share = row["cold_s"] / trial
        ok = row["speedup"] >= SPEEDUP_MIN and share < COMPILE_SHARE_MAX
        why = [w for w, bad in ((f"speed-up < {SPEEDUP_MIN}", row["speedup"] < SPEEDUP_MIN),
                                (f"compile ≥ {COMPILE_SHARE_MAX:.0%} of a trial", share >= COMPILE_SHARE_MAX)) if bad]
        verdict = "adopt" if ok else "keep eager: " + ", ".join(why)
        breaks = f"{row['graphs']}; " + ("; ".join(row["break_reasons"]) or "no break")
        print(f"| {arch} | {shape} | {name} | {row['step_ms']:.2f} | {row['speedup']:.2f} | {row['cold_s']:.1f} | "
              f"{trial:.0f} | {share:.2f} | {breaks} | {verdict} |", flush=True)
    return failed


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archs", default="rnn,lstm,gru,bigru,bilstm,mlp,seed-lstm")
    p.add_argument("--all-shapes", action="store_true", help="every architecture at the quickstart's and the seed's shapes")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the quickstart's two workers get one each)")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--steps", type=int, default=10, help="steps timed per runner per round")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--mode", default="default", help="torch.compile mode (default, max-autotune-no-cudagraphs, …)")
    p.add_argument("--allow-rnn", action="store_true",
                   help="also compile with the recurrence traced, in a process of its own (minutes per case)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override an experiment key for every case, e.g. model.kernel=torch (repeatable)")
    p.add_argument("--case-timeout", type=float, default=60,
                   help="seconds a case may take; past it, compiling is stopped and reported as longer than that (0: none)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.case = args.worker
    return args


if __name__ == "__main__":
    ARGS = parse()
    if ARGS.worker:
        print("RESULT " + json.dumps(worker(ARGS)), flush=True)
        sys.exit(0)
    sys.exit(main(ARGS))
