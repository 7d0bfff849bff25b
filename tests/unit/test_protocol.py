"""The adaptive-think protocol: templates, the strict response parser and answer matching."""

from __future__ import annotations

import pytest

from audio_thinker.core.protocol import (
    MODES,
    Parsed,
    TemplateError,
    build_instruction,
    format_choices,
    is_correct,
    load_template,
    match_choice,
    mmau_token_match,
    parse_response,
)

# ---------------------------------------------------------------------------------------------------------
# Parser: (response, mode, think, answer)

VALID_CASES = [
    ("<think>T</think><answer>A</answer>", "think", "T", "A"),
    ("<think>T</think>\n<answer>A</answer>", "think", "T", "A"),
    ("  \n<think>\n reason \n</think>\n\n<answer>\n dog \n</answer>\n  ", "think", "reason", "dog"),
    (
        "<think>line one\nline two</think> <answer>two words</answer>",
        "think",
        "line one\nline two",
        "two words",
    ),
    ("<think>T</think><answer>A</answer><|im_end|>", "think", "T", "A"),
    ("<think>T</think><answer>A</answer>\n<|endoftext|>\n", "think", "T", "A"),
    ("<think>T</think><answer>A</answer><|im_end|><|endoftext|>", "think", "T", "A"),
    (
        "<think>I hear 3 < 4 barks & a > sign</think><answer>A</answer>",
        "think",
        "I hear 3 < 4 barks & a > sign",
        "A",
    ),
    ("<answer>A</answer>", "no_think", None, "A"),
    ("\n\n<answer>Dog Barking</answer>\n", "no_think", None, "Dog Barking"),
    ("<answer>  the dog is barking  </answer>", "no_think", None, "the dog is barking"),
    ("<answer>A</answer><|im_end|>", "no_think", None, "A"),
    ("<think></think><answer>A</answer>", "no_think", None, "A"),
    ("<think>   \n\t </think>\n<answer>A</answer>", "no_think", None, "A"),
    ("<think></think><answer>A</answer><|endoftext|>", "no_think", None, "A"),
]

INVALID_CASES = [
    ("", "no <answer> tag"),
    ("   \n ", "no <answer> tag"),
    ("dog barking", "no <answer> tag"),
    ("<think>only thinking</think>", "no <answer> tag"),
    ("<think>truncated reasoning that never end", "no <answer> tag"),
    ("<think>T</think><answer>trunc", "unclosed <answer> (truncated output?)"),
    ("<answer>trunc", "unclosed <answer> (truncated output?)"),
    ("<think>T<answer>A</answer>", "unclosed <think> (truncated output?)"),
    ("T</think><answer>A</answer>", "</think> without <think>"),
    ("<answer></answer>", "empty answer"),
    ("<think>T</think><answer> \n </answer>", "empty answer"),
    ("<think>T</think><answer>A</answer><answer>B</answer>", "duplicated <answer>"),
    ("<think>a</think><think>b</think><answer>A</answer>", "duplicated <think>"),
    ("<think>a <think>b</think></think><answer>A</answer>", "duplicated <think>"),
    ("<think>a</think> b </think><answer>A</answer>", "duplicated </think>"),
    ("<think>T <answer>A</answer></think>", "nested tags"),
    ("<answer>A <think>T</think></answer>", "nested tags"),
    ("<answer>A</answer><think>T</think>", "<answer> before <think>"),
    ("</answer>A<answer>", "</answer> before <answer>"),
    ("</think>T<think><answer>A</answer>", "</think> before <think>"),
    ("Sure! <answer>A</answer>", "text outside the tags"),
    ("<answer>A</answer> because it barks", "text outside the tags"),
    ("<think>T</think> so: <answer>A</answer>", "text outside the tags"),
    ("<answer>A</answer><|im_end|> more", "text outside the tags"),
    ("<|im_end|><answer>A</answer>", "text outside the tags"),
    ("<Answer>A</Answer>", "no <answer> tag"),
]


@pytest.mark.parametrize("text,mode,think,answer", VALID_CASES)
def test_parse_valid(text, mode, think, answer):
    assert parse_response(text) == Parsed(mode=mode, think=think, answer=answer)


@pytest.mark.parametrize("text,reason", INVALID_CASES)
def test_parse_invalid(text, reason):
    assert parse_response(text) == Parsed(mode="invalid", reason=reason)


def test_parse_rejects_non_string():
    with pytest.raises(TypeError, match="must be a string"):
        parse_response(None)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------------
# Matching

CHOICES = ["dog barking", "cat meowing", "car horn", "rain"]


@pytest.mark.parametrize(
    "answer,letters,expected",
    [
        ("dog barking", False, 0),
        ("  DOG   Barking ", False, 0),  # exact text, case and spaces ignored
        ("rain", False, 3),
        ("The dog is barking loudly", False, 0),  # extra words are fine (token rule)
        ("barking dog", False, 0),  # word order does not matter to the token rule
        ("dog", False, None),  # not all answer tokens present
        ("dog barking, not a cat", False, None),  # names a token only a wrong choice has
        ("car", False, None),
        ("", False, None),  # empty prediction
        ("!!!", False, None),  # no word tokens at all
        ("B", False, None),  # bare letter without letters listed
        ("B", True, 1),
        ("(B)", True, 1),
        ("( c )", True, 2),
        ("D.", True, 3),
        ("a)", True, 0),
        ("E", True, None),  # a letter past the last choice
        ("AB", True, None),
        ("cat meowing", True, 1),  # text still works with letters
    ],
)
def test_match_choice(answer, letters, expected):
    assert match_choice(answer, CHOICES, letters=letters) == expected


def test_match_answer_words_inside_a_wrong_choice():
    choices = ["dog", "dog barking", "cat"]
    assert match_choice("dog", choices) == 0  # exact text
    assert match_choice("a dog", choices) == 0  # {"dog"} only; "barking" absent
    assert match_choice("the dog is barking", choices) == 1
    assert not mmau_token_match("the dog is barking", "dog", choices)  # "barking" belongs only to choice 1


def test_match_token_identical_choices_need_exact_text():
    choices = ["C major", "C# major", "D minor"]
    assert match_choice("c# MAJOR", choices) == 1  # exact text wins
    assert match_choice("it is in C major", choices) is None  # the tokens cannot tell choice 0 from 1


def test_mmau_token_match_is_the_official_rule():
    choices = ["Male speaker", "Female speaker", "Two speakers"]
    assert mmau_token_match("a male speaker", "Male speaker", choices)
    # "speaker" is shared with the answer, so it is not a wrong-choice token; "two"/"speakers" are.
    assert not mmau_token_match("male speaker, two speakers", "Male speaker", choices)
    assert not mmau_token_match("male", "Male speaker", choices)
    assert not mmau_token_match("", "Male speaker", choices)
    # A choice with the answer's token set (case/punctuation only) is ignored, as in the official script.
    assert mmau_token_match("Yes", "yes", ["yes", "Yes.", "no"])


def test_is_correct():
    think = parse_response("<think>barks</think><answer>dog barking</answer>")
    assert is_correct(think, CHOICES, "dog barking")
    assert not is_correct(think, CHOICES, "rain")
    assert is_correct(parse_response("<answer>(A)</answer>"), CHOICES, "dog barking", letters=True)
    assert not is_correct(parse_response("<answer>(A)</answer>"), CHOICES, "dog barking", letters=False)
    assert not is_correct(parse_response("dog barking"), CHOICES, "dog barking")  # invalid is never correct
    with pytest.raises(ValueError, match="not one of the choices"):
        is_correct(think, CHOICES, "horse")


# ---------------------------------------------------------------------------------------------------------
# Templates


@pytest.mark.parametrize("mode", MODES)
def test_default_templates_render(mode):
    text = build_instruction("What makes the sound?", ["dog barking", "rain"], mode)
    assert text.startswith("What makes the sound?")
    assert "- dog barking\n- rain" in text
    assert "<answer>" in text
    assert ("<think>" in text) == (mode != "no_think")
    assert "{" not in text


def test_format_choices():
    assert format_choices(["a dog ", "rain"], letters=True) == "(A) a dog\n(B) rain"
    assert format_choices(["a dog", "rain"], letters=False) == "- a dog\n- rain"
    with pytest.raises(ValueError, match=r"choices\[1\]"):
        format_choices(["a", " "], letters=False)
    with pytest.raises(ValueError, match="non-empty list"):
        format_choices([], letters=False)


def test_question_braces_are_not_placeholders():
    text = build_instruction(
        "Is it {choices}?", ["yes", "no"], "no_think", template="Q: {question}\n{choices}"
    )
    assert text == "Q: Is it {choices}?\n- yes\n- no"


def test_custom_template_file(tmp_path):
    path = tmp_path / "paper.txt"
    path.write_text("{question} Options: {choices}. Keep {{braces}}.\n")
    template = load_template("adaptive", path)
    assert build_instruction("Q?", ["x", "y"], "adaptive", template=template, letters=True) == (
        "Q? Options: (A) x\n(B) y. Keep {braces}."
    )


@pytest.mark.parametrize(
    "text,message",
    [
        ("{question} {choices} {audio}", r"unknown placeholder \{audio\}"),
        ("{question} {choices} {}", r"unknown placeholder \{\}"),
        ("{question} only", r"placeholder \{choices\} is missing"),
        ("{choices} only", r"placeholder \{question\} is missing"),
        ("{question} {choices!r}", "format spec"),
        ("{question} {choices} {", "malformed template"),
    ],
)
def test_bad_template_file(tmp_path, text, message):
    path = tmp_path / "bad.txt"
    path.write_text(text)
    with pytest.raises(TemplateError, match=message) as info:
        load_template("think", path)
    assert str(path) in str(info.value)


def test_template_errors():
    with pytest.raises(TemplateError, match="does not exist"):
        load_template("think", "/nonexistent/prompt.txt")
    with pytest.raises(ValueError, match="unknown prompt mode 'fast'"):
        load_template("fast")
    with pytest.raises(ValueError, match="question must be"):
        build_instruction("  ", ["a"], "think")
