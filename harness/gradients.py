"""Gradient statistics during training: global and per-layer norms, clipping, non-finite checks.

Every optimiser step the loop takes `grad_norm` (the clip needs it anyway) and hands it to a
`FiniteCheck`, which stops training with `Diverged` at the first non-finite loss or gradient.
A `GradStats` given to the loop records, on the first step and every `every`-th step after:
`grad_norm` (global L2 norm before clipping), `grad_norm_clipped` (after), `clip_fraction`
(share of the optimiser steps since the previous record whose norm exceeded `clip_norm`),
`grad_nonfinite` (count of NaN/inf gradient entries), `grad_norm/<group>` per layer
(`rnn.layer0`, `head`, …: one group per module, per layer for recurrent modules).

It only reads the gradients the step's plain forward and backward produced: the loop's
arithmetic is the same with statistics on or off, so are the weights (bit for bit on the CPU).
How gradients flow through time is measured once, after training: harness.gradflow.
Recorded values stay on the device until `drain()` (at epoch ends), so recording never makes
the host wait for the device.
"""

from __future__ import annotations

import math
import re

import torch
from torch import nn

from harness.errors import Diverged

__all__ = ["Diverged", "FiniteCheck", "GradStats", "clip_", "default_every", "grad_norm"]


def default_every(device: torch.device) -> int:
    """Record cadence when unset: a record takes one norm per parameter tensor and a few
    reductions (kernel launches on a GPU, hence sparser there). The values are the ones chosen
    when a record step also unrolled the recurrence, kept so that existing runs stay comparable."""
    return 100 if device.type == "cpu" else 500


def grad_norm(params: list[torch.Tensor]) -> torch.Tensor:
    """Global L2 norm of the parameters' gradients, a 0-dim tensor on their device (no sync)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return nn.utils.get_total_norm(grads)


def clip_(params: list[torch.Tensor], max_norm: float, norm: torch.Tensor) -> None:
    """Scale gradients so their global norm is at most `max_norm`, given their norm."""
    nn.utils.clip_grads_with_norm_(params, max_norm, norm)


class FiniteCheck:
    """Raises `Diverged` at the first optimiser step whose loss or gradient norm is not finite.

    On CPU each step's two numbers are read at once: they are computed already, so the read
    costs nothing, and the step that diverged never updates the weights. On a GPU every read
    makes the host wait until the device has drained its queue, so each step's verdict is kept
    in a small device buffer that is read every `every` steps and at each epoch's end: the step
    reported is still the first bad one, and at most `every` − 1 further steps ran.
    """

    def __init__(self, device: torch.device, every: int = 16, lazy: bool | None = None):
        self.lazy = device.type != "cpu" if lazy is None else lazy
        self.every = every
        self.flags = torch.zeros(every, dtype=torch.bool, device=device) if self.lazy else None
        self.pending: list[tuple[int, int]] = []  # (epoch, step) of each buffered verdict

    def update(self, epoch: int, step: int, loss: torch.Tensor, norm: torch.Tensor) -> Diverged | None:
        """The failure of this step (CPU) or of a buffered one (GPU), for the loop to raise."""
        if not self.lazy:
            lv, nv = loss.item(), float(norm)
            if math.isfinite(lv) and math.isfinite(nv):
                return None
            return Diverged(epoch, step, "gradient" if math.isfinite(lv) else "loss")
        self.flags[len(self.pending)] = ~torch.isfinite(loss.detach() + norm)
        self.pending.append((epoch, step))
        return self.flush() if len(self.pending) == self.every else None

    def flush(self) -> Diverged | None:
        if not self.pending:
            return None
        flags = self.flags[: len(self.pending)]
        first = int(torch.where(flags.any(), flags.int().argmax(), -1))  # one read
        bad, self.pending = (self.pending[first] if first >= 0 else None), []
        return Diverged(*bad, "loss or gradient") if bad else None


def group_of(model: nn.Module, name: str) -> str:
    """A parameter's layer: its module's path, plus `.layer<k>` inside a recurrent module."""
    path, _, leaf = name.rpartition(".")
    module = model.get_submodule(path) if path else model
    if isinstance(module, nn.RNNBase):
        m = re.search(r"_l(\d+)", leaf)
        if m:
            return f"{path}.layer{m[1]}"
    return path or leaf


class GradStats:
    """Gradient statistics of one training run, recorded by the loop (see module doc)."""

    def __init__(self, model: nn.Module, *, every: int, clip_norm: float | None = None):
        if every < 1:
            raise ValueError(f"every must be ≥ 1, got {every}")
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.params = [p for _, p in named]
        groups = [group_of(model, n) for n, _ in named]
        self.groups = list(dict.fromkeys(groups))
        self.every, self.clip_norm = every, clip_norm
        self.keys = ["grad_norm", "grad_norm_clipped", "clip_fraction", "grad_nonfinite"]
        self.keys += [f"grad_norm/{g}" for g in self.groups]
        self._group_index: list[int] | torch.Tensor = [self.groups.index(g) for g in groups]
        self._norms: list[torch.Tensor] = []  # every step's norm since the last record (for clip_fraction)
        self._pending: list[tuple[int, torch.Tensor]] = []

    def due(self, step: int) -> bool:
        return step == 1 or step % self.every == 0

    def observe(self, norm: torch.Tensor) -> None:
        """Every optimiser step: keep its gradient norm (no device work until the record)."""
        if self.clip_norm is not None:
            self._norms.append(norm)

    def record(self, step: int, norm: torch.Tensor) -> None:
        """After backward, before clipping: keep this step's statistics (on the device)."""
        device = norm.device
        grads = [p.grad for p in self.params]
        per = torch.stack([g.detach().norm() if g is not None else norm.new_zeros(()) for g in grads])
        if not isinstance(self._group_index, torch.Tensor) or self._group_index.device != device:
            self._group_index = torch.tensor(self._group_index, device=device)
        groups = torch.zeros(len(self.groups), device=device).index_add_(0, self._group_index, per.float() ** 2).sqrt()
        if device.type == "cpu" and math.isfinite(norm.item()):  # a finite norm has no NaN/inf entries
            nonfinite = norm.new_zeros(())
        else:
            nonfinite = sum(((~torch.isfinite(g)).sum() for g in grads if g is not None), norm.new_zeros(()))
        if self.clip_norm is None:
            clipped, fraction = norm, norm.new_zeros(())
        else:  # the factor `clip_grads_with_norm_` applies
            clipped = norm * torch.clamp(self.clip_norm / (norm + 1e-6), max=1.0)
            fraction = (torch.stack(self._norms) > self.clip_norm).float().mean() if self._norms else norm.new_zeros(())
        # float32 throughout: MPS has no float64, and the gradients themselves are float32
        head = torch.stack([norm, clipped, fraction, nonfinite]).float()
        values = torch.cat([head, groups])
        self._pending.append((step, values))
        self._norms = []

    def drain(self) -> list[tuple[int, dict[str, float]]]:
        """The records since the last drain as (step, metrics), read from the device at once."""
        if not self._pending:
            return []
        rows = torch.stack([v for _, v in self._pending]).tolist()  # one read
        out = [(step, dict(zip(self.keys, row, strict=True))) for (step, _), row in zip(self._pending, rows, strict=True)]
        self._pending = []
        return out
