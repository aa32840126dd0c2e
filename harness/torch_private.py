"""The one place harness touches torch's private API; each name says why no public one fits.

Checked against torch 2.11 (`tox -e oldest`; the lent GPU machines' version) and 2.14; if torch
renames these, only this file changes.
"""

from __future__ import annotations

import torch

# Dispatch modes (which aten ops run below autograd: how harness.kernels names the kernel a layer
# ran on) are defined only in this private module; torch's own docs point users to it.
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["TorchDispatchMode", "native_bf16_cpu", "onednn_linear"]


def native_bf16_cpu() -> bool:
    """Whether this CPU multiplies bf16 natively (x86: AVX-512 BF16 or AMX tiles). torch asks
    the CPU with these private probes; no public call says which instructions its kernels use."""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def onednn_linear(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ bᵀ by oneDNN on tensors already in its layout (`Tensor.to_mkldnn()`): the matmul torch's
    LSTM kernel and bf16 matmuls use, reachable only through this op (torch.utils.mkldnn wraps it
    in TorchScript modules, deprecated)."""
    return torch._C._nn.mkldnn_linear(a, b)
