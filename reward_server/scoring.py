"""Scores from one forward pass: verdict values read from the judge's next-token distribution.

For each judging prompt the backend returns log P(label | prompt) for every verdict label. Restricting the
distribution to the prompt's labels and renormalising gives
  consistency_prob = P(yes) / (P(yes) + P(no)),  consistency = 1 when consistency_prob >= 0.5,
  think_quality    = score_mode "expected": sum_d P(d) * d / 9 over the digits 0..9 (a smooth function of the
                     judge's beliefs); "argmax": d* / 9 for the most likely digit d* (the discrete score a judge
                     writing one digit gives, the paper's grid; ties go to the lower digit).
Consistency is the same in both modes: the most likely of yes / no is the one with probability >= 0.5.
No sampling, no parsing of generated text: the same numbers on every backend.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from audio_thinker.core.vocab import SCORE_MODES, ScoreMode
from reward_server.prompts import ALL_LABELS, PROMPTS, JudgePrompt, Tokenizer, render_ids
from reward_server.schemas import ALL_SCORES, JudgeItem, JudgeResult, ScoreName


class BackendError(RuntimeError):
    """The judge model could not produce a score (engine failure, remote error, labels not visible)."""


class PromptTooLongError(ValueError):
    """A judging prompt longer than the judge's context; `where` names the item in its request (`items[3]`)."""

    def __init__(self, where: str, score: str, n_tokens: int, limit: int):
        super().__init__(f"{where}: the {score} prompt is {n_tokens} tokens, the judge takes at most {limit}")
        self.where = where


class LabelBackend(Protocol):
    max_prompt_tokens: int
    tokenizer: Tokenizer

    def label_logprobs(self, prompt_ids: Sequence[Sequence[int]]) -> np.ndarray:
        """log P(label | prompt) for each prompt (rows) and each of ALL_LABELS (columns); -inf if unseen."""
        ...


@dataclass(frozen=True)
class Prepared:
    """One item ready for the judge: the scores asked for, the token ids of one prompt per score, and how the
    label distribution becomes a score (items of one micro-batch may come from requests with different modes)."""

    scores: tuple[ScoreName, ...]
    prompt_ids: tuple[list[int], ...]
    score_mode: ScoreMode = "expected"


def label_distribution(logprobs: Sequence[float]) -> np.ndarray:
    """Softmax restricted to the given labels; -inf entries get probability 0; all -inf is an error."""
    lp = np.asarray(logprobs, dtype=np.float64)
    if lp.ndim != 1 or lp.size == 0:
        raise ValueError(f"expected a non-empty vector of log-probabilities, got shape {lp.shape}")
    if np.isnan(lp).any() or np.isposinf(lp).any():
        raise BackendError(f"invalid label log-probabilities {lp.tolist()}")
    top = lp.max()
    if not np.isfinite(top):
        raise BackendError("none of the verdict labels is visible in the judge's next-token distribution")
    p = np.exp(lp - top)
    return p / p.sum()


def expected_value(prompt: JudgePrompt, logprobs: Sequence[float]) -> float:
    """E[value] of the prompt's labels under their renormalised distribution (in [min value, max value])."""
    p = label_distribution(logprobs)
    value = float(np.dot(p, prompt.values))
    return min(max(value, min(prompt.values)), max(prompt.values))


def argmax_value(prompt: JudgePrompt, logprobs: Sequence[float]) -> float:
    """The value of the most likely label (the first of equally likely ones: the lower digit, or "yes")."""
    return float(prompt.values[int(np.argmax(label_distribution(logprobs)))])


def label_value(prompt: JudgePrompt, logprobs: Sequence[float], score_mode: str) -> float:
    """The prompt's score under `score_mode`: the expected value or the value of the most likely label."""
    if score_mode == "expected":
        return expected_value(prompt, logprobs)
    if score_mode == "argmax":
        return argmax_value(prompt, logprobs)
    raise ValueError(f"score_mode must be one of {', '.join(SCORE_MODES)}, got {score_mode!r}")


def prepare_item(
    backend: LabelBackend, where: str, item: JudgeItem, scores: Sequence[ScoreName], score_mode: ScoreMode = "expected"
) -> Prepared:
    """Render and tokenize the judging prompts of one item (`where`: the item in its request, for the error)."""
    if score_mode not in SCORE_MODES:
        raise ValueError(f"score_mode must be one of {', '.join(SCORE_MODES)}, got {score_mode!r}")
    ids = tuple(render_ids(PROMPTS[name], item, backend.tokenizer).ids for name in scores)
    for name, prompt_ids in zip(scores, ids):
        if len(prompt_ids) > backend.max_prompt_tokens:
            raise PromptTooLongError(where, name, len(prompt_ids), backend.max_prompt_tokens)
    return Prepared(tuple(scores), ids, score_mode)


def prepare(
    backend: LabelBackend,
    items: Sequence[JudgeItem],
    scores: Sequence[ScoreName],
    score_mode: ScoreMode = "expected",
) -> list[Prepared]:
    """Every item prepared (prepare_item); PromptTooLongError names the first one too long."""
    return [prepare_item(backend, f"items[{i}]", item, scores, score_mode) for i, item in enumerate(items)]


def score_prepared(backend: LabelBackend, items: Sequence[Prepared]) -> list[JudgeResult]:
    """Scores of every prepared item from ONE backend call (all prompts of all items in one batch)."""
    jobs = [(i, name, ids) for i, item in enumerate(items) for name, ids in zip(item.scores, item.prompt_ids)]
    if not jobs:
        return [JudgeResult() for _ in items]
    lp = backend.label_logprobs([ids for _, _, ids in jobs])
    if lp.shape != (len(jobs), len(ALL_LABELS)):
        raise BackendError(
            f"backend returned log-probabilities of shape {lp.shape}, expected {(len(jobs), len(ALL_LABELS))}"
        )
    fields: list[dict[str, float | int]] = [{} for _ in items]
    for row, (i, name, _) in zip(lp, jobs):
        prompt = PROMPTS[name]
        lp = row[[ALL_LABELS.index(label) for label in prompt.labels]]
        if name == "consistency":
            value = expected_value(prompt, lp)
            fields[i].update(consistency=int(value >= 0.5), consistency_prob=value)
        else:
            fields[i]["think_quality"] = label_value(prompt, lp, items[i].score_mode)
    return [JudgeResult(**f) for f in fields]


def score_items(
    backend: LabelBackend,
    items: Sequence[JudgeItem],
    scores: Sequence[ScoreName] = ALL_SCORES,
    score_mode: ScoreMode = "expected",
) -> list[JudgeResult]:
    """In-process scoring (no server): the same numbers /v1/judge returns for these items."""
    return score_prepared(backend, prepare(backend, items, scores, score_mode))
