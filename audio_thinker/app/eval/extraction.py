"""Which text of a completion is its answer when scoring a benchmark (`--answer-extraction strict|lenient`).

- lenient (the default of `eval` and of `ablate`'s evaluations): the text of the last complete
  `<answer>...</answer>` wherever it stands (text around it, a truncated `<think>`, repeated tags); without
  one, the whole response (chat end tokens stripped) is the prediction and the benchmark's official free-text
  rule judges it, as the official scripts do with any model's output: MMAU / MMAR's token match, AIR-Bench's
  and MMSU's letter rule (first character, else the second-to-last). It measures what the model knows apart
  from how well it keeps the format; the benchmarks' own numbers are read this way.
- strict: the project's parser (`protocol.parse_response`): a response outside the `<think>`/`<answer>`
  protocol has no answer and is scored as an empty prediction (the benchmark's rule for ""). This is what
  training rewards (the held-out metrics a training run logs are read this way).
"""

from __future__ import annotations

from collections.abc import Sequence

from audio_thinker.app.eval.predictions import LETTER_BENCHES, check_bench
from audio_thinker.app.eval.scoring import air_letter
from audio_thinker.core.protocol import LETTERS, match_choice, parse_response, strip_end_tokens
from audio_thinker.core.vocab import ANSWER_EXTRACTIONS

_OPEN, _CLOSE = "<answer>", "</answer>"


def extract_answer(text: str, mode: str) -> str | None:
    """The answer text of a completion (stripped), or None when it has none under `mode`."""
    if mode not in ANSWER_EXTRACTIONS:
        raise ValueError(f"answer extraction must be one of {', '.join(ANSWER_EXTRACTIONS)}, got {mode!r}")
    if mode == "strict":
        return parse_response(text).answer
    text = strip_end_tokens(text)
    close = text.rfind(_CLOSE)
    start = text.rfind(_OPEN, 0, close) if close >= 0 else -1
    answer = text[start + len(_OPEN) : close] if start >= 0 else text
    return answer.strip() or None


def prediction_from_text(bench: str, text: str, choices: Sequence[str], letters: bool, mode: str) -> str:
    """What a completion puts under the benchmark's prediction key (see `predictions.prediction_text`).

    The answer names a choice: that choice's text (its letter for AIR and MMSU). Else text benchmarks keep the
    answer as written (the official rule judges it) and AIR / MMSU read a letter from it by their official
    rule, in lenient mode only: strict gives exactly `prediction_text(bench, parse_response(text), ...)`.
    """
    check_bench(bench)
    answer = extract_answer(text, mode)
    if answer is None:
        return ""
    index = match_choice(answer, choices, letters)
    if index is not None:
        return LETTERS[index] if bench in LETTER_BENCHES else choices[index]
    if bench in LETTER_BENCHES:
        return (air_letter(answer) or "") if mode == "lenient" else ""
    return answer
