"""`harness report --all`: the leaderboard across every study in the MLflow store, `reports/README.md`.

Rows are families (each study's best architecture of the family stands for it), columns the
studies that compared two or more families (studies of one family get a section of their own).
A cell is the final runs' mean test metric with its 95% interval, the column's best in bold,
those equivalent to the best within the study's margin marked ≈, those the seeds could not
decide marked ?; a study whose comparison was not yet fair is marked provisional. Families are
ranked within each study (normalised: 0 = best, 1 = last, the metric's own direction) and the
ranks averaged; over the studies every compared family ran, a Friedman test with the Nemenyi
post-hoc test and its critical-difference diagram (Demšar 2006), as `autorank` computes and
draws them. A second table gives training speed, its share of the device's peak and the kernel,
family × study.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path

import pandas as pd
from mlflow.tracking import MlflowClient

from harness.config import tracking_uri
from harness.errors import HarnessError
from harness.families import ordered
from harness.report import caveats, md, staged
from harness.report import study as studies

MIN_STUDIES = 5  # autorank's minimum for a Friedman test (Demšar 2006 asks for more to trust it)


def study_names(client: MlflowClient) -> list[str]:
    """Every experiment holding a harness study run, by name."""
    names = []
    for exp in client.search_experiments():
        if client.search_runs([exp.experiment_id], "tags.`harness.role` = 'study'", max_results=1):
            names.append(exp.name)
    return sorted(names)


def scores(loaded: list[studies.Study]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(mean, cell text, speed text) tables, families × the studies that compared two or more families."""
    mean, cell, speed = {}, {}, {}
    for s in loaded:
        rows = s.verdict_rows()
        if len(rows) < 2:
            continue
        test = f"test {s.metric}"
        best = rows[test].idxmax() if s.maximize else rows[test].idxmin()
        mean[s.name] = rows[test]
        texts = {}
        for fam, r in rows.iterrows():
            interval = f" [{r['95% interval'].replace(' – ', ', ')}]" if r["95% interval"] != "—" else ""
            text = f"{r[test]:.4g}{interval}"
            if fam == best:
                text = f"**{text}**"
            elif getattr(r["verdict"], "mark", ""):
                text = f"{r['verdict'].mark} {text}"
            texts[fam] = text
        cell[s.name] = pd.Series(texts)
        speed[s.name] = pd.Series({fam: _speed_cell(r) for fam, r in rows.iterrows()})
    frames = [pd.DataFrame(d) for d in (mean, cell, speed)]
    order = ordered(set().union(*(f.index for f in frames)))
    return tuple(f.reindex(order) for f in frames)


def _speed_cell(r: pd.Series) -> str | None:
    """Training samples/s, with the share of the peak and the kernel that set it."""
    if pd.isna(r["train samples/s"]):
        return None
    extra = [f"{r['peak fraction']:.2f}" if pd.notna(r["peak fraction"]) else None, r.get("kernel") or None]
    extra = [e for e in extra if e]
    return f"{r['train samples/s']}" + (f" ({', '.join(extra)})" if extra else "")


def single_family(loaded: list[studies.Study]) -> pd.DataFrame:
    """The studies of one family (a notebook's model, one precision): not ranked, listed apart."""
    rows = {}
    for s in loaded:
        fam = s.verdict_rows()
        if len(fam) == 1:
            r = fam.iloc[0]
            rows[s.name] = {"study": f"[{s.name}]({s.name}.md)", "task": s.task, "family": fam.index[0],
                            "test metric": f"{s.metric} {r[f'test {s.metric}']:.4g}", "95% interval": r["95% interval"],
                            "seeds": r["seeds"], "train samples/s": _speed_cell(r)}
    return pd.DataFrame.from_dict(rows, orient="index")


def ranks(mean: pd.DataFrame, maximize: dict[str, bool]) -> pd.DataFrame:
    """Each family's normalised rank in each study that compared at least two: (rank − 1) / (n − 1)
    over the n families the study ran (0 = best, 1 = last, ties averaged), so a study of three
    families and one of four rank on one scale."""
    compared = [c for c in mean if mean[c].notna().sum() >= 2]
    return pd.DataFrame({c: (mean[c].rank(ascending=not maximize[c], method="average") - 1) / (mean[c].notna().sum() - 1)
                         for c in compared})


def friedman(mean: pd.DataFrame, maximize: dict[str, bool], cd_path: Path) -> tuple[list[str], bool]:
    """The Friedman / Nemenyi lines and whether the critical-difference diagram was drawn: over the
    largest set of three or more families that at least `MIN_STUDIES` studies all ran (the family
    run by fewest studies is dropped until that holds), and those studies."""
    from autorank import autorank, plot_stats

    compared = [c for c in mean if mean[c].notna().sum() >= 2]
    present = mean[compared].notna()
    families = [f for f in mean.index if present.loc[f].any()]
    studies: list[str] = []
    while len(families) >= 3:
        studies = [c for c in compared if present.loc[families, c].all()]
        if len(studies) >= MIN_STUDIES:
            break
        families.remove(min(reversed(families), key=lambda f: present.loc[f].sum()))
    if len(families) < 3:
        return [f"No Friedman test: it needs at least {MIN_STUDIES} studies (autorank's minimum) that all ran the same "
                f"three or more families; {len(compared)} stud{'y' if len(compared) == 1 else 'ies'} compare"
                f"{'s' * (len(compared) == 1)} families here."], False
    # Higher is better in every column: lower-is-better metrics enter negated (ranks are unchanged).
    data = pd.DataFrame({f: [mean.loc[f, c] * (1 if maximize[c] else -1) for c in studies] for f in families})
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):  # autorank prints its choice of tests
        warnings.simplefilter("ignore")
        result = autorank(data, alpha=0.05, force_mode="nonparametric", order="descending")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with contextlib.redirect_stdout(io.StringIO()):
        ax = plot_stats(result, allow_insignificant=True)
    ax.figure.savefig(cd_path, dpi=100, bbox_inches="tight")
    plt.close(ax.figure)
    verdict = "differ" if result.pvalue < 0.05 else "cannot be told apart"
    left_out = [c for c in compared if c not in studies]
    dropped = [f for f in mean.index if present.loc[f].any() and f not in families]
    lines = [f"Friedman test over the {len(studies)} studies that all ran {', '.join(families)}: p = {result.pvalue:.2g}, "
             f"so their ranks {verdict} at α = 0.05" + (f" ({', '.join(left_out)} left out: not every one of these families ran)"
                                                         if left_out else "") + "." +
             (f" Left out of the test and the diagram: {', '.join(f'{f} (ran in {present.loc[f].sum()})' for f in dropped)}, "
              "run by too few of these studies." if dropped else "")]
    if result.cd is not None:
        lines.append(f"Nemenyi critical difference: {result.cd:.2f} ranks; families whose mean ranks differ by less "
                     "are joined by a bar in the diagram (Demšar 2006).")
    return lines, True


def write(out: Path, loaded: list[studies.Study], skipped: list[str]) -> Path:
    """`out/README.md` from the studies read (`skipped`: those that could not be, with why)."""
    if not loaded and not skipped:
        raise HarnessError(f"no studies in the MLflow store {tracking_uri()}; run `harness sweep` first")
    if not loaded:
        raise HarnessError(f"no study in {tracking_uri()} has runs to compare: " + "; ".join(skipped))
    maximize = {s.name: s.maximize for s in loaded}
    mean, cells, speed = scores(loaded)
    header = {s.name: f"[{s.name}]({s.name}.md) · {s.task} · {s.metric} {'↑' if s.maximize else '↓'}" for s in loaded}
    rank = ranks(mean, maximize)
    provisional = {s.name for s in loaded if caveats(s)}
    header = {k: v + (" · provisional" if k in provisional else "") for k, v in header.items()}
    board = cells.rename(columns=header).rename_axis("family")
    board.insert(0, "mean normalised rank", rank.mean(axis=1).round(2))
    board.insert(1, "studies ranked", rank.notna().sum(axis=1))
    alone = single_family(loaded)
    with staged(out) as tmp:
        stats_lines, drawn = friedman(mean, maximize, tmp / "leaderboard_cd.png")
        lines = ["# Leaderboard: recurrent architecture families across tasks", "",
                 "Each cell: the family's best architecture in that study, its final runs' mean test metric (fresh seeds, "
                 "never used for selection; geometric for a log-scale metric such as MSE) and 95% interval. **Bold**: the "
                 "study's best; ≈: equivalent to it within the study's margin (paired equivalence test, TOST, "
                 "Holm-corrected); ?: inconclusive (neither worse nor equivalent over the seeds run); no mark: worse "
                 "or no verdict (see the study's report); —: not in the study; `provisional` in a column's head: the "
                 "study's comparison was not yet fair (its report's headline says why). `mean normalised rank`: the "
                 "family's rank in each study that compared at least two families, as (rank − 1) / (families − 1), "
                 "0 the best and 1 the last in each metric's own direction (↑ higher is better, ↓ lower), so studies "
                 "of three and of four families count alike, averaged.", "", md(board), "", *stats_lines, ""]
        if drawn:
            lines += ["![critical-difference diagram](leaderboard_cd.png)", ""]
        if not alone.empty:
            lines += ["## Studies of one family", "",
                      "Studies that ran one family (a notebook's model, one precision): nothing to rank, so listed apart.",
                      "", md(alone.set_index("study")), ""]
        lines += ["## Training speed", "",
                  "Training samples/s of the same runs (median over the final runs that had the cores to themselves) and, in "
                  "brackets, its share of the device's matmul peak in the runs' precision (see each study's report for the "
                  "yardstick) and the kernel the recurrent layers ran on. Studies may have run on different machines and precisions: compare within a column.", "", md(speed.rename(columns=header).rename_axis("family")), ""]
        if skipped:
            lines += ["Left out: " + "; ".join(skipped) + ".", ""]
        lines += ["Generated by `harness report --all` from the MLflow store; each study's own report is linked in its column.", ""]
        (tmp / "README.md").write_text("\n".join(lines))
    return out / "README.md"
