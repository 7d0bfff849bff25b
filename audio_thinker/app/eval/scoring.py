"""The benchmarks' official scoring rules, and the `results.json` aggregation the paper's tables are read from.

Rules (docs/eval.md says which file of which repository each comes from), the same as the official scripts:
- MMAU, MMAU-v05.15.25, MMAR (and our synthetic set): the `string_match` token rule
  (`protocol.mmau_token_match`): the prediction holds every word token of the answer and none of the tokens
  only the other choices have. A prediction without any word token (e.g. "") is `invalid`; the official
  scripts count it as wrong, so it stays in the accuracy's denominator.
- AIR-Bench foundation (`score_foundation.py`): newlines dropped, stripped; "" or "None" is unparseable;
  else the letter is the first character when it is A-D, else the second-to-last ("The answer is A.");
  else unparseable. Unparseable responses are counted apart (`invalid`) and, as in the official script,
  left out of the accuracy.
- MMSU (`mmsu_evaluation.py`): the same letter reading, but "" and "None" are wrong answers (counted, as
  `invalid`) and only a non-empty response without a letter is left out; correct when the lettered choice's
  text equals `answer_gt`.
- MMAU-Pro, multiple-choice part (`evaluate_mmau_pro_comprehensive.py`): the script maps each prediction to
  the choice whose NV-Embed-v2 embedding is most similar and compares that choice with the answer. A
  prediction that is a choice's exact text maps to that choice (its similarity with itself, 1, is the
  maximum), so it is scored exactly; any other prediction needs that 7B embedder, so it is `invalid`,
  counted wrong: our accuracy is the official one's lower bound, at most invalid / count below it.
- A row without a prediction is `skipped` (never scored as wrong, never dropped silently); a row without an
  answer (a test split whose labels are withheld) is `unlabeled`.

The aggregation (accuracies, no-think rates) is `core/accuracy.py`, shared with a training run's evaluation.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from audio_thinker.app.eval.predictions import PredictionRow, read_prediction_file
from audio_thinker.core.accuracy import Scored, Status, aggregate
from audio_thinker.core.protocol import mmau_token_match

AIR_LETTERS = "ABCD"
_WORD_RE = re.compile(r"\b\w+\b")


def token_match_status(prediction: str, answer: str, choices: Sequence[str]) -> Status:
    """MMAU / MMAR official rule for one present prediction."""
    if not _WORD_RE.findall(prediction.lower()):
        return "invalid"
    return "correct" if mmau_token_match(prediction, answer, choices) else "wrong"


def air_letter(response: str) -> str | None:
    """The letter AIR-Bench's score_foundation.py (and MMSU's mmsu_evaluation.py) reads from a response, or
    None when it reads none."""
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


def mmsu_status(response: str, answer: str, choices: Sequence[str]) -> tuple[Status, bool]:
    """MMSU's rule for one response: (status, counted in the accuracy)."""
    if response.strip().replace("\n", "") in ("", "None"):
        return "invalid", True  # no answer: a wrong one
    letter = air_letter(response)
    if letter is None:
        return "invalid", False  # 'Wrong format response': left out
    index = AIR_LETTERS.index(letter)
    return ("correct" if index < len(choices) and choices[index] == answer else "wrong"), True


def choice_status(prediction: str, answer: str, choices: Sequence[str]) -> Status:
    """MMAU-Pro's multiple-choice rule where it is decidable without its embedder (see the module's doc)."""
    if prediction not in choices:
        return "invalid"
    return "correct" if prediction == answer else "wrong"


def score_row(row: PredictionRow, bench: str) -> Scored:
    """Apply the benchmark's rule to one row."""
    counted = None
    if row.prediction is None:
        status: Status = "skipped"
    elif not row.answer:
        status = "unlabeled"
    elif bench == "air":
        status = air_status(row.prediction, row.answer, row.choices)
    elif bench == "mmsu":
        status, counted = mmsu_status(row.prediction, row.answer, row.choices)
    elif bench == "mmau-pro":
        status = choice_status(row.prediction, row.answer, row.choices)
    else:
        status = token_match_status(row.prediction, row.answer, row.choices)
    if counted is None:
        counted = status in ("correct", "wrong") or (status == "invalid" and bench != "air")
    return Scored(row.id, status, counted, row.task, row.difficulty, row.category, row.mode)


def score_rows(rows: Iterable[PredictionRow], bench: str) -> list[Scored]:
    return [score_row(r, bench) for r in rows]


def score_file(path: str | Path, bench: str) -> dict:
    """`audio-thinker eval score`: the results.json object of a predictions file (ours or another system's), with
    `excluded` (reason -> rows) when the file has rows outside the benchmark's scored part."""
    rows, excluded = read_prediction_file(path, bench)
    results = aggregate(score_rows(rows, bench))
    if excluded:
        results["excluded"] = excluded
    return results
