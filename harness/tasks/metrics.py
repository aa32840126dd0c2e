"""Metrics and losses by name. A metric says whether higher is better: sweeps, early
selection and the report rank by it, and every run logs it (`task_metric_direction`).

Names are forever: they become MLflow keys (`val_<metric>`, `test_<metric>`). A new metric is
one function here under `@register_metric(higher_is_better=...)`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from harness.registry import Registry

_metrics = Registry("metric", dashes=False)


def register_metric(fn: Callable | None = None, *, higher_is_better: bool, name: str | None = None):
    """Decorator: register `fn(out, y) -> 0-dim tensor` (a batch mean) as a task metric."""
    return _metrics.register(fn, name=name, higher_is_better=bool(higher_is_better))


def metric_fn(name: str) -> Callable:
    return _metrics.get(name)


def higher_is_better(name: str) -> bool:
    return _metrics.meta(name)["higher_is_better"]


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


@register_metric(higher_is_better=False)
def mse(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(out, y)


def cross_entropy(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))


LOSSES: dict[str, Callable] = {"cross_entropy": cross_entropy, "mse": mse}
