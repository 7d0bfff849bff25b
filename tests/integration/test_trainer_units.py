"""Pieces of the trainer that need no process group: lr schedule, sharding, freezing, RNG capture, checkpoint
listing, the weight-sync bucket format and its broadcast protocol (gloo, threads in this process)."""

from __future__ import annotations

import math
import random
import threading

import numpy as np
import pytest
import torch

from actors.trainer_group import mini_batch_plan, shard_plan
from audio_thinker.core.models import load_policy
from audio_thinker.core.weights import state_checksum
from rollout.weight_sync import SyncEndpoint, WeightReceiver, WeightSender, free_port, pack_buckets, unpack
from trainer.checkpoint import capture_rng, latest_checkpoint, list_checkpoints, restore_rng
from trainer.engine import freeze, lr_factor
from trainer.update_metrics import merge_update_metrics


def test_lr_factor_hand_values():
    # warm-up over 4 steps: 1/4, 2/4, 3/4, then the schedule over the remaining 10 - 4 = 6 steps
    assert [lr_factor(s, 4, 10, "constant") for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert [lr_factor(s, 4, 10, "linear") for s in (4, 7, 10, 12)] == [1.0, 0.5, 0.0, 0.0]
    assert lr_factor(7, 4, 10, "cosine") == pytest.approx(0.5)  # half-way: (1 + cos(pi/2)) / 2
    assert lr_factor(5, 4, 10, "cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi / 6)))
    assert lr_factor(0, 0, 10, "linear") == 1.0  # no warm-up: the first step uses the full lr
    with pytest.raises(ValueError, match="unknown lr_schedule"):
        lr_factor(5, 0, 10, "step")


def test_shard_plan():
    shards, micro = shard_plan(128, 5, 4)  # the paper's 16 x 8 over 5 ranks, micro-batches of 4
    assert [len(s) for s in shards] == [26, 26, 26, 25, 25] and micro == 7
    assert [i for shard in shards for i in shard] == list(range(128))
    assert shard_plan(6, 2, 2) == ([[0, 1, 2], [3, 4, 5]], 2)
    assert shard_plan(3, 2, 1) == ([[0, 1], [2]], 2)  # rank 1 runs one empty-mask micro-batch
    with pytest.raises(ValueError, match="at least one sequence per trainer rank"):
        shard_plan(2, 3, 4)


def test_mini_batch_plan():
    assert mini_batch_plan(32, 1, 1) == [list(range(32))]
    assert mini_batch_plan(32, 4, 2) == [list(range(k, k + 8)) for k in range(0, 32, 8)]  # whole groups of 8
    assert [len(m) for m in mini_batch_plan(10, 3, 1)] == [4, 3, 3]
    assert [len(m) for m in mini_batch_plan(5, 4, 2)] == [3, 2]  # a filtered step: one sequence per rank each


def test_merge_update_metrics_hand_values():
    def update(loss, ratio_min, ratio_max, step):
        return {"actor/loss": loss, "actor/kl": 0.1 * step, "actor/ratio_mean": 1.0, "actor/ratio_min": ratio_min,
                "actor/ratio_max": ratio_max, "actor/grad_norm": 2.0 * step, "actor/lr": 1e-3 / step,
                "actor/step": step, "actor/tokens": 40.0, "actor/sequences": 8.0, "actor/clip_frac": 0.0}

    one = update(0.5, 1.0, 1.0, 1)
    assert merge_update_metrics([one]) == one  # one update: its metrics unchanged, no actor/updates
    merged = merge_update_metrics([update(0.5, 0.9, 1.1, 1), update(0.1, 0.95, 1.3, 2)] * 2, epochs=2)
    assert merged["actor/loss"] == pytest.approx(0.3) and merged["actor/kl"] == pytest.approx(0.15)
    assert merged["actor/ratio_min"] == 0.9 and merged["actor/ratio_max"] == 1.3
    assert merged["actor/grad_norm"] == pytest.approx(3.0)
    assert merged["actor/lr"] == 5e-4 and merged["actor/step"] == 2  # the last update's
    assert merged["actor/tokens"] == 80.0 and merged["actor/sequences"] == 16.0  # one epoch = two mini-batches
    assert merged["actor/updates"] == 4.0


def test_freeze(tiny_models):
    audio = load_policy(tiny_models["qwen2_audio"], "qwen2_audio", "float32")
    assert freeze(audio, False) == ["model.audio_tower.embed_positions.weight"]
    frozen = freeze(audio, True)
    assert frozen == [n for n, _ in audio.named_parameters() if "audio_tower." in n]
    assert not any(p.requires_grad for n, p in audio.named_parameters() if "audio_tower." in n)
    assert all(p.requires_grad for n, p in audio.named_parameters() if "audio_tower." not in n)
    omni = load_policy(tiny_models["qwen2_5_omni"], "qwen2_5_omni", "float32")
    frozen = freeze(omni, False)
    assert frozen and all(n.startswith("visual.") for n in frozen)
    assert len(frozen) == sum(1 for n, _ in omni.named_parameters() if n.startswith("visual."))


def test_rng_capture_restore_roundtrip():
    import json

    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    state = json.loads(json.dumps(capture_rng()))  # what the checkpoint file holds
    first = (random.random(), np.random.rand(), torch.rand(3).tolist(), np.random.randn())
    restore_rng(state)
    assert (random.random(), np.random.rand(), torch.rand(3).tolist(), np.random.randn()) == first


def test_checkpoint_listing_ignores_incomplete(tmp_path):
    for name in ("step-00000002", "step-00000010", "step-00000003", ".tmp-step-00000011", "step-00000012"):
        (tmp_path / name).mkdir()
    for name in ("step-00000002", "step-00000010", "step-00000003"):
        (tmp_path / name / "trainer_state.json").write_text("{}")
    # step 12 has no trainer_state.json (never renamed in practice, but never trusted either)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000002", "step-00000003", "step-00000010"]
    assert latest_checkpoint(tmp_path).name == "step-00000010"
    assert latest_checkpoint(tmp_path / "missing") is None


def weights() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {
        "a.weight": torch.randn(3, 5, generator=gen),
        "b.bias": torch.arange(7, dtype=torch.int64),
        "c.weight": torch.randn(100, 100, generator=gen).to(torch.bfloat16),
        "d.weight": torch.randn(2, 3, generator=gen).t(),  # non-contiguous
        "e.empty": torch.zeros(0, 4),
    }


def test_pack_unpack_roundtrip_and_bucket_sizes():
    state = weights()
    buckets = list(pack_buckets(state.items(), bucket_bytes=1024))
    # a: 60 B -> 64, b: 56 -> 64, c: 20000 B (own bucket), d: 24 -> 64, e: 0
    assert [[e["name"] for e in h] for h, _ in buckets] == [
        ["a.weight", "b.bias"],
        ["c.weight"],
        ["d.weight", "e.empty"],
    ]
    assert [flat.numel() for _, flat in buckets] == [128, 20032, 64]
    assert all(e["offset"] % 64 == 0 for h, _ in buckets for e in h)
    got = {name: t for h, flat in buckets for name, t in unpack(h, flat)}
    assert got.keys() == state.keys()
    for name, tensor in state.items():
        assert got[name].dtype == tensor.dtype and torch.equal(got[name], tensor), name
    assert state_checksum(got) == state_checksum(state)


def test_unpack_rejects_a_header_past_the_buffer():
    header, flat = next(pack_buckets([("x", torch.ones(4))], 1024))
    with pytest.raises(ValueError, match="x runs past the end"):
        list(unpack(header, flat[:8]))


def test_broadcast_protocol_between_threads():
    """Sender and two receivers on gloo in one process: every receiver gets the same bytes, version and count."""
    state = weights()
    endpoint = SyncEndpoint("127.0.0.1", free_port(), 3, "gloo")
    results: dict[int, tuple] = {}

    def receive(rank: int) -> None:
        receiver = WeightReceiver(endpoint, rank, timeout_s=60)
        for _ in range(2):  # two syncs over the same group
            got = {name: t.clone() for name, t in receiver.receive()}
            results.setdefault(rank, []).append((state_checksum(got), receiver.version, receiver.num_bytes))
        receiver.close()

    threads = [threading.Thread(target=receive, args=(r,)) for r in (1, 2)]
    for t in threads:
        t.start()
    sender = WeightSender(endpoint, timeout_s=60)
    reports = [sender.send(state.items(), bucket_bytes=1024, version=v) for v in (7, 8)]
    for t in threads:
        t.join(timeout=60)
    sender.close()
    expected = state_checksum(state)
    assert reports[0]["tensors"] == 5 and reports[0]["buckets"] == 3 and reports[0]["bytes"] == 128 + 20032 + 64
    for rank in (1, 2):
        assert results[rank] == [(expected, 7, reports[0]["bytes"]), (expected, 8, reports[1]["bytes"])]
    with pytest.raises(ValueError, match="receiver rank 3 is outside 1..2"):
        WeightReceiver(endpoint, 3)
