"""The one training loop: epochs, the chosen checkpoint, final speed figures, and that the
gradient probe leaves training's arithmetic alone."""

from __future__ import annotations

import math

import pytest
import torch

from harness.config import TrainSettings, validate
from harness.gradients import GradStats
from harness.train import build, evaluate, fit

CPU = torch.device("cpu")


def small(arch: str = "lstm", **train) -> tuple:
    exp = validate({"task": {"name": "mnist1d", "n_train": 512}, "model": {"arch": arch, "hidden_size": 16},
                    "train": {"epochs": 3, "lr": 3e-3, **train}})
    task, model = build(exp)
    return exp, task, model


def test_fit_records_each_epoch_and_tests_the_chosen_checkpoint():
    exp, task, model = small()
    seen = []
    result = fit(model, task, exp.train, device=CPU, on_epoch=lambda e, r: seen.append(e))
    assert seen == [1, 2, 3] and len(result.history) == 3
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
    for plain, probed in zip(*histories, strict=True):
        for key in ("train_loss", "val_loss", "val_accuracy"):
            assert probed[key] == pytest.approx(plain[key], rel=1e-3, abs=1e-3)


def test_clip_norm_is_a_sweepable_train_setting():
    exp = validate({"sweep": {"space": {"train.clip_norm": {"low": 0.1, "high": 10.0, "log": True}}}})
    assert "train.clip_norm" in exp.sweep.space
    assert exp.with_values({"train.clip_norm": 0.5}).train.clip_norm == 0.5
    assert TrainSettings().clip_norm is None  # off unless set
