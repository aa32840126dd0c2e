"""Speed and memory: inference latency, peak memory, and the device's measured fp32 matmul peak.

Every timing waits for the device before reading the clock (torch.utils.benchmark, or `sync`),
so GPU work is counted where it runs, not where it was queued. The matmul peak is measured once per process and
device (and CPU thread count) and cached: it is what `peak_fraction` divides by.
"""

from __future__ import annotations

import logging
import re
import resource
import sys
import time
from pathlib import Path

import torch
from torch import nn

_PEAKS: dict[tuple[str, int], float] = {}


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
    model: nn.Module, x: torch.Tensor, device: torch.device, *, warmup: int = 3, repeats: int = 20
) -> dict[str, float]:
    """Latency of one forward pass over the batch `x` in eval mode, after warm-up: the median
    and 95th percentile of `repeats` single timed calls (torch.utils.benchmark waits for the
    device and keeps this process's thread count)."""
    # Importing it imports torch's C++-extension builder, which warns on every CPU-only machine
    # that it found no CUDA runtime: nothing here builds extensions.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    from torch.utils import benchmark

    model.eval()
    x = x.to(device)
    timer = benchmark.Timer("model(x)", globals={"model": model, "x": x}, num_threads=torch.get_num_threads())
    timer.timeit(warmup)
    # One call per measurement: a percentile needs every call's time, not block averages.
    times = sorted(timer.timeit(1).mean for _ in range(repeats))
    p50 = times[len(times) // 2]
    p95 = times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
    return {"infer_latency_ms_p50": p50 * 1e3, "infer_latency_ms_p95": p95 * 1e3, "infer_samples_per_s": len(x) / p50}


def device_peak_gflops(device: torch.device, seconds: float = 0.3) -> float:
    """Best fp32 matmul rate (GFLOP/s) of `device`, measured once per process and cached.

    Uses the process's current precision settings (e.g. TF32 if the user allowed it) and, on
    CPU, its current thread count, so the peak matches what training can use.
    """
    threads = torch.get_num_threads() if device.type == "cpu" else 0
    key = (str(device), threads)
    if key not in _PEAKS:
        n = 4096 if device.type != "cpu" else (1024 if threads <= 4 else 2048)
        a = torch.randn(n, n, device=device)
        b = torch.randn(n, n, device=device)
        c = torch.mm(a, b)
        sync(device)
        best, reps, end = 0.0, 4, time.perf_counter() + seconds
        while True:
            t0 = time.perf_counter()
            for _ in range(reps):
                torch.mm(a, b, out=c)
            sync(device)
            best = max(best, reps * 2 * n**3 / (time.perf_counter() - t0) / 1e9)
            if time.perf_counter() > end:
                break
        _PEAKS[key] = best
    return _PEAKS[key]


def training_speed(flops_per_sample: int | None, samples_per_s: float, device: torch.device) -> dict[str, float]:
    """`train_gflops_per_s` (training ≈ 3 × forward FLOPs) and its share of the device's peak."""
    peak = device_peak_gflops(device)
    out = {"device_peak_gflops": peak}
    if flops_per_sample:
        achieved = 3 * flops_per_sample * samples_per_s / 1e9
        out |= {"train_gflops_per_s": achieved, "peak_fraction": achieved / peak}
    return out
