"""The run's placement groups as data (core/placement.py) and the fast can-it-ever-fit check (actors/placement.py)."""

from __future__ import annotations

import pytest

from actors.placement import PlacementError, check_fits
from audio_thinker.core.placement import run_groups, totals
from audio_thinker.core.presets import load_config

H20_NODE = {"CPU": 96.0, "GPU": 8.0}


def test_paper_presets_reserve_exactly_eight_gpus_with_the_reference_on_trainer_rank_0():
    for preset in ("qwen2-audio-7b", "qwen2.5-omni-7b"):
        groups = run_groups(load_config(preset))
        assert [g.name for g in groups] == ["trainer ranks", "rollout workers", "judge"]
        trainer = groups[0]
        assert trainer.strategy == "STRICT_PACK" and len(trainer.bundles) == 5
        assert all(b["GPU"] == 1 for b in trainer.bundles)
        (ref,) = trainer.role("reference")
        rank0 = trainer.role("trainer")[0]
        assert ref.bundle == rank0.bundle == 0
        assert ref.num_gpus + rank0.num_gpus == 1 and 0 < ref.num_gpus < 1
        assert totals(groups)["GPU"] == 8
        check_fits(groups, [H20_NODE])


def test_separate_reference_gets_its_own_bundle_and_a_ninth_gpu_is_named():
    config = load_config("qwen2-audio-7b", ["reference.placement=separate", "reference.num_gpus=1"])
    groups = run_groups(config)
    assert groups[-1].name == "reference model" and groups[-1].bundles == [{"CPU": 0.25, "GPU": 1.0}]
    with pytest.raises(PlacementError, match=r"needs 9 GPUs, the cluster has 8: trainer ranks 5 .*reference model 1"):
        check_fits(groups, [H20_NODE])
    check_fits(groups, [H20_NODE, H20_NODE])


def test_trainer_ranks_pack_strictly_only_when_they_fit_one_node():
    config = load_config("qwen2-audio-7b", ["trainer.num_ranks=6"])
    assert run_groups(config, node_gpus=8)[0].strategy == "STRICT_PACK"
    assert run_groups(config, node_gpus=4)[0].strategy == "PACK"
    strict = run_groups(config, node_gpus=8)
    match = r"trainer ranks must share one node and need 6 GPUs, the largest node has 4"
    with pytest.raises(PlacementError, match=match):
        check_fits(strict, [{"CPU": 64.0, "GPU": 4.0}] * 4)


def test_a_tensor_parallel_worker_is_one_bundle_that_must_fit_one_node():
    config = load_config("qwen2-audio-7b", ["rollout.tensor_parallel_size=4", "rollout.num_gpus_per_worker=4"])
    rollout = run_groups(config)[1]
    assert rollout.bundles == [{"CPU": 4.0, "GPU": 4.0}] * 2
    with pytest.raises(PlacementError, match=r"one bundle of the rollout workers needs 4 GPUs on one node"):
        check_fits([rollout], [{"CPU": 64.0, "GPU": 2.0}] * 8)


def test_tiny_cpu_run_is_cpu_bundles_and_no_judge_group_without_an_in_cluster_judge():
    groups = run_groups(load_config())
    assert totals(groups) == {"CPU": 1.5, "GPU": 0}
    assert all("GPU" not in b for g in groups for b in g.bundles)
    external = run_groups(load_config(None, ["judge.url=http://127.0.0.1:1"]))
    assert "judge" not in [g.name for g in external]
    assert "judge" not in [g.name for g in run_groups(load_config(), with_judge=False)]  # run_training(reward_fn=)
    with pytest.raises(PlacementError, match=r"needs 1.5 CPUs, the cluster has 1"):
        check_fits(groups, [{"CPU": 1.0}])


def test_colocated_reference_needs_a_share_of_rank_0s_gpu():
    with pytest.raises(Exception, match="reference.num_gpus=1.0 must be a share"):
        load_config("qwen2-audio-7b", ["reference.num_gpus=1"])
    with pytest.raises(Exception, match="needs reference.num_gpus > 0"):
        load_config("qwen2-audio-7b", ["reference.num_gpus=0"])
