"""harness's training loop against a bare PyTorch loop: how much of a sweep's training time is the
loop's own bookkeeping.

For each architecture, the experiment's model (one torch thread) is trained for --epochs epochs
by `harness.train.fit` (no callbacks, no gradient flow: what a trial's epochs run) and by the
plainest loop that trains it the same way: the same shuffled batches, optimiser, loss and
gradient clipping, nothing else (no metric, no finite check, no gradient statistics). Each
side's time per epoch is the median over epochs 2..E (the first warms up); rounds alternate the
two sides so the machine's state is shared, and the ratio harness ÷ bare is printed per round.

    python benchmarks/bench_loop.py                          # the quickstart's four architectures
    python benchmarks/bench_loop.py --archs gru --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from harness import runner, train
from harness.config import load_experiment
from harness.train import make_optimizer

ROOT = Path(__file__).resolve().parents[1]


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("experiment", nargs="?", default=str(ROOT / "experiments" / "quickstart.toml"))
    p.add_argument("--archs", default="rnn,lstm,gru,brnn")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--lr", type=float, default=3e-3)
    return p.parse_args()


def fit_time(exp) -> float:
    """harness's seconds per training epoch (validation left out), median over epochs 2..E."""
    task, model = runner.build(exp)
    result = train.fit(model, task, exp.train, device=torch.device("cpu"), gradflow=False)
    # no gradient statistics: each epoch's samples/s is its training samples over its training time
    return statistics.median(len(task.x_train) / h["epoch_samples_per_s"] for h in result.history[1:])


def bare_time(exp) -> float:
    """The plain loop's seconds per epoch, median over epochs 2..E."""
    task, model = runner.build(exp)
    cfg = exp.train
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(params, cfg)
    gen = torch.Generator().manual_seed(cfg.seed)
    x, y, n = task.x_train, task.y_train, len(task.x_train)
    times = []
    for _ in range(cfg.epochs):
        model.train()
        t0 = time.perf_counter()
        order = torch.randperm(n, generator=gen)
        for i in range(0, n, cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            loss = task.loss_fn(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.clip_norm)
            opt.step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:] or times)


def main() -> None:
    args = parse()
    torch.set_num_threads(1)
    train.flush_denormals()
    print(f"bench_loop: {Path(args.experiment).name}, {args.epochs} epochs, {args.rounds} rounds, torch "
          f"{torch.__version__}, 1 thread; seconds per training epoch")
    for arch in args.archs.split(","):
        exp = load_experiment(args.experiment, [f"model.arch={arch}", f"train.epochs={args.epochs}",
                                                "train.patience=1000", f"train.lr={args.lr}"])
        ratios = []
        for _ in range(args.rounds):
            h, b = fit_time(exp), bare_time(exp)
            ratios.append(h / b)
            print(f"  {arch:6s} harness {h:.3f} s  bare {b:.3f} s  harness ÷ bare {h / b:.2f}")
        print(f"{arch:6s} median harness ÷ bare {statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()
