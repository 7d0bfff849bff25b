"""LoRA in the DeepSpeed trainer group (Ray actors on CPU, tiny Qwen2-Audio, audio encoder frozen): the weights
it sends are the merged full weights under the original checkpoint's names (ZeRO-2 and ZeRO-3 alike), the
checkpoint holds the adapters only and a resume restores them, the offline export (`audio-thinker export`: no Ray)
merges them into the base as the trainer does, and the export loads in both rollout engines with the trainer's
log-probs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from actors.trainer_group import PolicyTrainerGroup
from audio_thinker.core.trainer_config import LoraConfig, TrainerConfig
from audio_thinker.core.encoding import PromptEncoder
from audio_thinker.core.chat import render_chat
from audio_thinker.core.families import checkpoint_key
from audio_thinker.core.models import load_feature_extractor, load_tokenizer
from audio_thinker.core.weights import state_checksum
from rollout.engine import GenerationRequest, SamplingConfig
from rollout.weight_sync import receive_published
from trainer.checkpoint import export_offline
from trainer.logprobs import PolicyBatch

FAMILY = "qwen2_audio"
LORA = LoraConfig(rank=4, alpha=8)


def trainer_config(**overrides) -> TrainerConfig:
    base = dict(
        num_cpus_per_rank=0.2, lr=1e-2, micro_batch_size=4, beta=0.0, freeze_audio_encoder=True, lora=LORA,
        call_timeout_s=300, sync_bucket_mb=1,
    )  # fmt: skip
    return TrainerConfig(**(base | overrides))


def make_batch(path, seed: int) -> PolicyBatch:
    enc = PromptEncoder(load_tokenizer(path), load_feature_extractor(path))
    rng = np.random.default_rng(seed)
    prompts = [
        enc.encode(render_chat(FAMILY, f"Question {q}: what is it?"), (rng.standard_normal(12000) * 0.1).astype("f4"))
        for q in range(2)
    ]
    completions = [rng.integers(20, 600, size=int(rng.integers(2, 7))).tolist() for _ in range(6)]
    return PolicyBatch(prompts, [0, 0, 0, 1, 1, 1], completions, advantages=rng.standard_normal(6).tolist())


def published(group) -> dict[str, torch.Tensor]:
    return dict(receive_published(group.publish_weights(0)))


@pytest.fixture(scope="module")
def groups(ray_session, tiny_models):
    """A ZeRO-2 and a ZeRO-3 LoRA group after the same two steps, and the weights the ZeRO-2 one sent after each."""
    path = tiny_models[FAMILY]
    zero2 = PolicyTrainerGroup(path, FAMILY, trainer_config(zero_stage=2), 4, "float32").ready()
    zero3 = PolicyTrainerGroup(path, FAMILY, trainer_config(zero_stage=3), 4, "float32").ready()
    sent = []
    for seed in (1, 2):  # B starts at zero: after two steps both A and B have moved
        batch = make_batch(path, seed)
        zero2.train_step(batch, 1.0)
        zero3.train_step(batch, 1.0)
        sent.append(published(zero2))
    yield path, zero2, zero3, sent
    zero2.shutdown()
    zero3.shutdown()


def test_sent_weights_are_merged_full_weights_under_the_original_names(groups):
    path, zero2, zero3, sent = groups
    source = load_file(str(path / "model.safetensors"))
    weights = sent[-1]
    assert set(weights) == set(source)
    targeted = {k for k in source if k.startswith("language_model.model.layers.") and k.endswith("_proj.weight")}
    assert len(targeted) == 14
    for key, tensor in weights.items():
        if key in targeted:
            assert not torch.equal(tensor, source[key]), key
        else:  # embeddings, norms, lm_head, projector, audio encoder: the base, bit for bit
            assert torch.equal(tensor, source[key]), key
    assert zero2.weights_checksum() == state_checksum(weights)
    for key, tensor in published(zero3).items():  # ZeRO-3 gathers and merges the same weights
        torch.testing.assert_close(tensor, weights[key], rtol=0, atol=1e-6)


def test_checkpoint_holds_the_adapters_and_resume_restores_them(groups, tmp_path):
    path, zero2, zero3, sent = groups
    source = load_file(str(path / "model.safetensors"))
    for group in (zero2, zero3):
        folder = group.save_checkpoint(tmp_path / str(id(group)))
        (states,) = (folder / "deepspeed").glob("*model_states.pt")
        module = torch.load(states, weights_only=False)["module"]
        assert len(module) == 2 * 14 and all(".lora_A." in k or ".lora_B." in k for k in module), sorted(module)
        if group is zero2:  # the merge by hand from the saved adapters: W + (alpha / r) B A
            layer = "policy.model.language_model.layers.1.mlp.down_proj"
            a, b = module[f"{layer}.lora_A.default.weight"], module[f"{layer}.lora_B.default.weight"]
            key = checkpoint_key(FAMILY, "model.language_model.layers.1.mlp.down_proj.weight")
            by_hand = source[key] + (LORA.alpha / LORA.rank) * (b @ a)
            torch.testing.assert_close(sent[-1][key], by_hand, rtol=0, atol=1e-6)
        saved = group.weights_checksum()
        group.train_step(make_batch(path, 3), 1.0)
        assert group.weights_checksum() != saved
        state = group.load_checkpoint(folder)
        assert group.weights_checksum() == saved and group.status()["step"] == state["step"] == 2


def test_offline_export_of_a_lora_checkpoint_is_the_trainers_export(groups, tmp_path):
    path, zero2, zero3, _ = groups
    for name, group in (("zero2", zero2), ("zero3", zero3)):
        folder = group.save_checkpoint(tmp_path / name / "checkpoints")
        trainer = load_file(str(group.export(tmp_path / name / "trainer") / "model.safetensors"))
        offline = export_offline(folder, tmp_path / name / "offline", path, FAMILY, "float32", LORA)
        weights = load_file(str(offline / "model.safetensors"))
        assert set(weights) == set(trainer)
        for key, tensor in trainer.items():
            torch.testing.assert_close(weights[key], tensor, rtol=0, atol=1e-6, msg=f"{name} {key}")
        assert (offline / "config.json").read_text() == (tmp_path / name / "trainer" / "config.json").read_text()


def test_export_loads_in_both_engines_with_the_trainers_logprobs(groups, tmp_path):
    from rollout.hf_engine import TransformersEngine
    from rollout.vllm_engine import VLLMEngine

    path, zero2, _, _ = groups
    folder = zero2.export(tmp_path / "export")
    assert state_checksum(load_file(str(folder / "model.safetensors"))) == zero2.weights_checksum()
    encoder = PromptEncoder(load_tokenizer(path), load_feature_extractor(path))
    prompt = render_chat(FAMILY, "Question 0: what do you hear?")
    audio = np.random.default_rng(0).normal(0, 0.1, 16000).astype(np.float32)
    engines = (TransformersEngine(folder, FAMILY, "float32"), VLLMEngine(folder, FAMILY, "float32", max_model_len=1024))
    for engine in engines:
        try:
            request = GenerationRequest(prompt, audio, seed=5)
            (group,) = engine.generate([request], SamplingConfig(n=2, max_new_tokens=6))
        finally:
            engine.close()
        batch = PolicyBatch([encoder.encode(prompt, audio)], [0, 0], [s.token_ids for s in group])
        for s, lp in zip(group, zero2.compute_logprobs(batch, 1.0)):
            np.testing.assert_allclose(np.asarray(s.logprobs), lp, atol=1e-4)
