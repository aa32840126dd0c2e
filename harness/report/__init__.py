"""Reports: a study's runs in MLflow → pandas → `reports/<study>.md` and PNG plots.

Reads only what tracking wrote (never a sweep's memory) and imports no torch: families and the
metric's direction come from each run's params (`arch_family`, `task_metric_direction`). The
report answers, per architecture: how well (the final runs' test metric with a bootstrap interval
over seeds and test examples, and a paired, Holm-corrected test against the best), how fast
(training and inference speed, share of the device's matmul peak), and why not (budget-limited
runs, edges of the search space, pruned and failed trials with their reasons, the per-step
rate at which the gradient vanishes or grows through time). `runs` reads MLflow,
`stats` computes, `tables` and `plots` render, this module writes the markdown.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from harness.report.plots import plots
from harness.report.runs import (
    metric_name,
    num,
    open_store,
    per_example,
    select_finals,
    state,
    study_runs,
    study_tags,
    trial_runs,
)
from harness.report.tables import FORMATS, best_trials, comparison_table, failures_table, search_table

__all__ = ["write_report"]


def _md(table: pd.DataFrame) -> str:
    formats = [".4g", *(FORMATS.get(c, ".4g") for c in table.columns)]  # the index first
    # tabulate fills in None, not NaN
    return table.astype(object).where(table.notna(), None).to_markdown(floatfmt=formats, missingval="—")


def write_report(study: str, out_dir: str | Path = "reports") -> Path:
    """Write `<out_dir>/<study>.md` and its PNG plots; returns the markdown's path."""
    client = open_store()
    runs = trial_runs(study, client)
    metric, maximize = metric_name(runs)
    search = search_table(runs)
    chosen = {arch: int(n) for arch, n in num(best_trials(runs), "params.trial_number").dropna().items()}
    finals = select_finals(study_runs(study, client, role="final"), chosen)
    compared = comparison_table(finals, lambda run_ids: per_example(client, run_ids))
    tags = study_tags(study, client)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    made = plots(study, runs, search, out, client)

    first = runs.iloc[0]
    task, io = first.get("params.task.name", "?"), first.get("params.task_io", "?")
    states = state(runs).value_counts()
    baseline = num(runs, "params.task_baseline").dropna()
    lines = [
        f"# Study `{study}`",
        "",
        f"Task `{task}` ({io}); metric `{metric}` ({'higher' if maximize else 'lower'} is better); "
        f"{len(runs)} search trials ({', '.join(f'{n} {s}' for s, n in states.items())}).",
    ]
    if not baseline.empty:
        lines.append(f"The task's baseline (loss of the best predictor that ignores its input): {baseline.iloc[0]:.4g}.")
    if not compared.empty:
        lines += [
            "",
            "## Comparison",
            "",
            f"Each architecture's best configuration trained again with the same fresh seeds (final runs): "
            f"the test {metric} is their mean, measured once per run and never used to choose anything. "
            "The 95% interval is a percentile bootstrap over seeds and test examples. Each architecture is "
            "tested against the best over the seeds both ran (paired t-test, Wilcoxon signed-rank from 6 seeds), "
            "Holm-corrected across architectures; `P(best beats it)` is the probability that a run of the best "
            "scores better than a run of this one (Agarwal et al. 2021). `budget-limited`: the runs ran to the "
            "epoch cap still improving, so the budget, not the architecture, set their score.",
            "",
            _md(compared),
            "",
        ]
    if tags.get("harness.edges"):
        lines += [f"**On the edge of the search space**: {tags['harness.edges']}. The optimum may lie beyond it: "
                  "widen the range before trusting this ranking.", ""]
    lines += [
        "## Search",
        "",
        "Each architecture's best search trial by validation metric: its selection score is the maximum over "
        "epochs and trials on one validation set, optimistic by construction (not comparable with the test "
        "metric). Speeds are that trial's: `train samples/s` is the median over its epochs after the first whose "
        "process had the CPU to itself (`(contended)`: every one of them shared the cores with other work, so the "
        "figure is unreliable); `kernel` is what its recurrent layers ran on, as the run measured it (torch's fused "
        "`onednn` or `cudnn` kernel, torch's per-step `aten` path, or harness's own scan), which sets the speed as "
        "much as the architecture does; `train GFLOP/s` is 3 × the analytic forward FLOPs "
        "per sample × samples/s, the speed normalised by model size, so a faster model is told apart from a "
        "smaller one; then one-batch inference latency, and the share of the device's fp32 matmul peak, measured "
        "right after training, that its training reached. `grad flow rate` is how "
        "fast the gradient changes per time step going back through the sequence, at that trial's chosen "
        "checkpoint: each example's least-squares slope of ln‖∂L/∂s_t‖ (s_t: the top recurrent layer's whole "
        "state, its cell memory included) against the steps back from the last state, the median over the "
        "first 256 validation examples (all, when fewer). Negative, the gradient vanishes (−0.1: a factor 4.5e−5 over 100 steps); "
        "positive, it grows. `(bwd)`: the backward direction of models that read both ways.",
        "",
        _md(search),
        "",
    ]
    fails = failures_table(runs)
    if not fails.empty:
        lines += ["## Trials that did not finish", "", _md(fails), ""]
    lines += [f"![{title}]({name})" for title, name in made]
    lines += ["", f"Generated by `harness report {study}` from the MLflow experiment `{study}`.", ""]
    path = out / f"{study}.md"
    path.write_text("\n".join(lines))
    return path
