"""Matched sizes: `sweep.match_params = N` gives every trial's model the hidden size whose
parameter count is nearest N, so that a comparison of architectures is not one of capacities
(an Elman RNN with 64 units has about a third of a GRU's parameters at the same width).

The count is the model's own (`create_model` at each candidate width, input and output layers
included), found by doubling then bisection: it grows with the width for every registered
architecture. A trial's other model settings (layers, bidirectional …) count too, so the width
is found per trial and kept per worker for the settings that produced it.
"""

from __future__ import annotations

import json

import torch

from harness.archs import create_model
from harness.config import Experiment
from harness.errors import HarnessError
from harness.tasks import Task, shared_task

TOLERANCE = 0.05  # a matched count further than this share from N is refused
MAX_HIDDEN = 1 << 16
_found: dict[str, tuple[int, int]] = {}  # settings → (hidden size, its parameter count)


def count(exp: Experiment, task: Task, hidden: int) -> int:
    model = create_model(exp.model.arch, input_size=task.input_size, output_size=task.output_size, io=task.io,
                         seq_len=task.seq_len, **{**exp.model.overrides(), "hidden_size": hidden})
    return sum(p.numel() for p in model.parameters())


def nearest(exp: Experiment, task: Task, n: int) -> tuple[int, int]:
    """The hidden size whose model's parameter count is nearest `n`, and that count."""
    with torch.device("meta"):  # counts need shapes, not memory or initialisation
        high = 1
        while count(exp, task, high) < n and high < MAX_HIDDEN:
            high *= 2
        low = max(1, high // 2)
        while high - low > 1:  # count(low) < n <= count(high), or the ends
            mid = (low + high) // 2
            low, high = (mid, high) if count(exp, task, mid) < n else (low, mid)
        return min(((h, count(exp, task, h)) for h in {low, high}), key=lambda hc: (abs(hc[1] - n), hc[0]))


def matched(exp: Experiment, task: Task | None = None) -> Experiment:
    """`exp` with `model.hidden_size` set to match `sweep.match_params` (unchanged without it).
    Raises a one-line HarnessError when no width comes within 5%."""
    n = exp.sweep.match_params
    if not n:
        return exp
    settings = {k: v for k, v in exp.model.overrides().items() if k != "hidden_size"}
    key = json.dumps([exp.model.arch, settings, exp.task.name, exp.task.options(), n], sort_keys=True, default=str)
    if key not in _found:
        task = task or shared_task(exp.task.name, **exp.task.options())
        try:
            _found[key] = nearest(exp, task, n)
        except (TypeError, ValueError) as e:
            raise HarnessError(f"sweep.match_params: {exp.model.arch!r} cannot be sized by model.hidden_size ({e}); "
                               "remove match_params or the architecture") from None
    hidden, got = _found[key]
    if abs(got - n) > TOLERANCE * n:
        raise HarnessError(f"sweep.match_params = {n}: the nearest {exp.model.arch} has {got:,} parameters (hidden_size "
                           f"{hidden}), more than 5% off; choose a count this architecture can reach")
    return exp.with_values({"model.hidden_size": hidden})
