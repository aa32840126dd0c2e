"""The statistics of a comparison, from scipy and statsmodels (nothing hand-rolled): paired tests
over shared seeds, Holm's correction across architectures, equivalence tests (TOST) at a margin,
the smallest difference the seeds could detect, intervals that cover, and the probability of
improvement (Agarwal et al. 2021).

A metric is compared on its scale (harness.tasks.metrics): `linear` values as they are, `log`
values (MSE) as logarithms, so a mean is a geometric mean and a difference a ratio. A verdict
against the best is a typed `Verdict`, from which the report and the leaderboard write their text
and marks; none parses text back.
"""

from __future__ import annotations

import gc
import math
import warnings
from dataclasses import dataclass

import numpy as np
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestPower
from statsmodels.stats.weightstats import ttost_paired

from harness.callbacks import budget_window

# Shared seeds from which the signed-rank test replaces the paired t-test. Not fewer: at n seeds its
# smallest two-sided p is 2 / 2^n (0.031 at 6), which Holm's correction over two or more
# comparisons lifts above 0.05, so no architecture could ever be called worse.
WILCOXON_FROM = 10
MIN_SEEDS = 3  # fewer shared seeds: no verdict
ALPHA = 0.05
POWER = 0.8  # the power at which `detectable` and `seeds_for` are computed
INTERVAL = ("t-interval over seeds, widened by the test set's sampling error (Welch–Satterthwaite degrees of "
            "freedom)")


def to_scale(values, scale: str) -> np.ndarray:
    """Values as compared: logarithms on the log scale (a non-positive value has none: nan)."""
    values = np.asarray(values, float)
    if scale != "log":
        return values
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(values > 0, np.log(np.where(values > 0, values, 1.0)), np.nan)


def from_scale(value: float, scale: str) -> float:
    return math.exp(value) if scale == "log" else value


def centre(values, scale: str = "linear") -> float:
    """The mean on the metric's scale: arithmetic, or geometric on the log scale."""
    return from_scale(float(np.mean(to_scale(values, scale))), scale)


def paired_test(a: np.ndarray, b: np.ndarray) -> tuple[str, float]:
    """Two-sided test that seed-paired samples `a` and `b` differ: (test's name, p)."""
    diff = np.asarray(a, float) - np.asarray(b, float)
    if np.allclose(diff, 0):
        return ("wilcoxon" if len(diff) >= WILCOXON_FROM else "paired t"), 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # scipy's precision note on near-constant differences
        if len(diff) >= WILCOXON_FROM:
            return "wilcoxon", float(stats.wilcoxon(a, b).pvalue)
        return "paired t", float(stats.ttest_rel(a, b).pvalue)


def holm(pvalues: list[float]) -> list[float]:
    """Holm-adjusted p-values (several architectures tested against the best)."""
    if not pvalues:
        return []
    # statsmodels' Holm calls gc.collect(), which walks the whole heap: 0.15 s a call in a report
    # holding MLflow and pandas. Frozen, the heap is skipped (and handed back as it was after).
    gc.freeze()
    try:
        return [float(p) for p in multipletests(pvalues, method="holm")[1]]
    finally:
        gc.unfreeze()


def prob_improvement(x: np.ndarray, y: np.ndarray, maximize: bool) -> float:
    """P(a run from `x` beats a run from `y`), ties counting half: the Mann-Whitney U statistic
    over all pairs (rliable's probability of improvement for one task)."""
    first, second = (x, y) if maximize else (y, x)
    return float(stats.mannwhitneyu(first, second).statistic / (len(x) * len(y)))


def detectable(sd_diff: float, n: int, comparisons: int = 1) -> float:
    """The smallest mean paired difference `n` seeds detect with 80% power at α = 0.05 split over
    `comparisons` (Holm's first step), in the units of `sd_diff` (the seed-to-seed sd of the
    differences, on the metric's scale)."""
    if n < 2 or not sd_diff > 0:
        return 0.0 if n >= 2 else math.nan
    d = TTestPower().solve_power(effect_size=None, nobs=n, alpha=ALPHA / max(comparisons, 1), power=POWER)
    return float(d * sd_diff)


def paired_power(effect: float, n: int, alpha: float) -> float:
    """The power of a two-sided paired t-test over `n` pairs at standardised effect `effect`:
    statsmodels' TTestPower.power, computed with scipy's noncentral t, which stays finite where
    statsmodels' returns NaN (large effects over few seeds)."""
    df, nc = n - 1, effect * math.sqrt(n)
    critical = stats.t.ppf(1 - alpha / 2, df)
    # The lower tail as the upper tail of the mirrored distribution: nct.cdf(-c, df, nc) underflows to NaN.
    return float(stats.nct.sf(critical, df, nc) + stats.nct.sf(critical, df, -nc))


def seeds_for(difference: float, sd_diff: float, comparisons: int = 1) -> int:
    """How many paired seeds (at least 2) detect a mean difference `difference` (on the metric's
    scale) with 80% power at α = 0.05 split over `comparisons`: the smallest n whose power reaches
    80% (power grows with n: doubling, then bisection). statsmodels' solve_power gives the same n
    but NaN where two or three seeds already suffice."""
    if not sd_diff > 0:
        return 2
    effect, alpha = difference / sd_diff, ALPHA / max(comparisons, 1)
    high = 2
    while paired_power(effect, high, alpha) < POWER:
        high *= 2
    low = high // 2  # below POWER (or 1, when two suffice)
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if paired_power(effect, mid, alpha) >= POWER else (mid, high)
    return max(high, 2)


def margin_on_scale(margin: float, scale: str) -> float:
    """The equivalence margin as a difference on the compared scale: points, or log(ratio)."""
    return math.log(margin) if scale == "log" else margin


def margin_text(margin: float, scale: str) -> str:
    return f"×/÷ {margin:.3g}" if scale == "log" else f"± {margin:.3g}"


@dataclass(frozen=True)
class Verdict:
    """One architecture against the study's best, over the seeds both ran.

    kind: `best`, `worse`, `equivalent` (TOST at `margin` passed), `inconclusive`, `did not
    learn` (its test metric cannot be told from the task's input-blind baseline, `why`: not
    compared), or `none` (no verdict: `why`). `difference` and its 95% `interval`: this minus the best, in the metric's
    units, or this over the best (a ratio) on the log scale. `p`: the difference test's
    Holm-adjusted p (`test`); `p_equivalent`: TOST's, Holm-adjusted; `detectable`: the smallest
    difference these seeds detect with 80% power (same units as `difference`)."""

    kind: str
    seeds: int = 0
    scale: str = "linear"
    test: str | None = None
    p: float | None = None
    p_equivalent: float | None = None
    difference: float | None = None
    interval: tuple[float, float] | None = None
    margin: float | None = None
    detectable: float | None = None
    why: str = ""

    def difference_text(self) -> str:
        low, high = self.interval or (math.nan, math.nan)
        if self.scale == "log":
            return f"×{self.difference:.3g} [×{low:.3g}, ×{high:.3g}]"
        return f"{self.difference:+.3g} [{low:+.3g}, {high:+.3g}]"

    def text(self) -> str:
        """The verdict cell of a report's families table."""
        if self.kind == "best":
            return "best"
        if self.kind == "none":
            return f"— ({self.why})"
        if self.kind == "did not learn":
            return f"did not learn ({self.why})"
        if self.kind == "worse":
            return f"worse: {self.difference_text()} (p = {self.p:.2g}, {self.test}, Holm)"
        if self.kind == "equivalent":
            return (f"equivalent within {margin_text(self.margin, self.scale)}: {self.difference_text()} "
                    f"(TOST p = {self.p_equivalent:.2g}, Holm)")
        det = f"×{self.detectable:.3g}" if self.scale == "log" else f"{self.detectable:.3g}"
        return (f"inconclusive: {self.difference_text()} (p = {self.p:.2g}); {self.seeds} seeds detect a difference of {det} "
                "or more")

    __str__ = text

    @property
    def mark(self) -> str:
        """The leaderboard's mark: ≈ equivalent, ? inconclusive, ∅ did not learn, nothing for best,
        worse or none."""
        return {"equivalent": "≈", "inconclusive": "?", "did not learn": "∅"}.get(self.kind, "")


def still_improving(curve: list[float], cap: int, patience: int | None, maximize: bool, scale: str, margin: float) -> bool:
    """Whether a run's validation curve says the epoch cap, not the architecture, set its score: it
    ran to the cap and its best over the last w = max(patience, ⌈cap / 10⌉, 1) epochs beats its best
    before them by more than the study's margin (on the metric's scale). A gain under the margin is
    noise or negligible by the study's own standard: a flat curve at the baseline is not flagged,
    a plateau that began to climb is."""
    if len(curve) < cap:  # patience ended it, or it failed
        return False
    w = budget_window(cap, patience)
    if len(curve) <= w:
        return True
    values = to_scale(curve, scale)
    before, recent = (np.nanmax if maximize else np.nanmin)(values[:-w]), (np.nanmax if maximize else np.nanmin)(values[-w:])
    gain = recent - before if maximize else before - recent
    return bool(gain > margin_on_scale(margin, scale))


def learned(mean: float, interval: tuple[float, float], baseline: float | None, maximize: bool) -> bool:
    """Whether a test metric can be told from the task's input-blind baseline, on its better side:
    the whole 95% interval beyond it, or (one seed, no interval) the mean."""
    if baseline is None or mean != mean:
        return True
    low, high = interval
    if low != low:
        low = high = mean
    return low > baseline if maximize else high < baseline


def compare(best: np.ndarray, other: np.ndarray, scale: str, margin: float) -> dict:
    """The raw paired comparison of `other` against `best` over shared seeds (rows aligned): the
    difference test, TOST at `margin`, the difference with its 95% t-interval, and the seed
    spread of the differences, on the metric's scale."""
    a, b = to_scale(other, scale), to_scale(best, scale)
    diff = a - b
    n = len(diff)
    test, p = paired_test(a, b)
    mean, sd = float(diff.mean()), float(diff.std(ddof=1)) if n > 1 else math.nan
    if sd > 0:
        half = stats.t.ppf(1 - ALPHA / 2, n - 1) * sd / math.sqrt(n)
        m = margin_on_scale(margin, scale)
        p_eq = float(ttost_paired(a, b, -m, m)[0])
    else:  # identical differences: the interval is the point; equivalent when it lies inside the margin
        half = 0.0
        p_eq = 0.0 if abs(mean) < margin_on_scale(margin, scale) else 1.0
    low, high = mean - half, mean + half
    return {"test": test, "p": p, "p_equivalent": p_eq, "difference": from_scale(mean, scale),
            "interval": (from_scale(low, scale), from_scale(high, scale)), "sd": sd, "seeds": n}


def verdicts(raw: dict[str, dict], scale: str, margin: float) -> dict[str, Verdict]:
    """Verdicts from each architecture's `compare` against the best, Holm-corrected over them all
    (the difference tests together, the equivalence tests together)."""
    names = list(raw)
    p = dict(zip(names, holm([raw[a]["p"] for a in names]), strict=True))
    p_eq = dict(zip(names, holm([raw[a]["p_equivalent"] for a in names]), strict=True))
    out = {}
    for a in names:
        r = raw[a]
        kind = "worse" if p[a] < ALPHA else "equivalent" if p_eq[a] < ALPHA else "inconclusive"
        out[a] = Verdict(kind, seeds=r["seeds"], scale=scale, test=r["test"], p=p[a], p_equivalent=p_eq[a],
                         difference=r["difference"], interval=r["interval"], margin=margin,
                         detectable=from_scale(detectable(r["sd"], r["seeds"], len(names)), scale))
    return out


def interval(values: np.ndarray, per_example: np.ndarray | None = None, scale: str = "linear") -> tuple[float, float]:
    """A 95% interval of the mean metric (the geometric mean on the log scale): a t-interval over
    the seeds' values, widened by the test set's sampling error when `per_example` (seeds × test
    examples) is given, with Welch–Satterthwaite degrees of freedom. The test set is one sample
    shared by every seed, so its error does not average out over seeds. A percentile bootstrap
    over 3, 5, 10 normal seeds covers a true mean 75%, 82%, 90% of the time; this 94–96%
    (tests/test_stats.py).
    (nan, nan) from fewer than 2 seeds."""
    seeds = to_scale(values, scale)
    n = len(seeds)
    if n < 2 or np.isnan(seeds).any():
        return math.nan, math.nan
    mean = float(seeds.mean())
    a = float(seeds.var(ddof=1)) / n  # the seeds' share of the squared standard error
    b, examples = 0.0, 0
    if per_example is not None:
        matrix = np.asarray(per_example, float)
        examples = matrix.shape[1]
        b = float(matrix.mean(axis=0).var(ddof=1)) / examples  # the test set's share
        if scale == "log":  # delta method: the error of log(mean) is the relative error of the mean
            b /= float(matrix.mean()) ** 2
    se2 = a + b
    if se2 == 0:
        return from_scale(mean, scale), from_scale(mean, scale)
    df = se2 ** 2 / (a ** 2 / (n - 1) + (b ** 2 / (examples - 1) if examples > 1 else 0.0))
    half = float(stats.t.ppf(1 - ALPHA / 2, df)) * math.sqrt(se2)
    return from_scale(mean - half, scale), from_scale(mean + half, scale)
