"""The options of the data commands (`prepare-avqa`, `make-cot`) as typed models that their parsers are derived
from; light to import (pydantic only), so that `--help` and option errors come without PyAV, torch or httpx."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from audio_thinker.core.chat import detect_family
from audio_thinker.core.options import OptionError
from audio_thinker.core.vocab import Dtype, EngineName

# `make-tiny`'s folders, one per model; model k is seeded with seed + k, so a new model goes last
TINY_MODELS = ("qwen2_audio", "qwen2_5_omni", "qwen3_judge", "qwen3_omni")


def check_tiny_out(out: str | Path, only: list[str] | None, overwrite: bool) -> None:
    """`make-tiny` replaces no model folder it was not asked to (`--overwrite`): the demo's warmed-up policies
    live in artifacts/tiny, and an untrained copy over them would go unnoticed until the rewards stay flat."""
    for name in only or TINY_MODELS:
        folder = Path(out) / name
        if folder.exists() and not overwrite:
            raise FileExistsError(
                f"--out {out}: {folder} exists (pass --overwrite to replace it, or choose another --out)"
            )


class AvqaOptions(BaseModel):
    """What `prepare-avqa` reads and writes."""

    model_config = ConfigDict(extra="forbid")

    videos: str = Field(description="Folder of the AVQA (VGGSound) videos, <video_name>.mp4.")
    annotations: str = Field(description="AVQA annotation file (train_qa.json or val_qa.json, the official layout).")
    out: str = Field(description="Output folder: <split>.jsonl, <split>-report.json and audio/<video_name>.wav.")
    split: str = Field("train", description="Name of the written manifest: <out>/<split>.jsonl.")
    workers: int | None = Field(None, ge=1, description="Decoding processes (none: one per CPU core).")


class CotOptions(BaseModel):
    """What `make-cot` reads, asks and writes."""

    model_config = ConfigDict(extra="forbid")

    data: str = Field(description="Training manifest in the AVQA/R1-AQA jsonl layout (prepare-avqa's output).")
    audio_root: str | None = Field(None, description="Folder relative audio paths start from (none: --data's folder).")
    out: str = Field(
        description="Accepted rows: the source rows plus caption and rationale (jsonl); beside it OUT's "
        ".captions.jsonl, .rejected.jsonl and .report.json."
    )
    captioner: str = Field(
        description="The model that captions every clip (step 1): a Hugging Face folder (run by --engine), or the "
        "URL of an OpenAI-compatible endpoint serving an audio model (e.g. `vllm serve Qwen2-Audio-7B-Instruct`; "
        "each clip goes as a base64 wav `input_audio` part)."
    )
    captioner_model: str | None = Field(
        None, description="With a --captioner URL: the model name sent (none: the first one its /v1/models lists)."
    )
    rationale_url: str = Field(
        description="OpenAI-compatible endpoint of the rationale model (http://host:port, .../v1 or the full "
        ".../v1/chat/completions; e.g. `vllm serve Qwen2.5-72B-Instruct`)."
    )
    rationale_model: str | None = Field(
        None, description="Model name sent to the endpoint (none: the first one its /v1/models lists)."
    )
    api_key: str | None = Field(
        None, description="Bearer key of the endpoint (none: AUDIO_THINKER_COT_API_KEY, if set)."
    )
    engine: EngineName = Field("transformers", description="Generation engine of the captioner.")
    batch_size: int = Field(8, ge=1, description="Clips per captioning call (greedy decoding).")
    caption_max_tokens: int = Field(256, ge=1, description="Generation budget of one caption.")
    rationale_max_tokens: int = Field(512, ge=1, description="Generation budget of one rationale.")
    concurrency: int = Field(8, ge=1, description="Rationale requests in flight at once.")
    max_retries: int = Field(5, ge=0, description="Retries of a request on connection errors, 429/5xx or garbage.")
    backoff_s: float = Field(1.0, ge=0, description="First retry delay; it doubles per retry (at most 30 s).")
    timeout_s: float = Field(120.0, gt=0, description="Timeout of one rationale request.")
    max_items: int | None = Field(None, ge=1, description="Use only the first N rows of --data (a bounded cost).")
    caption_prompt: str | None = Field(None, description="Captioning instruction file (none: the packaged v1).")
    rationale_prompt: str | None = Field(
        None,
        description="Rationale prompt file with {caption}, {question}, {choices}, {answer} (none: the packaged v1).",
    )
    dtype: Dtype | None = Field(None, description="Captioner weights dtype (none: bfloat16 on GPU, float32 on CPU).")
    device: str | None = Field(None, description="Torch device of the transformers engine (none: cuda if available).")

    def check_inputs(self) -> None:
        """Fail fast, before a model loads: the files exist, the captioner hears audio, --out is no folder."""
        prompts = [("--caption-prompt", self.caption_prompt), ("--rationale-prompt", self.rationale_prompt)]
        for option, path in [("--data", self.data), *prompts]:
            if path is None or Path(path).is_file():
                continue
            if Path(path).is_dir():
                raise OptionError(f"{option} {path} is a folder, not a file")
            raise OptionError(f"{option} {path}: no such file")
        if self.audio_root is not None and not Path(self.audio_root).is_dir():
            raise OptionError(f"--audio-root {self.audio_root}: no such folder")
        if Path(self.out).is_dir():
            raise OptionError(f"--out {self.out} is a folder: name the jsonl file to write")
        if not is_url(self.captioner):
            try:
                detect_family(self.captioner)
            except (OSError, ValueError) as exc:
                raise OptionError(
                    f"--captioner: {exc} (the captioner hears the clips: a Qwen2-Audio or Qwen2.5-Omni folder, "
                    "or the URL of an endpoint serving one)"
                ) from None


def is_url(captioner: str) -> bool:
    return captioner.startswith(("http://", "https://"))
