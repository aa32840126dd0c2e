"""IndRNN (Li et al. 2018, "Independently Recurrent Neural Network (IndRNN): Building A Longer
and Deeper RNN", CVPR): each unit recurs only on itself,

    h_t = ReLU(W x_t + u ⊙ h_{t−1} + b),

so a unit's gradient through k steps is the product of u_n and its ReLU's 0/1 derivatives: with
|u_n| ≤ γ^{1/T} it can neither grow beyond γ nor vanish faster than the unit lets it. The paper's
constraint and initialisation, with γ = `magnitude` (2, the authors' code's MAG): every |u_n| is
kept within 2^{1/T} (clipped back at each training forward, as the authors clip after each step), u
drawn from U(0, 2^{1/T}), and the top layer's from U(2^{−1/T}, 2^{1/T}), so it starts able to keep
what it reads for the whole sequence. Deep IndRNNs stack with residual connections (Li et al.
2019, "Deep Independently Recurrent Neural Network"): every layer after the first adds its input
to its output. The recurrence is element-wise, so the matmul of all steps' inputs is one call
and the loop over time is T element-wise steps (`loop`).
"""

from __future__ import annotations

import torch
from torch import nn

from harness.archs import check, register_model
from harness.archs.recurrent import check_common
from harness.archs.sequence import Stack, build_net, scan_dtype


class IndRNNLayer(nn.Module):
    """One IndRNN layer (B, T, D_in) → (B, T, H); `residual` adds the input (D_in = H)."""

    kernel_name = "loop"

    def __init__(self, d_in: int, hidden: int, *, bound: float, u_low: float, residual: bool):
        super().__init__()
        self.input = nn.Linear(d_in, hidden)
        self.u = nn.Parameter(torch.empty(hidden).uniform_(u_low, bound))
        self.bound, self.residual = bound, residual

    def forward(self, x: torch.Tensor, return_states: bool = False):
        # The paper's constraint, |u| ≤ γ^{1/T}: a weight an optimiser step took past it is clipped
        # back, as the authors' code does after each step (in place only then: a graph that read
        # u before keeps its version).
        if self.training and bool(self.u.detach().abs().max() > self.bound):
            with torch.no_grad():
                self.u.clamp_(-self.bound, self.bound)
        # The recurrence in float32 under autocast: in bf16, 2^{±1/T} rounds to 1 for T > 128 and
        # h_t would sum T steps to three digits.
        pre = self.input(x).to(scan_dtype(x))
        u = self.u.clamp(-self.bound, self.bound).to(pre.dtype)  # (a u set past the bound outside training)
        h = pre.new_zeros(pre.shape[0], pre.shape[2])
        hs = []
        with torch.autocast(pre.device.type, enabled=False):
            for t in range(pre.shape[1]):
                h = torch.relu(torch.addcmul(pre[:, t], u, h))
                hs.append(h)
        out = torch.stack(hs, 1)
        if self.residual:
            out = out + x
        return (out, hs) if return_states else out

    def flops(self, seq_len: int) -> int:
        return (2 * self.input.weight.numel() + 2 * self.u.numel()) * seq_len


@register_model(family="IndRNN")
def indrnn(*, input_size: int, output_size: int, io: str, seq_len: int = 1, hidden_size: int = 128,
           num_layers: int = 1, dropout: float = 0.0, bidirectional: bool = False, magnitude: float = 2.0):
    """IndRNN: ReLU units with one recurrent weight each, |u| ≤ magnitude^{1/T} (Li et al. 2018); 1 layer × 128, residual when stacked."""
    check_common(io=io, hidden_size=hidden_size, num_layers=num_layers, dropout=dropout, bidirectional=bidirectional)
    ok = isinstance(magnitude, (int, float)) and not isinstance(magnitude, bool) and magnitude > 1
    check(ok, "magnitude", f"must be a number above 1 (the gradient's largest growth over the sequence; 2 in the paper), got {magnitude!r}")
    steps = max(seq_len if io != "one-to-one" else 1, 1)
    bound = magnitude ** (1 / steps)

    def stack() -> Stack:
        layers = [IndRNNLayer(input_size if i == 0 else hidden_size, hidden_size, bound=bound,
                              u_low=1 / bound if i == num_layers - 1 else 0.0, residual=i > 0)
                  for i in range(num_layers)]
        return Stack(layers, dropout=dropout)

    return build_net(stack, io=io, output_size=output_size, seq_len=seq_len, width=hidden_size, bidirectional=bidirectional)
