"""Per-step metrics from a step's records (verl / TRL names plus ours) and the one console line per step."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from audio_thinker.core.records import RolloutRecord
from audio_thinker.core.rewards import RewardBatch, reward_metrics


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else 0.0


def step_metrics(records: Sequence[RolloutRecord], batch: RewardBatch) -> dict[str, float]:
    valid = [r for r in records if r.mode != "invalid"]
    think = [r for r in records if r.mode == "think"]
    no_think = [r for r in records if r.mode == "no_think"]
    out = {
        "think_rate": batch.think_rate,
        "gamma_think": batch.gamma_think,
        "gamma_no_think": batch.gamma_no_think,
        "reward/total": _mean([r.total for r in records]),
        "reward/accuracy": _mean([r.accuracy for r in records]),
        "reward/format": _mean([r.format for r in records]),
        "reward/consistency": _mean([r.consistency_reward for r in records]),
        "reward/think": _mean([r.think_reward for r in records]),
        "acc/overall": _mean([float(r.correct) for r in records]),
        "acc/think": _mean([float(r.correct) for r in think]),
        "acc/no_think": _mean([float(r.correct) for r in no_think]),
        "count/think": len(think),
        "count/no_think": len(no_think),
        "count/invalid": len(records) - len(valid),
        "response_length/mean": _mean([r.num_tokens for r in records]),
        "response_length/max": max((r.num_tokens for r in records), default=0),
        "response_length/clip_ratio": _mean([float(r.finish_reason == "length") for r in records]),
    }
    out.update(reward_metrics(batch, [r.group for r in records]))
    for difficulty in sorted({r.difficulty for r in valid if r.difficulty}):
        sub = [r for r in valid if r.difficulty == difficulty]
        out[f"no_think_rate/{difficulty}"] = _mean([float(r.mode == "no_think") for r in sub])
    return out


def console_line(step: int, total: int, m: dict) -> str:
    return (
        f"step {step}/{total} | reward {m['reward/total']:+.3f} | acc {m['acc/overall']:.2f} | "
        f"think {m['think_rate']:.2f} (g_t {m['gamma_think']:.2f} g_n {m['gamma_no_think']:.2f}) | "
        f"len {m['response_length/mean']:.0f} | kl {m.get('actor/kl', float('nan')):.4f} | "
        f"grad {m.get('actor/grad_norm', float('nan')):.3f} | {m['timing_s/step']:.1f}s"
    )
