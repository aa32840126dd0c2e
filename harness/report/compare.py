"""`harness compare A B`: the same architectures and seeds run two ways (fp32 against bf16, one
kernel against another, before against after a code change), paired seed by seed.

Per architecture both studies ran: the final runs' mean of the metric in each, B's difference
from A (a ratio on a log-scale metric) with its 95% t-interval over the shared seeds, a paired
test, an equivalence test (TOST) at the margin, both Holm-corrected over the architectures, and
the ratio of the training speeds (median over each side's final runs). The verdict: `differs`,
`equivalent within ±m`, or `inconclusive` with the smallest difference the seeds could detect.
Writes `reports/compare_A_vs_B.md`.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from harness.errors import HarnessError
from harness.report import md, staged, stats
from harness.report import study as studies
from harness.report.runs import metric_margin, num, open_store
from harness.scales import DEFAULT_MARGIN

WORDS = {"worse": "differs", "equivalent": "equivalent", "inconclusive": "inconclusive"}


def _by_seed(s: studies.Study, key: str) -> dict[str, pd.DataFrame]:
    """Per architecture, its final runs indexed by seed (one per seed), with the compared value `_v`."""
    if s.finals.empty:
        raise HarnessError(f"study {s.name!r} has no finished final runs to compare (sweep.repeat = 0?)")
    out = {}
    for arch, g in s.finals.groupby("params.model.arch", sort=False):
        g = g.assign(_v=num(g, f"metrics.{key}")).dropna(subset=["_v"]).set_index("seed")
        out[arch] = g[~g.index.duplicated()]
    return out


def compare(a: studies.Study, b: studies.Study, metric: str | None = None,
            margin: float | None = None) -> tuple[pd.DataFrame, dict[str, stats.Verdict], str, str, float]:
    """The comparison table (one row per shared architecture), its verdicts, the compared key, its
    scale and the margin."""
    key = metric or f"test_{a.metric}"
    task_metric = key.endswith(f"_{a.metric}")  # test_, best_val_: the task's metric, on its scale
    scale = a.scale if task_metric else "linear"
    margin = margin or (metric_margin(a.runs) if task_metric else DEFAULT_MARGIN[scale])
    left, right = _by_seed(a, key), _by_seed(b, key)
    shared = [arch for arch in left if arch in right]
    if not shared:
        raise HarnessError(f"studies {a.name!r} and {b.name!r} share no architecture with final runs of {key}")
    raw, rows = {}, {}
    for arch in shared:
        seeds = left[arch].index.intersection(right[arch].index)
        x, y = left[arch].loc[seeds, "_v"].to_numpy(), right[arch].loc[seeds, "_v"].to_numpy()
        speed = [num(side[arch], "metrics.train_samples_per_s").median() for side in (left, right)]
        rows[arch] = {"shared seeds": len(seeds), f"{a.name}": stats.centre(x, scale) if len(x) else None,
                      f"{b.name}": stats.centre(y, scale) if len(y) else None,
                      "speed ratio (B/A)": speed[1] / speed[0] if speed[0] else None}
        if len(seeds) >= stats.MIN_SEEDS:
            raw[arch] = stats.compare(x, y, scale, margin)
    judged = stats.verdicts(raw, scale, margin)
    for arch, row in rows.items():
        v = judged.get(arch)
        if v is None:
            row["verdict"] = f"— (under {stats.MIN_SEEDS} shared seeds)"
            continue
        det = f"×{v.detectable:.3g}" if scale == "log" else f"{v.detectable:.3g}"
        row["B − A" if scale == "linear" else "B / A"] = v.difference_text()
        row["p (paired, Holm)"] = v.p
        row["TOST p (Holm)"] = v.p_equivalent
        row["verdict"] = (f"equivalent within {stats.margin_text(margin, scale)}" if v.kind == "equivalent" else
                          WORDS[v.kind] + ("" if v.kind != "inconclusive" else f" (detects {det} or more)"))
    table = pd.DataFrame.from_dict(rows, orient="index").rename_axis("architecture")
    return table, judged, key, scale, margin


def write_compare(a_name: str, b_name: str, out_dir: str | Path = "reports", metric: str | None = None,
                  margin: float | None = None) -> Path:
    """Write `<out_dir>/compare_<A>_vs_<B>.md`; returns its path."""
    client = open_store()
    a, b = studies.load(a_name, client), studies.load(b_name, client)
    table, judged, key, scale, margin = compare(a, b, metric, margin)
    lines = [f"# `{b.name}` against `{a.name}`", "", headline(a, b, table, judged, key, scale, margin), "",
             f"Each row pairs the two studies' final runs of one architecture seed by seed (the final seeds are "
             f"`train.seed + 1000 + i` in both). `{key}`: each study's mean over its final runs"
             f"{' (geometric: a log-scale metric)' if scale == 'log' else ''}. "
             f"`{'B − A' if scale == 'linear' else 'B / A'}`: the mean paired {'difference' if scale == 'linear' else 'ratio'} "
             f"with its 95% t-interval over the shared seeds. `p (paired, Holm)`: a paired test "
             f"(t; Wilcoxon signed-rank from {stats.WILCOXON_FROM} seeds) that they differ; `TOST p`: a paired equivalence "
             f"test that the difference lies within {stats.margin_text(margin, scale)}; both Holm-corrected over the "
             f"architectures. `equivalent` needs TOST p < 0.05, `differs` the paired test's; otherwise `inconclusive`, "
             f"with the smallest difference these seeds detect with 80% power. `speed ratio (B/A)`: the median training "
             f"samples/s of B's final runs over A's (each run's own the median over its uncontended epochs).", "",
             md(table), "",
             "Reproduce: `harness report " + a.name + "`, `harness report " + b.name + "`, then",
             "", "```", f"harness compare {a.name} {b.name}" + (f" --metric {metric}" if metric else ""), "```", ""]
    out = Path(out_dir)
    name = f"compare_{a.name}_vs_{b.name}.md"
    with staged(out) as tmp:
        (tmp / name).write_text("\n".join(lines))
    return out / name


def headline(a, b, table: pd.DataFrame, judged: dict[str, stats.Verdict], key: str, scale: str, margin: float) -> str:
    """One sentence per architecture: what the pairing shows, and the speed ratio."""
    parts = []
    for arch, row in table.iterrows():
        v = judged.get(arch)
        speed = row.get("speed ratio (B/A)")
        pace = f"; B trains at {speed:.2f}× A's speed" if pd.notna(speed) else ""
        if v is None:
            parts.append(f"**{arch}**: too few shared seeds ({row['shared seeds']}) for a verdict{pace}.")
        elif v.kind == "equivalent":
            parts.append(f"**{arch}**: `{b.name}` is equivalent to `{a.name}` within {stats.margin_text(margin, scale)} in "
                         f"{key} ({v.difference_text()}, TOST p = {v.p_equivalent:.2g}, {v.seeds} seeds){pace}.")
        elif v.kind == "worse":
            parts.append(f"**{arch}**: `{b.name}` differs from `{a.name}` in {key} by {v.difference_text()} "
                         f"(p = {v.p:.2g}, {v.seeds} seeds){pace}.")
        else:
            det = f"×{v.detectable:.3g}" if scale == "log" else f"{v.detectable:.3g}"
            parts.append(f"**{arch}**: inconclusive with {v.seeds} seeds: {key} differs by {v.difference_text()} "
                         f"(p = {v.p:.2g}), and equivalence within {stats.margin_text(margin, scale)} is not shown "
                         f"(TOST p = {v.p_equivalent:.2g}); these seeds detect {det} or more{pace}.")
    return " ".join(parts)
