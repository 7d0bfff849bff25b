"""A step's rollout as it is produced ahead of its update, and the staleness rules it is trained under.

With `run.max_staleness` k > 0 the driver generates (and judges, and scores with the reference) steps s+1..s+k
while the trainer trains step s, so a sample may come from weights up to k versions older than the trainer's.
Every sample records the weights version it was sampled with (`RolloutRecord.weights_version`); at training
time its staleness is the trainer's version minus that one, and no group older than k is trained on: it is
left out and counted (`count/stale_dropped`), never silently.
"""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass

from audio_thinker.core.log import get_logger
from audio_thinker.core.records import RolloutRecord
from trainer.logprobs import PolicyBatch

log = get_logger(__name__)


@dataclass
class StepRollout:
    """What a step needs from before the trainer: records (verdicts filled), the trainer's batch of the same
    samples (reference log-probs, and the old ones when computed on idle trainer weights), phase times."""

    step: int
    records: list[RolloutRecord]
    batch: PolicyBatch
    timing: dict[str, float]
    judged: int


def drop_stale(
    records: list[RolloutRecord], batch: PolicyBatch, version: int, max_staleness: int
) -> tuple[list[RolloutRecord], PolicyBatch, dict[str, float]]:
    """The records (and batch rows) whose groups were sampled at most `max_staleness` versions before the
    trainer's `version`, and the staleness metrics of the step's samples (all of them, dropped ones too).

    Whole groups go: GRPO's advantages are relative within a group, so a group is trained on whole or not at all
    (a group is sampled in one call on one worker, so its samples share a version; the oldest one decides).
    """
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
        return records, batch, metrics
    step = records[0].step
    if not kept:
        raise RuntimeError(
            f"step {step}: every group was sampled more than run.max_staleness={max_staleness} weight versions "
            f"before the trainer's version {version}; nothing is left to train on"
        )
    log.warning(
        "step %d: left out %d samples of groups older than run.max_staleness=%d versions",
        step,
        len(records) - len(kept),
        max_staleness,
    )
    return [records[i] for i in kept], batch.select(kept), metrics


def phase_seconds(calls: Mapping[object, Future]) -> float:
    """Wall-clock seconds of a phase made of these calls: from the first one's start to the last one's end."""
    spans = [f.result()[1] for f in calls.values()]
    return max(end for _, end in spans) - min(start for start, _ in spans)
