"""Metrics and losses by name. A metric says whether higher is better: sweeps, early
selection and the report rank by it, and every run logs it (`task_metric_direction`). It also
says its scale: `linear` (accuracy: differences in points) or `log` (MSE, which spans orders of
magnitude: geometric means and ratios), and the smallest difference that matters, the report's
default equivalence margin (points on a linear scale, a ratio on a log one).

Names are forever: they become MLflow keys (`val_<metric>`, `test_<metric>`). A new metric is
one function here under `@register_metric(higher_is_better=...)`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from harness.registry import Registry
from harness.scales import DEFAULT_MARGIN, SCALES

_metrics = Registry("metric", dashes=False)




def register_metric(fn: Callable | None = None, *, higher_is_better: bool, name: str | None = None,
                    scale: str = "linear", margin: float | None = None):
    """Decorator: register `fn(out, y) -> 0-dim tensor` (a batch mean) as a task metric, compared
    on `scale` with equivalence `margin` (default `DEFAULT_MARGIN[scale]`)."""
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, not {scale!r}")
    margin = DEFAULT_MARGIN[scale] if margin is None else float(margin)
    if margin <= (1.0 if scale == "log" else 0.0):
        raise ValueError(f"margin {margin}: a linear margin must be > 0, a log one (a ratio) > 1")
    return _metrics.register(fn, name=name, higher_is_better=bool(higher_is_better), scale=scale, margin=margin)


def metric_fn(name: str) -> Callable:
    return _metrics.get(name)


def higher_is_better(name: str) -> bool:
    return _metrics.meta(name)["higher_is_better"]


def scale(name: str) -> str:
    """`linear` or `log`; a metric registered by none of this process's code is taken as linear."""
    return _metrics.meta(name).get("scale", "linear") if name in _metrics.names() else "linear"


def margin(name: str) -> float:
    """The metric's default equivalence margin (points, or a ratio on the log scale)."""
    return _metrics.meta(name).get("margin", DEFAULT_MARGIN[scale(name)]) if name in _metrics.names() else DEFAULT_MARGIN["linear"]


def list_metrics() -> list[str]:
    return _metrics.names()


@register_metric(higher_is_better=True)
def accuracy(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Share of correct class predictions; per-step outputs count each labelled step
    (targets of -100 are unlabelled, as in `cross_entropy`'s `ignore_index`)."""
    mask = y != -100
    return (out.argmax(-1)[mask] == y[mask]).float().mean()


@register_metric(higher_is_better=True)
def symbol_accuracy(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-step accuracy over the steps whose target is a symbol, not the blank class 0
    (the copy task's reproduced part: predicting blanks right earns nothing)."""
    mask = y > 0
    return (out.argmax(-1)[mask] == y[mask]).float().mean()


@register_metric(higher_is_better=False, scale="log")
def mse(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(out, y)


def skipping_padding(fn: Callable) -> Callable:
    """`fn` (a loss or metric) over the targets that are real: for sequences of different lengths,
    whose per-step targets are NaN (values) after a sequence's end. Class targets of -100 are
    skipped by the losses and metrics themselves."""

    def masked(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if not y.is_floating_point():
            return fn(out, y)
        known = ~torch.isnan(y)
        return fn(out[known], y[known])

    return masked


def cross_entropy(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))


LOSSES: dict[str, Callable] = {"cross_entropy": cross_entropy, "mse": mse}
