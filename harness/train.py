"""The one training loop, shared by every task and architecture.

`fit` trains a model on a task's tensors, evaluates validation every epoch, stops early after
`train.patience` epochs without improvement (`train.epochs` is the cap), restores the epoch the
validation metric chose, measures its gradient flow through time on a fixed validation batch
(harness.gradflow, in fp32), then the test split once, the model's inference latency and the run's
memory; then, after the run, its training throughput over epochs, a benchmark of one training
step and the device's matmul peak, in one window (`harness.speed`), and names the kernel each
recurrent layer runs on (`harness.kernels`). Each epoch times its training steps and the
process's CPU time over them; the steps that record gradient statistics are timed apart and left
out of the epoch's throughput. It imports neither Optuna nor MLflow: whoever watches a
run passes `Callback`s (harness.callbacks), which may raise `Pruned` to stop it, and optionally
a `GradStats` (harness.gradients) that records gradient statistics on its steps; every step,
recorded or not, runs the same plain forward. A non-finite loss or gradient raises `Diverged`
(see `FiniteCheck`; under fp16 a step whose scaled gradients overflowed is skipped by the scaler
instead). `train.precision` runs every forward, training and evaluation, under its autocast
(harness.precision); losses and metrics are computed in fp32 from the model's outputs.
"""

from __future__ import annotations

import copy
import math
import sys
import time
from collections.abc import Sequence
from contextlib import contextmanager

import torch
from torch import nn

from harness import gradflow as flow
from harness import speed
from harness.archs import count_params, model_flops
from harness.callbacks import Callback, FitStart, TrialResult, budget_window
from harness.config import TrainSettings
from harness.errors import Diverged
from harness.gradients import FiniteCheck, GradStats, clip_, grad_norm
from harness.kernels import kernel_path
from harness.precision import DTYPES, autocast, grad_scaler
from harness.tasks import Task

__all__ = ["Diverged", "TrialResult", "evaluate", "fit", "flush_denormals", "make_optimizer"]


def flush_denormals() -> None:
    """Treat subnormal floats as zero on the CPU. Vanishing gradients through time end up as
    subnormals, which x86 cores process ~100x slower: without this a long many-to-one RNN
    trains 2-3x slower and the speed comparison favours whichever model vanishes least. Set
    before torch starts its threads (a later call only covers the calling thread)."""
    import numpy as np

    # NumPy (2.3) measures its float limits on first use and warns when subnormals read as zero:
    # measured here first, before flushing, they are the true ones and nothing warns.
    np.finfo(np.float32), np.finfo(np.float64)
    torch.set_flush_denormal(True)


def make_optimizer(params, cfg: TrainSettings) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def evaluate(model: nn.Module, task: Task, which: str, device: torch.device, batch_size: int,
             precision: str = "fp32") -> tuple[float, float]:
    """Mean loss and metric of a split, in eval mode."""
    loss, metric, _ = _evaluate(model, task, which, device, batch_size, precision, each=False)
    return loss, metric


@torch.no_grad()
def _evaluate(model: nn.Module, task: Task, which: str, device: torch.device, batch_size: int, precision: str,
              each: bool) -> tuple[float, float, list[float]]:
    """Mean loss and metric of a split in one pass and, with `each`, the metric of every example on
    its own: what a bootstrap over test examples resamples (every built-in task weighs its examples
    equally, so their mean is the metric)."""
    model.eval()
    x, y = task.split(which)
    lengths = task.lengths(which)
    loss = metric = total = 0.0
    values = []
    for i in range(0, len(x), batch_size):
        xb, yb = x[i : i + batch_size].to(device), y[i : i + batch_size].to(device)
        lb = None if lengths is None else lengths[i : i + batch_size]
        xb, yb = cut(task, xb, yb, lb)
        with autocast(device, precision):
            out = call(model, xb, None if lb is None else lb.to(device))
        out, n = out.float(), float(weight(task, yb))
        loss += task.loss_fn(out, yb).item() * n
        metric += task.metric_fn(out, yb).item() * n
        total += n
        if each:
            values += [task.metric_fn(out[j : j + 1], yb[j : j + 1]) for j in range(len(xb))]
    return loss / total, metric / total, torch.stack(values).float().cpu().tolist() if values else []


def call(model: nn.Module, x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """The model's output for a batch, its sequences' `lengths` given when they differ."""
    return model(x) if lengths is None else model(x, lengths=lengths)


def cut(task: Task, x: torch.Tensor, y: torch.Tensor, lengths: torch.Tensor | None, steps: int | None = None):
    """A batch of padded sequences cut to its longest, `steps` (when the caller knows it without
    reading the device), a per-step target with it."""
    if lengths is None:
        return x, y
    steps = int(lengths.max()) if steps is None else steps
    return x[:, :steps], (y[:, :steps] if task.per_step else y)


def weight(task: Task, y: torch.Tensor) -> torch.Tensor | int:
    """What a batch's mean loss or metric stands for: its examples, or, for per-step targets of
    sequences of different lengths, its real (labelled) steps, so a split's figure is the mean
    over its steps whatever the batch size."""
    if not task.variable_length or not task.per_step:
        return len(y)
    return (~torch.isnan(y)).sum() if y.is_floating_point() else (y != -100).sum()


def buckets(lengths: torch.Tensor, batch_size: int, gen: torch.Generator, pool: int = 50) -> list[torch.Tensor]:
    """An epoch's batches of sequences of similar length: shuffled, sorted by length within pools
    of `pool` batches, cut into batches, the batches shuffled (so little of each is padding)."""
    order = torch.randperm(len(lengths), generator=gen)
    batches = []
    for i in range(0, len(order), pool * batch_size):
        chunk = order[i : i + pool * batch_size]
        chunk = chunk[torch.argsort(lengths[chunk], stable=True)]
        batches += [chunk[j : j + batch_size] for j in range(0, len(chunk), batch_size)]
    return [batches[k] for k in torch.randperm(len(batches), generator=gen).tolist()]


def fit(
    model: nn.Module,
    task: Task,
    cfg: TrainSettings,
    *,
    device: torch.device,
    callbacks: Sequence[Callback] = (),
    grad_stats: GradStats | None = None,
    gradflow: bool = True,
    facts: dict | None = None,
) -> TrialResult:
    """Train, select the best validation epoch, test once; tell `callbacks` as it goes (see
    harness.callbacks; `facts` reach them in `FitStart`). Raises `Diverged` on NaN/inf, and whatever a callback raised, after
    every callback's `on_fit_failure`. `grad_stats` records on its steps without changing them;
    `gradflow`: measure the chosen checkpoint's gradient flow into `result.gradflow`.
    """
    start = time.perf_counter()
    model.to(device)
    speed.reset_peak_memory(device)
    result = TrialResult(
        metric=task.metric, maximize=task.maximize,
        n_params=count_params(model), flops_per_sample=model_flops(model, task.seq_len),
        kernel=kernel_path(model, cfg.precision),
    )
    begin = FitStart(model, task, device, grad_stats, result.n_params, result.flops_per_sample, result.kernel,
                     facts=facts or {})
    try:
        with _timed(result, "start"):
            for cb in callbacks:
                cb.on_fit_start(begin)
        _train(model, task, cfg, device, callbacks, grad_stats, result, gradflow)
        result.total_time_s = time.perf_counter() - start
        figures, result.contended = speed.epoch_speed(result.history)
        # After the run, outside its total time: the step benchmark, then the device's matmul
        # peak that peak_fraction divides by (measured once per worker while uncontended).
        batch = slice(0, cfg.batch_size)
        with _timed(result, "bench"):
            lb = None if task.len_train is None else task.len_train[batch]
            xb, yb = cut(task, task.x_train[batch], task.y_train[batch], lb)
            figures["bench_step_ms"] = speed.step_ms(model, task.loss_fn, xb, yb, device, precision=cfg.precision, lengths=lb)
        t0 = time.perf_counter()
        # peak_cpu_share under 1 on a CPU: the peak shared its cores, so it reads low and peak_fraction high
        peak, figures["peak_cpu_share"], _ = speed.matmul_peak(device, DTYPES[cfg.precision])
        result.timings["peak"] = time.perf_counter() - t0
        result.speed |= figures | speed.training_speed(result.flops_per_sample, figures["train_samples_per_s"], peak)
    except BaseException as e:
        try:  # what was recorded up to the failure still reaches the callbacks
            _grad_records(grad_stats, callbacks)
        finally:
            for cb in callbacks:
                try:  # the run's own failure is the one to raise
                    cb.on_fit_failure(e, result)
                except Exception as cb_error:  # one line: the run's own error follows with its context
                    text = " ".join(str(cb_error).split())[:300] or type(cb_error).__name__
                    print(f"harness: {type(cb).__name__} could not record the run's end ({text})", file=sys.stderr)
        raise
    for cb in callbacks:
        cb.on_fit_end(result)
    return result


@contextmanager
def _timed(result: TrialResult, phase: str):
    """Add the block's wall time to `result.timings[phase]`."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        result.timings[phase] = result.timings.get(phase, 0.0) + time.perf_counter() - t0


def still_improving(curve: list[float], best_epoch: int, window: int, maximize: bool) -> bool:
    """Whether a run the epoch cap stopped was still improving: its best epoch among the last
    `window`, or its validation curve better at its end than `window` epochs before (a plateau
    that began to climb again)."""
    tail = curve[-window - 1:]
    climbing = len(tail) > 1 and (tail[-1] > tail[0] if maximize else tail[-1] < tail[0])
    return best_epoch > len(curve) - window or climbing


def _grad_records(grad_stats: GradStats | None, callbacks: Sequence[Callback]) -> None:
    for step, values in grad_stats.drain() if grad_stats is not None else ():
        for cb in callbacks:
            cb.on_grad_stats(step, values)


def _train(model: nn.Module, task: Task, cfg: TrainSettings, device: torch.device, callbacks: Sequence[Callback],
           grad_stats: GradStats | None, result: TrialResult, gradflow: bool) -> None:
    x_train, y_train = task.x_train.to(device), task.y_train.to(device)
    lengths = None if task.len_train is None else task.len_train.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(params, cfg)
    check = FiniteCheck(device)
    scaler = grad_scaler(device, cfg.precision)
    gen = torch.Generator().manual_seed(cfg.seed)
    best_state = None
    n, m, step = len(x_train), task.metric, 0
    # Epochs at the end that count as "still improving" when the cap stops a run.
    window = budget_window(cfg.epochs, cfg.patience)
    clipped = torch.zeros((), device=device)  # steps whose norm exceeded clip_norm (on the device: no sync)
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        t0, cpu0 = time.perf_counter(), time.process_time()
        stats_time = stats_samples = 0  # the steps that recorded gradient statistics
        if lengths is None:
            order = torch.randperm(n, generator=gen).to(device)
            batches = [order[i : i + cfg.batch_size] for i in range(0, n, cfg.batch_size)]
        else:
            batches = buckets(task.len_train, cfg.batch_size, gen)  # on the CPU: each batch's longest without a sync
        total_loss = total_metric = torch.zeros((), device=device)
        for idx in batches:
            step += 1
            steps = None if lengths is None else int(task.len_train[idx].max())
            idx = idx.to(device)
            timed = grad_stats is not None and grad_stats.due(step)
            if timed:  # what queued before it belongs to the plain steps
                speed.sync(device)
                ts = time.perf_counter()
            lb = None if lengths is None else lengths[idx]
            xb, yb = cut(task, x_train[idx], y_train[idx], lb, steps)
            with autocast(device, cfg.precision):
                out = call(model, xb, lb)
            out = out.float()
            loss = task.loss_fn(out, yb)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(opt)  # no-op unless fp16: the norm, clip and statistics see true gradients
            norm = grad_norm(params)
            if grad_stats is not None:
                grad_stats.observe(norm)
            # fp16: an overflowed gradient is the scaler's to skip, only a non-finite loss diverged
            failure = check.update(epoch, step, loss, norm.new_zeros(()) if scaler.is_enabled() else norm)
            if grad_stats is not None and (grad_stats.due(step) or (failure is not None and failure.step == step)):
                grad_stats.record(step, norm)
            if failure is not None:
                raise failure
            if cfg.clip_norm is not None:
                clip_(params, cfg.clip_norm, norm)
                clipped = clipped + (norm > cfg.clip_norm)
            scaler.step(opt)  # opt.step() unless fp16
            scaler.update()
            # Accumulate on device: no host sync per step.
            total_loss = total_loss + loss.detach() * len(idx)
            total_metric = total_metric + task.metric_fn(out.detach(), yb) * len(idx)
            if timed:
                speed.sync(device)
                stats_time, stats_samples = stats_time + time.perf_counter() - ts, stats_samples + len(idx)
        failure = check.flush()
        if failure is not None:
            raise failure
        train_loss = total_loss.item() / n
        train_time = time.perf_counter() - t0
        # torch's intra-op threads count in the process's CPU time: a share under 1 is time
        # the epoch waited for a core (or threads that had nothing to do)
        cpu_share = (time.process_time() - cpu0) / (train_time * torch.get_num_threads())
        if stats_samples == n:  # every step recorded statistics: there is nothing else to time
            stats_time = stats_samples = 0
        result.steps, result.samples_trained, result.train_time_s = step, result.samples_trained + n, result.train_time_s + train_time
        with _timed(result, "validate"):
            val_loss, val_metric = evaluate(model, task, "val", device, cfg.eval_batch_size, cfg.precision)
        record = {
            "train_loss": train_loss, f"train_{m}": total_metric.item() / n,
            "val_loss": val_loss, f"val_{m}": val_metric,
            "lr": opt.param_groups[0]["lr"],
            "epoch_time_s": time.perf_counter() - t0,
            "epoch_samples_per_s": (n - stats_samples) / (train_time - stats_time),
            "cpu_share": cpu_share,
        }
        result.history.append(record)
        better = val_metric > result.best_val if task.maximize else val_metric < result.best_val
        if best_state is None or better:
            result.best_val, result.best_epoch = val_metric, epoch
            with _timed(result, "validate"):
                best_state = copy.deepcopy(model.state_dict())
        result.epochs_run = epoch
        with _timed(result, "epoch_callbacks"):
            _grad_records(grad_stats, callbacks)
            for cb in callbacks:
                cb.on_epoch_end(epoch, record)
        if cfg.patience is not None and epoch - result.best_epoch >= cfg.patience:
            result.stopped_early = True
            break
    result.clip_share = clipped.item() / step if cfg.clip_norm is not None and step else math.nan
    result.budget_limited = not result.stopped_early and still_improving(
        [r[f"val_{m}"] for r in result.history], result.best_epoch, window, task.maximize)
    model.load_state_dict(best_state)
    if gradflow:  # on the chosen weights, before the test split is looked at
        with _timed(result, "gradflow"):
            result.gradflow = flow.measure(model, *flow.fixed_batch(task), task.loss_fn, device)
    with _timed(result, "test"):
        result.test_loss, result.test_metric, result.test_per_example = _evaluate(
            model, task, "test", device, cfg.eval_batch_size, cfg.precision, each=True)
    with _timed(result, "latency"):
        lb = None if task.len_test is None else task.len_test[: cfg.batch_size]
        xb, _ = cut(task, task.x_test[: cfg.batch_size], task.y_test[: cfg.batch_size], lb)
        result.speed = speed.inference_latency(model, xb, device, precision=cfg.precision, lengths=lb)
    result.speed["peak_memory_mb"] = speed.peak_memory_mb(device)
