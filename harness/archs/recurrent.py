"""Elman RNN (tanh, relu, sigmoid), LSTM and GRU: uni- or bidirectional, stacked, every io.

tanh/relu/LSTM/GRU run on torch's fused `nn.RNN`/`nn.LSTM`/`nn.GRU` (cuDNN on GPU); sigmoid
has no torch kernel, so `SigmoidRNN` keeps `nn.RNN`'s parameters and layout and runs its own
recurrence. `unroll` re-runs any of them one step at a time with the module's own weights,
which puts every h_t on the autograd path for the gradient-through-time probe.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from harness.archs import IO_KINDS, check, register_model

GATES = {"RNN_TANH": 1, "RNN_RELU": 1, "RNN_SIGMOID": 1, "GRU": 3, "LSTM": 4}
PER_STEP = ("many-to-many", "one-to-many")


def _sigmoid_cell(x, h, w_ih, w_hh, b_ih=None, b_hh=None):
    return torch.sigmoid(F.linear(x, w_ih, b_ih) + F.linear(h, w_hh, b_hh))


CELLS = {
    "RNN_TANH": torch.rnn_tanh_cell,
    "RNN_RELU": torch.rnn_relu_cell,
    "RNN_SIGMOID": _sigmoid_cell,
    "GRU": torch.gru_cell,
    "LSTM": torch.lstm_cell,
}


def cell_kind(rnn: nn.RNNBase) -> str:
    return "RNN_SIGMOID" if getattr(rnn, "nonlinearity", None) == "sigmoid" else rnn.mode


def _weights(rnn: nn.RNNBase, layer: int, reverse: bool) -> list[torch.Tensor | None]:
    sfx = f"_l{layer}" + ("_reverse" if reverse else "")
    return [getattr(rnn, n + sfx, None) for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]


def unroll(rnn: nn.RNNBase, seq: torch.Tensor) -> tuple[torch.Tensor, list[list[torch.Tensor]]]:
    """`rnn(seq)[0]` computed step by step; also returns `hidden[d][t]`, the top layer's h_t.

    Each h_t is one tensor used both by the next step and by the output, so after backward
    its `.grad` is the full ∂L/∂h_t (the fused kernels only expose the direct part).
    """
    kind, lstm = cell_kind(rnn), rnn.mode == "LSTM"
    cell = CELLS[kind]
    batch, steps, _ = seq.shape
    x, hidden = seq, []
    for layer in range(rnn.num_layers):
        if layer:  # torch applies dropout to every layer's output but the last
            x = F.dropout(x, rnn.dropout, rnn.training)
        hidden = []
        for reverse in (False, True)[: 2 if rnn.bidirectional else 1]:
            w = _weights(rnn, layer, reverse)
            h = seq.new_zeros(batch, rnn.hidden_size)
            state = (h, h) if lstm else h
            hs: list[torch.Tensor] = [h] * steps
            for t in reversed(range(steps)) if reverse else range(steps):
                state = cell(x[:, t], state, *w)
                hs[t] = state[0] if lstm else state
            hidden.append(hs)
        x = torch.cat([torch.stack(hs, 1) for hs in hidden], -1)
    return x, hidden


class SigmoidRNN(nn.RNN):
    """Elman RNN with a logistic-sigmoid activation, in `nn.RNN`'s parameter layout.

    The input projection of all steps is one matmul per layer and direction; only the
    recurrent product stays in the time loop.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, nonlinearity="tanh", **kwargs)
        self.nonlinearity = "sigmoid"

    def forward(self, seq, hx=None):  # noqa: ARG002 - same signature as nn.RNN
        x, steps = seq, seq.shape[1]
        finals = []
        for layer in range(self.num_layers):
            if layer:
                x = F.dropout(x, self.dropout, self.training)
            outs = []
            for reverse in (False, True)[: 2 if self.bidirectional else 1]:
                w_ih, w_hh, b_ih, b_hh = _weights(self, layer, reverse)
                pre = F.linear(x, w_ih, None if b_ih is None else b_ih + b_hh)
                h = x.new_zeros(x.shape[0], self.hidden_size)
                hs = [h] * steps
                for t in reversed(range(steps)) if reverse else range(steps):
                    h = torch.sigmoid(torch.addmm(pre[:, t], h, w_hh.t()))
                    hs[t] = h
                outs.append(torch.stack(hs, 1))
                finals.append(h)
            x = torch.cat(outs, -1)
        return x, torch.stack(finals)


def as_sequence(x: torch.Tensor, io: str, seq_len: int) -> torch.Tensor:
    """The (B, T, I) sequence a recurrent core reads for each io kind (see package doc)."""
    if io == "one-to-one":
        return x.unsqueeze(1)
    if io == "one-to-many":
        return x.unsqueeze(1).expand(-1, seq_len, -1)
    return x


def last_state(out: torch.Tensor, hidden_size: int, bidirectional: bool) -> torch.Tensor:
    """Final state of each direction: forward h_T, joined with backward h_1 if bidirectional."""
    if not bidirectional:
        return out[:, -1]
    return torch.cat([out[:, -1, :hidden_size], out[:, 0, hidden_size:]], -1)


def recurrent_flops(rnn: nn.RNNBase, input_size: int, seq_len: int) -> int:
    """2·G·H·(I+H) per step, direction and layer (matmuls only)."""
    dirs, h, g = 2 if rnn.bidirectional else 1, rnn.hidden_size, GATES[cell_kind(rnn)]
    total, width = 0, input_size
    for _ in range(rnn.num_layers):
        total += dirs * 2 * g * h * (width + h) * seq_len
        width = dirs * h
    return total


class RecurrentNet(nn.Module):
    """A recurrent core and one linear head, wired for `io` (see `harness.archs`)."""

    def __init__(self, rnn: nn.RNNBase, *, io: str, output_size: int, seq_len: int):
        super().__init__()
        self.rnn, self.io, self.seq_len = rnn, io, seq_len
        self.head = nn.Linear(rnn.hidden_size * (2 if rnn.bidirectional else 1), output_size)

    def forward(self, x: torch.Tensor, return_hidden: bool = False):
        seq = as_sequence(x, self.io, self.seq_len)
        if return_hidden:
            out, hidden = unroll(self.rnn, seq)
        else:
            out = self.rnn(seq)[0]
        if self.io in PER_STEP:
            y = self.head(out)
        else:
            y = self.head(last_state(out, self.rnn.hidden_size, self.rnn.bidirectional))
        return (y, hidden) if return_hidden else y

    def flops(self, seq_len: int) -> int:
        steps = 1 if self.io == "one-to-one" else seq_len
        heads = steps if self.io in PER_STEP else 1
        return recurrent_flops(self.rnn, self.rnn.input_size, steps) + heads * 2 * self.head.weight.numel()


def keras_init(rnn: nn.RNNBase) -> None:
    """Keras's defaults: glorot-uniform input kernels, orthogonal recurrent kernels, zero
    biases and, for LSTMs, forget-gate bias 1 (torch's uniform ±1/√H loses accuracy early)."""
    h = rnn.hidden_size
    for name, p in rnn.named_parameters():
        with torch.no_grad():
            if name.startswith("weight_ih"):
                nn.init.xavier_uniform_(p)
            elif name.startswith("weight_hh"):
                nn.init.orthogonal_(p)
            else:
                p.zero_()
                if rnn.mode == "LSTM" and name.startswith("bias_ih"):
                    p[h : 2 * h] = 1.0


def set_forget_bias(rnn: nn.LSTM, value: float) -> None:
    """Forget-gate bias b_f = value (torch splits biases in two: put it all in bias_ih)."""
    h = rnn.hidden_size
    with torch.no_grad():
        for name, p in rnn.named_parameters():
            if name.startswith("bias_ih"):
                p[h : 2 * h] = value
            elif name.startswith("bias_hh"):
                p[h : 2 * h] = 0.0


def _build(
    family: type[nn.RNNBase],
    extra: dict,
    *,
    input_size: int,
    output_size: int,
    io: str,
    seq_len: int,
    hidden_size: int = 128,
    num_layers: int = 1,
    dropout: float = 0.0,
    bidirectional: bool = False,
    init: str = "torch",
) -> tuple[RecurrentNet, nn.RNNBase]:
    check(io in IO_KINDS, "io", f"{io!r} is not one of {', '.join(IO_KINDS)}")
    check(isinstance(hidden_size, int) and hidden_size > 0, "hidden_size", f"must be a positive integer, got {hidden_size!r}")
    check(isinstance(num_layers, int) and num_layers > 0, "num_layers", f"must be a positive integer, got {num_layers!r}")
    check(isinstance(dropout, (int, float)) and 0 <= dropout < 1, "dropout", f"must be in [0, 1), got {dropout!r}")
    check(isinstance(bidirectional, bool), "bidirectional", f"must be true or false, got {bidirectional!r}")
    check(init in ("torch", "keras"), "init", f"must be 'torch' or 'keras', got {init!r}")
    rnn = family(
        input_size, hidden_size, num_layers=num_layers, batch_first=True,
        dropout=dropout if num_layers > 1 else 0.0, bidirectional=bidirectional, **extra,
    )
    if init == "keras":
        keras_init(rnn)
    return RecurrentNet(rnn, io=io, output_size=output_size, seq_len=seq_len), rnn


def elman(*, activation: str = "tanh", **kw) -> RecurrentNet:
    check(activation in ("tanh", "relu", "sigmoid"), "activation", f"must be tanh, relu or sigmoid, got {activation!r}")
    if activation == "sigmoid":
        return _build(SigmoidRNN, {}, **kw)[0]
    return _build(nn.RNN, {"nonlinearity": activation}, **kw)[0]


def lstm_net(*, forget_bias: float | None = None, **kw) -> RecurrentNet:
    net, rnn = _build(nn.LSTM, {}, **kw)
    if forget_bias is not None:
        check(isinstance(forget_bias, (int, float)), "forget_bias", f"must be a number, got {forget_bias!r}")
        set_forget_bias(rnn, float(forget_bias))
    return net


def gru_net(**kw) -> RecurrentNet:
    return _build(nn.GRU, {}, **kw)[0]


# Variants: a name, its defaults, and the user's overrides last.
@register_model
def rnn(**kw):
    """Elman RNN (tanh by default; activation = tanh | relu | sigmoid)."""
    return elman(**{"hidden_size": 128, **kw})


@register_model
def rnn_relu(**kw):
    """Elman RNN with ReLU activation."""
    return elman(**{"hidden_size": 128, "activation": "relu", **kw})


@register_model
def rnn_sigmoid(**kw):
    """Elman RNN with logistic-sigmoid activation (own recurrence; no torch kernel)."""
    return elman(**{"hidden_size": 128, "activation": "sigmoid", **kw})


@register_model
def brnn(**kw):
    """Bidirectional Elman RNN (tanh by default)."""
    return elman(**{"hidden_size": 128, "bidirectional": True, **kw})


@register_model
def lstm(**kw):
    """LSTM (Hochreiter & Schmidhuber 1997)."""
    return lstm_net(**{"hidden_size": 128, **kw})


@register_model
def bilstm(**kw):
    """Bidirectional LSTM."""
    return lstm_net(**{"hidden_size": 128, "bidirectional": True, **kw})


@register_model
def gru(**kw):
    """GRU (Cho et al. 2014)."""
    return gru_net(**{"hidden_size": 128, **kw})


@register_model
def bigru(**kw):
    """Bidirectional GRU."""
    return gru_net(**{"hidden_size": 128, "bidirectional": True, **kw})
