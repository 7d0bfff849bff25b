"""Reward options beyond the paper's formulas: the invalid-sample rule (docs/rewards.md sec. 2), by hand."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audio_thinker.core.rewards import SampleVerdict, compute_rewards

V = SampleVerdict
T = 1000

# (step, lambda) -> g_t, g_n, lowest valid totals (think right, think wrong, no_think right, no_think wrong;
# R_c = R_t = 0) and the invalid total. s = 1 - step/T: 0.999, 0.5, 0.
# step 1, lambda 0:   g_n = e^-0.999 = 0.368248; no_think wrong 0.368248 - 2 + 0.5; invalid 0.368248 - 2.
# step 1, lambda 0.5: g_t = g_n = e^-0.4995 = 0.606834; think right 0.606834 + 0.5; think wrong -0.393166 + 0.5.
# step 500, lambda 0.5: g = e^-0.25 = 0.778801; no_think right 2 * 0.778801 + 0.5 = 2.057602.
GRID = {
    (1, 0.0): (1.0, 0.368248, [1.5, 0.5, 1.236496, -1.131752], -1.631752),
    (1, 0.5): (0.606834, 0.606834, [1.106834, 0.106834, 1.713668, -0.893166], -1.393166),
    (1, 1.0): (0.368248, 1.0, [0.868248, -0.131752, 2.5, -0.5], -1.0),
    (500, 0.0): (1.0, 0.606531, [1.5, 0.5, 1.713061, -0.893469], -1.393469),
    (500, 0.5): (0.778801, 0.778801, [1.278801, 0.278801, 2.057602, -0.721199], -1.221199),
    (500, 1.0): (0.606531, 1.0, [1.106531, 0.106531, 2.5, -0.5], -1.0),
    (1000, 0.0): (1.0, 1.0, [1.5, 0.5, 2.5, -0.5], -1.0),
    (1000, 0.5): (1.0, 1.0, [1.5, 0.5, 2.5, -0.5], -1.0),
    (1000, 1.0): (1.0, 1.0, [1.5, 0.5, 2.5, -0.5], -1.0),
}
CASES = [("think", True), ("think", False), ("no_think", True), ("no_think", False)]
# A batch whose valid samples give exactly this lambda: think only, half and half, no_think only.
MODES = {0.0: {"no_think"}, 0.5: {"think", "no_think"}, 1.0: {"think"}}


@pytest.mark.parametrize("step,lam", sorted(GRID))
def test_invalid_is_below_every_valid_case(step, lam):
    g_t, g_n, lowest, invalid = GRID[step, lam]
    cases = [c for c in CASES if c[0] in MODES[lam]]
    batch = [V(m, c, "q") for m, c in cases] + [V("invalid", False, "q")]
    out = compute_rewards(batch, step, T, "atar")
    assert out.think_rate == lam
    assert (out.gamma_think, out.gamma_no_think) == (pytest.approx(g_t, abs=1e-6), pytest.approx(g_n, abs=1e-6))
    *valid, bad = out.samples
    assert [s.total for s in valid] == pytest.approx([lowest[CASES.index(c)] for c in cases], abs=1e-6)
    assert bad.accuracy == bad.total == pytest.approx(invalid, abs=1e-6)
    assert (bad.format, bad.consistency, bad.think) == (0, 0, 0)
    # The table's columns for the modes this batch lacks are what such a sample would get: all above invalid.
    assert min(lowest) - invalid == pytest.approx(0.5, abs=1e-6)


def test_full_method_invalid_gets_no_consistency_or_think_reward():
    batch = [V("think", True, "q", consistency=1, think_quality=0.9), V("no_think", False, "q"),
             V("invalid", False, "q")]
    out = compute_rewards(batch, 1, T, "atar_cr_tr")  # lambda 0.5: row (1, 0.5) of the grid
    _, wrong, bad = out.samples
    assert wrong.think == pytest.approx(0.9)  # no_think gets the batch's mean think quality
    assert wrong.total == pytest.approx(-0.893166 + 0.9, abs=1e-6)
    assert (bad.format, bad.consistency, bad.think, bad.total) == (0, 0, 0, pytest.approx(-1.393166, abs=1e-6))


def test_zero_is_the_earlier_rule_and_pays_more_than_a_wrong_answer():
    batch = [V("no_think", False, "q"), V("invalid", False, "q")]
    zero = compute_rewards(batch, 1, T, "atar", invalid_accuracy="zero").samples
    assert zero[1].total == 0.0 > zero[0].total == pytest.approx(-1.131752, abs=1e-6)
    worst = compute_rewards(batch, 1, T, "atar").samples
    assert worst[1].total == pytest.approx(-1.631752, abs=1e-6)
    with pytest.raises(ValueError, match="invalid_accuracy must be one of worst, zero"):
        compute_rewards(batch, 1, T, "atar", invalid_accuracy="min")


@pytest.mark.parametrize("variant", ["grpo", "grpo_cot"])
def test_baselines_give_invalid_their_worst_value_zero(variant):
    mode = "no_think" if variant == "grpo" else "think"
    out = compute_rewards([V(mode, False, "q"), V("invalid", False, "q")], 1, T, variant).samples
    assert [s.total for s in out] == [0.5, 0.0]


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(CASES), st.floats(0, 1), st.sampled_from([0, 1])), min_size=1, max_size=16),
    st.integers(0, T),
    st.sampled_from(["atar", "atar_cr", "atar_cr_tr"]),
)
def test_invalid_never_pays_more_than_a_valid_sample(rows, step, variant):
    batch = [V(m, c, "q", consistency=r, think_quality=q) for (m, c), q, r in rows] + [V("invalid", False, "q")]
    *valid, bad = compute_rewards(batch, step, T, variant).samples
    assert all(s.total >= bad.total + 0.5 - 1e-9 for s in valid)
