"""The linear scan of another commit against this checkout's, on the families that train with it
(Mamba, LRU), at a study's size: one training step (forward and backward), interleaved rounds in
one process, one thread. 7e47e46 wrote the scan's backward out as a reverse scan; before it,
autograd differentiated the doubling's slices.

    python benchmarks/bench_scan_backward.py --before 6ed4121
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import harness.archs.lru as lru
import harness.archs.mamba as mamba
import harness.archs.sequence as sequence
from harness.archs import create_model

ROOT = Path(__file__).resolve().parents[1]


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--before", required=True, help="the commit whose harness/archs/sequence.py to time against")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--steps", type=int, default=3, help="training steps timed per round and side")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--seq-len", type=int, default=40)
    return p.parse_args()


def old_scan(commit: str):
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{commit}:harness/archs/sequence.py"],
                            capture_output=True, text=True, check=True).stdout
    path = Path(tempfile.mkdtemp()) / "sequence_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("sequence_before", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.linear_scan


def main() -> None:
    args = parse()
    torch.set_num_threads(1)
    before = old_scan(args.before)
    x, y = torch.randn(args.batch, args.seq_len, 1), torch.randint(0, 10, (args.batch,))
    print(f"bench_scan_backward: {args.before} against this checkout, batch {args.batch}, {args.seq_len} steps, "
          f"1 thread, {args.rounds} rounds of {args.steps} steps; ms per training step")
    # the modern_vs_classic study's sizes (about 12,000 parameters)
    for arch, hidden, module in (("mamba", 35, mamba), ("lru", 43, lru)):
        model = create_model(arch, input_size=1, output_size=10, io="many-to-one", seq_len=args.seq_len, hidden_size=hidden)
        times = {"before": [], "now": []}
        for _ in range(args.rounds):
            for side, scan in (("before", before), ("now", sequence.linear_scan)):
                module.linear_scan = scan
                torch.nn.functional.cross_entropy(model(x), y).backward()  # warm-up
                t0 = time.perf_counter()
                for _ in range(args.steps):
                    torch.nn.functional.cross_entropy(model(x), y).backward()
                times[side].append((time.perf_counter() - t0) / args.steps * 1e3)
        module.linear_scan = sequence.linear_scan
        ratios = [b / n for b, n in zip(times["before"], times["now"], strict=True)]
        print(f"{arch:6s} h{hidden}: before {statistics.median(times['before']):.1f} ms, now "
              f"{statistics.median(times['now']):.1f} ms; before ÷ now median {statistics.median(ratios):.2f} "
              f"(rounds {', '.join(f'{r:.2f}' for r in ratios)})")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
