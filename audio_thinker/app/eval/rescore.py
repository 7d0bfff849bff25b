"""`audio-thinker rewards`: recompute every reward term and advantage of dumped rollouts.

`rescore_records` is the one path from raw records (response text, choices, judge verdicts) to reward
terms; the driver uses it too, so a rollout dump can be checked by running this command on it.
Records may carry more fields (the driver's dumps do); only the ones below are read.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from audio_thinker.core.manifests import DataError
from audio_thinker.core.protocol import is_correct, parse_response
from audio_thinker.core.rewards import SampleError, SampleVerdict, check_step, compute_rewards


class RecordError(ValueError):
    """A bad input record; `index` is its position in the list and `field` the offending field."""

    def __init__(self, index: int, field: str, message: str):
        super().__init__(f"record {index}: {field}: {message}")
        self.index = index
        self.field = field
        self.message = message


def _field(record: dict, index: int, name: str, kinds: tuple[type, ...], required: bool = True) -> Any:
    if name not in record or record[name] is None:
        if required:
            raise RecordError(index, name, "missing")
        return None
    value = record[name]
    if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
        expected = " or ".join(k.__name__ for k in kinds)
        raise RecordError(index, name, f"expected {expected}, got {type(value).__name__} {value!r}")
    return value


def record_verdict(record: dict, index: int) -> SampleVerdict:
    """Parse and score one record: the parser's mode, correctness and the judge verdicts as given."""
    if not isinstance(record, dict):
        raise RecordError(index, "<record>", f"expected a JSON object, got {type(record).__name__}")
    group = _field(record, index, "group", (str,))
    response = _field(record, index, "response", (str,))
    choices = _field(record, index, "choices", (list,))
    answer = _field(record, index, "answer", (str,))
    letters = _field(record, index, "letters", (bool,), required=False) or False
    consistency = _field(record, index, "consistency", (int, bool), required=False)
    think_quality = _field(record, index, "think_quality", (int, float), required=False)
    if not choices or not all(isinstance(c, str) and c.strip() for c in choices):
        raise RecordError(index, "choices", f"expected a list of non-empty strings, got {choices!r}")
    parsed = parse_response(response)
    try:
        correct = is_correct(parsed, choices, answer, letters)
    except ValueError as exc:
        raise RecordError(index, "answer", str(exc)) from None
    return SampleVerdict(
        mode=parsed.mode,
        correct=correct,
        group=group,
        consistency=None if consistency is None else int(consistency),
        think_quality=think_quality,
    )


def rescore_records(
    records: list[dict], step: int, total_steps: int, variant: str, invalid_accuracy: str = "worst"
) -> dict:
    """`{"batch": {...}, "samples": [...]}` for one batch of records, in input order."""
    check_step(step, total_steps)
    verdicts = [record_verdict(r, i) for i, r in enumerate(records)]
    try:
        batch = compute_rewards(verdicts, step, total_steps, variant, invalid_accuracy=invalid_accuracy)
    except SampleError as exc:
        raise RecordError(exc.index, exc.field, exc.message) from None
    return {
        "batch": {
            "think_rate": batch.think_rate,
            "gamma_think": batch.gamma_think,
            "gamma_no_think": batch.gamma_no_think,
        },
        "samples": [
            {
                "mode": s.mode,
                "correct": s.correct,
                "format": s.format,
                "accuracy": s.accuracy,
                "consistency": s.consistency,
                "think": s.think,
                "total": s.total,
                "advantage": s.advantage,
            }
            for s in batch.samples
        ],
    }


def run_rescore(path: Path, args: argparse.Namespace) -> dict:
    """CLI handler: the JSONL file's result object; bad input raises DataError naming the file, line and field."""
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    records, line_of = [], []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{number}: invalid JSON ({exc.msg} at column {exc.colno})") from None
        line_of.append(number)
    if not records:
        raise DataError(f"{path}: no records")
    try:
        # `--invalid-accuracy` (worst|zero) is registered by the CLI; a parser without it gets the default.
        return rescore_records(records, args.step, args.total_steps, args.variant, args.invalid_accuracy)
    except RecordError as exc:
        raise DataError(f"{path}:{line_of[exc.index]}: field {exc.field!r}: {exc.message}") from None
    except ValueError as exc:
        raise DataError(str(exc)) from None
