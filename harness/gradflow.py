"""Gradient flow through time, measured once per run, at the checkpoint validation chose.

`measure(model, x, y, loss_fn, device)` promises, for a model whose `forward(x,
return_hidden=True)` hands out its states (contract: harness.archs), on the batch (x, y):

- the profile of ‖∂L_i/∂s_t‖ for each direction of the top recurrent layer, s_t its whole state
  (h_t, joined with c_t for an LSTM), and of ‖∂L_i/∂x_t‖, the gradient reaching each input step
  (comparable across cell types; one value when the input is read once: one-to-one,
  one-to-many), each as the median over examples for t = 1 … T;
- per direction and example, the log-rate: the least-squares slope of ln‖∂L_i/∂s_t‖ against
  the distance from the state the direction computes last (T − t forward, t − 1 backward).
  Negative: the gradient vanishes going back through time (−0.1 per step: a factor
  e^−10 ≈ 4.5e−5 over 100 steps); positive: it grows. Steps whose gradient is exactly 0 are left
  out of the fit (NaN for an example with fewer than two left). Its median over examples is
  `gradflow_rate` (`gradflow_rate_bwd`), the interquartile range over examples
  `gradflow_rate_iqr` (`gradflow_rate_bwd_iqr`), over the examples that have a rate (NaN when
  none has). One step (T = 1: one-to-one) has no rate: no metric at all, rather than NaN.

L_i is example i's own loss (`loss_fn` on that example alone). One backward of the batch's summed
loss gives them all: examples do not interact in eval mode, so the gradient of Σ_j L_j reaching
example i's s_t is ∂L_i/∂s_t. The measurement runs in eval mode on a float64 copy of the model
(float32 on MPS, which has no float64): the model is left untouched, and a gradient that
vanishes over hundreds of steps stays representable (float32 ends near 1e-38, and the CPU
flushes subnormals to 0 during training). Models without states (the MLP, plug-ins without
`return_hidden`) give None. `fixed_batch` is the batch `fit` measures on: the first `BATCH`
validation examples, the same for every run of a task. Imports neither MLflow nor Optuna.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from harness.errors import HarnessError

__all__ = ["BATCH", "GradFlow", "fixed_batch", "log_rates", "measure", "takes_hidden"]

BATCH = 256  # validation examples measured
DIRECTIONS = ("forward", "backward")
METRICS = {"forward": "gradflow_rate", "backward": "gradflow_rate_bwd"}  # MLflow keys (+ "_iqr")


@dataclass
class GradFlow:
    """One model's gradient flow on one batch (see the module doc)."""

    state: dict[str, list[float]]  # direction → median over examples of ‖∂L/∂s_t‖, t = 1 … T
    inputs: list[float]  # median over examples of ‖∂L/∂x_t‖ per input step; [] when x takes no gradient
    rates: dict[str, list[float]]  # direction → each example's log-rate; {} when T = 1

    @property
    def steps(self) -> int:
        return len(next(iter(self.state.values())))

    def metrics(self) -> dict[str, float]:
        """`gradflow_rate[_bwd]`: median log-rate over examples; `…_iqr`: their interquartile
        range. NaN when no example has a rate (its gradient is 0 at all steps but one)."""
        out = {}
        for direction, rates in self.rates.items():
            r = np.asarray(rates, dtype=float)
            r = r[~np.isnan(r)]
            q25, q50, q75 = np.percentile(r, [25, 50, 75]) if len(r) else (np.nan,) * 3
            out[METRICS[direction]] = float(q50)
            out[METRICS[direction] + "_iqr"] = float(q75 - q25)
        return out

    def rows(self) -> list[tuple[str, str, list[float]]]:
        """(direction, quantity, profile): each direction's state, then the input (direction `all`:
        x_t feeds every direction)."""
        rows = [(d, "state", p) for d, p in self.state.items()]
        return rows + ([("all", "input", self.inputs)] if self.inputs else [])


def takes_hidden(model: nn.Module) -> bool:
    """Whether `model(x, return_hidden=True)` is part of the model's forward (see harness.archs)."""
    try:
        return "return_hidden" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def fixed_batch(task) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `BATCH` validation examples of a task (all of them when fewer). Sequences of
    different lengths: the first `BATCH` of the most common length, cut to it, so that every
    profile has one step t per position and no padding."""
    lengths = task.lengths("val")
    if lengths is None:
        return task.x_val[:BATCH], task.y_val[:BATCH]
    common = int(torch.mode(lengths).values)
    pick = torch.nonzero(lengths == common).flatten()[:BATCH]
    y = task.y_val[pick]
    return task.x_val[pick, :common], (y[:, :common] if task.per_step else y)


def log_rates(norms: np.ndarray, reverse: bool = False) -> np.ndarray:
    """Each row's least-squares slope of ln(norm) against the distance from the last state
    (columns are t = 1 … T; `reverse`: the backward direction, whose last state is t = 1).
    Zero (or non-finite) norms are left out; NaN where fewer than two remain."""
    norms = np.asarray(norms, dtype=float)
    k = np.arange(norms.shape[1], dtype=float)
    k = k if reverse else k[::-1]
    ok = np.isfinite(norms) & (norms > 0)
    logs = np.log(np.where(ok, norms, 1.0))
    w = ok.astype(float)
    n = w.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        dk = k - (w * k).sum(1, keepdims=True) / n[:, None]
        dy = logs - (w * logs).sum(1, keepdims=True) / n[:, None]
        slope = (w * dk * dy).sum(1) / (w * dk**2).sum(1)
    return np.where(n >= 2, slope, np.nan)


def _parts(state) -> tuple[torch.Tensor, ...]:
    return tuple(state) if isinstance(state, (tuple, list)) else (state,)


def _norms(grads: list[torch.Tensor | None], like: list[torch.Tensor]) -> torch.Tensor:
    """(B,) norms of one state's gradient, its parts joined (a part the loss never read: 0)."""
    flat = [(g if g is not None else torch.zeros_like(t)).flatten(1) for g, t in zip(grads, like, strict=True)]
    return torch.cat(flat, 1).norm(dim=1)


def measure(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: Callable, device: torch.device) -> GradFlow | None:
    """Gradient flow of `model` on (x, y) (see the module doc); None for a model without states."""
    if not takes_hidden(model):
        return None
    dtype = torch.float32 if device.type == "mps" else torch.float64
    probe = copy.deepcopy(model).to(device=device, dtype=dtype).eval()
    x, y = x.to(device), y.to(device)
    x = x.to(dtype).requires_grad_() if x.is_floating_point() else x
    y = y.to(dtype) if y.is_floating_point() else y
    with torch.enable_grad():
        out, states = probe(x, return_hidden=True)
        if not states or not states[0]:
            return None
        states = [[_parts(s) for s in seq] for seq in states]
        loss = sum(loss_fn(out[i : i + 1], y[i : i + 1]) for i in range(len(y)))
        tensors = [t for seq in states for s in seq for t in s]
        if not all(isinstance(t, torch.Tensor) and t.requires_grad for t in tensors):
            raise HarnessError(f"model.arch: {type(model).__name__}(x, return_hidden=True) returned states that are "
                               "not tensors on the autograd path (see harness.archs)")
        wrt = ([x] if x.requires_grad else []) + tensors
        grads = list(torch.autograd.grad(loss, wrt, allow_unused=True))
    gx = grads.pop(0) if x.requires_grad else None
    state, rates, i = {}, {}, 0
    for direction, seq in zip(DIRECTIONS, states, strict=False):
        per_step = []
        for s in seq:
            per_step.append(_norms(grads[i : i + len(s)], list(s)))
            i += len(s)
        norms = torch.stack(per_step, 1).detach().cpu().double().numpy()  # (B, T)
        state[direction] = np.median(norms, 0).tolist()
        if norms.shape[1] > 1:
            rates[direction] = log_rates(norms, reverse=direction == "backward").tolist()
    inputs = []
    if gx is not None:
        g = gx.detach() if gx.dim() == 3 else gx.detach().flatten(1).unsqueeze(1)  # a single input: one step
        inputs = np.median(g.norm(dim=2).cpu().double().numpy(), 0).tolist()
    return GradFlow(state=state, inputs=inputs, rates=rates)
