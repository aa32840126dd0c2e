"""Name → factory registries shared by architectures, tasks and metrics.

A registry is a plain dict with a wildcard listing, an error that suggests close names, and a
metadata slot: `register(fn, family="LSTM")` keeps the keywords on the function itself as
`fn.harness_meta`, so a factory reached any other way (a plug-in, a `module:function`
reference) carries its metadata too (`harness.archs.describe_model` sets it without registering).
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from harness.errors import HarnessError

META = "harness_meta"  # the function attribute that holds a factory's metadata


def meta_of(fn: Callable[..., Any]) -> dict[str, Any]:
    """The metadata a factory was registered or described with (empty when none)."""
    return dict(getattr(fn, META, {}))


def set_meta(fn: Callable[..., Any], **meta: Any) -> Callable[..., Any]:
    setattr(fn, META, {**meta_of(fn), **meta})
    return fn


@dataclass
class Registry:
    kind: str  # "architecture", "task" or "metric": used in messages
    entries: dict[str, Callable[..., Any]] = field(default_factory=dict)
    dashes: bool = True  # key = the function name with '_' → '-' (metrics keep their underscores)

    def register(self, fn: Callable[..., Any] | None = None, *, name: str | None = None, **meta: Any):
        """Decorator: register `fn` under `name` (default: the function name), with metadata."""

        def add(f: Callable[..., Any]) -> Callable[..., Any]:
            key = name or (f.__name__.replace("_", "-") if self.dashes else f.__name__)
            if key in self.entries:
                raise ValueError(f"{self.kind} {key!r} is registered twice")
            self.entries[key] = set_meta(f, **meta) if meta else f
            return f

        return add(fn) if fn is not None else add

    def names(self, pattern: str = "*") -> list[str]:
        return sorted(n for n in self.entries if fnmatch.fnmatchcase(n, pattern))

    def get(self, name: str) -> Callable[..., Any]:
        try:
            return self.entries[name]
        except KeyError:
            close = difflib.get_close_matches(name, self.entries, n=3, cutoff=0.5)
            hint = f"did you mean {', '.join(close)}?" if close else f"known: {', '.join(self.names())}"
            raise HarnessError(f"unknown {self.kind} {name!r}; {hint}") from None

    def meta(self, name: str) -> dict[str, Any]:
        return meta_of(self.get(name))
