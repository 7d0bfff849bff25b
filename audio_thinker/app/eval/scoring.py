"""The benchmarks' official scoring rules, and the `results.json` aggregation the paper's tables are read from.

Rules (docs/eval.md), the same as the official scripts:
- MMAU, MMAR (and our synthetic set): the `string_match` token rule (`protocol.mmau_token_match`): the
  prediction holds every word token of the answer and none of the tokens only the other choices have. A
  prediction without any word token (e.g. "") is `invalid`; the official scripts count it as wrong, so it
  stays in the accuracy's denominator.
- AIR-Bench foundation (`score_foundation.py`): newlines dropped, stripped; "" or "None" is unparseable;
  else the letter is the first character when it is A-D, else the second-to-last ("The answer is A.");
  else unparseable. Unparseable responses are counted apart (`invalid`) and, as in the official script,
  left out of the accuracy.
- A row without a prediction is `skipped` (never scored as wrong, never dropped silently); a row without an
  answer (a test split whose labels are withheld) is `unlabeled`.

Accuracies are percentages rounded to 2 decimals, like the paper's tables; a group with nothing to score
has accuracy null. The no-think rate is the share of `no_think` among the valid (think or no_think)
responses of our own generations, in percent; rows of other systems carry no mode and are not in it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from audio_thinker.app.eval.predictions import PredictionRow, read_predictions
from audio_thinker.core.data import AudioQuestion
from audio_thinker.core.protocol import is_correct, mmau_token_match, parse_response

Status = Literal["correct", "wrong", "invalid", "skipped", "unlabeled"]
AIR_LETTERS = "ABCD"
_WORD_RE = re.compile(r"\b\w+\b")


@dataclass(frozen=True)
class Scored:
    """One row after scoring. `counted`: the row is in the accuracy's denominator."""

    id: str
    status: Status
    counted: bool
    task: str | None = None
    difficulty: str | None = None
    category: str | None = None
    mode: str | None = None  # think / no_think / invalid for our generations, None for other systems'


def token_match_status(prediction: str, answer: str, choices: Sequence[str]) -> Status:
    """MMAU / MMAR official rule for one present prediction."""
    if not _WORD_RE.findall(prediction.lower()):
        return "invalid"
    return "correct" if mmau_token_match(prediction, answer, choices) else "wrong"


def air_letter(response: str) -> str | None:
    """The letter AIR-Bench's score_foundation.py reads from a response, or None when it reads none."""
    predict = response.strip().replace("\n", "")
    if not predict or predict == "None":
        return None
    if predict[0] in AIR_LETTERS:
        return predict[0]
    if len(predict) > 1 and predict[-2] in AIR_LETTERS:
        return predict[-2]
    return None


def air_status(response: str, answer: str, choices: Sequence[str]) -> Status:
    letter = air_letter(response)
    if letter is None:
        return "invalid"
    return "correct" if letter == AIR_LETTERS[list(choices).index(answer)] else "wrong"


def score_row(row: PredictionRow, bench: str) -> Scored:
    """Apply the benchmark's rule to one row."""
    if row.prediction is None:
        status: Status = "skipped"
    elif not row.answer:
        status = "unlabeled"
    elif bench == "air":
        status = air_status(row.prediction, row.answer, row.choices)
    else:
        status = token_match_status(row.prediction, row.answer, row.choices)
    counted = status in ("correct", "wrong") or (status == "invalid" and bench != "air")
    return Scored(row.id, status, counted, row.task, row.difficulty, row.category, row.mode)


def _percent(part: int, whole: int) -> float | None:
    return round(100.0 * part / whole, 2) if whole else None


def accuracy(items: Iterable[Scored]) -> dict:
    """{"accuracy": pct or None, "correct": int, "count": int} over the counted rows."""
    items = list(items)
    correct = sum(s.status == "correct" for s in items)
    count = sum(s.counted for s in items)
    return {"accuracy": _percent(correct, count), "correct": correct, "count": count}


def no_think_rate(items: Iterable[Scored]) -> float | None:
    modes = [s.mode for s in items if s.mode in ("think", "no_think")]
    return _percent(modes.count("no_think"), len(modes))


def _groups(items: Sequence[Scored], key: str) -> dict[str, list[Scored]]:
    """Rows by the value of `key` (sorted by value); rows without a value belong to no group."""
    groups: dict[str, list[Scored]] = {}
    for s in items:
        value = getattr(s, key)
        if value is not None:
            groups.setdefault(value, []).append(s)
    return dict(sorted(groups.items()))


def aggregate(scored: Sequence[Scored]) -> dict:
    """The `results.json` object."""
    by_difficulty = _groups(scored, "difficulty")
    return {
        "total": accuracy(scored),
        "by_task": {k: accuracy(v) for k, v in _groups(scored, "task").items()},
        "by_difficulty": {k: accuracy(v) for k, v in by_difficulty.items()},
        "by_category": {k: accuracy(v) for k, v in _groups(scored, "category").items()},
        "no_think_rate": {
            "total": no_think_rate(scored),
            "by_difficulty": {k: no_think_rate(v) for k, v in by_difficulty.items()},
        },
        "invalid": sum(s.status == "invalid" for s in scored),
        "skipped": sum(s.status == "skipped" for s in scored),
        "unlabeled": sum(s.status == "unlabeled" for s in scored),
    }


def score_rows(rows: Iterable[PredictionRow], bench: str) -> list[Scored]:
    return [score_row(r, bench) for r in rows]


def score_file(path: str | Path, bench: str) -> dict:
    """`audio-thinker eval score`: the results.json object of a predictions file (ours or another system's)."""
    return aggregate(score_rows(read_predictions(path, bench), bench))


def summarize_for_training(
    items: Sequence[AudioQuestion], outputs: Sequence[str], letters: bool = False
) -> dict[str, float]:
    """Held-out metrics for the training driver: one completion per question, judged like the rewards judge
    correctness (`protocol.is_correct`), as fractions in [0, 1] like the other training metrics:
    `eval/accuracy`, `eval/accuracy/<task>`, `eval/accuracy/<difficulty>`, `eval/invalid_rate`,
    `eval/no_think_rate` and `eval/no_think_rate/<difficulty>`. Groups with nothing to measure are left out.
    """
    if len(items) != len(outputs):
        raise ValueError(f"{len(outputs)} outputs for {len(items)} questions")
    scored = []
    for item, text in zip(items, outputs):
        parsed = parse_response(text)
        status: Status = "invalid" if parsed.mode == "invalid" else (
            "correct" if is_correct(parsed, item.choices, item.answer, letters) else "wrong")
        scored.append(Scored(item.id, status, True, item.task, item.difficulty, item.category, parsed.mode))
    results = aggregate(scored)
    metrics = {"eval/invalid_rate": results["invalid"] / len(scored)} if scored else {}
    named = [("eval/accuracy", results["total"]["accuracy"]), ("eval/no_think_rate", results["no_think_rate"]["total"])]
    named += [(f"eval/accuracy/{k}", v["accuracy"]) for k, v in results["by_task"].items()]
    named += [(f"eval/accuracy/{k}", v["accuracy"]) for k, v in results["by_difficulty"].items()]
    named += [(f"eval/no_think_rate/{k}", v) for k, v in results["no_think_rate"]["by_difficulty"].items()]
    metrics.update({name: value / 100.0 for name, value in named if value is not None})
    return metrics
