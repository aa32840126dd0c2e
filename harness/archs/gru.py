"""The GRU recurrence with a hand-written backward (`gru_scan`), and `GRU`, an `nn.GRU` that runs it.

torch's CPU build has no fused GRU: `nn.GRU` runs a cell of a dozen autograd ops per time step,
input projection included. `gru_scan` does the input projection of every step in one matmul
(before it is called), then per step one matmul and four pointwise ops forward, and one matmul
and two pointwise ops backward: every factor of the backward that does not depend on the incoming
gradient is computed for all steps at once, before the loop. The recurrent weight's gradient is
one matmul over all steps. In torch's gate order (r, z, n), for h' from h:

    r, z = σ(x W_ir,z + b_ir,z + h W_hr,z + b_hr,z)
    n = tanh(x W_in + b_in + r ⊙ (h W_hn + b_hn))
    h' = (1 − z) ⊙ n + z ⊙ h
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from harness.archs.elman import KERNELS, device_of, runs_harness, scan_layers, time_steps


class _GRUScan(torch.autograd.Function):
    """All states (T, B, H) from time-major input projections `pre` = x W_ihᵀ + b_ih (T, B, 3H)."""

    @staticmethod
    def forward(ctx, pre, h0, w_hh, b_hh, reverse):
        steps, batch, h3 = pre.shape
        hidden, h2 = h3 // 3, 2 * h3 // 3
        # gh[t] starts as what the step adds to h W_hhᵀ: the input projection and b_hh for r and z,
        # b_hn alone for n (r gates it); one addmm_ per step then completes it in place.
        gh = torch.empty_like(pre)
        torch.add(pre[..., :h2], b_hh[:h2], out=gh[..., :h2])
        gh[..., h2:] = b_hh[h2:]
        rz, n, out = pre.new_empty(steps, batch, h2), pre.new_empty(steps, batch, hidden), pre.new_empty(steps, batch, hidden)
        w_t, h = w_hh.t().contiguous(), h0  # a contiguous W_hhᵀ takes BLAS's untransposed path
        for t in time_steps(steps, reverse):
            g = gh[t].addmm_(h, w_t)
            r_z = torch.sigmoid(g[:, :h2], out=rz[t])
            n_t = torch.addcmul(pre[t, :, h2:], r_z[:, :hidden], g[:, h2:], out=n[t]).tanh_()
            h = torch.lerp(n_t, h, r_z[:, hidden:], out=out[t])
        ctx.save_for_backward(out, rz, n, gh, h0, w_hh)
        ctx.reverse = reverse
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        out, rz, n, gh, h0, w_hh = ctx.saved_tensors
        steps, batch, hidden = out.shape
        r, z, ghn = rz[..., :hidden], rz[..., hidden:], gh[..., 2 * hidden :]
        h_prev = torch.cat([out[1:], h0[None]]) if ctx.reverse else torch.cat([h0[None], out[:-1]])
        # With d = ∂L/∂h' of a step, its gate gradients are d times factors known before the loop:
        # ∂/∂(n's pre-activation) = d·a, a = (1 − z)(1 − n²); ∂/∂(r's) = d·a·ghn·r(1 − r);
        # ∂/∂(z's) = d·(h − n)·z(1 − z); ∂/∂(h W_hn + b_hn) = d·a·r.
        a = (1 - z) * (1 - n * n)
        factors = torch.cat([a * ghn * r * (1 - r), (h_prev - n) * z * (1 - z), a * r], -1)
        factors = factors.view(steps, batch, 3, hidden)
        d = grad_out.clone(memory_format=torch.contiguous_format)  # becomes ∂L/∂h_t in place
        g = torch.empty_like(factors)  # ∂L/∂(h W_hhᵀ + b_hh), per step
        order = time_steps(steps, not ctx.reverse)  # backwards in time
        for i, t in enumerate(order):
            g_t = torch.mul(d[t].unsqueeze(1), factors[t], out=g[t]).view(batch, -1)
            if i + 1 < len(order):  # ∂L/∂h_{t-1} += g_t W_hh + d_t z_t
                d[order[i + 1]].addmm_(g_t, w_hh).addcmul_(d[t], z[t])
        first = order[-1]  # the first step in time, which read h0
        g = g.view(steps, batch, -1)
        grad_h0 = torch.addcmul(g[first] @ w_hh, d[first], z[first]) if ctx.needs_input_grad[1] else None
        grad_w = g.flatten(0, 1).t() @ h_prev.flatten(0, 1) if ctx.needs_input_grad[2] else None
        grad_b = g.sum((0, 1)) if ctx.needs_input_grad[3] else None
        grad_pre = g.clone()
        torch.mul(d, a, out=grad_pre[..., 2 * hidden :])  # n's input projection is not gated by r
        return grad_pre, grad_h0, grad_w, grad_b, None


def gru_scan(pre: torch.Tensor, h0: torch.Tensor, w_hh: torch.Tensor, b_hh: torch.Tensor | None,
             reverse: bool = False) -> torch.Tensor:
    """All states h_1..h_T (T, B, H) of a GRU layer, given its input projections `pre` = x W_ihᵀ + b_ih
    (T, B, 3H, time-major); `reverse` runs from t = T to 1."""
    # One dtype for the in-place matmuls (autocast may have made `pre` half precision).
    b_hh = pre.new_zeros(pre.shape[-1]) if b_hh is None else b_hh.to(pre.dtype)
    return _GRUScan.apply(pre, h0.to(pre.dtype), w_hh.to(pre.dtype), b_hh, reverse)


class GRU(nn.GRU):
    """`nn.GRU` (same keywords, parameters, inputs and outputs) run by `gru_scan`; with
    `kernel="torch"` by torch's own kernels, `auto` choosing per device (`runs_harness`)."""

    def __init__(self, input_size: int, hidden_size: int, *, kernel: str = "harness", **kwargs):
        if kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
        super().__init__(input_size, hidden_size, **kwargs)
        self.kernel = kernel

    def runs_harness(self, device: torch.device) -> bool:
        return runs_harness(self.kernel, device)

    def forward(self, input: torch.Tensor, hx: torch.Tensor | None = None,  # noqa: A002 - nn.GRU's names
                lengths: torch.Tensor | None = None):
        """`nn.GRU`'s forward; `lengths` (harness's scan only): see `scan_layers`."""
        if not self.runs_harness(device_of(input)):
            return super().forward(input, hx)

        def direction(x, h0, w, reverse):
            w_ih, w_hh, b_ih, b_hh = w
            return gru_scan(F.linear(x, w_ih, b_ih), h0, w_hh, b_hh, reverse)

        return scan_layers(self, input, hx, direction, lengths)
