"""The intervals against hand computations: Wilson at 0%, 100% and a middle value, Student-t quantiles against
the printed table, and the paired bootstrap on cases whose answer is known exactly."""

from __future__ import annotations

import math

import numpy as np
import pytest

from audio_thinker.core.stats import Z95, mean_interval, paired_bootstrap, t_quantile, wilson, wilson_percent


def test_wilson_at_zero_and_at_one_hundred_percent():
    # k = 0: p = 0, so the interval is [0, z^2 / (n + z^2)]; k = n mirrors it.
    upper = Z95**2 / (10 + Z95**2)  # 3.84146 / 13.84146 = 0.277534
    assert wilson(0, 10) == pytest.approx((0.0, upper), abs=1e-12)
    assert wilson(10, 10) == pytest.approx((1.0 - upper, 1.0), abs=1e-12)
    assert wilson_percent(0, 10) == [0.0, 27.75]
    assert wilson_percent(10, 10) == [72.25, 100.0]


def test_wilson_at_a_middle_value():
    # 5 of 10: center 0.5; half = z / (1 + z^2/10) * sqrt(0.25/10 + z^2/400) = 1.959964 / 1.384146 * 0.186020
    half = Z95 / (1 + Z95**2 / 10) * math.sqrt(0.025 + Z95**2 / 400)
    assert half == pytest.approx(0.263407, abs=1e-6)
    assert wilson(5, 10) == pytest.approx((0.5 - half, 0.5 + half), abs=1e-12)
    assert wilson_percent(5, 10) == [23.66, 76.34]
    # 70 of 100: center (0.7 + z^2/200) / (1 + z^2/100) = 0.692601, half = z / (1 + z^2/100) *
    # sqrt(0.21/100 + z^2/40000) = 0.088450, so [0.604151, 0.781051]
    assert wilson_percent(70, 100) == [60.42, 78.11]


def test_wilson_of_nothing_is_none_and_bad_counts_are_refused():
    assert wilson(0, 0) is None and wilson_percent(0, 0) is None
    with pytest.raises(ValueError, match="0 <= k <= n"):
        wilson(3, 2)


@pytest.mark.parametrize(
    ("df", "t"),
    # Student's t, two-sided 95% (the printed table: 12.706, 4.303, 3.182, 2.776, 2.262, 2.042, 1.984)
    [(1, 12.7062), (2, 4.3027), (3, 3.1824), (4, 2.7764), (9, 2.2622), (30, 2.0423), (100, 1.9840)],
)
def test_t_quantile_matches_the_table(df, t):
    assert t_quantile(df) == pytest.approx(t, abs=1e-4)


def test_mean_interval_by_hand():
    # 50 and 60: mean 55, sd = 7.0711, half = 12.7062 * 7.0711 / sqrt(2) = 63.531
    mean, ci = mean_interval([50.0, 60.0])
    assert mean == 55.0 and ci == pytest.approx([55.0 - 63.53, 55.0 + 63.53], abs=0.01)
    # 40, 42, 44: mean 42, sd 2, half = 4.3027 * 2 / sqrt(3) = 4.968
    assert mean_interval([40.0, 42.0, 44.0]) == (42.0, [37.03, 46.97])
    assert mean_interval([61.5]) == (61.5, None)
    assert mean_interval([70.0, 70.0]) == (70.0, [70.0, 70.0])


def test_paired_bootstrap_of_a_constant_difference_is_that_difference():
    a, b = [0, 1, 0, 1, 1], [1, 1, 1, 1, 1]  # b is right wherever a is, and on two more: +40 points
    assert paired_bootstrap(a, a).ci95 == [0.0, 0.0]
    result = paired_bootstrap([0] * 5, [0.4] * 5, resamples=100)
    assert (result.difference, result.ci95, result.questions) == (40.0, [40.0, 40.0], 5)
    assert paired_bootstrap(a, b).difference == 40.0


def test_paired_bootstrap_on_two_questions_has_the_exact_answer():
    # d = [0, 1]: a resample's mean is 0, 0.5 or 1 with probabilities 1/4, 1/2, 1/4, so the 2.5% and 97.5%
    # quantiles are exactly 0 and 1.
    result = paired_bootstrap([1, 0], [1, 1], resamples=4000, seed=3)
    assert (result.difference, result.ci95) == (50.0, [0.0, 100.0])


def test_paired_bootstrap_spread_is_the_standard_error_of_the_mean_difference():
    # 400 questions, d = +1 on 100, -1 on 40, 0 elsewhere: mean 0.15, the bootstrap's sd -> sqrt(var(d) / n).
    a = np.array([0] * 100 + [1] * 40 + [0] * 260)
    b = np.array([1] * 100 + [0] * 40 + [0] * 260)
    d = b - a
    se = math.sqrt(d.var() / len(d))  # population variance: what resampling the observed questions gives
    result = paired_bootstrap(a, b, resamples=20_000, seed=0)
    assert result.difference == 15.0
    lo, hi = result.ci95
    assert (hi - lo) / 2 == pytest.approx(100 * Z95 * se, rel=0.05)
    assert (lo + hi) / 2 == pytest.approx(15.0, abs=0.3)


def test_paired_bootstrap_is_seeded():
    rng = np.random.default_rng(7)
    a, b = rng.integers(0, 2, 300), rng.integers(0, 2, 300)
    assert paired_bootstrap(a, b, seed=1) == paired_bootstrap(a, b, seed=1)
    assert paired_bootstrap(a, b, seed=1).ci95 != paired_bootstrap(a, b, seed=2).ci95
    with pytest.raises(ValueError, match="equally long"):
        paired_bootstrap([1, 0], [1])
