"""The architecture registry: `create_model(name, *, input_size, output_size, io, seq_len, **overrides)`.

I/O contract (batch first, every architecture, every task):

| io            | input x      | output            | recurrent head                                   |
|---------------|--------------|-------------------|--------------------------------------------------|
| one-to-one    | (B, I)       | (B, O)            | x read as a 1-step sequence, last state → linear |
| many-to-one   | (B, T, I)    | (B, O)            | last state → linear                               |
| many-to-many  | (B, T, I)    | (B, T, O)         | every step's state → linear                       |
| one-to-many   | (B, I)       | (B, T, O)         | x repeated for T steps, every step's state → linear |

T is `seq_len`. "Last state" of a bidirectional model is the forward direction's h_T joined
with the backward direction's h_1 (each direction's final state), so every head reads both
directions.

A model is an `nn.Module` whose `forward(x)` returns the output above. Recurrent models also
accept `forward(x, return_hidden=True)`, returning `(output, hidden)` where `hidden[d][t]` is
the top layer's state h_t of direction d as a tensor on the autograd path (so after
`backward()` its `.grad` is the full ∂L/∂h_t, through time). Models may define
`flops(seq_len) -> int`, the analytic forward FLOPs per sample.

A new architecture is one function decorated with `@register_model` that returns such a
module; users register theirs through the `harness.archs` entry-point group or name it as
`module:function` in an experiment file.
"""

from __future__ import annotations

import importlib
import re
from importlib.metadata import entry_points

from torch import nn

from harness.errors import HarnessError
from harness.registry import Registry

IO_KINDS = ("one-to-one", "one-to-many", "many-to-one", "many-to-many")

_registry = Registry("architecture")
register_model = _registry.register
_plugins_loaded = False


def _load_plugins() -> None:
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for ep in entry_points(group="harness.archs"):
        if ep.name not in _registry.entries:
            _registry.entries[ep.name] = ep.load()


def list_models(pattern: str = "*") -> list[str]:
    """Registered architecture names matching a shell-style wildcard, e.g. `'*lstm*'`."""
    _load_plugins()
    return _registry.names(pattern)


def get_model_fn(name: str):
    """The factory registered as `name`, or a `module:function` reference."""
    if ":" in name:
        module, _, attr = name.partition(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise HarnessError(f"model.arch: cannot import {name!r} ({e})") from None
    _load_plugins()
    return _registry.get(name)


def create_model(
    name: str, *, input_size: int, output_size: int, io: str, seq_len: int = 1, **overrides
) -> nn.Module:
    """Build architecture `name` for the given I/O; overrides set to None are dropped."""
    if io not in IO_KINDS:
        raise HarnessError(f"io: {io!r} is not one of {', '.join(IO_KINDS)}")
    fn = get_model_fn(name)
    overrides = {k: v for k, v in overrides.items() if v is not None}
    try:
        return fn(input_size=input_size, output_size=output_size, io=io, seq_len=seq_len, **overrides)
    except TypeError as e:
        m = re.search(r"unexpected keyword argument '(\w+)'", str(e))
        if m:
            raise HarnessError(f"model.{m[1]}: architecture {name!r} takes no option {m[1]!r}") from None
        raise


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def model_flops(model: nn.Module, seq_len: int) -> int | None:
    """Analytic forward FLOPs per sample, or None for a model that does not say."""
    fn = getattr(model, "flops", None)
    return int(fn(seq_len)) if callable(fn) else None


def check(ok: bool, field: str, message: str) -> None:
    """Raise a one-line config error naming the field (used by the factories)."""
    if not ok:
        raise HarnessError(f"model.{field}: {message}")


# Register the built-in families (import for their side effect).
from harness.archs import mlp, recurrent, seed  # noqa: E402,F401
