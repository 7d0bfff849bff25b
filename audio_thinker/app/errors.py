"""Errors of the application layer, defined apart from the modules that raise them (the driver and the
evaluation runner import Ray and torch), so that the CLI can catch them without importing those."""

from __future__ import annotations

from audio_thinker.core.errors import UserError


class TrainingError(UserError, RuntimeError):
    """The run cannot continue; the message names the cause and what was saved."""


class Preempted(TrainingError):
    """The run stopped on a SIGTERM after a complete step, with a checkpoint of it; the message names the resume
    command (exit code `preemption.EXIT_PREEMPTED`)."""


class EvalError(UserError, ValueError):
    """An evaluation that cannot run as asked; the message says what to change."""


class CotError(UserError, ValueError):
    """`make-cot` inputs or outputs that do not fit together (a prompt file, ids, a run made otherwise)."""
