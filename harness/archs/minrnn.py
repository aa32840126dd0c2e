"""minGRU and minLSTM (Feng et al. 2024, "Were RNNs All We Needed?"): a GRU and an LSTM whose
gates and candidate read only the input, never h_{t−1}, so the recurrence is linear in h and
trains with a parallel scan:

    minGRU:  z_t = σ(W_z x_t),  h̃_t = g(W_h x_t),  h_t = (1 − z_t) ⊙ h_{t−1} + z_t ⊙ h̃_t
    minLSTM: f_t = σ(W_f x_t),  i_t = σ(W_i x_t),  h̃_t = g(W_h x_t),
             f'_t, i'_t = f_t, i_t / (f_t + i_t),  h_t = f'_t ⊙ h_{t−1} + i'_t ⊙ h̃_t

with g(v) = v + ½ for v ≥ 0 and σ(v) below (positive, so the paper's log-space scan applies) and
h_0 = 0. Training runs the paper's scan in log space (`log_scan`, `logscan`): log-sigmoids of the
gates, log g of the candidate, a cumulative sum and a cumulative log-sum-exp. `scan = "loop"` runs
the recurrence above one step at a time, the reference it is checked and timed against. Layers
after the first are the paper's residual blocks, x + minRNN(LayerNorm(x)).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from harness.archs import register_model
from harness.archs.recurrent import check_common
from harness.archs.sequence import Stack, build_net, check_scan, log_scan, scan_dtype


def g(v: torch.Tensor) -> torch.Tensor:
    return torch.where(v >= 0, v + 0.5, torch.sigmoid(v))


def log_g(v: torch.Tensor) -> torch.Tensor:
    return torch.where(v >= 0, torch.log(F.relu(v) + 0.5), -F.softplus(-v))


class MinLayer(nn.Module):
    """One minGRU (`lstm=False`) or minLSTM layer (B, T, D_in) → (B, T, H)."""

    def __init__(self, d_in: int, hidden: int, *, lstm: bool, residual: bool, scan: str):
        super().__init__()
        self.proj = nn.Linear(d_in, (3 if lstm else 2) * hidden)  # the gates' and the candidate's
        self.norm = nn.LayerNorm(d_in) if residual else nn.Identity()
        self.lstm, self.residual, self.scan = lstm, residual, scan

    @property
    def kernel_name(self) -> str:
        return "logscan" if self.scan == "parallel" else "loop"

    def forward(self, x: torch.Tensor, return_states: bool = False):
        parts = self.proj(self.norm(x)).to(scan_dtype(x)).chunk(3 if self.lstm else 2, -1)
        if self.lstm:
            k_f, k_i, k_h = parts
            diff = F.softplus(-k_f) - F.softplus(-k_i)  # log(i/f); the normalised gates from it
            log_a, log_in = -F.softplus(diff), -F.softplus(-diff)
        else:
            k_z, k_h = parts
            log_a, log_in = -F.softplus(k_z), -F.softplus(-k_z)  # log(1 − z), log z
        states = None
        if self.scan == "parallel" and not return_states:
            h = log_scan(log_a, log_in + log_g(k_h))
        else:
            a, b = torch.exp(log_a), torch.exp(log_in) * g(k_h)
            h_t, states = a.new_zeros(a.shape[0], a.shape[2]), []
            for t in range(a.shape[1]):
                h_t = torch.addcmul(b[:, t], a[:, t], h_t)
                states.append(h_t)
            h = torch.stack(states, 1)
        out = x + h if self.residual else h
        return (out, states) if return_states else out

    def flops(self, seq_len: int) -> int:
        hidden = self.proj.out_features // (3 if self.lstm else 2)
        return (2 * self.proj.weight.numel() + 3 * hidden) * seq_len


def _min_net(lstm: bool, *, input_size, output_size, io, seq_len, hidden_size, num_layers, dropout, bidirectional, scan):
    check_common(io=io, hidden_size=hidden_size, num_layers=num_layers, dropout=dropout, bidirectional=bidirectional)
    check_scan(scan)

    def stack() -> Stack:
        return Stack([MinLayer(input_size if i == 0 else hidden_size, hidden_size, lstm=lstm, residual=i > 0, scan=scan)
                      for i in range(num_layers)], dropout=dropout)

    return build_net(stack, io=io, output_size=output_size, seq_len=seq_len, width=hidden_size, bidirectional=bidirectional)


@register_model(family="minGRU")
def mingru(*, input_size: int, output_size: int, io: str, seq_len: int = 1, hidden_size: int = 128,
           num_layers: int = 1, dropout: float = 0.0, bidirectional: bool = False, scan: str = "parallel"):
    """minGRU: a GRU whose gate reads only x_t, trained by a log-space parallel scan (Feng et al. 2024); 1 layer × 128."""
    return _min_net(False, input_size=input_size, output_size=output_size, io=io, seq_len=seq_len, hidden_size=hidden_size,
                    num_layers=num_layers, dropout=dropout, bidirectional=bidirectional, scan=scan)


@register_model(family="minLSTM")
def minlstm(*, input_size: int, output_size: int, io: str, seq_len: int = 1, hidden_size: int = 128,
            num_layers: int = 1, dropout: float = 0.0, bidirectional: bool = False, scan: str = "parallel"):
    """minLSTM: normalised forget and input gates reading only x_t, log-space parallel scan (Feng et al. 2024); 1 layer × 128."""
    return _min_net(True, input_size=input_size, output_size=output_size, io=io, seq_len=seq_len, hidden_size=hidden_size,
                    num_layers=num_layers, dropout=dropout, bidirectional=bidirectional, scan=scan)
