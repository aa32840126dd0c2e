"""Which kernel each recurrent layer of a model runs on: what a speed figure is a property of.

`kernel_path(model, precision)` promises, for the model's current device and dtype, the training
precision (harness.precision: bf16 and fp16 run under autocast) and torch's backend switches:
- `harness`: the layer runs harness's own scan (`ElmanRNN`, `GRU` with their `kernel` option,
  harness.archs): on the CPU by default, on any device with `kernel = "harness"`;
- `onednn`: the layer runs torch's fused oneDNN (mkldnn) RNN kernel (`aten::mkldnn_rnn_layer`);
  on torch 2.14's CPU build that is `nn.LSTM` in float32 or bf16 while `torch.backends.mkldnn` is on;
- `cudnn`: it runs cuDNN (`aten::_cudnn_rnn`), any recurrent layer on CUDA with cuDNN enabled;
- `miopen`: the same on ROCm (`aten::miopen_rnn`);
- `aten`: torch's per-step path, a cell's matmuls and pointwise ops once per time step (on the
  CPU: `nn.GRU`, `nn.RNN` or harness's with `kernel = "torch"`, and `nn.LSTM` with oneDNN off or in
  float64);
- `custom`: another subclass of `nn.RNNBase` with a forward of its own;
- `scan`, `logscan`, `loop`, `harness`: a layer of the families proposed since (harness.archs.sequence)
  names how its recurrence runs (`kernel_name`): a parallel scan, a log-space one, torch ops one
  step at a time, or harness's scan;
- `none`: no recurrent layer at all (the MLP; a plug-in's own recurrence is not seen).
Layers that differ are joined with `+` in module order (`onednn+aten`). It does not guess from
versions: it runs one tiny forward of each layer (2 sequences × 3 steps, in eval mode so that no
dropout draws a random number) and reads which aten ops torch dispatched.
"""

from __future__ import annotations

import torch
from torch import nn

from harness.precision import autocast
from harness.torch_private import TorchDispatchMode

__all__ = ["kernel_path", "layer_kernel"]

# aten op (dispatched below autograd) → kernel name; the first one seen decides
FUSED = {"mkldnn_rnn_layer": "onednn", "_cudnn_rnn": "cudnn", "miopen_rnn": "miopen"}
TORCH_FORWARDS = {nn.RNN.forward, nn.LSTM.forward, nn.GRU.forward}


class _OpNames(TorchDispatchMode):
    """Notes the name of every aten op run under it (the overload's packet: `mkldnn_rnn_layer`)."""

    def __init__(self):
        super().__init__()
        self.names: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.add(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def layer_kernel(rnn: nn.RNNBase, precision: str = "fp32") -> str:
    """`harness`, `onednn`, `cudnn`, `miopen`, `aten` or `custom` for one recurrent module (see module doc)."""
    weight = next(rnn.parameters())
    if hasattr(rnn, "runs_harness") and rnn.runs_harness(weight.device):
        return "harness"
    if type(rnn).forward not in TORCH_FORWARDS and not hasattr(rnn, "runs_harness"):
        return "custom"
    shape = (2, 3, rnn.input_size) if rnn.batch_first else (3, 2, rnn.input_size)
    x = torch.zeros(shape, dtype=weight.dtype, device=weight.device)
    was_training = rnn.training
    rnn.eval()
    try:
        with _OpNames() as seen, autocast(weight.device, precision):
            rnn(x)
    finally:
        rnn.train(was_training)
    return next((kernel for op, kernel in FUSED.items() if op in seen.names), "aten")


def kernel_path(model: nn.Module, precision: str = "fp32") -> str:
    """The kernels of the model's recurrent layers, distinct ones joined by `+`; `none` without any."""
    kernels = [layer_kernel(m, precision) if isinstance(m, nn.RNNBase) else m.kernel_name
               for m in model.modules() if isinstance(m, nn.RNNBase) or hasattr(m, "kernel_name")]
    return "+".join(dict.fromkeys(kernels)) or "none"
