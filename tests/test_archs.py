"""The architecture registry: every name × every io, harness's Elman and GRU recurrences against
`nn.RNN` and `nn.GRU` (outputs, gradients, gradcheck, the `kernel` option), the states handed out for gradient flow, parameter and FLOP counts, plug-ins, bad input."""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch
from mlflow import MlflowClient
from torch import nn

import harness.archs as archs
from harness.archs import IO_KINDS, count_params, create_model, get_model_fn, list_models, model_flops
from harness.archs.recurrent import (
    GATES,
    GRU,
    ElmanRNN,
    RecurrentNet,
    as_sequence,
    cell_kind,
    elman_scan,
    gru_scan,
    unroll,
)
from harness.archs.sequence import SequenceNet
from harness.cli import main
from harness.config import load_experiment
from harness.errors import HarnessError
from tests.conftest import EXPERIMENTS
from tests.idx_files import write_mnist

B, T, D_IN, D_OUT, H = 4, 5, 3, 6, 8  # batch, steps, input width, outputs, hidden width: small and fast
NAMES = list_models()
PER_STEP = ("many-to-many", "one-to-many")


def build(name: str, io: str, seed: int = 0, **overrides) -> nn.Module:
    torch.manual_seed(seed)
    return create_model(name, input_size=D_IN, output_size=D_OUT, io=io, seq_len=T, **{"hidden_size": H, **overrides})


def batch(io: str, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn((B, T, D_IN) if io.startswith("many") else (B, D_IN), generator=g)


def directions(model: nn.Module) -> int:
    if isinstance(model, RecurrentNet):
        return 2 if model.rnn.bidirectional else 1
    return 2 if getattr(model, "bidirectional", False) else 1


# The parameters that act only on h_{t−1}: one-to-one reads one step from a zero state, so they see nothing.
RECURRENT = (".weight_hh", ".u", ".recurrent.", ".nu_log", ".theta_log", ".a_log")


# --- every registered name × every io --------------------------------------------------------


def test_the_registry_holds_every_compared_family():
    assert {"rnn", "rnn-relu", "rnn-sigmoid", "brnn", "lstm", "bilstm", "gru", "bigru", "seed-lstm", "mlp",
            "indrnn", "ornn", "lru", "mingru", "minlstm", "mamba"} <= set(NAMES)
    assert list_models("*lstm") == ["bilstm", "lstm", "minlstm", "seed-lstm"]


@pytest.mark.parametrize("io", IO_KINDS)
@pytest.mark.parametrize("name", NAMES)
def test_forward_shape_no_nan_and_every_parameter_gets_a_gradient(name, io):
    model = build(name, io).train()
    y = model(batch(io))
    assert y.shape == ((B, T, D_OUT) if io in PER_STEP else (B, D_OUT))
    assert torch.isfinite(y).all()
    y.square().mean().backward()
    for pname, p in model.named_parameters():
        # One-to-one is one step from a zero state, so the recurrent weights see nothing (no
        # gradient, or zeros). Any other all-zero gradient would mean a parameter wired to no
        # output (e.g. a head reading one direction).
        if io == "one-to-one" and any(r in f".{pname}" for r in RECURRENT):
            assert p.grad is None or not p.grad.any(), pname
            continue
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("io", IO_KINDS)
@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_model_and_output(name, io):
    x = batch(io)
    outs = []
    for seed in (0, 0, 1):
        model = build(name, io, seed=seed).train()
        torch.manual_seed(5)  # dropout masks too
        outs.append(model(x))
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)
    assert not torch.allclose(outs[0], outs[2])


@pytest.mark.parametrize("io", IO_KINDS)
@pytest.mark.parametrize("name", NAMES)
def test_return_hidden_gives_the_fused_output_and_top_layer_states(name, io):
    stacked = {"num_layers": 2} if "num_layers" in archs.model_options(get_model_fn(name)) else {}
    model = build(name, io, **stacked).eval()
    x = batch(io)
    y, states = model(x, return_hidden=True)
    torch.testing.assert_close(y, model(x))
    if name == "mlp":
        assert states == []
        return
    steps = 1 if io == "one-to-one" else T
    assert len(states) == directions(model) and all(len(ss) == steps for ss in states)
    if isinstance(model, SequenceNet):  # a family of harness.archs.sequence: its layers are checked against
        # their papers' equations, states included, in test_modern_archs.py
        assert all(t.shape[0] == B and t.requires_grad for ss in states for s in ss for t in s)
        return
    lstm = "lstm" in name
    assert all(len(s) == (2 if lstm else 1) for ss in states for s in ss)  # (h_t, c_t) or (h_t,)
    assert all(t.shape == (B, H) and t.requires_grad for ss in states for s in ss for t in s)
    # They are the top layer's states as the fused module computes them (not a lower layer's,
    # not shifted in time), each direction in its own list; an LSTM's c_t ends at the fused c_T.
    seq = as_sequence(x, io, T)
    with torch.no_grad():
        top = model.lstm2 if name == "seed-lstm" else model.rnn
        out, final = top(model.drop(model.lstm1(seq)[0]) if name == "seed-lstm" else seq)
    torch.testing.assert_close(torch.cat([torch.stack([s[0] for s in ss], 1) for ss in states], -1), out)
    if lstm:  # c_n of the top layer: forward's last step, backward's first (the one it computes last)
        c_n = final[1][-directions(model):]
        torch.testing.assert_close(states[0][-1][1], c_n[0])
        if directions(model) == 2:
            torch.testing.assert_close(states[1][0][1], c_n[1])


@pytest.mark.parametrize("name", [n for n in NAMES if n != "mlp"])
def test_the_states_get_gradients_through_time_in_many_to_one(name):
    """Only h_T feeds the loss directly; every earlier ∂L/∂h_t (and ∂L/∂c_t) arrives through time."""
    model = build(name, "many-to-one").eval()
    y, states = model(batch("many-to-one"), return_hidden=True)
    hs = [s[0] for ss in states for s in ss]
    grads = torch.autograd.grad(y.sum(), hs, retain_graph=True)
    assert all(g.abs().sum() > 0 for g in grads)
    if name in ("rnn", "lstm", "gru"):  # ∂(Σy)/∂h_T is the head's weight, summed over outputs
        torch.testing.assert_close(grads[-1], model.head.weight.sum(0).expand(B, H))
    if name in ("lstm", "bilstm", "seed-lstm"):  # the memory carries gradient too, at every step the next step reads
        cs = [s[1] for s in states[0][:-1]]
        assert all(g.abs().sum() > 0 for g in torch.autograd.grad(y.sum(), cs))


@pytest.mark.parametrize("io", ["many-to-one", "many-to-many"])
@pytest.mark.parametrize("name", NAMES)
def test_a_padded_batch_gives_each_sequence_what_it_gives_alone(name, io):
    """Sequences of different lengths, zero-padded in one batch: each one's output is its output
    alone, both directions of a bidirectional model included (the backward one starts at the
    sequence's own end), many-to-one from its last real step."""
    lengths = torch.tensor([T, 3, 1, 4])
    variants = [{}, {"bidirectional": True}] if "bidirectional" in (archs.model_options(get_model_fn(name)) or []) else [{}]
    for options in variants:
        model = build(name, io, **options).double().eval()
        x = batch("many-to-one").double()
        for b, n in enumerate(lengths):
            x[b, n:] = 0
        with torch.no_grad():
            padded = model(x, lengths=lengths)
            for b, n in enumerate(lengths.tolist()):
                alone = model(x[b : b + 1, :n]) if name != "mlp" else model(x[b : b + 1], lengths=lengths[b : b + 1])
                got = padded[b : b + 1, :n] if io == "many-to-many" else padded[b : b + 1]
                torch.testing.assert_close(got, alone[:, :n] if io == "many-to-many" else alone, rtol=1e-9, atol=1e-10,
                                           msg=lambda m, b=b, o=options: f"sequence {b} {o}: {m}")


def _fused(kind: str, **kw) -> nn.RNNBase:
    if kind in ("tanh", "relu"):
        return nn.RNN(D_IN, H, nonlinearity=kind, **kw)
    if kind == "sigmoid":
        return ElmanRNN(D_IN, H, nonlinearity="sigmoid", **kw)
    return {"lstm": nn.LSTM, "gru": nn.GRU}[kind](D_IN, H, **kw)


@pytest.mark.parametrize("kind", ["tanh", "relu", "sigmoid", "lstm", "gru"])
def test_unroll_matches_the_fused_module_on_outputs_and_gradients(kind):
    torch.manual_seed(0)
    rnn = _fused(kind, num_layers=2, bidirectional=True, batch_first=True, dropout=0.3).double().eval()
    x = torch.randn(B, T, D_IN, dtype=torch.double, requires_grad=True)
    results = []
    for forward in (lambda: rnn(x)[0], lambda: unroll(rnn, x)[0]):
        out = forward()
        results.append([out, *torch.autograd.grad(out.sin().sum(), [x, *rnn.parameters()])])
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b)
    states = unroll(rnn, x)[1]
    assert len(states) == 2 and all(len(s) == (2 if kind == "lstm" else 1) for ss in states for s in ss)


# --- the custom Elman recurrence -------------------------------------------------------------


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_custom_elman_with_copied_weights_matches_nn_rnn(activation, batch_first):
    """The hand-written BPTT is the one the sigmoid RNN runs; torch's tanh/relu RNN checks it."""
    torch.manual_seed(0)
    kw = {"num_layers": 2, "bidirectional": True, "batch_first": batch_first, "nonlinearity": activation}
    ref, own = nn.RNN(D_IN, H, **kw), ElmanRNN(D_IN, H, **kw)
    own.load_state_dict(ref.state_dict())
    x = torch.randn((B, T, D_IN) if batch_first else (T, B, D_IN), requires_grad=True)
    h0 = torch.randn(4, B, H, requires_grad=True)
    results = []
    for rnn in (ref, own):
        out, h_n = rnn(x, h0)
        loss = out.sin().sum() + h_n.cos().sum()
        results.append([out, h_n, *torch.autograd.grad(loss, [x, h0, *rnn.parameters()])])
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_custom_elman_skips_a_vanished_gradient_without_changing_the_result(bidirectional):
    """Many-to-one over 60 steps with small recurrent weights: the gradient carried back through
    time falls below 1e-15 of the loss's, and the custom backward stops carrying it (CPU
    subnormals would otherwise cost ~100× per step); every gradient still matches nn.RNN."""
    torch.manual_seed(0)
    kw = {"batch_first": True, "bidirectional": bidirectional}
    ref, own = nn.RNN(D_IN, H, **kw), ElmanRNN(D_IN, H, **kw)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if name.startswith("weight_hh"):
                p.mul_(0.05)
    own.load_state_dict(ref.state_dict())
    x = torch.randn(B, 60, D_IN, requires_grad=True)
    results = []
    for rnn in (ref, own):
        out = rnn(x)[0]
        last = out[:, -1, :H] if not bidirectional else torch.cat([out[:, -1, :H], out[:, 0, H:]], -1)
        results.append([out, *torch.autograd.grad(last.sin().sum(), [x, *rnn.parameters()])])
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b)
    # The skip did run: 20+ steps from where each direction's gradient enters, exact zeros.
    grad_x = results[1][1]
    assert (grad_x[:, 20:40] == 0).all() and (grad_x[:, -1] != 0).all()
    assert (grad_x[:, 0] != 0).all() == bidirectional


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("activation", ["sigmoid", "tanh", "relu"])
def test_elman_scan_backward_is_the_true_gradient(activation, reverse):
    g = torch.Generator().manual_seed(0)
    pre, h0, w = (torch.randn(*s, generator=g, dtype=torch.double, requires_grad=True) for s in ((6, 3, 4), (3, 4), (4, 4)))
    assert torch.autograd.gradcheck(lambda p, h, w: elman_scan(p, h, w, activation, reverse), (pre, h0, w))


# --- harness's GRU and the kernel option -------------------------------------------------------


@pytest.mark.parametrize("kw", [
    {"batch_first": True},
    {"num_layers": 2, "bidirectional": True, "batch_first": False, "dropout": 0.0},
    {"bidirectional": True, "batch_first": True, "bias": False},
], ids=["one-layer", "stacked-bidirectional", "no-bias"])
def test_harness_gru_with_copied_weights_matches_nn_gru(kw):
    """Outputs, final states and every gradient (input, initial state, weights) of `gru_scan`
    against torch's own GRU, in float64 so that only a wrong formula can differ."""
    torch.manual_seed(0)
    ref = nn.GRU(D_IN, H, **kw).double()
    own = GRU(D_IN, H, **kw).double()
    own.load_state_dict(ref.state_dict())
    dirs = 2 if ref.bidirectional else 1
    x = torch.randn((B, T, D_IN) if ref.batch_first else (T, B, D_IN), dtype=torch.double, requires_grad=True)
    h0 = torch.randn(ref.num_layers * dirs, B, H, dtype=torch.double, requires_grad=True)
    results = []
    for rnn in (ref, own):
        out, h_n = rnn(x, h0)
        loss = out.sin().sum() + h_n.cos().sum()
        results.append([out, h_n, *torch.autograd.grad(loss, [x, h0, *rnn.parameters()])])
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b)
    for a, b in zip(ref(x[0]), own(x[0]), strict=True):  # unbatched input, as nn.GRU takes it
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("reverse", [False, True])
def test_gru_scan_backward_is_the_true_gradient(reverse):
    g = torch.Generator().manual_seed(0)
    shapes = ((6, 3, 3 * 4), (3, 4), (3 * 4, 4), (3 * 4,))
    pre, h0, w, b = (torch.randn(*s, generator=g, dtype=torch.double, requires_grad=True) for s in shapes)
    assert torch.autograd.gradcheck(lambda p, h, w, b: gru_scan(p, h, w, b, reverse), (pre, h0, w, b))


@pytest.mark.parametrize("arch", ["rnn", "rnn-relu", "gru", "bigru", "brnn"])
def test_the_kernel_option_changes_the_kernel_not_the_model(arch):
    """`kernel` = torch, harness or auto: the same parameters, the same outputs and gradients."""
    results = []
    for kernel in ("torch", "harness", "auto"):
        model = build(arch, "many-to-one", kernel=kernel).double()
        x = batch("many-to-one").double()
        out = model(x)
        results.append([out, *torch.autograd.grad(out.sin().sum(), list(model.parameters()))])
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            torch.testing.assert_close(a, b)


def test_harness_gru_under_bf16_autocast_stays_near_fp32():
    """Under CPU autocast the scan runs in bf16 (the in-place matmuls take one dtype): its outputs
    stay within bf16's rounding of the fp32 ones, and the weights' gradients come back fp32."""
    torch.manual_seed(0)
    rnn = GRU(D_IN, H, batch_first=True)
    x = torch.randn(B, T, D_IN)
    ref = rnn(x)[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = rnn(x)[0]
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, atol=3e-2, rtol=3e-2)
    grads = torch.autograd.grad(out.float().sum(), list(rnn.parameters()))
    assert all(g.dtype == torch.float32 and g.isfinite().all() for g in grads)


def test_a_kernel_torch_lacks_is_a_one_line_error():
    with pytest.raises(HarnessError, match=r"^model\.kernel: torch has no sigmoid RNN kernel; use kernel = 'harness' or 'auto'$"):
        build("rnn-sigmoid", "many-to-one", kernel="torch")
    with pytest.raises(HarnessError, match=r"^model\.kernel: must be one of auto, torch, harness, got 'cudnn'$"):
        build("gru", "many-to-one", kernel="cudnn")


def test_custom_elman_takes_unbatched_input_like_nn_rnn():
    torch.manual_seed(0)
    ref, own = nn.RNN(D_IN, H), ElmanRNN(D_IN, H)
    own.load_state_dict(ref.state_dict())
    x = torch.randn(T, D_IN)
    for a, b in zip(ref(x), own(x), strict=True):
        torch.testing.assert_close(a, b)


def test_sigmoid_rnn_is_sigmoid():
    model = build("rnn-sigmoid", "many-to-many")
    assert isinstance(model.rnn, ElmanRNN) and cell_kind(model.rnn) == "RNN_SIGMOID"
    out = model.rnn(batch("many-to-many"))[0]
    assert (out > 0).all() and (out < 1).all()
    rnn = model.rnn
    h1 = torch.sigmoid(batch("many-to-many")[:, 0] @ rnn.weight_ih_l0.T + rnn.bias_ih_l0 + rnn.bias_hh_l0)
    torch.testing.assert_close(out[:, 0], h1)


# --- counts: parameters and FLOPs ------------------------------------------------------------


def recurrent_params(gates: int, layers: int, dirs: int, hidden: int = H) -> int:
    """Per layer and direction G·H·(I_l + H) weights and two bias vectors of G·H; then the head."""
    total, width = 0, D_IN
    for _ in range(layers):
        total += dirs * (gates * hidden * (width + hidden) + 2 * gates * hidden)
        width = dirs * hidden
    return total + width * D_OUT + D_OUT


@pytest.mark.parametrize("layers", [1, 3])
@pytest.mark.parametrize(
    ("name", "gates", "dirs"),
    [("rnn", 1, 1), ("rnn-relu", 1, 1), ("rnn-sigmoid", 1, 1), ("brnn", 1, 2),
     ("lstm", 4, 1), ("bilstm", 4, 2), ("gru", 3, 1), ("bigru", 3, 2)],
)
def test_parameter_counts_follow_the_family_formula(name, gates, dirs, layers):
    model = build(name, "many-to-one", num_layers=layers)
    assert count_params(model) == recurrent_params(gates, layers, dirs)
    assert GATES[cell_kind(model.rnn)] == gates


def test_mlp_parameter_count():
    # many-to-many: flatten T·D_IN → H → H → T·D_OUT
    model = build("mlp", "many-to-many")
    assert count_params(model) == (T * D_IN * H + H) + (H * H + H) + (H * T * D_OUT + T * D_OUT)


def test_seed_lstm_counts_match_the_keras_model():
    model = create_model("seed-lstm", input_size=28, output_size=10, io="many-to-one", seq_len=28)
    assert count_params(model) == 221_898
    # Keras: LSTM 28→128 80,384; LSTM 128→128 131,584; Dense 8,256; Dense 650 (one bias per LSTM)
    sizes = [sum(p.numel() for n, p in m.named_parameters() if not n.startswith("bias_hh"))
             for m in (model.lstm1, model.lstm2, model.head[0], model.head[3])]
    assert sizes == [80_384, 131_584, 8_256, 650] and sum(sizes) == 220_874


def test_flops_on_hand_computed_cases():
    # LSTM 3 → 4, 5 steps, many-to-one → 2: 2·4·4·(3+4)·5 = 1,120 recurrent + 2·4·2 = 16 head
    lstm = create_model("lstm", input_size=3, output_size=2, io="many-to-one", seq_len=5, hidden_size=4)
    assert model_flops(lstm, 5) == 1_136
    # BiGRU 2 → 3, 2 layers, 4 steps, many-to-many → 5: layer 1: 2 dirs · 2·3·3·(2+3)·4 = 720;
    # layer 2 reads 6: 2 · 2·3·3·(6+3)·4 = 1,296; head every step: 4 · 2·6·5 = 240
    bigru = create_model("bigru", input_size=2, output_size=5, io="many-to-many", seq_len=4, hidden_size=3, num_layers=2)
    assert model_flops(bigru, 4) == 2_256
    # MLP over 4 steps × 2 → 3 → 5: 2·8·3 + 2·3·5
    mlp = create_model("mlp", input_size=2, output_size=5, io="many-to-one", seq_len=4, hidden_size=3, num_layers=1)
    assert model_flops(mlp, 4) == 78


@pytest.mark.parametrize("name", NAMES)
def test_every_model_reports_positive_flops_that_grow_with_length(name):
    model = build(name, "many-to-one")
    assert model_flops(model, T) > 0
    if name != "mlp":  # the MLP's width is fixed by seq_len at construction
        assert model_flops(model, 2 * T) > model_flops(model, T)


# --- initialisation --------------------------------------------------------------------------


def test_forget_bias_and_keras_init():
    model = build("lstm", "many-to-one", forget_bias=1.0, num_layers=2)
    for layer in range(2):
        assert (getattr(model.rnn, f"bias_ih_l{layer}")[H : 2 * H] == 1).all()
        assert (getattr(model.rnn, f"bias_hh_l{layer}")[H : 2 * H] == 0).all()
    keras = build("gru", "many-to-one", init="keras").rnn
    eye = torch.eye(H)
    torch.testing.assert_close(keras.weight_hh_l0.T @ keras.weight_hh_l0, eye, atol=1e-5, rtol=0)
    assert (keras.bias_ih_l0 == 0).all() and (keras.bias_hh_l0 == 0).all()


def test_seed_lstm_uses_keras_init_unless_asked_for_torch():
    keras, native = build("seed-lstm", "many-to-one"), build("seed-lstm", "many-to-one", init="torch")
    for lstm in (keras.lstm1, keras.lstm2):
        bias = lstm.bias_ih_l0 + lstm.bias_hh_l0
        assert (bias[H : 2 * H] == 1).all() and (bias[:H] == 0).all() and (bias[2 * H :] == 0).all()
    assert all((m.bias == 0).all() for m in keras.head if isinstance(m, nn.Linear))
    assert not (native.lstm1.bias_ih_l0[H : 2 * H] == 1).all()


# --- bad input -------------------------------------------------------------------------------


def test_unknown_name_lists_close_matches():
    with pytest.raises(HarnessError, match=r"unknown architecture 'bilstn'; did you mean bilstm"):
        build("bilstn", "many-to-one")


@pytest.mark.parametrize(
    ("name", "overrides", "field"),
    [
        ("rnn", {"hidden_size": 0}, "hidden_size"),
        ("gru", {"hidden_size": 12.5}, "hidden_size"),
        ("lstm", {"num_layers": 0}, "num_layers"),
        ("rnn", {"activation": "foo"}, "activation"),
        ("brnn", {"activation": "softsign"}, "activation"),
        ("lstm", {"dropout": 1.5}, "dropout"),
        ("mlp", {"dropout": -0.1}, "dropout"),
        ("seed-lstm", {"dropout": 1.0}, "dropout"),
        ("bigru", {"bidirectional": "yes"}, "bidirectional"),
        ("gru", {"init": "xavier"}, "init"),
        ("lstm", {"forget_bias": "one"}, "forget_bias"),
        ("gru", {"forget_bias": 1.0}, "forget_bias"),  # options the architecture does not take
        ("lstm", {"activation": "relu"}, "activation"),
        ("mlp", {"bidirectional": True}, "bidirectional"),
        ("seed-lstm", {"num_layers": 3}, "num_layers"),
        ("indrnn", {"magnitude": 0.5}, "magnitude"),
        ("indrnn", {"hidden_size": -1}, "hidden_size"),
        ("ornn", {"activation": "relu"}, "activation"),
        ("lru", {"r_min": 0.99, "r_max": 0.9}, "r_min"),
        ("lru", {"max_phase": 7.0}, "max_phase"),
        ("lru", {"state_size": 0}, "state_size"),
        ("mingru", {"scan": "fast"}, "scan"),
        ("minlstm", {"dropout": 2.0}, "dropout"),
        ("mamba", {"expand": 0}, "expand"),
        ("mamba", {"chunk": 1.5}, "chunk"),
        ("mamba", {"bidirectional": "no"}, "bidirectional"),
    ],
)
def test_bad_overrides_fail_with_one_line_naming_the_field(name, overrides, field):
    with pytest.raises(HarnessError) as e:
        build(name, "many-to-one", **overrides)
    msg = str(e.value)
    assert msg.startswith(f"model.{field}: ") and "\n" not in msg


def test_an_option_the_architecture_lacks_is_named_with_what_it_takes():
    with pytest.raises(HarnessError, match=r"^model\.forget_bias: architecture 'gru' takes no option 'forget_bias'; "
                                           r"it takes hidden_size, num_layers, dropout, bidirectional, init, kernel$"):
        build("gru", "many-to-one", forget_bias=1.0)


def test_none_overrides_are_dropped():
    """None means "unset": options the GRU does not take are not refused, and the model is the
    default one, weight for weight (hidden_size=None falls back to the factory's 128)."""
    torch.manual_seed(0)
    model = create_model("gru", input_size=D_IN, output_size=D_OUT, io="many-to-one", seq_len=T,
                         forget_bias=None, activation=None, hidden_size=None, num_layers=None)
    torch.manual_seed(0)
    default = create_model("gru", input_size=D_IN, output_size=D_OUT, io="many-to-one", seq_len=T)
    assert model.rnn.hidden_size == 128 and model.rnn.num_layers == 1
    assert model.state_dict().keys() == default.state_dict().keys()
    for key, value in default.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_bad_io_is_refused():
    with pytest.raises(HarnessError, match="io: 'many-to-few'"):
        build("lstm", "many-to-few")


def test_list_archs_names_each_family_and_activation(capsys):
    assert main(["list", "archs", "*rnn*"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert set(lines) == {"rnn", "rnn-relu", "rnn-sigmoid", "brnn", "indrnn", "ornn"}
    assert "tanh" in lines["rnn"] and "ReLU" in lines["rnn-relu"] and "sigmoid" in lines["rnn-sigmoid"]
    assert lines["brnn"].split()[1] == "BRNN:" and lines["rnn"].split()[1] == "RNN:" and lines["indrnn"].split()[1] == "IndRNN:"


# --- plug-ins --------------------------------------------------------------------------------

PLUGIN = textwrap.dedent('''
    # the README's example
    from torch import nn

    class TinyGRU(nn.Module):
        def __init__(self, input_size, output_size, hidden_size):
            super().__init__()
            self.gru, self.head = nn.GRU(input_size, hidden_size, batch_first=True), nn.Linear(hidden_size, output_size)
        def forward(self, x):                                   # many-to-one: (B, T, I) → (B, O)
            return self.head(self.gru(x)[0][:, -1])

    def tiny_gru(*, input_size, output_size, io, seq_len=1, hidden_size=32):
        """A GRU read by its last state (many-to-one)."""   # what `harness list archs` shows
        return TinyGRU(input_size, output_size, hidden_size)


    def not_a_model(*, input_size, output_size, io, seq_len=1):
        return "a string"
''')


@pytest.fixture
def fresh_registry(monkeypatch):
    """The registry as built in, plug-ins not yet looked up; restored afterwards."""
    monkeypatch.setattr(archs._registry, "entries", dict(archs._registry.entries))
    monkeypatch.setattr(archs, "_plugins_loaded", False)


def test_module_function_reference_from_sys_path(tmp_path, monkeypatch):
    (tmp_path / "user_archs_a.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    model = create_model("user_archs_a:tiny_gru", input_size=D_IN, output_size=D_OUT, io="many-to-one", seq_len=T, hidden_size=5)
    assert type(model).__name__ == "TinyGRU" and model(batch("many-to-one")).shape == (B, D_OUT)
    assert count_params(model) == 3 * 5 * (D_IN + 5) + 6 * 5 + 5 * D_OUT + D_OUT
    assert model_flops(model, T) is None  # it does not say
    with pytest.raises(HarnessError, match=r"^model\.dropout: .* it takes hidden_size$"):
        create_model("user_archs_a:tiny_gru", input_size=D_IN, output_size=D_OUT, io="many-to-one", dropout=0.1)
    with pytest.raises(HarnessError, match=r"^model\.arch: 'user_archs_a:not_a_model' returned a str"):
        create_model("user_archs_a:not_a_model", input_size=D_IN, output_size=D_OUT, io="many-to-one")


@pytest.mark.parametrize(
    ("ref", "message"),
    [("no_such_module_xyz:fn", "ModuleNotFoundError"), ("user_archs_b:missing", "AttributeError"),
     ("user_archs_b:TinyGRU.forward", "must take the keywords input_size, output_size, io, seq_len"),
     ("user_archs_b:nn", "not a function")],
)
def test_bad_module_function_references(tmp_path, monkeypatch, ref, message):
    (tmp_path / "user_archs_b.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(HarnessError) as e:
        create_model(ref, input_size=D_IN, output_size=D_OUT, io="many-to-one")
    assert str(e.value).startswith("model.arch: ") and message in str(e.value)


@pytest.mark.slow
def test_experiment_file_names_a_module_in_its_working_directory(workdir, capsys):
    """The installed `harness` command does not put the working directory on sys.path; harness does."""
    assert str(workdir) not in sys.path
    (workdir / "my_archs.py").write_text(PLUGIN)
    (workdir / "exp.toml").write_text(textwrap.dedent("""
        # A plug-in architecture from an experiment file.
        [task]
        name = "digits"
        n_train = 64
        [model]
        arch = "my_archs:tiny_gru"
        hidden_size = 4
        [train]
        epochs = 1
    """))
    assert main(["run", str(workdir / "exp.toml")]) == 0
    assert "my_archs:tiny_gru on digits" in capsys.readouterr().out
    assert str(workdir) not in sys.path  # searched during the import only
    (run,) = MlflowClient().search_runs([MlflowClient().get_experiment_by_name("exp").experiment_id])
    assert run.data.params["model.arch"] == "my_archs:tiny_gru" and run.data.params["n_params"] == str(
        3 * 4 * (8 + 4) + 6 * 4 + 4 * 10 + 10)


def _install_plugin(site, entry_points: str) -> None:
    """A real installed distribution: `*.dist-info` with METADATA and entry_points.txt."""
    (site / "user_archs_c.py").write_text(PLUGIN + "\n\ndef broken(**kw):\n    raise RuntimeError\n")
    info = site / "harness_user_archs-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: harness-user-archs\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[harness.archs]\n{entry_points}\n")


def test_entry_point_plugins_are_listed_and_built(tmp_path, monkeypatch, fresh_registry, capsys):
    _install_plugin(tmp_path, "tiny-gru = user_archs_c:tiny_gru\nlstm = user_archs_c:tiny_gru")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.warns(UserWarning, match="plug-in 'lstm' .* ignored: a built-in has that name"):
        assert "tiny-gru" in list_models("tiny*")
    model = create_model("tiny-gru", input_size=D_IN, output_size=D_OUT, io="many-to-one", seq_len=T)
    assert type(model).__name__ == "TinyGRU"
    assert isinstance(create_model("lstm", input_size=D_IN, output_size=D_OUT, io="many-to-one").rnn, nn.LSTM)
    assert main(["list", "archs", "tiny*"]) == 0
    assert capsys.readouterr().out.split(None, 1) == ["tiny-gru", "A GRU read by its last state (many-to-one).\n"]


def test_a_broken_entry_point_is_one_line(tmp_path, monkeypatch, fresh_registry):
    _install_plugin(tmp_path, "gone = user_archs_c_missing:tiny_gru")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(HarnessError, match=r"^model\.arch: plug-in 'gone' .* failed to import: ModuleNotFoundError"):
        list_models()


# --- the seed experiment ---------------------------------------------------------------------


def test_seed_experiment_is_the_notebook_training():
    exp = load_experiment(EXPERIMENTS / "seed_mnist_lstm.toml")
    assert (exp.task.name, exp.model.arch) == ("mnist-rows", "seed-lstm")
    assert (exp.train.optimizer, exp.train.lr, exp.train.batch_size, exp.train.epochs) == ("adam", 1e-3, 32, 3)
    assert exp.task.options()["val_size"] > 0  # validation from the training images, never the test set


@pytest.mark.slow
def test_seed_experiment_runs_on_tiny_idx_files(workdir, capsys):
    write_mnist(workdir / "data" / "MNIST" / "raw", n_train=80, n_test=20)
    argv = ["run", str(EXPERIMENTS / "seed_mnist_lstm.toml"), "--set", f"task.data_dir={workdir / 'data'}",
            "--set", "task.download=false", "--set", "train.epochs=1"]
    assert main(argv) == 0
    assert "seed-lstm on mnist-rows" in capsys.readouterr().out
    exp = MlflowClient().get_experiment_by_name("seed_mnist_lstm")
    (run,) = MlflowClient().search_runs([exp.experiment_id])
    assert run.data.params["n_params"] == "221898"
