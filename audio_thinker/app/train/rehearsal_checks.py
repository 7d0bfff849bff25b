"""What a rehearsal checks, as functions of what it observed (each can be fed a broken case; docs/placement.md):

- weights: after every sync, each rollout worker holds the trainer's weights (checksum) of the step's version;
- placement: Ray put each actor where the plan puts it: in its group's placement group, with its CPU and GPU
  share, on GPUs that match the plan's one to one (actors the plan puts on one GPU share one), computing on the CPU;
- update: on the first step, the ranks' update (ZeRO over N ranks) equals one rank's update of the same batch:
  loss, gradient norm and the updated weights;
- judge: the run's judge (vLLM backend) and the transformers backend score the step's items alike.

Each check returns a `CheckResult`; a failed one stops the rehearsal with a `RehearsalError` naming it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from audio_thinker.app.errors import TrainingError

# Tolerances (float32 on the CPU; measured differences in docs/placement.md). The loss of a GRPO step is close to
# 0 (advantages are zero-mean in each group), so its tolerance is absolute; the update's is relative to the
# update of one rank, ||dw_N - dw_1|| / ||dw_1||, as the weights move by about lr per step.
LOSS_ATOL = 1e-5
GRAD_NORM_RTOL = 1e-4
UPDATE_RTOL = 1e-3
# On probabilities and scores in [0, 1] (both backends float32: 1e-7 apart; a judge in bfloat16 is 1e-3 off); an
# argmax score may differ only at a near-tie.
JUDGE_ATOL = 1e-4
SHARE_ATOL = 1e-9


class RehearsalError(TrainingError):
    """A rehearsal check failed; the message names the check and what differs."""


@dataclass
class CheckResult:
    check: str
    step: int | None
    problems: list[str] = field(default_factory=list)
    measured: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def record(self) -> dict:
        return {"check": self.check, "step": self.step, "ok": self.ok, "problems": self.problems,
                "measured": self.measured}  # fmt: skip

    def raise_if_failed(self) -> None:
        if self.problems:
            more = f" (and {len(self.problems) - 1} more in rehearsal.json)" if len(self.problems) > 1 else ""
            where = f" at step {self.step}" if self.step is not None else ""
            raise RehearsalError(f"rehearsal check '{self.check}' failed{where}: {self.problems[0]}{more}")


# -------------------------------------------------------------------------------- weights on every worker


def check_weights(step: int, trainer_checksum: str, workers: Sequence[Mapping]) -> CheckResult:
    """Every worker (its `info()`: weights_checksum, version) holds the trainer's weights as version `step`."""
    result = CheckResult("weights", step, measured={"trainer": trainer_checksum, "workers": len(workers)})
    for i, info in enumerate(workers):
        held = info.get("weights_checksum")
        if held != trainer_checksum:
            result.problems.append(
                f"rollout worker {i} holds weights {str(held)[:16]}..., the trainer's are {trainer_checksum[:16]}..."
            )
        if info.get("version") != step:
            result.problems.append(f"rollout worker {i} holds weights version {info.get('version')}, not {step}")
    return result


# -------------------------------------------------------------------------------- placement


@dataclass(frozen=True)
class Expected:
    """Where the plan puts one actor: its group's placement group (None: Ray places it freely), its shares and
    its GPUs by the plan's names ("node 0 GPU 3")."""

    actor: str
    placement_group: str | None
    num_cpus: float
    num_gpus: float
    gpus: tuple[str, ...]


def check_placement(expected: Sequence[Expected], observed: Mapping[str, Mapping], device: str = "cpu") -> CheckResult:
    """Ray's placement (`observed[actor]`: node, gpu_ids, resources, placement_group, device) against the plan's.
    GPU ids are matched one to one with the plan's GPUs: Ray numbers them itself."""
    result = CheckResult("placement", None)
    to_ray: dict[str, tuple[str, str]] = {}
    to_plan: dict[tuple[str, str], str] = {}
    for e in expected:
        seen = observed.get(e.actor)
        if seen is None:
            result.problems.append(f"{e.actor}: not among the run's actors")
            continue
        result.measured[e.actor] = {"plan": list(e.gpus), "ray": [f"node {seen['node'][:8]} GPU {g}"
                                                                  for g in seen["gpu_ids"]]}  # fmt: skip
        if e.placement_group is not None and seen.get("placement_group") != e.placement_group:
            result.problems.append(f"{e.actor}: in placement group {seen.get('placement_group')}, the plan's "
                                   f"{e.placement_group}")  # fmt: skip
        shares = seen.get("resources", {})
        for res, want in (("CPU", e.num_cpus), ("GPU", e.num_gpus)):
            if abs(shares.get(res, 0.0) - want) > SHARE_ATOL:
                result.problems.append(f"{e.actor}: holds {shares.get(res, 0.0):g} {res}, the plan gives it {want:g}")
        if seen.get("device") != device:
            result.problems.append(f"{e.actor}: computes on {seen.get('device')}, the run decided {device}")
        ray_gpus = [(seen["node"], str(g)) for g in seen["gpu_ids"]]
        if len(ray_gpus) != len(e.gpus):
            result.problems.append(f"{e.actor}: Ray gave it GPUs {seen['gpu_ids']}, the plan {list(e.gpus)}")
            continue
        for plan_gpu, ray_gpu in zip(sorted(e.gpus), sorted(ray_gpus)):
            if to_ray.setdefault(plan_gpu, ray_gpu) != ray_gpu or to_plan.setdefault(ray_gpu, plan_gpu) != plan_gpu:
                result.problems.append(
                    f"{e.actor}: on GPU {ray_gpu[1]} of node {ray_gpu[0][:8]}, which does not match the plan's "
                    f"{plan_gpu} (the plan's GPU {plan_gpu} is Ray's {to_ray[plan_gpu][1]}, Ray's GPU "
                    f"{ray_gpu[1]} is the plan's {to_plan[ray_gpu]})"
                )
    return result


# -------------------------------------------------------------------------------- the ranks' update


def update_distance(after_n: Mapping, after_1: Mapping, before: Mapping) -> dict[str, float]:
    """How far apart two updates of the same weights are: ||dw_N - dw_1|| / ||dw_1|| over every tensor, the
    largest elementwise difference and the largest step of one rank's update (numpy arrays or tensors)."""
    diff = step = 0.0
    max_diff = max_step = 0.0
    for name, w0 in before.items():
        w0 = np.asarray(w0, dtype=np.float64)
        dn = np.asarray(after_n[name], dtype=np.float64) - w0
        d1 = np.asarray(after_1[name], dtype=np.float64) - w0
        diff += float(np.sum((dn - d1) ** 2))
        step += float(np.sum(d1**2))
        max_diff = max(max_diff, float(np.max(np.abs(dn - d1), initial=0.0)))
        max_step = max(max_step, float(np.max(np.abs(d1), initial=0.0)))
    rel = math.sqrt(diff) / math.sqrt(step) if step > 0 else (0.0 if diff == 0 else math.inf)
    return {"update_rel_l2": rel, "weights_max_abs_diff": max_diff, "update_max_abs": max_step}


def check_update(
    step: int,
    ranks: int,
    loss: tuple[float, float],
    grad_norm: tuple[float, float],
    after_n: Mapping,
    after_1: Mapping,
    before: Mapping,
) -> CheckResult:
    """N ranks' update against one rank's of the same batch: (N ranks', one rank's) loss and gradient norm, and
    the weights after each update (`before`: the weights both started from), under the module's tolerances."""
    result = CheckResult("update", step, measured={"ranks": ranks, "loss": list(loss), "grad_norm": list(grad_norm)})
    missing = sorted(set(before) ^ set(after_n) | set(before) ^ set(after_1))
    if missing:
        result.problems.append(f"the updates hold different tensors, e.g. {missing[:3]}")
        return result
    if not abs(loss[0] - loss[1]) <= LOSS_ATOL:
        result.problems.append(f"loss {loss[0]:.8g} over {ranks} ranks, {loss[1]:.8g} on one rank "
                               f"(tolerance {LOSS_ATOL:g})")  # fmt: skip
    if not abs(grad_norm[0] - grad_norm[1]) <= GRAD_NORM_RTOL * max(abs(grad_norm[1]), 1e-12):
        result.problems.append(f"gradient norm {grad_norm[0]:.8g} over {ranks} ranks, {grad_norm[1]:.8g} on one rank "
                               f"(relative tolerance {GRAD_NORM_RTOL:g})")  # fmt: skip
    distance = update_distance(after_n, after_1, before)
    result.measured.update(distance)
    if not distance["update_rel_l2"] <= UPDATE_RTOL:
        result.problems.append(
            f"the updated weights differ: ||dw_{ranks} - dw_1|| / ||dw_1|| = {distance['update_rel_l2']:.3g} "
            f"(tolerance {UPDATE_RTOL:g}; largest difference {distance['weights_max_abs_diff']:.3g})"
        )
    return result


# -------------------------------------------------------------------------------- the judge's backends


@dataclass(frozen=True)
class Scored:
    """One judged score of the run (`value`, from its judge) and the transformers backend's label distribution
    `p` over the same prompt's labels (their `values`)."""

    item: int
    score: str
    value: float
    p: tuple[float, ...]
    values: tuple[float, ...]


def check_judge(step: int, scored: Sequence[Scored], score_mode: str) -> CheckResult:
    """Consistency probabilities and expected scores within JUDGE_ATOL; an argmax score must be the transformers
    backend's most likely label, or within JUDGE_ATOL of it (a near-tie that either backend may break)."""
    measured = {"scores": len(scored), "max_abs_diff": 0.0, "max_argmax_gap": 0.0, "near_ties": 0}
    result = CheckResult("judge", step, measured=measured)
    for s in scored:
        p = np.asarray(s.p, dtype=np.float64)
        if s.score == "consistency" or score_mode == "expected":
            theirs = float(np.dot(p, s.values))
            gap = abs(s.value - theirs)
            result.measured["max_abs_diff"] = max(result.measured["max_abs_diff"], gap)
            if gap > JUDGE_ATOL:
                result.problems.append(f"item {s.item} {s.score}: the run's judge {s.value:.6f}, transformers "
                                       f"{theirs:.6f} (tolerance {JUDGE_ATOL:g})")  # fmt: skip
            continue
        picked = [k for k, v in enumerate(s.values) if abs(v - s.value) < 1e-9]
        best = float(p.max())
        if picked:  # how far the run's label is from transformers' most likely one (0: the same label)
            measured["max_argmax_gap"] = max(measured["max_argmax_gap"], best - float(p[picked[0]]))
        if not picked or p[picked[0]] < best - JUDGE_ATOL:
            top = s.values[int(p.argmax())]
            result.problems.append(f"item {s.item} {s.score}: the run's judge scored {s.value:.4f}, transformers' "
                                   f"most likely is {top:.4f} (p {best:.4f})")  # fmt: skip
        elif s.values[int(p.argmax())] != s.value:
            result.measured["near_ties"] += 1
    return result
