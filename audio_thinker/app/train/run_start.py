"""Opening a run directory for its steps, new or resumed: one rule for `train` and `sft`.

A resume loads the newest whole checkpoint and cuts everything logged after it (metrics, dumps, timeline), so
no step is logged twice; a new run refuses a directory that already holds steps.
"""

from __future__ import annotations

from collections.abc import Callable

from audio_thinker.app.errors import TrainingError
from audio_thinker.app.train.run_dir import RunDir
from audio_thinker.core.config import Config
from audio_thinker.core.log import STEPS, get_logger
from trainer.checkpoint import latest_checkpoint

log = get_logger(__name__)
steps_log = get_logger(STEPS)


def resume_step(run_dir: RunDir, load_checkpoint: Callable[[object], dict]) -> int:
    """Load the newest checkpoint (`load_checkpoint(folder)` returns its state) and cut what came after it;
    the step it holds (0 when there is none: the run starts over)."""
    latest = latest_checkpoint(run_dir.checkpoints)
    if latest is None:
        log.warning("resume: no checkpoint in %s, starting from step 1", run_dir.checkpoints)
        return 0
    step = int(load_checkpoint(latest)["extra"]["step"])
    run_dir.truncate_after(step)
    steps_log.info("resumed from %s at step %d", latest, step)
    return step


def open_run(config: Config, run_dir: RunDir, load_checkpoint: Callable[[object], dict]) -> int:
    """Create (or, with run.resume, continue) the run directory; returns the last step already done."""
    resuming = config.run.resume and run_dir.metrics_path.parent.exists()
    run_dir.create(config)
    start = resume_step(run_dir, load_checkpoint) if resuming else 0
    if not resuming and run_dir.logged_steps():
        raise TrainingError(f"{run_dir.path} already holds a run; set run.resume=true to continue it")
    return start
