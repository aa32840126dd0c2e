"""The one training loop: epochs, the chosen checkpoint, final speed figures, and that the
gradient probe leaves training's arithmetic alone."""

from __future__ import annotations

import math

import pytest
import torch

from harness.callbacks import Callback
from harness.config import TrainSettings, validate
from harness.errors import Pruned
from harness.gradients import GradStats
from harness.runner import build
from harness.train import evaluate, fit

CPU = torch.device("cpu")


def small(arch: str = "lstm", **train) -> tuple:
    exp = validate({"task": {"name": "mnist1d", "n_train": 512}, "model": {"arch": arch, "hidden_size": 16},
                    "train": {"epochs": 3, "lr": 3e-3, **train}})
    task, model = build(exp)
    return exp, task, model


class Recorder(Callback):
    """Writes down every hook the loop calls, in order."""

    def __init__(self, stop_at: int | None = None):
        self.calls, self.stop_at = [], stop_at

    def on_fit_start(self, start):
        self.calls.append(("start", start.n_params))

    def on_epoch_end(self, epoch, record):
        self.calls.append(("epoch", epoch))
        if epoch == self.stop_at:
            raise Pruned(f"pruned at epoch {epoch}")

    def on_grad_stats(self, step, values):
        self.calls.append(("grad", step))

    def on_fit_end(self, result):
        self.calls.append(("end", result.best_epoch))

    def on_fit_failure(self, error, result):
        self.calls.append(("failure", type(error).__name__, len(result.history)))


def test_fit_records_each_epoch_and_tests_the_chosen_checkpoint():
    exp, task, model = small()
    seen = Recorder()
    result = fit(model, task, exp.train, device=CPU, callbacks=[seen])
    assert seen.calls == [("start", sum(p.numel() for p in model.parameters())), ("epoch", 1), ("epoch", 2), ("epoch", 3),
                          ("end", result.best_epoch)]
    assert len(result.history) == 3
    assert result.steps == 3 * math.ceil(512 / 64) and result.samples_trained == 3 * 512
    for h in result.history:
        assert set(h) == {"train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "epoch_time_s", "train_samples_per_s"}
        assert 0 <= h["train_accuracy"] <= 1 and h["val_loss"] > 0 and h["lr"] == 3e-3
    vals = [h["val_accuracy"] for h in result.history]
    assert result.best_val == max(vals) and result.best_epoch == vals.index(max(vals)) + 1
    # The model left behind is the chosen epoch's: validation gives the chosen value again.
    assert evaluate(model, task, "val", CPU, 1024)[1] == pytest.approx(result.best_val)
    assert (result.test_loss, result.test_metric) == pytest.approx(evaluate(model, task, "test", CPU, 1024))


def test_final_metrics_hold_speed_memory_and_flop_rate():
    exp, task, model = small(epochs=1)
    final = fit(model, task, exp.train, device=CPU).final_metrics()
    assert 0 < final["infer_latency_ms_p50"] <= final["infer_latency_ms_p95"]
    assert final["infer_samples_per_s"] == pytest.approx(64 / (final["infer_latency_ms_p50"] / 1e3))
    assert final["peak_memory_mb"] > 50  # the process holds torch: tens of MiB at the very least
    assert final["train_gflops_per_s"] == pytest.approx(3 * model.flops(task.seq_len) * final["train_samples_per_s"] / 1e9)
    assert 0 < final["peak_fraction"] < 1
    assert final["peak_fraction"] == pytest.approx(final["train_gflops_per_s"] / final["device_peak_gflops"])
    assert final["total_time_s"] > 0 and final["best_epoch"] == 1


def test_probing_every_step_trains_like_the_plain_loop():
    """The probe's step-by-step forward feeds the optimiser: it must be the same arithmetic up
    to float rounding, so tracking cannot change what a run learns."""
    histories = []
    for stats in (False, True):
        exp, task, model = small("gru", epochs=2, clip_norm=1.0)
        gs = GradStats(model, every=1, clip_norm=1.0) if stats else None
        histories.append(fit(model, task, exp.train, device=CPU, grad_stats=gs).history)
        if stats:  # it did probe: every step's record reached the callbacks' side
            assert gs.profile and len(gs.profile) == 2 * 8
    for plain, probed in zip(*histories, strict=True):
        for key in ("train_loss", "val_loss", "val_accuracy"):
            assert probed[key] == pytest.approx(plain[key], rel=1e-3, abs=1e-3)


def test_callbacks_hear_gradient_records_before_their_epoch_and_a_prune_as_a_failure():
    exp, task, model = small(epochs=3)
    first, second = Recorder(stop_at=2), Recorder()
    with pytest.raises(Pruned, match="epoch 2"):
        fit(model, task, exp.train, device=CPU, callbacks=[first, second], grad_stats=GradStats(model, every=4))
    # 8 steps an epoch: records at steps 1, 4, 8 | 12, 16, each epoch's before its end; then the
    # prune raised by the first callback reaches both as a failure with the history so far.
    expected = [("grad", 1), ("grad", 4), ("grad", 8), ("epoch", 1), ("grad", 12), ("grad", 16), ("epoch", 2)]
    assert first.calls[1:] == [*expected, ("failure", "Pruned", 2)]
    assert second.calls[1:] == [*expected[:-1], ("failure", "Pruned", 2)]  # never saw epoch 2's end


def test_clip_norm_is_a_sweepable_train_setting():
    exp = validate({"sweep": {"space": {"train.clip_norm": {"low": 0.1, "high": 10.0, "log": True}}}})
    assert "train.clip_norm" in exp.sweep.space
    assert exp.with_values({"train.clip_norm": 0.5}).train.clip_norm == 0.5
    assert TrainSettings().clip_norm is None  # off unless set
