"""LRU, the Linear Recurrent Unit (Orvieto et al. 2023, "Resurrecting Recurrent Neural Networks
for Long Sequences", ICML): a diagonal complex linear recurrence, non-linear only between layers,

    x_t = λ ⊙ x_{t−1} + γ ⊙ (B u_t),   y_t = Re(C x_t) + D ⊙ u_t,

with λ = exp(−exp(ν) + i·exp(θ)) (the exponential parametrisation keeps |λ| < 1, stable),
γ = exp(γ_log) initialised to √(1 − |λ|²) (the normalisation that keeps x_t's scale at the
input's), B and C complex Gaussian scaled by 1/√(2·H) and 1/√N, D real Gaussian. Ring
initialisation: |λ| uniform on the ring r_min ≤ |λ| ≤ r_max (in area), phase in [0, max_phase];
the defaults are the paper's for long-range tasks (0.9, 0.999, 2π). Each layer is the paper's
block: x + GLU(GELU(LRU(LayerNorm(x)))), GLU(y) = W₁y ⊙ σ(W₂y), after a linear encoder of the
input to width H. The recurrence is linear, so training scans all steps at once (`linear_scan`,
`scan`); `scan = "loop"` runs it one step at a time, the reference it is checked and timed against.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from harness.archs import check, register_model
from harness.archs.recurrent import check_common, check_width
from harness.archs.sequence import Stack, build_net, check_scan, linear_scan, scan_dtype


class LRULayer(nn.Module):
    """One LRU block (B, T, H) → (B, T, H) with a complex state of size N (`state`)."""

    def __init__(self, width: int, state: int, *, r_min: float, r_max: float, max_phase: float, scan: str,
                 chunk: int | None = None):
        super().__init__()
        u1, u2 = torch.rand(state), torch.rand(state)
        nu = -0.5 * torch.log(u1 * (r_max**2 - r_min**2) + r_min**2)
        self.nu_log = nn.Parameter(torch.log(nu))
        self.theta_log = nn.Parameter(torch.log(max_phase * u2 + 1e-12))
        self.gamma_log = nn.Parameter(0.5 * torch.log(1 - torch.exp(-2 * nu)))  # √(1 − |λ|²)
        self.b_re = nn.Parameter(torch.randn(state, width) / math.sqrt(2 * width))
        self.b_im = nn.Parameter(torch.randn(state, width) / math.sqrt(2 * width))
        self.c_re = nn.Parameter(torch.randn(width, state) / math.sqrt(state))
        self.c_im = nn.Parameter(torch.randn(width, state) / math.sqrt(state))
        self.d = nn.Parameter(torch.randn(width))
        self.norm = nn.LayerNorm(width)
        self.glu = nn.Linear(width, 2 * width)
        self.scan, self.chunk = scan, chunk

    @property
    def kernel_name(self) -> str:
        return "scan" if self.scan == "parallel" else "loop"

    def lam(self) -> tuple[torch.Tensor, torch.Tensor]:
        """λ's real and imaginary parts."""
        mod, phase = torch.exp(-torch.exp(self.nu_log)), torch.exp(self.theta_log)
        return mod * torch.cos(phase), mod * torch.sin(phase)

    def forward(self, x: torch.Tensor, return_states: bool = False):
        u = self.norm(x)
        dtype, gamma = scan_dtype(x), torch.exp(self.gamma_log)
        # The recurrence in float32 (or float64) whatever autocast does to the projections around it.
        bu_re, bu_im = (F.linear(u, w).to(dtype) * gamma for w in (self.b_re, self.b_im))
        lam_re, lam_im = self.lam()
        states = None
        if self.scan == "parallel" and not return_states:
            xs = linear_scan(torch.complex(lam_re, lam_im), torch.complex(bu_re, bu_im), self.chunk)
            x_re, x_im = xs.real, xs.imag
        else:  # one step at a time, in real arithmetic: (a + ib)(c + id) = (ac − bd) + i(ad + bc)
            h_re = h_im = bu_re.new_zeros(bu_re.shape[0], bu_re.shape[2])
            states = []
            for t in range(bu_re.shape[1]):
                h_re, h_im = (lam_re * h_re - lam_im * h_im + bu_re[:, t], lam_re * h_im + lam_im * h_re + bu_im[:, t])
                states.append((h_re, h_im))
            x_re, x_im = torch.stack([s[0] for s in states], 1), torch.stack([s[1] for s in states], 1)
        y = F.linear(x_re, self.c_re.to(dtype)) - F.linear(x_im, self.c_im.to(dtype)) + self.d * u
        y = F.gelu(y)
        a, g = self.glu(y).chunk(2, -1)
        out = x + a * torch.sigmoid(g)
        return (out, states) if return_states else out

    def flops(self, seq_len: int) -> int:
        n, w = self.b_re.shape
        # B and C (real and imaginary parts), the complex multiply-add, D, the GLU
        per_step = 2 * 2 * n * w + 8 * n + 2 * 2 * w * n + 2 * w + 2 * self.glu.weight.numel()
        return per_step * seq_len


@register_model(family="LRU")
def lru(*, input_size: int, output_size: int, io: str, seq_len: int = 1, hidden_size: int = 128,
        num_layers: int = 1, dropout: float = 0.0, bidirectional: bool = False, state_size: int | None = None,
        r_min: float = 0.9, r_max: float = 0.999, max_phase: float = 2 * math.pi, scan: str = "parallel"):
    """LRU: diagonal complex linear recurrence, ring init, GLU blocks, scanned in parallel (Orvieto et al. 2023); 1 layer × 128."""
    check_common(io=io, hidden_size=hidden_size, num_layers=num_layers, dropout=dropout, bidirectional=bidirectional)
    state = hidden_size if state_size is None else state_size
    check_width(state, "state_size")
    ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (r_min, r_max)) and 0 <= r_min < r_max < 1
    check(ok, "r_min", f"the ring needs 0 ≤ r_min < r_max < 1, got r_min = {r_min!r}, r_max = {r_max!r}")
    ok = isinstance(max_phase, (int, float)) and not isinstance(max_phase, bool) and 0 < max_phase <= 2 * math.pi
    check(ok, "max_phase", f"must be in (0, 2π], got {max_phase!r}")
    check_scan(scan)

    def stack() -> Stack:
        return Stack([LRULayer(hidden_size, state, r_min=r_min, r_max=r_max, max_phase=max_phase, scan=scan)
                      for _ in range(num_layers)], encoder=nn.Linear(input_size, hidden_size), dropout=dropout)

    return build_net(stack, io=io, output_size=output_size, seq_len=seq_len, width=hidden_size, bidirectional=bidirectional)
