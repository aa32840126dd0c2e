"""Verdicts the evidence supports: the statistics of a comparison against hand computations
(scipy, statsmodels), intervals whose coverage is measured by simulation, the final seeds chosen
by power, and `harness compare` on two small real studies."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from scipy import stats as sp
from statsmodels.stats.power import TTestPower

from harness.cli import main
from harness.report import stats


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


TINY = """
name = "{name}"
[task]
name = "digits"
[model]
arch = "rnn"
hidden_size = 8
[train]
epochs = 1
batch_size = 64
lr = 0.01
precision = "{precision}"
[tracking]
system_metrics = false
checkpoint = false
mlflow_model = false
learning_curve = false
gradflow = false
grad_stats_every = 0
[sweep]
sampler = "grid"
pruner = "none"
{sweep}
[sweep.space]
"model.arch" = {archs}
"""


def tiny(workdir: Path, name: str, sweep: str, archs: str = '["rnn"]', precision: str = "fp32") -> Path:
    path = workdir / f"{name}.toml"
    path.write_text(TINY.format(name=name, sweep=sweep, archs=archs, precision=precision))
    assert main(["sweep", str(path), "--out", str(workdir / "out")]) == 0
    return path


def test_repeat_auto_trains_as_many_final_seeds_as_the_power_calculation_asks(workdir, capsys):
    tiny(workdir, "auto", "seeds = 2\nrepeat = \"auto\"\nrepeat_min = 2\nrepeat_max = 4", archs='["rnn", "gru"]')
    client = MlflowClient()
    exp_id = client.get_experiment_by_name("auto").experiment_id
    runs = client.search_runs([exp_id])
    study = next(r for r in runs if r.data.tags.get("harness.role") == "study")
    trials = [r for r in runs if r.data.tags.get("harness.role") == "trial"]
    sds = [r.data.metrics["best_val_accuracy_std"] for r in trials]
    wanted = stats.seeds_for(0.005, math.sqrt(2 * np.mean(np.square(sds))), 1)
    n = min(max(wanted, 2), 4)
    assert study.data.tags["harness.repeat_wanted"] == str(wanted) and study.data.tags["harness.repeat_auto"] == str(n)
    finals = [r for r in runs if r.data.tags.get("harness.role") == "final"]
    assert len(finals) == 2 * n and {r.data.params["train.seed"] for r in finals} == {str(1000 + i) for i in range(n)}
    err = capsys.readouterr().err
    assert f"harness: repeat = auto: {n} final seeds (a difference of ± 0.005 in accuracy" in err
    assert f"asks for {wanted} seeds" in err


def test_compare_pairs_two_studies_seed_by_seed(workdir):
    tiny(workdir, "fp32", "repeat = 3")
    tiny(workdir, "bf16", "repeat = 3", precision="bf16")
    assert main(["compare", "fp32", "bf16", "--out", "out"]) == 0
    text = Path("out/compare_fp32_vs_bf16.md").read_text()
    client = MlflowClient()

    def finals(name: str) -> dict[str, float]:
        exp_id = client.get_experiment_by_name(name).experiment_id
        return {r.data.params["train.seed"]: r.data.metrics["test_accuracy"] for r in client.search_runs([exp_id])
                if r.data.tags.get("harness.role") == "final"}

    a, b = finals("fp32"), finals("bf16")
    assert sorted(a) == sorted(b) == ["1000", "1001", "1002"]
    a, b = (np.array([side[s] for s in sorted(side)]) for side in (a, b))
    diff = b - a
    row = next(line for line in text.splitlines() if line.startswith("| rnn"))
    mean = diff.mean()
    assert f"{mean:+.3g} [" in row and " 3 " in row
    if diff.std() > 0:
        low, high = sp.t.interval(0.95, 2, mean, sp.sem(diff))
        assert f"{mean:+.3g} [{low:+.3g}, {high:+.3g}]" in row
        kind = "differs" if sp.ttest_rel(b, a).pvalue < 0.05 else "equivalent" if tost_by_hand(diff, 0.005) < 0.05 \
            else "inconclusive"
    else:
        kind = "equivalent" if abs(mean) < 0.005 else "differs"
    assert kind in row and "**rnn**" in text.split("\n\n")[1] and "speed" in text.split("\n\n")[1]
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
