"""`extract_answer` strict vs lenient, and the prediction each puts under a benchmark's key."""

from __future__ import annotations

import pytest

from audio_thinker.app.eval.extraction import extract_answer, prediction_from_text
from audio_thinker.app.eval.predictions import prediction_text
from audio_thinker.core.protocol import parse_response

CHOICES = ["dog barking", "cat meowing", "car horn", "rain"]


@pytest.mark.parametrize(
    "text,strict,lenient",
    [
        ("<think>Low bursts.</think>\n<answer>dog barking</answer>", "dog barking", "dog barking"),
        ("<answer> rain </answer><|im_end|>", "rain", "rain"),
        # Text outside the tags: invalid for the parser, the answer tag's text for lenient.
        ("Sure! <answer>car horn</answer>", None, "car horn"),
        # Repeated tags: the last complete one.
        ("<answer>cat meowing</answer> no, <answer>dog barking</answer>", None, "dog barking"),
        ("<answer>cat <answer>rain</answer>", None, "rain"),
        # Truncated reasoning, no answer tag: the whole response is the free-text prediction.
        ("<think>I hear a low rumble and then", None, "<think>I hear a low rumble and then"),
        ("It is a dog barking.<|endoftext|>", None, "It is a dog barking."),
        ("dog barking</answer>", None, "dog barking</answer>"),  # no complete pair: free text
        # Nothing to score.
        ("<answer>  </answer>", None, None),
        ("", None, None),
        ("<|im_end|>", None, None),
    ],
)
def test_extract_answer(text, strict, lenient):
    assert extract_answer(text, "strict") == strict
    assert extract_answer(text, "lenient") == lenient


def test_unknown_mode_is_an_error():
    with pytest.raises(ValueError, match="answer extraction must be one of strict, lenient, got 'loose'"):
        extract_answer("<answer>a</answer>", "loose")


TEXTS = [
    "<answer>dog barking</answer>",
    "<think>t</think><answer>The dog is barking</answer>",
    "<answer>B</answer>",
    "<answer>something else</answer>",
    "Sure! <answer>car horn</answer>",
    "<think>cut off",
    "",
]


@pytest.mark.parametrize("bench", ["mmau", "mmar", "air", "synthetic"])
@pytest.mark.parametrize("letters", [False, True])
def test_strict_is_todays_prediction(bench, letters):
    for text in TEXTS:
        want = prediction_text(bench, parse_response(text), CHOICES, letters)
        assert prediction_from_text(bench, text, CHOICES, letters, "strict") == want, text


@pytest.mark.parametrize(
    "bench,text,want",
    [
        ("mmau", "Sure! <answer>car horn</answer>", "car horn"),  # the named choice's text
        ("mmau", "<think>cut off", "<think>cut off"),  # free text for the official token rule
        ("mmar", "It sounds like rain to me", "rain"),  # the token rule singles out one choice
        ("air", "Sure! <answer>car horn</answer>", "C"),
        ("air", "The answer is B.", "B"),  # AIR's rule: the second-to-last character
        ("air", "Because of the bark", "B"),  # ... or the first one, as the official script reads it
        ("air", "<think>cut off", ""),  # no letter: unparseable
        ("mmau", "<answer></answer>", ""),
    ],
)
def test_lenient_predictions(bench, text, want):
    assert prediction_from_text(bench, text, CHOICES, False, "lenient") == want
