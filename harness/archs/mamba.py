"""A selective state-space model: the S6 layer of Mamba (Gu & Dao 2023, "Mamba: Linear-Time
Sequence Modeling with Selective State Spaces"), in plain torch, inside Mamba's block.

S6, per channel c of the block's inner width E and state n of N, with input-dependent Δ, B, C:

    Δ_t = softplus(W_Δ (W_r u_t) + b_Δ),   B_t = W_B u_t,   C_t = W_C u_t,
    h_t = exp(Δ_t A) ⊙ h_{t−1} + Δ_t B_t u_t,   y_t = C_t · h_t + D ⊙ u_t,

A = −exp(A_log) diagonal and real (S4D-real initialisation, A_{c,n} = −(n + 1)), D = 1, W_Δ's
bias the inverse softplus of Δ drawn log-uniformly in [dt_min, dt_max] = [0.001, 0.1], W_Δ
uniform in ±r^{−1/2} with r = ⌈H/16⌉ its rank, as in the authors' code. The block (pre-norm,
residual, the official layout): x + W_out(S6(SiLU(conv₄(u))) ⊙ SiLU(z)) with (u, z) = W_in
LayerNorm(x), E = `expand`·H, conv₄ a causal depthwise convolution of width 4; a linear encoder
of the input to width H first, a LayerNorm last. Without Mamba's fused CUDA kernel the scan is
`linear_scan` over chunks of `chunk` steps (`scan`): every step of a chunk at once, chunk after
chunk, which bounds the (B, chunk, E, N) tensors autograd keeps; `scan = "loop"` runs it one step
at a time, the reference it is checked and timed against.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from harness.archs import register_model
from harness.archs.recurrent import check_common, check_width
from harness.archs.sequence import Stack, build_net, check_scan, linear_scan, scan_dtype


class MambaLayer(nn.Module):
    """One Mamba block (B, T, H) → (B, T, H) around an S6 layer of E channels × N states."""

    def __init__(self, width: int, *, state: int, expand: int, conv: int, scan: str, chunk: int,
                 dt_min: float = 1e-3, dt_max: float = 1e-1):
        super().__init__()
        inner, rank = expand * width, math.ceil(width / 16)
        self.norm = nn.LayerNorm(width)
        self.in_proj = nn.Linear(width, 2 * inner, bias=False)
        self.conv = nn.Conv1d(inner, inner, conv, groups=inner, padding=conv - 1)
        self.x_proj = nn.Linear(inner, rank + 2 * state, bias=False)
        self.dt_proj = nn.Linear(rank, inner)
        nn.init.uniform_(self.dt_proj.weight, -rank**-0.5, rank**-0.5)
        dt = torch.exp(torch.rand(inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp(min=1e-4)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus⁻¹(dt)
        self.a_log = nn.Parameter(torch.log(torch.arange(1, state + 1, dtype=torch.float32)).repeat(inner, 1))
        self.d = nn.Parameter(torch.ones(inner))
        self.out_proj = nn.Linear(inner, width, bias=False)
        self.rank, self.state, self.scan, self.chunk = rank, state, scan, chunk

    @property
    def kernel_name(self) -> str:
        return "scan" if self.scan == "parallel" else "loop"

    def forward(self, x: torch.Tensor, return_states: bool = False):
        steps, dtype = x.shape[1], scan_dtype(x)
        u, z = self.in_proj(self.norm(x)).chunk(2, -1)
        u = F.silu(self.conv(u.transpose(1, 2))[..., :steps].transpose(1, 2)).to(dtype)  # causal: the first T outputs
        dt, b, c = self.x_proj(u).to(dtype).split([self.rank, self.state, self.state], -1)
        dt = F.softplus(self.dt_proj(dt).to(dtype))  # (B, T, E)
        a = torch.exp(dt.unsqueeze(-1) * -torch.exp(self.a_log))  # (B, T, E, N)
        bx = (dt * u).unsqueeze(-1) * b.unsqueeze(2)  # Δ_t B_t u_t
        states = None
        if self.scan == "parallel" and not return_states:
            h = linear_scan(a, bx, self.chunk)
        else:
            h_t, states = bx.new_zeros(bx.shape[0], *bx.shape[2:]), []
            for t in range(steps):
                h_t = torch.addcmul(bx[:, t], a[:, t], h_t)
                states.append(h_t)
            h = torch.stack(states, 1)
        y = (h @ c.unsqueeze(-1)).squeeze(-1) + self.d * u  # C_t · h_t + D u_t
        out = x + self.out_proj(y * F.silu(z.to(dtype)))
        return (out, states) if return_states else out

    def flops(self, seq_len: int) -> int:
        inner, n = self.d.numel(), self.state
        matmuls = 2 * (self.in_proj.weight.numel() + self.x_proj.weight.numel() + self.dt_proj.weight.numel()
                       + self.out_proj.weight.numel() + self.conv.weight.numel())
        scan = inner * n * (2 + 2 + 2 + 2)  # Δ·A and its exp, Δ B u, the multiply-add, C · h
        return (matmuls + scan + 4 * inner) * seq_len


@register_model(family="Mamba")
def mamba(*, input_size: int, output_size: int, io: str, seq_len: int = 1, hidden_size: int = 64,
          num_layers: int = 1, dropout: float = 0.0, bidirectional: bool = False, state_size: int = 16,
          expand: int = 2, conv_width: int = 4, scan: str = "parallel", chunk: int = 16):
    """Mamba: a selective state-space (S6) block, input-dependent Δ, B, C, chunked parallel scan (Gu & Dao 2023); 1 layer × 64, E = 128, N = 16."""
    check_common(io=io, hidden_size=hidden_size, num_layers=num_layers, dropout=dropout, bidirectional=bidirectional)
    for value, field in ((state_size, "state_size"), (expand, "expand"), (conv_width, "conv_width"), (chunk, "chunk")):
        check_width(value, field)
    check_scan(scan)

    def stack() -> Stack:
        layers = [MambaLayer(hidden_size, state=state_size, expand=expand, conv=conv_width, scan=scan, chunk=chunk)
                  for _ in range(num_layers)]
        return Stack(layers, encoder=nn.Linear(input_size, hidden_size), final=nn.LayerNorm(hidden_size), dropout=dropout)

    return build_net(stack, io=io, output_size=output_size, seq_len=seq_len, width=hidden_size, bidirectional=bidirectional)
