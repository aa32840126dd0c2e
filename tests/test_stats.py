"""Verdicts the evidence supports: the statistics of a comparison against hand computations
(scipy, statsmodels), intervals whose coverage is measured by simulation, the final seeds chosen
by power, and `harness compare` on two studies written with known values."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.distributions import CategoricalDistribution
from optuna.trial import create_trial
from scipy import stats as sp
from statsmodels.stats.power import TTestPower

from harness.cli import main
from harness.config import validate
from harness.report import stats
from harness.sweep.finals import auto_repeat
from harness.sweep.objective import Objective, Plan
from harness.tasks import metrics
from tests.fakes import write_run, write_study


def tost_by_hand(diff: np.ndarray, margin: float) -> float:
    """Two one-sided t-tests (Schuirmann 1987): the larger of their p."""
    n, mean, se = len(diff), diff.mean(), diff.std(ddof=1) / math.sqrt(len(diff))
    return max(sp.t.sf((mean + margin) / se, n - 1), sp.t.cdf((mean - margin) / se, n - 1))


def test_verdicts_equal_a_paired_t_a_tost_and_holm_by_hand():
    best = np.array([0.93, 0.95, 0.94, 0.96, 0.95])
    others = {"close": best - np.array([0.001, 0.0, 0.002, 0.001, 0.001]),  # 0.1 points behind, steadily
              "far": best - np.array([0.05, 0.06, 0.04, 0.05, 0.07]),
              "noisy": best - np.array([0.03, -0.02, 0.01, 0.0, 0.02])}
    raw = {a: stats.compare(best, v, "linear", 0.005) for a, v in others.items()}
    judged = stats.verdicts(raw, "linear", 0.005)
    p = {a: sp.ttest_rel(v, best).pvalue for a, v in others.items()}
    eq = {a: tost_by_hand(v - best, 0.005) for a, v in others.items()}

    def holm(ps: dict[str, float]) -> dict[str, float]:
        out, running = {}, 0.0
        for i, a in enumerate(sorted(ps, key=ps.get)):
            running = max(running, min(1.0, (len(ps) - i) * ps[a]))
            out[a] = running
        return out

    p, eq = holm(p), holm(eq)
    for a, v in judged.items():
        assert v.p == pytest.approx(p[a]) and v.p_equivalent == pytest.approx(eq[a]), a
        diff = others[a] - best
        assert v.difference == pytest.approx(diff.mean())
        assert v.interval == pytest.approx(sp.t.interval(0.95, 4, diff.mean(), sp.sem(diff)))
        d = TTestPower().solve_power(nobs=5, alpha=0.05 / 3, power=0.8)
        assert v.detectable == pytest.approx(d * diff.std(ddof=1))
    assert [judged[a].kind for a in others] == ["equivalent", "worse", "inconclusive"]
    assert judged["close"].text().startswith("equivalent within ± 0.005: -0.001 [")
    assert judged["far"].text().startswith("worse: -0.054 [") and "paired t, Holm" in judged["far"].text()
    assert re.fullmatch(r"inconclusive: -0\.008 \[.*\] \(p = .*\); 5 seeds detect a difference of .* or more",
                        judged["noisy"].text())
    assert [judged[a].mark for a in others] == ["≈", "", "?"]


def test_a_34_times_worse_mse_over_three_noisy_seeds_is_never_equivalent():
    """long_range_adding's case: GRU's MSE 7.6e-5, LSTM's 0.0026 (sd 0.0031 over 3 seeds), once
    called "tied with best (p = 0.3)" from a test on the raw scale."""
    gru = np.array([4.5e-5, 7.5e-5, 1.07e-4])
    lstm = np.array([4.0e-4, 1.2e-3, 6.16e-3])
    rnn = np.array([0.1667, 0.1668, 0.1669])
    assert sp.ttest_rel(gru, lstm).pvalue > 0.2  # what the raw scale said
    raw = {a: stats.compare(gru, v, "log", 1.1) for a, v in (("lstm", lstm), ("rnn", rnn))}
    judged = stats.verdicts(raw, "log", 1.1)
    assert judged["lstm"].kind in ("worse", "inconclusive") and judged["rnn"].kind == "worse"
    ratio = np.exp(np.mean(np.log(lstm / gru)))
    assert judged["lstm"].difference == pytest.approx(ratio) and ratio > 10
    assert "tied" not in judged["lstm"].text() and judged["lstm"].text().startswith(f"{judged['lstm'].kind}: ×{ratio:.3g} [×")
    assert stats.centre(lstm, "log") == pytest.approx(sp.gmean(lstm))


def simulated_studies(kind: str, seeds: int, reps: int, rng: np.random.Generator, examples: int = 300):
    """Seeds × test-example score matrices of a model whose true mean score is 0: each seed shifts
    it (normal, or bimodal: two modes 4 of their own sd apart), each example too (a test set
    drawn afresh for each study), and each (seed, example) a little more."""
    for _ in range(reps):
        if kind == "normal":
            shift = rng.normal(0, 0.02, seeds)
        else:
            shift = np.where(rng.random(seeds) < 0.5, -0.02, 0.02) + rng.normal(0, 0.01, seeds)
        yield shift[:, None] + rng.normal(0, 0.3, examples)[None, :] + rng.normal(0, 0.2, (seeds, examples))


@pytest.mark.parametrize("kind", ["normal", "bimodal"])
def test_the_interval_covers_the_true_mean_95_percent_of_the_time(kind):
    rng = np.random.default_rng(7)
    for seeds in (3, 5, 10):
        hits = 0
        for matrix in simulated_studies(kind, seeds, 2000, rng):
            low, high = stats.interval(matrix.mean(axis=1), matrix)
            hits += low <= 0 <= high
        assert 0.93 <= hits / 2000 <= 0.97, (kind, seeds, hits / 2000)


def test_the_interval_on_the_log_scale_is_the_geometric_means():
    values = np.array([1e-4, 4e-4, 2e-3])
    low, high = stats.interval(values, scale="log")
    logs = np.log(values)
    assert (low, high) == pytest.approx(np.exp(sp.t.interval(0.95, 2, logs.mean(), sp.sem(logs))))
    assert low < sp.gmean(values) < high


def test_seeds_for_is_statsmodels_power_calculation():
    for sd, margin, comparisons in ((0.004, 0.005, 3), (0.01, 0.005, 1), (0.3, math.log(1.1), 2)):
        n = TTestPower().solve_power(effect_size=margin / sd, alpha=0.05 / comparisons, power=0.8)
        assert stats.seeds_for(margin, sd, comparisons) == max(2, math.ceil(n))
        assert stats.detectable(sd, stats.seeds_for(margin, sd, comparisons), comparisons) <= margin + 1e-12


@pytest.mark.parametrize(("sds", "metric", "expected"), [
    ([0.0007, 0.0007], "accuracy", 3),   # the seeds' spread asks for 3, within the bounds
    ([0.03, 0.05], "accuracy", 4),       # noisier seeds ask for 1,070: repeat_max
    ([0.0001, 0.0001], "accuracy", 2),   # near-identical seeds: two suffice (statsmodels' solver gives NaN here)
    ([0.002, 0.001], "mse", 3),          # a log-scale metric: the sd relative to the mean (2% each)
])
def test_repeat_auto_asks_as_many_final_seeds_as_the_power_calculation(store, capsys, sds, metric, expected):
    # The search's two architectures, each best trial a seed-group run whose sd over its 2 seeds is known.
    client = MlflowClient()
    exp_id = client.create_experiment("auto")
    study = optuna.create_study(direction="maximize" if metric == "accuracy" else "minimize")
    arch_dist = {"model.arch": CategoricalDistribution(["rnn", "gru"])}
    means = [0.8, 0.9] if metric == "accuracy" else [0.1, 0.05]
    for arch, sd, mean in zip(["rnn", "gru"], sds, means, strict=True):
        run_id = write_run(client, exp_id, arch, params={"task_metric": metric}, tags={"harness.role": "trial"},
                           metrics={f"best_val_{metric}": mean, f"best_val_{metric}_std": sd})
        study.add_trial(create_trial(params={"model.arch": arch}, distributions=arch_dist, value=mean,
                                     user_attrs={"mlflow_run_id": run_id}))
    exp = validate({"name": "auto", "task": {"name": "digits"}, "model": {"arch": "rnn"},
                    "sweep": {"seeds": 2, "repeat": "auto", "repeat_min": 2, "repeat_max": 4}})
    plan = Plan(exp=exp, objectives=[Objective(f"val_{metric}", metric == "accuracy")], storage="", exp_id=exp_id,
                parent_run="", n_trials=None, deadline=None, n_existing=0, metric=metric)
    n, tags = auto_repeat(plan, study, client)
    spreads = np.array(sds) / np.array(means) if metric == "mse" else np.array(sds)
    margin = stats.margin_on_scale(metrics.margin(metric), metrics.scale(metric))  # the metric's default
    wanted = stats.seeds_for(margin, math.sqrt(2 * np.mean(np.square(spreads))), 1)
    assert n == min(max(wanted, 2), 4) == expected
    assert tags["harness.repeat_wanted"] == str(wanted) and tags["harness.repeat_auto"] == str(n)
    (said,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("harness:")]
    assert said.startswith(f"harness: repeat = auto: {n} final seeds (a difference of ") and f"asks for {wanted} seeds" in said


def test_compare_pairs_two_studies_seed_by_seed(store):
    # Final runs written with known values (seeds 1000-1002): one architecture B clearly beats,
    # one within half a point of A's on every seed, one too noisy to tell.
    client = MlflowClient()
    a = {"rnn": [0.80, 0.82, 0.81], "lstm": [0.900, 0.910, 0.920], "gru": [0.70, 0.75, 0.80]}
    b = {"rnn": [0.85, 0.88, 0.86], "lstm": [0.901, 0.910, 0.921], "gru": [0.78, 0.72, 0.79]}
    write_study(client, "fp32", a)
    write_study(client, "bf16", b)
    assert main(["compare", "fp32", "bf16", "--out", "out"]) == 0
    text = Path("out/compare_fp32_vs_bf16.md").read_text()
    lines = [line for line in text.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].split("|")[1:-1]]
    rows = {cells[0]: dict(zip(header, cells, strict=True))
            for cells in ([c.strip() for c in line.split("|")[1:-1]] for line in lines[2:])}
    diffs = {arch: np.subtract(b[arch], a[arch]) for arch in a}
    p_diff = dict(zip(diffs, stats.holm([sp.ttest_rel(b[k], a[k]).pvalue for k in diffs]), strict=True))
    p_tost = dict(zip(diffs, stats.holm([tost_by_hand(d, 0.005) for d in diffs.values()]), strict=True))
    for arch, diff in diffs.items():
        low, high = sp.t.interval(0.95, 2, diff.mean(), sp.sem(diff))
        assert rows[arch]["B − A"] == f"{diff.mean():+.3g} [{low:+.3g}, {high:+.3g}]"
        assert rows[arch]["shared seeds"] == "3" and float(rows[arch]["speed ratio (B/A)"]) == 1  # the same samples/s
    assert p_diff["rnn"] < 0.05 and rows["rnn"]["verdict"] == "differs"
    assert p_tost["lstm"] < 0.05 and rows["lstm"]["verdict"] == "equivalent within ± 0.005"
    assert p_diff["gru"] >= 0.05 and p_tost["gru"] >= 0.05 and rows["gru"]["verdict"].startswith("inconclusive (detects")
    assert "**rnn**" in text.split("\n\n")[1]
    # a study that is not there: one line, exit 2, nothing written
    assert main(["compare", "fp32", "nope", "--out", "out2"]) == 2
    assert not Path("out2").exists()


def test_still_improving_needs_a_gain_beyond_the_margin_over_the_last_window():
    from harness.report.stats import still_improving

    flat = [0.125, 0.124, 0.126, 0.125, 0.123, 0.126, 0.125, 0.127, 0.124, 0.128]  # at chance, its best last by noise
    assert not still_improving(flat, 10, None, True, "linear", 0.005)
    climbing = [0.125] * 8 + [0.2, 0.35]  # a plateau that began to climb
    assert still_improving(climbing, 10, None, True, "linear", 0.005)
    assert not still_improving(climbing[:7], 10, None, True, "linear", 0.005)  # patience ended it before the cap
    # the window is max(patience, a tenth of the cap): a gain 4 epochs back counts with patience 5
    late = [0.5, 0.6, 0.7, 0.8, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9]
    assert not still_improving(late, 10, None, True, "linear", 0.005) and still_improving(late, 10, 6, True, "linear", 0.005)
    # on a log scale the gain is a ratio: MSE 0.16 → 0.15 is under ×1.1, 0.16 → 0.01 far beyond
    mse = [0.17, 0.165, 0.166, 0.164, 0.165, 0.166, 0.16, 0.165, 0.164, 0.15]
    assert not still_improving(mse, 10, None, False, "log", 1.1)
    assert still_improving(mse[:-1] + [0.01], 10, None, False, "log", 1.1)
