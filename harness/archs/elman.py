"""The Elman recurrence h_t = act(x_t W_ihᵀ + b + h_{t-1} W_hhᵀ) with a hand-written backward
(`elman_scan`), `ElmanRNN` (an `nn.RNN` that runs it: the sigmoid RNN torch has no kernel for, and
tanh / ReLU on the CPU, where torch has no fused one), and what harness's recurrent modules share:
the `kernel` choice (`runs_harness`) and the layer-and-direction loop of torch's forward
(`scan_layers`).

The input projection of every step is one matmul, the time loop does one matmul per step forward
and one backward (a hand-written backpropagation through time, which on a CPU stops carrying a
gradient that has vanished), and the recurrent weight's gradient is one matmul over all steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

ACTIVATIONS = ("tanh", "relu", "sigmoid")


def weights_of(rnn: nn.RNNBase, layer: int, reverse: bool) -> list[torch.Tensor | None]:
    """W_ih, W_hh, b_ih, b_hh of one layer and direction of an nn.RNN / LSTM / GRU (biases may be None)."""
    sfx = f"_l{layer}" + ("_reverse" if reverse else "")
    return [getattr(rnn, n + sfx, None) for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]


# --- the Elman recurrence with a hand-written backward ---------------------------------------

_ACT_ = {"tanh": torch.tanh_, "relu": torch.relu_, "sigmoid": torch.sigmoid_}


def _act_backward_(act: str, grad: torch.Tensor, out: torch.Tensor) -> None:
    """grad *= act'(z), written in place; each derivative is read off the output h = act(z)."""
    if act == "sigmoid":
        torch.ops.aten.sigmoid_backward.grad_input(grad, out, grad_input=grad)
    elif act == "tanh":
        torch.ops.aten.tanh_backward.grad_input(grad, out, grad_input=grad)
    else:
        torch.ops.aten.threshold_backward.grad_input(grad, out, 0, grad_input=grad)


def time_steps(n: int, reverse: bool) -> range:
    return range(n - 1, -1, -1) if reverse else range(n)


def reverse_within(x: torch.Tensor, lengths: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Each sequence reversed within its own length, the padding after it left in place: step t of
    sequence b becomes step L_b − 1 − t (t < L_b). Applied twice, it is the identity. Along `dim`
    (1: batch first; 0: time-major), the batch on the other of the first two dims."""
    steps = x.shape[dim]
    t = torch.arange(steps, device=x.device)
    lengths = lengths.to(x.device)
    index = torch.where(t < lengths[:, None], lengths[:, None] - 1 - t, t)  # (B, T)
    if dim == 0:
        index = index.t()
    return x.gather(dim, index.view(*index.shape, *[1] * (x.dim() - 2)).expand_as(x))


def device_of(input) -> torch.device:
    """The device of a tensor or of a PackedSequence's data."""
    return input.data.device if isinstance(input, nn.utils.rnn.PackedSequence) else input.device


# On a CPU, a gradient vanishing through time passes through subnormal floats, which cost x86
# cores up to ~100× per operation (a 64×128·128×128 matmul: 16 µs → 2.4 ms), so a many-to-one
# sigmoid RNN of 100 steps ran 5× slower than nn.RNN. Once the carried gradient is below
# VANISH_RELATIVE of the largest incoming one (far under float32's 6e-8 rounding of any sum it
# joins), it is set to zero and the recurrent matmul is skipped until a step's own output
# brings a gradient again. GPUs compute subnormals at full speed and are never checked.
VANISH_RELATIVE = 1e-15
VANISH_CHECK_EVERY = 8  # steps between checks: each costs a reduction and a host read


def _direct_gradients(grad: torch.Tensor) -> tuple[list[bool] | None, float]:
    """Which steps receive a gradient of their own, and the magnitude that counts as vanished
    (None: no checks, on a GPU or when a gradient is not finite)."""
    if grad.device.type != "cpu" or not len(grad):
        return None, 0.0
    per_step = grad.abs().flatten(1).amax(1).tolist()
    tiny = max(per_step) * VANISH_RELATIVE
    if not math.isfinite(tiny):
        return None, 0.0
    return [m > tiny for m in per_step], tiny


class _ElmanScan(torch.autograd.Function):
    """h_t = act(pre_t + h_{t-1} W_hhᵀ) over time-major `pre` (T, B, H), from h0 (B, H)."""

    @staticmethod
    def forward(ctx, pre, h0, w_hh, act, reverse):
        out = pre.clone(memory_format=torch.contiguous_format)  # z_t is accumulated in place
        # A contiguous W_hhᵀ takes BLAS's untransposed path: about a fifth faster per step here.
        w_t, h, act_ = w_hh.t().contiguous(), h0, _ACT_[act]
        for t in time_steps(len(pre), reverse):
            h = act_(out[t].addmm_(h, w_t))
        ctx.save_for_backward(out, h0, w_hh)
        ctx.act, ctx.reverse = act, reverse
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        out, h0, w_hh = ctx.saved_tensors
        # g becomes ∂L/∂pre in place: g_t = (∂L/∂h_t direct + g_{t+1} W_hh) ⊙ act'(z_t).
        g = grad_out.clone(memory_format=torch.contiguous_format)
        order = time_steps(len(out), not ctx.reverse)  # backwards in time
        fresh, tiny = _direct_gradients(g)
        carrying = True
        for i, t in enumerate(order):
            if i and carrying:
                g[t].addmm_(g[order[i - 1]], w_hh)
            _act_backward_(ctx.act, g[t], out[t])
            if fresh is not None:
                if fresh[t]:
                    carrying = True
                elif carrying and i % VANISH_CHECK_EVERY == 0 and g[t].abs().amax().item() < tiny:
                    g[t].zero_()
                    carrying = False
        first = g[order[-1]]  # the first step in time, which read h0
        # ∂L/∂W_hh = Σ_t g_tᵀ h_{t-1}: one matmul over all steps but the first, whose h_{t-1} is h0.
        g_rest, h_prev = (g[:-1], out[1:]) if ctx.reverse else (g[1:], out[:-1])
        grad_w = None
        if ctx.needs_input_grad[2]:
            grad_w = torch.addmm(first.t() @ h0, g_rest.flatten(0, 1).t(), h_prev.flatten(0, 1))
        grad_h0 = first @ w_hh if ctx.needs_input_grad[1] else None
        return g, grad_h0, grad_w, None, None


def elman_scan(pre: torch.Tensor, h0: torch.Tensor, w_hh: torch.Tensor, act: str, reverse: bool = False) -> torch.Tensor:
    """All states h_1..h_T (T, B, H) of an Elman recurrence, given its input projections
    `pre` = x W_ihᵀ + b (T, B, H); `reverse` runs from t = T to 1."""
    # The in-place matmuls need one dtype (autocast may have made `pre` half precision).
    return _ElmanScan.apply(pre, h0.to(pre.dtype), w_hh.to(pre.dtype), act, reverse)


def _plain_scan(pre: torch.Tensor, h0: torch.Tensor, w_hh: torch.Tensor, act: str, reverse: bool = False) -> torch.Tensor:
    """`elman_scan`'s result from out-of-place ops, autograd's to differentiate: what torch.export records."""
    act_fn = {"tanh": torch.tanh, "relu": torch.relu, "sigmoid": torch.sigmoid}[act]
    h, states = h0, [h0] * len(pre)
    for t in time_steps(len(pre), reverse):
        h = states[t] = act_fn(torch.addmm(pre[t], h, w_hh.t()))
    return torch.stack(states)


# --- harness's recurrent modules: torch's parameters and signature, a kernel of our own ---------

KERNELS = ("auto", "torch", "harness")


def runs_harness(kernel: str, device: torch.device) -> bool:
    """Whether a module with `kernel` runs harness's scan on `device`: `auto` picks it on the CPU,
    where it measured faster than torch's per-step path (benchmarks/bench_kernels.py), and torch's
    fused kernels (cuDNN) everywhere else. Never while torch.export traces the model into a graph for
    others to load (harness.logged_model): the scan's in-place ops would go into it, and torch's own
    kernel gives the same outputs."""
    if torch.compiler.is_exporting():
        return False
    return kernel == "harness" or (kernel == "auto" and device.type == "cpu")


Direction = Callable[[torch.Tensor, torch.Tensor, list, bool], torch.Tensor]


def scan_layers(rnn: nn.RNNBase, input: torch.Tensor, hx: torch.Tensor | None, direction: Direction,  # noqa: A002
                lengths: torch.Tensor | None = None):
    """`nn.RNN`/`nn.GRU`'s forward (batch first or not, batched or not, stacked, bidirectional,
    dropout between layers) with each layer and direction computed by
    `direction(x, h0, [w_ih, w_hh, b_ih, b_hh], reverse)` → its states (T, B, H), time-major.
    With `lengths` (zero-padded sequences of different lengths), the backward direction reads each
    sequence from its own last step: it runs forward over the sequence reversed within its length."""
    batched = input.dim() == 3
    x = (input.transpose(0, 1) if rnn.batch_first else input) if batched else input.unsqueeze(1)
    dirs = 2 if rnn.bidirectional else 1
    if hx is None:
        hx = x.new_zeros(rnn.num_layers * dirs, x.shape[1], rnn.hidden_size)
    elif not batched:
        hx = hx.unsqueeze(1)
    finals = []
    for layer in range(rnn.num_layers):
        if layer:
            x = F.dropout(x, rnn.dropout, rnn.training)
        outs = []
        for d in range(dirs):
            if d and lengths is not None:
                out = reverse_within(direction(reverse_within(x, lengths, 0), hx[layer * dirs + d],
                                               weights_of(rnn, layer, True), False), lengths, 0)
            else:
                out = direction(x, hx[layer * dirs + d], weights_of(rnn, layer, bool(d)), bool(d))
            outs.append(out)
            finals.append(outs[-1][0] if d else outs[-1][-1])
        x = outs[0] if dirs == 1 else torch.cat(outs, -1)
    h_n = torch.stack(finals)
    if not batched:
        return x.squeeze(1), h_n.squeeze(1)
    return (x.transpose(0, 1) if rnn.batch_first else x), h_n


class ElmanRNN(nn.RNN):
    """`nn.RNN` with `nonlinearity` tanh, relu or sigmoid, run by `elman_scan` (or, for tanh and
    relu with `kernel="torch"`, by torch's own kernels; `auto`: see `runs_harness`).

    Same constructor keywords, parameters, inputs and outputs as `nn.RNN`.
    """

    def __init__(self, input_size: int, hidden_size: int, *, nonlinearity: str = "tanh", kernel: str = "harness",
                 **kwargs):
        if nonlinearity not in ACTIVATIONS:
            raise ValueError(f"nonlinearity must be one of {ACTIVATIONS}, got {nonlinearity!r}")
        if kernel not in KERNELS or (kernel == "torch" and nonlinearity == "sigmoid"):
            raise ValueError(f"kernel must be one of {KERNELS} (torch has no sigmoid RNN), got {kernel!r}")
        # nn.RNN knows no sigmoid; its mode only steers torch's kernel, which then never runs.
        super().__init__(input_size, hidden_size, nonlinearity="relu" if nonlinearity == "relu" else "tanh", **kwargs)
        self.nonlinearity, self.kernel = nonlinearity, kernel

    def runs_harness(self, device: torch.device) -> bool:
        return self.nonlinearity == "sigmoid" or runs_harness(self.kernel, device)

    def forward(self, input: torch.Tensor, hx: torch.Tensor | None = None,  # noqa: A002 - nn.RNN's names
                lengths: torch.Tensor | None = None):
        """`nn.RNN`'s forward; `lengths` (harness's scan only): see `scan_layers`."""
        if not self.runs_harness(device_of(input)):
            return super().forward(input, hx)

        # torch.export (the sigmoid RNN, which has no torch kernel): the plain recurrence
        scan = _plain_scan if torch.compiler.is_exporting() else elman_scan

        def direction(x, h0, w, reverse):
            w_ih, w_hh, b_ih, b_hh = w
            pre = F.linear(x, w_ih, None if b_ih is None else b_ih + b_hh)
            return scan(pre, h0, w_hh, self.nonlinearity, reverse)

        return scan_layers(self, input, hx, direction, lengths)
