"""Recurrent kernels on the CPU: harness's scans (`kernel = "harness"`) against torch's own
(`kernel = "torch"`) for the GRU and the Elman RNN, with the fused oneDNN LSTM alongside, in fp32
and under bf16 autocast: what `kernel = "auto"` and `train.precision` are chosen by.

Each runner is one training step (forward, cross-entropy, backward; no optimiser step) of the
registry's model, built as a sweep builds it, at two shapes: the quickstart's (MNIST-1D: batch
64, 40 steps × 1, hidden 64) and the seed notebook's layer (Fashion-MNIST rows: batch 32,
28 steps × 28, hidden 128). Before timing, the two GRU kernels' outputs and gradients are checked
against each other with copied weights (the Elman ones likewise). Runners are warmed up, then timed
round-robin (each round times every runner once, a block of steps each), so machine drift hits all
alike; the table gives the median step time, the training GFLOP/s (3 × the model's forward matmul
FLOPs per sample, as `peak_fraction` counts them) and its fraction of the matmul peak of the same
precision, measured in the same run (`harness.speed.device_peak_gflops`), and the ratios torch /
harness and fp32 / bf16 per model. Nothing is asserted: on a shared machine read the ratios.

    .venv/bin/python benchmarks/bench_kernels.py                  # 1 thread, as a sweep worker
    .venv/bin/python benchmarks/bench_kernels.py --threads 2 --rounds 20
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from harness.archs import create_model
from harness.precision import DTYPES, autocast, native_bf16_cpu
from harness.provenance import device_name
from harness.speed import device_peak_gflops

SHAPES = {  # name: (batch, steps, inputs, hidden)
    "quickstart": (64, 40, 1, 64),
    "seed": (32, 28, 28, 128),
}
MODELS = {  # name: (arch, options)
    "GRU torch": ("gru", {"kernel": "torch"}),
    "GRU harness": ("gru", {"kernel": "harness"}),
    "RNN torch": ("rnn", {"kernel": "torch"}),
    "RNN harness": ("rnn", {"kernel": "harness"}),
    "LSTM oneDNN": ("lstm", {}),
}
CPU = torch.device("cpu")


@dataclass
class Runner:
    shape: str
    model: str
    precision: str
    step: object
    flops: int  # training FLOPs per step
    times: list[float] = field(default_factory=list)


def make_runner(shape: str, model_name: str, precision: str) -> Runner:
    batch, steps, inputs, hidden = SHAPES[shape]
    arch, options = MODELS[model_name]
    torch.manual_seed(0)
    model = create_model(arch, input_size=inputs, output_size=10, io="many-to-one", seq_len=steps,
                         hidden_size=hidden, **options)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(batch, steps, inputs, generator=g), torch.randint(0, 10, (batch,), generator=g)

    def step():
        model.zero_grad(set_to_none=True)
        with autocast(CPU, precision):
            out = model(x)
        F.cross_entropy(out.float(), y).backward()

    return Runner(shape, model_name, precision, step, 3 * model.flops(steps) * batch)


def check_equal(shape: str) -> None:
    """The two kernels of a family: the same outputs and gradients from the same weights (fp64)."""
    batch, steps, inputs, hidden = SHAPES[shape]
    for arch in ("gru", "rnn"):
        results = []
        for kernel in ("torch", "harness"):
            torch.manual_seed(0)
            model = create_model(arch, input_size=inputs, output_size=10, io="many-to-one", seq_len=steps,
                                 hidden_size=hidden, kernel=kernel).double()
            x = torch.randn(batch, steps, inputs, dtype=torch.double, generator=torch.Generator().manual_seed(1))
            out = model(x)
            results.append([out, *torch.autograd.grad(out.sin().sum(), list(model.parameters()))])
        for a, b in zip(*results, strict=True):
            torch.testing.assert_close(a, b)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--steps", type=int, default=5, help="training steps per timed block")
    ap.add_argument("--shapes", default=",".join(SHAPES))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # as harness's run and sweep commands do
    precisions = ["fp32", "bf16"] if native_bf16_cpu() else ["fp32"]
    shapes = args.shapes.split(",")
    for shape in shapes:
        check_equal(shape)
    runners = [make_runner(s, m, p) for s in shapes for m in MODELS for p in precisions]
    for r in runners:  # warm-up: allocator, oneDNN primitives
        for _ in range(3):
            r.step()
    peaks = {p: [] for p in precisions}
    for _ in range(args.rounds):
        for r in runners:
            t0 = time.perf_counter()
            for _ in range(args.steps):
                r.step()
            r.times.append((time.perf_counter() - t0) / args.steps)
        for p in precisions:  # the peak, interleaved with the steps it divides
            peaks[p].append(device_peak_gflops(CPU, DTYPES[p], seconds=0.1))
    peak = {p: max(v) for p, v in peaks.items()}
    cpu = device_name()
    print(f"torch {torch.__version__}, {cpu}, {args.threads} thread(s), {args.rounds} rounds × {args.steps} steps; "
          "matmul peak " + ", ".join(f"{p} {v:.0f} GFLOP/s" for p, v in peak.items()))
    print(f"{'shape':11s} {'model':12s} {'prec':5s} {'step ms':>8s} {'GFLOP/s':>8s} {'of peak':>8s}")
    median = {(r.shape, r.model, r.precision): statistics.median(r.times) for r in runners}
    for r in runners:
        t = median[(r.shape, r.model, r.precision)]
        rate = r.flops / t / 1e9
        print(f"{r.shape:11s} {r.model:12s} {r.precision:5s} {t * 1e3:8.2f} {rate:8.1f} {rate / peak[r.precision]:8.2f}")
    print("\nratios of median step times (> 1: the second is faster)")
    for shape in shapes:
        for family in ("GRU", "RNN"):
            for p in precisions:
                torch_t, ours = median[(shape, f"{family} torch", p)], median[(shape, f"{family} harness", p)]
                print(f"  {shape:11s} {family} {p}: torch / harness {torch_t / ours:5.2f}")
        if "bf16" in precisions:
            for model in MODELS:
                print(f"  {shape:11s} {model:12s} fp32 / bf16 {median[(shape, model, 'fp32')] / median[(shape, model, 'bf16')]:5.2f}")


if __name__ == "__main__":
    main()
