"""Incremental JSONL reading: a file that is still being appended to is parsed once, never re-read per update.

The reader remembers its byte offset and parses only complete lines appended since the last refresh; a line
without its newline yet (being written) waits for the next refresh. A line that does not parse is skipped
and counted, so the page can say so instead of failing. A file that shrank or whose start changed was
rewritten (a resumed run cuts away the steps after its checkpoint): it is read again from the start.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

HEAD_BYTES = 64


def finite(value):
    """JSON-safe value: NaN and infinities (which Python's json writes) become None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class JsonlTail:
    """The JSON objects of one file, read incrementally (see the module docstring)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.offset = 0
        self.line_no = 0
        self.head = b""
        self.malformed: list[int] = []  # line numbers (1-based) skipped
        self.partial = False  # the last line has no newline yet
        self.exists = False
        self.generation = 0  # bumped whenever the file was rewritten and is read again from the start

    def reset(self) -> None:
        self.offset, self.line_no, self.head, self.malformed, self.partial = 0, 0, b"", [], False
        self.generation += 1

    def refresh(self) -> list[dict]:
        """The objects of the lines completed since the last call (all of them after a rewrite)."""
        try:
            with self.path.open("rb") as f:
                self.exists = True
                size = f.seek(0, 2)
                f.seek(0)
                head = f.read(min(HEAD_BYTES, self.offset))
                if size < self.offset or head != self.head[: len(head)]:
                    self.reset()
                f.seek(self.offset)
                data = f.read(size - self.offset)
                if self.offset < HEAD_BYTES:
                    f.seek(0)
                    self.head = f.read(HEAD_BYTES)
        except FileNotFoundError:
            if self.exists:
                self.reset()
            self.exists = False
            return []
        end = data.rfind(b"\n") + 1
        self.partial = end < len(data)
        self.offset += end
        out = []
        for line in data[:end].split(b"\n")[:-1]:
            self.line_no += 1
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                obj = None
            if isinstance(obj, dict):
                out.append(obj)
            else:
                self.malformed.append(self.line_no)
        return out

    def warnings(self) -> list[str]:
        name = self.path.name
        out = []
        if self.malformed:
            shown = ", ".join(str(n) for n in self.malformed[:5]) + (" ..." if len(self.malformed) > 5 else "")
            out.append(f"{name}: {len(self.malformed)} malformed line(s) skipped (line {shown})")
        if self.partial:
            out.append(f"{name}: the last line is incomplete (still being written?) and is not shown yet")
        return out


def read_jsonl(path: Path) -> tuple[list[dict], list[str]]:
    """A whole file at once (a finished rollout dump), with the same skipping and warnings."""
    tail = JsonlTail(path)
    rows = tail.refresh()
    return rows, tail.warnings()
