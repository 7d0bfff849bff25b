"""make-cot's pure parts: the rationale check, the prompt filling, the endpoint URL and response parsing."""

from __future__ import annotations

import pytest

from audio_thinker.app.data.chat_client import ChatError, chat_url, completion_text
from audio_thinker.app.data.cot import check_rationale, fill


@pytest.mark.parametrize(
    "text, reason",
    [
        ("I hear a bell. Therefore, the answer is a church bell.", None),
        ("Bells ring. The answer is: **A Church  Bell**", None),
        ('So the answer is "a church bell."', None),
        ("It could be a car, but the answer is a car. No wait, the answer is a church bell!", None),
        ("The answer is a church bell. It is not a car.", "wrong final answer"),  # must END at the answer
        ("Therefore, the answer is a car.", "wrong final answer"),
        ("I hear a church bell.", "no final answer"),
        ("<think>bells</think> the answer is a church bell", "protocol tag"),
        ("   ", "empty rationale"),
    ],
)
def test_a_rationale_must_end_at_the_correct_answer(text, reason):
    got = check_rationale(text, "a church bell")
    assert (got if got is None else got.split(":")[0]) == reason


def test_fill_leaves_braces_inside_values_alone():
    values = {"caption": "a {question} sign", "question": "Q?", "choices": "- x", "answer": "x"}
    assert fill("{caption} | {question} | {answer} | {other}", values) == "a {question} sign | Q? | x | {other}"


def test_chat_url_and_completion_text():
    assert chat_url("http://h:1") == chat_url("http://h:1/v1/") == "http://h:1/v1/chat/completions"
    assert chat_url("http://h:1/v1/chat/completions") == "http://h:1/v1/chat/completions"
    assert completion_text('{"choices": [{"message": {"content": "hi"}}]}') == "hi"
    for body in ("<html>", '{"choices": []}', '{"choices": [{"message": {"content": null}}]}'):
        with pytest.raises(ChatError):
            completion_text(body)
