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
from harness.report.runs import col, metric_margin, metric_name, metric_scale, num, state

# Columns shown with their own number format (the rest: 4 significant figures).
FORMATS = {"grad flow rate": "#.3g", "grad flow rate (bwd)": "#.3g", "sd over seeds": ".2g", "clip share": ".2f"}


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


def families_table(runs: pd.DataFrame, finals: pd.DataFrame,
                   per_example: Callable[[list[str]], np.ndarray | None], margin: float | None = None,
                   curve: Callable[[str], pd.Series] | None = None) -> pd.DataFrame:
    """The study's answer, one row per architecture (its family beside it), ranked by the final
    runs' mean test metric (geometric on a log-scale metric): how well (a 95% interval over seeds
    and the test set, `per_example(run_ids)` giving the seeds × examples matrix or None; against
    the best over the seeds both ran, a `stats.Verdict`: worse, equivalent within `margin` (the
    metric's default when None), or inconclusive, from 3 shared seeds; and the probability that a
    run of the best beats a run of this one), at what cost (parameters, analytic FLOPs, the final
    runs' median training speed, its share of the device's peak and the kernel), why (best epoch,
    budget-limited, gradient-flow rate) and how the search went (trials run, pruned, diverged,
    failed, interrupted). Budget-limited: from each run's validation curve (`curve(run_id)`) by
    `stats.still_improving` at the margin; without `curve`, the runs' own `budget_limited` flags.
    Without final runs each architecture's best search trial stands in, one seed, no verdict. The
    table's `attrs` hold the scale, margin and the input-blind baseline."""
    metric, maximize = metric_name(runs)
    scale = metric_scale(runs)
    margin = metric_margin(runs) if margin is None else margin
    if finals.empty:
        finals = best_trials(runs).reset_index().assign(seed=lambda d: num(d, "params.train.seed"))
    test = f"test {metric}"
    scores = {arch: g.assign(_t=num(g, f"metrics.test_{metric}")).dropna(subset=["_t"]).set_index("seed")
              for arch, g in finals.groupby("params.model.arch", sort=False)}
    scores = {arch: g[~g.index.duplicated()] for arch, g in scores.items() if len(g)}  # one run per seed
    if not scores:
        return pd.DataFrame()
    means = {arch: stats.centre(g["_t"], scale) for arch, g in scores.items()}
    intervals = {arch: stats.interval(g["_t"].to_numpy(), per_example(list(g["run_id"])), scale) for arch, g in scores.items()}
    baseline = num(runs, "params.task_metric_baseline").dropna()
    baseline = float(baseline.iloc[0]) if len(baseline) else None
    learned = {a: stats.learned(means[a], intervals[a], baseline, maximize) for a in means}
    best = (max if maximize else min)([a for a in means if learned[a]] or means, key=means.get)
    scores = {best: scores[best]} | scores  # the best first: on a tie in the mean it stays the first row
    rows, raw = {}, {}
    for arch, g in scores.items():
        low, high = intervals[arch]
        speed = _speed(g)
        rows[arch] = {"family": g["family"].iloc[0], test: means[arch],
                      "95% interval": f"{low:.3g} – {high:.3g}" if low == low else "—", "seeds": len(g),
                      "sd over seeds": g["_t"].std() if len(g) > 1 else float("nan"),
                      "params": num(g, "params.n_params").median(),
                      "MFLOP/sample": num(g, "params.flops_per_sample").median() / 1e6,
                      "train samples/s": speed[0], "peak fraction": speed[1], "kernel": col(g, "params.kernel").dropna().iloc[0]
                      if col(g, "params.kernel").notna().any() else None,
                      "best epoch (median)": num(g, "metrics.best_epoch").median(),
                      "budget-limited": _share(num(g, "metrics.budget_limited") if curve is None else
                                               _improving(g, curve, maximize, scale, margin)),
                      "clip share": num(g, "metrics.clip_share").median(),
                      "grad flow rate": num(g, "metrics.gradflow_rate").median(),
                      "grad flow rate over seeds": _range(num(g, "metrics.gradflow_rate")),
                      "grad flow rate (bwd)": num(g, "metrics.gradflow_rate_bwd").median()}
        shared = g.index.intersection(scores[best].index)
        if arch != best and learned[arch] and len(shared) >= stats.MIN_SEEDS:
            raw[arch] = stats.compare(scores[best].loc[shared, "_t"].to_numpy(), g.loc[shared, "_t"].to_numpy(), scale, margin)
        if arch != best:
            rows[arch]["P(best beats it)"] = stats.prob_improvement(scores[best]["_t"].to_numpy(), g["_t"].to_numpy(), maximize)
    judged = stats.verdicts(raw, scale, margin)
    for arch, row in rows.items():
        if not learned[arch]:
            row["verdict"] = stats.Verdict("did not learn", len(scores[arch]), scale, why=f"baseline {baseline:.4g}")
        elif arch == best:
            row["verdict"] = stats.Verdict("best", len(scores[arch]), scale) if len(scores[arch]) >= stats.MIN_SEEDS \
                else stats.Verdict("none", len(scores[arch]), scale, why="under 3 seeds")
        else:
            row["verdict"] = judged.get(arch) or stats.Verdict("none", scale=scale, why="under 3 shared seeds")
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "architecture"
    table["params"] = table["params"].round().astype("Int64")
    counts = trial_counts(runs)
    missing = counts.index.difference(table.index)  # every trial diverged, or no final run finished: still a row
    table = pd.concat([table, pd.DataFrame({"family": runs.groupby("params.model.arch")["family"].first()[missing],
                                            "seeds": 0, "verdict": [stats.Verdict("none", why="no finished run")] * len(missing)},
                                           index=missing)])
    table = table.join(counts, how="left").rename_axis("architecture")
    order = ["family", test, "95% interval", "seeds", "sd over seeds", "verdict", "P(best beats it)", "params", "MFLOP/sample", "train samples/s",
             "peak fraction", "kernel", "best epoch (median)", "budget-limited", "clip share", "grad flow rate",
             "grad flow rate over seeds", "grad flow rate (bwd)", "trials", "pruned", "diverged", "failed", "interrupted"]
    table = table[[c for c in order if c in table]]
    table = table.sort_values(test, ascending=not maximize, kind="stable", na_position="last")
    table.attrs.update(scale=scale, margin=margin, baseline=baseline)
    return table


def trial_counts(runs: pd.DataFrame) -> pd.DataFrame:
    """Per architecture: search trials run, and how many were pruned, diverged, failed otherwise,
    or interrupted (Ctrl-C, a lost worker, a store's fault: not the architecture's doing)."""
    states, failure = state(runs), col(runs, "tags.harness.failure")
    kinds = {"pruned": states == "pruned", "diverged": (states == "failed") & (failure == "diverged"),
             "failed": (states == "failed") & (failure != "diverged"), "interrupted": states == "interrupted"}
    arch = runs["params.model.arch"]
    return pd.DataFrame({"trials": arch.value_counts(), **{k: v.groupby(arch).sum() for k, v in kinds.items()}}).astype("Int64")


def _speed(runs: pd.DataFrame) -> tuple[str | None, float]:
    """The median training samples/s and peak fraction over the runs that had the cores to themselves
    (all runs, marked `(contended)`, when none had)."""
    rates = num(runs, "metrics.train_samples_per_s")
    calm = rates.notna() & (col(runs, "tags.harness.contended") != "true")
    use = calm if calm.any() else rates.notna()
    if not use.any():
        return None, float("nan")
    cell = f"{rates[use].median():.0f}" + ("" if calm.any() else " (contended)")
    return cell, float(num(runs, "metrics.peak_fraction")[use].median())


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
    reason = col(runs, "tags.harness.failure").where(states != "pruned", states)
    bad = runs.assign(reason=reason)[states.isin(["pruned", "failed", "interrupted"])]
    if bad.empty:
        return pd.DataFrame()
    return pd.crosstab(bad["params.model.arch"], bad["reason"]).rename_axis(index="architecture", columns=None)


def _range(values: pd.Series) -> str | None:
    """The lowest and highest of a figure over the seeds, when there are two or more."""
    v = values.dropna()
    return f"{v.min():.3g} – {v.max():.3g}" if len(v) > 1 else None


def _improving(runs: pd.DataFrame, curve: Callable[[str], pd.Series], maximize: bool, scale: str, margin: float) -> pd.Series:
    """Each run's budget-limited flag (1.0 / 0.0) from its validation curve (`stats.still_improving`);
    a run without a logged cap or curve keeps its own `budget_limited`."""
    caps, patience, own = num(runs, "params.train.epochs"), num(runs, "params.train.patience"), num(runs, "metrics.budget_limited")
    flags = []
    for run_id, cap, wait, flag in zip(runs["run_id"], caps, patience, own, strict=True):
        values = curve(run_id).tolist() if cap == cap else []
        flags.append(float(stats.still_improving(values, int(cap), None if wait != wait else int(wait), maximize, scale, margin))
                     if values else flag)
    return pd.Series(flags, index=runs.index, dtype=float)
