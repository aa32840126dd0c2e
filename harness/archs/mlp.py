"""`mlp`: the feed-forward baseline, reading the whole flattened sequence at once.

It sees every step at once (no recurrence), so it answers "does recurrence help here?". Its
input width is fixed by `seq_len` at construction; per-step outputs come from one wide layer.
"""

from __future__ import annotations

import torch
from torch import nn

from harness.archs import IO_KINDS, check, register_model
from harness.archs.recurrent import PER_STEP, check_dropout


class MLP(nn.Module):
    def __init__(self, *, input_size, output_size, io, seq_len, hidden_size, num_layers, dropout):
        super().__init__()
        self.io, self.seq_len, self.output_size = io, seq_len, output_size
        steps_in = seq_len if io in ("many-to-one", "many-to-many") else 1
        steps_out = seq_len if io in PER_STEP else 1
        layers: list[nn.Module] = [nn.Flatten()]
        width = input_size * steps_in
        for _ in range(num_layers):
            layers += [nn.Linear(width, hidden_size), nn.ReLU(), nn.Dropout(dropout)]
            width = hidden_size
        layers.append(nn.Linear(width, output_size * steps_out))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, return_hidden: bool = False, lengths: torch.Tensor | None = None):  # noqa: ARG002
        # Sequences of different lengths: it reads the zero-padded sequence, padded to seq_len
        # (a batch may come cut to its longest), as the fixed-width input it is.
        steps = x.shape[1] if x.dim() == 3 else None
        if steps is not None and steps < self.seq_len:
            x = torch.nn.functional.pad(x, (0, 0, 0, self.seq_len - steps))
        y = self.net(x)
        if self.io in PER_STEP:
            y = y.view(x.shape[0], self.seq_len, self.output_size)[:, : steps or self.seq_len]
        return (y, []) if return_hidden else y  # no time steps, so no states to measure

    def flops(self, seq_len: int) -> int:  # noqa: ARG002 - every width is fixed at construction
        return sum(2 * m.weight.numel() for m in self.net if isinstance(m, nn.Linear))


@register_model(family="MLP")
def mlp(*, input_size: int, output_size: int, io: str, seq_len: int = 1, hidden_size: int = 128,
        num_layers: int = 2, dropout: float = 0.0) -> MLP:
    """Feed-forward baseline: flattened sequence → [Linear(128) → ReLU → Dropout] × 2 → Linear."""
    check(io in IO_KINDS, "io", f"{io!r} is not one of {', '.join(IO_KINDS)}")
    ok = isinstance(hidden_size, int) and not isinstance(hidden_size, bool) and hidden_size > 0
    check(ok, "hidden_size", f"must be a positive integer, got {hidden_size!r}")
    ok = isinstance(num_layers, int) and not isinstance(num_layers, bool) and num_layers >= 0
    check(ok, "num_layers", f"must be a non-negative integer (hidden layers), got {num_layers!r}")
    check_dropout(dropout)
    return MLP(input_size=input_size, output_size=output_size, io=io, seq_len=seq_len,
               hidden_size=hidden_size, num_layers=num_layers, dropout=dropout)
