"""Experiment files (TOML) → validated, frozen settings.

Every value is checked before anything runs; a bad one fails with one line naming its dotted
key (`train.lr: …`). `--set KEY=VALUE` overrides and sweep parameters go through the same
path (`Experiment.with_values`), so what a trial runs is always a validated `Experiment`,
and `flat()` of it is exactly what gets logged.
"""

from __future__ import annotations

import importlib.util
import os
import reprlib
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, field_validator, model_validator
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from harness.errors import HarnessError

DEFAULT_EXPERIMENT = Path("experiments/quickstart.toml")
# Seeds are below 2**63: torch takes up to 2**64 - 1, and sweeps add offsets (seeds, final runs).
SEED_MAX = 2**63 - 1
# A study's name names its MLflow experiment and parent run (runs' names: at most 250
# characters in MLflow's SQL stores) and its report files (`<name>_<plot>.png`: 255 bytes).
NAME_MAX = 200


def tracking_uri() -> str:
    """`MLFLOW_TRACKING_URI` if set, else `mlflow.db` (SQLite) in the working directory."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def with_driver(url: str) -> str:
    """`postgresql://` with the driver that is installed: SQLAlchemy 2.1 means psycopg 3 by
    it, 2.0 psycopg2; harness's `postgres` extra installs psycopg2."""
    if not url.startswith("postgresql://"):
        return url
    for module, driver in (("psycopg", "psycopg"), ("psycopg2", "psycopg2")):
        if importlib.util.find_spec(module) is not None:
            return url.replace("postgresql://", f"postgresql+{driver}://", 1)
    raise HarnessError(f"{masked(url)} needs a PostgreSQL driver; pip install 'harness[postgres]'")


def masked(url: str) -> str:
    """The URL without its password, fit to print and log (every place a storage URL reaches MLflow
    or the terminal goes through here)."""
    try:
        parsed = make_url(url)
    except ArgumentError:  # not a database URL (journal:PATH): it holds no password
        return url
    return parsed.render_as_string(hide_password=True) if parsed.password is not None else url


def default_storage() -> str:
    """Optuna's default storage: `optuna.db` (SQLite) in the working directory."""
    return f"sqlite:///{Path.cwd() / 'optuna.db'}"


# Strict: a boolean is not a number (`epochs = true` is an error, not 1 epoch) and no text is
# read as a number; an integer still serves where a float is asked for.
class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class TaskSettings(_Section):
    """`[task]`: `name` plus the task's own options (checked against the task's signature)."""

    model_config = ConfigDict(frozen=True, extra="allow", strict=True)
    name: str = "mnist1d"
    n_train: int | None = Field(default=None, gt=0)

    def options(self) -> dict[str, Any]:
        return {k: v for k, v in self.model_dump().items() if k != "name"}


class ModelSettings(_Section):
    """`[model]`: `arch` plus the architecture's overrides (passed to `create_model`)."""

    model_config = ConfigDict(frozen=True, extra="allow", strict=True)
    arch: str = "lstm"

    def overrides(self) -> dict[str, Any]:
        return {k: v for k, v in self.model_dump().items() if k != "arch"}


class TrainSettings(_Section):
    epochs: int = Field(default=10, gt=0)
    batch_size: int = Field(default=64, gt=0)
    lr: float = Field(default=1e-3, gt=0)
    optimizer: Literal["adam", "adamw", "sgd", "rmsprop"] = "adam"
    momentum: float = Field(default=0.0, ge=0, lt=1)
    weight_decay: float = Field(default=0.0, ge=0)
    clip_norm: float | None = Field(default=None, gt=0)
    # Stop after this many epochs without a better validation metric; `epochs` is the cap.
    patience: int | None = Field(default=None, gt=0)
    seed: int = Field(default=0, ge=0, le=SEED_MAX)
    device: str = "auto"
    # fp32, or bf16 / fp16 autocast (harness.precision: where each runs natively, what stays fp32)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    eval_batch_size: int = Field(default=1024, gt=0)


class TrackingSettings(_Section):
    """`[tracking]`: what a run records besides its metrics (keys: docs/run-metrics.md)."""

    # Optimiser steps between gradient-statistics records (the first step always records);
    # 0 turns them off; unset: 100 on CPU, 500 on GPU (harness.gradients.default_every).
    grad_stats_every: int | None = Field(default=None, ge=0)
    checkpoint: bool = True  # the chosen epoch's state_dict as checkpoint.pt
    # The chosen epoch's model as an MLflow model (mlflow.pytorch): runs of `harness run` unless
    # false; of a sweep's final runs, each architecture's best seed ("best") or every one ("all",
    # or true); a search's trials never log one (seconds each), only checkpoint.pt.
    mlflow_model: Literal["best", "all"] | bool = "best"
    settings_file: bool = True  # the resolved experiment as settings.json
    learning_curve: bool = True  # learning_curve.png
    # Which runs draw their PNGs (learning_curve.png, gradflow.png): the ones people open, final
    # runs and `harness run` ("finals"); every run, a search's trials and seeds too ("all"); none
    # (false). The curves are the runs' metrics either way, and gradflow.csv is always written.
    plots: Literal["finals", "all"] | bool = "finals"
    # Gradient flow through time at the chosen checkpoint: gradflow_* metrics, gradflow.csv/.png
    gradflow: bool = True
    test_per_example: bool = True  # each test example's metric as test_per_example.npy (the report's bootstrap)
    system_metrics: bool = True  # MLflow's own system/* metrics (CPU, memory, disk, network, GPU)
    system_metrics_interval: float = Field(default=10.0, gt=0)  # seconds between samples


class ParamSpec(_Section):
    """One search dimension: `[a, b, c]` (categorical) or `{low, high, log?, step?}`."""

    choices: list[Any] | None = None
    low: int | float | None = None  # ints stay ints: an integer range samples integers
    high: int | float | None = None
    log: bool = False
    step: int | float | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_list(cls, v: Any) -> Any:
        if isinstance(v, list):
            return {"choices": v}
        for k in ("low", "high", "step"):  # one message, not one per member of `int | float`
            if isinstance(v, dict) and v.get(k) is not None and (isinstance(v[k], bool) or not isinstance(v[k], (int, float))):
                raise ValueError(f"{k} must be a number")
        return v

    @model_validator(mode="after")
    def _check(self) -> ParamSpec:
        if self.choices is not None:
            if not self.choices:
                raise ValueError("choices must not be empty")
        elif self.low is None or self.high is None or self.low >= self.high:
            raise ValueError("give a list of choices, or a range {low, high} with low < high")
        elif self.log and self.low <= 0:
            raise ValueError("a log range needs low > 0")
        return self

    @property
    def is_int(self) -> bool:
        return all(isinstance(v, int) for v in (self.low, self.high)) and (self.step is None or float(self.step).is_integer())


class SweepSettings(_Section):
    """`[sweep]`: the Optuna study. Without `n_trials` or `timeout` it runs 10 trials (a grid: all its points)."""

    n_trials: int | None = Field(default=None, gt=0)  # finished trials the study should hold
    timeout: float | None = Field(default=None, gt=0)  # seconds after which no trial starts
    sampler: Literal["tpe", "random", "grid", "qmc", "nsga2"] = "tpe"
    pruner: Literal["median", "hyperband", "none"] = "median"
    # With several architectures in the space: the same number of trials each, each searched by
    # a sampler of its own (a grid is equal by construction); false lets the sampler pick them.
    equal_budgets: bool = True
    # Give every trial's model the hidden size whose parameter count is nearest this (within 5%),
    # so architectures are compared at one size (harness.sweep.sizes); model.hidden_size is then
    # not searched.
    match_params: int | None = Field(default=None, gt=0)
    seed: int | None = Field(default=0, ge=0, le=SEED_MAX)
    # "val_<metric>:max" style keys of the trial result; empty means the task's own validation metric.
    objectives: list[str] = []
    # Optuna storage: sqlite:///…, postgresql://…, journal:PATH (or a path ending .log/.journal);
    # unset: optuna.db in the working directory.
    storage: str | None = None
    devices: list[str] = []  # cpu, mps, cuda, cuda:N; empty: train.device, or every visible GPU
    # Worker processes per device; "auto": one on a CPU, as many as fit on a GPU (harness.sweep.capacity).
    jobs: Literal["auto"] | PositiveInt = "auto"
    # Train each configuration with this many seeds (train.seed, +1, …); the objective is their mean.
    seeds: int = Field(default=1, gt=0)
    # Re-train each architecture's best configuration with this many fresh seeds, the same for every
    # architecture (paired): the final runs the report's comparison rests on. 0: none. "auto": as
    # many as detect the report's margin with 80% power (from the search's seed spread, so
    # `seeds` >= 2), between repeat_min and repeat_max.
    repeat: int | Literal["auto"] = Field(default=5)
    repeat_min: int = Field(default=5, ge=2)
    repeat_max: int = Field(default=20, ge=2)
    space: dict[str, ParamSpec] = {}
    space_by_arch: dict[str, dict[str, ParamSpec]] = {}

    @model_validator(mode="before")
    @classmethod
    def _default_budget(cls, v: Any) -> Any:
        # A grid's own size is its budget.
        if isinstance(v, dict) and v.get("n_trials") is None and v.get("timeout") is None and v.get("sampler") != "grid":
            v = {**v, "n_trials": 10}
        return v

    @field_validator("repeat", mode="before")
    @classmethod
    def _repeat(cls, v: Any) -> Any:
        if v != "auto" and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
            raise ValueError('a number of seeds (0 or more) or "auto"')
        return v

    @field_validator("jobs", mode="before")
    @classmethod
    def _jobs(cls, v: Any) -> Any:
        if v != "auto" and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            raise ValueError('a number of workers per device (1 or more) or "auto"')
        return v

    @model_validator(mode="after")
    def _auto_repeat(self) -> SweepSettings:
        if self.repeat == "auto" and self.seeds < 2:
            raise ValueError('repeat = "auto" chooses the final seeds from the search\'s seed spread: set seeds = 2 or more')
        if self.repeat_min > self.repeat_max:
            raise ValueError(f"repeat_min {self.repeat_min} is above repeat_max {self.repeat_max}")
        return self

    @field_validator("space", "space_by_arch")
    @classmethod
    def _dotted(cls, v: dict) -> dict:
        for key, spec in v.items():
            for k in spec if isinstance(spec, dict) else [key]:
                if k.split(".")[0] not in ("model", "task", "train"):
                    raise ValueError(f"{k!r}: a search key names model.*, task.* or train.*")
        return v


class Reference(_Section):
    """`[[reference]]`: a published figure the report prints beside harness's own: the value the
    cited source states for `family` on this task's `metric` (e.g. `accuracy`), never a figure read
    off a plot or recomputed."""

    family: str = Field(min_length=1)  # as the registry names families (RNN, LSTM, GRU, …), or a method harness does not run (1-NN DTW)
    metric: str = Field(min_length=1)
    value: float
    source: str = Field(min_length=1)  # the citation: authors, year, title or URL, and where in it
    note: str = ""  # how the published set-up differs from this experiment's


class ReportSettings(_Section):
    """`[report]`: how the report judges. `margin`: the smallest difference that matters, below
    which two architectures are called equivalent (points of a linear metric, e.g. 0.005 for half
    an accuracy point; a ratio above 1 for a log-scale one such as MSE); unset, the metric's own
    default (harness.tasks.metrics)."""

    margin: float | None = Field(default=None, gt=0)


class Experiment(_Section):
    name: str = Field(default="experiment", pattern=r"^[A-Za-z0-9_.\-]+$", max_length=NAME_MAX)
    description: str = ""
    task: TaskSettings = TaskSettings()
    model: ModelSettings = ModelSettings()
    train: TrainSettings = TrainSettings()
    tracking: TrackingSettings = TrackingSettings()
    sweep: SweepSettings = SweepSettings()
    report: ReportSettings = ReportSettings()
    reference: list[Reference] = []

    def with_values(self, values: dict[str, Any], source: str = "experiment") -> Experiment:
        """A new validated experiment with dotted keys (`train.lr`) set; `source` begins its errors."""
        raw = self.model_dump(exclude_none=True)
        for key, value in values.items():
            set_dotted(raw, key, value)
        return validate(raw, source)

    def flat(self) -> dict[str, Any]:
        """The resolved settings as dotted keys (the sweep's search space excluded)."""
        return {k: v for k, v in flatten(self.model_dump()).items() if not k.startswith(("sweep.space", "reference"))}


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    node = raw
    for p in parents:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise HarnessError(f"{key}: {p!r} is a value, not a section")
    node[leaf] = value


def parse_set(item: str) -> tuple[str, Any]:
    """`KEY=VALUE` with VALUE read as a TOML literal (bare words are strings)."""
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise HarnessError(f"--set {item!r}: expected KEY=VALUE, e.g. --set train.lr=0.01")
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text
    return key.strip(), value


def _one_line(e: ValidationError, source: str) -> str:
    err = e.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    got = "" if err["type"] == "missing" else f" (got {reprlib.repr(err['input'])})"
    more = f" [+{len(e.errors()) - 1} more]" if len(e.errors()) > 1 else ""
    return f"{source}: {loc}: {msg}{got}{more}"


def validate(raw: dict[str, Any], source: str = "experiment") -> Experiment:
    try:
        return Experiment.model_validate(raw)
    except ValidationError as e:
        raise HarnessError(_one_line(e, source)) from None


def experiment_path(path: str | Path | None = None) -> Path:
    """The experiment file a command names: a path, a bare name (`quickstart` means
    `experiments/quickstart.toml`), or the default."""
    p = Path(path) if path else DEFAULT_EXPERIMENT
    if not p.exists() and p.suffix != ".toml" and (Path("experiments") / f"{p}.toml").exists():
        p = Path("experiments") / f"{p}.toml"
    if not p.is_file():
        raise HarnessError(f"experiment file {str(p)!r} not found; pass a path to a .toml file (see experiments/)")
    return p


def load_experiment(path: str | Path | None = None, sets: list[str] | tuple[str, ...] = ()) -> Experiment:
    """Read an experiment file (default: experiments/quickstart.toml) and apply `--set`s.

    A bare name (`quickstart`) means `experiments/<name>.toml`.
    """
    p = experiment_path(path)
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise HarnessError(f"{p}: not UTF-8 text (byte {e.start}); save the experiment file as UTF-8") from None
    except tomllib.TOMLDecodeError as e:
        raise HarnessError(f"{p}: not valid TOML: {e}") from None
    raw.setdefault("name", p.stem)
    for item in sets:
        key, value = parse_set(item)
        set_dotted(raw, key, value)
    return validate(raw, str(p))
