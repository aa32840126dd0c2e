"""Gradient statistics during training: norms per layer against hand-computed ones, clipping, the
cadence, and the non-finite check (both its CPU and its buffered GPU path). Gradient flow through
time: tests/test_gradflow.py."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from harness.archs import create_model
from harness.config import TrainSettings
from harness.gradients import Diverged, FiniteCheck, GradStats, grad_norm, group_of
from harness.tasks import load_task
from harness.train import fit
from tests.fakes import Records


def recorded_step(model: nn.Module, x: torch.Tensor, loss_fn, y: torch.Tensor, clip_norm=None) -> dict[str, float]:
    """One recorded step as the loop does it: forward, backward, record; its metrics."""
    stats = GradStats(model, every=1, clip_norm=clip_norm)
    loss_fn(model(x), y).backward()
    norm = grad_norm([p for p in model.parameters()])
    stats.observe(norm)
    stats.record(1, norm)
    [(step, metrics)] = stats.drain()
    assert step == 1
    return metrics


def test_layer_norms_add_up_and_name_each_layer():
    torch.manual_seed(0)
    model = create_model("lstm", input_size=3, output_size=5, io="many-to-many", seq_len=7, hidden_size=8, num_layers=2)
    x, y = torch.randn(4, 7, 3), torch.randint(0, 5, (4, 7))
    loss_fn = lambda out, y: nn.functional.cross_entropy(out.reshape(-1, 5), y.reshape(-1))  # noqa: E731
    metrics = recorded_step(model, x, loss_fn, y)
    layers = {k: v for k, v in metrics.items() if k.startswith("grad_norm/")}
    assert set(layers) == {"grad_norm/rnn.layer0", "grad_norm/rnn.layer1", "grad_norm/head"}
    assert math.sqrt(sum(v**2 for v in layers.values())) == pytest.approx(metrics["grad_norm"], rel=1e-5)
    # Each group is its own layer's gradients (not a neighbour's): computed here from the names.
    for group, prefix in (("rnn.layer0", "_l0"), ("rnn.layer1", "_l1"), ("head", "head.")):
        own = [p.grad for n, p in model.named_parameters() if prefix in n]
        assert len(own) in (2, 4)
        assert metrics[f"grad_norm/{group}"] == pytest.approx(torch.cat([g.flatten() for g in own]).norm().item(), rel=1e-5)
    assert metrics["grad_norm"] == pytest.approx(
        torch.cat([p.grad.flatten() for p in model.parameters()]).norm().item(), rel=1e-5)
    assert metrics["grad_nonfinite"] == 0 and metrics["clip_fraction"] == 0
    assert metrics["grad_norm_clipped"] == metrics["grad_norm"]  # no clip_norm: nothing clipped


def test_any_model_records_its_norms():
    class Plain(nn.Module):  # a user plug-in that knows nothing of recurrent states
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 2)

        def forward(self, x):
            return self.lin(x)

    mlp = create_model("mlp", input_size=4, output_size=2, io="one-to-one")
    for model in (mlp, Plain()):
        metrics = recorded_step(model, torch.randn(6, 4), nn.functional.cross_entropy, torch.randint(0, 2, (6,)))
        direct = torch.cat([p.grad.flatten() for p in model.parameters()]).norm().item()
        assert direct > 0 and metrics["grad_norm"] == pytest.approx(direct, rel=1e-5)
        assert not any(k.startswith("gradflow") for k in metrics)  # flow through time is measured after training
    assert group_of(Plain(), "lin.weight") == "lin" and metrics["grad_norm/lin"] == pytest.approx(direct, rel=1e-5)


def test_cadence_first_step_then_every_nth():
    stats = GradStats(nn.Linear(2, 2), every=10)
    assert [s for s in range(1, 35) if stats.due(s)] == [1, 10, 20, 30]


def test_clip_fraction_is_the_share_of_steps_since_the_last_record_above_clip_norm():
    model = nn.Linear(2, 1)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    stats = GradStats(model, every=4, clip_norm=1.0)
    for step, norm in enumerate((3.0, 0.5, 2.0, 0.9, 1.5), 1):  # records at steps 1 and 4; step 5 is not one
        stats.observe(torch.tensor(norm))
        if stats.due(step):
            stats.record(step, torch.tensor(norm))
    (s1, first), (s4, fourth) = stats.drain()
    assert (s1, s4) == (1, 4)
    assert first["clip_fraction"] == 1.0 and first["grad_norm_clipped"] == pytest.approx(1.0, rel=1e-5)
    # Step 4's record covers steps 2, 3, 4 (0.5, 2.0, 0.9): one of three was clipped; 0.9 itself was not.
    assert fourth["clip_fraction"] == pytest.approx(1 / 3) and fourth["grad_norm_clipped"] == pytest.approx(0.9)


def test_finite_check_stops_at_the_first_bad_step_on_both_paths():
    ok, nan = torch.tensor(1.0), torch.tensor(float("nan"))
    eager = FiniteCheck(torch.device("cpu"))
    assert eager.update(1, 1, ok, ok) is None
    failure = eager.update(1, 2, ok, torch.tensor(float("inf")))
    assert isinstance(failure, Diverged) and (failure.epoch, failure.step, failure.what) == (1, 2, "gradient")
    assert eager.update(2, 3, nan, nan).what == "loss"
    # The buffered path (what a GPU uses): verdicts read every 4 steps, the first bad one reported.
    lazy = FiniteCheck(torch.device("cpu"), every=4, lazy=True)
    assert [lazy.update(1, s, ok, ok) for s in (1, 2, 3)] == [None] * 3
    assert lazy.update(1, 4, ok, ok) is None  # a full buffer, all finite
    assert lazy.update(1, 5, ok, ok) is None and lazy.update(1, 6, nan, ok) is None
    assert lazy.update(2, 7, ok, nan) is None  # not read yet
    failure = lazy.flush()  # e.g. at the end of the epoch
    assert (failure.epoch, failure.step) == (1, 6)
    assert lazy.flush() is None


def adding_cfg(**kw) -> TrainSettings:
    return TrainSettings(**{"epochs": 1, "batch_size": 64, "lr": 1e-3, **kw})


def test_tiny_clip_norm_clips_every_step():
    task = load_task("adding", seq_len=20, train_size=400, test_size=100)
    torch.manual_seed(0)
    model = create_model("gru", input_size=2, output_size=1, io="many-to-one", seq_len=20, hidden_size=16)
    stats = GradStats(model, every=2, clip_norm=1e-3)
    seen = Records()
    fit(model, task, adding_cfg(clip_norm=1e-3), device=torch.device("cpu"), grad_stats=stats, callbacks=[seen])
    records = [m for _, m in seen.records]
    assert len(records) == 4  # steps 1, 2, 4, 6 of 6 (360 training sequences, batches of 64)
    assert all(m["clip_fraction"] == 1.0 for m in records)
    assert all(m["grad_norm_clipped"] <= 1e-3 < m["grad_norm"] for m in records)


def test_relu_rnn_with_lr_1_diverges_without_touching_the_weights():
    task = load_task("adding", seq_len=100, train_size=640, test_size=100)
    torch.manual_seed(0)
    model = create_model("rnn-relu", input_size=2, output_size=1, io="many-to-one", seq_len=100, hidden_size=32)
    stats = GradStats(model, every=100)
    seen = Records()
    with pytest.raises(Diverged) as info:
        fit(model, task, adding_cfg(lr=1.0, epochs=3), device=torch.device("cpu"), grad_stats=stats, callbacks=[seen])
    assert info.value.epoch == 1 and info.value.step > 1
    # The diverging step is recorded, with its non-finite entries, and never reached the optimiser.
    (step, last), = [r for r in seen.records if r[0] == info.value.step]
    assert last["grad_nonfinite"] > 0 or not math.isfinite(last["grad_norm"])
    assert all(torch.isfinite(p).all() for p in model.parameters())
