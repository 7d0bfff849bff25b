"""Where a run's numbers go besides `metrics.jsonl`: the loggers of `run.loggers` (TensorBoard by default,
Weights & Biases as an extra), each taking the step's metrics and, every `run.log_completions_every` steps, a
table of completions like TRL's `log_completions` (question, audio, completion, every reward term, advantage).
"""

from __future__ import annotations

import importlib.util
import math
import re
from collections.abc import Sequence
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter

from audio_thinker.app.errors import TrainingError
from audio_thinker.core.config import Config
from audio_thinker.core.records import RolloutRecord

COMPLETION_COLUMNS = (
    "step",
    "question_id",
    "question",
    "response",
    "mode",
    "correct",
    "format",
    "accuracy",
    "consistency_reward",
    "think_reward",
    "total",
    "advantage",
)


def scalars(metrics: dict) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in metrics.items()
        if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    }


class TensorBoardLogger:
    def __init__(self, folder: Path, purge_step: int | None = None):
        self.writer = SummaryWriter(str(folder), purge_step=purge_step)

    def log_metrics(self, step: int, metrics: dict) -> None:
        for key, value in scalars(metrics).items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def log_completions(self, step: int, records: Sequence[RolloutRecord]) -> None:
        """A markdown table in TensorBoard's text tab (TensorBoard has no audio-in-a-table)."""
        rows = [" | ".join(COMPLETION_COLUMNS), " | ".join("---" for _ in COMPLETION_COLUMNS)]
        for r in records:
            cells = (str(getattr(r, c)).replace("|", "\\|").replace("\n", " ") for c in COMPLETION_COLUMNS)
            rows.append(" | ".join(cells))
        self.writer.add_text("completions", "\n".join(rows), step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbLogger:
    """A W&B run in the run directory (`WANDB_MODE=offline` works without a network)."""

    def __init__(self, config: Config, folder: Path, resume: bool):
        import wandb  # optional dependency (the `wandb` extra), checked by check_loggers before the run starts

        self.wandb = wandb
        self.run = wandb.init(
            project=config.run.wandb_project,
            name=folder.name,
            id=re.sub(r"[^A-Za-z0-9_-]", "-", folder.name)[:64],  # W&B ids: letters, digits, - and _
            dir=str(folder),
            config=config.model_dump(mode="json"),
            resume="allow" if resume else None,
        )

    def log_metrics(self, step: int, metrics: dict) -> None:
        self.run.log(scalars(metrics), step=step)

    def log_completions(self, step: int, records: Sequence[RolloutRecord]) -> None:
        table = self.wandb.Table(columns=[*COMPLETION_COLUMNS, "audio"])
        for r in records:
            table.add_data(*(getattr(r, c) for c in COMPLETION_COLUMNS), self.wandb.Audio(r.audio_path))
        self.run.log({"completions": table}, step=step)

    def close(self) -> None:
        self.run.finish()


def check_loggers(config: Config) -> None:
    """Before anything starts: every logger asked for can be used here."""
    if "wandb" in config.run.loggers and importlib.util.find_spec("wandb") is None:
        raise TrainingError('run.loggers has wandb, which is not installed: pip install ".[wandb]"')


def open_loggers(config: Config, run_dir, purge_step: int) -> list:
    """The loggers of `run.loggers` for a run directory (TensorBoard events under `tensorboard/`)."""
    check_loggers(config)
    out: list = []
    for name in config.run.loggers:
        if name == "tensorboard":
            out.append(TensorBoardLogger(run_dir.tensorboard, purge_step=purge_step))
        else:
            out.append(WandbLogger(config, run_dir.path, resume=purge_step > 1))
    return out
