"""Qwen3-Omni under the real training stack: a two-rank ZeRO-3 DeepSpeed group with LoRA on attention and on the
experts. The reference equals the initial policy, one step moves the adapted weights only (never the audio encoder,
the router or the norms), and the export gives the trainer's log-probs. (The whole `audio-thinker train` run of
the family: test_qwen3_omni_train.py.)"""

from __future__ import annotations

import numpy as np
import torch
from safetensors.torch import load_file

from actors.reference import Reference
from actors.trainer_group import PolicyTrainerGroup
from audio_thinker.core.chat import render_chat
from audio_thinker.core.encoding import PromptEncoder
from audio_thinker.core.models import load_feature_extractor, load_policy, load_tokenizer
from audio_thinker.core.trainer_config import LoraConfig, ReferenceConfig, TrainerConfig
from audio_thinker.core.weights import state_checksum
from rollout.weight_sync import receive_published
from trainer.logprobs import CompletionLogprobs, PolicyBatch, compute_logprobs

FAMILY = "qwen3_omni"


def make_batch(path, seed: int) -> PolicyBatch:
    enc = PromptEncoder(load_tokenizer(path), load_feature_extractor(path))
    rng = np.random.default_rng(seed)
    clips = [(rng.standard_normal(12000 + 8000 * q) * 0.1).astype(np.float32) for q in range(2)]
    prompts = [enc.encode(render_chat(FAMILY, f"Question {q}: what do you hear?"), c) for q, c in enumerate(clips)]
    completions = [rng.integers(20, 600, size=int(rng.integers(2, 7))).tolist() for _ in range(4)]
    return PolicyBatch(prompts, [0, 0, 1, 1], completions, advantages=[1.0, -0.5, 0.75, -1.0])


def test_zero3_lora_on_the_experts_trains_and_exports(ray_session, tiny_models, tmp_path):
    path = tiny_models[FAMILY]
    cfg = TrainerConfig(num_ranks=2, num_cpus_per_rank=0.2, zero_stage=3, lr=1e-2, micro_batch_size=2, beta=0.04,
                        freeze_audio_encoder=True, lora=LoraConfig(rank=4, alpha=8), call_timeout_s=600)  # fmt: skip
    group = PolicyTrainerGroup(path, FAMILY, cfg, 4, "float32").ready()
    reference = Reference(path, FAMILY, ReferenceConfig(num_cpus=0.2, call_timeout_s=600), 2, "float32").ready()
    try:
        source = state_checksum(load_file(str(path / "model.safetensors")))
        assert group.weights_checksum() == source == reference.weights_checksum()  # merged, per-expert layout
        batch = make_batch(path, 1)
        batch.ref_logprobs = reference.compute_logprobs(batch, 1.0)
        initial = dict(receive_published(group.publish_weights(0)))
        metrics = group.train_step(batch, 1.0)
        after = dict(receive_published(group.publish_weights(1)))
        out = group.export(tmp_path / "policy")
        remote = group.compute_logprobs(batch, 1.0)
    finally:
        group.shutdown()
        reference.close()
    assert metrics["actor/sequences"] == 4 and np.isfinite(metrics["actor/loss"])
    moved = {k for k in after if not torch.equal(after[k], initial[k])}
    assert any(".experts." in k for k in moved) and any("self_attn.q_proj" in k for k in moved)
    assert not any(k.startswith(("audio_tower.", "visual.")) or ".mlp.gate." in k or "norm" in k for k in moved)
    assert set(load_file(str(out / "model.safetensors"))) == set(after)
    local = compute_logprobs(CompletionLogprobs(load_policy(out, FAMILY, "float32")), batch, 2, "cpu", 1.0)
    for a, b in zip(local, remote):
        np.testing.assert_allclose(a, b, atol=1e-5)
