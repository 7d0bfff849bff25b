"""Judge score modes on crafted label distributions: the expected digit vs the most likely one (scoring.py)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pytest
from pydantic import ValidationError

from audio_thinker.core.presets import PRESET_DIR, load_config
from reward_server.prompts import ALL_LABELS, PROMPTS
from reward_server.schemas import JudgeItem, JudgeRequest, JudgeResponse
from reward_server.scoring import argmax_value, expected_value, label_value, prepare, score_prepared

QUALITY, CONSISTENCY = PROMPTS["think_quality"], PROMPTS["consistency"]


def digits(probs: dict[int, float]) -> list[float]:
    """Log-probs of the digits 0..9 (absent digits: -inf, i.e. probability 0)."""
    return [math.log(probs[d]) if d in probs else -math.inf for d in range(10)]


@pytest.mark.parametrize(
    "probs,expected,argmax",
    [
        # 0.4 on 7, 0.3 on 0 and on 9: E = (2.8 + 2.7) / 9 = 0.6111, the mode is 7 -> 7/9 = 0.7778.
        ({7: 0.4, 0: 0.3, 9: 0.3}, 5.5 / 9, 7 / 9),
        # A tie between 3 and 6 goes to the lower digit: 3/9; E = 4.5 / 9 = 0.5.
        ({3: 0.5, 6: 0.5}, 0.5, 3 / 9),
        # One certain digit: both modes agree.
        ({8: 1.0}, 8 / 9, 8 / 9),
        # 0.1 on every digit, 0.11 on 2 (renormalised by 1.01): E = (0.1 * 45 + 0.01 * 2) / 1.01 / 9 = 0.4972;
        # a near-uniform judge still gets one grid value, its slight favourite 2/9.
        ({d: 0.1 + (0.01 if d == 2 else 0.0) for d in range(10)}, (4.5 + 0.02) / 1.01 / 9, 2 / 9),
    ],
)
def test_think_quality_expected_vs_argmax(probs, expected, argmax):
    lp = digits(probs)
    assert expected_value(QUALITY, lp) == pytest.approx(expected, abs=1e-12)
    assert argmax_value(QUALITY, lp) == pytest.approx(argmax, abs=1e-12)
    assert label_value(QUALITY, lp, "expected") == expected_value(QUALITY, lp)
    assert label_value(QUALITY, lp, "argmax") == argmax_value(QUALITY, lp)


def test_unnormalised_log_probs_give_the_same_scores():
    lp = np.array(digits({7: 0.4, 0: 0.3, 9: 0.3})) - 5.0  # only ratios matter
    assert argmax_value(QUALITY, lp) == pytest.approx(7 / 9)
    assert expected_value(QUALITY, lp) == pytest.approx(5.5 / 9)


def test_consistency_is_the_same_in_both_modes():
    # P(yes) = 0.3, P(no) = 0.1 -> 0.75: the most likely label is yes, and 0.75 >= 0.5.
    lp = [math.log(0.3), math.log(0.1)]
    assert expected_value(CONSISTENCY, lp) == pytest.approx(0.75)
    assert argmax_value(CONSISTENCY, lp) == 1.0
    assert argmax_value(CONSISTENCY, [math.log(0.2), math.log(0.2)]) == 1.0  # tie: yes, like prob >= 0.5


def test_unknown_mode_is_an_error():
    with pytest.raises(ValueError, match="score_mode must be one of expected, argmax, got 'mean'"):
        label_value(QUALITY, digits({1: 1.0}), "mean")


class CharTokenizer:
    """One id per character (no model, no vocabulary)."""

    def encode(self, text: str, add_special_tokens: bool = False, split_special_tokens: bool = False) -> list[int]:
        return [ord(c) for c in text]


class FakeBackend:
    """Every prompt gets the same crafted label log-probs (no model)."""

    max_prompt_tokens = 10_000
    tokenizer = CharTokenizer()

    def __init__(self, row: Sequence[float]):
        self.row = np.asarray(row, dtype=np.float64)

    def label_logprobs(self, prompt_ids: Sequence[Sequence[int]]) -> np.ndarray:
        return np.tile(self.row, (len(prompt_ids), 1))


def test_items_of_one_batch_keep_their_own_mode():
    row = np.full(len(ALL_LABELS), -math.inf)
    row[ALL_LABELS.index(" yes")], row[ALL_LABELS.index(" no")] = math.log(0.3), math.log(0.1)
    row[[ALL_LABELS.index(str(d)) for d in range(10)]] = digits({7: 0.4, 0: 0.3, 9: 0.3})
    backend = FakeBackend(row)
    item = JudgeItem(question="q", think="t", answer="a")
    batch = prepare(backend, [item], ["consistency", "think_quality"], "argmax") + prepare(
        backend, [item], ["consistency", "think_quality"]
    )
    argmax, expected = score_prepared(backend, batch)
    assert (argmax.think_quality, expected.think_quality) == (pytest.approx(7 / 9), pytest.approx(5.5 / 9))
    assert argmax.consistency == expected.consistency == 1
    assert argmax.consistency_prob == expected.consistency_prob == pytest.approx(0.75)
    with pytest.raises(ValueError, match="score_mode must be one of"):
        prepare(backend, [item], ["think_quality"], "mode")


def test_schema_field_is_optional_both_ways():
    assert JudgeRequest(items=[{"question": "q", "think": "t", "answer": "a"}]).score_mode is None
    assert JudgeRequest.model_validate({"items": [{"question": "q", "think": "t", "answer": "a"}],
                                        "score_mode": "argmax"}).score_mode == "argmax"
    with pytest.raises(ValidationError, match="score_mode"):
        JudgeRequest.model_validate({"items": [{"question": "q", "think": "t", "answer": "a"}], "score_mode": "x"})
    old_server = JudgeResponse.model_validate({"results": [], "model": "m", "prompt_version": "judge-v1"})
    assert old_server.score_mode is None


def test_paper_presets_read_the_argmax_score():
    assert load_config().judge.score_mode == "expected"
    assert load_config(PRESET_DIR / "qwen2-audio-7b.yaml").judge.score_mode == "argmax"
