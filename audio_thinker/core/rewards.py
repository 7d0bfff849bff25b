"""Audio-Thinker rewards (paper eqs. 1-8, docs/rewards.md): format, ATAR accuracy, consistency, think quality.

Pure Python + numpy (no torch): light tools such as `audio-thinker rewards` and the dashboard import it.
One call, `compute_rewards`, turns the verdicts of one training batch into every reward term and the
group advantages, so the driver and the offline re-scorer cannot disagree.

Decisions (docs/architecture.md, 'Decisions'):
- lambda is the share of think samples among the batch's VALID samples; a batch without valid samples has
  lambda = 0 (no think sample was seen; every R_a is 0 there, so the factors change nothing).
- Invalid samples get the step's worst accuracy reward, case 4's `-g_n - 2 (1 - g_n)` (`invalid_accuracy=
  "worst"`, the default), and R_f = R_c = R_t = 0: every valid total is at least its own R_a + 0.5 and case 4
  is the lowest R_a, so malformed output never pays more than a valid answer. `"zero"` gives R_a = 0, which
  beats a wrong direct answer (-1 + 0.5 + R_t < 0 while the batch's mean think quality is below 0.5). For the
  1/0 baselines both rules give 0, the worst they have.
- Consistency counts only for correct answers (effective R_c = 0 when wrong, so it never deepens a
  negative R_a); correct no_think samples get 1.
- No_think samples get the batch mean think quality of the think samples (0 when there are none).
- The baselines `grpo` / `grpo_cot` accept only one mode (answer-only / forced think); the other mode is
  invalid for them. Their accuracy is 1/0 and their factors are reported but not applied.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from audio_thinker.core.vocab import INVALID_ACCURACY, RESPONSE_MODES, VARIANTS
from audio_thinker.core.vocab import ResponseMode as Mode

ADV_EPS = 1e-4

_VALID_MODES = {
    "grpo": {"no_think"},
    "grpo_cot": {"think"},
    "atar": {"think", "no_think"},
    "atar_cr": {"think", "no_think"},
    "atar_cr_tr": {"think", "no_think"},
}
_JUDGE_TERMS = {
    "grpo": set(),
    "grpo_cot": set(),
    "atar": set(),
    "atar_cr": {"consistency"},
    "atar_cr_tr": {"consistency", "think_quality"},
}


class SampleError(ValueError):
    """Bad input for one sample; `index` is its position in the batch and `field` the offending field."""

    def __init__(self, index: int, field: str, message: str):
        super().__init__(f"sample {index}: {field}: {message}")
        self.index = index
        self.field = field
        self.message = message


@dataclass(frozen=True)
class SampleVerdict:
    """What the rewards need to know about one rollout.

    `mode` is the parser's mode; `consistency` (0/1) and `think_quality` (0..1) are judge verdicts, None
    when not asked for.
    """

    mode: Mode
    correct: bool
    group: str
    consistency: int | None = None
    think_quality: float | None = None


@dataclass(frozen=True)
class SampleReward:
    """Every reward term of one sample; terms the variant does not use are 0."""

    mode: Mode
    correct: bool
    format: float
    accuracy: float
    consistency: float
    think: float
    total: float
    advantage: float


@dataclass(frozen=True)
class RewardBatch:
    think_rate: float
    gamma_think: float
    gamma_no_think: float
    samples: list[SampleReward]


def check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"unknown reward variant {variant!r}; expected one of {', '.join(VARIANTS)}")


def needs_judge(variant: str) -> set[str]:
    """The judge verdicts a variant uses: a subset of {"consistency", "think_quality"}."""
    check_variant(variant)
    return set(_JUDGE_TERMS[variant])


def penalty_factors(think_rate: float, step: int, total_steps: int) -> tuple[float, float]:
    """(gamma_think, gamma_no_think) of eqs. 3-4: exp(-lambda*s), exp(-(1-lambda)*s), s = 1 - step/T."""
    check_step(step, total_steps)
    if not 0.0 <= think_rate <= 1.0:
        raise ValueError(f"think_rate must be in [0, 1], got {think_rate}")
    s = 1.0 - step / total_steps
    return math.exp(-think_rate * s), math.exp(-(1.0 - think_rate) * s)


def atar_accuracy(mode: str, correct: bool, gamma_think: float, gamma_no_think: float) -> float:
    """R_a of eq. 5 (cases 1-4); 0 for an invalid sample."""
    if mode == "think":
        return gamma_think if correct else -(1.0 - gamma_think)
    if mode == "no_think":
        return 2.0 * gamma_no_think if correct else -gamma_no_think - 2.0 * (1.0 - gamma_no_think)
    return 0.0


def check_step(step: int, total_steps: int) -> None:
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
        raise ValueError(f"total_steps must be an integer >= 1, got {total_steps!r}")
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= total_steps:
        raise ValueError(f"step must be an integer in [0, total_steps={total_steps}], got {step!r}")


def _members(groups: Sequence[str]) -> dict[str, list[int]]:
    members: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    return members


def group_advantages(
    totals: Sequence[float], groups: Sequence[str], min_std: float = 0.0, scale: bool = True
) -> list[float]:
    """Eq. 8 per group: (R - mean) / (std + 1e-4), std unbiased (ddof=1, as torch.std).

    A group of one has no spread to compare against and gets 0. So does a group whose std is below `min_std`
    (config `reward.min_group_std`; 0 = off): dividing by a tiny std would blow judge noise up to the size
    of a real difference between answers. `scale=False` (config `reward.scale_advantages`) leaves out the
    division: A = R - mean, Dr. GRPO's advantage (Liu et al. 2025, arXiv 2503.20783, sec. 3.1).
    """
    if len(totals) != len(groups):
        raise ValueError(f"{len(totals)} totals but {len(groups)} group ids")
    if not min_std >= 0:
        raise ValueError(f"min_std must be >= 0, got {min_std!r}")
    values = np.asarray(totals, dtype=np.float64)
    out = np.zeros(len(values), dtype=np.float64)
    for idx in _members(groups).values():
        if len(idx) < 2:
            continue
        r = values[idx]
        std = r.std(ddof=1)
        if std < min_std:
            continue
        out[idx] = (r - r.mean()) / (std + ADV_EPS) if scale else r - r.mean()
    return [float(a) for a in out]


def drop_zero_std_groups(totals: Sequence[float], groups: Sequence[str]) -> tuple[list[int], int]:
    """DAPO's dynamic-sampling filter (Yu et al. 2025, arXiv 2503.14476, eq. 11; config `run.drop_zero_std_groups`).

    A group whose rewards are all equal (a group of one included) has advantage 0 everywhere and carries no
    policy gradient. Returns the indices of the samples of the other groups, in input order, and how many
    groups were dropped.
    """
    if len(totals) != len(groups):
        raise ValueError(f"{len(totals)} totals but {len(groups)} group ids")
    kept, dropped = [], 0
    for idx in _members(groups).values():
        if len({float(totals[i]) for i in idx}) > 1:
            kept.extend(idx)
        else:
            dropped += 1
    return sorted(kept), dropped


def _check_sample(i: int, s: SampleVerdict, variant: str) -> None:
    needs, valid = _JUDGE_TERMS[variant], _VALID_MODES[variant]
    if s.mode not in RESPONSE_MODES:
        raise SampleError(i, "mode", f"must be one of {', '.join(RESPONSE_MODES)}, got {s.mode!r}")
    if not isinstance(s.correct, bool):
        raise SampleError(i, "correct", f"must be a bool, got {s.correct!r}")
    if s.mode == "invalid" and s.correct:
        raise SampleError(i, "correct", "an invalid response has no answer and cannot be correct")
    if not isinstance(s.group, str):
        raise SampleError(i, "group", f"must be a string, got {s.group!r}")
    if s.consistency is not None and (isinstance(s.consistency, float) or s.consistency not in (0, 1)):
        raise SampleError(i, "consistency", f"must be 0 or 1, got {s.consistency!r}")
    if s.think_quality is not None:
        q = s.think_quality
        if isinstance(q, bool) or not isinstance(q, numbers.Real) or not 0.0 <= q <= 1.0:
            raise SampleError(i, "think_quality", f"must be a number in [0, 1], got {q!r}")
    if s.mode == "think" and "think" in valid:
        if "consistency" in needs and s.correct and s.consistency is None:
            raise SampleError(i, "consistency", f"missing: {variant} needs it for a correct think sample")
        if "think_quality" in needs and s.think_quality is None:
            raise SampleError(i, "think_quality", f"missing: {variant} needs it for a think sample")


def compute_rewards(
    samples: Sequence[SampleVerdict],
    step: int,
    total_steps: int,
    variant: str,
    *,
    invalid_accuracy: str = "worst",
    min_group_std: float = 0.0,
    scale_advantages: bool = True,
) -> RewardBatch:
    """All reward terms, totals and group advantages of one training batch (input order kept).

    `invalid_accuracy` ("worst" or "zero", config `reward.invalid_accuracy`): the R_a of invalid samples;
    `min_group_std` and `scale_advantages` (config `reward.min_group_std`, `reward.scale_advantages`): see
    `group_advantages`.
    """
    check_variant(variant)
    check_step(step, total_steps)
    if invalid_accuracy not in INVALID_ACCURACY:
        raise ValueError(f"invalid_accuracy must be one of {', '.join(INVALID_ACCURACY)}, got {invalid_accuracy!r}")
    needs, valid = _JUDGE_TERMS[variant], _VALID_MODES[variant]
    for i, s in enumerate(samples):
        _check_sample(i, s, variant)

    modes = [s.mode if s.mode in valid else "invalid" for s in samples]
    n_think, n_valid = modes.count("think"), sum(m != "invalid" for m in modes)
    think_rate = n_think / n_valid if n_valid else 0.0
    g_t, g_n = penalty_factors(think_rate, step, total_steps)
    mean_think = 0.0
    if "think_quality" in needs and n_think:
        mean_think = float(np.mean([s.think_quality for s, m in zip(samples, modes) if m == "think"]))

    terms = []
    for s, mode in zip(samples, modes):
        fmt = 0.0 if mode == "invalid" else 1.0
        if variant in ("grpo", "grpo_cot"):
            acc = 1.0 if mode != "invalid" and s.correct else 0.0
            terms.append((fmt, acc, 0.0, 0.0, acc + 0.5 * fmt))
            continue
        if mode == "invalid" and invalid_accuracy == "worst":
            acc = atar_accuracy("no_think", False, g_t, g_n)
        else:
            acc = atar_accuracy(mode, s.correct, g_t, g_n)
        cons = 0.0
        if "consistency" in needs and s.correct and mode != "invalid":
            cons = 1.0 if mode == "no_think" else float(s.consistency)
        think = 0.0
        if "think_quality" in needs and mode == "think":
            think = float(s.think_quality)
        elif "think_quality" in needs and mode == "no_think":
            think = mean_think
        terms.append((fmt, acc, cons, think, acc * (1.0 + 0.5 * cons) + 0.5 * fmt + think))

    advantages = group_advantages([t[4] for t in terms], [s.group for s in samples], min_group_std, scale_advantages)
    rewards = [
        SampleReward(s.mode, s.correct, format=f, accuracy=a, consistency=c, think=t, total=r, advantage=adv)
        for s, (f, a, c, t, r), adv in zip(samples, terms, advantages)
    ]
    return RewardBatch(think_rate=think_rate, gamma_think=g_t, gamma_no_think=g_n, samples=rewards)


def rewards_from_totals(samples: Sequence[SampleVerdict], totals: Sequence[float]) -> RewardBatch:
    """A RewardBatch for a reward hook that only gives each sample's total (a toy or a researcher's own reward):
    the terms are 0, the ATAR factors 1, the advantages eq. 8 within each group."""
    if len(samples) != len(totals):
        raise ValueError(f"{len(samples)} samples but {len(totals)} totals: one total per sample")
    valid = [s.mode for s in samples if s.mode != "invalid"]
    think_rate = valid.count("think") / len(valid) if valid else 0.0
    advantages = group_advantages([float(t) for t in totals], [s.group for s in samples])
    rewards = [
        SampleReward(
            s.mode, s.correct, format=0.0, accuracy=0.0, consistency=0.0, think=0.0, total=float(t), advantage=a
        )
        for s, t, a in zip(samples, totals, advantages)
    ]
    return RewardBatch(think_rate=think_rate, gamma_think=1.0, gamma_no_think=1.0, samples=rewards)


def think_group_std(batch: RewardBatch, groups: Sequence[str]) -> float | None:
    """`reward/think_group_std`: the mean over groups of the std (ddof=1) of R_t among the group's think samples.

    It measures how well the judge tells one question's reasonings apart: near 0, R_t moves no advantage
    (argmax scores that all land on one digit, say). Groups with fewer than two think samples are left out;
    None when no group is left.
    """
    if len(batch.samples) != len(groups):
        raise ValueError(f"{len(batch.samples)} samples but {len(groups)} group ids")
    members: dict[str, list[float]] = {}
    for s, g in zip(batch.samples, groups):
        if s.mode == "think":
            members.setdefault(g, []).append(s.think)
    stds = [float(np.std(v, ddof=1)) for v in members.values() if len(v) >= 2]
    return float(np.mean(stds)) if stds else None


def advantage_abs_mean(batch: RewardBatch) -> float:
    """`advantage/abs_mean`: the mean |A_i| over the step's samples (0 when no group carries a signal)."""
    return float(np.mean([abs(s.advantage) for s in batch.samples])) if batch.samples else 0.0


def reward_metrics(batch: RewardBatch, groups: Sequence[str]) -> dict[str, float]:
    """The two metrics above under their metric names; `reward/think_group_std` only where it is defined."""
    out = {"advantage/abs_mean": advantage_abs_mean(batch)}
    spread = think_group_std(batch, groups)
    if spread is not None:
        out["reward/think_group_std"] = spread
    return out
