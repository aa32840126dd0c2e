"""The report's tables, each a function from run DataFrames (harness.report.runs) to a DataFrame
whose index is the architecture. Ranked by the metric's logged direction."""

from __future__ import annotations

import math

import pandas as pd

from harness.report.runs import col, metric_name, num, state


def summary_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per architecture, from its best finished search trial by validation metric."""
    metric, maximize = metric_name(runs)
    val, test = f"metrics.best_val_{metric}", f"metrics.test_{metric}"
    states = state(runs)
    done = runs[(runs["status"] == "FINISHED") & num(runs, val).notna()]
    done = done.assign(_v=num(done, val), _n=num(done, "params.trial_number"))
    done = done.sort_values(["_v", "_n"], ascending=[not maximize, True], kind="stable")  # ties: earliest trial
    best = done.groupby("params.model.arch", sort=False).head(1).set_index("params.model.arch")
    by_arch = runs.groupby("params.model.arch")
    table = pd.DataFrame({
        "family": by_arch["family"].first(),
        "trials": by_arch.size(),
        "pruned": (states == "pruned").groupby(runs["params.model.arch"]).sum(),
        "failed": (states == "failed").groupby(runs["params.model.arch"]).sum(),
        f"best val {metric}": num(best, val),
        f"test {metric}": num(best, test),
        "params": num(best, "params.n_params").round().astype("Int64"),
        "train samples/s": num(best, "metrics.train_samples_per_s").round().astype("Int64"),
        "infer ms p50": num(best, "metrics.infer_latency_ms_p50"),
        "peak fraction": num(best, "metrics.peak_fraction"),
        "grad vanish ratio": num(best, "metrics.grad_vanish_ratio"),
        "best run": col(best, "run_name"),
    })
    table.index.name = "architecture"
    return table.sort_values(f"best val {metric}", ascending=not maximize, na_position="last")

def finals_table(finals: pd.DataFrame) -> pd.DataFrame:
    """Mean ± 95% CI (Student's t) of validation and test metric over each architecture's
    final re-runs with fresh seeds."""
    from scipy import stats

    metric, maximize = metric_name(finals)
    done = finals[finals["status"] == "FINISHED"]
    rows = {}
    for arch, g in done.groupby("params.model.arch"):
        row = {"family": g["family"].iloc[0], "seeds": len(g)}
        for split in ("val", "test"):
            key = f"metrics.best_val_{metric}" if split == "val" else f"metrics.test_{metric}"
            x = num(g, key).dropna()
            half = stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)) if len(x) > 1 else math.nan
            row[f"{split} {metric} mean"] = x.mean()
            row[f"{split} ±95% CI"] = half
        rows[arch] = row
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "architecture"
    return table.sort_values(f"test {metric} mean", ascending=not maximize) if rows else table

def failures_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Why trials did not finish: architecture × reason (pruned, diverged, an error type)."""
    states = state(runs)
    reason = col(runs, "tags.harness.failure").where(states == "failed", states)
    bad = runs.assign(reason=reason)[states.isin(["pruned", "failed"])]
    if bad.empty:
        return pd.DataFrame()
    return pd.crosstab(bad["params.model.arch"], bad["reason"]).rename_axis(index="architecture", columns=None)
