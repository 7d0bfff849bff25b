"""The DeepSpeed trainer as Ray actor groups on CPU with the tiny Qwen2-Audio: data-parallel equivalence (ZeRO-2
and ZeRO-3), reference model, checkpoint/resume, export, and both weight-sync paths."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
import ray
import torch
from safetensors.torch import load_file

from actors.group import ActorGroup
from actors.placement import PlacementError, RunPlacement
from actors.reference import Reference
from actors.trainer_group import PolicyTrainerGroup
from audio_thinker.core.trainer_config import ReferenceConfig, TrainerConfig
from audio_thinker.core.encoding import PromptEncoder
from audio_thinker.core.chat import render_chat
from audio_thinker.core.models import load_feature_extractor, load_policy, load_tokenizer
from audio_thinker.core.presets import load_config
from audio_thinker.core.weights import state_checksum
from rollout.weight_sync import WeightReceiver, receive_published
from trainer.checkpoint import latest_checkpoint, list_checkpoints
from trainer.logprobs import CompletionLogprobs, PolicyBatch, compute_logprobs

FAMILY = "qwen2_audio"
TOTAL_STEPS = 4


def trainer_config(**overrides) -> TrainerConfig:
    # A large lr and a warm-up + cosine schedule make every step move the weights and the lr visibly.
    base = {
        "num_ranks": 1,
        "num_cpus_per_rank": 0.2,
        "zero_stage": 2,
        "lr": 1e-3,
        "warmup_steps": 2,
        "lr_schedule": "cosine",
        "micro_batch_size": 2,
        "beta": 0.04,
        "call_timeout_s": 300,
        "sync_bucket_mb": 1,
    }
    return TrainerConfig(**(base | overrides))


def make_batch(policy_path, seed: int, questions: int = 2, samples: int = 3) -> PolicyBatch:
    """`questions` clips x `samples` completions of ragged lengths, with mixed-sign advantages."""
    enc = PromptEncoder(load_tokenizer(policy_path), load_feature_extractor(policy_path))
    rng = np.random.default_rng(seed)
    prompts = [
        enc.encode(
            render_chat(FAMILY, f"Question {q}: what do you hear?" + " more" * q),
            (rng.standard_normal(8000 + 4000 * q) * 0.1).astype(np.float32),
        )
        for q in range(questions)
    ]
    n = questions * samples
    completions = [rng.integers(20, 600, size=int(rng.integers(2, 9))).tolist() for _ in range(n)]
    advantages = rng.standard_normal(n).tolist()
    return PolicyBatch(prompts, [i // samples for i in range(n)], completions, advantages=advantages)


SMALL = ["trainer.num_ranks=2", "trainer.num_cpus_per_rank=0.05", "rollout.num_cpus_per_worker=0.05"]


def test_placement_asking_more_gpus_than_the_cluster_declares_fails_at_once_naming_them(ray_session):
    config = load_config(None, [*SMALL, "trainer.num_gpus_per_rank=1", "run.placement_timeout_s=600"])
    start = time.monotonic()
    with pytest.raises(PlacementError, match=r"needs 2 GPUs, the cluster has 0: trainer ranks 2 \(trainer.num_ranks"):
        RunPlacement(config)
    assert time.monotonic() - start < 5  # checked against the cluster's totals, not waited for


def test_placement_not_granted_in_time_fails_at_the_deadline_and_releases_what_it_held(ray_session):
    free = ray.available_resources()["CPU"]
    held = ray.util.placement_group([{"CPU": free - 0.1}])
    assert held.wait(30)
    start = time.monotonic()
    try:
        with pytest.raises(PlacementError, match=r"did not grant the trainer ranks .* within 1s"):
            RunPlacement(load_config(None, [*SMALL, "trainer.num_cpus_per_rank=0.5"]), timeout_s=1)
        assert time.monotonic() - start >= 1
    finally:
        ray.util.remove_placement_group(held)
    deadline = time.monotonic() + 10
    while ray.available_resources().get("CPU", 0) < free - 1e-6:  # nothing of the failed placement kept
        assert time.monotonic() < deadline, ray.available_resources()
        time.sleep(0.2)


def test_actors_start_in_their_reserved_bundles(ray_session):
    class Probe:  # local: Ray ships it by value (test modules are not importable in the workers)
        def where(self) -> str:
            return ray.get_runtime_context().get_placement_group_id()

    placement = RunPlacement(load_config(None, [*SMALL, "reference.placement=colocate"]))
    try:
        trainer_pg = placement.pgs[0].id.hex()
        ranks = ActorGroup("probe", Probe, 2, lambda _: (), num_cpus=1, timeout_s=60, timeout_key="-",
                           placement=placement.slots("trainer"))  # fmt: skip
        ref = ActorGroup("probe", Probe, 1, lambda _: (), num_cpus=1, timeout_s=60, timeout_key="-",
                         placement=placement.slots("reference"))  # fmt: skip
        try:
            assert ranks.call("where") + ref.call("where") == [trainer_pg] * 3
        finally:
            ranks.shutdown()
            ref.shutdown()
    finally:
        placement.remove()


@pytest.fixture(scope="module")
def policy_path(tiny_models):
    return tiny_models[FAMILY]


@pytest.fixture(scope="module")
def reference(ray_session, policy_path):
    return Reference(policy_path, FAMILY, ReferenceConfig(num_cpus=0.2, call_timeout_s=300), 2, "float32").ready()


@pytest.fixture(scope="module")
def batches(reference, policy_path):
    """Two steps' batches with reference log-probs from the reference actor."""
    out = []
    for seed in (1, 2):
        batch = make_batch(policy_path, seed)
        batch.ref_logprobs = reference.compute_logprobs(batch, 1.0)
        out.append(batch)
    return out


@pytest.fixture(scope="module")
def one_rank(ray_session, policy_path):
    group = PolicyTrainerGroup(policy_path, FAMILY, trainer_config(), TOTAL_STEPS, "float32").ready()
    yield group
    group.shutdown()


@pytest.fixture(scope="module")
def two_ranks(ray_session, policy_path):
    group = PolicyTrainerGroup(policy_path, FAMILY, trainer_config(num_ranks=2), TOTAL_STEPS, "float32").ready()
    yield group
    group.shutdown()


@pytest.fixture(scope="module")
def two_ranks_zero3(ray_session, policy_path):
    cfg = trainer_config(num_ranks=2, zero_stage=3)
    group = PolicyTrainerGroup(policy_path, FAMILY, cfg, TOTAL_STEPS, "float32").ready()
    yield group
    group.shutdown()


def published(group, version=0) -> dict[str, torch.Tensor]:
    return dict(receive_published(group.publish_weights(version)))


@pytest.fixture(scope="module")
def first_step(one_rank, two_ranks, two_ranks_zero3, batches):
    """Step 1 on the same batch in the three groups, with trainer-recomputed old log-probs and a fake engine
    log-prob offset by exactly 0.01 (the mismatch metric must say 0.01)."""
    batch = batches[0]
    initial = published(one_rank)
    batch.old_logprobs = one_rank.compute_logprobs(batch, 1.0)
    batch.engine_logprobs = [lp + np.float32(0.01) for lp in batch.old_logprobs]
    metrics = {
        name: g.train_step(batch, 1.0)
        for name, g in (("one", one_rank), ("two", two_ranks), ("zero3", two_ranks_zero3))
    }
    return initial, metrics


def test_reference_equals_initial_policy(reference, one_rank, two_ranks_zero3, batches, policy_path):
    source = state_checksum(load_file(str(policy_path / "model.safetensors")))
    assert reference.weights_checksum() == source
    assert one_rank.weights_checksum() == source  # trainer weights gathered under checkpoint keys
    assert two_ranks_zero3.weights_checksum() == source  # ZeRO-3: gathered from two partitions
    old = one_rank.compute_logprobs(batches[0], 1.0)
    for a, b in zip(old, batches[0].ref_logprobs):
        np.testing.assert_allclose(a, b, atol=1e-5)
    old3 = two_ranks_zero3.compute_logprobs(batches[0], 1.0)
    for a, b in zip(old3, old):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_two_ranks_take_the_same_step_as_one(first_step, one_rank, two_ranks, two_ranks_zero3, batches):
    initial, metrics = first_step
    one, two, zero3 = published(one_rank), published(two_ranks), published(two_ranks_zero3)
    moved = max((one[k] - initial[k]).abs().max().item() for k in one)
    assert moved > 1e-4  # the step changed the weights
    fixed = "audio_tower.embed_positions.weight"  # Qwen2-Audio's sinusoidal table stays frozen
    assert torch.equal(one[fixed], initial[fixed]) and torch.equal(zero3[fixed], initial[fixed])
    # Adam's first update is m / (sqrt(v) + eps) ~ lr * sign(g): where |g| is near eps = 1e-8, the float noise of
    # summing gradients in another order shows up as a few % of that element's update. Updates are compared
    # with that relative slack, and almost every element must agree to 1e-6 absolute.
    for other in (two, zero3):
        assert other.keys() == one.keys()
        off, total = 0, 0
        for k in one:
            update, other_update = one[k] - initial[k], other[k] - initial[k]
            torch.testing.assert_close(other_update, update, rtol=0.1, atol=1e-6, msg=k)
            off += int(((other_update - update).abs() > 1e-6).sum())
            total += update.numel()
        assert off / total < 1e-3
    m1 = metrics["one"]
    for m in (metrics["two"], metrics["zero3"]):
        for key in ("actor/loss", "actor/kl", "actor/grad_norm", "actor/ratio_mean", "actor/tokens"):
            assert m[key] == pytest.approx(m1[key], rel=1e-5, abs=1e-7), key
    assert m1["actor/sequences"] == 6
    assert m1["actor/ratio_min"] == pytest.approx(1.0, abs=1e-5) and m1["actor/ratio_max"] == pytest.approx(
        1.0, abs=1e-5
    )
    assert m1["actor/logprob_mismatch_mean"] == pytest.approx(0.01, abs=1e-6)
    # engine = old + 0.01 on every token: weight e^-0.01 each, k3 = e^-0.01 + 0.01 - 1, sequence weights
    # e^(-0.01 |o_i|) for the ESS; the same over 1 rank, 2 ranks and ZeRO-3.
    w = [math.exp(-0.01 * len(c)) for c in batches[0].completion_ids]
    assert all(
        m["mismatch/is_mean"] == pytest.approx(math.exp(-0.01), abs=1e-6)
        and m["mismatch/kl"] == pytest.approx(math.exp(-0.01) + 0.01 - 1, abs=1e-7)
        and m["mismatch/is_clip_frac"] == 0.0
        and m["mismatch/ess"] == pytest.approx(sum(w) ** 2 / (len(w) * sum(x * x for x in w)), abs=1e-6)
        for m in metrics.values()
    )
    assert m1["actor/lr"] == pytest.approx(0.5e-3)  # warm-up step 1 of 2
    assert m1["actor/step"] == 1


def test_checkpoint_resume_equals_not_stopping(
    first_step, one_rank, ray_session, policy_path, batches, tmp_path_factory
):
    root = tmp_path_factory.mktemp("ckpt")
    saved = one_rank.save_checkpoint(root, extra={"data_position": 7}, keep=1)
    at_save = one_rank.status()
    assert at_save["step"] == 1 and at_save["lr"] == pytest.approx(1e-3)
    continued = one_rank.train_step(batches[1], 1.0)
    continued_weights = one_rank.weights_checksum()

    resumed = PolicyTrainerGroup(policy_path, FAMILY, trainer_config(), TOTAL_STEPS, "float32").ready()
    try:
        state = resumed.load_checkpoint(latest_checkpoint(root))
        assert state["step"] == 1 and state["extra"] == {"data_position": 7}
        assert resumed.status() == at_save  # step, lr position and RNG states
        again = resumed.train_step(batches[1], 1.0)
        assert resumed.weights_checksum() == continued_weights  # bitwise
        for key in ("actor/loss", "actor/grad_norm", "actor/lr", "actor/kl"):
            assert again[key] == continued[key], key
        assert again["actor/step"] == 2
        # keep=1: the next save replaces the previous checkpoint
        second = resumed.save_checkpoint(root, extra={"data_position": 8}, keep=1)
        assert list_checkpoints(root) == [second] and second != saved
        assert json.loads((second / "trainer_state.json").read_text())["extra"] == {"data_position": 8}
        assert not [p for p in root.iterdir() if p.name.startswith(".tmp")]
    finally:
        resumed.shutdown()


def test_export_loads_with_the_same_logprobs(first_step, two_ranks_zero3, batches, policy_path, tmp_path_factory):
    out = two_ranks_zero3.export(tmp_path_factory.mktemp("export") / "policy")
    source_keys = set(load_file(str(policy_path / "model.safetensors")))
    exported = load_file(str(out / "model.safetensors"))
    assert set(exported) == source_keys  # the hub layout vLLM reads (language_model.model.*)
    assert state_checksum(exported) == two_ranks_zero3.weights_checksum()
    for name in ("tokenizer.json", "processor_config.json", "chat_template.jinja", "generation_config.json"):
        assert (out / name).read_bytes() == (policy_path / name).read_bytes(), name

    model = load_policy(out, FAMILY, "float32")
    local = compute_logprobs(CompletionLogprobs(model), batches[0], 4, "cpu", 1.0)
    remote = two_ranks_zero3.compute_logprobs(batches[0], 1.0)
    for a, b in zip(local, remote):
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert load_tokenizer(out).convert_tokens_to_ids("<|AUDIO|>") == model.config.audio_token_id
    assert load_feature_extractor(out).feature_size == 128


@ray.remote
class Receiver:
    """A stand-in for a rollout worker: joins the broadcast group and hashes what it receives."""

    def join(self, endpoint, rank: int) -> int:
        self.receiver = WeightReceiver(endpoint, rank)
        return rank

    def receive(self) -> dict:
        weights = dict(self.receiver.receive())
        return {
            "checksum": state_checksum(weights),
            "version": self.receiver.version,
            "bytes": self.receiver.num_bytes,
            "tensors": len(weights),
        }

    def close(self) -> None:
        self.receiver.close()


def test_broadcast_sync_reaches_every_worker(first_step, two_ranks, policy_path):
    workers = [Receiver.options(num_cpus=0.1).remote() for _ in range(2)]
    endpoint = two_ranks.sync_endpoint(num_receivers=2)
    assert two_ranks.open_sync(endpoint, [w.join.remote(endpoint, i + 1) for i, w in enumerate(workers)]) == [1, 2]
    expected = two_ranks.weights_checksum()
    report, results = two_ranks.broadcast_weights(version=1, receiver_refs=[w.receive.remote() for w in workers])
    num_tensors = len(load_file(str(policy_path / "model.safetensors")))
    print(
        f"broadcast: {report['bytes']} bytes, {report['tensors']} tensors, {report['buckets']} buckets, "
        f"{report['seconds'] * 1e3:.1f} ms"
    )
    assert report["tensors"] == num_tensors and report["buckets"] > 1  # 1 MiB buckets
    for result in results:
        assert result == {"checksum": expected, "version": 1, "bytes": report["bytes"], "tensors": num_tensors}
    ray.get([w.close.remote() for w in workers], timeout=60)
    two_ranks.close_sync()


def test_several_updates_per_batch_use_the_old_logprobs(two_ranks, batches, policy_path):
    """trainer.ppo_epochs=2 x mini_batches_per_step=2: four optimizer steps on one rollout batch, each on half
    of it, against the old log-probs computed before the first; refused without them."""
    batch = make_batch(policy_path, seed=2)  # batches[1]'s sequences, without its old log-probs
    batch.ref_logprobs = batches[1].ref_logprobs
    start = two_ranks.status()["step"]
    before = two_ranks.cfg
    two_ranks.cfg = trainer_config(num_ranks=2, ppo_epochs=2, mini_batches_per_step=2)
    try:
        with pytest.raises(ValueError, match="need the batch's old_logprobs"):
            two_ranks.train_step(batch, 1.0)
        batch.old_logprobs = two_ranks.compute_logprobs(batch, 1.0)
        metrics = two_ranks.train_step(batch, 1.0)
    finally:
        two_ranks.cfg = before
    assert metrics["actor/updates"] == 4 and two_ranks.status()["step"] == start + 4
    assert metrics["actor/tokens"] == sum(len(c) for c in batch.completion_ids) and metrics["actor/sequences"] == 6
    # The first update sees ratio 1; the later ones see the moved policy against the old log-probs.
    assert metrics["actor/ratio_max"] - metrics["actor/ratio_min"] > 1e-4


def test_omni_thinker_trains_and_exports(ray_session, tiny_models, tmp_path_factory):
    """Qwen2.5-Omni thinker with gradient checkpointing and a frozen audio encoder: one ZeRO-2 step moves the
    language model but neither the audio encoder nor the (unused) vision tower; the export loads with
    `load_policy` and gives the trainer's log-probs."""
    family, path = "qwen2_5_omni", tiny_models["qwen2_5_omni"]
    enc = PromptEncoder(load_tokenizer(path), load_feature_extractor(path))
    audio = (np.random.default_rng(3).standard_normal(12000) * 0.1).astype(np.float32)
    batch = PolicyBatch(
        [enc.encode(render_chat(family, "What do you hear?"), audio)],
        [0, 0],
        [[30, 31, 32], [40]],
        advantages=[1.0, -1.0],
    )
    cfg = trainer_config(beta=0.0, gradient_checkpointing=True, freeze_audio_encoder=True)
    group = PolicyTrainerGroup(path, family, cfg, TOTAL_STEPS, "float32").ready()
    try:
        initial = published(group)
        metrics = group.train_step(batch, 1.0)
        after = published(group)
        out = group.export(tmp_path_factory.mktemp("omni") / "policy")
        remote = group.compute_logprobs(batch, 1.0)
    finally:
        group.shutdown()
    assert metrics["actor/sequences"] == 2 and metrics["actor/kl"] == 0
    frozen = [k for k in after if k.startswith(("visual.", "audio_tower."))]
    assert any(k.startswith("visual.") for k in frozen) and any(k.startswith("audio_tower.") for k in frozen)
    assert all(torch.equal(after[k], initial[k]) for k in frozen)
    assert any(not torch.equal(after[k], initial[k]) for k in after if k.startswith("model."))
    local = compute_logprobs(CompletionLogprobs(load_policy(out, family, "float32")), batch, 2, "cpu", 1.0)
    for a, b in zip(local, remote):
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert set(load_file(str(out / "model.safetensors"))) == set(load_file(str(path / "model.safetensors")))
