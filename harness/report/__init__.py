"""Reports: a study's runs in MLflow → pandas → `reports/<study>.md` and PNG plots.

Reads only what tracking wrote (never a sweep's memory) and imports no torch. The report
answers, per architecture: how well (best search trial by validation, its test metric, and
mean ± 95% CI over the final re-runs with fresh seeds), how fast (training and inference
speed, share of the device's matmul peak), and why not (pruned and failed trials with their
reasons, the gradient-through-time ratio that shows vanishing or exploding gradients).
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
from mlflow.tracking import MlflowClient

from harness.config import tracking_uri
from harness.errors import HarnessError

BIDIRECTIONAL = {"brnn", "bilstm", "bigru"}


def open_store() -> MlflowClient:
    """A client on the tracking store; a missing SQLite file is an error, not a new empty store."""
    uri = tracking_uri()
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        raise HarnessError(f"no MLflow store at {uri}; run `harness sweep` here first or set MLFLOW_TRACKING_URI")
    return MlflowClient(tracking_uri=uri)


def study_runs(study: str, client: MlflowClient, role: str = "trial") -> pd.DataFrame:
    """One row per run of `study` with `harness.role = role`: `params.*`, `metrics.*` (latest
    value), `tags.*`, `status`, `run_id`, `run_name`. Empty when there are none."""
    exp = client.get_experiment_by_name(study)
    if exp is None:
        raise HarnessError(f"no study {study!r} in the MLflow store {tracking_uri()}; run `harness sweep` first")
    rows, token = [], None
    while True:
        page = client.search_runs([exp.experiment_id], f"tags.`harness.role` = '{role}'", max_results=1000, page_token=token)
        for r in page:
            row = {"run_id": r.info.run_id, "run_name": r.info.run_name, "status": r.info.status}
            row |= {f"params.{k}": v for k, v in r.data.params.items()}
            row |= {f"metrics.{k}": v for k, v in r.data.metrics.items()}
            row |= {f"tags.{k}": v for k, v in r.data.tags.items()}
            rows.append(row)
        token = page.token
        if not token:
            break
    runs = pd.DataFrame(rows)
    if not runs.empty:
        runs["family"] = [family(a, b) for a, b in zip(runs["params.model.arch"], _col(runs, "params.model.bidirectional"), strict=True)]
    return runs


def trial_runs(study: str, client: MlflowClient | None = None) -> pd.DataFrame:
    """The study's search trials; an error when it has none."""
    runs = study_runs(study, client or open_store())
    if runs.empty:
        raise HarnessError(f"study {study!r} has no trial runs in {tracking_uri()}")
    return runs


def family(arch: str, bidirectional: object = None) -> str:
    """The report's families: RNN, LSTM, GRU, BRNN (every bidirectional model), MLP, or the name."""
    if arch in BIDIRECTIONAL or str(bidirectional).lower() == "true":
        return "BRNN"
    base = arch.split("-")[0] if arch != "seed-lstm" else "lstm"
    return {"rnn": "RNN", "lstm": "LSTM", "gru": "GRU", "mlp": "MLP"}.get(base, arch)


def _col(runs: pd.DataFrame, key: str) -> pd.Series:
    return runs[key] if key in runs else pd.Series([None] * len(runs), index=runs.index)


def _num(runs: pd.DataFrame, key: str) -> pd.Series:
    return pd.to_numeric(_col(runs, key), errors="coerce")


def metric_name(runs: pd.DataFrame) -> tuple[str, bool]:
    """The task's metric and whether larger is better, from the logged keys."""
    if "params.task_metric" in runs and runs["params.task_metric"].notna().any():
        metric = runs["params.task_metric"].dropna().iloc[0]
        return metric, metric != "mse"
    for metric, maximize in (("accuracy", True), ("symbol_accuracy", True), ("mse", False)):
        if f"metrics.best_val_{metric}" in runs:
            return metric, maximize
    raise HarnessError("the study's runs hold no best_val_<metric>; did any trial finish?")


def _state(runs: pd.DataFrame) -> pd.Series:
    return _col(runs, "tags.harness.state").fillna(runs["status"].str.lower())


def summary_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per architecture, from its best finished search trial by validation metric."""
    metric, maximize = metric_name(runs)
    val, test = f"metrics.best_val_{metric}", f"metrics.test_{metric}"
    states = _state(runs)
    done = runs[(runs["status"] == "FINISHED") & _num(runs, val).notna()]
    done = done.assign(_v=_num(done, val), _n=_num(done, "params.trial_number"))
    done = done.sort_values(["_v", "_n"], ascending=[not maximize, True], kind="stable")  # ties: earliest trial
    best = done.groupby("params.model.arch", sort=False).head(1).set_index("params.model.arch")
    by_arch = runs.groupby("params.model.arch")
    table = pd.DataFrame({
        "family": by_arch["family"].first(),
        "trials": by_arch.size(),
        "pruned": (states == "pruned").groupby(runs["params.model.arch"]).sum(),
        "failed": (states == "failed").groupby(runs["params.model.arch"]).sum(),
        f"best val {metric}": _num(best, val),
        f"test {metric}": _num(best, test),
        "params": _num(best, "params.n_params").round().astype("Int64"),
        "train samples/s": _num(best, "metrics.train_samples_per_s").round().astype("Int64"),
        "infer ms p50": _num(best, "metrics.infer_latency_ms_p50"),
        "peak fraction": _num(best, "metrics.peak_fraction"),
        "grad vanish ratio": _num(best, "metrics.grad_vanish_ratio"),
        "best run": _col(best, "run_name"),
    })
    table.index.name = "architecture"
    return table.sort_values(f"best val {metric}", ascending=not maximize, na_position="last")


def finals_table(finals: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Mean ± 95% CI (Student's t) of validation and test metric over each architecture's
    final re-runs with fresh seeds."""
    from scipy import stats

    done = finals[finals["status"] == "FINISHED"]
    rows = {}
    for arch, g in done.groupby("params.model.arch"):
        row = {"family": g["family"].iloc[0], "seeds": len(g)}
        for split in ("val", "test"):
            key = f"metrics.best_val_{metric}" if split == "val" else f"metrics.test_{metric}"
            x = _num(g, key).dropna()
            half = stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)) if len(x) > 1 else math.nan
            row[f"{split} {metric} mean"] = x.mean()
            row[f"{split} ±95% CI"] = half
        rows[arch] = row
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "architecture"
    return table.sort_values(f"test {metric} mean", ascending=metric == "mse") if rows else table


def failures_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Why trials did not finish: architecture × reason (pruned, diverged, an error type)."""
    states = _state(runs)
    reason = _col(runs, "tags.harness.failure").where(states == "failed", states)
    bad = runs.assign(reason=reason)[states.isin(["pruned", "failed"])]
    if bad.empty:
        return pd.DataFrame()
    return pd.crosstab(bad["params.model.arch"], bad["reason"]).rename_axis(index="architecture", columns=None)


def _plots(study: str, runs: pd.DataFrame, table: pd.DataFrame, out: Path, client: MlflowClient) -> list[tuple[str, str]]:
    """Learning curves of each architecture's best trial, and quality against speed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric, _ = metric_name(runs)
    made = []
    fig, ax = plt.subplots(figsize=(6, 4))
    for arch, row in table.dropna(subset=["best run"]).iterrows():
        run_id = runs.loc[runs["run_name"] == row["best run"], "run_id"].iloc[0]
        hist = sorted(client.get_metric_history(run_id, f"val_{metric}"), key=lambda m: m.step)
        ax.plot([m.step for m in hist], [m.value for m in hist], marker="o", label=arch)
    ax.set(xlabel="epoch", ylabel=f"validation {metric}", title=f"{study}: best trial per architecture")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / f"{study}_curves.png", dpi=100)
    plt.close(fig)
    made.append(("validation curves", f"{study}_curves.png"))

    done = runs[runs["status"] == "FINISHED"]
    speed, quality = _num(done, "metrics.train_samples_per_s"), _num(done, f"metrics.best_val_{metric}")
    if speed.notna().any():
        fig, ax = plt.subplots(figsize=(6, 4))
        for arch, idx in done.groupby("params.model.arch").groups.items():
            ax.scatter(speed[idx], quality[idx], label=arch, alpha=0.8)
        ax.set(xscale="log", xlabel="training samples/s (log)", ylabel=f"best validation {metric}",
               title=f"{study}: quality against speed, every finished trial")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / f"{study}_speed.png", dpi=100)
        plt.close(fig)
        made.append(("quality against speed", f"{study}_speed.png"))
    return made


def _md(table: pd.DataFrame) -> str:
    return table.to_markdown(floatfmt=".4g", missingval="—")


def write_report(study: str, out_dir: str | Path = "reports") -> Path:
    """Write `<out_dir>/<study>.md` and its PNG plots; returns the markdown's path."""
    client = open_store()
    runs = trial_runs(study, client)
    finals = study_runs(study, client, role="final")
    metric, maximize = metric_name(runs)
    table = summary_table(runs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plots = _plots(study, runs, table, out, client)

    first = runs.iloc[0]
    task, io = first.get("params.task.name", "?"), first.get("params.task_io", "?")
    states = _state(runs).value_counts()
    baseline = _num(runs, "params.task_baseline").dropna()
    lines = [
        f"# Study `{study}`",
        "",
        f"Task `{task}` ({io}); metric `{metric}` ({'higher' if maximize else 'lower'} is better); "
        f"{len(runs)} search trials ({', '.join(f'{n} {s}' for s, n in states.items())}).",
    ]
    if not baseline.empty:
        lines.append(f"The task's baseline (loss of the best predictor that ignores its input): {baseline.iloc[0]:.4g}.")
    lines += [
        "",
        "## Architectures",
        "",
        "Each architecture's best search trial by validation metric. The test metric is that "
        "trial's, measured once after training and never used for selection. Speeds are that "
        "trial's: training samples/s of its last epoch, one-batch inference latency, and the share "
        "of the device's measured fp32 matmul peak its training reached. `grad vanish ratio` is "
        "‖∂L/∂h_1‖ ÷ ‖∂L/∂h_T‖ of the top recurrent layer at its last gradient record: far below 1, "
        "the gradient vanishes through time; far above, it explodes.",
        "",
        _md(table),
        "",
    ]
    if not finals.empty:
        lines += [
            "## Final runs",
            "",
            "Each architecture's best configuration re-trained with fresh seeds: mean and 95% "
            "confidence half-width (Student's t) over the seeds.",
            "",
            _md(finals_table(finals, metric)),
            "",
        ]
    fails = failures_table(runs)
    if not fails.empty:
        lines += ["## Trials that did not finish", "", _md(fails), ""]
    lines += [f"![{title}]({name})" for title, name in plots]
    lines += ["", f"Generated by `harness report {study}` from the MLflow experiment `{study}`.", ""]
    path = out / f"{study}.md"
    path.write_text("\n".join(lines))
    return path
