"""Predictions in each benchmark's own layout: the original row plus the field its official scorer reads.

- MMAU: `model_prediction` (the released evaluation.py) and `model_output` (the key later versions of the
  script read), both holding the chosen choice's text.
- MMAR: `answer_prediction` and `model_prediction` (the key MMAR's README and evaluation.py name), both
  the chosen choice's text.
- AIR-Bench foundation: `response`, a letter A-D (score_foundation.py reads its first character).
- MMAU-v05.15.25: as MMAU (the same layout and evaluation.py).
- MMAU-Pro: `model_output` (the column evaluate_mmau_pro_comprehensive.py reads), the chosen choice's text.
- MMSU: `response`, a letter A-D (mmsu_evaluation.py reads it like AIR's script does).
- synthetic (AVQA layout): as MMAU.

Reading takes the first of a benchmark's keys that a row has (`null` counts as absent: the row is skipped;
MMSU's script reads a row without `response`, and MMAU-Pro's a null `model_output`, as an empty answer, counted
wrong, and so do we). Our rows also
carry `audio_thinker`: the raw completion, its mode, think and answer text, the finish reason, the scoring
status and, after a consistency audit, the judge's verdict. Official scripts ignore unknown keys, so the file
can be handed to them as it is.

`predictions.json` is one JSON list (the layout MMAU ships). The reader also takes JSON lines (AIR's and MMSU's
own result files) and parquet (MMAU-Pro's test.parquet with a `model_output` column); `jq -c '.[]'
predictions.json > Foundation_result_modelx.jsonl` gives the official AIR and MMSU scripts their input.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from audio_thinker.core.manifests import PARSERS, DataError, OutOfScope, Row, read_parquet
from audio_thinker.core.protocol import LETTERS, Parsed, match_choice
from audio_thinker.core.vocab import BENCHMARKS, RESPONSE_MODES

FORMATS = {  # bench -> data.load_dataset fmt
    "mmau": "mmau", "mmau-v05.15.25": "mmau", "mmau-pro": "mmau-pro", "mmar": "mmar", "mmsu": "mmsu", "air": "air",
    "synthetic": "avqa",
}
PREDICTION_KEYS = {
    "mmau": ("model_prediction", "model_output"),
    "mmau-v05.15.25": ("model_prediction", "model_output"),
    "mmau-pro": ("model_output",),
    "mmar": ("answer_prediction", "model_prediction"),
    "mmsu": ("response",),
    "air": ("response",),
    "synthetic": ("model_prediction", "model_output"),
}
LETTER_BENCHES = ("air", "mmsu")  # the prediction is a letter A-D (the choice's position)
LAYOUT_FIELDS = {  # what the dataset reader checks in a row, for error messages
    "mmau": "id, question, choices, answer, audio_id",
    "mmau-v05.15.25": "id, question, choices, answer, audio_id",
    "mmau-pro": "id, audio_path (a list), question, choices, answer, category",
    "mmar": "id, question, choices, answer, audio_path",
    "mmsu": "id, audio_path, question, choice_a..choice_d, answer_gt, category",
    "air": "uniq_id, question, choice_a..choice_d, answer_gt, task_name, dataset_name, path",
    "synthetic": "id, question_text, multi_choice, answer (an index), audio_path",
}
OURS = "audio_thinker"  # the key of our per-row details


@dataclass(frozen=True)
class PredictionRow:
    """One benchmark row with its prediction (None: the row has none) and, for our rows, the response mode."""

    id: str
    row: int
    choices: list[str]
    answer: str  # the correct choice's text, "" when the split has no labels
    prediction: str | None
    task: str | None = None
    difficulty: str | None = None
    category: str | None = None
    mode: str | None = None


def check_bench(bench: str) -> str:
    if bench not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {bench!r}; expected one of {', '.join(BENCHMARKS)}")
    return bench


def prediction_text(bench: str, parsed: Parsed, choices: Sequence[str], letters: bool = False) -> str:
    """What our response puts under the benchmark's prediction key.

    Text benchmarks (MMAU, MMAR, MMAU-Pro): the text of the choice the answer names (a bare letter would not
    match the official rules), else the answer as written (the official rule judges it), "" for an invalid
    response (scored wrong). AIR, MMSU: the letter of the named choice, "" when the answer names none.
    """
    check_bench(bench)
    if parsed.mode == "invalid" or parsed.answer is None:
        return ""
    index = match_choice(parsed.answer, choices, letters)
    if bench in LETTER_BENCHES:
        return LETTERS[index] if index is not None else ""
    return choices[index] if index is not None else parsed.answer


def prediction_row(bench: str, source: dict, prediction: str, details: dict) -> dict:
    """The benchmark's own row with our prediction under every key its official scripts read."""
    row = dict(source)
    for key in PREDICTION_KEYS[check_bench(bench)]:
        row[key] = prediction
    row[OURS] = details
    return row


def write_predictions(path: str | Path, rows: Sequence[dict]) -> Path:
    """Write the JSON list atomically (a reader never sees half a file)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(list(rows), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def _prediction(r: Row, bench: str) -> str | None:
    if bench == "mmsu" and "response" not in r.data:
        return ""  # mmsu_evaluation.py: record.get('response', ''), an empty answer counted wrong
    if bench == "mmau-pro" and r.data.get("model_output") is None:
        return ""  # evaluate_mmau_pro_comprehensive.py: fillna(""), an empty answer it still maps to a choice
    for key in PREDICTION_KEYS[bench]:
        value = r.data.get(key)
        if value is None:
            continue
        if not isinstance(value, str):
            raise r.error(f"field '{key}' must be a string, got {type(value).__name__} {value!r}")
        return value
    return None


def _mode(r: Row) -> str | None:
    details = r.data.get(OURS)
    if details is None:
        return None
    if not isinstance(details, dict) or details.get("mode") not in RESPONSE_MODES:
        raise r.error(f"field '{OURS}' must be an object whose 'mode' is one of {', '.join(RESPONSE_MODES)}")
    return details["mode"]


def _layout(bench: str) -> str:
    keys = " or ".join(PREDICTION_KEYS[bench])
    return (f"a {bench} predictions file: a JSON list or JSON lines of rows with {LAYOUT_FIELDS[bench]} "
            f"and the prediction in {keys}")


def _decoded_rows(path: Path) -> list[tuple[int, object]]:
    """(row number, decoded row) of a JSON list, JSON lines or parquet; a file that is none is a DataError."""
    if path.suffix == ".parquet":
        return list(enumerate(read_parquet(path), start=1))
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path} cannot be read: {exc}") from None
    try:
        whole = json.loads(text)
    except json.JSONDecodeError as exc:
        if text.lstrip().startswith("["):
            raise DataError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    else:
        if isinstance(whole, list):
            return list(enumerate(whole, start=1))
        if not isinstance(whole, dict):
            raise DataError(f"{path} holds a JSON {type(whole).__name__}, not rows")
        rows_inside = any(isinstance(v, list) and v and all(isinstance(x, dict) for x in v) for v in whole.values())
        if "\n" in text.strip() or rows_inside:  # one line holding rows under a key is no JSON-lines row either
            raise DataError(f"{path} holds one JSON object (keys: {', '.join(list(whole)[:6])}), not rows")
    rows = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                rows.append((line_no, json.loads(line)))
            except json.JSONDecodeError as exc:
                raise DataError(f"{path} row {line_no}: not valid JSON ({exc.msg} at column {exc.colno})") from None
    return rows


def read_predictions(path: str | Path, bench: str) -> list[PredictionRow]:
    """The rows of a predictions file (see `read_prediction_file`)."""
    return read_prediction_file(path, bench)[0]


def read_prediction_file(path: str | Path, bench: str) -> tuple[list[PredictionRow], dict[str, int]]:
    """Read a predictions file in the benchmark's layout, validating each row like the dataset reader does
    (no audio needed); also the count of rows outside the scored part, by reason. Errors name the file, the
    row and the first wrong field, then the expected layout."""
    path = Path(path)
    parse = PARSERS[FORMATS[check_bench(bench)]]
    if not path.is_file():
        raise DataError(f"predictions file {path} does not exist")
    rows, keyed, excluded = [], 0, {}
    try:
        for row_no, data in _decoded_rows(path):
            if not isinstance(data, dict):
                raise DataError(f"{path} row {row_no}: expected a JSON object, got {type(data).__name__}")
            r = Row(path, row_no, data)
            try:
                parsed = parse(r)
            except OutOfScope as exc:
                excluded[str(exc)] = excluded.get(str(exc), 0) + 1
                continue
            keyed += any(key in data for key in PREDICTION_KEYS[bench])
            rows.append(PredictionRow(
                id=parsed.id, row=row_no, choices=parsed.choices, answer=parsed.answer,
                prediction=_prediction(r, bench), task=parsed.task, difficulty=parsed.difficulty,
                category=parsed.category, mode=_mode(r),
            ))
        if not rows:
            raise DataError(f"{path} has no rows" + (" in the scored part" if excluded else ""))
        if not keyed:
            raise DataError(f"{path}: no row has a prediction field (is it the benchmark's file itself?)")
    except DataError as exc:
        raise DataError(f"{exc}; expected {_layout(bench)}") from None
    return rows, excluded
