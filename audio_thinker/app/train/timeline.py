"""The run's timeline: each step's phases with their start and end, as a Chrome trace (`timeline.json`).

Open it in https://ui.perfetto.dev or chrome://tracing to see what overlapped with what: generation on each
rollout worker, the judge, the reference and old log-probs, the update, the weight sync, evaluation and
checkpoints. One lane (thread) per part, events of the trace format's complete kind ("ph": "X", times in
microseconds since the epoch), each with its step in `args`.

The file stays one valid JSON array however often it is written: a step's events are appended by rewriting
only the closing bracket, and a resumed run first drops the events of the steps after its checkpoint. Each
event is one line, so a file cut short by a killed run is read back up to its last whole event.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from audio_thinker.core.log import get_logger

log = get_logger(__name__)
T = TypeVar("T")
PID = 1
LANES = ("driver", "judge", "reference", "trainer")  # then "rollout worker K" for every worker
TAIL = b"\n]\n"


def lane_id(lane: str) -> int:
    """The trace's thread id of a lane: the same in every run and after a resume."""
    if lane in LANES:
        return LANES.index(lane)
    if lane.startswith("rollout worker ") and lane.rsplit(" ", 1)[1].isdigit():
        return 10 + int(lane.rsplit(" ", 1)[1])
    raise ValueError(f"unknown timeline lane {lane!r} ({', '.join(LANES)} or 'rollout worker K')")


def read_events(path: Path) -> list[dict]:
    """The events of a timeline file, line by line: a torn last line (a run killed while appending) is left out."""
    events = []
    for line in path.read_text().splitlines():
        line = line.strip().rstrip(",")
        if line.startswith("{"):
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                log.warning("%s: left out a cut-off event line (%d characters)", path, len(line))
    return events


@dataclass(frozen=True)
class Phase:
    """When a phase ran (time.time() seconds)."""

    start: float
    end: float

    @property
    def seconds(self) -> float:
        return self.end - self.start

    @staticmethod
    def covering(phases: Iterable[Phase]) -> Phase:
        """A phase made of several calls (a streamed step's judge requests): from the first start to the last end."""
        phases = list(phases)
        return Phase(min(p.start for p in phases), max(p.end for p in phases))


class Timeline:
    """Collects a step's spans (thread-safe: phases run in parallel threads) and appends them to the file."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.pending: list[dict] = []
        self.lock = threading.Lock()
        self.named: set[str] = set()  # lanes whose name this instance has written

    def span(self, name: str, lane: str, start: float, end: float, step: int) -> None:
        """A phase from `start` to `end` (time.time() seconds) on `lane`."""
        event = {
            "name": name,
            "ph": "X",
            "pid": PID,
            "tid": lane_id(lane),
            "ts": round(start * 1e6),
            "dur": max(0, round((end - start) * 1e6)),
            "args": {"step": step},
        }
        with self.lock:
            if lane not in self.named:
                self.named.add(lane)
                self.pending.append(
                    {"name": "thread_name", "ph": "M", "pid": PID, "tid": event["tid"], "args": {"name": lane}}
                )
            self.pending.append(event)

    def run(self, name: str, lane: str, step: int, fn: Callable[[], T]) -> tuple[T, Phase]:
        """Run `fn` as a phase on `lane`: its result and its phase (start, end, seconds). The one way the driver
        times its work; `span` records a phase measured elsewhere (a rollout worker's generation)."""
        start = time.time()
        result = fn()
        phase = Phase(start, time.time())
        self.span(name, lane, phase.start, phase.end, step)
        return result, phase

    def flush(self) -> None:
        """Append the pending spans (and the names of the lanes they open) to the file, which stays valid JSON."""
        with self.lock:
            events, self.pending = self.pending, []
        if not events:
            return
        body = ",\n".join(json.dumps(e, separators=(",", ":")) for e in events).encode()
        if not self.path.is_file() or self.path.stat().st_size < len(b"[" + TAIL):
            self.path.write_bytes(b"[\n" + body + TAIL)
            return
        with self.path.open("r+b") as f:
            f.seek(-len(TAIL), 2)
            if f.read() != TAIL:
                raise ValueError(f"{self.path} does not end like a timeline this run wrote")
            f.seek(-len(TAIL), 2)
            f.write(b",\n" + body + TAIL)
            f.truncate()

    def truncate_after(self, step: int) -> None:
        """Forget the events of steps after `step` (a resumed run continues from its checkpoint there)."""
        if not self.path.is_file():
            return
        kept = [e for e in read_events(self.path) if e["ph"] == "M" or e["args"]["step"] <= step]
        if not any(e["ph"] == "X" for e in kept):
            self.path.unlink()
            return
        body = ",\n".join(json.dumps(e, separators=(",", ":")) for e in kept).encode()
        self.path.write_bytes(b"[\n" + body + TAIL)
