"""The data of `audio-thinker sft`: the training rows, their rationales (CoT targets) and the target texts."""

from __future__ import annotations

from audio_thinker.core.config import Config
from audio_thinker.core.data import Dataset, load_dataset
from audio_thinker.core.log import get_logger
from audio_thinker.core.manifests import DataError
from audio_thinker.core.protocol import TAGS

log = get_logger(__name__)

END = "<|im_end|>"  # the chat turn's end: the token a rollout stops at


def sft_target(answer: str, rationale: str | None) -> str:
    """The response the policy is taught (the protocol's two well-formed modes), with the turn's end token."""
    think = "" if rationale is None else f"<think>{rationale}</think>"
    return f"{think}<answer>{answer}</answer>{END}"


def load_sft_data(config: Config) -> tuple[Dataset, list[str | None]]:
    """The training set and, for cot targets, each row's rationale (a missing or tagged one is a DataError naming
    the row, or with data.skip_bad_rows a skipped and counted row)."""
    d, field = config.data, config.sft.rationale_field
    data = load_dataset(
        d.train_manifest, "avqa", d.audio_root, skip_bad_rows=d.skip_bad_rows, max_seconds=d.max_audio_seconds
    )
    if config.sft.target == "answer":
        return data, [None] * len(data)
    kept, rationales = [], []
    for item in data:
        value = item.source.get(field)
        problem = None
        if not isinstance(value, str) or not value.strip():
            problem = f"missing or empty field '{field}' (sft.target=cot; make-cot writes it)"
        elif any(tag in value for tag in TAGS):
            problem = f"field '{field}' contains a <think>/<answer> tag"
        if problem is not None:
            error = DataError(f"{data.path} row {item.row}: {problem}")
            if not d.skip_bad_rows:
                raise error
            data.skipped.append((item.row, str(error)))
            continue
        kept.append(item)
        rationales.append(value.strip())
    if len(kept) < len(data):
        log.warning("%s: skipped %d rows without a usable rationale", data.path, len(data) - len(kept))
    if not kept:
        raise DataError(f"{data.path}: no row has a usable '{field}' for sft.target=cot")
    data.items = kept
    return data, rationales
