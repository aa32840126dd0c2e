"""The report's plots (matplotlib, no torch): each writes a PNG beside the markdown and returns
its (title, file name)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from mlflow.tracking import MlflowClient

from harness.report.runs import metric_name, num


def plots(study: str, runs: pd.DataFrame, table: pd.DataFrame, out: Path, client: MlflowClient) -> list[tuple[str, str]]:
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
    speed, quality = num(done, "metrics.train_samples_per_s"), num(done, f"metrics.best_val_{metric}")
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
