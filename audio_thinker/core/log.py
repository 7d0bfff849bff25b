"""One logging set-up for the whole project (CLI, driver, actors, judge server).

A training run keeps its console quiet: the progress bar, one line per step (the `audio_thinker.steps`
logger) and warnings. Everything else goes to files in the run directory: the driver's log to
`logs/driver.log`, and every actor of a local run writes its output (engine logs included) to
`logs/<actor>-<pid>.log`. `--verbose` shows it all on the console instead.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

FORMAT = "%(asctime)s %(levelname).1s %(name)s: %(message)s"
STEPS = "audio_thinker.steps"  # the one-line-per-step logger, always on the console
LOG_DIR_ENV = "AUDIO_THINKER_LOG_DIR"  # set by a local run for its actors


def _console() -> logging.Handler | None:
    return next((h for h in logging.getLogger().handlers if getattr(h, "_audio_thinker", False)), None)


def setup_logging(level: str | int | None = None) -> None:
    """Configure the root logger once; `AUDIO_THINKER_LOG_LEVEL` overrides the default INFO."""
    level = level or os.environ.get("AUDIO_THINKER_LOG_LEVEL", "INFO")
    root = logging.getLogger()
    if _console() is None:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_ConsoleFormatter(FORMAT, datefmt="%H:%M:%S"))
        handler._audio_thinker = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("httpx", "httpcore", "urllib3", "filelock", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class _ConsoleFormatter(logging.Formatter):
    """Step lines as plain lines (time and message); everything else with level and logger name."""

    def format(self, record: logging.LogRecord) -> str:
        if record.name == STEPS:
            return f"{self.formatTime(record, self.datefmt)} {record.getMessage()}"
        return super().format(record)


class _StepsAndWarnings(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or record.name == STEPS


class _LazyFileHandler(logging.FileHandler):
    """Creates its folder and file at the first record: a run refused at its checks leaves nothing behind."""

    def __init__(self, path: str | Path):
        super().__init__(path, delay=True)

    def _open(self):
        Path(self.baseFilename).parent.mkdir(parents=True, exist_ok=True)
        return super()._open()


def quiet_console(log_file: str | Path) -> None:
    """From now on the console shows step lines and warnings only; every record also goes to `log_file`."""
    setup_logging(logging.getLogger().level or logging.INFO)
    console = _console()
    if console is not None and not any(isinstance(f, _StepsAndWarnings) for f in console.filters):
        console.addFilter(_StepsAndWarnings())
    handler = _LazyFileHandler(log_file)
    handler.setFormatter(logging.Formatter(FORMAT, datefmt="%H:%M:%S"))
    logging.getLogger().addHandler(handler)


def redirect_actor_output(name: str) -> None:
    """In an actor of a local run (`AUDIO_THINKER_LOG_DIR` set): its stdout and stderr, engine logs included,
    to `<log dir>/<name>-<pid>.log` at the file-descriptor level, so nothing of it reaches the console."""
    folder = os.environ.get(LOG_DIR_ENV)
    if not folder:
        return
    path = Path(folder) / f"{name}-{os.getpid()}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(name)
