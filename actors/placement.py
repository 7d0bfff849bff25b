"""Reserving a run's placement groups in Ray, up front and all or nothing, with a deadline.

The groups come from `audio_thinker.core.placement.run_groups` (the same ones `audio-thinker plan` lays out).
Before anything is reserved, the totals and every bundle are checked against what the cluster declares, so a
config that can never be placed fails at once, naming what is missing ("needs 9 GPUs, the cluster has 8"); a
placement that could fit but is not granted within `run.placement_timeout_s` (resources held by someone else)
fails at the deadline, naming the group. Either way every group already reserved is removed again.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from audio_thinker.core.config import Config
from audio_thinker.core.models import compute_device
from audio_thinker.core.placement import GroupSpec, Slot, run_groups, totals


class PlacementError(RuntimeError):
    """The run's actors cannot be placed on this cluster; the message names the group and what is missing."""


@dataclass(frozen=True)
class Placed:
    """Where one actor goes: its bundle in a reserved placement group and the resources it asks for there."""

    pg: PlacementGroup
    slot: Slot

    def options(self) -> dict:
        strategy = PlacementGroupSchedulingStrategy(self.pg, placement_group_bundle_index=self.slot.bundle)
        return {"num_cpus": self.slot.num_cpus, "num_gpus": self.slot.num_gpus, "scheduling_strategy": strategy}


def _fmt(x: float) -> str:
    return f"{x:g}"


def _units(resource: str, amount: float) -> str:
    return resource + ("" if amount == 1 else "s")


def check_fits(groups: list[GroupSpec], nodes: list[dict[str, float]]) -> None:
    """Raise PlacementError when the groups can never be placed on nodes with these resources."""
    need = totals(groups)
    for res in ("GPU", "CPU"):
        have = sum(n.get(res, 0.0) for n in nodes)
        if need[res] > have + 1e-9:
            parts = ", ".join(f"{g.name} {_fmt(g.total(res))} ({g.keys})" for g in groups if g.total(res) > 0)
            raise PlacementError(
                f"placement: the run needs {_fmt(need[res])} {_units(res, need[res])}, "
                f"the cluster has {_fmt(have)}: {parts}"
            )
    largest = {res: max((n.get(res, 0.0) for n in nodes), default=0.0) for res in ("GPU", "CPU")}
    for g in groups:
        for b in g.bundles:
            for res, amount in b.items():
                if amount > largest.get(res, 0.0) + 1e-9:
                    raise PlacementError(
                        f"placement: one bundle of the {g.name} needs {_fmt(amount)} {_units(res, amount)} "
                        "on one node, "
                        f"the largest node has {_fmt(largest.get(res, 0.0))} ({g.keys})"
                    )
        if g.strategy == "STRICT_PACK":
            for res in ("GPU", "CPU"):
                if g.total(res) > largest[res] + 1e-9:
                    raise PlacementError(
                        f"placement: the {g.name} must share one node and need {_fmt(g.total(res))} "
                        f"{_units(res, g.total(res))}, the largest node has {_fmt(largest[res])} ({g.keys})"
                    )


def cluster_nodes() -> list[dict[str, float]]:
    """The resources each live node of the connected cluster declares."""
    return [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]


def reserved_groups(config: Config, nodes: list[dict], with_judge: bool = True) -> list[GroupSpec]:
    """The groups a run reserves on `nodes` (Ray's resources per node): the largest node decides whether the
    trainer ranks are strictly packed, except in a rehearsal, whose one local node declares every GPU of the
    preset: there the preset's nodes (`run.gpus_per_node`) decide, so the groups are the ones `plan` lays out."""
    node_gpus = max((n.get("GPU", 0.0) for n in nodes), default=0.0)
    if config.run.rehearse:
        node_gpus = config.run.gpus_per_node
    return run_groups(config, node_gpus=node_gpus, with_judge=with_judge)


class RunPlacement:
    """The run's reserved placement groups; `slots(role)` gives each actor of a role its `Placed`."""

    def __init__(self, config: Config, timeout_s: float | None = None, with_judge: bool = True) -> None:
        nodes = cluster_nodes()
        self.groups = reserved_groups(config, nodes, with_judge)
        check_fits(self.groups, nodes)
        timeout = config.run.placement_timeout_s if timeout_s is None else timeout_s
        self.pgs: list[PlacementGroup] = []
        try:
            for g in self.groups:
                self.pgs.append(placement_group(g.bundles, strategy=g.strategy))
            ready = [pg.ready() for pg in self.pgs]
            done, _ = ray.wait(ready, num_returns=len(ready), timeout=timeout)
            for g, ref in zip(self.groups, ready):
                if ref not in done:
                    raise PlacementError(
                        f"placement: Ray did not grant the {g.name} ({len(g.bundles)} bundles "
                        f"{g.bundles[0]}, {g.strategy}) within {timeout:.0f}s although the cluster declares "
                        f"enough: others hold the resources (available now: {ray.available_resources()}); "
                        "raise run.placement_timeout_s to wait longer"
                    )
        except BaseException:
            self.remove()
            raise

    def slots(self, role: str) -> list[Placed]:
        return [Placed(pg, s) for g, pg in zip(self.groups, self.pgs) for s in g.role(role)]

    def remove(self) -> None:
        for pg in self.pgs:
            remove_placement_group(pg)
        self.pgs = []

    def close(self) -> None:
        self.remove()


def actor_location(_actor: object = None) -> dict:
    """Where the actor running this code is, as Ray placed it: its node, GPU ids, the resources it holds, its
    placement group (hex id, None outside one) and the device it computes on (run through `__ray_call__`, so no
    actor class needs a method for it)."""
    context = ray.get_runtime_context()
    return {
        "node": context.get_node_id(),
        "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
        "resources": context.get_assigned_resources(),
        "placement_group": context.get_placement_group_id(),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "device": compute_device().type,
    }


def locate(actors: Mapping[str, object], timeout_s: float = 60.0) -> dict[str, dict]:
    """`actor_location` of every named actor handle."""
    refs = {name: handle.__ray_call__.remote(actor_location) for name, handle in actors.items()}
    return dict(zip(refs, ray.get(list(refs.values()), timeout=timeout_s)))
