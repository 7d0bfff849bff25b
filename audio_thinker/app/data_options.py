"""The options of the data commands (`prepare-avqa`, `make-cot`) as typed models that their parsers are derived
from; light to import (pydantic only), so that `--help` and option errors come without PyAV, torch or httpx."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class AvqaOptions(BaseModel):
    """What `prepare-avqa` reads and writes."""

    model_config = ConfigDict(extra="forbid")

    videos: str = Field(description="Folder of the AVQA (VGGSound) videos, <video_name>.mp4.")
    annotations: str = Field(description="AVQA annotation file (train_qa.json or val_qa.json, the official layout).")
    out: str = Field(description="Output folder: <split>.jsonl, <split>-report.json and audio/<video_name>.wav.")
    split: str = Field("train", description="Name of the written manifest: <out>/<split>.jsonl.")
    workers: int | None = Field(None, ge=1, description="Decoding processes (none: one per CPU core).")
