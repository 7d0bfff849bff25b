"""Versioned judging prompts (our own wording) and the check that their verdict labels are single tokens.

Each prompt ends exactly where the judge writes its verdict, so one forward pass gives the next-token
distribution over the verdict labels (see scoring.py). That only works when every label is ONE token that
follows the prompt's last token as it would in running text; `label_token_ids` verifies this against the
judge's own tokenizer at start-up and fails with the offending label otherwise.

Qwen tokenizers split numbers into single digits and keep a leading space inside word tokens: the quality
scale is therefore 0..9 after "Score: " (space in the prompt, digit alone), and the consistency verdict is
" yes" / " no" after "Verdict:" (space inside the label).

Change a template or a label set -> bump its version and PROMPT_VERSION: scores are only comparable
within one version, and /v1/judge reports the version with every response.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from reward_server.schemas import JudgeItem, ScoreName

PROMPT_VERSION = "judge-v1"

_ITEM = """Question: {question}
{choices}Reasoning: {think}
Final answer: {answer}
"""

_CONSISTENCY = (
    "You are reviewing a student's worked solution. Look only at whether the reasoning and the final "
    "answer agree: the reasoning must lead to this final answer and must not point to a different one. "
    "Whether the answer is actually right does not matter here.\n\n"
    + _ITEM
    + "\nDoes the reasoning support the final answer? Reply yes or no.\nVerdict:"
)

_THINK_QUALITY = (
    "You are grading the reasoning in a student's worked solution, not the final answer. Judge whether "
    "the steps are relevant to the question, grounded in what was observed, logically connected and free "
    "of contradictions, repetition and filler. A lucky answer does not make poor reasoning good.\n\n"
    + _ITEM
    + "\nRate the reasoning from 0 (worthless) to 9 (excellent). Reply with one digit.\nScore: "
)


@dataclass(frozen=True)
class JudgePrompt:
    """One judging prompt: its template, the verdict labels the judge may write next, and their values."""

    score: ScoreName
    version: str
    template: str
    labels: tuple[str, ...]
    values: tuple[float, ...]


CONSISTENCY = JudgePrompt(
    "consistency", "consistency-v1", _CONSISTENCY, labels=(" yes", " no"), values=(1.0, 0.0)
)
THINK_QUALITY = JudgePrompt(
    "think_quality",
    "think-quality-v1",
    _THINK_QUALITY,
    labels=tuple(str(d) for d in range(10)),
    values=tuple(d / 9 for d in range(10)),
)
PROMPTS: dict[ScoreName, JudgePrompt] = {"consistency": CONSISTENCY, "think_quality": THINK_QUALITY}
# Every label of every prompt, in a fixed order: backends return log-probabilities for these columns.
ALL_LABELS: tuple[str, ...] = tuple(label for p in PROMPTS.values() for label in p.labels)

# A typical item, to render the prompts when checking the labels against a tokenizer.
_PROBE = JudgeItem(
    question="Which instrument is playing?",
    think="The sound is bowed and high-pitched, so it is a violin.",
    answer="violin",
    choices=["violin", "drums"],
)


class Tokenizer(Protocol):
    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str]: ...


class LabelTokenError(ValueError):
    """A verdict label that is not a single token of the judge's tokenizer right after the prompt."""


def render(prompt: JudgePrompt, item: JudgeItem) -> str:
    """The prompt text for one item; the judge's next token is the verdict."""
    choices = ""
    if item.choices:
        choices = "Choices: " + " | ".join(c.strip() for c in item.choices) + "\n"
    return prompt.template.format(
        question=item.question.strip(), choices=choices, think=item.think.strip(), answer=item.answer.strip()
    )


def label_token_ids(tokenizer: Tokenizer) -> dict[str, int]:
    """Token id of every label of ALL_LABELS, checked: `encode(prompt + label) == encode(prompt) + [id]`.

    Raises LabelTokenError naming the label and how it was split when that does not hold.
    """
    ids: dict[str, int] = {}
    for prompt in PROMPTS.values():
        text = render(prompt, _PROBE)
        base = tokenizer.encode(text, add_special_tokens=False)
        for label in prompt.labels:
            full = tokenizer.encode(text + label, add_special_tokens=False)
            if len(full) != len(base) + 1 or full[: len(base)] != base:
                k = next((i for i, (a, b) in enumerate(zip(base, full)) if a != b), min(len(base), len(full)))
                raise LabelTokenError(
                    f"judge tokenizer: verdict label {label!r} of prompt {prompt.version} is not one token after "
                    f"the prompt: the prompt ends in {tokenizer.convert_ids_to_tokens(base[k:])}, prompt + label "
                    f"in {tokenizer.convert_ids_to_tokens(full[k:])}; this judge cannot be scored from one "
                    "forward pass with these prompts"
                )
            ids[label] = full[-1]
    if len(set(ids.values())) != len(ids):
        raise LabelTokenError(f"judge tokenizer: verdict labels share token ids: {ids}")
    return ids
