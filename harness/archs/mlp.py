"""`mlp`: the feed-forward baseline, reading the whole flattened sequence at once."""

from __future__ import annotations

import torch
from torch import nn

from harness.archs import IO_KINDS, check, register_model


class MLP(nn.Module):
    def __init__(self, *, input_size, output_size, io, seq_len, hidden_size, num_layers, dropout):
        super().__init__()
        self.io, self.seq_len, self.output_size = io, seq_len, output_size
        steps_in = seq_len if io in ("many-to-one", "many-to-many") else 1
        steps_out = seq_len if io in ("many-to-many", "one-to-many") else 1
        layers: list[nn.Module] = [nn.Flatten()]
        width = input_size * steps_in
        for _ in range(num_layers):
            layers += [nn.Linear(width, hidden_size), nn.ReLU(), nn.Dropout(dropout)]
            width = hidden_size
        layers.append(nn.Linear(width, output_size * steps_out))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.net(x)
        if self.io in ("many-to-many", "one-to-many"):
            y = y.view(x.shape[0], self.seq_len, self.output_size)
        return y

    def flops(self, seq_len: int) -> int:  # noqa: ARG002 - shape fixed at construction
        return sum(2 * m.weight.numel() for m in self.net if isinstance(m, nn.Linear))


@register_model
def mlp(*, input_size, output_size, io, seq_len=1, hidden_size=128, num_layers=2, dropout=0.0):
    """Feed-forward baseline: flatten → [Linear → ReLU → Dropout] × num_layers → Linear."""
    check(io in IO_KINDS, "io", f"{io!r} is not one of {', '.join(IO_KINDS)}")
    check(isinstance(hidden_size, int) and hidden_size > 0, "hidden_size", f"must be a positive integer, got {hidden_size!r}")
    check(isinstance(num_layers, int) and num_layers >= 0, "num_layers", f"must be a non-negative integer, got {num_layers!r}")
    check(isinstance(dropout, (int, float)) and 0 <= dropout < 1, "dropout", f"must be in [0, 1), got {dropout!r}")
    return MLP(input_size=input_size, output_size=output_size, io=io, seq_len=seq_len,
               hidden_size=hidden_size, num_layers=num_layers, dropout=dropout)
