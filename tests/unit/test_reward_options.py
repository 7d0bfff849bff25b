"""Reward options beyond the paper's formulas (docs/rewards.md sec. 2): the invalid-sample rule, the minimum group
std, Dr. GRPO's unscaled advantages, DAPO's zero-std filter, and the reward metrics, by hand."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audio_thinker.core.rewards import (
    SampleVerdict,
    advantage_abs_mean,
    compute_rewards,
    drop_zero_std_groups,
    group_advantages,
    reward_metrics,
    think_group_std,
)

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


# ------------------------------------------------------------------------------------------------ min_group_std


def test_min_group_std_zeroes_only_the_quiet_groups():
    # Group a: [1.00, 1.02], std = 0.02 / sqrt(2) = 0.0141421 -> below 0.03: advantage 0
    # (else +-0.01 / 0.0142421 = +-0.702142).
    # Group b: [0, 1], std = 0.7071068 -> kept: (1 - 0.5) / (0.7071068 + 1e-4) = +-0.707007.
    totals, groups = [1.0, 1.02, 0.0, 1.0], ["a", "a", "b", "b"]
    off = group_advantages(totals, groups)
    assert off == pytest.approx([-0.702142, 0.702142, -0.707007, 0.707007], abs=1e-6)
    assert group_advantages(totals, groups, min_std=0.03) == pytest.approx([0, 0, -0.707007, 0.707007], abs=1e-6)
    assert group_advantages(totals, groups, min_std=0.0) == off
    with pytest.raises(ValueError, match="min_std must be >= 0"):
        group_advantages(totals, groups, min_std=-1.0)


def test_compute_rewards_passes_min_group_std():
    # Two think-correct samples whose judge scores differ by 0.01: totals differ by 0.01 only.
    batch = [V("think", True, "q", consistency=1, think_quality=0.50), V("think", True, "q", consistency=1,
                                                                          think_quality=0.51)]
    loud = compute_rewards(batch, T, T, "atar_cr_tr").samples
    assert [s.advantage for s in loud] == pytest.approx([-0.6972, 0.6972], abs=1e-4)  # 0.005 / (0.0070711 + 1e-4)
    quiet = compute_rewards(batch, T, T, "atar_cr_tr", min_group_std=0.03).samples
    assert [s.advantage for s in quiet] == [0.0, 0.0]


# ------------------------------------------------------------------------------------------------ metrics


def test_think_group_std_and_advantage_abs_mean_by_hand():
    batch = [
        V("think", True, "a", consistency=1, think_quality=0.2),
        V("think", False, "a", think_quality=0.4),
        V("no_think", True, "a"),  # R_t = batch mean, not a think sample: left out
        V("think", True, "b", consistency=1, think_quality=0.5),
        V("think", True, "b", consistency=1, think_quality=0.5),
        V("think", False, "c", think_quality=0.9),  # one think sample: group c is left out
    ]
    groups = [s.group for s in batch]
    out = compute_rewards(batch, 500, T, "atar_cr_tr")
    # a: std(0.2, 0.4) = 0.1414214; b: std(0.5, 0.5) = 0; mean 0.0707107.
    assert think_group_std(out, groups) == pytest.approx(0.0707107, abs=1e-7)
    # |A| per sample: a group of 3 with distinct totals and b's equal totals (0) and c alone (0).
    abs_a = sum(abs(s.advantage) for s in out.samples[:3])
    assert advantage_abs_mean(out) == pytest.approx(abs_a / 6)
    assert reward_metrics(out, groups) == {
        "advantage/abs_mean": pytest.approx(abs_a / 6),
        "reward/think_group_std": pytest.approx(0.0707107, abs=1e-7),
    }


def test_think_group_std_is_absent_without_two_think_samples_in_a_group():
    out = compute_rewards([V("think", False, "a", think_quality=0.3), V("no_think", True, "a")], 1, T, "atar_cr_tr")
    assert think_group_std(out, ["a", "a"]) is None
    assert set(reward_metrics(out, ["a", "a"])) == {"advantage/abs_mean"}
    # Two samples, advantages +-(d/2) / (d/sqrt(2) + 1e-4) ~ +-0.7070: abs mean 0.7070.
    assert advantage_abs_mean(out) == pytest.approx(0.7070, abs=1e-3)
    with pytest.raises(ValueError, match="2 samples but 1 group ids"):
        think_group_std(out, ["a"])


# ------------------------------------------------------------------------------------------------ Dr. GRPO, DAPO


def test_unscaled_advantages_are_reward_minus_group_mean():
    # a: [1, 5, 2] mean 8/3 -> [-5/3, 7/3, -2/3]; b: [0, 0.5] mean 0.25 -> [-0.25, 0.25]; c alone -> 0.
    totals, groups = [1, 5, 2, 0, 0.5, 9], ["a", "a", "a", "b", "b", "c"]
    assert group_advantages(totals, groups, scale=False) == pytest.approx([-5 / 3, 7 / 3, -2 / 3, -0.25, 0.25, 0])
    # min_std still applies: std(b) = 0.3536 < 0.5 -> 0.
    assert group_advantages(totals, groups, min_std=0.5, scale=False) == pytest.approx(
        [-5 / 3, 7 / 3, -2 / 3, 0, 0, 0]
    )
    batch = [V("no_think", True, "q"), V("no_think", False, "q")]  # step T: totals 2.5 and -0.5, mean 1
    out = compute_rewards(batch, T, T, "atar", scale_advantages=False).samples
    assert [s.advantage for s in out] == pytest.approx([1.5, -1.5])


def test_drop_zero_std_groups_by_hand():
    totals = [1.0, 1.0, 0.5, 2.0, 2.0, 2.0, 3.0, 0.0]
    groups = ["a", "a", "a", "b", "b", "b", "c", "d"]
    # a differs -> kept; b all equal -> dropped; c and d alone -> dropped (advantage 0, no gradient).
    assert drop_zero_std_groups(totals, groups) == ([0, 1, 2], 3)
    assert drop_zero_std_groups([1.0, 2.0, 1.0, 1.0], ["x", "y", "y", "x"]) == ([1, 2], 1)
    assert drop_zero_std_groups([], []) == ([], 0)
    with pytest.raises(ValueError, match="2 totals but 1 group ids"):
        drop_zero_std_groups([1.0, 2.0], ["a"])
