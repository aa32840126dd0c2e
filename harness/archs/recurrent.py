"""Elman RNN (tanh, relu, sigmoid), LSTM and GRU: uni- or bidirectional, stacked, every io.

LSTM runs on torch's fused `nn.LSTM` (oneDNN on the CPU, cuDNN on GPU). Elman RNNs and GRUs run
on harness's modules (`ElmanRNN`, harness.archs.elman; `GRU`, harness.archs.gru), which keep
torch's parameters, layout and signature and choose their kernel by the `kernel` option:
`harness` runs harness's scan (the input projection of every step in one matmul, one matmul per
step forward and one backward with a hand-written backpropagation through time, the recurrent
weight's gradient one matmul over all steps), `torch` torch's own kernel, `auto` (the default)
the scan on the CPU, where torch has no fused GRU or Elman kernel and the scan measured faster
(benchmarks/bench_kernels.py), torch's (cuDNN) elsewhere. The sigmoid Elman RNN has no torch
kernel at all. `unroll` re-runs any of them one step at a time with the module's own weights,
which puts every state (h_t, and c_t for an LSTM) on the autograd path for the gradient-flow
measurement (harness.gradflow).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from harness.archs import IO_KINDS, check, register_model
from harness.archs.elman import ACTIVATIONS, KERNELS, ElmanRNN, elman_scan, reverse_within, time_steps, weights_of
from harness.archs.gru import GRU, gru_scan

__all__ = ["ACTIVATIONS", "GRU", "ElmanRNN", "elman_scan", "gru_scan", "reverse_within"]  # re-exported: the family's one import

GATES = {"RNN_TANH": 1, "RNN_RELU": 1, "RNN_SIGMOID": 1, "GRU": 3, "LSTM": 4}
PER_STEP = ("many-to-many", "one-to-many")


# --- step-by-step unrolling for the gradient-flow measurement ------------------------------


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
    """RNN_TANH, RNN_RELU, RNN_SIGMOID, GRU or LSTM."""
    return "RNN_SIGMOID" if getattr(rnn, "nonlinearity", None) == "sigmoid" else rnn.mode


def unroll(rnn: nn.RNNBase, seq: torch.Tensor) -> tuple[torch.Tensor, list[list[tuple[torch.Tensor, ...]]]]:
    """`rnn(seq)[0]` (batch first, zero initial state) computed one step at a time; also
    returns `states[d][t]`, the top layer's state at step t of direction d: `(h_t,)`, or
    `(h_t, c_t)` for an LSTM (its memory runs through c_t as much as through h_t).

    Each tensor of a state is the one that everything after it reads (the next step, the
    output), so `torch.autograd.grad(loss, states[d][t])` gives the full ∂L/∂h_t and ∂L/∂c_t
    through time, h_t and c_t taken as the two coordinates of the state; the fused kernels only
    expose the direct part of ∂L/∂h_t, and no c_t at all.
    """
    kind, lstm = cell_kind(rnn), rnn.mode == "LSTM"
    cell = CELLS[kind]
    batch, steps, _ = seq.shape
    x, states = seq, []
    for layer in range(rnn.num_layers):
        if layer:  # torch applies dropout to every layer's output but the last
            x = F.dropout(x, rnn.dropout, rnn.training)
        states = []
        for reverse in (False, True)[: 2 if rnn.bidirectional else 1]:
            w = weights_of(rnn, layer, reverse)
            h = seq.new_zeros(batch, rnn.hidden_size)
            state = (h, h) if lstm else h
            ss: list[tuple[torch.Tensor, ...]] = [(h,)] * steps
            for t in time_steps(steps, reverse):
                state = cell(x[:, t], state, *w)
                if lstm:  # c_t as a node of its own, read only by the next step: its gradient is then
                    # the one that goes on through time, never also the path into h_t = o_t tanh(c_t),
                    # whichever way torch computes the cell (composite ops on the CPU expose that path)
                    state = (state[0], state[1].view_as(state[1]))
                ss[t] = tuple(state) if lstm else (state,)
            states.append(ss)
        x = torch.cat([torch.stack([s[0] for s in ss], 1) for ss in states], -1)
    return x, states


# --- heads, FLOPs, initialisation ------------------------------------------------------------


def as_sequence(x: torch.Tensor, io: str, seq_len: int) -> torch.Tensor:
    """The (B, T, I) sequence a recurrent core reads for each io kind (see package doc)."""
    if io == "one-to-one":
        return x.unsqueeze(1)
    if io == "one-to-many":
        return x.unsqueeze(1).expand(-1, seq_len, -1)
    return x


def last_state(out: torch.Tensor, hidden_size: int, bidirectional: bool,
               lengths: torch.Tensor | None = None) -> torch.Tensor:
    """Final state of each direction: forward h_T (h_{L_b}, each sequence's last real step, with
    `lengths`), joined with backward h_1 if bidirectional."""
    last = out[:, -1] if lengths is None else out[torch.arange(len(out), device=out.device), lengths.to(out.device) - 1]
    if not bidirectional:
        return last
    return torch.cat([last[:, :hidden_size], out[:, 0, hidden_size:]], -1)


def run_padded(rnn: nn.RNNBase, seq: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """`rnn(seq)[0]` over zero-padded sequences of different `lengths`. One direction reads forward
    and its padding comes after every real step, so nothing changes; a backward direction must
    start at each sequence's own last step: harness's scans reverse each sequence within its
    length, torch's kernels read a packed sequence."""
    if lengths is None or not rnn.bidirectional:
        return rnn(seq)[0]
    if getattr(rnn, "runs_harness", lambda _: False)(seq.device):
        return rnn(seq, lengths=lengths)[0]
    packed = nn.utils.rnn.pack_padded_sequence(seq, lengths.cpu(), batch_first=True, enforce_sorted=False)
    return nn.utils.rnn.pad_packed_sequence(rnn(packed)[0], batch_first=True, total_length=seq.shape[1])[0]


def recurrent_flops(rnn: nn.RNNBase, input_size: int, seq_len: int) -> int:
    """2·G·H·(I+H) per step, direction and layer (matmuls only)."""
    dirs, h, g = 2 if rnn.bidirectional else 1, rnn.hidden_size, GATES[cell_kind(rnn)]
    total, width = 0, input_size
    for _ in range(rnn.num_layers):
        total += dirs * 2 * g * h * (width + h) * seq_len
        width = dirs * h
    return total


def head_flops(io: str, seq_len: int, layers: list[nn.Module]) -> int:
    """Matmul FLOPs of the linear layers of a head, once (many/one-to-one) or per step."""
    per_call = sum(2 * m.weight.numel() for m in layers if isinstance(m, nn.Linear))
    return per_call * (seq_len if io in PER_STEP else 1)


class RecurrentNet(nn.Module):
    """A recurrent core and one linear head, wired for `io` (see `harness.archs`)."""

    def __init__(self, rnn: nn.RNNBase, *, io: str, output_size: int, seq_len: int):
        super().__init__()
        self.rnn, self.io, self.seq_len = rnn, io, seq_len
        self.head = nn.Linear(rnn.hidden_size * (2 if rnn.bidirectional else 1), output_size)

    def forward(self, x: torch.Tensor, return_hidden: bool = False, lengths: torch.Tensor | None = None):
        seq = as_sequence(x, self.io, self.seq_len)
        if return_hidden:
            out, hidden = unroll(self.rnn, seq)
        else:
            out = run_padded(self.rnn, seq, lengths)
        if self.io in PER_STEP:
            y = self.head(out)
        else:
            y = self.head(last_state(out, self.rnn.hidden_size, self.rnn.bidirectional, lengths))
        return (y, hidden) if return_hidden else y

    def flops(self, seq_len: int) -> int:
        steps = 1 if self.io == "one-to-one" else seq_len
        return recurrent_flops(self.rnn, self.rnn.input_size, steps) + head_flops(self.io, steps, [self.head])


def keras_init(module: nn.Module) -> None:
    """Keras's defaults: glorot-uniform input kernels and dense weights, orthogonal recurrent
    kernels, zero biases and, for LSTMs, forget-gate bias 1 (torch's uniform ±1/√H loses about
    3 points on the seed notebook's MNIST model after 3 epochs)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.RNNBase):
            for name, p in m.named_parameters():
                with torch.no_grad():
                    if name.startswith("weight_ih"):
                        nn.init.xavier_uniform_(p)
                    elif name.startswith("weight_hh"):
                        nn.init.orthogonal_(p)
                    else:
                        p.zero_()
            if m.mode == "LSTM":
                set_forget_bias(m, 1.0)


def set_forget_bias(rnn: nn.LSTM, value: float) -> None:
    """Forget-gate bias b_f = value (torch splits biases in two: put it all in bias_ih)."""
    h = rnn.hidden_size
    with torch.no_grad():
        for name, p in rnn.named_parameters():
            if name.startswith("bias_ih"):
                p[h : 2 * h] = value
            elif name.startswith("bias_hh"):
                p[h : 2 * h] = 0.0


# --- family builders (their signatures are the options each variant takes) ------------------


def check_width(value, field: str) -> None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value > 0
    check(ok, field, f"must be a positive integer, got {value!r}")


def check_dropout(dropout) -> None:
    ok = isinstance(dropout, (int, float)) and not isinstance(dropout, bool) and 0 <= dropout < 1
    check(ok, "dropout", f"must be a probability in [0, 1), got {dropout!r}")


def check_common(*, io, hidden_size, num_layers, dropout, bidirectional) -> None:
    """The options every recurrent family takes (the classic ones here, and harness.archs.sequence's)."""
    check(io in IO_KINDS, "io", f"{io!r} is not one of {', '.join(IO_KINDS)}")
    check_width(hidden_size, "hidden_size")
    check_width(num_layers, "num_layers")
    check_dropout(dropout)
    check(isinstance(bidirectional, bool), "bidirectional", f"must be true or false, got {bidirectional!r}")


def _build(family, extra: dict, *, input_size, output_size, io, seq_len, hidden_size, num_layers, dropout,
           bidirectional, init) -> RecurrentNet:
    check_common(io=io, hidden_size=hidden_size, num_layers=num_layers, dropout=dropout, bidirectional=bidirectional)
    check(init in ("torch", "keras"), "init", f"must be 'torch' or 'keras', got {init!r}")
    # Dropout acts between stacked layers only; a single layer has none (torch would warn).
    rnn = family(input_size, hidden_size, num_layers=num_layers, batch_first=True,
                 dropout=dropout if num_layers > 1 else 0.0, bidirectional=bidirectional, **extra)
    net = RecurrentNet(rnn, io=io, output_size=output_size, seq_len=seq_len)
    if init == "keras":
        keras_init(net)
    return net


def check_kernel(kernel, activation: str = "") -> None:
    check(kernel in KERNELS, "kernel", f"must be one of {', '.join(KERNELS)}, got {kernel!r}")
    check(not (kernel == "torch" and activation == "sigmoid"), "kernel",
          "torch has no sigmoid RNN kernel; use kernel = 'harness' or 'auto'")


def elman(*, input_size: int, output_size: int, io: str, seq_len: int = 1, hidden_size: int = 128,
          num_layers: int = 1, dropout: float = 0.0, bidirectional: bool = False, activation: str = "tanh",
          init: str = "torch", kernel: str = "auto") -> RecurrentNet:
    """Elman RNN h_t = act(W x_t + U h_{t-1} + b), run by `ElmanRNN` with `kernel` auto | torch | harness."""
    check(activation in ACTIVATIONS, "activation", f"must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
    check_kernel(kernel, activation)
    return _build(ElmanRNN, {"nonlinearity": activation, "kernel": kernel}, input_size=input_size, output_size=output_size, io=io, seq_len=seq_len,
                  hidden_size=hidden_size, num_layers=num_layers, dropout=dropout, bidirectional=bidirectional, init=init)


def lstm_net(*, input_size: int, output_size: int, io: str, seq_len: int = 1, hidden_size: int = 128,
             num_layers: int = 1, dropout: float = 0.0, bidirectional: bool = False, forget_bias: float = 1.0,
             init: str = "torch") -> RecurrentNet:
    """LSTM; `forget_bias` sets every layer's forget-gate bias. Default 1, the field's setting
    (Gers et al. 2000; Jozefowicz et al. 2015; Keras's `unit_forget_bias=True`): PyTorch draws it
    around 0, which on MNIST-1D alone moved LSTM from 0.77 to 0.96 test accuracy. 0 gives
    PyTorch's mean."""
    ok = isinstance(forget_bias, (int, float)) and not isinstance(forget_bias, bool)
    check(ok, "forget_bias", f"must be a number (1.0 per Jozefowicz et al. 2015), got {forget_bias!r}")
    net = _build(nn.LSTM, {}, input_size=input_size, output_size=output_size, io=io, seq_len=seq_len,
                 hidden_size=hidden_size, num_layers=num_layers, dropout=dropout, bidirectional=bidirectional, init=init)
    set_forget_bias(net.rnn, float(forget_bias))
    return net


def gru_net(*, input_size: int, output_size: int, io: str, seq_len: int = 1, hidden_size: int = 128,
            num_layers: int = 1, dropout: float = 0.0, bidirectional: bool = False, init: str = "torch",
            kernel: str = "auto") -> RecurrentNet:
    """GRU, run by harness's `GRU` with `kernel` auto | torch | harness."""
    check_kernel(kernel)
    return _build(GRU, {"kernel": kernel}, input_size=input_size, output_size=output_size, io=io, seq_len=seq_len,
                  hidden_size=hidden_size, num_layers=num_layers, dropout=dropout, bidirectional=bidirectional, init=init)


def variant_of(builder):
    """Mark a variant as a call to `builder`: `inspect.signature` of the variant then lists the
    builder's options, which is what `create_model` checks overrides against."""

    def mark(fn):
        fn.__wrapped__ = builder
        return fn

    return mark


# --- the registered variants: defaults first, the caller's overrides last --------------------


@register_model(family="RNN")
@variant_of(elman)
def rnn(**kw):
    """RNN: Elman, tanh (activation = tanh | relu | sigmoid); 1 layer × 128."""
    return elman(**{"hidden_size": 128, "activation": "tanh", **kw})


@register_model(family="RNN")
@variant_of(elman)
def rnn_relu(**kw):
    """RNN: Elman, ReLU; 1 layer × 128."""
    return elman(**{"hidden_size": 128, "activation": "relu", **kw})


@register_model(family="RNN")
@variant_of(elman)
def rnn_sigmoid(**kw):
    """RNN: Elman, logistic sigmoid (harness's own recurrence, hand-written BPTT); 1 layer × 128."""
    return elman(**{"hidden_size": 128, "activation": "sigmoid", **kw})


@register_model(family="RNN", bidirectional=True)
@variant_of(elman)
def brnn(**kw):
    """BRNN: bidirectional Elman, tanh (activation = tanh | relu | sigmoid); 1 layer × 2×128."""
    return elman(**{"hidden_size": 128, "activation": "tanh", "bidirectional": True, **kw})


@register_model(family="LSTM")
@variant_of(lstm_net)
def lstm(**kw):
    """LSTM (Hochreiter & Schmidhuber 1997); 1 layer × 128; forget-gate bias 1 (Jozefowicz 2015)."""
    return lstm_net(**{"hidden_size": 128, **kw})


@register_model(family="LSTM", bidirectional=True)
@variant_of(lstm_net)
def bilstm(**kw):
    """BRNN: bidirectional LSTM; 1 layer × 2×128; forget-gate bias 1."""
    return lstm_net(**{"hidden_size": 128, "bidirectional": True, **kw})


@register_model(family="GRU")
@variant_of(gru_net)
def gru(**kw):
    """GRU (Cho et al. 2014); 1 layer × 128."""
    return gru_net(**{"hidden_size": 128, **kw})


@register_model(family="GRU", bidirectional=True)
@variant_of(gru_net)
def bigru(**kw):
    """BRNN: bidirectional GRU; 1 layer × 2×128."""
    return gru_net(**{"hidden_size": 128, "bidirectional": True, **kw})
