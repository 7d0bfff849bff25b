"""Audio-Thinker rewards: eq. 5 by hand, the variants, judge needs, group advantages, and properties."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audio_thinker.core.rewards import (
    SampleError,
    SampleVerdict,
    compute_rewards,
    group_advantages,
    needs_judge,
    penalty_factors,
)

V = SampleVerdict

# lambda = 3/5 (the invalid sample does not count), step 5 of 10 -> s = 0.5:
# gamma_think = exp(-0.3), gamma_no_think = exp(-0.2).
G_T, G_N = 0.7408182206817179, 0.8187307530779818
BATCH = [
    V("think", True, "q", consistency=1, think_quality=0.8),
    V("think", False, "q", consistency=1, think_quality=0.4),
    V("think", True, "q", consistency=0, think_quality=0.3),
    V("no_think", True, "q"),
    V("no_think", False, "q"),
    V("invalid", False, "q"),
]


def test_eq5_every_case_by_hand():
    out = compute_rewards(BATCH, step=5, total_steps=10, variant="atar")
    assert out.think_rate == pytest.approx(0.6)
    assert (out.gamma_think, out.gamma_no_think) == (pytest.approx(G_T), pytest.approx(G_N))
    accuracy = [s.accuracy for s in out.samples]
    # The invalid sample gets case 4's value, the step's worst (reward.invalid_accuracy = worst).
    assert accuracy == pytest.approx([0.7408182, -0.2591818, 0.7408182, 1.6374615, -1.1812692, -1.1812692])
    assert [s.format for s in out.samples] == [1, 1, 1, 1, 1, 0]
    assert [s.total for s in out.samples] == pytest.approx(
        [a + 0.5 * f for a, f in zip(accuracy, [1] * 5 + [0])]
    )
    assert all(s.consistency == 0 and s.think == 0 for s in out.samples)  # unused terms are 0


def test_full_method_by_hand():
    out = compute_rewards(BATCH, step=5, total_steps=10, variant="atar_cr_tr")
    mean_tq = (0.8 + 0.4 + 0.3) / 3
    assert [s.consistency for s in out.samples] == [1, 0, 0, 1, 0, 0]  # wrong -> 0, correct no_think -> 1
    assert [s.think for s in out.samples] == pytest.approx([0.8, 0.4, 0.3, mean_tq, mean_tq, 0.0])
    expected = [
        G_T * 1.5 + 0.5 + 0.8,
        -(1 - G_T) + 0.5 + 0.4,
        G_T + 0.5 + 0.3,
        2 * G_N * 1.5 + 0.5 + mean_tq,
        -G_N - 2 * (1 - G_N) + 0.5 + mean_tq,
        -G_N - 2 * (1 - G_N),
    ]
    assert [s.total for s in out.samples] == pytest.approx(expected)
    assert [s.mode for s in out.samples] == ["think", "think", "think", "no_think", "no_think", "invalid"]
    assert [s.correct for s in out.samples] == [True, False, True, True, False, False]


def test_consistency_only_variant():
    out = compute_rewards(BATCH, step=5, total_steps=10, variant="atar_cr")
    assert [s.think for s in out.samples] == [0] * 6
    assert out.samples[0].total == pytest.approx(G_T * 1.5 + 0.5)
    assert out.samples[2].total == pytest.approx(G_T + 0.5)


def test_grpo_baselines_accept_one_mode():
    grpo = compute_rewards(BATCH, step=5, total_steps=10, variant="grpo")
    # A think response is invalid for the answer-only prompt.
    assert [s.format for s in grpo.samples] == [0, 0, 0, 1, 1, 0]
    assert [s.accuracy for s in grpo.samples] == [0, 0, 0, 1, 0, 0]
    assert [s.total for s in grpo.samples] == [0, 0, 0, 1.5, 0.5, 0]
    assert grpo.think_rate == 0.0
    cot = compute_rewards(BATCH, step=5, total_steps=10, variant="grpo_cot")
    # A no_think response is invalid when thinking is forced.
    assert [s.format for s in cot.samples] == [1, 1, 1, 0, 0, 0]
    assert [s.total for s in cot.samples] == [1.5, 0.5, 1.5, 0, 0, 0]
    assert cot.think_rate == 1.0


def test_no_valid_samples_lambda_is_zero():
    out = compute_rewards([V("invalid", False, "q"), V("invalid", False, "q")], 0, 4, "atar_cr_tr")
    assert out.think_rate == 0.0
    assert out.gamma_think == 1.0 and out.gamma_no_think == pytest.approx(math.exp(-1))
    assert [s.total for s in out.samples] == pytest.approx([math.exp(-1) - 2] * 2)  # case 4 at lambda = 0, s = 1
    assert [s.advantage for s in out.samples] == [0, 0]


def test_no_think_samples_mean_think_reward_is_zero():
    out = compute_rewards([V("no_think", True, "q"), V("no_think", False, "q")], 0, 4, "atar_cr_tr")
    assert [s.think for s in out.samples] == [0, 0]


def test_needs_judge():
    assert needs_judge("grpo") == needs_judge("grpo_cot") == needs_judge("atar") == set()
    assert needs_judge("atar_cr") == {"consistency"}
    assert needs_judge("atar_cr_tr") == {"consistency", "think_quality"}
    with pytest.raises(ValueError, match="unknown reward variant 'ppo'"):
        needs_judge("ppo")


def test_missing_verdicts_are_errors():
    with pytest.raises(SampleError, match="sample 1: consistency: missing: atar_cr needs it") as info:
        compute_rewards([V("no_think", True, "q"), V("think", True, "q")], 0, 4, "atar_cr")
    assert (info.value.index, info.value.field) == (1, "consistency")
    with pytest.raises(SampleError, match="sample 0: think_quality: missing"):
        compute_rewards([V("think", False, "q")], 0, 4, "atar_cr_tr")
    # Verdicts that cannot matter are not required: a wrong think sample's consistency, any no_think verdict.
    out = compute_rewards(
        [V("think", False, "q", think_quality=0.5), V("no_think", True, "q")], 0, 4, "atar_cr_tr"
    )
    assert [s.consistency for s in out.samples] == [0, 1]
    # A think response is invalid under grpo, so it needs nothing there either.
    compute_rewards([V("think", True, "q")], 0, 4, "grpo")


@pytest.mark.parametrize(
    "sample,field",
    [
        (V("thinking", True, "q"), "mode"),  # type: ignore[arg-type]
        (V("invalid", True, "q"), "correct"),
        (V("think", 1, "q"), "correct"),  # type: ignore[arg-type]
        (V("think", True, 3), "group"),  # type: ignore[arg-type]
        (V("think", True, "q", consistency=2), "consistency"),
        (V("think", True, "q", consistency=1.0), "consistency"),  # type: ignore[arg-type]
        (V("think", True, "q", think_quality=1.5), "think_quality"),
        (V("think", True, "q", think_quality=float("nan")), "think_quality"),
    ],
)
def test_bad_sample_fields(sample, field):
    with pytest.raises(SampleError) as info:
        compute_rewards([V("no_think", True, "q"), sample], 0, 4, "atar")
    assert (info.value.index, info.value.field) == (1, field)


@pytest.mark.parametrize("step,total", [(-1, 10), (11, 10), (0, 0), (1.5, 10), (True, 10)])
def test_bad_steps(step, total):
    with pytest.raises(ValueError, match="step"):
        compute_rewards([V("no_think", True, "q")], step, total, "atar")


def test_group_advantages_by_hand():
    std = math.sqrt(5 / 3)  # unbiased std of 1, 2, 3, 4
    adv = group_advantages([1, 5, 2, 3, 4, 7], ["a", "b", "a", "a", "a", "c"])
    assert adv == pytest.approx(
        [-1.5 / (std + 1e-4), 0, -0.5 / (std + 1e-4), 0.5 / (std + 1e-4), 1.5 / (std + 1e-4), 0]
    )
    assert group_advantages([2.0, 2.0, 2.0], ["g"] * 3) == [0.0, 0.0, 0.0]
    assert group_advantages([1.0, 3.0], ["g", "g"]) == pytest.approx(
        [-1 / (math.sqrt(2) + 1e-4), 1 / (math.sqrt(2) + 1e-4)]
    )
    with pytest.raises(ValueError, match="3 totals but 2 group ids"):
        group_advantages([1, 2, 3], ["a", "b"])


def test_rewards_module_does_not_import_torch():
    code = "import sys, audio_thinker.core.rewards, audio_thinker.core.protocol; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# ---------------------------------------------------------------------------------------------------------
# Properties

kinds = st.sampled_from(
    [("think", True), ("think", False), ("no_think", True), ("no_think", False), ("invalid", False)]
)
BASE = {
    ("think", True): 1.0, ("think", False): 0.0, ("no_think", True): 2.0, ("no_think", False): -1.0,
    ("invalid", False): -1.0,  # the worst
}


def _batch(pairs, n_groups=3):
    return [V(m, c, f"g{i % n_groups}", consistency=1, think_quality=0.5) for i, (m, c) in enumerate(pairs)]


@settings(max_examples=60, deadline=None)
@given(st.lists(kinds, min_size=1, max_size=20), st.integers(1, 2000))
def test_factors_are_one_at_the_end(pairs, total):
    out = compute_rewards(_batch(pairs), total, total, "atar")
    assert out.gamma_think == out.gamma_no_think == 1.0
    for (mode, correct), s in zip(pairs, out.samples):
        assert s.accuracy == pytest.approx(BASE[(mode, correct)])


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 10), st.integers(1, 10), st.integers(1, 100), st.data())
def test_more_think_samples_shrink_think_rewards(n_think, n_no_think, total, data):
    step = data.draw(st.integers(0, total - 1))  # before the end, where the factors still act

    def rewards(k: int) -> dict:
        batch = [V("think", c, "g") for c in (True, False)] * k + [
            V("no_think", c, "g") for c in (True, False)
        ] * n_no_think
        out = compute_rewards(batch, step, total, "atar").samples
        return {"tc": out[0].accuracy, "tw": out[1].accuracy, "nc": out[-2].accuracy, "nw": out[-1].accuracy}

    few, many = rewards(n_think), rewards(n_think + 1)
    assert many["tc"] < few["tc"] and many["tw"] < few["tw"]
    assert many["nc"] > few["nc"] and many["nw"] > few["nw"]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(kinds, st.floats(0, 1), st.sampled_from([0, 1])), min_size=1, max_size=16))
def test_no_think_gets_mean_think_quality(rows):
    batch = [V(m, c, "g", consistency=r, think_quality=q) for (m, c), q, r in rows]
    out = compute_rewards(batch, 0, 10, "atar_cr_tr")
    think_scores = [q for (m, _), q, _ in rows if m == "think"]
    mean = sum(think_scores) / len(think_scores) if think_scores else 0.0
    for ((mode, _), q, _), s in zip(rows, out.samples):
        assert s.think == pytest.approx({"think": q, "no_think": mean, "invalid": 0.0}[mode])


@settings(max_examples=60, deadline=None)
@given(st.lists(kinds, min_size=1, max_size=16), st.integers(0, 10))
def test_wrong_answers_never_gain_from_consistency(pairs, step):
    said_consistent = compute_rewards(
        [V(m, c, "g", consistency=1, think_quality=0.5) for m, c in pairs], step, 10, "atar_cr_tr"
    ).samples
    said_inconsistent = compute_rewards(
        [V(m, c, "g", consistency=0, think_quality=0.5) for m, c in pairs], step, 10, "atar_cr_tr"
    ).samples
    without = compute_rewards([V(m, c, "g") for m, c in pairs], step, 10, "atar").samples
    for (_mode, correct), a, b, w in zip(pairs, said_consistent, said_inconsistent, without):
        if not correct:
            assert a.consistency == b.consistency == 0
            assert a.total == pytest.approx(b.total)
            assert a.total - a.think == pytest.approx(w.total)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(-5, 5), st.sampled_from("abcd")), min_size=1, max_size=30))
def test_advantages_are_centred_per_group(rows):
    totals, groups = [r for r, _ in rows], [g for _, g in rows]
    adv = group_advantages(totals, groups)
    for g in set(groups):
        members = [a for a, gg in zip(adv, groups) if gg == g]
        if len(members) == 1:
            assert members == [0.0]
        assert sum(members) == pytest.approx(0.0, abs=1e-6)
        assert all(abs(a) <= (len(members) - 1) / math.sqrt(len(members)) + 1e-9 for a in members)


def test_penalty_factors_validate_rate():
    with pytest.raises(ValueError, match="think_rate"):
        penalty_factors(1.5, 0, 10)
