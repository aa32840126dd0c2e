"""`seed-lstm`: the reference Keras notebook's network, layer for layer, with Keras's init.

LSTM(128, all steps) → Dropout(0.2) → LSTM(128, last step) → Dense(64, ReLU) → Dropout(0.2) →
Dense(10); the softmax lives in the loss. Keras counts one LSTM bias vector, torch two: on MNIST
rows (28 → 10) that is 221,898 parameters here against Keras's 220,874. `init="torch"` keeps
torch's own initialisation, for measuring what Keras's buys.
"""

from __future__ import annotations

import torch
from torch import nn

from harness.archs import IO_KINDS, check, register_model
from harness.archs.recurrent import (
    PER_STEP,
    as_sequence,
    check_dropout,
    head_flops,
    keras_init,
    last_state,
    recurrent_flops,
    unroll,
)


class SeedLSTM(nn.Module):
    def __init__(self, *, input_size, output_size, io, seq_len, hidden_size, dense_size, dropout):
        super().__init__()
        self.io, self.seq_len = io, seq_len
        self.lstm1 = nn.LSTM(input_size, hidden_size, batch_first=True)
        self.drop = nn.Dropout(dropout)
        self.lstm2 = nn.LSTM(hidden_size, hidden_size, batch_first=True)
        self.head = nn.Sequential(
            nn.Linear(hidden_size, dense_size), nn.ReLU(), nn.Dropout(dropout), nn.Linear(dense_size, output_size)
        )

    def forward(self, x: torch.Tensor, return_hidden: bool = False, lengths: torch.Tensor | None = None):
        mid = self.drop(self.lstm1(as_sequence(x, self.io, self.seq_len))[0])
        if return_hidden:
            out, hidden = unroll(self.lstm2, mid)
        else:
            out = self.lstm2(mid)[0]
        # one direction: padding after the real steps changes none of them; read the last real one
        y = self.head(out if self.io in PER_STEP else last_state(out, self.lstm2.hidden_size, False, lengths))
        return (y, hidden) if return_hidden else y

    def flops(self, seq_len: int) -> int:
        steps = 1 if self.io == "one-to-one" else seq_len
        return (recurrent_flops(self.lstm1, self.lstm1.input_size, steps)
                + recurrent_flops(self.lstm2, self.lstm2.input_size, steps) + head_flops(self.io, steps, list(self.head)))


@register_model(family="LSTM")
def seed_lstm(*, input_size: int, output_size: int, io: str, seq_len: int = 1, hidden_size: int = 128,
              dense_size: int = 64, dropout: float = 0.2, init: str = "keras") -> SeedLSTM:
    """LSTM: the seed notebook's LSTM(128) → LSTM(128) → Dense(64, ReLU) → Dense; dropout 0.2, Keras init."""
    check(io in IO_KINDS, "io", f"{io!r} is not one of {', '.join(IO_KINDS)}")
    for field, value in (("hidden_size", hidden_size), ("dense_size", dense_size)):
        ok = isinstance(value, int) and not isinstance(value, bool) and value > 0
        check(ok, field, f"must be a positive integer, got {value!r}")
    check_dropout(dropout)
    check(init in ("keras", "torch"), "init", f"must be 'keras' or 'torch', got {init!r}")
    model = SeedLSTM(input_size=input_size, output_size=output_size, io=io, seq_len=seq_len,
                     hidden_size=hidden_size, dense_size=dense_size, dropout=dropout)
    if init == "keras":
        keras_init(model)
    return model
