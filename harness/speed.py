"""Speed and memory: training throughput over epochs, a training-step benchmark, inference
latency, peak memory, and the device's measured matmul peak in the run's precision (fp32, or
bf16 / fp16 when the run trains under autocast: `peak_fraction` compares like with like).

Every timing waits for the device before reading the clock (torch.utils.benchmark, or `sync`),
so GPU work is counted where it runs, not where it was queued. A run's training throughput is a
median over epochs 2..E whose process CPU time kept up with wall time × torch threads
(`cpu_share` ≥ `CONTENDED_BELOW`): an epoch that shared the cores with other work is left out,
and a run with no other epoch is marked contended. The matmul peak is measured once per
process, device, precision and thread count (`matmul_peak`) and kept only when the measurement
had the cores to itself: a contended one reads low, so it is measured again by the next run.
"""

from __future__ import annotations

import logging
import re
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from harness.precision import autocast
from harness.torch_private import onednn_linear

# An epoch whose process CPU time is below this share of wall time × torch threads shared the
# cores with other work: two busy neighbours on two cores slow a run 10-30×, not 2×.
CONTENDED_BELOW = 0.8


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak: CUDA's allocator statistics, or the process's peak RSS (Linux)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:  # "5" resets VmHWM, the kernel's record of the peak resident set (Linux ≥ 4.0)
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass  # elsewhere the peak counts from process start


def peak_memory_mb(device: torch.device) -> float:
    """CUDA: peak allocated by tensors; otherwise the process's peak resident set size (MiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    if device.type == "mps":
        return torch.mps.driver_allocated_memory() / 2**20
    try:
        kib = int(re.search(r"VmHWM:\s+(\d+)", Path("/proc/self/status").read_text())[1])
        return kib / 1024
    except (OSError, TypeError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
        return peak / 2**20 if sys.platform == "darwin" else peak / 1024


@torch.no_grad()
def inference_latency(
    model: nn.Module, x: torch.Tensor, device: torch.device, *, warmup: int = 3, repeats: int = 20,
    precision: str = "fp32", lengths: torch.Tensor | None = None,
) -> dict[str, float]:
    """Latency of one forward pass over the batch `x` in eval mode, after warm-up: the median
    and 95th percentile of `repeats` single timed calls (torch.utils.benchmark waits for the
    device and keeps this process's thread count)."""
    model.eval()
    x = x.to(device)
    kw = {} if lengths is None else {"lengths": lengths.to(device)}

    def forward() -> None:
        with autocast(device, precision):
            model(x, **kw)

    timer = _timer("forward()", {"forward": forward})
    timer.timeit(warmup)
    # One call per measurement: a percentile needs every call's time, not block averages.
    times = sorted(timer.timeit(1).mean for _ in range(repeats))
    p50 = times[len(times) // 2]
    p95 = times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
    return {"infer_latency_ms_p50": p50 * 1e3, "infer_latency_ms_p95": p95 * 1e3, "infer_samples_per_s": len(x) / p50}


def _timer(stmt: str, globals: dict):
    # Importing it imports torch's C++-extension builder, which warns on every CPU-only machine
    # that it found no CUDA runtime: nothing here builds extensions.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    from torch.utils import benchmark

    return benchmark.Timer(stmt, globals=globals, num_threads=torch.get_num_threads())


def step_ms(model: nn.Module, loss_fn: Callable, x: torch.Tensor, y: torch.Tensor, device: torch.device,
            *, warmup: int = 3, repeats: int = 9, precision: str = "fp32", lengths: torch.Tensor | None = None) -> float:
    """Median time (ms) of one training step's forward and backward over the batch (`x`, `y`) in
    train mode, after `warmup` steps, over `repeats` single timed steps with the process's torch
    threads. The weights are left alone (no optimiser step); their gradients are cleared after."""
    x, y = x.to(device), y.to(device)
    kw = {} if lengths is None else {"lengths": lengths.to(device)}
    was_training = model.training
    model.train()

    def step() -> None:
        model.zero_grad(set_to_none=True)
        with autocast(device, precision):
            out = model(x, **kw)
        loss_fn(out.float(), y).backward()

    timer = _timer("step()", {"step": step})
    try:
        timer.timeit(warmup)
        return statistics.median(timer.timeit(1).mean for _ in range(repeats)) * 1e3
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)


def epoch_speed(history: list[dict[str, float]]) -> tuple[dict[str, float], bool]:
    """The run's training throughput from its epochs' `epoch_samples_per_s` and `cpu_share`:
    the median, min and max over epochs 2..E (all when E = 1) that were not contended, and
    whether every one of them was (then the figures are over all of them, and unreliable)."""
    epochs = history[1:] or history
    if not epochs:
        return {}, False
    calm = [h for h in epochs if h["cpu_share"] >= CONTENDED_BELOW]
    rates = [h["epoch_samples_per_s"] for h in calm or epochs]
    figures = {"train_samples_per_s": statistics.median(rates),
               "train_samples_per_s_min": min(rates), "train_samples_per_s_max": max(rates)}
    return figures, not calm


def device_peak_gflops(device: torch.device, dtype: torch.dtype = torch.float32, seconds: float = 0.3) -> float:
    """Best matmul rate (GFLOP/s) of `device` in `dtype`, measured now (nothing is cached).

    Uses the process's current precision settings (e.g. TF32 if the user allowed it) and, on
    CPU, its current thread count, so the peak matches what training can use. On a CPU with
    oneDNN the best of two libraries: torch's fp32 `mm` goes through MKL, which on AMD takes a path
    at about half of what oneDNN's matmul (the one torch's LSTM kernel and bf16 matmuls use)
    reaches on the same core, and a peak below what a kernel achieves is no ceiling.
    """
    threads = torch.get_num_threads()
    n = 4096 if device.type != "cpu" else (1024 if threads <= 4 else 2048)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    c = torch.mm(a, b)
    matmuls = [lambda: torch.mm(a, b, out=c)]
    if device.type == "cpu" and torch.backends.mkldnn.is_available():
        a_, b_ = a.to_mkldnn(), b.to_mkldnn()  # oneDNN's own layout: no reorder inside the timing
        matmuls.append(lambda: onednn_linear(a_, b_))
    best = 0.0
    for matmul in matmuls:
        matmul()
        sync(device)
        reps, end = 4, time.perf_counter() + seconds / len(matmuls)
        while True:
            t0 = time.perf_counter()
            for _ in range(reps):
                matmul()
            sync(device)
            best = max(best, reps * 2 * n**3 / (time.perf_counter() - t0) / 1e9)
            if time.perf_counter() > end:
                break
    return best


_PEAKS: dict[tuple[str, torch.dtype, int], tuple[float, float]] = {}


def matmul_peak(device: torch.device, dtype: torch.dtype = torch.float32) -> tuple[float, float, bool]:
    """`device_peak_gflops` once per process, device, dtype and thread count: (GFLOP/s, the
    process's CPU share while it was measured, whether it was measured now). A CPU measurement
    that shared the cores (share below `CONTENDED_BELOW`) is not kept, so the next call measures
    again; a GPU's is always kept (its share says nothing about the device)."""
    key = (str(device), dtype, torch.get_num_threads())
    if key in _PEAKS:
        return (*_PEAKS[key], False)
    t0, cpu0 = time.perf_counter(), time.process_time()
    gflops = device_peak_gflops(device, dtype)
    share = (time.process_time() - cpu0) / ((time.perf_counter() - t0) * torch.get_num_threads())
    if device.type != "cpu" or share >= CONTENDED_BELOW:
        _PEAKS[key] = (gflops, share)
    return gflops, share, True


def training_speed(flops_per_sample: int | None, samples_per_s: float, peak_gflops: float) -> dict[str, float]:
    """`train_gflops_per_s` (training ≈ 3 × forward FLOPs) and its share of the device's peak."""
    out = {"device_peak_gflops": peak_gflops}
    if flops_per_sample:
        achieved = 3 * flops_per_sample * samples_per_s / 1e9
        out |= {"train_gflops_per_s": achieved, "peak_fraction": achieved / peak_gflops}
    return out
