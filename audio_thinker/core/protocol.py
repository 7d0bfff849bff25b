"""The adaptive-think protocol: instruction templates, response parsing and answer matching.

The same parser decides the mode of a rollout (for the rewards) and of an evaluation answer (for the
no-think rate), so it is strict on purpose: a response is either `<think>T</think><answer>A</answer>`,
or `<answer>A</answer>`, or invalid. Matching follows the official MMAU/MMAR token rule so that training
correctness and benchmark correctness agree.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from audio_thinker.core.errors import UserError
from audio_thinker.core.vocab import PROMPT_MODES as MODES
from audio_thinker.core.vocab import ResponseMode, normalize_text

PROMPT_DIR = Path(__file__).resolve().parent / "templates"
PLACEHOLDERS = ("question", "choices")
TAGS = ("<think>", "</think>", "<answer>", "</answer>")
# Engines may hand back the chat end token with the text; it is tolerated only at the very end.
END_TOKENS = ("<|im_end|>", "<|endoftext|>")
LETTERS = string.ascii_uppercase

class TemplateError(UserError, ValueError):
    """An instruction template that cannot be used; the message names the file and the problem."""


# ---------------------------------------------------------------------------------------------------------
# Instruction templates


def check_template(template: str, source: str = "<template>") -> None:
    """Raise TemplateError unless the template uses exactly the placeholders {question} and {choices}.

    Both are required: a template without {choices} would silently drop the options from the prompt.
    Literal braces are written `{{` and `}}` (str.format rules).
    """
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise TemplateError(
            f"{source}: malformed template ({exc}); write literal braces as {{{{ and }}}}"
        ) from None
    for _, field, spec, conv in parts:
        if field is None:
            continue
        if field not in PLACEHOLDERS:
            raise TemplateError(
                f"{source}: unknown placeholder {{{field}}}; allowed: {{question}}, {{choices}} "
                "(write literal braces as {{ and }})"
            )
        if spec or conv:
            raise TemplateError(f"{source}: placeholder {{{field}}} must not have a format spec")
    fields = {field for _, field, _, _ in parts}
    for name in PLACEHOLDERS:
        if name not in fields:
            raise TemplateError(f"{source}: placeholder {{{name}}} is missing")


def load_template(mode: str, template_file: str | Path | None = None) -> str:
    """The instruction template for `mode`: `template_file` when given, else the packaged default."""
    if mode not in MODES:
        raise ValueError(f"unknown prompt mode {mode!r}; expected one of {', '.join(MODES)}")
    path = Path(template_file) if template_file is not None else PROMPT_DIR / f"{mode}.txt"
    if not path.is_file():
        raise TemplateError(f"template file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise TemplateError(f"template file {path} is not UTF-8 text ({exc})") from None
    check_template(text, str(path))
    return text


def format_choices(choices: Sequence[str], letters: bool) -> str:
    """One option per line: `(A) text` with letters, `- text` without."""
    _check_choices(choices)
    if letters:
        if len(choices) > len(LETTERS):
            raise ValueError(f"{len(choices)} choices cannot be lettered (at most {len(LETTERS)})")
        return "\n".join(f"({LETTERS[i]}) {c.strip()}" for i, c in enumerate(choices))
    return "\n".join(f"- {c.strip()}" for c in choices)


def build_instruction(
    question: str, choices: Sequence[str], mode: str, template: str | None = None, letters: bool = False
) -> str:
    """The user-turn text (no audio placeholder: chat rendering per model family happens in rollout/)."""
    if not isinstance(question, str) or not question.strip():
        raise ValueError("question must be a non-empty string")
    if template is None:
        template = load_template(mode)
    else:
        if mode not in MODES:
            raise ValueError(f"unknown prompt mode {mode!r}; expected one of {', '.join(MODES)}")
        check_template(template)
    return template.format(question=question.strip(), choices=format_choices(choices, letters)).strip()


def _check_choices(choices: Sequence[str]) -> None:
    if isinstance(choices, str) or not isinstance(choices, Sequence) or len(choices) == 0:
        raise ValueError(f"choices must be a non-empty list of strings, got {choices!r}")
    for i, c in enumerate(choices):
        if not isinstance(c, str) or not c.strip():
            raise ValueError(f"choices[{i}] must be a non-empty string, got {c!r}")


# ---------------------------------------------------------------------------------------------------------
# Response parsing


@dataclass(frozen=True)
class Parsed:
    """A parsed response: `think` and `answer` are stripped; `reason` says why a response is invalid."""

    mode: ResponseMode
    think: str | None = None
    answer: str | None = None
    reason: str = ""


_THINK_RE = re.compile(r"\s*<think>(.*)</think>\s*<answer>(.*)</answer>\s*", re.DOTALL)
_ANSWER_RE = re.compile(r"\s*<answer>(.*)</answer>\s*", re.DOTALL)


def strip_end_tokens(text: str) -> str:
    """Remove chat end tokens (and whitespace) from the very end of a completion."""
    text = text.rstrip()
    while text.endswith(END_TOKENS):
        for token in END_TOKENS:
            if text.endswith(token):
                text = text[: -len(token)].rstrip()
    return text


def _invalid(reason: str) -> Parsed:
    return Parsed(mode="invalid", reason=reason)


def parse_response(text: str) -> Parsed:
    """Classify a completion as think / no_think / invalid (docs/rewards.md) and extract its parts."""
    if not isinstance(text, str):
        raise TypeError(f"response must be a string, got {type(text).__name__}")
    text = strip_end_tokens(text)
    counts = {tag: text.count(tag) for tag in TAGS}
    for tag, n in counts.items():
        if n > 1:
            return _invalid(f"duplicated {tag}")
    if counts["<answer>"] == 0:
        return _invalid("no <answer> tag")
    if counts["</answer>"] == 0:
        return _invalid("unclosed <answer> (truncated output?)")
    if counts["<think>"] and not counts["</think>"]:
        return _invalid("unclosed <think> (truncated output?)")
    if counts["</think>"] and not counts["<think>"]:
        return _invalid("</think> without <think>")
    a_open, a_close = text.index("<answer>"), text.index("</answer>")
    if a_close < a_open:
        return _invalid("</answer> before <answer>")
    if counts["<think>"]:
        t_open, t_close = text.index("<think>"), text.index("</think>")
        if t_close < t_open:
            return _invalid("</think> before <think>")
        if t_open < a_open < t_close or a_open < t_open < a_close:
            return _invalid("nested tags")
        if a_open < t_open:
            return _invalid("<answer> before <think>")
        m = _THINK_RE.fullmatch(text)
    else:
        m = _ANSWER_RE.fullmatch(text)
    if m is None:
        return _invalid("text outside the tags")
    if counts["<think>"]:
        think, answer = m.group(1).strip(), m.group(2).strip()
    else:
        think, answer = "", m.group(1).strip()
    if not answer:
        return _invalid("empty answer")
    if think:
        return Parsed(mode="think", think=think, answer=answer)
    return Parsed(mode="no_think", answer=answer)


# ---------------------------------------------------------------------------------------------------------
# Answer matching


def _tokens(text: str) -> set[str]:
    return set(re.findall(r"\b\w+\b", text.lower()))


def mmau_token_match(prediction: str, answer_choice: str, choices: Sequence[str]) -> bool:
    """The official MMAU / MMAR `string_match` rule.

    Correct when every word token of the answer choice is in the prediction and the prediction shares no
    token with the tokens that only the other choices have (choices with the answer's token set are ignored).
    """
    pred = _tokens(prediction)
    target = _tokens(answer_choice)
    if not pred:
        return False
    others: set[str] = set()
    for choice in choices:
        tokens = _tokens(choice)
        if tokens != target:
            others |= tokens - target
    return target <= pred and pred.isdisjoint(others)


_LETTER_RE = re.compile(r"\(\s*([A-Za-z])\s*\)|([A-Za-z])\s*[.):]?")


def match_choice(answer: str, choices: Sequence[str], letters: bool = False) -> int | None:
    """Index of the choice the answer names, or None.

    In order: the exact choice text (case and whitespace-insensitive); a bare letter `B`, `(B)`, `B.`, `B)`
    when the prompt listed letters; the MMAU token rule, which must single out one choice.
    """
    _check_choices(choices)
    norm = normalize_text(answer)
    if not norm:
        return None
    for i, choice in enumerate(choices):
        if normalize_text(choice) == norm:
            return i
    if letters:
        m = _LETTER_RE.fullmatch(answer.strip())
        if m:
            index = LETTERS.index((m.group(1) or m.group(2)).upper())
            return index if index < len(choices) else None
    hits = [i for i, choice in enumerate(choices) if mmau_token_match(answer, choice, choices)]
    return hits[0] if len(hits) == 1 else None


def is_correct(parsed: Parsed, choices: Sequence[str], answer_text: str, letters: bool = False) -> bool:
    """Whether a parsed response names `answer_text` (the correct choice's text); invalid is never correct."""
    _check_choices(choices)
    gold = [i for i, c in enumerate(choices) if normalize_text(c) == normalize_text(answer_text)]
    if not gold:
        raise ValueError(f"answer {answer_text!r} is not one of the choices {list(choices)!r}")
    if parsed.mode == "invalid" or parsed.answer is None:
        return False
    return match_choice(parsed.answer, choices, letters) in gold
