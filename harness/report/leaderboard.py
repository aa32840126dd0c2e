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
family × study, and names the device and day each study ran on.

Each study's report leaves its leaderboard entry beside it (`<study>.json`: the cells above and
the harness commit its sweep ran at), so a leaderboard also takes studies whose runs are in another
store (another machine, an earlier session) from their entries. It ranks only studies that ran the
same harness code: the commit, or commits whose `harness/` outside `harness/report/` and
`harness/provenance.py` git finds identical. The rest are named, with how to bring them in (run them again).
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import subprocess
import warnings
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from mlflow.tracking import MlflowClient

from harness.config import tracking_uri
from harness.errors import HarnessError
from harness.families import ordered
from harness.provenance import PREFIX
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


@dataclass(eq=False)
class Entry:
    """One study as the leaderboard ranks it, what `<study>.json` keeps."""
    name: str
    task: str
    metric: str
    maximize: bool
    provisional: bool  # its comparison was not yet fair (harness.report.caveats)
    commit: str  # the harness commit its sweep ran at ("" when the runs do not record it)
    rows: pd.DataFrame  # by family: test (the final runs' mean), mark (≈, ? or ""), and COLUMNS
    device: str = ""  # where its speeds were measured: the device's name (harness.repro.device) …
    date: str = ""  # … and the day of its last sweep command, YYYY-MM-DD ("" for entries older than these)


COLUMNS = ["95% interval", "seeds", "train samples/s", "peak fraction", "kernel"]


def entry(s: studies.Study) -> Entry:
    """The leaderboard's entry for a study read from the store: each family's best architecture."""
    rows = s.verdict_rows()
    table = pd.DataFrame({"test": rows[f"test {s.metric}"],
                          "mark": [getattr(v, "mark", "") for v in rows["verdict"]],
                          **{c: rows[c] for c in COLUMNS if c in rows}}, index=rows.index) if not rows.empty else \
        pd.DataFrame(columns=["test", "mark", *COLUMNS])
    return Entry(s.name, s.task, s.metric, s.maximize, bool(caveats(s)), s.tags.get(PREFIX + "git_commit", ""), table,
                 s.tags.get(PREFIX + "device", ""), s.tags.get(PREFIX + "date", "")[:10])


def dumps(e: Entry) -> str:
    rows = e.rows.rename_axis("family").reset_index().astype(object)
    return json.dumps({"study": e.name, "task": e.task, "metric": e.metric, "maximize": e.maximize,
                       "provisional": e.provisional, "commit": e.commit, "device": e.device, "date": e.date,
                       "rows": rows.where(rows.notna(), None).to_dict(orient="records")},
                      indent=1, default=lambda v: v.item() if hasattr(v, "item") else str(v))


def load_entry(path: Path) -> Entry:
    """Raises OSError, ValueError, KeyError or TypeError when `path` is not an entry."""
    d = json.loads(path.read_text())
    rows = pd.DataFrame(d["rows"], columns=["family", "test", "mark", *COLUMNS]).set_index("family")
    rows["test"] = rows["test"].astype(float)
    return Entry(d["study"], d["task"], d["metric"], bool(d["maximize"]), bool(d["provisional"]), d["commit"] or "", rows,
                 d.get("device") or "", d.get("date") or "")


@functools.cache
def same_code(a: str, b: str) -> bool:
    """Whether two harness commits measure with the same code: equal, or git (run where the report
    is written) finds `harness/` identical outside `harness/report/` and `harness/provenance.py`
    (what a run records of where and how it ran, not what it measures). A commit with uncommitted
    changes (`+dirty`) or one git does not know matches only itself."""
    if a == b:
        return True
    if not a or not b or a.endswith("+dirty") or b.endswith("+dirty"):
        return False
    try:
        diff = subprocess.run(["git", "diff", "--quiet", a, b, "--", "harness", ":(exclude)harness/report",
                               ":(exclude)harness/provenance.py"],
                              capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return diff.returncode == 0


def one_code(current: list[Entry], earlier: list[Entry]) -> tuple[list[Entry], list[Entry]]:
    """(the entries to rank, the rest): those that ran the same code as most of the store's studies
    (with none in the store, as most entries), sorted by name."""
    groups: list[list[Entry]] = []
    for e in current + earlier:
        group = next((g for g in groups if same_code(g[0].commit, e.commit)), None)
        if group is None:
            groups.append([e])
        else:
            group.append(e)
    if not groups:
        return [], []
    chosen = max(groups, key=lambda g: (sum(e in current for e in g), len(g)))
    return sorted(chosen, key=lambda e: e.name), [e for g in groups if g is not chosen for e in g]


def scores(entries: list[Entry]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(mean, cell text, speed text) tables, families × the studies that compared two or more families."""
    mean, cell, speed = {}, {}, {}
    for e in entries:
        rows = e.rows
        if len(rows) < 2:
            continue
        best = rows["test"].idxmax() if e.maximize else rows["test"].idxmin()
        mean[e.name] = rows["test"]
        texts = {}
        for fam, r in rows.iterrows():
            interval = f" [{r['95% interval'].replace(' – ', ', ')}]" if r["95% interval"] not in ("—", None) else ""
            text = f"{r['test']:.4g}{interval}"
            if fam == best:
                text = f"**{text}**"
            elif r["mark"]:
                text = f"{r['mark']} {text}"
            texts[fam] = text
        cell[e.name] = pd.Series(texts)
        speed[e.name] = pd.Series({fam: _speed_cell(r) for fam, r in rows.iterrows()})
    frames = [pd.DataFrame(d) for d in (mean, cell, speed)]
    order = ordered(set().union(*(f.index for f in frames)))
    return tuple(f.reindex(order) for f in frames)


def _speed_cell(r: pd.Series) -> str | None:
    """Training samples/s, with the share of the peak and the kernel that set it."""
    if pd.isna(r.get("train samples/s")):
        return None
    extra = [f"{r['peak fraction']:.2f}" if pd.notna(r.get("peak fraction")) else None, r.get("kernel") or None]
    extra = [e for e in extra if e]
    return f"{r['train samples/s']}" + (f" ({', '.join(extra)})" if extra else "")


def single_family(entries: list[Entry]) -> pd.DataFrame:
    """The studies of one family (a notebook's model, one precision): not ranked, listed apart."""
    rows = {}
    for e in entries:
        if len(e.rows) == 1:
            r = e.rows.iloc[0]
            rows[e.name] = {"study": f"[{e.name}]({e.name}.md)", "task": e.task, "family": e.rows.index[0],
                            "test metric": f"{e.metric} {r['test']:.4g}", "95% interval": r["95% interval"],
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


def earlier_entries(out: Path, exclude: set[str]) -> tuple[list[Entry], list[str]]:
    """The entries in `out` of studies not in `exclude` (those the store holds), and the files in
    `out` that are no entry, each with why."""
    entries, bad = [], []
    for path in sorted(out.glob("*.json")):
        if path.stem not in exclude:
            try:
                entries.append(load_entry(path))
            except (OSError, ValueError, KeyError, TypeError) as e:
                bad.append(f"`{path.name}` (not a leaderboard entry: {type(e).__name__} {e})")
    return entries, bad


def _first_line(path: Path) -> str:
    with path.open() as f:
        return f.readline()


def _short(commit: str) -> str:
    return commit[:7] + ("+dirty" if commit.endswith("+dirty") else "")


def _other_code(e: Entry) -> str:
    """Why an entry is not ranked with the rest, and what brings it in."""
    if not e.commit:
        why = "its runs do not record the harness commit they ran at"
    elif e.commit.endswith("+dirty"):
        why = f"it ran at harness commit `{_short(e.commit)}` with uncommitted changes, which no commit matches"
    else:
        why = f"it ran at harness commit `{_short(e.commit)}`, whose `harness/` differs from the ranked studies'"
    return f"`{e.name}` ({why}: run it again from a clean checkout, e.g. `reports/regenerate.sh {e.name}`)"


def _commits(entries: list[Entry]) -> str:
    commits = sorted({_short(e.commit) for e in entries if e.commit})
    if not commits:
        return "Their runs do not record the harness commit they ran at."
    if len(commits) == 1:
        return f"Every ranked study ran at harness commit `{commits[0]}`."
    return (f"The ranked studies ran at harness commits {', '.join(f'`{c}`' for c in commits)}, whose `harness/` outside "
            "`harness/report/` and `harness/provenance.py` (what runs measure with) is the same.")


def where_run(entries: list[Entry]) -> str:
    """Where the speeds were measured: each device and day, with its studies where there are several."""
    groups: dict[tuple[str, str], list[str]] = {}
    for e in entries:
        groups.setdefault((e.device, e.date), []).append(e.name)

    def place(device: str, date: str) -> str:
        return f"{device or 'a device its runs do not name'}{f' on {date}' if date else ''}"

    if len(groups) == 1:
        return f"Every study here ran on {place(*next(iter(groups)))} (the day of its last sweep command)."
    return ("The studies ran on different machines or days (the device's name, the day of the last sweep command): " +
            "; ".join(f"{place(*k)}: {', '.join(f'`{n}`' for n in names)}" for k, names in groups.items()) + ".")


def write(out: Path, loaded: list[studies.Study], skipped: list[str]) -> Path:
    """`out/README.md` from the studies read (`skipped`: those that could not be, with why) and the
    entries earlier reports left in `out` for studies the store does not hold."""
    current = [entry(s) for s in loaded]
    earlier, unreadable = earlier_entries(out, {e.name for e in current})
    if not current and not earlier:
        if not skipped:
            raise HarnessError(f"no studies in the MLflow store {tracking_uri()}; run `harness sweep` first")
        raise HarnessError(f"no study in {tracking_uri()} has runs to compare: " + "; ".join(skipped))
    ranked, other = one_code(current, earlier)
    known = {e.name for e in current + earlier}
    unentered = sorted(p.stem for p in out.glob("*.md") if p.stem not in known and p.name != "README.md"
                       and _first_line(p).startswith("# Study `"))
    left_out = [*skipped, *unreadable,
                *map(_other_code, other),
                *([f"the reports here without a leaderboard entry (`<study>.json`; written before harness kept one: report "
                   f"them again from their store, or run them again): {', '.join(f'`{n}`' for n in unentered)}"]
                  if unentered else [])]
    maximize = {e.name: e.maximize for e in ranked}
    mean, cells, speed = scores(ranked)
    header = {e.name: f"[{e.name}]({e.name}.md) · {e.task} · {e.metric} {'↑' if e.maximize else '↓'}"
                      + (" · provisional" if e.provisional else "") for e in ranked}
    rank = ranks(mean, maximize)
    board = cells.rename(columns=header).rename_axis("family")
    board.insert(0, "mean normalised rank", rank.mean(axis=1).round(2))
    board.insert(1, "studies ranked", rank.notna().sum(axis=1))
    alone = single_family(ranked)
    with staged(out) as tmp:
        stats_lines, drawn = friedman(mean, maximize, tmp / "leaderboard_cd.png")
        lines = ["# Leaderboard: recurrent architecture families across tasks", "",
                 "Each cell: the family's best architecture in that study, its final runs' mean test metric (fresh seeds, "
                 "never used for selection; geometric for a log-scale metric such as MSE) and 95% interval. **Bold**: the "
                 "study's best; ≈: equivalent to it within the study's margin (paired equivalence test, TOST, "
                 "Holm-corrected); ?: inconclusive (neither worse nor equivalent over the seeds run); ∅: did not learn (its "
                 "interval reaches the task's input-blind baseline); no mark: worse "
                 "or no verdict (see the study's report); —: not in the study; `provisional` in a column's head: the "
                 "study's comparison was not yet fair (its report's headline says why). `mean normalised rank`: the "
                 "family's rank in each study that compared at least two families, as (rank − 1) / (families − 1), "
                 "0 the best and 1 the last in each metric's own direction (↑ higher is better, ↓ lower), so studies "
                 "of three and of four families count alike, averaged.", "", md(board), "", *stats_lines, "",
                 _commits(ranked), ""]
        if drawn:
            lines += ["![critical-difference diagram](leaderboard_cd.png)", ""]
        if not alone.empty:
            lines += ["## Studies of one family", "",
                      "Studies that ran one family (a notebook's model, one precision): nothing to rank, so listed apart.",
                      "", md(alone.set_index("study")), ""]
        lines += ["## Training speed", "",
                  "Training samples/s of the same runs (median over the final runs that had the cores to themselves) and, in "
                  "brackets, its share of the device's matmul peak in the runs' precision (see each study's report for the "
                  "yardstick) and the kernel the recurrent layers ran on. " + where_run(ranked) + " Compare within a column: the "
                  "studies differ in their sequences, sizes and precision.", "",
                  md(speed.rename(columns=header).rename_axis("family")), ""]
        if left_out:
            lines += ["Left out: " + "; ".join(left_out) + ".", ""]
        lines += ["Generated by `harness report --all` from the MLflow store and the entries (`<study>.json`) that earlier "
                  "reports left here; each study's own report is linked in its column.", ""]
        (tmp / "README.md").write_text("\n".join(lines))
    return out / "README.md"
