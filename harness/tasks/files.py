"""`files`: a task from the user's own sequences, no code: a table in long format (CSV or Parquet,
one row per time step) or NumPy arrays (`.npz`).

A table has a sequence id column (`id_column`), an optional order column (`time_column`; else the
file's row order), feature columns (`feature_columns`; default every other column), and a label
column (`label_column`). A label constant within every sequence makes a many-to-one task; one
that varies within a sequence, a many-to-many task (`io` states which, or `auto` infers it). A
label of integers, booleans or text is a class (`target = "auto"`; classes in sorted order), a
label of floats a value to regress (MSE). An `.npz` holds `x` (N × T × F, or N × T for one
feature), `y` (N: a label per sequence, or N × T: per step).

Sequences may differ in length: they are zero-padded after their last step and the task carries
each one's length (`Task.len_*`), per-step targets padded with what the loss skips.

Splits are made by sequence, never by row: the test split first (`test_size` with `test_seed`,
or the table's own `split_column` with `train` / `test` values), stratified by class for
many-to-one classification, then validation carved from the rest (`val_size` with `split_seed`,
so a new validation split never moves the test set).
Features are standardised with the training split's mean and standard deviation only. Every
mistake in a file is one line naming the column or array and what is wrong.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from harness.errors import HarnessError
from harness.tasks import Task, mean_baseline, positive_int, register_task
from harness.tasks.recall import answer_baseline

FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".npz": "npz"}
IOS = ("auto", "many-to-one", "many-to-many")
TARGETS = ("auto", "class", "value")


def _fail(message: str):
    raise HarnessError(message)


def _show(value) -> str:
    """A value from the file as the user wrote it: 3, not np.int64(3)."""
    return repr(value.item() if isinstance(value, np.generic) else value)


def read_table(path: Path, fmt: str) -> pd.DataFrame:
    try:
        return pd.read_csv(path) if fmt == "csv" else pd.read_parquet(path)
    except ImportError as e:  # Parquet without pyarrow
        _fail(f"task.path: reading {path.name} needs {e.name or 'pyarrow'}: pip install 'harness[files]'")
    except Exception as e:
        _fail(f"task.path: {path} is not a readable {fmt.upper()} file: {' '.join(str(e).split())[:200]}")


def _column(df: pd.DataFrame, name, field: str) -> None:
    if name not in df.columns:
        _fail(f"task.{field}: column {name!r} is not in the file; it has {', '.join(map(str, df.columns))}")


def table_sequences(df: pd.DataFrame, *, id_column, time_column, feature_columns, label_column):
    """(ids, [x (T_i, F) float arrays], [y: one label or (T_i,) labels], feature names) from a
    long table, each sequence in time order."""
    for name, field in ((id_column, "id_column"), (label_column, "label_column")):
        _column(df, name, field)
    if time_column is not None:
        _column(df, time_column, "time_column")
    taken = {id_column, label_column, time_column}
    features = list(feature_columns) if feature_columns else [c for c in df.columns if c not in taken]
    for name in features:
        _column(df, name, "feature_columns")
    if not features:
        _fail("task.feature_columns: the file has no columns besides the id, time and label; add feature columns")
    for name in [*features, label_column, id_column]:
        missing = df[name].isna()
        if missing.any():
            row = int(np.flatnonzero(missing.to_numpy())[0])
            _fail(f"task: column {name!r} has {int(missing.sum())} missing value(s) (NaN), the first in data row {row + 1}; "
                  "fill or drop them")
    for name in features:
        if not pd.api.types.is_numeric_dtype(df[name]) or pd.api.types.is_bool_dtype(df[name]):
            bad = df[name][pd.to_numeric(df[name], errors="coerce").isna()]
            example = repr(bad.iloc[0]) if len(bad) else df[name].dtype
            _fail(f"task: feature column {name!r} is not numeric ({example} in it); convert it, or leave it out of "
                  "task.feature_columns")
        infinite = ~np.isfinite(df[name].to_numpy(dtype=float))
        if infinite.any():
            _fail(f"task: feature column {name!r} holds infinite values, the first in data row {int(np.flatnonzero(infinite)[0]) + 1}; "
                  "fill or drop them")
    label_values = df[label_column]
    if label_values.map(type).nunique() > 1:
        kinds = ", ".join(sorted(label_values.map(lambda v: type(v).__name__).unique()))
        _fail(f"task: label column {label_column!r} mixes types ({kinds}); make it all numbers or all text")
    order = [id_column] + ([time_column] if time_column is not None else [])
    df = df.reset_index(drop=True).rename_axis("_row").reset_index()
    df = df.sort_values([*order, "_row"], kind="stable")
    if time_column is not None:
        dup = df.duplicated([id_column, time_column])
        if dup.any():
            first = df[dup].iloc[0]
            _fail(f"task.time_column: sequence {_show(first[id_column])} has two rows at {time_column} = {_show(first[time_column])}")
    ids, xs, ys = [], [], []
    for key, rows in df.groupby(id_column, sort=True):
        if len(rows) < 2:
            _fail(f"task: sequence {_show(key)} ({id_column}) has {len(rows)} step; a sequence needs at least 2")
        ids.append(key)
        xs.append(rows[features].to_numpy(dtype=np.float32))
        ys.append(rows[label_column].to_numpy())
    return ids, xs, ys, features


def npz_sequences(path: Path):
    try:
        with np.load(path, allow_pickle=False) as data:  # no pickled objects: a data file runs no code
            arrays = {k: data[k] for k in data.files}
    except ValueError as e:
        if "Object arrays" in str(e):
            _fail(f"task.path: {path.name} holds an object array (sequences of different lengths?); save them zero-padded "
                  "as x (N × T × F) with each one's length in `lengths`")
        _fail(f"task.path: {path} is not a readable .npz file: {' '.join(str(e).split())[:200]}")
    except Exception as e:
        _fail(f"task.path: {path} is not a readable .npz file: {' '.join(str(e).split())[:200]}")
    for key in ("x", "y"):
        if key not in arrays:
            _fail(f"task.path: {path.name} has no array {key!r}; it has {', '.join(arrays) or 'none'}")
    x, y = arrays["x"], arrays["y"]
    if x.ndim not in (2, 3) or not np.issubdtype(x.dtype, np.number):
        _fail(f"task.path: x has shape {x.shape} ({x.dtype}); it must be numbers, N × T × F (or N × T for one feature)")
    xs = [np.asarray(s, dtype=np.float32) for s in x]
    xs = [s[:, None] if s.ndim == 1 else s for s in xs]
    if len(xs) != len(y):
        _fail(f"task.path: x holds {len(xs)} sequences but y {len(y)} labels; give one label (or one row of labels) per sequence")
    if y.ndim == 2 and y.shape[1] != x.shape[1]:
        _fail(f"task.path: y has {y.shape[1]} labels per sequence but x {x.shape[1]} steps; a label per step needs one per step")
    if "lengths" in arrays:
        lengths = np.asarray(arrays["lengths"])
        if (not np.issubdtype(lengths.dtype, np.integer) or len(lengths) != len(xs) or (lengths < 1).any()
                or any(n > len(s) for n, s in zip(lengths, xs, strict=True))):
            _fail("task.path: lengths must hold one integer per sequence, each from 1 to that sequence's padded length")
        xs = [s[:n] for s, n in zip(xs, lengths, strict=True)]
    ys = [np.asarray(v) for v in y]
    if "lengths" in arrays and y.ndim == 2:
        ys = [v[:n] for v, n in zip(ys, lengths, strict=True)]
    for i, s in enumerate(xs):
        if s.ndim != 2:
            _fail(f"task.path: x[{i}] has {s.ndim} dimensions; each sequence must be T × F (or T for one feature)")
        if len(s) < 2:
            _fail(f"task.path: sequence {i} has {len(s)} step; a sequence needs at least 2")
        if not np.isfinite(s).all():
            _fail(f"task.path: x[{i}] holds NaN or infinite values; fill or drop them")
    if len({s.shape[1] for s in xs}) > 1:
        _fail("task.path: the sequences in x have different numbers of features; every step needs the same features")
    return list(range(len(xs))), xs, ys, [f"x{i}" for i in range(xs[0].shape[1])]


def _labels(ys: list[np.ndarray], ids: list, io: str, target: str, label: str):
    """(io, is_class, classes, per-sequence labels (each a scalar or a (T_i,) array))."""
    varies = [i for i, v in zip(ids, ys, strict=True) if v.ndim and len(np.unique(v)) > 1]
    if io == "many-to-many" and not all(v.ndim for v in ys):
        _fail(f"task.io: 'many-to-many' needs a label per step, but {label!r} holds one per sequence; set io = 'many-to-one'")
    if io == "auto":
        io = "many-to-many" if varies else "many-to-one"
    if io == "many-to-one" and varies:
        _fail(f"task: label {label!r} varies inside sequence {_show(varies[0])}, but io = 'many-to-one' needs one label per "
              "sequence; set io = 'many-to-many' or fix the labels")
    flat = np.concatenate([np.atleast_1d(v) for v in ys])
    numeric = np.issubdtype(flat.dtype, np.number) or np.issubdtype(flat.dtype, np.bool_)
    floats = np.issubdtype(flat.dtype, np.floating) and not np.all(np.mod(flat, 1) == 0)
    is_class = target == "class" or (target == "auto" and not floats)
    if target == "value" and not numeric:
        _fail(f"task.target: label {label!r} holds text ({_show(flat[0])}); a value to regress must be a number")
    if not is_class and not np.isfinite(flat.astype(float)).all():
        _fail(f"task: label {label!r} holds NaN or infinite values; fill or drop them")
    classes = sorted(np.unique(flat).tolist(), key=lambda v: (str(type(v)), v)) if is_class else []
    per_seq = [v if io == "many-to-many" else (v.flat[0] if v.ndim else v.item()) for v in ys]
    return io, is_class, classes, per_seq


def split_indices(n: int, labels, size, seed: int, field: str) -> tuple[np.ndarray, np.ndarray]:
    """(rest, held) indices: `size` (a fraction or a count) held out, stratified by `labels` when given."""
    if isinstance(size, bool) or not isinstance(size, (int, float)):
        _fail(f"task.{field}: must be a fraction in (0, 1) or a count, got {size!r}")
    n_held = int(round(size * n)) if isinstance(size, float) else int(size)
    if not 0 < n_held < n:
        _fail(f"task.{field}: {size!r} leaves no train or no held-out sequences of {n}")
    rng = np.random.default_rng(seed)
    if labels is None:
        perm = rng.permutation(n)
        return np.sort(perm[n_held:]), np.sort(perm[:n_held])
    labels = np.asarray(labels)
    held = []
    groups = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    quotas = [len(g) * n_held / n for g in groups]
    counts = [int(q) for q in quotas]
    for i in sorted(range(len(groups)), key=lambda i: quotas[i] - counts[i], reverse=True)[: n_held - sum(counts)]:
        counts[i] += 1  # largest remainders: the held-out share of each class as close to the whole's as counts allow
    for g, k in zip(groups, counts, strict=True):
        held.extend(rng.permutation(g)[:k].tolist())
    held = np.sort(np.array(held, dtype=int))
    return np.setdiff1d(np.arange(n), held), held


def pad(xs: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(N, T, F) zero-padded after each sequence's last step, T the longest; each one's length,
    or None when all have T."""
    lengths = torch.tensor([len(s) for s in xs])
    x = torch.zeros(len(xs), int(lengths.max()), xs[0].shape[1])
    for i, s in enumerate(xs):
        x[i, : len(s)] = torch.tensor(s)
    return x, (None if bool((lengths == lengths[0]).all()) else lengths)


def targets(labels: list, lengths: torch.Tensor | None, io: str, index: dict | None) -> torch.Tensor:
    """Class indices (`index`) or float values, one per sequence or (many-to-many) one per step,
    padded after each sequence's end with what the loss skips: -100 for classes, NaN for values."""
    if io == "many-to-one":
        if index is not None:
            return torch.tensor([index[v] for v in labels], dtype=torch.long)
        return torch.tensor(np.array(labels, dtype=np.float32))[:, None]
    steps = max(len(v) for v in labels)
    y = torch.full((len(labels), steps), -100 if index is not None else float("nan"),
                   dtype=torch.long if index is not None else torch.float32)
    for i, v in enumerate(labels):
        y[i, : len(v)] = torch.tensor([index[c] for c in v] if index is not None else np.asarray(v, dtype=np.float32))
    return y if index is not None else y.unsqueeze(-1)


def standardise(x: torch.Tensor, lengths: torch.Tensor | None, train: np.ndarray) -> torch.Tensor:
    """Each feature scaled by the training sequences' mean and standard deviation over their real
    steps; padding stays 0."""
    real = torch.ones(x.shape[:2], dtype=torch.bool) if lengths is None else torch.arange(x.shape[1]) < lengths[:, None]
    steps = x[train][real[train]]  # (real steps of the training split, F)
    mean, std = steps.mean(0), steps.std(0).clamp_min(1e-8)  # a constant feature stays 0, not NaN
    return torch.where(real.unsqueeze(-1), (x - mean) / std, 0.0)


@register_task
def files(
    path: str = "", io: str = "auto", target: str = "auto", id_column: str = "id", time_column: str | None = None,
    label_column: str = "label", feature_columns: list | None = None, split_column: str | None = None,
    test_size: float | int = 0.2, test_seed: int = 0, val_size: float | int = 0.1, split_seed: int = 0,
) -> Task:
    """Your own sequences from a file, many-to-one: T steps × F features → a class or a value per sequence (a label per step: many-to-many), from a CSV / Parquet table or an .npz.

    See the module doc (and docs/tasks.md) for the file layouts; `io` and `target` are inferred
    from the label unless set. Sequences may differ in length (zero-padded, with their lengths).
    """
    if not path:
        _fail("task.path: name the file (a .csv, .parquet or .npz), e.g. task.path = 'data/series.csv'")
    file = Path(path).expanduser()
    fmt = FORMATS.get(file.suffix.lower())
    if fmt is None:
        _fail(f"task.path: {file.name!r} is not a .csv, .parquet or .npz file")
    if not file.is_file():
        _fail(f"task.path: {file} does not exist")
    if io not in IOS:
        _fail(f"task.io: must be one of {', '.join(IOS)}, got {io!r}")
    if target not in TARGETS:
        _fail(f"task.target: must be one of {', '.join(TARGETS)}, got {target!r}")
    positive_int("split_seed", split_seed, 0)
    positive_int("test_seed", test_seed, 0)
    splits = None
    if fmt == "npz":
        ids, xs, ys, _ = npz_sequences(file)
    else:
        df = read_table(file, fmt)
        _column(df, id_column, "id_column")
        if split_column is not None:
            _column(df, split_column, "split_column")
            bad = set(df[split_column].astype(str)) - {"train", "test"}
            if bad:
                _fail(f"task.split_column: {split_column!r} holds {sorted(bad)[0]!r}; its values must be 'train' or 'test'")
            per_id = df.groupby(id_column)[split_column].nunique()
            if (per_id > 1).any():
                _fail(f"task.split_column: sequence {_show(per_id[per_id > 1].index[0])} appears in both train and test; "
                      "a sequence belongs to one split")
            splits = df.groupby(id_column)[split_column].first().astype(str)
            df = df.drop(columns=[split_column])
        ids, xs, ys, _ = table_sequences(df, id_column=id_column, time_column=time_column,
                                         feature_columns=feature_columns, label_column=label_column)
    io, is_class, classes, labels = _labels(ys, ids, io, target, label_column if fmt != "npz" else "y")
    x, lengths = pad(xs)
    y = targets(labels, lengths, io, {c: i for i, c in enumerate(classes)} if is_class else None)
    strata = y.numpy() if is_class and io == "many-to-one" else None
    if splits is not None:
        is_test = np.array([splits[i] == "test" for i in ids])
        rest, test = np.flatnonzero(~is_test), np.flatnonzero(is_test)
        if not len(test) or not len(rest):
            _fail(f"task.split_column: {split_column!r} puts every sequence in one split; it needs train and test sequences")
    else:
        rest, test = split_indices(len(x), strata, test_size, test_seed, "test_size")
    train_idx, val_idx = split_indices(len(rest), None if strata is None else strata[rest], val_size, split_seed, "val_size")
    train, val = rest[train_idx], rest[val_idx]
    x = standardise(x, lengths, train)
    which = (("train", train), ("val", val), ("test", test))
    parts = {f"x_{k}": x[i] for k, i in which} | {f"y_{k}": y[i] for k, i in which}
    if lengths is not None:
        parts |= {f"len_{k}": lengths[i] for k, i in which}
    if is_class:
        baseline = answer_baseline(parts["y_train"], parts["y_val"], len(classes)) if io == "many-to-many" else None
        out = dict(output_size=len(classes), loss="cross_entropy", metric="accuracy", baseline=baseline)
    else:
        out = dict(output_size=1, loss="mse", metric="mse", baseline=mean_baseline(parts["y_train"], parts["y_val"]))
    return Task(name="files", io=io, **parts, input_size=x.shape[-1], seq_len=x.shape[1], **out)
