"""Reports: a study's runs in MLflow → pandas → `reports/<study>.md` and PNG plots, and across
studies the leaderboard `reports/README.md` (harness.report.leaderboard).

Reads only what tracking wrote (never a sweep's memory) and imports no torch: families and the
metric's direction come from each run's params (`arch_family`, `task_metric_direction`). A study's
report, in order: a headline answering the study's question from the numbers; the families table
(how well: the final runs' test metric with its interval and a verdict against the best — worse,
equivalent or inconclusive; at what cost: size, FLOPs, speed, kernel; why: best epoch,
budget-limited, gradient-flow rate; and the search's trial counts); the plots; the search's best
trials; the trials that did not finish; published references beside harness's numbers; and how to
reproduce it. Beside it, `<study>.json`: its leaderboard entry (harness.report.leaderboard).
`runs` reads MLflow, `study` and `stats` compute, `tables` and `plots` render, this module writes
the markdown. Files are written beside the old ones and renamed over them at the
end, so a generation that fails leaves the previous report whole. The one thing written back to
MLflow: once the report is written, the headline becomes the study run's description
(`mlflow.note.content`), so the UI answers the study's question where the runs are.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE

from harness.config import masked, tracking_uri
from harness.errors import HarnessError
from harness.provenance import PREFIX
from harness.report import study as studies
from harness.report.plots import plots as draw_plots
from harness.report.runs import num, open_store, state
from harness.report.stats import INTERVAL, margin_text
from harness.report.tables import FORMATS

__all__ = ["write_all", "write_leaderboard", "write_report"]


def md(table: pd.DataFrame) -> str:
    formats = [".4g", *(FORMATS.get(c, ".4g") for c in table.columns)]  # the index first
    # tabulate fills in None, not NaN
    return table.astype(object).where(table.notna(), None).to_markdown(floatfmt=formats, missingval="—")


@contextmanager
def staged(out: Path) -> Iterator[Path]:
    """A folder beside `out` to write into; on success each file is renamed into `out` (atomic per
    file on one file system), on failure the folder goes and `out` is as it was."""
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".report-", dir=out))
    try:
        yield tmp
        for f in tmp.iterdir():
            os.replace(f, out / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def name_of(families: pd.DataFrame, arch: str) -> str:
    """The family alone for the only architecture of its family named like it, else `FAMILY (`arch`)`."""
    family = families.loc[arch, "family"]
    unique = (families["family"] == family).sum() == 1
    return family if unique and arch.lower() == family.lower() else f"{family} (`{arch}`)"


def headline(s: studies.Study) -> str:
    """One or two sentences answering the study's question, from the families table."""
    t, test = s.families, f"test {s.metric}"
    if t.empty:
        return "No final run finished: nothing to compare yet."
    best = next((a for a in t.index if getattr(t.loc[a, "verdict"], "kind", "") == "best"), t.index[0])
    others = [a for a in t.index if a != best]

    def score(arch: str) -> str:
        return f"{t.loc[arch, test]:.4g}"

    first = (f"{t.loc[best, '95% interval']}, " if t.loc[best, "95% interval"] != "—" else "")
    seeds = int(t.loc[best, "seeds"])
    first = f"test {s.metric} {score(best)} ({first}{seeds} seed{'s' * (seeds > 1)})"
    if len(t) == 1:
        text = f"**{name_of(t, best)}** scores {first}"
        if seeds > 1:
            text += f", {t.loc[best, 'sd over seeds']:.2g} standard deviation from seed to seed"
        text += "; no other architecture was compared."
    else:
        v = t["verdict"]
        kinds = {a: getattr(v[a], "kind", "none") for a in t.index}
        worse, equivalent, inconclusive = ([a for a in others if kinds[a] == k] for k in ("worse", "equivalent", "inconclusive"))
        unrun = [a for a in others if kinds[a] == "none" and v[a].why == "no finished run"]
        blind = [a for a in t.index if kinds[a] == "did not learn"]
        undecided = [a for a in others if kinds[a] == "none" and a not in unrun]
        if kinds[best] == "did not learn":
            return (f"No architecture learned: every test {s.metric} is within reach of the task's input-blind baseline, "
                    f"{t.attrs['baseline']:.4g} ({name_of(t, best)} {score(best)} the closest to learning).")
        if kinds[best] != "best":
            text = (f"**{name_of(t, best)}** scores highest" if s.maximize else f"**{name_of(t, best)}** scores lowest")
            text += f", {first}, but with under 3 seeds per architecture no verdict is drawn."
        else:
            text = f"**{name_of(t, best)} {'wins' if len(worse) == len(t) - 1 else 'leads'}**: {first}"
            if equivalent:
                text += "; " + _and([f"{name_of(t, a)} {score(a)}" for a in equivalent])
                text += (f" {'is' if len(equivalent) == 1 else 'are'} equivalent to it within "
                         f"{margin_text(v[equivalent[0]].margin, v[equivalent[0]].scale)} (TOST, Holm-corrected)")
            if worse:
                text += "; " + _and([f"{name_of(t, a)} {score(a)}" for a in worse])
                text += (f" {'is' if len(worse) == 1 else 'are'} worse (Holm-corrected paired tests, "
                         f"p ≤ {max(v[a].p for a in worse):.2g})")
            for a in inconclusive:
                text += (f"; {name_of(t, a)} {score(a)} is inconclusive with {v[a].seeds} seeds (difference "
                         f"{v[a].difference_text()}, p = {v[a].p:.2g}: neither worse nor equivalent within "
                         f"{margin_text(v[a].margin, v[a].scale)})")
            if undecided:
                text += "; " + _and([name_of(t, a) for a in undecided]) + " ran too few shared seeds for a verdict"
            if unrun:
                text += "; " + _and([name_of(t, a) for a in unrun]) + " finished no run to compare"
            if blind:
                text += ("; " + _and([f"{name_of(t, a)} {score(a)}" for a in blind]) +
                         f" did not learn (95% {'interval' if len(blind) == 1 else 'intervals'} reaching the task's "
                         f"input-blind baseline, {t.attrs['baseline']:.4g})")
            text += "."
            wanted, chosen = s.tags.get("harness.repeat_wanted"), s.tags.get("harness.repeat_auto")
            if inconclusive and wanted and chosen and int(wanted) > int(chosen):
                text += (f" The power calculation asked for {wanted} final seeds; `repeat_max` capped them at {chosen}, "
                         "so the study cannot tell these apart at its margin.")
    reasons = caveats(s) if len(t) > 1 else []
    if reasons:
        text = ("Provisional: " + text.replace(f"{name_of(t, best)} wins**", f"{name_of(t, best)}** is ahead")
                .replace(f"{name_of(t, best)} leads**", f"{name_of(t, best)}** is ahead")
                + " The comparison is not yet fair: " + "; ".join(reasons) + ".")
    elif len(t) == 1 and str(t.loc[best, "budget-limited"]).startswith("yes"):
        text += f" It ran to the epoch cap still improving: raise train.epochs ({_cap(s)}) before trusting its score."
    notes = reading_notes(s)
    return text + (" Note: " + "; ".join(notes) + "." if notes else "")


SIZE_RATIO = 2.0  # parameter counts further apart than this: capacity, not only architecture, differs
CLIP_SHARE = 0.5  # more of the steps clipped than this: the clip shaped the training


def reading_notes(s: studies.Study) -> list[str]:
    """What a reader should weigh without it making the comparison unfair: compared sizes far apart,
    gradient clipping that bound on most steps."""
    t, out = s.families, []
    sizes = t["params"].dropna().astype(int) if "params" in t else pd.Series(dtype=int)
    if len(sizes) > 1 and sizes.max() > SIZE_RATIO * sizes.min():
        small, large = sizes.idxmin(), sizes.idxmax()
        out.append(f"sizes differ {sizes.max() / sizes.min():.1f}× ({name_of(t, small)} {sizes[small]:,} parameters, "
                   f"{name_of(t, large)} {sizes[large]:,}): capacity differs with the architecture; "
                   "`sweep.match_params` compares them at one size")
    clip = t["clip share"].dropna() if "clip share" in t else pd.Series(dtype=float)
    bound = clip[clip > CLIP_SHARE]
    if len(bound):
        runs = s.finals if not s.finals.empty else s.runs
        sgd = set(runs.get("params.train.optimizer", pd.Series(dtype=str)).dropna()) == {"sgd"}
        # SGD's step is lr × the clipped gradient; Adam-like optimisers divide by the gradient's
        # running size, so a clip on every step mostly takes away how that size varies
        out.append("train.clip_norm clipped most steps of " + _and([f"{name_of(t, a)} ({v:.0%})" for a, v in bound.items()]) +
                   (": the clip, more than the learning rate, set their step size" if sgd else
                    ": their optimiser saw every clipped gradient at one norm, not its own size (raise train.clip_norm "
                    "to let it vary)"))
    return out


def _cap(s: studies.Study) -> str:
    runs = s.finals if not s.finals.empty else s.runs
    caps = num(runs, "params.train.epochs").dropna()
    return f"the cap is {caps.max():g}" if len(caps) else "the cap"


def caveats(s: studies.Study) -> list[str]:
    """Why a study's comparison is not yet fair, each with the change that removes it: a compared
    architecture still improving at the epoch cap, a best configuration on an edge of the searched
    space, unequal search budgets, a selection that saturated (ties at the best validation value)."""
    t, out = s.families, []
    limited = [name_of(t, a) for a in t.index if str(t.loc[a, "budget-limited"]).startswith("yes")]
    if limited:
        out.append(f"raise train.epochs: {_and(limited)} {'was' if len(limited) == 1 else 'were'} still improving at "
                   f"the cap ({_cap(s).removeprefix('the cap is ')})")
    if s.tags.get("harness.edges"):
        out.append(f"widen the search: {s.tags['harness.edges']}")
    trials = t["trials"].dropna().astype(int) if "trials" in t else pd.Series(dtype=int)
    if trials.nunique() > 1:
        out.append("give each architecture the same search budget: " +
                   ", ".join(f"{name_of(t, a)} {n}" for a, n in trials.sort_values(ascending=False, kind="stable").items()) + " trials")
    tied = saturated(s)
    if tied:
        out.append("use a larger validation set: selection saturated (" + "; ".join(tied) + ", the earliest kept)")
    return out


def saturated(s: studies.Study) -> list[str]:
    """Architectures whose best validation value several search trials share: the choice among them
    was the trial number's, not the data's."""
    val = num(s.runs, f"metrics.best_val_{s.metric}")
    done = s.runs.assign(_v=val)[(s.runs["status"] == "FINISHED") & val.notna()]
    out = []
    for arch, g in done.groupby("params.model.arch"):
        best = g["_v"].max() if s.maximize else g["_v"].min()
        k = int((g["_v"] == best).sum())
        if k > 1:
            out.append(f"{k} trials of {arch} at validation {best:.4g}")
    return out


def _and(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


FAMILIES_TEXT = (
    "Each architecture's best configuration trained again with the same fresh seeds (final runs): `test {m}` is "
    "their mean (on a log-scale metric such as MSE, their geometric mean, and differences are ratios), measured once "
    "per run and never used to choose anything; the 95% interval is a {interval}. Each architecture is compared with "
    "the best over the seeds both ran: `worse` when a paired test (t, Wilcoxon signed-rank from 10 seeds), "
    "Holm-corrected across architectures, says so; `equivalent` only when a paired equivalence test (TOST, "
    "Holm-corrected) puts the difference within the margin, {margin}; otherwise `inconclusive`, with the smallest "
    "difference the seeds could have detected (80% power). Each gives the difference from the best with its 95% "
    "interval. `P(best beats it)` is the probability "
    "that a run of the best scores better than a run of this one (Agarwal et al. 2021). `MFLOP/sample`: analytic "
    "forward FLOPs. `train samples/s`: the final runs' median, each run's own the median over its epochs after the "
    "first that had the cores to itself (`(contended)`: none had, unreliable); `peak fraction`: that speed's share "
    "of the device's matmul peak in the run's precision, measured right after training (on a CPU the better of "
    "MKL's and oneDNN's matmul; runs of harness before 2026-11-26 took torch's fp32 matmul alone, which a fused "
    "recurrent kernel can outrun: their fractions can exceed 1; see docs/run-metrics.md); `kernel`: what the recurrent layers ran on (torch's "
    "fused `onednn` or `cudnn`, its per-step `aten` path, or `harness`'s scan), which sets the speed as much as the "
    "architecture does. `budget-limited`: the runs ran to the epoch cap still improving, so the budget, not the "
    "architecture, set their score. `grad flow rate`: how fast ‖∂L/∂s_t‖ changes per time step going back through "
    "the sequence at the chosen checkpoint (each example's least-squares slope of ln‖∂L/∂s_t‖ against the steps back, "
    "the median over up to 256 validation examples, then over the final runs): negative, the gradient vanishes "
    "(−0.1: a factor 4.5e−5 over 100 steps); `(bwd)`: the backward direction of models that read both ways. The "
    "last columns count the search's trials: pruned, diverged, failed by another error, interrupted (Ctrl-C, a "
    "lost worker or a store's fault, not the architecture's doing: run again).")

SEARCH_TEXT = (
    "Each architecture's best search trial by validation metric: its selection score is the maximum over epochs and "
    "trials on one validation set, optimistic by construction (not comparable with the test metric). Its speed "
    "(`train GFLOP/s`: 3 × forward FLOPs per sample × samples/s, so a faster model is told apart from a smaller one; "
    "one-batch inference latency; `(contended)`: every epoch that sets the speed shared the cores with other work, so "
    "the figure is unreliable) and gradient-flow rate are that trial's.")


def write_report(study: str, out_dir: str | Path = "reports") -> Path:
    """Write `<out_dir>/<study>.md` and its PNG plots; returns the markdown's path."""
    client = open_store()
    return _write(studies.load(study, client), Path(out_dir), client)


def _load_all(client) -> tuple[list[studies.Study], list[str]]:
    """Every study in the store read once, and those that cannot be reported, each with why."""
    from harness.report import leaderboard

    loaded, skipped = [], []
    for name in leaderboard.study_names(client):
        try:
            loaded.append(studies.load(name, client))
        except HarnessError as e:
            skipped.append(f"`{name}` ({e})")
    return loaded, skipped


def write_all(out_dir: str | Path = "reports") -> list[Path]:
    """Every study's report, then the leaderboard across them (`README.md`), each study read once;
    a study that cannot be reported is named on stderr and in the leaderboard, the rest go on."""
    from harness.report import leaderboard

    client, out = open_store(), Path(out_dir)
    loaded, skipped = _load_all(client)
    for why in skipped:
        print(f"harness: no report of {why}", file=sys.stderr)
    return [*(_write(s, out, client) for s in loaded), leaderboard.write(out, loaded, skipped)]


def _write(s: studies.Study, out: Path, client) -> Path:
    from harness.report import leaderboard

    study = s.name
    counts = state(s.runs).value_counts()
    states = counts.reindex([k for k in ("complete", "pruned", "failed", "interrupted") if k in counts] +
                            [k for k in counts.index if k not in ("complete", "pruned", "failed", "interrupted")])
    baseline = num(s.runs, "params.task_baseline").dropna()
    io = s.runs.iloc[0].get("params.task_io", "?")
    shortest = num(s.runs, "params.task_length_min").dropna()
    if not shortest.empty:  # sequences of different lengths
        first = s.runs.iloc[0]
        io += f"; sequences of {int(shortest.iloc[0])}–{first.get('params.task_length_max')} steps, median {first.get('params.task_length_median')}"
    answer = headline(s)
    with staged(out) as tmp:
        made = draw_plots(s, tmp, client, study)
        lines = [f"# Study `{study}`", ""]
        if s.tags.get("harness.description"):
            lines += [f"*{s.tags['harness.description']}*", ""]
        lines += [answer, "",
                  f"Task `{s.task}` ({io}); metric `{s.metric}` ({'higher' if s.maximize else 'lower'} is better); "
                  f"{len(s.runs)} search trial{'s' * (len(s.runs) != 1)} ({', '.join(f'{n} {k}' for k, n in states.items())}), "
                  f"{len(s.finals)} final runs."]
        blind = num(s.runs, "params.task_metric_baseline").dropna()
        if not blind.empty:
            lines.append(f"The task's input-blind baseline (a constant prediction fitted on the training split): test "
                         f"{s.metric} {blind.iloc[0]:.4g}; a family whose interval reaches it did not learn.")
        if not baseline.empty:
            lines.append(f"The task's baseline (loss of the best predictor that ignores its input): {baseline.iloc[0]:.4g}.")
        if not s.families.empty:
            margin = margin_text(s.families.attrs.get("margin", 0), s.families.attrs.get("scale", "linear"))
            lines += ["", "## Families", "", FAMILIES_TEXT.format(m=s.metric, interval=INTERVAL, margin=margin), "",
                      md(s.families), ""]
        if s.tags.get("harness.edges"):
            lines += [f"**On the edge of the search space**: {s.tags['harness.edges']}. The optimum may lie beyond it: "
                      "widen the range before trusting this ranking.", ""]
        if made:
            lines += ["## Plots", "", *(f"![{title}]({name})\n" for title, name in made)]
        lines += ["## Search", "", SEARCH_TEXT, "", md(s.search), ""]
        fails = failures_table_md(s)
        if fails:
            lines += ["## Trials that did not finish", "", fails, ""]
        if s.references:
            lines += ["## Published references", "", references_md(s), ""]
        lines += ["## Reproduction", "", *reproduction(s), ""]
        (tmp / f"{study}.md").write_text("\n".join(lines))
        (tmp / f"{study}.json").write_text(leaderboard.dumps(leaderboard.entry(s)))  # for leaderboards of other stores
    if s.tags.get("_run_id") and s.tags.get(MLFLOW_RUN_NOTE) != answer:  # in step with the report, written once
        client.set_tag(s.tags["_run_id"], MLFLOW_RUN_NOTE, answer)
    return out / f"{study}.md"


def failures_table_md(s: studies.Study) -> str:
    from harness.report.tables import failures_table

    fails = failures_table(s.runs)
    return "" if fails.empty else md(fails)


def references_md(s: studies.Study) -> str:
    """Each published figure beside this study's final-run mean for the family's best architecture."""
    own = s.verdict_rows()
    rows = []
    for r in s.references:
        mine = own.loc[r["family"], f"test {s.metric}"] if r["metric"] == s.metric and r["family"] in own.index else None
        rows.append({"family": r["family"], "metric": r["metric"], "published": r["value"], "this study": mine,
                     "source": r["source"], "note": r.get("note", "")})
    table = pd.DataFrame(rows).set_index("family")
    return ("Figures the cited sources state, beside this study's final-run mean test metric for the family's best "
            "architecture; set-ups differ (see each note), so they are context, not a verdict.\n\n" + md(table))


def reproduction(s: studies.Study) -> list[str]:
    """How the study was run, from its parent run's `harness.repro.*` tags."""
    r = {k.removeprefix(PREFIX): v for k, v in s.tags.items() if k.startswith(PREFIX)}
    if not r:
        return ["The study's runs do not record how they were run (a sweep from before harness recorded it)."]
    lines = []
    commit = r.get("git_commit", "")
    if r.get("command"):
        checkout = [f"git checkout {commit.removesuffix('+dirty')}"] if commit and " " not in commit else []
        said = ("the harness commit (it had uncommitted changes), " if commit.endswith("+dirty") else
                "the harness commit, " if checkout else "") + "the last sweep command, then this report's:"
        lines += [said[0].upper() + said[1:], "", "```", *checkout, r["command"], f"harness report {s.name}", "```", ""]
    start, end = s.tags.get("_start_time"), s.tags.get("_end_time")
    facts = {"experiment file": f"`{r['experiment_file']}` (SHA-256 `{r['experiment_sha256'][:16]}…`)" if r.get("experiment_file") else None,
             "harness commit": f"`{r.get('git_commit')}`", "torch / MLflow / Optuna / Python":
             f"{r.get('torch')} / {r.get('mlflow')} / {r.get('optuna')} / {r.get('python')}",
             "device": r.get("device"), "GPU software": r.get("gpu_software"), "date": r.get("date"), "Optuna storage": f"`{r.get('storage')}`",
             "MLflow store": f"`{masked(tracking_uri())}`, experiment `{s.name}`",
             "sweep wall time": f"{float(r['wall_s']) / 60:.1f} min (every sweep command of the study, final runs included)"
             if r.get("wall_s") else f"{(int(end) - int(start)) / 60000:.1f} min (the study run's start to end, final runs included)"
             if start and end else None}
    lines += [f"- {k}: {v}" for k, v in facts.items() if v]
    if s.spent:
        worker_s = sum(s.spent.values())
        lines.append(f"- where the workers' time went ({worker_s / 60:.1f} worker-min: each sweep command's wall time × its "
                     "workers; from each run's `time_*_s`): " +
                     ", ".join(f"{k} {v / worker_s:.0%}" for k, v in s.spent.items() if v / worker_s >= 0.005))
    return lines


def write_leaderboard(out_dir: str | Path = "reports") -> Path:
    """Write `<out_dir>/README.md`, the leaderboard across every study in the store (no study reports)."""
    from harness.report import leaderboard

    return leaderboard.write(Path(out_dir), *_load_all(open_store()))
