"""`seed-lstm`: the reference Keras notebook's network, layer for layer, with Keras's init.

LSTM(128, all steps) → Dropout(0.2) → LSTM(128) → Dense(64, ReLU) → Dropout(0.2) → Dense(10);
the softmax lives in the loss. Keras counts one LSTM bias vector, torch two: 221,898 here
against Keras's 220,874.
"""

from __future__ import annotations

import torch
from torch import nn

from harness.archs import IO_KINDS, check, register_model
from harness.archs.recurrent import PER_STEP, as_sequence, keras_init, recurrent_flops, unroll


class SeedLSTM(nn.Module):
    def __init__(self, *, input_size, output_size, io, seq_len, hidden_size, dense_size, dropout):
        super().__init__()
        self.io, self.seq_len = io, seq_len
        self.lstm1 = nn.LSTM(input_size, hidden_size, batch_first=True)
        self.lstm2 = nn.LSTM(hidden_size, hidden_size, batch_first=True)
        keras_init(self.lstm1)
        keras_init(self.lstm2)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Sequential(
            nn.Linear(hidden_size, dense_size), nn.ReLU(), nn.Dropout(dropout), nn.Linear(dense_size, output_size)
        )

    def forward(self, x: torch.Tensor, return_hidden: bool = False):
        mid = self.drop(self.lstm1(as_sequence(x, self.io, self.seq_len))[0])
        if return_hidden:
            out, hidden = unroll(self.lstm2, mid)
        else:
            out = self.lstm2(mid)[0]
        y = self.head(out if self.io in PER_STEP else out[:, -1])
        return (y, hidden) if return_hidden else y

    def flops(self, seq_len: int) -> int:
        steps = 1 if self.io == "one-to-one" else seq_len
        heads = steps if self.io in PER_STEP else 1
        dense = sum(2 * m.weight.numel() for m in self.head if isinstance(m, nn.Linear))
        return (recurrent_flops(self.lstm1, self.lstm1.input_size, steps)
                + recurrent_flops(self.lstm2, self.lstm2.input_size, steps) + heads * dense)


@register_model
def seed_lstm(*, input_size, output_size, io, seq_len=1, hidden_size=128, dense_size=64, dropout=0.2):
    """The reference notebook's stacked LSTM (Keras initialisation)."""
    check(io in IO_KINDS, "io", f"{io!r} is not one of {', '.join(IO_KINDS)}")
    check(isinstance(hidden_size, int) and hidden_size > 0, "hidden_size", f"must be a positive integer, got {hidden_size!r}")
    check(isinstance(dense_size, int) and dense_size > 0, "dense_size", f"must be a positive integer, got {dense_size!r}")
    check(isinstance(dropout, (int, float)) and 0 <= dropout < 1, "dropout", f"must be in [0, 1), got {dropout!r}")
    return SeedLSTM(input_size=input_size, output_size=output_size, io=io, seq_len=seq_len,
                    hidden_size=hidden_size, dense_size=dense_size, dropout=dropout)
