"""Run directories as the dashboard sees them: config, metrics (read incrementally), rollout dumps, status.

A run's state comes from `<run>/status.json` when the driver wrote one ({"state": "running" | "finished" |
"failed" | "preempted", "message": ...}); otherwise it is inferred: finished when the last step is run.total_steps or
`final/` exists, running while the run's files changed within `stale_after` seconds, stale after that. A
directory that disappears is kept in the index as gone. Nothing here raises on a bad file: problems become
warnings that the pages show. One module of ~390 lines: every file of a run directory, read incrementally, in one
place that the pages and the Prometheus exporter share.
"""

from __future__ import annotations

import bisect
import json
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from audio_thinker.app.dashboard.jsonl import JsonlTail, finite, read_jsonl
from audio_thinker.app.dashboard.rollouts import typed_rows

STATES = ("running", "finished", "failed", "preempted", "stale", "gone")
ENDED = ("finished", "failed", "preempted")  # what status.json says of a run that stopped
AUDIO_TYPES = {".wav": "audio/wav", ".flac": "audio/flac", ".mp3": "audio/mpeg", ".ogg": "audio/ogg"}
MODE_COUNTS = ("count/think", "count/no_think", "count/invalid")  # their invalid share is derived as share/invalid
DUMP_CACHE = 8  # parsed rollout dumps kept in memory per run (a 7B step holds 128 long responses)


MAX_PATH_CHARS = 4096  # an audio path longer than this, or with a NUL, is malformed (400), not looked up


class AudioRefused(Exception):
    """An audio path that is not served: 400 malformed, 404 for anything else (missing and outside the audio root
    answer alike, so the answer tells nothing about files outside it)."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status


class Metrics:
    """The metrics.jsonl of a run as rows ordered by step; a step logged again (resume) replaces the tail."""

    def __init__(self, path: Path):
        self.tail = JsonlTail(path)
        self.rows: list[dict] = []
        self.steps: list[int] = []
        self.keys: set[str] = set()
        self.bad_steps = 0
        self.generation = -1

    def refresh(self) -> None:
        new = self.tail.refresh()
        if self.tail.generation != self.generation:
            self.rows, self.steps, self.keys, self.bad_steps = [], [], set(), 0
            self.generation = self.tail.generation
        for row in new:
            step = row.get("step")
            if not isinstance(step, int) or isinstance(step, bool):
                self.bad_steps += 1
                continue
            clean = {k: finite(v) for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            counts = [clean.get(k) for k in MODE_COUNTS]
            if all(c is not None for c in counts) and sum(counts) > 0:
                clean["share/invalid"] = counts[2] / sum(counts)
            cut = bisect.bisect_left(self.steps, step)
            del self.rows[cut:], self.steps[cut:]
            self.rows.append(clean)
            self.steps.append(step)
            self.keys.update(k for k in clean if k != "step")

    def since(self, step: int) -> list[dict]:
        return self.rows[bisect.bisect_right(self.steps, step) :]

    def last(self) -> dict:
        return self.rows[-1] if self.rows else {}

    def warnings(self) -> list[str]:
        out = self.tail.warnings()
        if self.bad_steps:
            out.append(f"metrics.jsonl: {self.bad_steps} line(s) without an integer step skipped")
        return out


@dataclass
class Dump:
    """One step's rollout dump (every sample of the step) and what was skipped while reading it."""

    step: int
    rows: list[dict]
    warnings: list[str] = field(default_factory=list)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _signature(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


class Run:
    """One run directory."""

    def __init__(self, path: Path, stale_after: float = 600.0, cwd: Path | None = None):
        self.path = path
        self.name = path.name
        self.stale_after = stale_after
        self.cwd = cwd or Path.cwd()
        self.metrics = Metrics(path / "metrics.jsonl")
        self.config: dict = {}
        self.config_sig: tuple[int, int] | None = None
        self.config_warning: str | None = None
        self.dumps: OrderedDict[int, tuple[tuple[int, int], Dump]] = OrderedDict()
        self.summaries: dict[int, tuple[tuple[int, int], dict[str, list[int]]]] = {}
        self.lock = threading.RLock()  # requests run in a thread pool; the readers' offsets are shared state

    # ---------------------------------------------------------------------------------------- state

    @property
    def gone(self) -> bool:
        return not self.path.is_dir()

    def refresh(self) -> None:
        """Parse what was appended since the last call (cheap when nothing changed); a gone run keeps what
        was last read."""
        with self.lock:
            if not self.gone:
                self._refresh()

    def _refresh(self) -> None:
        sig = _signature(self.path / "config.yaml")
        if sig != self.config_sig:
            self.config_sig, self.config, self.config_warning = sig, {}, None
            if sig is not None:
                try:
                    loaded = yaml.safe_load((self.path / "config.yaml").read_text())
                    self.config = loaded if isinstance(loaded, dict) else {}
                except (OSError, yaml.YAMLError) as exc:
                    self.config_warning = f"config.yaml unreadable: {type(exc).__name__}"
        self.metrics.refresh()

    def section(self, name: str) -> dict:
        value = self.config.get(name)
        return value if isinstance(value, dict) else {}

    @property
    def total_steps(self) -> int | None:
        total = self.section("run").get("total_steps")
        return total if isinstance(total, int) else None

    @property
    def last_step(self) -> int:
        return self.metrics.steps[-1] if self.metrics.steps else 0

    def activity(self) -> float:
        """When the run last wrote something (metrics line, dump rename, config, status)."""
        names = ("metrics.jsonl", "rollouts", "config.yaml", "status.json")
        return max(_mtime(self.path / n) for n in names)

    def status(self, now: float | None = None) -> tuple[str, str]:
        """(state, message); see the module docstring."""
        if self.gone:
            return "gone", "the run directory no longer exists"
        now = time.time() if now is None else now
        idle = now - self.activity()
        marker = self.marker()
        if marker:
            state, message = marker
            if state in ENDED:
                return state, message
            return ("running", message) if idle < self.stale_after else ("stale", f"no output for {idle:.0f} s")
        total = self.total_steps
        if (self.path / "final").is_dir() or (total is not None and self.last_step >= total):
            return "finished", ""
        if idle < self.stale_after:
            return "running", ""
        return "stale", f"no output for {idle:.0f} s"

    def marker(self) -> tuple[str, str] | None:
        """(state, message) of status.json; None when absent or unreadable (then the state is inferred)."""
        try:
            data = json.loads((self.path / "status.json").read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or data.get("state") not in ("running", *ENDED):
            return None
        return data["state"], str(data.get("message") or "")

    def warnings(self) -> list[str]:
        out = self.metrics.warnings()
        if (self.path / "status.json").is_file() and self.marker() is None:
            states = " | ".join(f'"{s}"' for s in ("running", *ENDED))
            out.append(f'status.json is not {{"state": {states}, ...}}; the state is inferred')
        if self.config_warning:
            out.append(self.config_warning)
        if not self.gone and not (self.path / "config.yaml").is_file():
            out.append("config.yaml is missing")
        return out

    def summary(self) -> dict:
        state, message = self.status()
        last = self.metrics.last()
        model = self.section("model")
        return {
            "name": self.name,
            "run_name": self.section("run").get("name", ""),
            "variant": self.section("reward").get("variant", ""),
            "family": model.get("family", ""),
            "model": Path(str(model.get("policy_path", ""))).name,
            "step": self.last_step,
            "total": self.total_steps,
            "state": state,
            "message": message,
            "reward": last.get("reward/total"),
            "think_rate": last.get("think_rate"),
            "updated": self.activity(),
            "warnings": self.warnings(),
        }

    # ---------------------------------------------------------------------------------------- rollouts

    def dump_steps(self) -> list[int]:
        """Steps with a complete dump (the driver writes a .tmp file first and renames it)."""
        out = []
        try:
            entries = os.listdir(self.path / "rollouts")
        except OSError:
            return []
        for entry in entries:
            if entry.startswith("step_") and entry.endswith(".jsonl") and entry[5:-6].isdigit():
                out.append(int(entry[5:-6]))
        return sorted(out)

    def dump(self, step: int) -> Dump | None:
        with self.lock:
            return self._dump(step)

    def _dump(self, step: int) -> Dump | None:
        path = self.path / "rollouts" / f"step_{step:06d}.jsonl"
        sig = _signature(path)
        if sig is None:
            return None
        cached = self.dumps.get(step)
        if cached is not None and cached[0] == sig:
            self.dumps.move_to_end(step)
            return cached[1]
        rows, warnings = read_jsonl(path)
        rows, wrong = typed_rows(rows)
        if wrong:
            warnings.append(f"{path.name}: {wrong} row(s) with a field of the wrong type skipped")
        dump = Dump(step, rows, warnings)
        self.dumps[step] = (sig, dump)
        while len(self.dumps) > DUMP_CACHE:
            self.dumps.popitem(last=False)
        return dump

    def question_history(self, question_id: str) -> list[dict]:
        """Per step where the question was sampled: samples, think / correct / invalid counts."""
        with self.lock:
            return self._question_history(question_id)

    def _question_history(self, question_id: str) -> list[dict]:
        out = []
        for step in self.dump_steps():
            path = self.path / "rollouts" / f"step_{step:06d}.jsonl"
            sig = _signature(path)
            cached = self.summaries.get(step)
            if cached is None or cached[0] != sig:
                counts: dict[str, list[int]] = {}
                for row in typed_rows(read_jsonl(path)[0])[0]:
                    c = counts.setdefault(str(row.get("question_id")), [0, 0, 0, 0])
                    c[0] += 1
                    c[1] += row.get("mode") == "think"
                    c[2] += row.get("correct") is True
                    c[3] += row.get("mode") == "invalid"
                cached = self.summaries[step] = (sig, counts)
            c = cached[1].get(question_id)
            if c:
                out.append({"step": step, "samples": c[0], "think": c[1], "correct": c[2], "invalid": c[3]})
        return out

    # ---------------------------------------------------------------------------------------- audio

    def bases(self) -> list[Path]:
        """Folders relative paths start from: the dashboard's working directory, the run directory's parent,
        and its grandparent (a default run directory is runs/<name>-<time> under the training's working
        directory)."""
        parent = self.path.resolve().parent
        return [self.cwd, parent, parent.parent]

    def audio_roots(self) -> list[Path]:
        root = self.section("data").get("audio_root")
        if not root:
            return []
        root = Path(str(root))
        if root.is_absolute():
            return [root.resolve()]
        return [(base / root).resolve() for base in self.bases()]

    def audio_file(self, audio_path: str) -> tuple[Path, str]:
        """The file and content type of an audio path of this run's dumps; AudioRefused unless it resolves to
        an audio file inside data.audio_root (no traversal, no other files)."""
        if "\0" in audio_path or len(audio_path) > MAX_PATH_CHARS:
            raise AudioRefused(400, "malformed audio path")
        missing = AudioRefused(404, "no such audio file under the run's data.audio_root")
        roots = self.audio_roots()
        rel = Path(audio_path)
        if not roots or rel.suffix.lower() not in AUDIO_TYPES:
            raise missing
        if rel.is_absolute():
            candidates = [rel]
        else:
            candidates = [base / rel for base in self.bases()] + [root / rel for root in roots]
        for candidate in candidates:
            try:
                resolved = candidate.resolve()
                if any(_inside(resolved, root) for root in roots) and resolved.is_file():
                    return resolved, AUDIO_TYPES[resolved.suffix.lower()]
            except OSError:  # a name too long for the file system, a loop of links: not a clip of the run
                continue
        raise missing


class RunIndex:
    """Every run directory directly under a folder; runs seen once and then removed are reported as gone."""

    def __init__(self, root: str | Path, stale_after: float = 600.0):
        self.root = Path(root).resolve()
        self.stale_after = stale_after
        self.cwd = Path.cwd()
        self.known: dict[str, Run] = {}

    def is_run(self, path: Path) -> bool:
        """A run directory of the index: a directory that resolves to a direct child of the root (a link to a folder
        elsewhere is not one: the same rule for listing and lookup) with a config.yaml or a metrics.jsonl."""
        try:
            inside = path.resolve().parent == self.root
        except OSError:
            return False
        return inside and path.is_dir() and ((path / "config.yaml").is_file() or (path / "metrics.jsonl").is_file())

    def scan(self) -> list[Run]:
        try:
            entries = sorted(os.listdir(self.root))
        except OSError:
            entries = []
        for entry in entries:
            path = self.root / entry
            if entry not in self.known and not entry.startswith(".") and self.is_run(path):
                self.known[entry] = Run(path, self.stale_after, self.cwd)
        runs = sorted(self.known.values(), key=lambda r: r.name)
        for run in runs:
            run.refresh()
        return runs

    def get(self, name: str) -> Run | None:
        """The run called `name`: a direct child of the root (anything else, `..` included, is None)."""
        if not name or name.startswith(".") or "/" in name or "\\" in name or "\0" in name:
            return None
        run = self.known.get(name)
        if run is not None and not run.gone and not self.is_run(run.path):
            return None  # the folder became a link to somewhere else after it was listed
        if run is None:
            path = self.root / name
            if not self.is_run(path):
                return None
            run = self.known[name] = Run(path, self.stale_after, self.cwd)
        run.refresh()
        return run
