"""The report's plots (matplotlib, no torch), each a PNG beside the markdown, each family in its
one colour (harness.report.colours): learning curves over seeds, the gradient-flow profile (the
vanishing-gradient picture), quality against speed with the Pareto front, hyperparameter
importance (Optuna's fANOVA) and every trial's result per architecture."""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient

from harness.families import colour
from harness.report.runs import artifact, artifact_dirs, num, val_curve
from harness.report.study import Study
from harness.report.tables import best_trials

__all__ = ["plots"]

IMPORTANCE_TRIALS = 300  # fANOVA's forest grows with the trials: a seeded sample of bigger studies (0.4 s; 500: 0.9 s)
IMPORTANCE_TREES = 16  # Optuna's default is 64
STYLES = ["-", "--", ":", "-."]  # two architectures of one family in one plot: the second is dashed


def _figure(width: float, height: float):
    """A figure and its axes, drawn off screen: matplotlib's Figure without pyplot (no global
    state to close, and pyplot's import is a third of a small report's time)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    return fig, fig.subplots()


def _styles(study: Study) -> dict[str, tuple[str, str]]:
    """Each architecture's (colour, line style): its family's colour; a second architecture of the
    same family dashed."""
    seen: dict[str, int] = {}
    out = {}
    families = study.runs.groupby("params.model.arch")["family"].first()
    for arch in study.families.index if not study.families.empty else families.index:
        fam = families.get(arch, "unknown")
        out[arch] = (colour(fam), STYLES[seen.get(fam, 0) % len(STYLES)])
        seen[fam] = seen.get(fam, 0) + 1
    for arch, fam in families.items():
        out.setdefault(arch, (colour(fam), "-"))
    return out


def _label(study: Study, arch: str) -> str:
    fam = study.runs.loc[study.runs["params.model.arch"] == arch, "family"]
    return f"{arch} ({fam.iloc[0]})" if len(fam) and fam.iloc[0].lower() != arch.lower() else arch


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _log_y(study: Study, ax) -> str:
    """A log-scale metric (MSE) on a log axis, whose label says so."""
    if study.scale != "log":
        return ""
    ax.set_yscale("log")
    return " (log)"


def curves(study: Study, client: MlflowClient, path: Path) -> str | None:
    """Validation metric per epoch: the median over each architecture's final runs, the band their
    range (the best search trial's curve when there are no final runs)."""
    runs = study.finals if not study.finals.empty else best_trials(study.runs).reset_index()
    fig, ax = _figure(6.5, 4)
    for arch, (c, ls) in _styles(study).items():
        ids = runs.loc[runs["params.model.arch"] == arch, "run_id"]
        if ids.empty:
            continue
        per_run = [study.curve(r) if study.curve else val_curve(client, r, study.metric) for r in ids]
        per_run = [r for r in per_run if len(r)]
        if not per_run:
            continue
        table = pd.concat(per_run, axis=1).sort_index()
        ax.plot(table.index, table.median(axis=1), color=c, ls=ls, label=f"{_label(study, arch)}, {len(per_run)} run{'s' * (len(per_run) > 1)}")
        if len(per_run) > 1:
            ax.fill_between(table.index, table.min(axis=1), table.max(axis=1), color=c, alpha=0.15, lw=0, label=f"_{arch} range")
    if not ax.get_lines():  # no run logged its validation curve
        return None
    ax.set(xlabel="epoch", ylabel=f"validation {study.metric}" + _log_y(study, ax),
           title=f"{study.name}: learning curves (median and range over seeds)")
    ax.legend(fontsize=8)
    _save(fig, path)
    return "learning curves"


def gradflow(study: Study, client: MlflowClient, path: Path) -> str | None:
    """‖∂L/∂s_t‖ against the time step t at the chosen checkpoints, each divided by its largest value
    so families compare on one axis, the median over the final runs; log scale: a straight line
    falling to the left is a gradient vanishing at a constant rate."""
    runs = study.finals if not study.finals.empty else best_trials(study.runs).reset_index()
    styles = _styles(study)
    profiles = {}
    local = artifact_dirs(client, list(runs["run_id"]))
    with tempfile.TemporaryDirectory() as tmp:
        for arch in styles:
            rows = []
            for run_id in runs.loc[runs["params.model.arch"] == arch, "run_id"]:
                try:
                    csv = artifact(client, run_id, "gradflow.csv", local, f"{tmp}/{run_id}")
                except Exception:  # not measured (tracking.gradflow = false), or an older run
                    continue
                rows.append(pd.read_csv(csv))
            if rows:
                profiles[arch] = rows
    if not profiles:
        return None
    fig, ax = _figure(6.5, 4)
    for arch, rows in profiles.items():
        c, ls = styles[arch]
        for direction in ("forward", "backward"):
            stack = [r[(r["direction"] == direction) & (r["quantity"] == "state")].filter(regex=r"^t\d+$").iloc[0].to_numpy(float)
                     for r in rows if ((r["direction"] == direction) & (r["quantity"] == "state")).any()]
            if not stack:
                continue
            profile = np.nanmedian(np.vstack([p / np.nanmax(p) for p in stack]), axis=0)
            ax.plot(np.arange(1, len(profile) + 1), profile, color=c, ls=":" if direction == "backward" else ls,
                    label=_label(study, arch) + (" (backward)" if direction == "backward" else ""))
    ax.set_yscale("log")
    ax.set(xlabel="time step t", ylabel="‖∂L/∂s_t‖ ÷ its largest value (log)",
           title=f"{study.name}: gradient flow through time (median over seeds)")
    ax.legend(fontsize=8)
    _save(fig, path)
    return "gradient flow through time"


def pareto_front(speed: np.ndarray, quality: np.ndarray, maximize: bool) -> np.ndarray:
    """Indices of the points no other point beats in both speed (higher) and quality, by speed."""
    q = quality if maximize else -quality
    order = np.argsort(-speed, kind="stable")
    front, best = [], -np.inf
    for i in order:
        if q[i] > best:
            front.append(i)
            best = q[i]
    return np.asarray(front, int)


def quality_speed(study: Study, path: Path) -> str | None:
    """Every finished trial's best validation metric against its training speed, the Pareto front drawn."""
    done = study.runs[study.runs["status"] == "FINISHED"]
    speed, quality = num(done, "metrics.train_samples_per_s"), num(done, f"metrics.best_val_{study.metric}")
    ok = speed.notna() & quality.notna()
    if not ok.any():
        return None
    fig, ax = _figure(6.5, 4)
    for arch, (c, _) in _styles(study).items():
        idx = ok & (done["params.model.arch"] == arch)
        if idx.any():
            ax.scatter(speed[idx], quality[idx], color=c, alpha=0.7, s=18, label=_label(study, arch))
    front = pareto_front(speed[ok].to_numpy(), quality[ok].to_numpy(), study.maximize)
    ax.step(speed[ok].to_numpy()[front], quality[ok].to_numpy()[front], where="post", color="black", lw=1, label="Pareto front")
    ax.set(xscale="log", xlabel="training samples/s (log)", ylabel=f"best validation {study.metric}" + _log_y(study, ax),
           title=f"{study.name}: quality against speed, every finished trial")
    ax.legend(fontsize=8)
    _save(fig, path)
    return "quality against speed"


def searched(runs: pd.DataFrame) -> list[str]:
    """The settings the search varied: `model.*`, `task.*` and `train.*` params with more than one
    value among the trials (the seed excepted)."""
    keys = [k for k in runs if k.startswith(("params.model.", "params.task.", "params.train.")) and k != "params.train.seed"]
    return [k for k in keys if runs[k].dropna().nunique() > 1]


def importance(study: Study) -> tuple[str, pd.Series, int] | None:
    """Optuna's fANOVA importance (Hutter et al. 2014; Optuna's default evaluator, seeded) of each
    searched setting for the best validation metric, over the finished trials (at most
    `IMPORTANCE_TRIALS`, drawn with a fixed seed from bigger studies; `IMPORTANCE_TREES` trees); a setting some trials lack,
    e.g. one searched for one architecture only, is left out, as Optuna does. Distributions are
    read from the values: text as categories, numbers as a range (log when positive and spanning a
    decade). PED-ANOVA, Optuna's faster evaluator, was not used: it compares the top 10% of trials
    with the rest, two trials in a 16-trial grid, and on the quickstart ranked the learning rate
    above the architecture that decides the score."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    done = study.runs[(study.runs["status"] == "FINISHED") & num(study.runs, f"metrics.best_val_{study.metric}").notna()]
    if len(done) > IMPORTANCE_TRIALS:
        done = done.sample(IMPORTANCE_TRIALS, random_state=0)
    keys = [k for k in searched(done) if done[k].notna().all()]
    if len(done) < 4 or not keys:
        return None
    dists, values = {}, {}
    for k in keys:
        nums = pd.to_numeric(done[k], errors="coerce")
        if nums.notna().all() and nums.nunique() > 2:
            low, high = float(nums.min()), float(nums.max())
            dists[k] = FloatDistribution(low, high, log=low > 0 and high / low >= 10)
            values[k] = nums.astype(float)
        else:
            dists[k] = CategoricalDistribution(sorted(done[k].astype(str).unique()))
            values[k] = done[k].astype(str)
    target = num(done, f"metrics.best_val_{study.metric}")
    if target.nunique() < 2:  # every trial scored the same: nothing to attribute (fANOVA refuses it)
        return None
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "study created in memory" line
    opt = optuna.create_study(direction="maximize" if study.maximize else "minimize")
    opt.add_trials([optuna.trial.create_trial(params={k.removeprefix("params."): values[k][i] for k in keys},
                                              distributions={k.removeprefix("params."): d for k, d in dists.items()},
                                              value=float(target[i])) for i in done.index])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scores = optuna.importance.get_param_importances(opt, evaluator=optuna.importance.FanovaImportanceEvaluator(n_trees=IMPORTANCE_TREES, seed=0))
    return "fANOVA", pd.Series(scores).sort_values(), len(done)


def importance_plot(study: Study, path: Path) -> str | None:
    found = importance(study)
    if found is None:
        return None
    name, scores, _ = found
    fig, ax = _figure(6.5, 0.6 + 0.45 * len(scores))
    ax.barh(scores.index, scores.to_numpy(), color="#555555")
    ax.set(xlabel=f"importance for best validation {study.metric} ({name}, normalised)",
           title=f"{study.name}: what mattered in the search ({found[2]} finished trials)")
    _save(fig, path)
    return "hyperparameter importance"


def trials_strip(study: Study, path: Path) -> str | None:
    """Every finished trial's best validation metric per architecture: a box and the trials as
    points (Greff et al. 2017, Fig. 3), so a family's spread over the search is seen, not only its best."""
    done = study.runs[study.runs["status"] == "FINISHED"]
    quality = num(done, f"metrics.best_val_{study.metric}")
    groups = [(arch, c, quality[(done["params.model.arch"] == arch) & quality.notna()].to_numpy())
              for arch, (c, _) in _styles(study).items()]
    groups = [g for g in groups if len(g[2])]
    if not groups:
        return None
    fig, ax = _figure(6.5, 4)
    rng = np.random.default_rng(0)
    ax.boxplot([v for *_, v in groups], positions=range(len(groups)), widths=0.5, showfliers=False,
               medianprops={"color": "black"})
    for i, (_, c, v) in enumerate(groups):
        ax.scatter(i + rng.uniform(-0.15, 0.15, len(v)), v, color=c, alpha=0.7, s=14, zorder=3, label=f"_{groups[i][0]} trials")
    ax.set_xticks(range(len(groups)), [_label(study, a) for a, *_ in groups], rotation=20)
    ax.set(ylabel=f"best validation {study.metric}" + _log_y(study, ax), title=f"{study.name}: every finished trial")
    _save(fig, path)
    return "every trial per architecture"


def plots(study: Study, out: Path, client: MlflowClient, prefix: str) -> list[tuple[str, str]]:
    """Write the study's PNGs as `<prefix>_<kind>.png` in `out`; returns (title, file name) of each made."""
    made = []
    makers = {"curves": lambda p: curves(study, client, p), "gradflow": lambda p: gradflow(study, client, p),
              "speed": lambda p: quality_speed(study, p), "importance": lambda p: importance_plot(study, p),
              "trials": lambda p: trials_strip(study, p)}
    for kind, make in makers.items():
        name = f"{prefix}_{kind}.png"
        title = make(out / name)
        if title:
            made.append((title, name))
    return made
