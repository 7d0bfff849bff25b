"""The paper's batch reward (eq. 7 with ATAR, eq. 8) for trainers other than ours: /v1/rewards and the TRL and verl
adapters all go through here, and here through `audio_thinker.core.rewards.compute_rewards`, the function our
driver and `audio-thinker rewards` use: the same batch gives the same numbers everywhere.

A batch is marked first (the strict parser's mode, the answer matched to the gold one), then the judge is asked
only what the variant needs (think_quality of every think sample, consistency of the correct ones: a wrong answer
earns no R_c), then the terms are computed over the whole batch (lambda is the batch's think share).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from audio_thinker.core.protocol import Parsed, is_correct, parse_response
from audio_thinker.core.rewards import RewardBatch, SampleVerdict, compute_rewards, needs_judge
from audio_thinker.core.vocab import normalize_text
from reward_server.schemas import JudgeItem, JudgeResult, Rollout, SampleTerms, ScoreName

# ChatML (Qwen) user turns, and `<|...|>` markers (audio placeholders, turn tokens) that are scaffolding, not text.
_CHATML_USER = re.compile(r"<\|im_start\|>user[ \t]*\n(.*?)(?:<\|im_end\|>|\Z)", re.DOTALL)
_MARKER = re.compile(r"<\|[A-Za-z0-9_]{1,40}\|>")
_AUDIO = re.compile(r"(?:Audio \d+: ?)?<\|audio_bos\|>.*?<\|audio_eos\|>\n?", re.DOTALL)  # Qwen2-Audio's label too


def question_text(prompt: str) -> str:
    """The question of a prompt as trainers send it: the last user turn of a ChatML chat prompt, without its
    `<|...|>` markers (audio placeholders); a plain prompt as it is, less such markers. The judge sees only this."""
    turns = _CHATML_USER.findall(prompt)
    return _MARKER.sub("", _AUDIO.sub("", turns[-1] if turns else prompt)).strip()


@dataclass(frozen=True)
class Marked:
    """A rollout as the rewards see it: the parse and whether its answer is the gold one."""

    parsed: Parsed
    correct: bool


def mark(rollout: Rollout) -> Marked:
    """Parse the response; with choices the benchmark's matching rule (ValueError when the gold answer is not one
    of them), else the normalised texts must be equal."""
    parsed = parse_response(rollout.response)
    if rollout.choices:
        return Marked(parsed, is_correct(parsed, rollout.choices, rollout.answer, rollout.letters))
    correct = parsed.mode != "invalid" and normalize_text(parsed.answer or "") == normalize_text(rollout.answer)
    return Marked(parsed, correct)


def judge_requests(
    rollouts: Sequence[Rollout], marked: Sequence[Marked], variant: str
) -> list[tuple[int, JudgeItem, tuple[ScoreName, ...]]]:
    """(index, item, scores) of every verdict the variant needs, in batch order."""
    needs = needs_judge(variant)
    out = []
    for i, (r, m) in enumerate(zip(rollouts, marked)):
        if m.parsed.mode != "think":
            continue
        scores = tuple(s for s in ("consistency", "think_quality") if s in needs and (s != "consistency" or m.correct))
        if scores:
            item = JudgeItem(question=r.question, think=m.parsed.think or "", answer=m.parsed.answer or "",
                             choices=r.choices)  # fmt: skip
            out.append((i, item, scores))
    return out


def batch_rewards(
    rollouts: Sequence[Rollout],
    marked: Sequence[Marked],
    verdicts: dict[int, JudgeResult],
    step: int,
    total_steps: int,
    variant: str = "atar_cr_tr",
    invalid_accuracy: str = "worst",
) -> RewardBatch:
    """Every term of every sample over the batch (`verdicts`: the judge's results by batch index)."""
    samples = [
        SampleVerdict(
            mode=m.parsed.mode,
            correct=m.correct,
            group=r.group,
            consistency=verdicts[i].consistency if i in verdicts else None,
            think_quality=verdicts[i].think_quality if i in verdicts else None,
        )
        for i, (r, m) in enumerate(zip(rollouts, marked))
    ]
    return compute_rewards(samples, step, total_steps, variant, invalid_accuracy=invalid_accuracy)


def sample_terms(batch: RewardBatch, verdicts: dict[int, JudgeResult], advantages: bool) -> list[SampleTerms]:
    """The wire form of a batch's terms (the judge's verdicts beside them)."""
    out = []
    for i, s in enumerate(batch.samples):
        v = verdicts.get(i, JudgeResult())
        out.append(SampleTerms(
            mode=s.mode, correct=s.correct, format=s.format, accuracy=s.accuracy, consistency=s.consistency,
            think=s.think, total=s.total, advantage=s.advantage if advantages else None,
            judge_consistency=v.consistency, judge_think_quality=v.think_quality,
        ))  # fmt: skip
    return out
