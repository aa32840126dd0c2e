"""The report's tables, each a function from run DataFrames (harness.report.runs) to a DataFrame
whose index is the architecture, ranked by the metric's logged direction.

The headline is the final runs' test metric (fresh seeds, shared by every architecture); the
search's best validation value is a selection score, optimistic by construction (a maximum over
epochs and trials on one validation set), and labelled so.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from harness.report import stats
from harness.report.runs import col, metric_name, num, state

# Columns shown with their own number format (the rest: 4 significant figures).
FORMATS = {"grad flow rate": "#.3g", "grad flow rate (bwd)": "#.3g"}


def best_trials(runs: pd.DataFrame) -> pd.DataFrame:
    """Each architecture's best finished search trial by validation metric (ties: earliest)."""
    metric, maximize = metric_name(runs)
    val = f"metrics.best_val_{metric}"
    done = runs[(runs["status"] == "FINISHED") & num(runs, val).notna()]
    done = done.assign(_v=num(done, val), _n=num(done, "params.trial_number"))
    done = done.sort_values(["_v", "_n"], ascending=[not maximize, True], kind="stable")
    return done.groupby("params.model.arch", sort=False).head(1).set_index("params.model.arch")


def search_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per architecture: its trials, and its best search trial's figures."""
    metric, maximize = metric_name(runs)
    best = best_trials(runs)
    states = state(runs)
    by_arch = runs.groupby("params.model.arch")
    table = pd.DataFrame({
        "family": by_arch["family"].first(),
        "trials": by_arch.size(),
        "pruned": (states == "pruned").groupby(runs["params.model.arch"]).sum(),
        "failed": (states == "failed").groupby(runs["params.model.arch"]).sum(),
        f"selection score (val {metric})": num(best, f"metrics.best_val_{metric}"),
        "params": num(best, "params.n_params").round().astype("Int64"),
        "kernel": col(best, "params.kernel"),
        "train samples/s": speed_cells(best),
        "train GFLOP/s": num(best, "metrics.train_gflops_per_s"),
        "infer ms p50": num(best, "metrics.infer_latency_ms_p50"),
        "peak fraction": num(best, "metrics.peak_fraction"),
        "grad flow rate": num(best, "metrics.gradflow_rate"),
        "grad flow rate (bwd)": num(best, "metrics.gradflow_rate_bwd"),
        "best run": col(best, "run_name"),
    })
    table.index.name = "architecture"
    return table.sort_values(f"selection score (val {metric})", ascending=not maximize, na_position="last")


def speed_cells(runs: pd.DataFrame) -> pd.Series:
    """Training samples/s as whole numbers; a run whose every measured epoch shared the cores with
    other work (`harness.contended`) is marked unreliable, not published as a figure."""
    rates = num(runs, "metrics.train_samples_per_s")
    contended = col(runs, "tags.harness.contended") == "true"
    cells = [None if r != r else f"{r:.0f}" + (" (contended)" if c else "") for r, c in zip(rates, contended, strict=True)]
    return pd.Series(cells, index=runs.index, dtype=object)


def comparison_table(finals: pd.DataFrame, per_example: Callable[[list[str]], np.ndarray | None]) -> pd.DataFrame:
    """The final runs compared: per architecture the test metric's mean over seeds with a 95%
    bootstrap interval over seeds and test examples (`per_example(run_ids)` gives the seeds ×
    examples matrix, or None), and against the best architecture, over the seeds both ran: a
    paired test (t, or Wilcoxon from 6 seeds), Holm-corrected, its verdict, and the probability
    that a run of the best beats a run of this one. No verdict below 3 shared seeds."""
    if finals.empty:
        return pd.DataFrame()
    metric, maximize = metric_name(finals)
    test = f"test {metric}"
    scores = {arch: g.assign(_t=num(g, f"metrics.test_{metric}")).dropna(subset=["_t"]).set_index("seed")
              for arch, g in finals.groupby("params.model.arch", sort=False)}
    means = {arch: g["_t"].mean() for arch, g in scores.items()}
    best = (max if maximize else min)(means, key=means.get)
    rows, raw = {}, {}
    for arch, g in scores.items():
        low, high = stats.interval(g["_t"].to_numpy(), per_example(list(g["run_id"])))
        rows[arch] = {"family": g["family"].iloc[0], test: means[arch], "95% interval": f"{low:.3g} – {high:.3g}" if low == low else "—",
                      "seeds": len(g), "budget-limited": _share(num(g, "metrics.budget_limited")),
                      "best epoch (median)": num(g, "metrics.best_epoch").median()}
        shared = g.index.intersection(scores[best].index)
        if arch != best and len(shared) >= stats.MIN_SEEDS:
            raw[arch] = stats.paired_test(scores[best].loc[shared, "_t"].to_numpy(), g.loc[shared, "_t"].to_numpy())
        if arch != best and len(g) and len(scores[best]):
            rows[arch]["P(best beats it)"] = stats.prob_improvement(scores[best]["_t"].to_numpy(), g["_t"].to_numpy(), maximize)
    adjusted = dict(zip(raw, stats.holm([p for _, p in raw.values()]), strict=True))
    for arch, row in rows.items():
        if arch == best:
            row["verdict"] = "best" if len(scores[arch]) >= stats.MIN_SEEDS else "— (under 3 seeds)"
        elif arch in adjusted:
            p, name = adjusted[arch], raw[arch][0]
            row["verdict"] = f"{'worse' if p < 0.05 else 'tied with best'} (p = {p:.2g}, {name}, Holm)"
        else:
            row["verdict"] = "— (under 3 shared seeds)"
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "architecture"
    order = ["family", test, "95% interval", "seeds", "verdict", "P(best beats it)", "budget-limited", "best epoch (median)"]
    table = table[[c for c in order if c in table]]
    return table.sort_values(test, ascending=not maximize)


def _share(flags: pd.Series) -> str:
    """`yes (k/n)` when at least half the runs ran to the cap still improving."""
    flags = flags.dropna()
    if flags.empty:
        return "—"
    k = int((flags > 0).sum())
    return f"{'yes' if 2 * k >= len(flags) else 'no'} ({k}/{len(flags)})"


def failures_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Why trials did not finish: architecture × reason (pruned, diverged, an error type)."""
    states = state(runs)
    reason = col(runs, "tags.harness.failure").where(states == "failed", states)
    bad = runs.assign(reason=reason)[states.isin(["pruned", "failed"])]
    if bad.empty:
        return pd.DataFrame()
    return pd.crosstab(bad["params.model.arch"], bad["reason"]).rename_axis(index="architecture", columns=None)
