"""One logging set-up for the whole project (CLI, driver, actors, judge server)."""

from __future__ import annotations

import logging
import os
import sys

FORMAT = "%(asctime)s %(levelname).1s %(name)s: %(message)s"


def setup_logging(level: str | int | None = None) -> None:
    """Configure the root logger once; `AUDIO_THINKER_LOG_LEVEL` overrides the default INFO."""
    level = level or os.environ.get("AUDIO_THINKER_LOG_LEVEL", "INFO")
    root = logging.getLogger()
    if not any(getattr(h, "_audio_thinker", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(FORMAT, datefmt="%H:%M:%S"))
        handler._audio_thinker = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("httpx", "httpcore", "urllib3", "filelock", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(name)
