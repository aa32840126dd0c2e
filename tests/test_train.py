"""The one training loop: epochs, the chosen checkpoint and its gradient flow, final speed
figures, and that gradient statistics leave training's arithmetic alone, bit for bit."""

from __future__ import annotations

import copy
import math
import statistics
import time

import optuna
import pytest
import torch

from harness.archs import create_model
from harness.callbacks import Callback
from harness.config import TrainSettings, validate
from harness.errors import HarnessError, Pruned
from harness.gradflow import fixed_batch, measure
from harness.gradients import GradStats
from harness.kernels import kernel_path
from harness.precision import check_precision, native_bf16_cpu
from harness.runner import build
from harness.sweep.space import suggest
from harness.tasks import load_task
from harness.train import evaluate, fit
from tests.fakes import Records

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
        assert set(h) == {"train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "epoch_time_s",
                          "epoch_samples_per_s", "cpu_share"}
        assert h["lr"] == 3e-3
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]  # it trained
    vals = [h["val_accuracy"] for h in result.history]
    assert result.best_val == max(vals) and result.best_epoch == vals.index(max(vals)) + 1
    # The model left behind is the chosen epoch's: validation gives that epoch's loss and metric again.
    chosen = result.history[result.best_epoch - 1]
    assert evaluate(model, task, "val", CPU, 1024) == pytest.approx((chosen["val_loss"], chosen["val_accuracy"]))
    assert (result.test_loss, result.test_metric) == pytest.approx(evaluate(model, task, "test", CPU, 1024))
    # Gradient flow is the chosen checkpoint's, on the first 256 validation examples.
    assert result.gradflow.state == measure(model, *fixed_batch(task), task.loss_fn, CPU).state
    assert result.gradflow.steps == 40 and result.final_metrics()["gradflow_rate"] == result.gradflow.metrics()["gradflow_rate"]


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


def test_training_speed_is_the_median_of_the_uncontended_epochs_after_the_first():
    exp, task, model = small("gru", epochs=5)
    result = fit(model, task, exp.train, device=CPU, gradflow=False)
    final = result.final_metrics()
    later = result.history[1:]
    assert all(h["cpu_share"] > 0 and h["epoch_samples_per_s"] > 0 for h in result.history)
    calm = [h["epoch_samples_per_s"] for h in later if h["cpu_share"] >= 0.8]
    rates = calm or [h["epoch_samples_per_s"] for h in later]  # all contended: over all of them
    assert result.contended == (not calm)
    assert final["train_samples_per_s"] == statistics.median(rates)
    assert (final["train_samples_per_s_min"], final["train_samples_per_s_max"]) == (min(rates), max(rates))
    assert final["train_samples_per_s_min"] <= final["train_samples_per_s"] <= final["train_samples_per_s_max"]
    assert final["peak_fraction"] == pytest.approx(
        3 * model.flops(task.seq_len) * final["train_samples_per_s"] / 1e9 / final["device_peak_gflops"])
    # A run of one epoch: that epoch is the figure.
    exp, task, model = small("gru", epochs=1)
    one = fit(model, task, exp.train, device=CPU, gradflow=False)
    assert one.final_metrics()["train_samples_per_s"] == one.history[0]["epoch_samples_per_s"]


def test_the_step_benchmark_times_one_training_batch_forward_and_backward():
    exp, task, model = small("lstm", epochs=1)
    bench = fit(model, task, exp.train, device=CPU, gradflow=False).final_metrics()["bench_step_ms"]
    x, y = task.x_train[:64], task.y_train[:64]
    model.train()
    times = []
    for _ in range(25):  # the same step, timed directly
        t0 = time.perf_counter()
        model.zero_grad(set_to_none=True)
        task.loss_fn(model(x), y).backward()
        times.append(time.perf_counter() - t0)
    direct = statistics.median(times[5:]) * 1e3
    assert direct / 3 < bench < direct * 3, (bench, direct)


def test_the_matmul_peak_is_measured_once_per_worker_unless_the_cores_were_shared(monkeypatch):
    from harness import speed

    monkeypatch.setattr(speed, "_PEAKS", {})
    first, share, measured = speed.matmul_peak(CPU)
    assert measured and first > 0
    if share >= speed.CONTENDED_BELOW:  # kept: the next run of this worker reuses it
        assert speed.matmul_peak(CPU) == (first, share, False)
    calls = []

    def shared_cores(device, dtype):  # a measurement that waited instead of computing
        calls.append(dtype)
        time.sleep(0.05)
        return 1.0

    monkeypatch.setattr(speed, "device_peak_gflops", shared_cores)
    assert speed.matmul_peak(CPU, torch.bfloat16)[2] and speed.matmul_peak(CPU, torch.bfloat16)[2]
    assert calls == [torch.bfloat16] * 2  # contended: not kept, measured again
    assert speed.matmul_peak(CPU, torch.bfloat16)[1] < speed.CONTENDED_BELOW


NO_ONEDNN = pytest.mark.skipif(not torch.backends.mkldnn.is_available(),
                               reason="this torch build has no oneDNN (mkldnn): its LSTM runs the per-step path")


@pytest.mark.parametrize(("arch", "kernel"), [
    pytest.param("lstm", "onednn", marks=NO_ONEDNN), pytest.param("seed-lstm", "onednn", marks=NO_ONEDNN),
    ("gru", "harness"), ("rnn", "harness"), ("rnn-sigmoid", "harness"), ("mlp", "none")])
def test_the_kernel_is_read_from_the_ops_torch_runs(arch, kernel):
    model = create_model(arch, input_size=1, output_size=10, io="many-to-one", seq_len=40, hidden_size=16)
    assert kernel_path(model) == kernel
    if arch in ("gru", "rnn"):  # kernel = "torch": torch's own per-step path on the CPU
        torch_kernel = create_model(arch, input_size=1, output_size=10, io="many-to-one", seq_len=40, hidden_size=16,
                                    kernel="torch")
        assert kernel_path(torch_kernel) == kernel_path(torch_kernel, "bf16") == "aten"
    if arch in ("lstm", "seed-lstm"):  # under bf16 autocast the same fused kernel runs
        assert kernel_path(model, "bf16") == "onednn"
    if arch == "lstm":  # torch's oneDNN RNN takes float32 and float16/bfloat16, not float64
        assert kernel_path(model.double()) == "aten"
        torch.backends.mkldnn.enabled = False  # (its `flags` context also sets TF32 and warns about it)
        try:
            assert kernel_path(model.float()) == "aten"
        finally:
            torch.backends.mkldnn.enabled = True


@NO_ONEDNN
def test_layers_on_different_kernels_are_joined_and_a_run_reports_its_own():
    assert kernel_path(torch.nn.ModuleList([torch.nn.LSTM(2, 4), torch.nn.GRU(4, 4), torch.nn.LSTM(4, 4)])) == "onednn+aten"
    exp, task, model = small("gru", epochs=1)
    assert fit(model, task, exp.train, device=CPU, gradflow=False).kernel == "harness"


@pytest.mark.parametrize("arch", ["lstm", "brnn"])
def test_gradient_statistics_leave_the_weights_bit_identical(arch):
    """An observer must not change what it observes: statistics on every step (clipping on) or
    off, the same seed ends with the same weights to the bit, on every epoch's way there too.
    LSTM at lr 1e-2 is where a probe forward used to change a run's outcome (0.63 against 0.95)."""
    runs = []
    for stats in (False, True):
        exp, task, model = small(arch, epochs=2, lr=1e-2, clip_norm=1.0)
        seen = Recorder()
        gs = GradStats(model, every=1, clip_norm=1.0) if stats else None
        result = fit(model, task, exp.train, device=CPU, callbacks=[seen], grad_stats=gs, gradflow=stats)
        runs.append((result, model))
        assert sum(c[0] == "grad" for c in seen.calls) == (2 * 8 if stats else 0)  # it did record, every step
    (plain, plain_model), (watched, watched_model) = runs
    for (name, a), b in zip(plain_model.named_parameters(), watched_model.parameters(), strict=True):
        assert torch.equal(a, b), name
    assert [h["train_loss"] for h in plain.history] == [h["train_loss"] for h in watched.history]
    assert (plain.test_loss, plain.best_epoch) == (watched.test_loss, watched.best_epoch)
    assert plain.gradflow is None and watched.gradflow is not None  # measured after training, outside it


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


def test_clipping_bounds_the_applied_gradient_and_leaves_smaller_ones_untouched():
    """One full-batch step of plain SGD at lr 1 moves the weights by exactly the gradient the
    optimiser received, so the step shows whether, and how much, the loop clipped it."""
    task = load_task("adding", seq_len=10, train_size=100, test_size=10)  # 90 training sequences
    torch.manual_seed(0)
    start = create_model("gru", input_size=2, output_size=1, io="many-to-one", seq_len=10, hidden_size=8)
    reference = copy.deepcopy(start)
    task.loss_fn(reference(task.x_train), task.y_train).backward()
    grads = [p.grad for p in reference.parameters()]
    norm = torch.cat([g.flatten() for g in grads]).norm().item()
    assert norm > 0
    for clip_norm in (norm / 4, 4 * norm):
        model = copy.deepcopy(start)
        cfg = TrainSettings(epochs=1, batch_size=len(task.x_train), optimizer="sgd", lr=1.0, clip_norm=clip_norm)
        seen = Records()
        fit(model, task, cfg, device=CPU, callbacks=[seen], grad_stats=GradStats(model, every=1, clip_norm=clip_norm))
        applied = [(a - b).detach() for a, b in zip(start.parameters(), model.parameters(), strict=True)]
        applied_norm = torch.cat([a.flatten() for a in applied]).norm().item()
        scale = 0.25 if clip_norm == norm / 4 else 1.0  # clipped to a quarter, or left alone
        assert applied_norm == pytest.approx(scale * norm, rel=1e-4)
        for a, g in zip(applied, grads, strict=True):  # the gradient's direction, only its length changed
            torch.testing.assert_close(a, scale * g, rtol=1e-3, atol=1e-6)
        # What the gradient statistics record is what the optimiser got.
        [(step, record)] = seen.records
        assert step == 1
        assert record["grad_norm"] == pytest.approx(norm, rel=1e-4)
        assert record["grad_norm_clipped"] == pytest.approx(applied_norm, rel=1e-4)
        assert record["clip_fraction"] == (1.0 if scale < 1 else 0.0)


def test_clip_norm_is_sampled_by_a_sweep_into_the_trial_settings():
    exp = validate({"sweep": {"space": {"train.clip_norm": {"low": 0.1, "high": 10.0, "log": True}}}})
    assert TrainSettings().clip_norm is None  # off unless set
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    sampled = []
    for _ in range(8):
        values = suggest(study.ask(), exp)
        assert set(values) == {"train.clip_norm"}
        clip_norm = exp.with_values(values).train.clip_norm
        assert clip_norm == values["train.clip_norm"] and 0.1 <= clip_norm <= 10.0
        sampled.append(clip_norm)
    assert len(set(sampled)) == 8 and min(sampled) < 1 < max(sampled)  # a log range: both decades
    for bad in (0, -1.0):
        with pytest.raises(HarnessError, match=r"train\.clip_norm"):
            exp.with_values({"train.clip_norm": bad})


# --- precision ---------------------------------------------------------------------------------

NATIVE_BF16 = pytest.mark.skipif(not native_bf16_cpu(), reason="this CPU has no native bf16 (AVX-512 BF16 or AMX)")


@NATIVE_BF16
@pytest.mark.parametrize(("arch", "kernel"), [("lstm", "onednn"), ("gru", "harness")])
def test_bf16_trains_under_autocast_and_keeps_fp32_weights_losses_and_statistics(arch, kernel):
    exp, task, model = small(arch, epochs=3, precision="bf16")
    stats = GradStats(model, every=1)
    forward_dtypes = []
    model.rnn.register_forward_hook(lambda m, i, out: forward_dtypes.append(out[0].dtype))
    result = fit(model, task, exp.train, device=CPU, grad_stats=stats, gradflow=True)
    assert result.kernel == kernel
    assert set(forward_dtypes) == {torch.bfloat16}  # every forward: training, evaluation, benchmarks
    assert all(p.dtype == torch.float32 for p in model.parameters())
    losses = [h["train_loss"] for h in result.history]
    assert losses[-1] < losses[0] and all(math.isfinite(v) for h in result.history for v in h.values())
    assert math.isfinite(result.test_loss) and 0 < result.test_metric <= 1
    assert math.isfinite(result.gradflow.metrics()["gradflow_rate"])  # measured in fp32, off the autocast
    # The run's own evaluation is the bf16 model's, read in fp32: evaluate() gives it again.
    assert (result.test_loss, result.test_metric) == pytest.approx(evaluate(model, task, "test", CPU, 1024, "bf16"))


def test_a_precision_the_device_cannot_run_natively_is_refused(monkeypatch):
    with pytest.raises(HarnessError, match=r"^train\.precision: fp16 runs on CUDA GPUs only \(this run is on cpu\)"):
        check_precision("fp16", CPU)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)  # a CPU without it
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    with pytest.raises(HarnessError, match=r"^train\.precision: bf16 asked for, but this CPU has no native bf16"):
        check_precision("bf16", CPU)
    check_precision("fp32", CPU)


def test_bucketed_batches_hold_every_sequence_once_and_similar_lengths_together():
    from harness.train import buckets

    lengths = torch.randint(1, 200, (1000,), generator=torch.Generator().manual_seed(0))
    batches = buckets(lengths, 10, torch.Generator().manual_seed(1), pool=5)
    assert sorted(torch.cat(batches).tolist()) == list(range(1000))  # an epoch: each sequence once
    spread = statistics.median(float(lengths[b].max() - lengths[b].min()) for b in batches)
    shuffled = statistics.median(float(lengths[i : i + 10].max() - lengths[i : i + 10].min()) for i in range(0, 1000, 10))
    assert spread < shuffled / 4  # within a pool of 5 batches, sorted: little padding per batch
    again = buckets(lengths, 10, torch.Generator().manual_seed(1), pool=5)
    assert all(torch.equal(a, b) for a, b in zip(batches, again, strict=True))  # the seed fixes the epoch
