"""Training precision (`train.precision`): `fp32`, `bf16` or `fp16`.

`bf16` and `fp16` run the model's forward under `torch.autocast` (matmuls and recurrent kernels in
half precision, weights, optimiser state and gradients in fp32); `fp16` also scales the loss
(`torch.amp.GradScaler`) so that small gradients survive, and skips the steps whose scaled
gradients overflowed. Losses, metrics and gradient statistics are computed in fp32 whatever the
precision. Where a precision would run slower than fp32 or not at all, `check_precision` refuses
it with one line: `bf16` needs a CPU with native bf16 arithmetic (AVX-512 BF16 or AMX: otherwise
oneDNN emulates it, slower than fp32) or a GPU that has it; `fp16` needs a CUDA GPU.
"""

from __future__ import annotations

import contextlib

import torch

from harness.errors import HarnessError
from harness.torch_private import native_bf16_cpu

PRECISIONS = ("fp32", "bf16", "fp16")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str, device: torch.device) -> None:
    """Raise `HarnessError` unless `precision` runs natively on `device` (see module doc)."""
    if precision == "bf16":
        if device.type == "cpu" and not native_bf16_cpu():
            raise HarnessError("train.precision: bf16 asked for, but this CPU has no native bf16 (AVX-512 BF16 or AMX) "
                               "and would emulate it, slower than fp32; use train.precision = 'fp32'")
        if device.type == "cuda" and not torch.cuda.is_bf16_supported(including_emulation=False):
            raise HarnessError(f"train.precision: bf16 asked for, but {torch.cuda.get_device_name(device)} has no bf16 "
                               "arithmetic; use 'fp16' or 'fp32'")
    elif precision == "fp16" and device.type != "cuda":
        raise HarnessError(f"train.precision: fp16 runs on CUDA GPUs only (this run is on {device.type}); "
                           "use 'bf16' or 'fp32'")


def autocast(device: torch.device, precision: str):
    """The context the model's forward runs in: autocast to `precision`, nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[precision])


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """A loss scaler, enabled for fp16 only (bf16 has fp32's range and needs none)."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")
