"""Gradient statistics: global and per-layer norms, clipping, non-finite checks, and the
per-time-step profile ‖∂L/∂h_t‖ of the top recurrent layer.

Every optimiser step the loop takes `grad_norm` (the clip needs it anyway) and hands it to a
`FiniteCheck`, which stops training with `Diverged` at the first non-finite loss or gradient.
A `GradStats` given to the loop records, on the first step and every `every`-th step after:

- `grad_norm` (global L2 norm before clipping), `grad_norm_clipped` (after), `clip_fraction`
  (share of the optimiser steps since the previous record whose norm exceeded `clip_norm`),
  `grad_nonfinite` (count of NaN/inf gradient entries), `grad_norm/<group>` per layer
  (`rnn.layer0`, `head`, …: one group per module, per layer for recurrent modules);
- the profile: on a record step the loop's forward is `model(x, return_hidden=True)` and every
  h_t of the top recurrent layer keeps its gradient (`retain_grad`), so the step's one backward
  gives the parameter gradients and the full ∂L/∂h_t through time. ‖∂L/∂h_t‖ is the Frobenius
  norm, over batch and units, of the gradient of the batch's mean loss. Models without
  `return_hidden` (or returning no states) record no profile.
- `grad_vanish_ratio` = ‖∂L/∂h_first‖ ÷ ‖∂L/∂h_last‖ in the order the direction reads the
  sequence (forward: h_1 ÷ h_T; a bidirectional model's reverse direction:
  h_T ÷ h_1, logged as `grad_vanish_ratio_reverse`). Many-to-one: the loss reads only the last
  state, so this is how much gradient survives the whole sequence (≪ 1: vanishing, ≫ 1:
  exploding). Many-to-many / one-to-many: h_1 also receives its own output's gradient, so the
  ratio compares the earliest state's total gradient with the last state's, which is direct only
  (when the loss ignores early steps, as in `copy`, it again measures survival over time).
  One-to-one: one step, ratio 1.

Recorded values stay on the device until `drain()` (at epoch ends), so recording never makes
the host wait for the device.
"""

from __future__ import annotations

import csv
import inspect
import math
import re
from pathlib import Path

import torch
from torch import nn

from harness.errors import Diverged

__all__ = ["Diverged", "FiniteCheck", "GradStats", "clip_", "default_every", "grad_norm"]

DIRECTIONS = ("forward", "reverse")


def default_every(device: torch.device) -> int:
    """Record cadence when unset. A record step runs the recurrence one step at a time and
    costs up to ~2.4× a fused step on CPU (LSTM, measured; RNN/GRU ~1.1×), so every 100th
    step keeps it near 1% of training time; against cuDNN the unrolled step costs several
    to tens of fused steps (one kernel launch per op and time step), hence 500 on a GPU."""
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


def takes_hidden(model: nn.Module) -> bool:
    """Whether `model(x, return_hidden=True)` is part of the model's forward (see harness.archs)."""
    try:
        return "return_hidden" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


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
        self._hidden = takes_hidden(model)
        self._norms: list[torch.Tensor] = []  # every step's norm since the last record (for clip_fraction)
        self._pending: list[tuple[int, int, torch.Tensor, torch.Tensor | None]] = []
        self.profile: list[tuple[int, int, str, list[float]]] = []  # (step, epoch, direction, ‖∂L/∂h_t‖ for t = 1..T)

    def due(self, step: int) -> bool:
        return step == 1 or step % self.every == 0

    def forward(self, model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list | None]:
        """The record step's forward: output and the top layer's states, which keep their grads."""
        if not self._hidden:
            return model(x), None
        out, hidden = model(x, return_hidden=True)
        for states in hidden:
            for h in states:
                if h.requires_grad:
                    h.retain_grad()
        return out, hidden

    def observe(self, norm: torch.Tensor) -> None:
        """Every optimiser step: keep its gradient norm (no device work until the record)."""
        if self.clip_norm is not None:
            self._norms.append(norm)

    def record(self, step: int, epoch: int, norm: torch.Tensor, hidden: list | None) -> None:
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
        self._pending.append((step, epoch, values, self._profile(hidden)))
        self._norms = []

    @staticmethod
    def _profile(hidden: list | None) -> torch.Tensor | None:
        """(directions, T): ‖∂L/∂h_t‖ of each direction's states."""
        if not hidden or not hidden[0]:
            return None
        rows = []
        for states in hidden:
            g = torch.stack([h.grad if h.grad is not None else torch.zeros_like(h) for h in states])
            rows.append(g.detach().flatten(1).float().norm(dim=1))
        return torch.stack(rows)

    def drain(self) -> list[tuple[int, dict[str, float]]]:
        """The records since the last drain as (step, metrics), read from the device at once;
        their profiles join `self.profile`."""
        if not self._pending:
            return []
        flat = torch.cat([t.flatten() for *_, v, p in self._pending for t in (v, p) if t is not None]).tolist()
        out, i = [], 0
        for step, epoch, values, prof in self._pending:
            rec = dict(zip(self.keys, flat[i : i + len(values)], strict=True))
            i += len(values)
            if prof is not None:
                n_dir, steps = prof.shape
                for d in range(n_dir):
                    row = flat[i : i + steps]
                    i += steps
                    self.profile.append((step, epoch, DIRECTIONS[d], row))
                    first, last = (row[0], row[-1]) if d == 0 else (row[-1], row[0])
                    if last > 0:
                        rec["grad_vanish_ratio" + ("_reverse" if d else "")] = first / last
            out.append((step, rec))
        self._pending = []
        return out

    def write_profile(self, folder: Path) -> list[Path]:
        """grad_profile.csv (one row per record and direction, columns t1..tT) and a heat map."""
        if not self.profile:
            return []
        folder = Path(folder)
        steps = len(self.profile[0][3])
        csv_path = folder / "grad_profile.csv"
        with csv_path.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["step", "epoch", "direction", *(f"t{t}" for t in range(1, steps + 1))])
            for step, epoch, direction, row in self.profile:
                w.writerow([step, epoch, direction, *(f"{v:.6g}" for v in row)])
        return [csv_path, plot_profile(self.profile, folder / "grad_profile.png")]


def plot_profile(profile: list[tuple[int, int, str, list[float]]], path: Path) -> Path:
    """Heat map of log10 ‖∂L/∂h_t‖: time step across, optimiser step down, one panel per direction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    directions = list(dict.fromkeys(d for _, _, d, _ in profile))
    fig, axes = plt.subplots(1, len(directions), figsize=(5.5 * len(directions), 4), squeeze=False)
    for ax, direction in zip(axes[0], directions, strict=True):
        rows = [(s, r) for s, _, d, r in profile if d == direction]
        data = np.log10(np.maximum(np.array([r for _, r in rows]), 1e-30))
        steps = [s for s, _ in rows]
        im = ax.imshow(data, aspect="auto", interpolation="nearest", cmap="viridis",
                       extent=(0.5, data.shape[1] + 0.5, len(steps) - 0.5, -0.5))
        ticks = np.linspace(0, len(steps) - 1, min(len(steps), 8)).round().astype(int)
        ax.set_yticks(ticks, [str(steps[i]) for i in ticks])
        ax.set_xlabel("time step t")
        ax.set_ylabel("optimiser step")
        ax.set_title(f"log10 ‖∂L/∂h_t‖ ({direction})")
        fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
