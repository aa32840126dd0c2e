"""The task registry: `load_task(name, **options) -> Task`.

A task is data (train / validation / test tensors), its I/O kind (see `harness.archs`),
and its loss and metric. Validation is carved from the training set with a fixed seed and is
what sweeps select on; the test split is evaluated once, after training, and never used to
choose anything. A new task is one module here with one function under `@register_task`
(every module of this package is imported); its metric is a name from `harness.tasks.metrics`.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import inspect
import json
import os
import pkgutil
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch

from harness.errors import HarnessError
from harness.registry import Registry
from harness.tasks.metrics import LOSSES, cross_entropy, higher_is_better, metric_fn, mse, skipping_padding

__all__ = ["Task", "cross_entropy", "list_tasks", "load_task", "mse", "register_task", "split_train_val"]

_registry = Registry("task")
register_task = _registry.register


@dataclass(frozen=True, eq=False)
class Task:
    name: str
    io: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    input_size: int
    output_size: int
    seq_len: int  # steps read (many-to-*) or produced (one-to-many); 1 for one-to-one
    loss: str = "cross_entropy"
    metric: str = "accuracy"
    baseline: float | None = None  # loss of the trivial predictor, where the task defines one
    # Sequences of different lengths: each example's real number of steps, per split (None: every
    # example has seq_len). x is zero-padded after its last real step; a per-step target is -100
    # (classes) or NaN (values) there, which the losses and metrics skip.
    len_train: torch.Tensor | None = None
    len_val: torch.Tensor | None = None
    len_test: torch.Tensor | None = None

    def __post_init__(self) -> None:
        metric_fn(self.metric)  # an unknown metric name fails here, naming the known ones
        if self.loss not in LOSSES:
            raise HarnessError(f"task {self.name!r}: unknown loss {self.loss!r}; known: {', '.join(LOSSES)}")

    @functools.cached_property
    def metric_baseline(self) -> float:
        """The test metric of the input-blind predictor fitted on the training split: the training
        targets' mean (regression; the best constant under MSE), else the one class that scores best on
        the training targets, predicted everywhere (chance, or the majority class; the copy
        task's blank-free symbol accuracy). A model at this value learned nothing from its input."""
        fn, better = self.metric_fn, (max if self.maximize else min)
        if self.y_train.is_floating_point():
            mean = per_step_mean(self.y_train) if self.variable_length else self.y_train.float().mean(0)
            return float(fn(mean.expand_as(self.y_test), self.y_test))

        def constant(c: int, y: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.one_hot(torch.full(y.shape, c), self.output_size).float()

        c = better(range(self.output_size), key=lambda c: float(fn(constant(c, self.y_train), self.y_train)))
        return float(fn(constant(c, self.y_test), self.y_test))

    @property
    def loss_fn(self) -> Callable:
        fn = LOSSES[self.loss]
        return skipping_padding(fn) if self.variable_length else fn

    @property
    def metric_fn(self) -> Callable:
        fn = metric_fn(self.metric)
        return skipping_padding(fn) if self.variable_length else fn

    @property
    def maximize(self) -> bool:
        """Whether a higher metric is better (the metric's registration says)."""
        return higher_is_better(self.metric)

    def split(self, which: str) -> tuple[torch.Tensor, torch.Tensor]:
        return getattr(self, f"x_{which}"), getattr(self, f"y_{which}")

    def lengths(self, which: str) -> torch.Tensor | None:
        """Each example's real number of steps in split `which`, or None when all have seq_len."""
        return getattr(self, f"len_{which}")

    @property
    def per_step(self) -> bool:
        """Whether the targets are per step (many-to-many, one-to-many), not per sequence."""
        return self.io in ("many-to-many", "one-to-many")

    @property
    def variable_length(self) -> bool:
        return self.len_train is not None

    def split_hashes(self) -> dict[str, str]:
        """Short content hash of each split, for logging which data a run saw (computed once per
        loaded task: a worker's runs share it, harness.runner)."""
        return dict(self._hashes)

    @functools.cached_property
    def _hashes(self) -> dict[str, str]:
        out = {}
        for which in ("train", "val", "test"):
            h = hashlib.sha256()
            for t in (*self.split(which), self.lengths(which)):
                if t is not None:
                    h.update(t.detach().cpu().contiguous().numpy().tobytes())
            out[which] = h.hexdigest()[:12]
        return out


def split_train_val(
    x: torch.Tensor, y: torch.Tensor, *, val_size: float | int, seed: int = 0, field: str = "val_size"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Carve a validation set (a fraction, or a count) from training data with a fixed seed.

    Returns (x_rest, y_rest, x_carved, y_carved); `field` names the option in errors (a task
    without its own test split carves that the same way, as `test_size`).
    """
    n = len(x)
    if isinstance(val_size, bool) or not isinstance(val_size, (int, float)):
        raise HarnessError(f"task.{field}: must be a fraction in (0, 1) or a count, got {val_size!r}")
    n_val = int(round(val_size * n)) if isinstance(val_size, float) else int(val_size)
    if not 0 < n_val < n:
        raise HarnessError(f"task.{field}: {val_size!r} leaves no train or no held-out examples of {n}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    val, train = perm[:n_val], perm[n_val:]
    return x[train], y[train], x[val], y[val]


def positive_int(field: str, value, minimum: int = 1) -> int:
    """Check a task option is an integer ≥ minimum; one-line error naming `task.<field>`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise HarnessError(f"task.{field}: must be an integer ≥ {minimum}, got {value!r}")
    return value


def mean_baseline(y_train: torch.Tensor, y_val: torch.Tensor) -> float:
    """MSE on validation of the predictor that ignores its input: the training targets' mean
    (per step; NaN targets, the padding of shorter sequences, left out)."""
    if not (torch.isnan(y_train).any() or torch.isnan(y_val).any()):
        return mse(y_train.float().mean(0).expand_as(y_val), y_val).item()
    return skipping_padding(mse)(per_step_mean(y_train).expand_as(y_val), y_val).item()


def per_step_mean(y: torch.Tensor) -> torch.Tensor:
    """The mean target at each step over the sequences that reach it (NaN: padding); steps no
    training sequence reaches take the mean over all steps."""
    mean = y.float().nanmean(0)
    return torch.where(torch.isnan(mean), y.float().nanmean(), mean)


def list_tasks(pattern: str = "*") -> list[str]:
    return _registry.names(pattern)


def describe_task(name: str) -> str:
    """First line of the task's docstring (it names the io kind and shapes)."""
    doc = (_registry.get(name).__doc__ or "").strip().splitlines()
    return doc[0] if doc else ""


def task_options(name: str) -> list[str]:
    """Option names task `name` takes (besides the common `n_train`)."""
    return [p for p in inspect.signature(_registry.get(name)).parameters if p != "n_train"] + ["n_train"]


def task_defaults(name: str) -> dict:
    """The default of each option task `name` takes (those with one), as a run logs them."""
    params = inspect.signature(_registry.get(name)).parameters
    return {k: p.default for k, p in params.items() if p.default is not p.empty}


def load_task(name: str, *, n_train: int | None = None, **options) -> Task:
    """Load task `name`. `n_train` keeps only the first N training examples (quick runs)."""
    fn = _registry.get(name)
    params = inspect.signature(fn).parameters
    unknown = sorted(set(options) - set(params))
    if unknown:
        raise HarnessError(
            f"task.{unknown[0]}: task {name!r} takes no option {unknown[0]!r}; it takes {', '.join(task_options(name))}"
        )
    task = fn(**{k: v for k, v in options.items() if v is not None})
    if n_train is not None:
        if not isinstance(n_train, int) or n_train < 1:
            raise HarnessError(f"task.n_train: must be a positive integer, got {n_train!r}")
        task = _first(task, n_train)
    return task


TASKS_KEPT = 2  # loaded tasks a process keeps: a sweep's runs share one, a task.* search a few
_loaded: OrderedDict[str, Task] = OrderedDict()


def shared_task(name: str, **options) -> Task:
    """`load_task`, loaded once per process for the settings that produce it (the options, the
    task's function, the data folders the environment names): a sweep worker's trials, seeds and
    final runs share it, its split hashes and baseline too. Tasks are read, never changed."""
    key = json.dumps([name, options, id(_registry.get(name)), os.environ.get("HARNESS_DATA"), os.environ.get("HARNESS_CACHE")],
                     sort_keys=True, default=str)
    if key not in _loaded:
        _loaded[key] = load_task(name, **options)
        while len(_loaded) > TASKS_KEPT:
            _loaded.popitem(last=False)
    _loaded.move_to_end(key)
    return _loaded[key]


def _first(task: Task, n: int) -> Task:
    from dataclasses import replace

    lengths = None if task.len_train is None else task.len_train[:n]
    return replace(task, x_train=task.x_train[:n], y_train=task.y_train[:n], len_train=lengths)


# Register the built-in tasks: every module of this package, imported for its side effect.
for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
