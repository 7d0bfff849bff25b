"""Restarting the trainer group within the run (`trainer.max_restarts`): a resume inside the job.

A dead trainer rank leaves its peers stuck in their collectives, so the whole group is started anew in the same
bundles; it loads the newest whole checkpoint, what was logged after it is cut, the rollout workers are rewound
to its weights (checksum checked), and the run goes on from there with the same data order. docs/pipeline.md.
"""

from __future__ import annotations

from actors.trainer_group import PolicyTrainerGroup
from actors.weight_sync import WeightSync
from audio_thinker.app.train.run_dir import RunDir
from audio_thinker.app.train.run_start import resume_step
from audio_thinker.core.log import get_logger

log = get_logger(__name__)


class TrainerRecovery:
    """Counts the trainer group's restarts against their bound and performs them."""

    def __init__(self, trainer: PolicyTrainerGroup, sync: WeightSync, run_dir: RunDir, max_restarts: int) -> None:
        self.trainer, self.sync, self.run_dir, self.max_restarts = trainer, sync, run_dir, max_restarts
        self.restarts = 0

    def dead_ranks(self) -> list[int]:
        """The ranks that died, while a restart is still allowed (else none: the failure stops the run)."""
        return self.trainer.dead_ranks() if self.restarts < self.max_restarts else []

    def restart(self, step: int, dead: list[int], cause: Exception) -> int:
        """Start the group anew from the newest checkpoint, rewind the workers to it; returns its step."""
        self.restarts += 1
        reason = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
        log.warning(  # before the restart's own lines ("resumed from <checkpoint> at step S"), which it explains
            "trainer rank %s died during step %d (%s); restart %d of trainer.max_restarts=%d: the trainer group "
            "starts anew from its newest checkpoint, and the steps after it are done again",
            ", ".join(map(str, dead)), step, reason, self.restarts, self.max_restarts,
        )  # fmt: skip
        self.run_dir.timeline.flush()
        self.trainer.restart()
        self.sync.reset()
        start = resume_step(self.run_dir, self.trainer.load_checkpoint)
        self.sync.push(start, rewind=True)
        return start
