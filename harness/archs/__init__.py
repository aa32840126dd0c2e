"""The architecture registry: `create_model(name, *, input_size, output_size, io, seq_len, **overrides)`.

I/O contract (batch first, every architecture, every task):

| io            | input x      | output            | recurrent head                                      |
|---------------|--------------|-------------------|-----------------------------------------------------|
| one-to-one    | (B, I)       | (B, O)            | x read as a 1-step sequence, last state → linear    |
| many-to-one   | (B, T, I)    | (B, O)            | last state → linear                                 |
| many-to-many  | (B, T, I)    | (B, T, O)         | every step's state → linear                         |
| one-to-many   | (B, I)       | (B, T, O)         | x repeated for T steps, every step's state → linear |

T is `seq_len`. "Last state" of a bidirectional model is the forward direction's h_T joined
with the backward direction's h_1 (each direction's final state), and per-step heads read both
directions' h_t, so every head reads both directions.

A model is an `nn.Module` whose `forward(x)` returns the output above. Built-in models also
accept `forward(x, return_hidden=True)`, returning `(output, states)`: the same output, computed
one step at a time, and `states[d][t]`, the tuple of tensors that make up the top recurrent
layer's state at step t of direction d (d = 0 forward, 1 backward; t = 0 … T − 1, in time
order whichever way the direction reads): `(h_t,)` for Elman RNNs and GRUs, `(h_t, c_t)` for
LSTMs, each (B, H) and on the autograd path, so `torch.autograd.grad(loss, states[d][t])` is the
full ∂L/∂h_t (∂L/∂c_t) through time, not only the direct part the fused kernels expose. A
plug-in may give a bare tensor h_t for `states[d][t]`; the MLP has no time steps: `states == []`.
harness.gradflow measures gradient flow through it; without `return_hidden` nothing changes:
the fused kernels run as usual. Built-in models also accept `forward(x, lengths=L)` for a batch
of zero-padded sequences of different lengths (`L`: each one's real steps): the output of each
sequence is what it would be alone (many-to-one reads its last real step; a backward direction
starts at its own end); per-step outputs at padded steps are left for the loss to skip. A task
whose sequences differ in length needs a model that takes `lengths`. Models may define
`flops(seq_len) -> int`, the analytic forward FLOPs per sample (matmuls: 2·G·H·(I+H) per step,
direction and layer, G = 1 / 3 / 4 for RNN / GRU / LSTM, plus heads; training ≈ 3× forward).

A new architecture is one function decorated with `@register_model(family=...)` that takes
`input_size, output_size, io, seq_len` and its own options as keywords and returns such a
module; a module of its own in this package is imported automatically. Users plug in theirs
without touching harness: name it `module:function` in an experiment file, or register it
under the `harness.archs` entry-point group of their package (`@describe_model(family=...)`
gives such a plug-in its family). Overrides set to None are dropped; an override the function
does not take, or an invalid value, is a `HarnessError` naming `model.<option>`.

Each architecture declares its `family` (one of `FAMILIES`; `custom` when it does not say) and
whether it is `bidirectional`; `arch_info` resolves both for a run (an override
`bidirectional = true` makes any model a BRNN), and every run logs them (harness.tracking).
"""

from __future__ import annotations

import functools
import importlib
import inspect
import math
import os
import pkgutil
import re
import sys
import warnings
from dataclasses import dataclass
from importlib.metadata import entry_points

import psutil
import torch
from torch import nn

from harness.errors import HarnessError
from harness.families import FAMILIES
from harness.registry import Registry, meta_of, set_meta

IO_KINDS = ("one-to-one", "one-to-many", "many-to-one", "many-to-many")
CONTRACT = ("input_size", "output_size", "io", "seq_len")  # keywords every factory takes
ENTRY_POINT_GROUP = "harness.archs"

_registry = Registry("architecture")
_plugins_loaded = False


@dataclass(frozen=True)
class ArchInfo:
    """What a run logs about its architecture: `arch_family`, `arch_bidirectional`."""

    family: str
    bidirectional: bool


def _checked(family: str, bidirectional: bool) -> dict:
    if family not in FAMILIES:
        raise ValueError(f"family {family!r} is not one of {', '.join(FAMILIES)}")
    return {"family": family, "bidirectional": bool(bidirectional) or family == "BRNN"}


def register_model(fn=None, *, name: str | None = None, family: str = "custom", bidirectional: bool = False):
    """Decorator: register an architecture factory under `name` (default: its function name,
    '_' → '-') with its family and whether it is bidirectional by default."""
    return _registry.register(fn, name=name, **_checked(family, bidirectional))


def describe_model(*, family: str, bidirectional: bool = False):
    """Decorator for a plug-in factory (entry point or `module:function`): its family, without
    registering it in harness."""
    return lambda fn: set_meta(fn, **_checked(family, bidirectional))


def _load_plugins() -> None:
    """Register the `harness.archs` entry points of installed packages, once per process."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    found = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in _registry.entries:
            warnings.warn(f"architecture plug-in {ep.name!r} ({ep.value}) ignored: a built-in has that name", stacklevel=2)
            continue
        try:
            found[ep.name] = ep.load()
        except Exception as e:  # a broken plug-in is the user's input: report it on one line
            raise HarnessError(
                f"model.arch: plug-in {ep.name!r} (entry point {ep.value!r} in group {ENTRY_POINT_GROUP!r}) "
                f"failed to import: {_one_line(e)}"
            ) from None
    _registry.entries.update(found)
    _plugins_loaded = True


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


def _import_ref(ref: str):
    """`package.module:function` → the function; the working directory is searched last, so
    a `my_archs.py` beside the experiment file works from the installed `harness` command."""
    module, _, attr = ref.partition(":")
    added = os.getcwd() not in sys.path
    if added:
        sys.path.append(os.getcwd())
    try:
        fn = functools.reduce(getattr, attr.split("."), importlib.import_module(module))
    except Exception as e:
        raise HarnessError(f"model.arch: cannot import {ref!r} ({_one_line(e)}); expected package.module:function") from None
    finally:
        if added:
            sys.path.remove(os.getcwd())
    if not callable(fn):
        raise HarnessError(f"model.arch: {ref!r} is a {type(fn).__name__}, not a function returning an nn.Module")
    return fn


def list_models(pattern: str = "*") -> list[str]:
    """Registered architecture names (plug-ins included) matching a shell-style wildcard, e.g. `'*lstm*'`."""
    _load_plugins()
    return _registry.names(pattern)


def get_model_fn(name: str):
    """The factory registered as `name` (built-in or plug-in), or a `module:function` reference."""
    if ":" in name:
        return _import_ref(name)
    _load_plugins()
    return _registry.get(name)


def arch_info(name: str, **overrides) -> ArchInfo:
    """The family and direction of architecture `name` built with `overrides`."""
    meta = meta_of(get_model_fn(name))
    family = meta.get("family", "custom")
    bidirectional = overrides.get("bidirectional")
    if not isinstance(bidirectional, bool):  # unset, or a bad value create_model refuses
        bidirectional = meta.get("bidirectional", False)
    return ArchInfo("BRNN" if bidirectional else family, bidirectional)


def _keywords(fn) -> list[str] | None:
    """The keyword names `fn` takes, or None when it takes any (`**kwargs`) or cannot say."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]


def model_options(fn) -> list[str] | None:
    """The override names a factory takes, or None when it takes any (`**kwargs`)."""
    names = _keywords(fn)
    return None if names is None else [n for n in names if n not in CONTRACT]


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024:
            return f"{n:.3g} {unit}"
        n /= 1024
    return f"{n:.3g} EiB"


def _check_fits(name: str, fn, args: dict, overrides: dict) -> None:
    """Refuse, in one line, a model whose fp32 weights and gradients (the least that training
    holds) exceed this machine's memory: it is built first on torch's meta device, which
    allocates nothing and draws no random numbers. A factory the meta device cannot run is let be."""
    total = psutil.virtual_memory().total
    try:
        with torch.device("meta"):
            n = sum(p.numel() for p in fn(**args).parameters())
        need = 8 * n
    except RuntimeError as e:  # torch's int64 byte count of one tensor overflowed
        m = re.search(r"overflowed with sizes=\[([\d, ]+)\]", str(e))
        if not m:
            return
        n, need = None, 4 * math.prod(int(d) for d in m[1].split(","))
    except Exception:
        return
    if need <= total:
        return
    sizes = [f"model.{k}={v}" for k, v in overrides.items() if isinstance(v, int) and not isinstance(v, bool)]
    what = f"{n:.3g} parameters need {_size(need)} for fp32 weights and gradients" if n else \
        f"one weight tensor needs {_size(need)}"
    raise HarnessError(f"{', '.join(sizes) or f'model.arch={name}'}: {name}'s {what}, more than this machine's "
                       f"{_size(total)} of memory; choose a smaller {' or '.join(s.split('=')[0] for s in sizes) or 'model'}")


def create_model(
    name: str, *, input_size: int, output_size: int, io: str, seq_len: int = 1, **overrides
) -> nn.Module:
    """Build architecture `name` for the given I/O; overrides set to None are dropped."""
    if io not in IO_KINDS:
        raise HarnessError(f"io: {io!r} is not one of {', '.join(IO_KINDS)}")
    fn = get_model_fn(name)
    overrides = {k: v for k, v in overrides.items() if v is not None}
    names = _keywords(fn)
    if names is not None:
        if not set(CONTRACT) <= set(names):
            raise HarnessError(f"model.arch: {name!r} must take the keywords {', '.join(CONTRACT)} (see harness.archs)")
        options = [n for n in names if n not in CONTRACT]
        for key in overrides:
            if key not in options:
                takes = f"it takes {', '.join(options)}" if options else "it takes no options"
                raise HarnessError(f"model.{key}: architecture {name!r} takes no option {key!r}; {takes}")
    args = dict(input_size=input_size, output_size=output_size, io=io, seq_len=seq_len, **overrides)
    try:
        _check_fits(name, fn, args, overrides)
        model = fn(**args)
    except TypeError as e:  # a factory with **kwargs that passes an unknown one on
        m = re.search(r"unexpected keyword argument '(\w+)'", str(e))
        if m and m[1] in overrides:
            raise HarnessError(f"model.{m[1]}: architecture {name!r} takes no option {m[1]!r}") from None
        if m and m[1] in CONTRACT:
            raise HarnessError(f"model.arch: {name!r} must take the keywords {', '.join(CONTRACT)} (see harness.archs)") from None
        raise
    if not isinstance(model, nn.Module):
        raise HarnessError(f"model.arch: {name!r} returned a {type(model).__name__}, not a torch nn.Module")
    return model


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


# Register the built-in families: every module of this package, imported for its side effect.
for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
