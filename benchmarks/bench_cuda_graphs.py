"""What a CUDA graph buys harness's training step on a GPU, per family and precision: the whole step
captured once and replayed, against eager, with the numerics of the two compared.

Each case is an architecture at an experiment's shapes, as benchmarks/bench_compile.py sets them:
the seed model at its own (Fashion-MNIST rows, 28 × 28, batch 32, Adam), the others at the
quickstart's (MNIST-1D, 40 steps × 1, hidden 64, batch 64, Adam, clip 1.0); `--shape seed` or
`--shape quickstart` puts every architecture at one. The step is harness's: forward (under autocast
for bf16), the task's loss, backward, the global gradient norm, clipping where the experiment clips,
the optimiser's step. Runners:

  eager    the step as harness's training loop runs it (random batches already on the device)
  graphed  the same step captured in one torch.cuda.CUDAGraph after three warm-up steps on a side
           stream (static input buffers; the optimiser made capturable; autocast's weight cache off,
           as capture needs), each step a copy into the buffers and one replay

Numerics: from the same weights and optimiser state, --check-steps steps on the same batches, eager
and replayed, dropout off (a graph draws its dropout masks from its own offsets of the generator, so
masks differ by design); the largest |Δ| of any parameter relative to that parameter's largest
magnitude. Speed: rounds of --steps steps of each runner, the order alternating, synchronised at the
ends; samples/s is the median round's, and the speed-up the median of the rounds' eager ÷ graphed.
Verdict: adopt where graphed is ≥ 1.3× faster and the relative |Δ| is within 1e-4 (fp32) or 1e-2
(bf16). A case whose capture fails is a row with the reason: that family stays eager.

Each architecture runs in a process of its own (a failed capture can leave the CUDA context unusable),
cases of one architecture one after another. Nothing is asserted; the GPU machine is the one lent.

    python benchmarks/bench_cuda_graphs.py                                  # on the GPU: the default families
    python benchmarks/bench_cuda_graphs.py --archs seed-lstm --precisions fp32,bf16 --steps 200
    python benchmarks/bench_cuda_graphs.py --device cpu --archs gru --steps 5 --rounds 2   # the script, not the GPU
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_compile import HOME_SHAPE, ROOT, case_settings  # noqa: E402  (the same cases and shapes)

SPEEDUP_MIN = 1.3
TOLERANCE = {"fp32": 1e-4, "bf16": 1e-2, "fp16": 1e-2}
DEFAULT_ARCHS = "seed-lstm,lstm,gru,rnn,bigru,indrnn,ornn,lru,mingru,minlstm,mamba,mlp"


# --- the step, eager and captured (benchmarks/bench_gpu_jobs.py trains with these too) -----------------

def batches(s: dict, device, seed: int = 0):
    """A function n → (x, y): random batches of the case's shapes, made on the device."""
    import torch

    gen = torch.Generator(device).manual_seed(seed)

    def batch(n: int):
        x = torch.randn(n, *s["x_shape"], generator=gen, device=device)
        if s["y_kind"] == "class":
            return x, torch.randint(0, s["output_size"], (n, *s["y_shape"]), generator=gen, device=device)
        return x, torch.randn(n, *s["y_shape"], generator=gen, device=device)

    return batch


def build(s: dict, device):
    import torch

    from harness.archs import create_model

    torch.manual_seed(s["train"]["seed"])
    return create_model(s["arch"], input_size=s["input_size"], output_size=s["output_size"], io=s["io"],
                        seq_len=s["seq_len"], **s["overrides"]).to(device)


def make_step(model, s: dict, device, precision: str, graphed: bool, opt=None):
    """(step(x, y), optimiser): harness's training step for `model`, eager or captured in a CUDA graph
    after three warm-up steps on a side stream (then `opt` is made here, capturable)."""
    import torch

    from harness.config import TrainSettings
    from harness.gradients import clip_, grad_norm
    from harness.precision import DTYPES
    from harness.tasks import LOSSES
    from harness.train import make_optimizer

    cfg, loss_fn = TrainSettings(**s["train"]), LOSSES[s["loss"]]
    params = [p for p in model.parameters() if p.requires_grad]
    opt = opt or make_optimizer(params, cfg)

    def body(x, y, cache: bool):
        model.train()
        # A captured region needs autocast's weight cache off: cached casts would outlive the capture.
        with (torch.autocast(device.type, enabled=False) if precision == "fp32" else
              torch.autocast(device.type, dtype=DTYPES[precision], cache_enabled=cache)):
            out = model(x)
        loss = loss_fn(out.float(), y)
        loss.backward()
        norm = grad_norm(params)
        if cfg.clip_norm is not None:
            clip_(params, cfg.clip_norm, norm)
        opt.step()

    if not graphed:
        def step(x, y):
            opt.zero_grad(set_to_none=True)
            body(x, y, cache=True)

        return step, opt
    for group in opt.param_groups:  # Adam's step counter on the device, advanced inside the graph
        if "capturable" in group:
            group["capturable"] = True
    static_x, static_y = batches(s, device, seed=1)(cfg.batch_size)
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(3):
            opt.zero_grad(set_to_none=True)
            body(static_x, static_y, cache=False)
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    opt.zero_grad(set_to_none=True)  # the captured backward allocates the gradients it writes
    with torch.cuda.graph(graph):
        body(static_x, static_y, cache=False)

    def replay(x, y):
        static_x.copy_(x)
        static_y.copy_(y)
        graph.replay()

    return replay, opt


def alternate(runners: dict, rounds: int, steps: int, sync, *args) -> dict[str, list[float]]:
    """Seconds of `steps` calls of each runner (with `args`) per round, the order alternating between
    rounds and the device synchronised around each: what this file and bench_seed_vmap.py time with."""
    times: dict[str, list[float]] = {k: [] for k in runners}
    for r in range(rounds):
        for name in (list(runners) if r % 2 == 0 else list(reversed(runners))):
            sync()
            t0 = time.perf_counter()
            for _ in range(steps):
                runners[name](*args)
            sync()
            times[name].append(time.perf_counter() - t0)
    return times


def no_dropout(model) -> None:
    from torch import nn

    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
        elif isinstance(getattr(m, "dropout", None), float):  # torch's stacked RNNs, harness's Stack
            m.dropout = 0.0


# --- the worker: one architecture, its cases, in its own process ---------------------------------------

def worker(args: argparse.Namespace) -> None:
    import copy

    import torch

    from harness.config import TrainSettings
    from harness.train import make_optimizer

    device = torch.device(args.device)
    cuda = device.type == "cuda"

    def sync():
        if cuda:
            torch.cuda.synchronize(device)

    for case in json.loads(args.worker):
        s, precision = case["settings"], case["precision"]
        b = s["train"]["batch_size"]
        row = {"arch": s["arch"], "shape": s["shape"], "precision": precision, "batch": b}
        try:
            batch = batches(s, device)
            runners = {"eager": make_step(build(s, device), s, device, precision, graphed=False)[0]}
            if cuda:
                # Numerics first, dropout off: the eager twin starts from the graphed model's weights and
                # optimiser state after its warm-up (capture itself runs nothing).
                model = build(s, device)
                no_dropout(model)
                t0 = time.perf_counter()
                step, opt = make_step(model, s, device, precision, graphed=True)
                sync()
                row["capture_s"] = time.perf_counter() - t0
                twin = copy.deepcopy(model)
                twin_opt = make_optimizer([p for p in twin.parameters() if p.requires_grad], TrainSettings(**s["train"]))
                twin_opt.load_state_dict(opt.state_dict())  # capturable, as the graphed optimiser
                twin_step = make_step(twin, s, device, precision, graphed=False, opt=twin_opt)[0]
                for _ in range(args.check_steps):
                    x, y = batch(b)
                    step(x, y)
                    twin_step(x, y)
                sync()
                row["rel_diff"] = max(float((p - q).abs().max() / q.abs().max().clamp_min(1e-12))
                                      for p, q in zip(model.parameters(), twin.parameters(), strict=True))
                del model, twin, step, opt, twin_opt, twin_step
                runners["graphed"] = make_step(build(s, device), s, device, precision, graphed=True)[0]
            x, y = batch(b)
            for step in runners.values():
                for _ in range(args.warmup):
                    step(x, y)
            sync()
            times = alternate(runners, args.rounds, args.steps, sync, x, y)
            for name, ts in times.items():
                row[f"{name}_samples_s"] = b * args.steps / statistics.median(ts)
            if "graphed" in times:
                row["speedup"] = statistics.median(e / g for e, g in zip(times["eager"], times["graphed"], strict=True))
        except Exception as e:  # a case that fails is a row with its reason; the next case goes on
            row["error"] = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:160]}"
        print("RESULT " + json.dumps(row), flush=True)


# --- the driver ----------------------------------------------------------------------------------------

def verdict(row: dict) -> str:
    if "error" in row:
        return "keep eager: the case failed"
    if "speedup" not in row:
        return "– (no CUDA)"
    why = [w for w, bad in ((f"speed-up < {SPEEDUP_MIN}", row["speedup"] < SPEEDUP_MIN),
                            (f"relative |Δ| > {TOLERANCE[row['precision']]:g}", row["rel_diff"] > TOLERANCE[row["precision"]]))
           if bad]
    return "adopt" if not why else "keep eager: " + ", ".join(why)


def main(args: argparse.Namespace) -> int:
    import torch

    from harness.provenance import device_name

    dev = torch.device(args.device)
    where = device_name(dev)
    if dev.type == "cuda":
        where += f", CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}"
    print(f"CUDA graph of the whole training step against eager on {where}, torch {torch.__version__}; "
          f"{args.rounds} rounds × {args.steps} steps after {args.warmup} warm-up steps; numerics over "
          f"{args.check_steps} steps, dropout off\n")
    print("| arch | shape | precision | batch | eager samples/s | graphed samples/s | graphed ÷ eager | capture s "
          "| relative max abs Δ | verdict |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    failed = False
    for arch in args.archs.split(","):
        shape = args.shape or HOME_SHAPE.get(arch, "quickstart")
        settings = case_settings(shape, arch, args.sets)
        cases = [{"settings": settings, "precision": p} for p in args.precisions.split(",")]
        cmd = [sys.executable, __file__, "--worker", json.dumps(cases), "--device", args.device,
               "--rounds", str(args.rounds), "--steps", str(args.steps), "--warmup", str(args.warmup),
               "--check-steps", str(args.check_steps)]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=args.case_timeout)
            rows = [json.loads(line.removeprefix("RESULT ")) for line in done.stdout.splitlines() if line.startswith("RESULT ")]
            tail = (done.stderr.strip() or done.stdout.strip()).splitlines()[-1:] or ["no output"]
        except subprocess.TimeoutExpired:
            rows, tail = [], [f"past --case-timeout {args.case_timeout} s"]
        if len(rows) < len(cases):
            rows += [{"arch": arch, "shape": shape, "precision": c["precision"], "batch": settings["train"]["batch_size"],
                      "error": f"the worker ended: {tail[0][:160]}"} for c in cases[len(rows):]]
        for row in rows:
            failed |= "error" in row
            cells = ("FAILED: " + row["error"], "", "", "", "") if "error" in row else (
                f"{row['eager_samples_s']:,.0f}", f"{row['graphed_samples_s']:,.0f}" if "graphed_samples_s" in row else "–",
                f"{row['speedup']:.2f}" if "speedup" in row else "–", f"{row['capture_s']:.2f}" if "capture_s" in row else "–",
                f"{row['rel_diff']:.1e}" if "rel_diff" in row else "–")
            print(f"| {row['arch']} | {row['shape']} | {row['precision']} | {row['batch']} | " + " | ".join(cells)
                  + f" | {verdict(row)} |", flush=True)
    return 1 if failed else 0


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archs", default=DEFAULT_ARCHS)
    p.add_argument("--shape", choices=["quickstart", "seed"], help="every architecture at this experiment's shapes")
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--device", default="cuda")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=100, help="steps timed per runner per round")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--check-steps", type=int, default=10, help="steps of the numerics comparison")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override an experiment key for every case, e.g. train.batch_size=256 (repeatable)")
    p.add_argument("--case-timeout", type=float, default=120, help="seconds an architecture's process may take")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    return p.parse_args(argv)


if __name__ == "__main__":
    ARGS = parse()
    if ARGS.worker:
        worker(ARGS)
        sys.exit(0)
    sys.exit(main(ARGS))
