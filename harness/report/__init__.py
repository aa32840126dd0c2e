"""Reports: a study's runs in MLflow → pandas → `reports/<study>.md` and PNG plots.

Reads only what tracking wrote (never a sweep's memory) and imports no torch.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from mlflow.tracking import MlflowClient

from harness.config import tracking_uri
from harness.errors import HarnessError


def open_store() -> MlflowClient:
    """A client on the tracking store; a missing SQLite file is an error, not a new empty store."""
    uri = tracking_uri()
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        raise HarnessError(f"no MLflow store at {uri}; run `harness sweep` here first or set MLFLOW_TRACKING_URI")
    return MlflowClient(tracking_uri=uri)


def trial_runs(study: str, client: MlflowClient | None = None) -> pd.DataFrame:
    """One row per trial run of `study`: `params.*`, `metrics.*` (last value), `tags.*`, status."""
    client = client or open_store()
    exp = client.get_experiment_by_name(study)
    if exp is None:
        raise HarnessError(f"no study {study!r} in the MLflow store {tracking_uri()}; run `harness sweep` first")
    rows, token = [], None
    while True:
        page = client.search_runs([exp.experiment_id], "tags.`harness.role` = 'trial'", max_results=1000, page_token=token)
        for r in page:
            row = {"run_id": r.info.run_id, "run_name": r.info.run_name, "status": r.info.status}
            row |= {f"params.{k}": v for k, v in r.data.params.items()}
            row |= {f"metrics.{k}": v for k, v in r.data.metrics.items()}
            row |= {f"tags.{k}": v for k, v in r.data.tags.items()}
            rows.append(row)
        token = page.token
        if not token:
            break
    if not rows:
        raise HarnessError(f"study {study!r} has no trial runs in {tracking_uri()}")
    return pd.DataFrame(rows)


def metric_name(runs: pd.DataFrame) -> tuple[str, bool]:
    """The task's metric (accuracy or mse) and whether larger is better, from the logged keys."""
    if "metrics.best_val_accuracy" in runs:
        return "accuracy", True
    if "metrics.best_val_mse" in runs:
        return "mse", False
    raise HarnessError("the study's runs hold no best_val_accuracy or best_val_mse; did any trial finish?")


def summary_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per architecture: its best finished trial by validation metric."""
    metric, maximize = metric_name(runs)
    done = runs[runs["status"] == "FINISHED"].copy()
    val, test = f"metrics.best_val_{metric}", f"metrics.test_{metric}"
    counts = runs.groupby("params.model.arch").size()
    done = done.sort_values(val, ascending=not maximize)
    best = done.groupby("params.model.arch", sort=False).head(1).set_index("params.model.arch")
    table = pd.DataFrame({
        "trials": counts,
        f"best val {metric}": best[val],
        f"test {metric}": best[test],
        "params": pd.to_numeric(best["params.n_params"], errors="coerce"),
        "train samples/s": best["metrics.train_samples_per_s"],
        "best run": best["run_name"],
    })
    table.index.name = "architecture"
    return table.sort_values(f"best val {metric}", ascending=not maximize, na_position="last")


def learning_curves(study: str, runs: pd.DataFrame, path: Path, client: MlflowClient | None = None) -> None:
    """Validation metric per epoch of each architecture's best trial."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    client = client or open_store()
    metric, _ = metric_name(runs)
    table = summary_table(runs)
    fig, ax = plt.subplots(figsize=(6, 4))
    for arch, row in table.dropna(subset=["best run"]).iterrows():
        run_id = runs.loc[runs["run_name"] == row["best run"], "run_id"].iloc[0]
        hist = client.get_metric_history(run_id, f"val_{metric}")
        ax.plot([m.step for m in hist], [m.value for m in hist], marker="o", label=arch)
    ax.set(xlabel="epoch", ylabel=f"validation {metric}", title=study)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(study: str, out_dir: str | Path = "reports") -> Path:
    """Write `<out_dir>/<study>.md` (and its curve plot); returns the markdown's path."""
    client = open_store()
    runs = trial_runs(study, client)
    table = summary_table(runs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    png = out / f"{study}_curves.png"
    learning_curves(study, runs, png, client)
    states = runs.get("tags.harness.state", pd.Series(dtype=str)).fillna("running").value_counts()
    task = runs["params.task.name"].iloc[0] if "params.task.name" in runs else "?"
    lines = [
        f"# Study `{study}`",
        "",
        f"Task `{task}`; {len(runs)} trials ({', '.join(f'{n} {s}' for s, n in states.items())}). "
        "Best validation metric per architecture; the test metric is that trial's, measured once "
        "after training and never used for selection.",
        "",
        table.to_markdown(floatfmt=".4g"),
        "",
        f"![validation curves]({png.name})",
        "",
        f"Source: MLflow store `{tracking_uri()}`, experiment `{study}`.",
        "",
    ]
    path = out / f"{study}.md"
    path.write_text("\n".join(lines))
    return path
