"""`audio-thinker` command line: one entry point, one subcommand per job (parsers.py declares them, commands.py
runs them).

Every handler returns a process exit code. An error in what the user gave (`core.errors.UserError`, and the
operating system's refusals of a path) is one line on stderr and exit code 2, with the traceback only under
`--log-level DEBUG`; a preempted run exits 75 naming its resume command.
"""

from __future__ import annotations

import logging
import os
import sys

from audio_thinker.app.cli.parsers import LOG_LEVELS, build_parser
from audio_thinker.app.errors import Preempted
from audio_thinker.app.train.preemption import EXIT_PREEMPTED
from audio_thinker.core.errors import UserError
from audio_thinker.core.log import setup_logging

log = logging.getLogger(__name__)

# The operating system's refusals of a path the user gave: one line naming the path.
PATH_ERRORS = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError)
LOG_LEVEL_ENV = "AUDIO_THINKER_LOG_LEVEL"


def _one_line(message: str) -> str:
    """A multi-line message (e.g. a config error listing keys) as one line."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    return " ".join(lines[:1] + ["; ".join(lines[1:])]).strip()


def _message(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"  # not "[Errno 17] File exists: 'x'"
    return _one_line(str(exc)) or type(exc).__name__


def _log_level(given: str | None) -> str:
    """--log-level, else AUDIO_THINKER_LOG_LEVEL (any case), else INFO; a bad variable is a one-line error."""
    if given:
        return given
    level = os.environ.get(LOG_LEVEL_ENV, "INFO").strip().upper()
    if level not in LOG_LEVELS:
        raise UserError(f"{LOG_LEVEL_ENV}={os.environ[LOG_LEVEL_ENV]!r}: expected one of {', '.join(LOG_LEVELS)}")
    return level


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        setup_logging(_log_level(args.log_level))
        return int(args.func(args) or 0)
    except Preempted as exc:  # a checkpoint is kept: not an error, a distinct exit code for schedulers to retry
        print(f"audio-thinker {args.command}: {exc}", file=sys.stderr)
        return EXIT_PREEMPTED
    except (UserError, *PATH_ERRORS) as exc:
        log.debug("audio-thinker %s failed", args.command, exc_info=True)
        print(f"audio-thinker {args.command}: {_message(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
