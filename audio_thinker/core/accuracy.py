"""Accuracy and no-think rate of scored rows: the `results.json` aggregation that `eval` reports and the paper's
tables are read from, and the held-out metrics a training run logs.

Accuracies are percentages rounded to 2 decimals, like the paper's tables; a group with nothing to score has
accuracy null. The no-think rate is the share of `no_think` among the valid (think or no_think) responses of our
own generations, in percent; rows of other systems carry no mode and are not in it. Each accuracy and each
no-think rate comes with its 95% Wilson interval (`ci95: [lo, hi]` in percent, null when nothing was counted):
what the questions sampled into the benchmark leave uncertain about one evaluation.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from audio_thinker.core.data import AudioQuestion
from audio_thinker.core.protocol import is_correct, mmau_token_match, parse_response
from audio_thinker.core.stats import wilson_percent

Status = Literal["correct", "wrong", "invalid", "skipped", "unlabeled"]


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


def _percent(part: int, whole: int) -> float | None:
    return round(100.0 * part / whole, 2) if whole else None


def accuracy(items: Iterable[Scored]) -> dict:
    """{"accuracy": pct or None, "correct": int, "count": int, "ci95": [lo, hi] or None} over the counted rows."""
    items = list(items)
    correct = sum(s.status == "correct" for s in items)
    count = sum(s.counted for s in items)
    return {"accuracy": _percent(correct, count), "correct": correct, "count": count,
            "ci95": wilson_percent(correct, count)}


def _no_think_counts(items: Iterable[Scored]) -> tuple[int, int]:
    """(no_think, think + no_think) among the rows."""
    modes = [s.mode for s in items if s.mode in ("think", "no_think")]
    return modes.count("no_think"), len(modes)


def no_think_rate(items: Iterable[Scored]) -> float | None:
    return _percent(*_no_think_counts(items))


def no_think_ci95(items: Iterable[Scored]) -> list[float] | None:
    return wilson_percent(*_no_think_counts(items))


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
            "ci95": {
                "total": no_think_ci95(scored),
                "by_difficulty": {k: no_think_ci95(v) for k, v in by_difficulty.items()},
            },
        },
        "invalid": sum(s.status == "invalid" for s in scored),
        "skipped": sum(s.status == "skipped" for s in scored),
        "unlabeled": sum(s.status == "unlabeled" for s in scored),
    }


def summarize_for_training(
    items: Sequence[AudioQuestion], outputs: Sequence[str], letters: bool = False
) -> dict[str, float]:
    """Held-out metrics for the training driver: one completion per question, judged like the rewards judge
    correctness (`protocol.is_correct`; a benchmark answer that is none of the choices by the MMAU token rule,
    as its scorer judges it), as fractions in [0, 1] like the other training metrics:
    `eval/accuracy`, `eval/accuracy/<task>`, `eval/accuracy/<difficulty>`, `eval/invalid_rate`,
    `eval/no_think_rate` and `eval/no_think_rate/<difficulty>`. Groups with nothing to measure are left out.
    """
    if len(items) != len(outputs):
        raise ValueError(f"{len(outputs)} outputs for {len(items)} questions")
    scored = []
    for item, text in zip(items, outputs):
        parsed = parse_response(text)
        if item.answer in item.choices or not item.answer:  # (no answer: is_correct names the problem)
            right = is_correct(parsed, item.choices, item.answer, letters)
        else:
            right = parsed.answer is not None and mmau_token_match(parsed.answer, item.answer, item.choices)
        status: Status = "invalid" if parsed.mode == "invalid" else ("correct" if right else "wrong")
        scored.append(Scored(item.id, status, True, item.task, item.difficulty, item.category, parsed.mode))
    results = aggregate(scored)
    metrics = {"eval/invalid_rate": results["invalid"] / len(scored)} if scored else {}
    named = [("eval/accuracy", results["total"]["accuracy"]), ("eval/no_think_rate", results["no_think_rate"]["total"])]
    named += [(f"eval/accuracy/{k}", v["accuracy"]) for k, v in results["by_task"].items()]
    named += [(f"eval/accuracy/{k}", v["accuracy"]) for k, v in results["by_difficulty"].items()]
    named += [(f"eval/no_think_rate/{k}", v) for k, v in results["no_think_rate"]["by_difficulty"].items()]
    metrics.update({name: value / 100.0 for name, value in named if value is not None})
    return metrics
