"""Name → factory registries shared by architectures and tasks.

A registry is a plain dict with a wildcard listing and an error that suggests close names.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from harness.errors import HarnessError


@dataclass
class Registry:
    kind: str  # "architecture" or "task": used in messages
    entries: dict[str, Callable[..., Any]] = field(default_factory=dict)

    def register(self, fn: Callable[..., Any] | None = None, *, name: str | None = None):
        """Decorator: register `fn` under `name` (default: the function name, '_' → '-')."""

        def add(f: Callable[..., Any]) -> Callable[..., Any]:
            key = name or f.__name__.replace("_", "-")
            if key in self.entries:
                raise ValueError(f"{self.kind} {key!r} is registered twice")
            self.entries[key] = f
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
