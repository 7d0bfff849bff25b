"""SIGTERM as a preemption notice (what Kubernetes, KubeRay and `ray job stop` send before they kill).

The first SIGTERM only sets a flag: the driver finishes the step in flight, keeps a checkpoint of the last
complete step, closes its actors and exits with EXIT_PREEMPTED and the resume command. A second SIGTERM
restores the default action and re-raises it: the process ends at once (the last checkpoint stays).
"""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType

from audio_thinker.core.log import get_logger

log = get_logger(__name__)
EXIT_PREEMPTED = 75  # sysexits' EX_TEMPFAIL: "a temporary failure; the user is invited to retry"


class PreemptionGuard:
    """Within `with PreemptionGuard() as guard:`, `guard.requested` tells whether a SIGTERM came."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._previous: signal.Handlers | None = None

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self._event.is_set():
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        self._event.set()
        log.warning("SIGTERM: finishing the step in flight, then a checkpoint and exit (a second SIGTERM exits now)")

    def __enter__(self) -> PreemptionGuard:
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread only
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
