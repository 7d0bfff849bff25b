"""Manifest rows, validated field by field: one parser per layout (docs in `audio_thinker.core.data`), each
turning a decoded row into `Parsed` or raising a `DataError` that names the file, the row and the field. One
module of ~380 lines: seven official layouts over one validating `Row` and one reader of rows."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from audio_thinker.core.errors import UserError
from audio_thinker.core.vocab import normalize_text

# AIR-Bench foundation task names (spelled as in Foundation_meta.json) -> the benchmark's three domains.
AIR_DOMAINS = {
    **dict.fromkeys(
        [
            "Speech_Grounding",
            "Spoken_Language_Identification",
            "Speaker_Gender_Recognition",
            "Speaker_Emotion_Recontion",
            "Speaker_Age_Prediction",
            "Speech_Entity_Reconition",
            "Speaker_Intent_Classification",
            "Speaker_Number_Verification",
            "Synthesized_Voice_Detection",
        ],
        "speech",
    ),
    **dict.fromkeys(
        ["Audio_Grounding", "vocal_sound_classification", "Acoustic_Scene_Classification", "Sound_AQA"],
        "sound",
    ),
    **dict.fromkeys(
        [
            "Music_Instruments_Classfication",
            "Music_Genre_Recognition",
            "Music_Midi_Pitch_Analysis",
            "Music_Midi_Velocity_Analysis",
            "Music_AQA",
            "Music_Mood_Recognition",
        ],
        "music",
    ),
}


class DataError(UserError, ValueError):
    """A manifest or row that does not validate; the message names the file, the row and the field."""


class OutOfScope(DataError):
    """A valid row outside the part of its benchmark we score (MMAU-Pro's open and instruction-following
    questions); readers leave it out and count it by this message."""


def video_to_audio(text: str) -> str:
    """AVQA questions talk about "the video"; the model only hears the sound track."""

    def swap(m: re.Match) -> str:
        word = m.group(0)
        if word.isupper():
            return "AUDIO"
        return "Audio" if word[0].isupper() else "audio"

    return re.sub(r"video", swap, text, flags=re.IGNORECASE)


class Row:
    """A row under validation: every getter raises DataError naming file, row and field."""

    def __init__(self, path: Path, row: int, data: dict):
        self.path, self.row, self.data = path, row, data

    def error(self, message: str) -> DataError:
        return DataError(f"{self.path} row {self.row}: {message}")

    def _get(self, key: str, optional: bool) -> Any:
        value = self.data.get(key)
        if value is None and not optional:
            raise self.error(f"missing field '{key}'" if key not in self.data else f"field '{key}' is null")
        return value

    def text(self, key: str, optional: bool = False, numbers: bool = False) -> str | None:
        value = self._get(key, optional)
        if value is None:
            return None
        if numbers and isinstance(value, int | float) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            raise self.error(f"field '{key}' must be a string, got {type(value).__name__} {value!r}")
        if not value.strip():
            if optional:
                return None  # "" means absent, as null does
            raise self.error(f"field '{key}' is empty")
        return value

    def ident(self, key: str) -> str:
        value = self._get(key, optional=False)
        if isinstance(value, bool) or not isinstance(value, str | int) or str(value).strip() == "":
            raise self.error(f"field '{key}' must be a non-empty string or an integer, got {value!r}")
        return str(value)

    def integer(self, key: str) -> int:
        value = self._get(key, optional=False)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(f"field '{key}' must be an integer, got {type(value).__name__} {value!r}")
        return value

    def label(self, key: str) -> str | None:
        """An optional label that some benchmark rows give as a list of strings (MMAU's category ["Reasoning"]):
        the strings joined by ", "."""
        value = self.data.get(key)
        if isinstance(value, list) and value and all(isinstance(v, str) and v.strip() for v in value):
            return ", ".join(v.strip() for v in value)
        return self.text(key, optional=True)

    def choice_list(self, key: str, benchmark: bool = False) -> list[str]:
        """The choices as strings. `benchmark`: a benchmark's own file, read as its official text-matching scorer
        reads it: empty choices (MMAR's "") and repeats of an earlier choice (MMAU's ["four", "nine", "fourteen",
        "fourteen"]) are dropped, which changes no score (an empty choice has no token to match, a repeat the
        same tokens); training data is refused instead."""
        value = self._get(key, optional=False)
        if not isinstance(value, list):
            raise self.error(f"field '{key}' must be a list of strings, got {type(value).__name__}")
        for i, choice in enumerate(value):
            if not isinstance(choice, str) or not (choice.strip() or benchmark):
                raise self.error(f"field '{key}' item {i} must be a non-empty string, got {choice!r}")
        if benchmark:
            kept: dict[str, str] = {}
            for choice in value:
                if choice.strip():
                    kept.setdefault(normalize_text(choice), choice)
            value = list(kept.values())
        return self.checked_choices(key, value)

    def checked_choices(self, key: str, choices: list[str]) -> list[str]:
        if len(choices) < 2:
            raise self.error(f"field '{key}' needs at least 2 choices, got {len(choices)}")
        normalized = [normalize_text(c) for c in choices]
        if len(set(normalized)) != len(normalized):
            raise self.error(f"field '{key}' has duplicate choices {choices} (the answer would be ambiguous)")
        return choices

    def answer_text(self, key: str, choices: list[str], numbers: bool = False, as_written: bool = False) -> str:
        """The choice named by a text answer; "" when the row has no answer. `as_written`: an answer that is
        none of the choices is kept as it is (the text-matching scorers score it: MMAR-meta.json's
        "American\nColombian" of ["American", "Colombian"] is right for a prediction naming both) instead of
        being an error."""
        answer = self.text(key, optional=True, numbers=numbers)
        if answer is None:
            return ""
        if answer in choices:
            return answer
        matches = [c for c in choices if normalize_text(c) == normalize_text(answer)]
        if len(matches) == 1:
            return matches[0]
        if as_written:
            return answer
        raise self.error(f"field '{key}': answer {answer!r} is not one of the choices {choices}")


@dataclass
class Parsed:
    """A validated row before its audio is located."""

    id: str
    question: str
    choices: list[str]
    answer: str
    audio_candidates: list[str]  # relative (or absolute) paths, first existing wins
    task: str | None
    difficulty: str | None
    category: str | None
    clips: int = 1  # audio clips the question plays (MMAU-Pro's multi-audio questions have several)


def parse_avqa(r: Row) -> Parsed:
    choices = r.choice_list("multi_choice")
    index = r.integer("answer")
    if not 0 <= index < len(choices):
        raise r.error(f"field 'answer': index {index} is outside multi_choice (0..{len(choices) - 1})")
    return Parsed(
        id=r.ident("id") if "id" in r.data else f"{r.path.stem}-{r.row}",
        question=video_to_audio(r.text("question_text")),
        choices=choices,
        answer=choices[index],
        audio_candidates=[r.text("audio_path")],
        task=r.text("category", optional=True),
        difficulty=r.text("difficulty", optional=True),
        category=r.text("question_type", optional=True),
    )


def parse_mmau(r: Row) -> Parsed:
    choices = r.choice_list("choices", benchmark=True)
    return Parsed(
        id=r.ident("id"),
        question=r.text("question"),
        choices=choices,
        answer=r.answer_text("answer", choices, as_written=True),
        audio_candidates=[r.text("audio_id")],
        task=r.text("task", optional=True),
        difficulty=r.text("difficulty", optional=True),
        category=r.label("category"),
    )


def parse_mmar(r: Row) -> Parsed:
    choices = r.choice_list("choices", benchmark=True)
    return Parsed(
        id=r.ident("id"),
        question=r.text("question"),
        choices=choices,
        answer=r.answer_text("answer", choices, as_written=True),
        audio_candidates=[r.text("audio_path")],
        task=r.text("modality", optional=True),
        difficulty=None,
        category=r.text("category", optional=True),
    )


def lettered_choices(r: Row) -> list[str]:
    """`choice_a`..`choice_d` (missing, null or "" for fewer choices): their positions are the letters A-D."""
    choices: list[str] = []
    for letter in "abcd":
        key = f"choice_{letter}"
        value = r.text(key, optional=True, numbers=True)
        if value is None:
            continue
        if len(choices) != "abcd".index(letter):
            raise r.error(f"field '{key}' is set but an earlier choice is missing (choices must start at choice_a)")
        choices.append(value)
    return r.checked_choices("choice_a..choice_d", choices)


def parse_air(r: Row) -> Parsed:
    choices = lettered_choices(r)
    task_name, dataset_name, rel = r.text("task_name"), r.text("dataset_name"), r.text("path")
    folder = f"{task_name}_{dataset_name}"
    return Parsed(
        id=r.ident("uniq_id"),
        question=r.text("question"),
        choices=choices,
        answer=r.answer_text("answer_gt", choices, numbers=True),
        audio_candidates=[
            os.path.join(folder, rel),
            os.path.join(folder, os.path.splitext(rel)[0] + ".flac"),
            rel,
        ],
        task=AIR_DOMAINS.get(task_name),
        difficulty=None,
        category=task_name,
    )


MMAU_PRO_JUDGED = ("open", "instruction following")  # MMAU-Pro categories its script scores without choices


def parse_mmau_pro(r: Row) -> Parsed:
    """A multiple-choice row of MMAU-Pro's test.parquet; its open and instruction-following rows, and rows with
    fewer than 2 choices (the official script drops those from its multiple-choice part), are out of scope."""
    category = r.text("category")
    if category in MMAU_PRO_JUDGED:
        raise OutOfScope(f"category '{category}' (judged by a model or by format rules, not multiple choice)")
    raw = r.data.get("choices")
    if not isinstance(raw, list) or len(raw) < 2:
        raise OutOfScope("fewer than 2 choices (left out of the official multiple-choice scoring)")
    choices = r.choice_list("choices", benchmark=True)
    clips = r.data.get("audio_path")
    clips = [clips] if isinstance(clips, str) else clips
    if not isinstance(clips, list) or not clips or not all(isinstance(c, str) and c.strip() for c in clips):
        raise r.error(f"field 'audio_path' must be a non-empty list of paths, got {r.data.get('audio_path')!r}")
    return Parsed(
        id=r.ident("id"),
        question=r.text("question"),
        choices=choices,
        answer=r.answer_text("answer", choices, as_written=True),
        audio_candidates=[clips[0]],
        task=category,
        difficulty=None,
        category=r.text("sub-cat", optional=True),
        clips=len(clips),
    )


def parse_mmsu(r: Row) -> Parsed:
    """A row as MMSU's mmsu_inference.py writes it (the layout mmsu_evaluation.py reads): lettered choices,
    `answer_gt` text, `category` (its accuracy groups) and `sub-category`; audio under `audio_path`."""
    choices = lettered_choices(r)
    category, sub = r.text("category", optional=True), r.text("sub-category", optional=True)
    rel = r.text("audio_path")
    return Parsed(
        id=r.ident("id"),
        question=r.text("question"),
        choices=choices,
        answer=r.answer_text("answer_gt", choices, numbers=True),
        audio_candidates=[rel, os.path.join("audio", rel)],
        task=category,
        difficulty=None,
        category=f"{category} / {sub}" if category and sub else sub,
    )


PARSERS: dict[str, Callable[[Row], Parsed]] = {
    "avqa": parse_avqa,
    "mmau": parse_mmau,
    "mmar": parse_mmar,
    "air": parse_air,
    "mmau-pro": parse_mmau_pro,
    "mmsu": parse_mmsu,
}


def row_object(path: Path, row: int, data: Any) -> Row:
    """A decoded row (or the DataError `read_rows` yielded for it) as a Row; raises DataError otherwise."""
    if isinstance(data, DataError):
        raise data
    if not isinstance(data, dict):
        raise DataError(f"{path} row {row}: expected a JSON object, got {type(data).__name__}")
    return Row(path, row, data)


def read_parquet(path: Path) -> list[dict]:
    """The rows of a parquet file (MMAU-Pro's test.parquet) as plain objects."""
    import pyarrow.parquet  # only parquet files need it

    try:
        return pyarrow.parquet.read_table(path).to_pylist()
    except (OSError, pyarrow.ArrowException) as exc:
        raise DataError(f"{path} is not a readable parquet file: {exc}") from None


def _one_object(path: Path, text: str) -> None:
    """A file that is one JSON object holding the rows under a key (not a list, not JSON lines): DataError naming
    the key, rather than a missing field in 'row 1'."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return  # JSON lines, or not JSON: its rows say so
    lists = [k for k, v in data.items() if isinstance(v, list) and v and all(isinstance(x, dict) for x in v)]
    if lists:
        raise DataError(
            f"{path} is one JSON object with rows under {lists[0]!r}: expected a JSON list of rows or JSON lines "
            f"(e.g. jq '.{lists[0]}' {path.name})"
        )


def read_rows(path: Path) -> Iterator[tuple[int, Any]]:
    """(row number, decoded object) pairs; a JSON-lines line that does not decode yields a DataError. UTF-8, with
    or without a byte-order mark; a .parquet file (MMAU-Pro) by its rows."""
    if path.suffix == ".parquet":
        yield from enumerate(read_parquet(path), start=1)
        return
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"manifest {path} cannot be read: {exc}") from None
    if text.lstrip().startswith("{"):
        _one_object(path, text)
    if text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"manifest {path} is not valid JSON: {exc}") from None
        yield from enumerate(rows, start=1)
        return
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield line_no, json.loads(line)
        except json.JSONDecodeError as exc:
            yield (
                line_no,
                DataError(f"{path} row {line_no}: not valid JSON ({exc.msg} at column {exc.colno})"),
            )
