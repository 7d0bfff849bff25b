"""`--rehearse` without a cluster: what it swaps and keeps, the declared cluster, the device decision, and each
check fed its deliberately broken case (a worker given other weights, a placement moved, a rank's partition
perturbed, a judge backend that disagrees). The whole rehearsal runs in tests/integration/test_rehearsal_e2e.py."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from actors.placement import reserved_groups
from actors.trainer_group import shard_plan
from audio_thinker.app.data.demo import synthetic_splits
from audio_thinker.app.data.synthetic import write_synthetic_cot, write_synthetic_dataset
from audio_thinker.app.errors import TrainingError
from audio_thinker.app.train.launch import connect_ray
from audio_thinker.app.train.plan import layout
from audio_thinker.app.train.rehearsal import (
    RehearsalRecord,
    declared_cluster,
    gpu_presets,
    machine_swaps,
    rehearsal_config,
    trainer_groups,
)
from audio_thinker.app.train.rehearsal_checks import (
    GRAD_NORM_RTOL,
    JUDGE_ATOL,
    Expected,
    RehearsalError,
    Scored,
    check_judge,
    check_placement,
    check_update,
    check_weights,
)
from audio_thinker.app.train.rehearsal_run import expected_placement
from audio_thinker.app.train.resume import flatten
from audio_thinker.app.train.sft_data import load_sft_data
from audio_thinker.core.devices import DEVICES_ENV, cpu_only
from audio_thinker.core.models import compute_device, use_cuda
from audio_thinker.core.placement import run_groups, totals
from audio_thinker.core.presets import load_config
from audio_thinker.core.devices import THREADS_ENV
from audio_thinker.core.threads import cpu_threads

SWAPPED = {
    "model.policy_path", "model.judge_path", "model.make_tiny_if_missing", "model.tiny_warmup_steps", "model.dtype",
    "rollout.max_new_tokens", "run.eval_limit", "data.train_manifest", "data.audio_root",
    "data.make_synthetic_if_missing", "data.eval_manifest", "data.eval_format", "data.eval_audio_root",
    "rollout.startup_timeout_s",
    "judge.startup_timeout_s",
}  # fmt: skip


# -------------------------------------------------------------------------------- what is swapped, what is kept


@pytest.mark.parametrize("preset", ["qwen2-audio-7b", "qwen2.5-omni-7b"])
def test_a_rehearsal_swaps_only_what_cannot_run_here_and_keeps_the_topology(preset):
    original = load_config(preset)
    config, swaps = rehearsal_config(preset, [])
    expected = SWAPPED  # both Omni thinkers run on vLLM here (rollout/vllm_omni.py): no engine swap
    assert {s.what for s in swaps} == expected
    before, after = flatten(original), flatten(config)
    changed = {k for k in before if before[k] != after[k]}
    assert changed == expected | {"run.rehearse"}
    assert config.run.rehearse and not original.run.rehearse
    t = config.trainer
    assert (t.num_ranks, t.zero_stage, t.micro_batch_size, t.sync_backend) == (5, 3, 4, "broadcast")
    assert (config.rollout.num_workers, config.judge.backend, config.reference.placement) == (2, "vllm", "colocate")
    assert config.model.policy_path == f"artifacts/tiny/{original.model.family}" and config.model.dtype == "float32"
    for s in swaps:
        assert after[s.what] == s.rehearsal and before[s.what] == s.preset and s.why


def test_a_tensor_parallel_worker_rehearses_unsharded_on_the_presets_gpus():
    original = load_config("qwen3-omni-30b-a3b")
    config, swaps = rehearsal_config("qwen3-omni-30b-a3b", [])
    swap = next(s for s in swaps if s.what == "rollout.tensor_parallel_size")
    assert (swap.preset, swap.rehearsal) == (2, 1) and "Ray executor" in swap.why
    assert config.rollout.num_gpus_per_worker == original.rollout.num_gpus_per_worker == 2
    assert [(g.name, g.bundles) for g in run_groups(config)] == [(g.name, g.bundles) for g in run_groups(original)]


def test_a_key_given_on_the_command_line_is_never_swapped():
    config, swaps = rehearsal_config("qwen2-audio-7b", ["rollout.max_new_tokens=64", "run.total_steps=2"])
    assert config.rollout.max_new_tokens == 64 and config.run.total_steps == 2
    assert "rollout.max_new_tokens" not in {s.what for s in swaps}


def test_an_sft_rehearsal_trains_on_the_synthetic_split_with_rationales():
    config, swaps = rehearsal_config("sft-b", [], sft=True)
    assert config.data.train_manifest == "artifacts/synthetic/train_cot.jsonl"
    assert config.trainer.num_ranks == 8 and config.trainer.zero_stage == 3
    assert not {"model.judge_path", "rollout.max_new_tokens", "run.eval_limit"} & {s.what for s in swaps}
    answer, _ = rehearsal_config("sft-a", [], sft=True)
    assert answer.data.train_manifest == "artifacts/synthetic/train.jsonl"


def test_the_declared_cluster_holds_every_bundle_and_the_one_rank_comparison():
    config, _ = rehearsal_config("qwen2-audio-7b", [])
    groups = run_groups(config)
    cluster = declared_cluster(config, groups)
    assert cluster.gpus == 8 == totals(groups)["GPU"]
    assert cluster.cpus == int(np.ceil(totals(groups)["CPU"] + config.trainer.num_cpus_per_rank)) == 37
    assert cluster.env[DEVICES_ENV] == "cpu" and cluster.env[THREADS_ENV] == "1" and cluster.env["DS_ACCELERATOR"]
    what = {s.what for s in machine_swaps(config, cluster, with_rollout=True)}
    assert what == {"GPUs", "compute device", "collectives", "CPU threads per actor", "vLLM memory"}
    sft, _ = rehearsal_config("sft-a", [], sft=True)
    assert declared_cluster(sft, trainer_groups(sft)).gpus == 8


def test_the_record_keeps_swaps_and_appends_checks(tmp_path):
    config, swaps = rehearsal_config("qwen2-audio-7b", [])
    record = RehearsalRecord(tmp_path)
    record.start("qwen2-audio-7b", swaps, declared_cluster(config, run_groups(config)))
    record.add_check({"check": "placement", "ok": True})
    record.add_check({"check": "weights", "ok": True})
    data = json.loads((tmp_path / "rehearsal.json").read_text())
    assert data["preset"] == "qwen2-audio-7b" and len(data["swaps"]) == len(swaps)
    assert [c["check"] for c in data["checks"]] == ["placement", "weights"]


def test_a_rehearsal_refuses_a_cluster_it_did_not_declare(monkeypatch):
    config, _ = rehearsal_config("qwen2-audio-7b", [])
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    for key in (DEVICES_ENV, THREADS_ENV, "DS_ACCELERATOR"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(TrainingError, match="unset RAY_ADDRESS"):
        connect_ray(None, declared_cluster(config, run_groups(config)))


# -------------------------------------------------------------------------------- the device decision


def test_the_device_decision_is_the_runs_not_torchs(monkeypatch):
    monkeypatch.setenv(DEVICES_ENV, "cpu")
    assert cpu_only() and not use_cuda() and compute_device().type == "cpu"
    monkeypatch.setenv(DEVICES_ENV, "auto")
    assert not cpu_only() and use_cuda() == torch.cuda.is_available()
    monkeypatch.setenv(DEVICES_ENV, "gpu")
    with pytest.raises(ValueError, match=DEVICES_ENV):
        cpu_only()


def test_declared_cpu_shares_run_the_threads_the_run_says(monkeypatch):
    monkeypatch.delenv(THREADS_ENV, raising=False)
    assert cpu_threads(4) == 4 and cpu_threads(0.25) == 1
    monkeypatch.setenv(THREADS_ENV, "1")
    assert cpu_threads(4) == 1
    monkeypatch.setenv(THREADS_ENV, "0")
    with pytest.raises(ValueError, match=THREADS_ENV):
        cpu_threads(4)


# -------------------------------------------------------------------------------- weights on every worker


def test_the_weights_check_catches_a_worker_given_other_weights():
    workers = [{"weights_checksum": "a" * 64, "version": 2}, {"weights_checksum": "a" * 64, "version": 2}]
    assert check_weights(2, "a" * 64, workers).ok
    workers[1]["weights_checksum"] = "b" * 64
    result = check_weights(2, "a" * 64, workers)
    assert not result.ok and result.problems[0].startswith("rollout worker 1 holds weights bbbb")
    with pytest.raises(RehearsalError, match=r"rehearsal check 'weights' failed at step 2: rollout worker 1"):
        result.raise_if_failed()
    lagging = [{"weights_checksum": "a" * 64, "version": 1}]
    assert check_weights(2, "a" * 64, lagging).problems == ["rollout worker 0 holds weights version 1, not 2"]


# -------------------------------------------------------------------------------- placement


def ray_placement(expected: list[Expected], relabel: dict[str, str] | None = None) -> dict[str, dict]:
    """What Ray reports when it places every actor as planned (its GPU ids numbered as `relabel` says)."""
    out = {}
    for e in expected:
        ids = [g.rsplit(" ", 1)[1] for g in e.gpus]
        out[e.actor] = {
            "node": "n0" * 14,
            "gpu_ids": [(relabel or {}).get(i, i) for i in ids],
            "resources": {"CPU": e.num_cpus, **({"GPU": e.num_gpus} if e.num_gpus else {})},
            "placement_group": e.placement_group,
            "device": "cpu",
        }
    return out


@pytest.fixture(scope="module")
def planned() -> list[Expected]:
    config, _ = rehearsal_config("qwen2-audio-7b", [])
    groups = run_groups(config)
    return expected_placement(config, groups, [f"pg{i}" for i in range(len(groups))])


def test_the_plan_of_the_7b_preset_is_what_the_placement_check_expects(planned):
    by_actor = {e.actor: e for e in planned}
    assert by_actor["reference model"].gpus == by_actor["trainer rank 0"].gpus == ("node 0 GPU 0",)
    assert by_actor["trainer rank 0"].num_gpus == 0.75 and by_actor["reference model"].num_gpus == 0.25
    assert [by_actor[f"rollout worker {i}"].gpus for i in (0, 1)] == [("node 0 GPU 5",), ("node 0 GPU 6",)]
    assert by_actor["judge server"].gpus == ("node 0 GPU 7",) and by_actor["judge server"].placement_group == "pg2"
    assert check_placement(planned, ray_placement(planned)).ok
    swapped = {"5": "6", "6": "5", "0": "3", "3": "0"}  # Ray numbers GPUs itself: a consistent renaming is fine
    assert check_placement(planned, ray_placement(planned, swapped)).ok


def test_a_two_node_preset_is_reserved_and_checked_as_on_its_nodes():
    config, _ = rehearsal_config("qwen3-omni-30b-a3b-full", [])
    declared = [{"CPU": 64.0, "GPU": 16.0}]  # the rehearsal's one local node declares both nodes' GPUs
    groups = reserved_groups(config, declared)
    assert groups[0].strategy == "PACK"  # 12 ranks cannot be strictly packed on an 8-GPU node
    assert reserved_groups(config.model_copy(update={"run": config.run.model_copy(update={"rehearse": False})}),
                           declared)[0].strategy == "STRICT_PACK"  # a real 16-GPU node would hold them  # fmt: skip
    expected = expected_placement(config, groups, [f"pg{i}" for i in range(len(groups))])
    by_actor = {e.actor: e for e in expected}
    assert by_actor["trainer rank 7"].gpus == ("node 0 GPU 7",) and by_actor["trainer rank 8"].gpus == ("node 1 GPU 0",)
    assert by_actor["rollout worker 0"].gpus == ("node 1 GPU 4", "node 1 GPU 5")
    assert by_actor["reference model"].gpus == ("node 1 GPU 7",)
    observed = ray_placement(expected)
    for e in expected:  # Ray's one node numbers the 16 GPUs 0-15
        observed[e.actor]["gpu_ids"] = [str(8 * int(g.split()[1]) + int(g.split()[3])) for g in e.gpus]
    assert check_placement(expected, observed).ok
    observed["trainer rank 8"]["gpu_ids"] = ["0"]  # on node 0's first GPU, which rank 0 holds
    assert not check_placement(expected, observed).ok


@pytest.mark.parametrize(
    "move, needle",
    [
        (lambda o: o["rollout worker 1"].update(gpu_ids=["5"]), "rollout worker 1: on GPU 5"),
        (lambda o: o["reference model"].update(gpu_ids=["1"]), "on GPU 1"),
        (lambda o: o["judge server"].update(placement_group="pg0"), "judge server: in placement group pg0"),
        (lambda o: o["trainer rank 0"]["resources"].update(GPU=1.0), "trainer rank 0: holds 1 GPU, the plan gives"),
        (lambda o: o["trainer rank 3"].update(gpu_ids=[]), "trainer rank 3: Ray gave it GPUs []"),
        (lambda o: o["rollout worker 0"].update(device="cuda"), "rollout worker 0: computes on cuda"),
        (lambda o: o.pop("reference model"), "reference model: not among the run's actors"),
    ],
)
def test_the_placement_check_catches_a_placement_moved(planned, move, needle):
    observed = ray_placement(planned)
    move(observed)
    result = check_placement(planned, observed)
    assert not result.ok and any(needle in p for p in result.problems), result.problems


def test_sft_ranks_are_expected_one_per_gpu_outside_placement_groups():
    config, _ = rehearsal_config("sft-a", [], sft=True)
    groups = trainer_groups(config)
    expected = expected_placement(config, groups, [None])
    assert [e.gpus for e in expected] == [(f"node 0 GPU {i}",) for i in range(8)]
    assert all(e.placement_group is None for e in expected)
    _, where, unplaced = layout(config, groups)
    assert not unplaced and len(where) == 8


# -------------------------------------------------------------------------------- the ranks' update


def adamw_updates(shards: list[list[int]], micro: int, seed: int = 0):
    """A small model's AdamW update from the summed gradients of every shard's micro-batches, as the DeepSpeed
    ranks sum theirs (trainer/engine.py): (loss, grad norm, weights before, weights after)."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4))
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    x, labels = torch.randn(16, 8), torch.randint(0, 4, (16,))
    advantages = torch.randn(16)
    advantages -= advantages.mean()  # zero-mean, as GRPO's are in a group: the loss is close to 0
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6, weight_decay=0.0)
    loss = 0.0
    for shard in shards:
        for k in range(0, len(shard), micro):
            idx = shard[k : k + micro]
            logp = torch.log_softmax(model(x[idx]), -1)[torch.arange(len(idx)), labels[idx]]
            part = -(advantages[idx] * logp).sum() / 16  # the step's normaliser: every sequence of the step
            part.backward()
            loss += float(part.detach())
    norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0))
    optimizer.step()
    return loss, norm, before, {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_the_update_check_passes_five_shards_and_catches_a_rank_partition_perturbed():
    shards, _ = shard_plan(16, 5, 4)
    loss_n, norm_n, before, after_n = adamw_updates(shards, 4)
    loss_1, norm_1, before_1, after_1 = adamw_updates([list(range(16))], 4)
    assert all(torch.equal(before[k], before_1[k]) for k in before)
    result = check_update(1, 5, (loss_n, loss_1), (norm_n, norm_1), after_n, after_1, before)
    assert result.ok, result.problems
    assert result.measured["update_rel_l2"] < 1e-3 and result.measured["update_max_abs"] > 0

    perturbed = [list(s) for s in shards]
    perturbed[2] = perturbed[1]  # rank 2 trains rank 1's sequences: rank 2's never reach the gradient
    loss_p, norm_p, _, after_p = adamw_updates(perturbed, 4)
    broken = check_update(1, 5, (loss_p, loss_1), (norm_p, norm_1), after_p, after_1, before)
    assert not broken.ok
    assert any("gradient norm" in p for p in broken.problems) or any("weights differ" in p for p in broken.problems)
    assert abs(norm_p - norm_1) > GRAD_NORM_RTOL * norm_1
    with pytest.raises(RehearsalError, match=r"rehearsal check 'update' failed at step 1"):
        broken.raise_if_failed()


def test_the_update_check_names_a_missing_tensor():
    before = {"a": np.zeros(2), "b": np.zeros(2)}
    result = check_update(1, 5, (0.0, 0.0), (1.0, 1.0), {"a": np.ones(2)}, {"a": np.ones(2), "b": np.ones(2)}, before)
    assert result.problems == ["the updates hold different tensors, e.g. ['b']"]


# -------------------------------------------------------------------------------- the judge's backends


DIGITS = tuple(d / 9 for d in range(10))


def test_the_judge_check_compares_probabilities_and_allows_only_near_ties():
    p = np.full(10, 0.05)
    p[6], p[7] = 0.30, 0.30 - JUDGE_ATOL / 2  # a near-tie: either backend may pick 6 or 7
    scored = [
        Scored(0, "consistency", 0.7, (0.7, 0.3), (1.0, 0.0)),
        Scored(0, "think_quality", 7 / 9, tuple(p), DIGITS),
        Scored(1, "think_quality", 6 / 9, tuple(p), DIGITS),
    ]
    result = check_judge(3, scored, "argmax")
    assert result.ok and result.measured["near_ties"] == 1
    assert result.measured["max_argmax_gap"] == pytest.approx(JUDGE_ATOL / 2)

    off = Scored(2, "consistency", 0.72, (0.7, 0.3), (1.0, 0.0))
    wrong = Scored(3, "think_quality", 2 / 9, tuple(p), DIGITS)
    result = check_judge(3, [*scored, off, wrong], "argmax")
    assert [p.split(":")[0] for p in result.problems] == ["item 2 consistency", "item 3 think_quality"]
    expected_mode = check_judge(3, [Scored(0, "think_quality", 0.5, tuple(p), DIGITS)], "expected")
    assert not expected_mode.ok and "transformers" in expected_mode.problems[0]


def test_make_rehearse_takes_every_preset_that_declares_gpus_and_no_base():
    assert gpu_presets() == ["qwen2-audio-7b", "qwen2.5-omni-7b", "qwen3-omni-30b-a3b", "qwen3-omni-30b-a3b-full",
                             "sft-a", "sft-b", "sft-c", "sft-d"]


def test_an_sft_cot_rehearsal_gets_a_synthetic_split_with_a_rationale_per_row(tmp_path):
    config, _ = rehearsal_config("sft-b", [f"data.audio_root={tmp_path}",
                                           f"data.train_manifest={tmp_path / 'train_cot.jsonl'}"], sft=True)
    assert synthetic_splits(config, with_eval=False) == [("train", config.data.synthetic_train_size, True)]
    write_synthetic_dataset(tmp_path, n=3, seed=0, split="train")
    manifest = write_synthetic_cot(tmp_path, "train", config.sft.rationale_field)
    assert manifest == tmp_path / "train_cot.jsonl"
    data, rationales = load_sft_data(config)
    assert len(rationales) == 3
    for item, rationale in zip(data, rationales):
        assert rationale.endswith(f"the answer is {item.answer}.")
