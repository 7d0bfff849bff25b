"""Training and benchmark manifests, read into one record type: `AudioQuestion`.

Supported layouts (`fmt`), as the datasets ship them (docs/architecture.md, 'Data'):
- "avqa": AVQA in the R1-AQA jsonl form: `question_text`, `multi_choice` (list), `answer` (int index),
  `audio_path`, optional `id`. "video" in a question becomes "audio" (the clips are the videos' sound
  tracks). Our own extra keys `category` (sound / music / speech, read as the task) and `difficulty` are
  read when present; AVQA's `question_type` is read as the category.
- "mmau": MMAU json list: `id`, `audio_id` ("./test-mini-audios/..."), `question`, `choices`, `answer`
  (text), `task`, `difficulty`, `category`, `sub-category`.
- "mmar": MMAR meta: `id`, `audio_path`, `question`, `choices`, `answer` (text), `modality` (read as the
  task), `category`, `sub-category`, `language`.
- "air": AIR-Bench foundation `Foundation_meta.json`: `path`, `question`, `choice_a`..`choice_d` (missing or
  null for fewer choices), `answer_gt` (text), `task_name`, `dataset_name`, `uniq_id`. AIR-Bench stores
  numbers as JSON numbers in a few tasks, so its choices and answer may be numbers (read as text).

Each file may be a JSON list or JSON lines: the first non-blank character decides. "row N" in messages is
the line number in a JSON-lines file and the 1-based position in a JSON list.

Relative audio paths are resolved against `audio_root` (default: the manifest's folder). AIR-Bench keeps
audio under `<root>/<task_name>_<dataset_name>/<path>`; the Audio_Grounding folder ships `.flac` files while
the meta says `.wav`, and re-packed copies often put the files directly at `<root>/<path>`. The first of
these three that exists is used: `<root>/<task>_<dataset>/<path>`, the same with a `.flac` suffix,
`<root>/<path>`.

The answer of a benchmark row must be one of its choices (exactly, else ignoring case and spacing); it is
stored as the choice's own text so that `choices.index(answer)` works. A row without an answer (a test
split without labels) gets `answer == ""`.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from audio_thinker.core.audio import SAMPLE_RATE, AudioError, audio_duration, load_audio
from audio_thinker.core.log import get_logger
from audio_thinker.core.progress import progress
from audio_thinker.core.vocab import normalize_text

log = get_logger(__name__)

FORMATS = ("avqa", "mmau", "mmar", "air")

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


class DataError(ValueError):
    """A manifest or row that does not validate; the message names the file, the row and the field."""


@dataclass
class AudioQuestion:
    """One multiple-choice audio question, whatever dataset it came from."""

    id: str
    question: str
    choices: list[str]
    answer: str  # the correct choice's text, "" when the split has no labels
    audio_path: Path  # absolute
    task: str | None = None  # sound / music / speech (MMAU task, MMAR modality, AIR domain)
    difficulty: str | None = None
    category: str | None = None
    row: int = 0  # line (JSON lines) or 1-based position (JSON list) in the manifest
    source: dict = field(default_factory=dict, repr=False)  # the original row

    @property
    def answer_index(self) -> int | None:
        return self.choices.index(self.answer) if self.answer else None


def video_to_audio(text: str) -> str:
    """AVQA questions talk about "the video"; the model only hears the sound track."""

    def swap(m: re.Match) -> str:
        word = m.group(0)
        if word.isupper():
            return "AUDIO"
        return "Audio" if word[0].isupper() else "audio"

    return re.sub(r"video", swap, text, flags=re.IGNORECASE)


class _Row:
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

    def choice_list(self, key: str) -> list[str]:
        value = self._get(key, optional=False)
        if not isinstance(value, list):
            raise self.error(f"field '{key}' must be a list of strings, got {type(value).__name__}")
        for i, choice in enumerate(value):
            if not isinstance(choice, str) or not choice.strip():
                raise self.error(f"field '{key}' item {i} must be a non-empty string, got {choice!r}")
        return self.checked_choices(key, value)

    def checked_choices(self, key: str, choices: list[str]) -> list[str]:
        if len(choices) < 2:
            raise self.error(f"field '{key}' needs at least 2 choices, got {len(choices)}")
        normalized = [normalize_text(c) for c in choices]
        if len(set(normalized)) != len(normalized):
            raise self.error(f"field '{key}' has duplicate choices {choices} (the answer would be ambiguous)")
        return choices

    def answer_text(self, key: str, choices: list[str], numbers: bool = False) -> str:
        """The choice named by a text answer; "" when the row has no answer."""
        answer = self.text(key, optional=True, numbers=numbers)
        if answer is None:
            return ""
        if answer in choices:
            return answer
        matches = [c for c in choices if normalize_text(c) == normalize_text(answer)]
        if len(matches) != 1:
            raise self.error(f"field '{key}': answer {answer!r} is not one of the choices {choices}")
        return matches[0]


@dataclass
class _Parsed:
    """A validated row before its audio is located."""

    id: str
    question: str
    choices: list[str]
    answer: str
    audio_candidates: list[str]  # relative (or absolute) paths, first existing wins
    task: str | None
    difficulty: str | None
    category: str | None


def _parse_avqa(r: _Row) -> _Parsed:
    choices = r.choice_list("multi_choice")
    index = r.integer("answer")
    if not 0 <= index < len(choices):
        raise r.error(f"field 'answer': index {index} is outside multi_choice (0..{len(choices) - 1})")
    return _Parsed(
        id=r.ident("id") if "id" in r.data else f"{r.path.stem}-{r.row}",
        question=video_to_audio(r.text("question_text")),
        choices=choices,
        answer=choices[index],
        audio_candidates=[r.text("audio_path")],
        task=r.text("category", optional=True),
        difficulty=r.text("difficulty", optional=True),
        category=r.text("question_type", optional=True),
    )


def _parse_mmau(r: _Row) -> _Parsed:
    choices = r.choice_list("choices")
    return _Parsed(
        id=r.ident("id"),
        question=r.text("question"),
        choices=choices,
        answer=r.answer_text("answer", choices),
        audio_candidates=[r.text("audio_id")],
        task=r.text("task", optional=True),
        difficulty=r.text("difficulty", optional=True),
        category=r.text("category", optional=True),
    )


def _parse_mmar(r: _Row) -> _Parsed:
    choices = r.choice_list("choices")
    return _Parsed(
        id=r.ident("id"),
        question=r.text("question"),
        choices=choices,
        answer=r.answer_text("answer", choices),
        audio_candidates=[r.text("audio_path")],
        task=r.text("modality", optional=True),
        difficulty=None,
        category=r.text("category", optional=True),
    )


def _parse_air(r: _Row) -> _Parsed:
    choices: list[str] = []
    for letter in "abcd":
        key = f"choice_{letter}"
        value = r.text(key, optional=True, numbers=True)
        if value is None:
            continue
        if len(choices) != "abcd".index(letter):
            raise r.error(
                f"field '{key}' is set but an earlier choice is missing (choices must start at choice_a)"
            )
        choices.append(value)
    r.checked_choices("choice_a..choice_d", choices)
    task_name, dataset_name, rel = r.text("task_name"), r.text("dataset_name"), r.text("path")
    folder = f"{task_name}_{dataset_name}"
    return _Parsed(
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


PARSERS = {"avqa": _parse_avqa, "mmau": _parse_mmau, "mmar": _parse_mmar, "air": _parse_air}


def _read_rows(path: Path) -> Iterator[tuple[int, Any]]:
    """(row number, decoded object) pairs; a JSON-lines line that does not decode yields a DataError."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"manifest {path} cannot be read: {exc}") from None
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


def _absolute(root: Path, rel: str) -> Path:
    """Absolute and normalized ("./a/../b" -> "b") without following symlinks (hub caches are symlink farms)."""
    return Path(os.path.abspath(root / Path(rel).expanduser()))


@dataclass
class Dataset:
    """The questions of one manifest; audio is read on demand with `audio(i)`."""

    path: Path
    fmt: str
    items: list[AudioQuestion]
    skipped: list[tuple[int, str]]  # (row, reason) of rows left out with skip_bad_rows=True
    sr: int = SAMPLE_RATE
    max_seconds: float | None = None

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[AudioQuestion]:
        return iter(self.items)

    def __getitem__(self, i: int) -> AudioQuestion:
        return self.items[i]

    def audio(self, i: int) -> np.ndarray:
        """Float32 mono clip of item i at `sr`, cut to `max_seconds`."""
        item = self.items[i]
        try:
            return load_audio(item.audio_path, self.sr, self.max_seconds)
        except AudioError as exc:
            raise AudioError(f"{self.path} row {item.row} (id {item.id}): {exc}") from None

    def shuffled_order(self, seed: int, epoch: int) -> list[int]:
        """A permutation of item indices that depends only on (seed, epoch, len): a resumed run
        recomputes the same order and skips what it already consumed."""
        return np.random.default_rng([seed, epoch]).permutation(len(self.items)).tolist()


def load_dataset(
    path: str | Path,
    fmt: str,
    audio_root: str | Path | None = None,
    *,
    skip_bad_rows: bool = False,
    check_audio: bool = True,
    sr: int = SAMPLE_RATE,
    max_seconds: float | None = None,
) -> Dataset:
    """Read and validate a manifest.

    Every row is checked (fields, types, answer among the choices, audio file present). With
    `check_audio` every audio header is also read, so a corrupt or empty file fails here rather than in
    the middle of a run. A bad row raises DataError, or with `skip_bad_rows` is left out and recorded in
    `Dataset.skipped` (and logged once as a summary).
    """
    if fmt not in PARSERS:
        raise DataError(f"unknown dataset format {fmt!r}; expected one of {', '.join(FORMATS)}")
    path = Path(path)
    if not path.is_file():
        raise DataError(f"manifest {path} does not exist")
    root = Path(audio_root) if audio_root is not None else path.parent
    parse = PARSERS[fmt]
    items: list[AudioQuestion] = []
    skipped: list[tuple[int, str]] = []

    def bad(row: int, exc: Exception) -> None:
        if not skip_bad_rows:
            raise exc
        skipped.append((row, str(exc)))

    total = 0
    for row, data in _read_rows(path):
        total += 1
        try:
            if isinstance(data, DataError):
                raise data
            if not isinstance(data, dict):
                raise DataError(f"{path} row {row}: expected a JSON object, got {type(data).__name__}")
            r = _Row(path, row, data)
            parsed = parse(r)
            candidates = [_absolute(root, rel) for rel in parsed.audio_candidates]
            audio_path = next((p for p in candidates if p.is_file()), None)
            if audio_path is None:
                tried = ", ".join(str(p) for p in candidates)
                raise r.error(f"audio file not found (tried {tried})")
        except DataError as exc:
            bad(row, exc)
            continue
        items.append(
            AudioQuestion(
                id=parsed.id,
                question=parsed.question,
                choices=parsed.choices,
                answer=parsed.answer,
                audio_path=audio_path,
                task=parsed.task,
                difficulty=parsed.difficulty,
                category=parsed.category,
                row=row,
                source=data,
            )
        )

    if check_audio:
        checked = []
        for item in progress(items, desc=f"checking audio of {path.name}", unit="file"):
            try:
                audio_duration(item.audio_path)
            except AudioError as exc:
                bad(item.row, DataError(f"{path} row {item.row}: {exc}"))
                continue
            checked.append(item)
        items = checked

    skipped.sort()
    if skipped:
        examples = "; ".join(reason for _, reason in skipped[:3])
        log.warning("%s: skipped %d of %d rows (first: %s)", path, len(skipped), total, examples)
    if not items:
        raise DataError(f"manifest {path} has no usable rows ({total} rows, {len(skipped)} skipped)")
    return Dataset(path=path, fmt=fmt, items=items, skipped=skipped, sr=sr, max_seconds=max_seconds)
