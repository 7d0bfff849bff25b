"""Progress bars for long CLI work: tqdm on a terminal, quiet when AUDIO_THINKER_NO_PROGRESS=1."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress(items: Iterable[T], desc: str, total: int | None = None, unit: str = "it") -> Iterable[T]:
    disable = os.environ.get("AUDIO_THINKER_NO_PROGRESS") == "1"
    return tqdm(items, desc=desc, total=total, unit=unit, disable=disable, dynamic_ncols=True, leave=False)
