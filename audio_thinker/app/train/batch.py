"""`StepBatch`: a step's samples on their way from generation to the update, and the rules that leave groups out.

One object travels through the step: the records (question, completion, verdicts, then reward terms and
advantage; what the run directory dumps) and the trainer's `PolicyBatch` of the same samples in the same order
(token ids, engine / reference / old log-probs, advantages). Selecting samples selects both, so they never drift
apart. Groups are left out whole (GRPO's advantages are relative within a group) and always counted:

- stale groups (`run.max_staleness` k > 0): a group sampled more than k weight versions before the trainer's
  version; its samples share a version (a group is sampled in one call on one worker), the oldest decides;
- zero-std groups (`run.drop_zero_std_groups`, DAPO's dynamic sampling): a group whose rewards are all equal
  carries no gradient.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from audio_thinker.core.encoding import EncodedPrompt
from audio_thinker.core.log import get_logger
from audio_thinker.core.records import RolloutRecord
from audio_thinker.core.rewards import RewardBatch, drop_zero_std_groups
from rollout.engine import Sample
from trainer.logprobs import PolicyBatch

log = get_logger(__name__)


@dataclass
class StepBatch:
    """A step's records and the trainer's batch of the same samples; `timing`: seconds per phase so far;
    `judged`: the items the judge scored."""

    step: int
    records: list[RolloutRecord]
    policy: PolicyBatch
    timing: dict[str, float] = field(default_factory=dict)
    judged: int = 0

    @classmethod
    def of(
        cls, step: int, encoded: Sequence[EncodedPrompt], samples: Sequence[list[Sample]], records: list[RolloutRecord]
    ) -> StepBatch:
        """From the questions' prompts (as the trainer encodes them), their groups of samples and their records."""
        flat = [(k, s) for k, group in enumerate(samples) for s in group]
        engine_lp = (
            [np.asarray(s.logprobs, dtype=np.float32) for _, s in flat]
            if all(s.logprobs is not None for _, s in flat)
            else None
        )
        policy = PolicyBatch(
            prompts=list(encoded),
            prompt_index=[k for k, _ in flat],
            completion_ids=[list(s.token_ids) for _, s in flat],
            engine_logprobs=engine_lp,
        )
        return cls(step, records, policy)

    def select(self, indices: Sequence[int]) -> StepBatch:
        """These samples only: records and trainer rows alike."""
        return StepBatch(
            self.step, [self.records[i] for i in indices], self.policy.select(indices), self.timing, self.judged
        )

    def set_rewards(self, rewards: RewardBatch) -> None:
        """Every sample's reward terms and advantage, into its record and the trainer's batch."""
        for record, reward in zip(self.records, rewards.samples, strict=True):
            record.set_reward(reward)
        self.policy.advantages = [r.advantage for r in self.records]


def drop_stale(batch: StepBatch, version: int, max_staleness: int) -> tuple[StepBatch, dict[str, float]]:
    """The groups sampled at most `max_staleness` versions before the trainer's `version`, and the staleness
    metrics of all the step's samples (the dropped ones too)."""
    records = batch.records
    staleness = [version - r.weights_version for r in records]
    oldest: dict[str, int] = {}
    for r, s in zip(records, staleness):
        oldest[r.group] = max(oldest.get(r.group, s), s)
    kept = [i for i, r in enumerate(records) if oldest[r.group] <= max_staleness]
    metrics = {
        "staleness/mean": sum(staleness) / len(staleness) if staleness else 0.0,
        "staleness/max": float(max(staleness, default=0)),
        "count/stale_dropped": float(len(records) - len(kept)),
    }
    if len(kept) == len(records):
        return batch, metrics
    if not kept:
        raise RuntimeError(
            f"step {batch.step}: every group was sampled more than run.max_staleness={max_staleness} weight versions "
            f"before the trainer's version {version}; nothing is left to train on"
        )
    log.warning(
        "step %d: left out %d samples of groups older than run.max_staleness=%d versions",
        batch.step,
        len(records) - len(kept),
        max_staleness,
    )
    return batch.select(kept), metrics


def drop_zero_std(batch: StepBatch) -> tuple[StepBatch | None, dict[str, float]]:
    """The groups whose rewards differ (rewards set), and how many were dropped; None when none is left."""
    kept, dropped = drop_zero_std_groups([r.total for r in batch.records], [r.group for r in batch.records])
    metrics = {"count/dropped_groups": float(dropped)}
    if not kept:
        return None, metrics
    return (batch if len(kept) == len(batch.records) else batch.select(kept)), metrics
