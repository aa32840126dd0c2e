"""The statistics of a comparison, from scipy and statsmodels (nothing hand-rolled): paired tests
over shared seeds, Holm's correction across architectures, bootstrap intervals over seeds and
test examples, and the probability of improvement (Agarwal et al. 2021)."""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy import stats
from statsmodels.stats.multitest import multipletests

# Shared seeds from which the signed-rank test replaces the paired t-test. Not fewer: at n seeds its
# smallest two-sided p is 2 / 2^n (0.031 at 6), which Holm's correction over two or more
# comparisons lifts above 0.05, so no architecture could ever be called worse.
WILCOXON_FROM = 10
MIN_SEEDS = 3  # fewer shared seeds: no verdict


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
    return [float(p) for p in multipletests(pvalues, method="holm")[1]]


def prob_improvement(x: np.ndarray, y: np.ndarray, maximize: bool) -> float:
    """P(a run from `x` beats a run from `y`), ties counting half: the Mann-Whitney U statistic
    over all pairs (rliable's probability of improvement for one task)."""
    first, second = (x, y) if maximize else (y, x)
    return float(stats.mannwhitneyu(first, second).statistic / (len(x) * len(y)))


def interval(values: np.ndarray, per_example: np.ndarray | None = None, *, n_resamples: int = 2000,
             seed: int = 0) -> tuple[float, float]:
    """A 95% percentile-bootstrap interval of the mean metric. With `per_example` (seeds ×
    test examples) seeds and test examples are resampled independently, so the interval covers
    both sources of noise; otherwise only the seeds'. (nan, nan) from fewer than 2 seeds."""
    values = np.asarray(values, float)
    if len(values) < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    if per_example is None:
        res = stats.bootstrap((values,), np.mean, n_resamples=n_resamples, method="percentile", random_state=rng)
    else:
        matrix = np.asarray(per_example, float)

        def grand_mean(seed_idx, example_idx):  # one resample: the mean over the chosen rows and columns
            return matrix[np.ix_(np.asarray(seed_idx, int), np.asarray(example_idx, int))].mean()

        samples = (np.arange(matrix.shape[0]), np.arange(matrix.shape[1]))
        res = stats.bootstrap(samples, grand_mean, paired=False, vectorized=False, n_resamples=n_resamples,
                              batch=100, method="percentile", random_state=rng)  # batch: bounded memory on big test sets
    low, high = res.confidence_interval
    return float(low), float(high)
