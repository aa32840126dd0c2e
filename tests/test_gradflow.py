"""Gradient flow at a checkpoint: the profile against hand-computed gradients, the per-example
log-rate against numpy's own fit, each example on its own, both directions, an LSTM's cell state,
and the vanishing gradient of a tanh RNN against an LSTM at initialisation, measured."""

from __future__ import annotations

import copy
import csv
import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from harness.archs import create_model
from harness.artifacts import write_gradflow as write
from harness.errors import HarnessError
from harness.gradflow import BATCH, GradFlow, fixed_batch, log_rates, measure, takes_hidden
from harness.tasks import load_task

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def adding():
    """The adding problem over 50 steps (the fixed batch: its first 256 validation examples)."""
    return load_task("adding", seq_len=50, train_size=4000, test_size=10)


def fresh(arch: str, task, seed: int = 0, **overrides) -> nn.Module:
    torch.manual_seed(seed)
    return create_model(arch, input_size=task.input_size, output_size=task.output_size, io=task.io,
                        seq_len=task.seq_len, **overrides)


def scalar_rnn(bidirectional: bool) -> nn.Module:
    """A 1-unit tanh RNN with hand-set weights (so every ∂L/∂h_t can be computed on paper)."""
    model = create_model("brnn" if bidirectional else "rnn", input_size=1, output_size=1, io="many-to-one",
                         seq_len=4, hidden_size=1)
    values = {"weight_ih": 0.8, "weight_hh": 0.5, "bias_ih": 0.1, "bias_hh": -0.2}
    with torch.no_grad():
        for name, p in model.rnn.named_parameters():
            p.fill_(values[name.split("_l0")[0]] * (-1 if name.endswith("reverse") else 1))
        model.head.weight.copy_(torch.tensor([[1.5, -0.7][: 2 if bidirectional else 1]]))
        model.head.bias.fill_(0.3)
    return model


def by_hand(xs: list[float], w_ih: float, w_hh: float, b: float, dl_dlast: float, reverse: bool):
    """∂L/∂h_t and ∂L/∂x_t (through this direction) of h_t = tanh(w_ih x_t + w_hh h_prev + b),
    in time order, given ∂L/∂(the state the direction computes last)."""
    order = list(range(len(xs)))[::-1] if reverse else list(range(len(xs)))
    h, hs = 0.0, {}
    for t in order:
        h = math.tanh(w_ih * xs[t] + w_hh * h + b)
        hs[t] = h
    grads = {order[-1]: dl_dlast}
    for t, prev in itertools.pairwise(order[::-1]):  # back through time: ∂h_t/∂h_prev = (1 − h_t²) w_hh
        grads[prev] = grads[t] * (1 - hs[t] ** 2) * w_hh
    dh = [grads[t] for t in range(len(xs))]
    return dh, [g * (1 - hs[t] ** 2) * w_ih for t, g in enumerate(dh)]


@pytest.mark.parametrize("bidirectional", [False, True])
def test_profile_and_rate_equal_a_hand_computation(bidirectional):
    model = scalar_rnn(bidirectional)
    xs = [0.5, -1.0, 2.0, 0.25]
    x, target = torch.tensor([xs]).unsqueeze(-1), torch.tensor([[1.0]])
    flow = measure(model, x, target, nn.functional.mse_loss, CPU)
    with torch.no_grad():
        dl_dy = 2 * (model.double()(x.double()).item() - 1.0)  # mse of one value
    f32 = lambda v: float(torch.tensor(v))  # noqa: E731 - the weights as the model holds them
    dh, dx = by_hand(xs, f32(0.8), f32(0.5), f32(0.1) + f32(-0.2), dl_dy * f32(1.5), reverse=False)
    assert flow.state["forward"] == pytest.approx([abs(g) for g in dh], rel=1e-9)
    distance = np.arange(3, -1, -1)  # T − t for t = 1 … 4
    assert flow.metrics()["gradflow_rate"] == pytest.approx(np.polyfit(distance, np.log(np.abs(dh)), 1)[0], rel=1e-9)
    assert flow.metrics()["gradflow_rate_iqr"] == 0  # one example
    if bidirectional:  # the backward direction reads x_T first and hands its h_1 to the head
        dh_bwd, dx_bwd = by_hand(xs, f32(-0.8), f32(-0.5), f32(-0.1) + f32(0.2), dl_dy * f32(-0.7), reverse=True)
        assert flow.state["backward"] == pytest.approx([abs(g) for g in dh_bwd], rel=1e-9)
        rate = np.polyfit(np.arange(4), np.log(np.abs(dh_bwd)), 1)[0]  # distance t − 1 from h_1
        assert flow.metrics()["gradflow_rate_bwd"] == pytest.approx(rate, rel=1e-9)
        dx = [a + b for a, b in zip(dx, dx_bwd, strict=True)]  # x_t feeds both directions
    else:
        assert set(flow.metrics()) == {"gradflow_rate", "gradflow_rate_iqr"}
    assert flow.inputs == pytest.approx([abs(g) for g in dx], rel=1e-9)


def test_each_example_of_a_batch_gets_its_own_rate(adding):
    """One backward of the summed loss: every example's rate is the one it has measured alone,
    and the metrics are their median and interquartile range."""
    model = fresh("lstm", adding, hidden_size=32).train()
    before = copy.deepcopy(model.state_dict())
    x, y = adding.x_val[:7], adding.y_val[:7]
    flow = measure(model, x, y, adding.loss_fn, CPU)
    alone = [measure(model, x[i : i + 1], y[i : i + 1], adding.loss_fn, CPU) for i in range(7)]
    rates = [a.rates["forward"][0] for a in alone]
    assert flow.rates["forward"] == pytest.approx(rates, rel=1e-9)
    assert len(set(rates)) == 7  # the examples do differ
    q25, q50, q75 = np.percentile(rates, [25, 50, 75])
    assert flow.metrics() == pytest.approx({"gradflow_rate": q50, "gradflow_rate_iqr": q75 - q25}, rel=1e-9)
    # A single example's rate is numpy's fit of its own profile: ln‖∂L/∂s_t‖ against T − t.
    profile = np.array(alone[3].state["forward"])
    assert rates[3] == pytest.approx(np.polyfit(np.arange(49, -1, -1), np.log(profile), 1)[0], rel=1e-9)
    assert np.median([a.state["forward"] for a in alone], 0) == pytest.approx(flow.state["forward"], rel=1e-9)
    # The model it measured is left as it was: weights, dtype, training mode.
    assert model.training and all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_an_lstm_state_holds_its_cell_and_a_gru_state_is_h_alone(adding):
    x, y = fixed_batch(adding)
    for arch in ("lstm", "gru"):
        model = fresh(arch, adding, hidden_size=32)
        state = np.array(measure(model, x, y, adding.loss_fn, CPU).state["forward"])
        # ‖∂L/∂h_t‖ alone, computed here from the model's own states
        probe = copy.deepcopy(model).double().eval()
        out, states = probe(x.double(), return_hidden=True)
        loss = sum(adding.loss_fn(out[i : i + 1], y[i : i + 1].double()) for i in range(len(y)))
        grads = torch.autograd.grad(loss, [s[0] for s in states[0]])
        h_only = np.median(torch.stack([g.norm(dim=1) for g in grads], 1).numpy(), 0)
        if arch == "gru":
            assert state == pytest.approx(h_only, rel=1e-9)
        else:  # c_t adds gradient at every step the next one reads; c_T feeds nothing (many-to-one)
            assert (state[:-1] > 1.5 * h_only[:-1]).all(), state / h_only  # measured: ≥ 2.5×
            assert state[-1] == pytest.approx(h_only[-1], rel=1e-9)


def test_bidirectional_models_give_both_directions_each_read_its_own_way(adding):
    x, y = fixed_batch(adding)
    assert len(x) == BATCH and torch.equal(x, adding.x_val[:BATCH])
    for arch in ("bigru", "bilstm", "brnn"):
        flow = measure(fresh(arch, adding, hidden_size=16), x, y, adding.loss_fn, CPU)
        assert set(flow.metrics()) == {"gradflow_rate", "gradflow_rate_iqr", "gradflow_rate_bwd", "gradflow_rate_bwd_iqr"}
        # Many-to-one: the forward direction's gradient is largest at h_T, the backward one's at h_1.
        fwd, bwd = flow.state["forward"], flow.state["backward"]
        assert fwd[-1] > fwd[0] and bwd[0] > bwd[-1], arch
        assert flow.metrics()["gradflow_rate"] < 0 and flow.metrics()["gradflow_rate_bwd"] < 0
    flow = measure(fresh("gru", adding, hidden_size=16), x, y, adding.loss_fn, CPU)
    assert set(flow.state) == {"forward"} and set(flow.metrics()) == {"gradflow_rate", "gradflow_rate_iqr"}


def test_tanh_rnn_gradient_vanishes_where_an_lstm_keeps_it_at_initialisation(adding):
    """Adding problem, 50 steps, fresh default models (128 units; the LSTM's forget-gate bias 1).
    Measured (seeds 0-4): tanh RNN −0.52 to −0.58 per step, LSTM −0.148 to −0.161 (GRU −0.44 to
    −0.46), a gap of 0.36 to 0.43. The thresholds leave about 0.1 on each side."""
    x, y = fixed_batch(adding)
    rates = {arch: measure(fresh(arch, adding), x, y, adding.loss_fn, CPU).metrics()["gradflow_rate"]
             for arch in ("rnn", "lstm")}
    assert rates["rnn"] < -0.4, rates  # e^(−0.4 × 49) ≈ 3e−9 across the sequence
    assert -0.25 < rates["lstm"] < 0, rates
    assert rates["lstm"] - rates["rnn"] > 0.25, rates


def test_one_step_has_no_rate_and_a_single_input_one_value(tmp_path):
    torch.manual_seed(0)
    one = create_model("lstm", input_size=3, output_size=2, io="one-to-one", hidden_size=4)
    flow = measure(one, torch.randn(5, 3), torch.randint(0, 2, (5,)), nn.functional.cross_entropy, CPU)
    assert flow.steps == 1 and len(flow.inputs) == 1 and flow.rates == {} and flow.metrics() == {}
    many = create_model("gru", input_size=3, output_size=2, io="one-to-many", seq_len=6, hidden_size=4)
    flow = measure(many, torch.randn(5, 3), torch.randn(5, 6, 2), nn.functional.mse_loss, CPU)
    assert flow.steps == 6 and len(flow.inputs) == 1 and set(flow.metrics()) == {"gradflow_rate", "gradflow_rate_iqr"}
    csv_path, png = write(flow, tmp_path)
    with csv_path.open() as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["direction", "quantity", "t1", "t2", "t3", "t4", "t5", "t6"]
    assert rows[1][:2] == ["forward", "state"] and [float(v) for v in rows[1][2:]] == pytest.approx(flow.state["forward"], rel=1e-5)
    assert rows[2] == ["all", "input", f"{flow.inputs[0]:.6g}", "", "", "", "", ""]  # read once: t1 only
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_models_without_states_measure_nothing():
    class Plain(nn.Module):  # a user plug-in that knows nothing of return_hidden
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 2)

        def forward(self, x):
            return self.lin(x)

    mlp = create_model("mlp", input_size=4, output_size=2, io="many-to-one", seq_len=3)
    assert takes_hidden(mlp) and not takes_hidden(Plain())
    assert measure(mlp, torch.randn(6, 3, 4), torch.randint(0, 2, (6,)), nn.functional.cross_entropy, CPU) is None
    assert measure(Plain(), torch.randn(6, 4), torch.randint(0, 2, (6,)), nn.functional.cross_entropy, CPU) is None


def test_states_off_the_autograd_path_are_a_one_line_error():
    class Detached(nn.Module):  # a plug-in that hands out its states detached from the graph
        def __init__(self):
            super().__init__()
            self.gru, self.head = nn.GRU(2, 4, batch_first=True), nn.Linear(4, 1)

        def forward(self, x, return_hidden=False):
            out = self.gru(x)[0]
            y = self.head(out[:, -1])
            return (y, [[out[:, t].detach() for t in range(x.shape[1])]]) if return_hidden else y

    with pytest.raises(HarnessError, match=r"^model\.arch: Detached\(x, return_hidden=True\) returned states that are not") as e:
        measure(Detached(), torch.randn(3, 5, 2), torch.randn(3, 1), nn.functional.mse_loss, CPU)
    assert "\n" not in str(e.value)


def test_log_rate_leaves_zero_gradients_out_of_the_fit():
    norms = np.array([[0.0, 0.0, 1e-3, 1e-2, 1e-1],  # vanished to 0 at the two earliest steps
                      [0.0, 0.0, 0.0, 0.0, 1.0],  # one point: no slope
                      [1.0, 1.0, 1.0, 1.0, 1.0]])
    fwd = log_rates(norms)
    assert fwd[0] == pytest.approx(-math.log(10)) and math.isnan(fwd[1]) and fwd[2] == 0
    assert log_rates(norms[:, ::-1], reverse=True)[0] == pytest.approx(-math.log(10))
    # The metrics summarise the examples that have a rate; with none, they are NaN, not absent.
    flow = GradFlow(state={"forward": [0.0, 1.0]}, inputs=[], rates={"forward": [math.nan, -1.0, -2.0, -4.0]})
    assert flow.metrics() == {"gradflow_rate": -2.0, "gradflow_rate_iqr": 1.5}
    flow.rates["forward"] = [math.nan] * 4
    assert set(flow.metrics()) == {"gradflow_rate", "gradflow_rate_iqr"} and all(map(math.isnan, flow.metrics().values()))
