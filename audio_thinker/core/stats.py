"""Intervals for the numbers we report, in plain numpy (no scipy): how far one evaluation's accuracy can be
from the model's true accuracy, how far a mean over training seeds can move, and whether one row beats another.

- `wilson_percent`: the 95% Wilson score interval of k successes in n trials (an accuracy, a no-think rate).
  Unlike the normal approximation it stays inside [0, 100] and is not empty at 0% or 100%.
- `mean_interval`: the mean of per-seed values and its 95% Student-t interval (mean +- t * sd / sqrt(n)).
- `paired_bootstrap`: the difference of two systems' accuracies on the same questions and its 95% percentile
  interval, resampling questions with replacement from a seeded generator.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile
LEVEL = 0.95
RESAMPLES = 10_000
_CHUNK = 500  # resamples drawn at once (a chunk is _CHUNK x questions indices)


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """The Wilson score interval of the proportion k/n as fractions; None when n is 0."""
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return None
    p, z2 = k / n, z * z
    center = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, center - half), min(1.0, center + half)


def wilson_percent(k: int, n: int) -> list[float] | None:
    """The 95% Wilson interval of k/n in percent, rounded to 2 decimals like the accuracies; None when n is 0."""
    interval = wilson(k, n)
    return None if interval is None else [round(100.0 * interval[0], 2), round(100.0 * interval[1], 2)]


def _t_two_sided(t: float, df: int) -> float:
    """P(|T| < t) for Student's t with an integer df (Abramowitz & Stegun 26.7.3 and 26.7.4)."""
    theta = math.atan(t / math.sqrt(df))
    s, c2 = math.sin(theta), math.cos(theta) ** 2
    if df % 2 == 0:
        term = total = 1.0
        for k in range(2, df, 2):
            term *= (k - 1) / k * c2
            total += term
        return s * total
    total = theta
    if df > 1:
        term = series = math.cos(theta)
        for k in range(3, df, 2):
            term *= (k - 1) / k * c2
            series += term
        total += s * series
    return 2.0 / math.pi * total


def t_quantile(df: int, level: float = LEVEL) -> float:
    """The t with P(|T| < t) = level for Student's t with df degrees of freedom (bisection on the exact CDF)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    lo, hi = 0.0, 1.0
    while _t_two_sided(hi, df) < level:
        hi *= 2.0
    for _ in range(200):
        mid = (lo + hi) / 2.0
        lo, hi = (mid, hi) if _t_two_sided(mid, df) < level else (lo, mid)
    return (lo + hi) / 2.0


def mean_interval(values: Sequence[float]) -> tuple[float, list[float] | None]:
    """Mean of the values and its 95% t interval (None with fewer than 2 values), rounded to 2 decimals."""
    if not values:
        raise ValueError("no values")
    x = np.asarray(values, dtype=float)
    mean = float(x.mean())
    if len(x) < 2:
        return round(mean, 2), None
    half = t_quantile(len(x) - 1) * float(x.std(ddof=1)) / math.sqrt(len(x))
    return round(mean, 2), [round(mean - half, 2), round(mean + half, 2)]


@dataclass(frozen=True)
class PairedDifference:
    """B's accuracy minus A's on the same questions, in points, with its bootstrap interval."""

    difference: float
    ci95: list[float]
    questions: int
    resamples: int
    seed: int


def paired_bootstrap(
    a: Sequence[float], b: Sequence[float], resamples: int = RESAMPLES, seed: int = 0
) -> PairedDifference:
    """`a[i]`, `b[i]`: the two systems' scores in [0, 1] on question i (a mean over seeds when there are several).

    The difference is mean(b - a) in points; the interval is the 2.5% and 97.5% quantiles of that mean over
    `resamples` resamples of the questions with replacement (the same resampled questions for both systems:
    that is what makes it paired). The generator is seeded, so the interval is reproducible.
    """
    d = np.asarray(b, dtype=float) - np.asarray(a, dtype=float)
    if d.ndim != 1 or len(a) != len(b) or len(d) == 0:
        raise ValueError(f"need two equally long, non-empty score lists, got {len(a)} and {len(b)}")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    for start in range(0, resamples, _CHUNK):
        size = min(_CHUNK, resamples - start)
        means[start : start + size] = d[rng.integers(0, len(d), size=(size, len(d)))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    return PairedDifference(
        difference=round(100.0 * float(d.mean()), 2), ci95=[round(100.0 * float(lo), 2), round(100.0 * float(hi), 2)],
        questions=len(d), resamples=resamples, seed=seed,
    )
