"""The run directory: resolved config, one metrics line per step, rollout dumps, checkpoints, TensorBoard.

    runs/<name>-<timestamp>/
      config.yaml                 the resolved config of the run
      metrics.jsonl               one JSON object per step
      rollouts/step_000001.jsonl  every sample of the step with every reward term
      checkpoints/                trainer checkpoints (trainer.checkpoint)
      tensorboard/                event files (app/train/loggers.py)
      status.json                 {"state": "running" | "finished" | "failed" | "preempted", "message", "time"}
      timeline.json               each step's phases as a Chrome trace (app/train/timeline.py; Perfetto, chrome://tracing)
      final/                      the trained policy as a Hugging Face folder (both engines and `eval` load it)
      rehearsal.json              a rehearsal's swaps and checks (app/train/rehearsal.py, `--rehearse`)

On resume everything logged after the checkpoint being resumed is cut away first, so that no step is
logged twice (TensorBoard's own `purge_step` does the same for the event files).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from audio_thinker.app.train.timeline import Timeline
from audio_thinker.core.config import Config
from audio_thinker.core.log import get_logger
from audio_thinker.core.presets import dump_config

log = get_logger(__name__)


RUN_STATES = ("running", "finished", "failed", "preempted")
CONFIG_FILE = "config.yaml"


def default_output_dir(name: str) -> Path:
    return Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.metrics_path = self.path / "metrics.jsonl"
        self.rollouts = self.path / "rollouts"
        self.checkpoints = self.path / "checkpoints"
        self.tensorboard = self.path / "tensorboard"
        self.status_path = self.path / "status.json"
        self.final = self.path / "final"
        self.timeline = Timeline(self.path / "timeline.json")

    def create(self, config: Config) -> RunDir:
        for folder in (self.path, self.rollouts, self.checkpoints, self.tensorboard):
            folder.mkdir(parents=True, exist_ok=True)
        dump_config(config, self.path / CONFIG_FILE)
        return self

    def write_status(self, state: str, message: str | None = None) -> None:
        """What the run is doing, for people and the dashboard (docs/dashboard.md), replaced atomically."""
        if state not in RUN_STATES:
            raise ValueError(f"unknown run state {state!r}")
        tmp = self.status_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"state": state, "message": message, "time": time.time()}) + "\n")
        tmp.replace(self.status_path)

    def rollout_path(self, step: int) -> Path:
        return self.rollouts / f"step_{step:06d}.jsonl"

    def logged_steps(self) -> list[int]:
        if not self.metrics_path.is_file():
            return []
        return [json.loads(line)["step"] for line in self.metrics_path.read_text().splitlines() if line.strip()]

    def truncate_after(self, step: int) -> None:
        """Forget every step after `step` (the checkpoint a resumed run continues from)."""
        if self.metrics_path.is_file():
            lines = [line for line in self.metrics_path.read_text().splitlines() if line.strip()]
            kept = [line for line in lines if json.loads(line)["step"] <= step]
            if len(kept) != len(lines):
                log.info("resume: dropping %d metric lines logged after step %d", len(lines) - len(kept), step)
            self.metrics_path.write_text("".join(line + "\n" for line in kept))
        for dump in self.rollouts.glob("step_*.jsonl"):
            if int(dump.stem.split("_")[1]) > step:
                dump.unlink()
        self.timeline.truncate_after(step)

    def log_metrics(self, metrics: dict) -> None:
        """Append one step's metrics as a JSON line, flushed before returning (the loggers get them too)."""
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(metrics, sort_keys=True) + "\n")

    def write_rollouts(self, step: int, rows: list[dict]) -> Path:
        path = self.rollout_path(step)
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(row) + "\n" for row in rows))
        tmp.rename(path)
        return path
