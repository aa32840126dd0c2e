"""Speed of harness's own Elman recurrence (sigmoid) against torch's fused `nn.RNN` (tanh).

Forward + backward of one layer (B=64, H=128), batch first, on the CPU, for MNIST rows (28 steps
× 28), a longer sequence of that width (100 × 28) and pixel-by-pixel MNIST (784 × 1), with the
loss on every step's output (many-to-many) or on the last step's only (many-to-one, where the
gradient reaching early steps has come through time). Runners, after PyTorch's
benchmarks/fastrnns:

  nn.RNN tanh            torch's fused kernel: the control every ratio is relative to
  ElmanRNN sigmoid       what `rnn-sigmoid` runs: `elman_scan`, hand-written BPTT
  ElmanRNN tanh          the same code with tanh (our loop against torch's, same arithmetic)
  autograd loop sigmoid  the obvious version: addmm + sigmoid per step, autograd does BPTT
  compiled loop sigmoid  torch.compile of the autograd loop (only with --compile: its compile
                         time, tens of seconds at T=100, grows with T)

Before timing, each runner's output and gradients are checked against its reference (tanh
against nn.RNN with copied weights, the sigmoid runners against each other). Every runner is
warmed up, then timed round-robin: each round times every runner once, so machine drift hits
all alike, and the ratio to nn.RNN is taken per round (mean ± std and median over rounds; the
median resists other processes' bursts on a shared machine). A runner that fails is printed as
a row with its reason and the script exits 1.

Many-to-one gradients vanish through time and pass through denormal floats, which x86 CPUs
compute up to ~100× slower (a 64×128 · 128×128 matmul: 16 µs on normal numbers, 2.4 ms on
denormals); `--flush-denormal` shows every runner without that cost.

    .venv/bin/python benchmarks/bench_sigmoid_rnn.py                 # 1 thread, 10 rounds
    .venv/bin/python benchmarks/bench_sigmoid_rnn.py --flush-denormal --losses last
    .venv/bin/python benchmarks/bench_sigmoid_rnn.py --threads 2 --shapes 100x28 --compile
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from harness.archs.recurrent import ElmanRNN
from harness.provenance import device_name


@dataclass
class Case:
    batch: int
    steps: int
    inputs: int
    hidden: int
    loss: str  # "all": every step's output feeds the loss (many-to-many); "last": only h_T (many-to-one)


@dataclass
class Row:
    name: str
    times: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)
    note: str = ""
    error: str = ""


Step = Callable[[], list[torch.Tensor]]  # forward + backward; returns [output, *gradients]


def _fwd_bwd(forward: Callable[[], torch.Tensor], params: list[torch.Tensor], loss: str) -> Step:
    def step():
        out = forward()
        read = out if loss == "all" else out[:, -1]
        grads = torch.autograd.grad(read.sin().sum(), params)  # sin: a gradient that varies per element
        return [out.detach(), *grads]

    return step


def _autograd_loop(x, w_ih, w_hh, b_ih, b_hh):
    pre = F.linear(x, w_ih, b_ih + b_hh)
    h, hs = x.new_zeros(x.shape[0], w_hh.shape[0]), []
    for t in range(x.shape[1]):
        h = torch.sigmoid(torch.addmm(pre[:, t], h, w_hh.t()))
        hs.append(h)
    return torch.stack(hs, 1)


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


def runners(case: Case, compile_loop: bool) -> dict[str, tuple[Callable[[], Step], str | None]]:
    """name → (creator, name of the runner whose output it must match, or None)."""
    x = torch.randn(case.batch, case.steps, case.inputs)
    control = nn.RNN(case.inputs, case.hidden, batch_first=True)

    def torch_rnn() -> Step:
        return _fwd_bwd(lambda: control(x)[0], list(control.parameters()), case.loss)

    def own(act: str) -> Callable[[], Step]:
        def create() -> Step:
            rnn = ElmanRNN(case.inputs, case.hidden, batch_first=True, nonlinearity=act)
            rnn.load_state_dict(control.state_dict())
            return _fwd_bwd(lambda: rnn(x)[0], list(rnn.parameters()), case.loss)

        return create

    def loop(fn) -> Callable[[], Step]:
        def create() -> Step:
            params = [p.detach().clone().requires_grad_() for p in control.parameters()]
            return _fwd_bwd(lambda: fn(x, *params), params, case.loss)

        return create

    table = {
        "nn.RNN tanh": (torch_rnn, None),
        "ElmanRNN sigmoid": (own("sigmoid"), None),
        "ElmanRNN tanh": (own("tanh"), "nn.RNN tanh"),
        "autograd loop sigmoid": (loop(_autograd_loop), "ElmanRNN sigmoid"),
    }
    if compile_loop:
        table["compiled loop sigmoid"] = (loop(torch.compile(_autograd_loop)), "ElmanRNN sigmoid")
    return table


def measure(case: Case, *, warmup: int, rounds: int, compile_loop: bool) -> list[Row]:
    rows: dict[str, Row] = {}
    steps: dict[str, Step] = {}
    results: dict[str, list[torch.Tensor]] = {}
    for name, (create, reference) in runners(case, compile_loop).items():
        row = rows[name] = Row(name)
        try:
            step = create()
            t0 = time.perf_counter()
            results[name] = step()  # first call: includes any compilation
            first = time.perf_counter() - t0
            if reference is not None:
                # float32 sums over B·T terms: compare whole tensors, not elements near zero
                err = max(_rel_err(a, b) for a, b in zip(results[name], results[reference], strict=True))
                if not err < 1e-4:
                    raise AssertionError(f"differs from {reference}: relative error {err:.1e}")
                row.note = f"matches {reference} (rel. err {err:.0e})"
            if first > 1.0:
                row.note += f"{'; ' if row.note else ''}first call {first:.1f} s"
            for _ in range(warmup):
                step()
            steps[name] = step
        except Exception as e:  # a failing runner is a row with its reason, never silently dropped
            row.error = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
    for _ in range(rounds):
        this_round = {}
        for name, step in steps.items():
            t0 = time.perf_counter()
            step()
            this_round[name] = time.perf_counter() - t0
            rows[name].times.append(this_round[name])
        if "nn.RNN tanh" in this_round:
            for name, t in this_round.items():
                rows[name].ratios.append(t / this_round["nn.RNN tanh"])
    return list(rows.values())


def _mean_std(values: list[float], scale: float = 1.0, fmt: str = ".1f") -> str:
    if not values:
        return "–"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values) * scale:{fmt}} ± {sd * scale:{fmt}}"


def _median(values: list[float], scale: float = 1.0, fmt: str = ".1f") -> str:
    return f"{statistics.median(values) * scale:{fmt}}" if values else "–"



def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--shapes", default="28x28,100x28,784x1", help="comma-separated STEPSxINPUTS (default 28x28,100x28,784x1)")
    p.add_argument("--losses", default="all,last", help="which outputs feed the loss: all (many-to-many), last (many-to-one)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--compile", action="store_true", help="also time torch.compile of the autograd loop")
    p.add_argument("--flush-denormal", action="store_true",
                   help="torch.set_flush_denormal(True): vanishing gradients stop passing through denormal floats")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.flush_denormal and not torch.set_flush_denormal(True):
        p.error("--flush-denormal: this CPU cannot flush denormals")
    torch.manual_seed(0)

    print(f"torch {torch.__version__}, {device_name()}, {torch.get_num_threads()} thread(s); "
          f"denormals {'flushed to zero' if args.flush_denormal else 'kept (torch default)'}; "
          f"B={args.batch}, H={args.hidden}; {args.warmup} warm-up calls, {args.rounds} timed rounds\n")
    print("| T × I | loss on | runner | forward+backward ms: mean ± std | median | × nn.RNN tanh: mean ± std | median | note |")
    print("|---|---|---|---|---|---|---|---|")
    failed = False
    for shape in args.shapes.split(","):
        steps, inputs = (int(v) for v in shape.lower().split("x"))
        for loss in args.losses.split(","):
            case = Case(args.batch, steps, inputs, args.hidden, loss)
            failed |= report(case, args)
    return 1 if failed else 0


def report(case: Case, args: argparse.Namespace) -> bool:
    """Measure one case and print its rows; True if a runner failed."""
    failed = False
    where = {"all": "every step", "last": "last step"}[case.loss]
    for row in measure(case, warmup=args.warmup, rounds=args.rounds, compile_loop=args.compile):
        failed |= bool(row.error)
        note = f"FAILED: {row.error}" if row.error else row.note
        print(f"| {case.steps} × {case.inputs} | {where} | {row.name} | {_mean_std(row.times, 1e3)} | {_median(row.times, 1e3)} | "
              f"{_mean_std(row.ratios, 1.0, '.2f')} | {_median(row.ratios, 1.0, '.2f')} | {note} |", flush=True)
    return failed


if __name__ == "__main__":
    sys.exit(main())
