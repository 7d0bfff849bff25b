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
- "mmau-pro": MMAU-Pro `test.parquet`: `id`, `audio_path` (a list of paths, "data/<id>.wav"), `question`,
  `choices` (list), `answer` (text), `category` (read as the task), `sub-cat`. Only its
  multiple-choice part is read: the `open` and `instruction following` rows and rows with fewer than 2
  choices are left out (`Dataset.excluded`), and so are questions with several clips (one clip per question
  is what the policies take).
- "mmsu": MMSU rows as its `mmsu_inference.py` writes them: `id`, `audio_path`, `question`,
  `choice_a`..`choice_d`, `answer_gt`, `category` (read as the task), `sub-category`, `task_name`; audio at
  `<root>/<audio_path>` or `<root>/audio/<audio_path>`.

Each file may be a JSON list or JSON lines (the first non-blank character decides), or parquet (by its
`.parquet` suffix). "row N" in messages is the line number in a JSON-lines file and the 1-based position in a
JSON list or parquet file.

Benchmark files are read as their official scorers read them: MMAU / MMAR / MMAU-Pro choices that are empty or
repeat an earlier choice are dropped (the released MMAU test-mini files repeat choices in 20 to 27 rows, MMAR
has 4 rows with an empty choice; no score changes), and MMAU's category may be a list (13 rows say
["Reasoning"]).

Relative audio paths are resolved against `audio_root` (default: the manifest's folder). AIR-Bench keeps
audio under `<root>/<task_name>_<dataset_name>/<path>`; the Audio_Grounding folder ships `.flac` files while
the meta says `.wav`, and re-packed copies often put the files directly at `<root>/<path>`. The first of
these three that exists is used: `<root>/<task>_<dataset>/<path>`, the same with a `.flac` suffix,
`<root>/<path>`.

The answer of a row is stored as the text of the choice it names (exactly, else ignoring case and spacing).
An AIR or MMSU answer (scored through the choice's letter) must be one of the choices; an MMAU, MMAR or
MMAU-Pro answer that is none of them is kept as written, as their text-matching scorers score it (the
MMAR-meta.json of May 2025, the release the paper evaluated, has 5 such rows, e.g. "American\nColombian" of
["American", "Colombian"]). A row without an answer (a test split without labels) gets `answer == ""`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from audio_thinker.core.audio import SAMPLE_RATE, AudioError, audio_duration, load_audio
from audio_thinker.core.log import get_logger
from audio_thinker.core.manifests import PARSERS, DataError, OutOfScope, read_rows, row_object
from audio_thinker.core.progress import progress
from audio_thinker.core.vocab import DATA_FORMATS

# `<split>_cot.jsonl`: a synthetic split whose rows carry a rationale each (sft.target=cot without make-cot's output:
# the CPU demo and a rehearsal of sft-b / sft-d; written by app/data/synthetic.py, `write_synthetic_cot`).
COT_SPLIT_SUFFIX = "_cot"

log = get_logger(__name__)


@dataclass
class AudioQuestion:
    """One multiple-choice audio question, whatever dataset it came from."""

    id: str
    question: str
    choices: list[str]
    answer: str  # the correct choice's text ("" when the split has no labels; a benchmark's text if no choice)
    audio_path: Path  # absolute
    task: str | None = None  # sound / music / speech (MMAU task, MMAR modality, AIR domain)
    difficulty: str | None = None
    category: str | None = None
    row: int = 0  # line (JSON lines) or 1-based position (JSON list) in the manifest
    source: dict = field(default_factory=dict, repr=False)  # the original row

    @property
    def answer_index(self) -> int | None:
        """The correct choice's position; None without an answer or when the answer is none of the choices."""
        return self.choices.index(self.answer) if self.answer in self.choices else None


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
    excluded: dict[str, int] = field(default_factory=dict)  # reason -> rows outside the scored part
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
    `Dataset.skipped` (and logged once as a summary). Rows outside the benchmark part we score, and
    questions with several audio clips, are left out and counted by reason in `Dataset.excluded`.
    """
    if fmt not in PARSERS:
        raise DataError(f"unknown dataset format {fmt!r}; expected one of {', '.join(DATA_FORMATS)}")
    path = Path(path)
    if not path.is_file():
        raise DataError(f"manifest {path} does not exist")
    root = Path(audio_root) if audio_root is not None else path.parent
    parse = PARSERS[fmt]
    items: list[AudioQuestion] = []
    skipped: list[tuple[int, str]] = []
    excluded: dict[str, int] = {}

    def bad(row: int, exc: Exception) -> None:
        if not skip_bad_rows:
            raise exc
        skipped.append((row, str(exc)))

    total = 0
    for row, data in read_rows(path):
        total += 1
        try:
            r = row_object(path, row, data)
            parsed = parse(r)
            if parsed.clips > 1:
                raise OutOfScope("several audio clips (a policy takes one clip per question)")
            candidates = [_absolute(root, rel) for rel in parsed.audio_candidates]
            audio_path = next((p for p in candidates if p.is_file()), None)
            if audio_path is None:
                tried = ", ".join(str(p) for p in candidates)
                raise r.error(f"audio file not found (tried {tried})")
        except OutOfScope as exc:
            excluded[str(exc)] = excluded.get(str(exc), 0) + 1
            continue
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
    if excluded:
        log.info("%s: left out %s", path, "; ".join(f"{n} rows: {why}" for why, n in excluded.items()))
    if skipped:
        examples = "; ".join(reason for _, reason in skipped[:3])
        log.warning("%s: skipped %d of %d rows (first: %s)", path, len(skipped), total, examples)
    if not items:
        raise DataError(f"manifest {path} has no usable rows ({total} rows, {len(skipped)} skipped, "
                        f"{sum(excluded.values())} outside the scored part)")
    return Dataset(path=path, fmt=fmt, items=items, skipped=skipped, excluded=excluded, sr=sr, max_seconds=max_seconds)
