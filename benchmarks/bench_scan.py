"""Parallel scans against a step-by-step loop at 784 steps: the families whose recurrence is linear
in the state (LRU, minGRU, minLSTM, Mamba) trained with their scan (`scan = "parallel"`) and with
the same model one step at a time (`scan = "loop"`), and, for scale, the classic families on
their CPU kernels at the same width.

Each runner is one training step (forward, cross-entropy, backward; no optimiser step) of the
registry's model, many-to-one over sequential MNIST's shape (784 steps × 1 input, 10 classes),
batch 8 and hidden 16 by default (at batch 32 and hidden 64 Mamba's (B, T, E, N) states, kept
for the backward, took this 2-core, 24 GiB machine past 15 minutes, most of it in the kernel). Before timing, each scan family's two paths are checked to
give the same outputs and gradients from the same weights (float64, 784 steps). Runners are
warmed up, then timed round-robin (each round times every runner once), so machine drift hits
all alike; the table gives the median step time and the loop / scan ratio per family. Mamba's
scan is also timed at several chunk sizes (`--chunks`): what its `chunk` default is chosen by.
Nothing is asserted: on a shared machine read the ratios.

    python benchmarks/bench_scan.py --rounds 2          # 1 thread, as a sweep worker: about 25 s
    python benchmarks/bench_scan.py --threads 2 --rounds 7 --chunks 8,16,64
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from harness.archs import create_model
from harness.provenance import device_name

SCAN_FAMILIES = ("lru", "mingru", "minlstm", "mamba")
CLASSIC = ("rnn", "gru", "lstm", "indrnn", "ornn")


def make_step(arch: str, steps: int, batch: int, hidden: int, **options):
    torch.manual_seed(0)
    model = create_model(arch, input_size=1, output_size=10, io="many-to-one", seq_len=steps, hidden_size=hidden, **options)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(batch, steps, 1, generator=g), torch.randint(0, 10, (batch,), generator=g)

    def step():
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()

    return step


def check_equal(arch: str, steps: int) -> None:
    """The scan and the loop: the same outputs and gradients from the same weights (float64)."""
    results = []
    for scan in ("parallel", "loop"):
        torch.manual_seed(0)
        model = create_model(arch, input_size=1, output_size=10, io="many-to-one", seq_len=steps, hidden_size=8,
                             scan=scan).double()
        x = torch.randn(2, steps, 1, dtype=torch.double, generator=torch.Generator().manual_seed(1))
        out = model(x)
        results.append([out, *torch.autograd.grad(out.sin().sum(), list(model.parameters()))])
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=784, help="sequence length")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=16)
    ap.add_argument("--chunks", default="16", help="Mamba chunk sizes to time, comma-separated")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # as harness's run and sweep commands do
    for arch in SCAN_FAMILIES:
        check_equal(arch, args.steps)
    runners = {}
    for arch in SCAN_FAMILIES:
        for scan in ("parallel", "loop"):
            runners[(arch, scan)] = make_step(arch, args.steps, args.batch, args.hidden, scan=scan)
    for chunk in (int(c) for c in args.chunks.split(",")):
        runners[("mamba", f"chunk {chunk}")] = make_step("mamba", args.steps, args.batch, args.hidden, chunk=chunk)
    for arch in CLASSIC:
        runners[(arch, "kernel")] = make_step(arch, args.steps, args.batch, args.hidden)
    for step in runners.values():  # warm-up
        step()
    times: dict[tuple, list[float]] = {k: [] for k in runners}
    for _ in range(args.rounds):
        for key, step in runners.items():
            t0 = time.perf_counter()
            step()
            times[key].append(time.perf_counter() - t0)
    median = {k: statistics.median(v) for k, v in times.items()}
    print(f"torch {torch.__version__}, {device_name()}, {args.threads} thread(s), {args.rounds} rounds; "
          f"many-to-one, {args.steps} steps × 1, batch {args.batch}, hidden {args.hidden}")
    print(f"{'arch':8s} {'path':10s} {'step ms':>9s}")
    for (arch, path), t in median.items():
        print(f"{arch:8s} {path:10s} {t * 1e3:9.1f}")
    print("\nloop / parallel scan (> 1: the scan is faster)")
    for arch in SCAN_FAMILIES:
        print(f"  {arch:8s} {median[(arch, 'loop')] / median[(arch, 'parallel')]:6.2f}")


if __name__ == "__main__":
    main()
