"""Orthogonal RNN (expRNN, Lezcano-Casado & Martínez-Rubio 2019, "Cheap Orthogonal Constraints
in Neural Networks", ICML): an Elman RNN whose recurrent matrix stays orthogonal,

    h_t = σ(W x_t + b + U h_{t−1}),   U = B·exp(A − Aᵀ),

A trained freely, B a fixed orthogonal base: the matrix exponential of a skew-symmetric matrix
is orthogonal, so ‖U v‖ = ‖v‖ and the linear part of the recurrence neither grows nor shrinks a
gradient through time (torch's `parametrizations.orthogonal` with `orthogonal_map="matrix_exp"`,
the paper's trivialization around a base). The paper's choices are the defaults: σ = modReLU,
modReLU(z) = sign(z)·ReLU(|z| + b) with its own bias per unit (drawn from U(−0.01, 0.01)), and
the Henaff et al. (2016) initialisation, U block-diagonal with 2×2 rotations by angles from
U(−π, π). `activation = "tanh"` runs harness's Elman scan (`harness`, a hand-written backward);
modReLU a loop of torch ops over time (`loop`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrizations

from harness.archs import check, register_model
from harness.archs.elman import elman_scan
from harness.archs.recurrent import check_common
from harness.archs.sequence import Stack, build_net, scan_dtype

ACTIVATIONS = ("modrelu", "tanh")


def henaff_rotation(n: int) -> torch.Tensor:
    """An n×n orthogonal matrix, block-diagonal in 2×2 rotations by angles from U(−π, π) (the last
    unit of an odd n keeps a 1): Henaff et al. 2016's initialisation, which expRNN uses."""
    q = torch.eye(n)
    for i in range(0, n - 1, 2):
        angle = torch.empty(()).uniform_(-math.pi, math.pi)
        c, s = torch.cos(angle), torch.sin(angle)
        q[i, i], q[i, i + 1], q[i + 1, i], q[i + 1, i + 1] = c, -s, s, c
    return q


def modrelu(z: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return torch.sign(z) * torch.relu(z.abs() + bias)


class OrthogonalLayer(nn.Module):
    """One orthogonal Elman layer (B, T, D_in) → (B, T, H)."""

    def __init__(self, d_in: int, hidden: int, activation: str):
        super().__init__()
        self.input = nn.Linear(d_in, hidden)
        self.recurrent = nn.Linear(hidden, hidden, bias=False)
        if self.input.weight.device.type != "meta":  # (sizes are counted on the meta device: the same H² parameters)
            self.recurrent = parametrizations.orthogonal(self.recurrent, orthogonal_map="matrix_exp")
            self.recurrent.weight = henaff_rotation(hidden)  # the base of the trivialization; A starts at 0
        self.activation = activation
        self.bias = nn.Parameter(torch.empty(hidden).uniform_(-0.01, 0.01)) if activation == "modrelu" else None

    @property
    def kernel_name(self) -> str:
        return "harness" if self.activation == "tanh" else "loop"

    def forward(self, x: torch.Tensor, return_states: bool = False):
        # The recurrence in float32 under autocast: a bf16 U is orthogonal to 1 ± 0.004 only,
        # which compounds over hundreds of steps.
        pre = self.input(x).to(scan_dtype(x))
        with torch.autocast(pre.device.type, enabled=False):
            u = self.recurrent.weight.to(pre.dtype)  # exp of the skew part, computed once per call
            if self.activation == "tanh" and not return_states and not torch.compiler.is_exporting():
                h0 = pre.new_zeros(pre.shape[0], pre.shape[2])
                return elman_scan(pre.transpose(0, 1).contiguous(), h0, u, "tanh").transpose(0, 1)
            h = pre.new_zeros(pre.shape[0], pre.shape[2])
            hs = []
            for t in range(pre.shape[1]):
                z = pre[:, t] + F.linear(h, u)
                h = torch.tanh(z) if self.activation == "tanh" else modrelu(z, self.bias.to(z.dtype))
                hs.append(h)
        out = torch.stack(hs, 1)
        return (out, hs) if return_states else out

    def flops(self, seq_len: int) -> int:
        return 2 * (self.input.weight.numel() + self.input.out_features**2) * seq_len


@register_model(family="ORNN")
def ornn(*, input_size: int, output_size: int, io: str, seq_len: int = 1, hidden_size: int = 128,
         num_layers: int = 1, dropout: float = 0.0, bidirectional: bool = False, activation: str = "modrelu"):
    """ORNN: Elman RNN with an orthogonal recurrent matrix B·exp(A − Aᵀ), modReLU or tanh (expRNN, Lezcano-Casado & Martínez-Rubio 2019); 1 layer × 128."""
    check_common(io=io, hidden_size=hidden_size, num_layers=num_layers, dropout=dropout, bidirectional=bidirectional)
    check(activation in ACTIVATIONS, "activation", f"must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")

    def stack() -> Stack:
        return Stack([OrthogonalLayer(input_size if i == 0 else hidden_size, hidden_size, activation)
                      for i in range(num_layers)], dropout=dropout)

    return build_net(stack, io=io, output_size=output_size, seq_len=seq_len, width=hidden_size, bidirectional=bidirectional)
