"""The run's placement as data: which placement groups a config asks for, their bundles, and which actor sits in
which bundle with what share. `actors/placement.py` reserves exactly these in Ray; `audio-thinker plan` lays the
same groups out on nodes and GPUs, so the plan and the run agree. Rules (docs/placement.md):

- trainer ranks: one bundle per rank, STRICT_PACK when they fit on one node (one NCCL island), else PACK;
- rollout workers: one bundle per worker holding all of its tensor-parallel GPUs, PACK;
- the in-cluster judge: one bundle (replicas on Ray Serve, `judge.replicas`, are placed by Serve: none);
- the reference: its own bundle (`separate`) or inside trainer rank 0's bundle (`colocate`), where rank 0 gives
  it `reference.num_gpus` of its GPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from audio_thinker.core.config import Config
from audio_thinker.core.rewards import needs_judge


@dataclass(frozen=True)
class Slot:
    """One actor: the bundle it goes in (index in its group) and the resources it asks for there."""

    actor: str
    role: str  # trainer | reference | rollout | judge
    bundle: int
    num_cpus: float
    num_gpus: float


@dataclass
class GroupSpec:
    """One placement group: its bundles, strategy, the actors inside, and the config keys that size it."""

    name: str
    strategy: str
    bundles: list[dict[str, float]]
    slots: list[Slot] = field(default_factory=list)
    keys: str = ""

    def role(self, role: str) -> list[Slot]:
        return [s for s in self.slots if s.role == role]

    def total(self, resource: str) -> float:
        return sum(b.get(resource, 0.0) for b in self.bundles)


def _bundle(cpus: float, gpus: float) -> dict[str, float]:
    return {"CPU": cpus, "GPU": gpus} if gpus > 0 else {"CPU": cpus}


def run_groups(config: Config, node_gpus: float | None = None, with_judge: bool = True) -> list[GroupSpec]:
    """The placement groups of a run, in the order they are reserved. `node_gpus`: the GPUs of the largest node
    (default `run.gpus_per_node`), which decides whether the trainer ranks can be strictly packed on one node;
    `with_judge=False`: a run with its own reward function starts no judge."""
    t, r, j, ref_cfg = config.trainer, config.rollout, config.judge, config.reference
    node_gpus = config.run.gpus_per_node if node_gpus is None else node_gpus
    groups = []

    colocate = ref_cfg.placement == "colocate"
    bundles = [_bundle(t.num_cpus_per_rank, t.num_gpus_per_rank) for _ in range(t.num_ranks)]
    trainer_gpus = t.num_ranks * t.num_gpus_per_rank
    strategy = "STRICT_PACK" if 0 < trainer_gpus <= node_gpus else "PACK"
    trainer = GroupSpec("trainer ranks", strategy, bundles, keys="trainer.num_ranks, trainer.num_gpus_per_rank")
    for rank in range(t.num_ranks):
        gpus = t.num_gpus_per_rank - (ref_cfg.num_gpus if colocate and rank == 0 else 0.0)
        trainer.slots.append(Slot(f"trainer rank {rank}", "trainer", rank, t.num_cpus_per_rank, gpus))
    if colocate:
        bundles[0]["CPU"] += ref_cfg.num_cpus
        trainer.slots.append(Slot("reference model", "reference", 0, ref_cfg.num_cpus, ref_cfg.num_gpus))
        trainer.keys += ", reference.num_gpus (colocated)"
    groups.append(trainer)

    cpus, gpus = r.num_cpus_per_worker, r.num_gpus_per_worker
    rollout = GroupSpec(
        "rollout workers",
        "PACK",
        [_bundle(cpus, gpus) for _ in range(r.num_workers)],
        [Slot(f"rollout worker {i}", "rollout", i, cpus, gpus) for i in range(r.num_workers)],
        keys="rollout.num_workers, rollout.num_gpus_per_worker",
    )
    groups.append(rollout)

    if with_judge and needs_judge(config.reward.variant) and not j.url and j.replicas is None:
        judge_slot = Slot("judge server", "judge", 0, j.num_cpus, j.num_gpus)
        judge = GroupSpec("judge", "PACK", [_bundle(j.num_cpus, j.num_gpus)], [judge_slot], keys="judge.num_gpus")
        groups.append(judge)
    if not colocate:
        ref = Slot("reference model", "reference", 0, ref_cfg.num_cpus, ref_cfg.num_gpus)
        groups.append(
            GroupSpec(
                "reference model",
                "PACK",
                [_bundle(ref_cfg.num_cpus, ref_cfg.num_gpus)],
                [ref],
                keys="reference.num_gpus",
            )
        )
    return groups


def sft_groups(config: Config) -> list[GroupSpec]:
    """The actors of `audio-thinker sft`: the trainer ranks only (no rollout, judge or reference), each a plain
    actor of `trainer.num_gpus_per_rank` (app/train/sft.py reserves no placement group), laid out as PACK."""
    t = config.trainer
    cpus, gpus = t.num_cpus_per_rank, t.num_gpus_per_rank
    bundles = [_bundle(cpus, gpus) for _ in range(t.num_ranks)]
    slots = [Slot(f"trainer rank {r}", "trainer", r, cpus, gpus) for r in range(t.num_ranks)]
    return [GroupSpec("trainer ranks", "PACK", bundles, slots, keys="trainer.num_ranks, trainer.num_gpus_per_rank")]


def totals(groups: list[GroupSpec]) -> dict[str, float]:
    """CPUs and GPUs that all the groups reserve together."""
    return {res: sum(g.total(res) for g in groups) for res in ("CPU", "GPU")}
