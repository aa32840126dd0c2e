"""A logged run's settings back as an experiment: `harness run --from-run RUN_ID`.

Every training run logs its resolved settings as dotted `task.*`, `model.*`, `train.*` and
`tracking.*` params (harness.tracking.run_params), each value as Python's `str()` writes it;
`ast.literal_eval` reads them back (`0.001`, `True`, `None`, `[1, 2]`), and what is no literal,
or what the settings declare text (`train.device`), stays text. The study tag names the
experiment. So the settings are the run's as it ran: the task's defaults filled in, the device
and gradient-statistics cadence it used, a final run's seed. A seed group's run (a sweep trial
with `sweep.seeds` > 1) holds its first seed's. `--set`s apply on top, then the whole is validated
as an experiment file is. Reading changes nothing in the store.
"""

from __future__ import annotations

import ast
from typing import Any

from harness.checks import check_tracking, sqlite_path
from harness.config import Experiment, masked, parse_set, set_dotted, tracking_uri, validate
from harness.errors import HarnessError

SECTIONS = ("task", "model", "train", "tracking")


def _text_fields() -> set[str]:
    """The dotted keys the settings declare as plain text: never read as a literal."""
    return {f"{section}.{name}" for section in SECTIONS
            for name, field in Experiment.model_fields[section].annotation.model_fields.items() if field.annotation is str}


def value_of(key: str, text: str) -> Any:
    """A logged param's value as it was before `str()`: a Python literal, else the text itself."""
    if key in _text_fields():
        return text
    try:
        return ast.literal_eval(text)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return text


def settings_of(params: dict[str, str]) -> dict[str, Any]:
    """The nested settings in a run's params (its other params, sizes and families, left out)."""
    raw: dict[str, Any] = {}
    for key, text in params.items():
        if key.split(".")[0] in SECTIONS:
            set_dotted(raw, key, value_of(key, text))
    return raw


def experiment_from_run(run_id: str, sets: list[str] | tuple[str, ...] = ()) -> Experiment:
    """The experiment run `run_id` trained, `--set`s applied: a one-line HarnessError when the
    store holds no such run, or the run is not a harness training run."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    check_tracking()
    uri = tracking_uri()
    path = sqlite_path(uri)
    if path is not None and not path.exists():  # not created by looking
        raise HarnessError(f"--from-run: no run {run_id!r}: there is no MLflow store at {path}")
    client = MlflowClient(tracking_uri=uri)
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise HarnessError(f"--from-run: no run {run_id!r} in the MLflow store {masked(uri)}") from None
    tags = run.data.tags
    role = tags.get("harness.role")
    if role is None:
        raise HarnessError(f"--from-run: run {run_id!r} is not a harness run (it has no harness.role tag)")
    if role == "study":
        raise HarnessError(f"--from-run: run {run_id!r} is study {tags.get('harness.study')!r}'s parent run, "
                           "not a training run; name one of its trials or final runs")
    raw = settings_of(run.data.params)
    if not {"task", "model", "train"} <= raw.keys():
        raise HarnessError(f"--from-run: run {run_id!r} logged no settings to train again "
                           "(task.*, model.*, train.* params); it may have failed before training")
    raw["name"] = tags.get("harness.study") or client.get_experiment(run.info.experiment_id).name
    for item in sets:
        key, value = parse_set(item)
        set_dotted(raw, key, value)
    return validate(raw, f"run {run_id}")
