"""LoRA on the tiny policies, in process (no DeepSpeed): which layers get adapters, that a step moves only the
trained tensors, the merge against W + (alpha / r) B A by hand, the merged model's log-probs against the
adapted model's, the adapters-off reference, the parameter counts and the config errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from audio_thinker.core.trainer_config import LoraConfig, TrainerConfig
from audio_thinker.core.encoding import PromptEncoder
from audio_thinker.core.chat import render_chat
from audio_thinker.core.families import audio_tower_prefix, language_model_prefix
from audio_thinker.core.models import load_feature_extractor, load_policy, load_tokenizer
from audio_thinker.core.presets import ConfigError, load_config
from trainer.engine import freeze, trainable_parameters
from trainer.logprobs import CompletionLogprobs, PolicyBatch, collate, compute_logprobs
from trainer.lora import adapters_disabled, apply_lora, check_lora, lora_targets, merged_entries, meta_policy

FAMILIES = ["qwen2_audio", "qwen2_5_omni"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_batch(path, family: str) -> PolicyBatch:
    enc = PromptEncoder(load_tokenizer(path), load_feature_extractor(path))
    rng = np.random.default_rng(0)
    prompts = [enc.encode(render_chat(family, "What is the sound?"), (rng.standard_normal(16000) * 0.1).astype("f4"))]
    return PolicyBatch(prompts, [0, 0, 0], [[25, 26, 27], [28, 29, 30, 31], [34]], advantages=[1.0, -0.5, 0.25])


def lora_policy(path, family: str, lora: LoraConfig, freeze_audio_encoder: bool):
    """The policy as the trainer builds it: architecture-fixed and requested freezing, then the adapters."""
    policy = load_policy(path, family, "float32")
    freeze(policy, freeze_audio_encoder)
    peft = apply_lora(policy, family, lora, train_audio_encoder=not freeze_audio_encoder)
    return policy, peft


@pytest.mark.parametrize("family", FAMILIES)
def test_default_targets_are_the_language_models_linear_layers(family, tiny_models):
    policy = meta_policy(tiny_models[family], family)
    targets = lora_targets(policy, family, LoraConfig())
    layers = json.loads((tiny_models[family] / "config.json").read_text())["text_config"]["num_hidden_layers"]
    assert len(targets) == 7 * layers
    assert all(t.startswith(language_model_prefix(family) + ".layers.") for t in targets)
    # the audio tower has q_proj/k_proj/v_proj and Omni's vision merger gate/up/down_proj: none is wrapped
    assert not [t for t in targets if "audio_tower" in t or t.startswith("visual.")]
    assert any(n.startswith(audio_tower_prefix(family)) and n.endswith("q_proj") for n, _ in policy.named_modules())


def test_trainable_parameters_by_hand(tiny_models):
    """Tiny Qwen2-Audio: hidden 64, 2 x 32 query heads, 2 x 32 kv heads, MLP 128, 2 layers. Rank 4 adds
    4 x (in + out) per layer: q, k, v, o 64 + 64 each, gate, up 64 + 128, down 128 + 64."""
    path = tiny_models["qwen2_audio"]
    lora = LoraConfig(rank=4)
    frozen_audio = trainable_parameters(path, "qwen2_audio", TrainerConfig(lora=lora, freeze_audio_encoder=True))
    assert frozen_audio == 2 * 4 * (4 * 128 + 3 * 192) == 8704
    policy = load_policy(path, "qwen2_audio", "float32")
    freeze(policy, False)
    full = sum(p.numel() for p in policy.parameters() if p.requires_grad)
    assert trainable_parameters(path, "qwen2_audio", TrainerConfig()) == full
    tower = sum(p.numel() for n, p in policy.named_parameters() if p.requires_grad and n.startswith("model.audio_"))
    assert trainable_parameters(path, "qwen2_audio", TrainerConfig(lora=lora)) == 8704 + tower


@pytest.mark.parametrize("freeze_audio_encoder", [True, False])
def test_a_step_moves_only_the_trained_tensors(freeze_audio_encoder, tiny_models):
    path, family = tiny_models["qwen2_audio"], "qwen2_audio"
    policy, peft = lora_policy(path, family, LoraConfig(rank=4, alpha=8), freeze_audio_encoder)
    trained = {n for n, p in policy.named_parameters() if p.requires_grad}
    adapters = {n for n in trained if ".lora_" in n}
    tower = "model.audio_tower."
    assert len(adapters) == 2 * 14
    if freeze_audio_encoder:
        assert trained == adapters
    else:  # the audio encoder trains too, but never its fixed sinusoidal position table
        assert trained - adapters == {
            n for n, p in policy.named_parameters() if n.startswith(tower) and "embed_positions" not in n
        }
    before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    module = CompletionLogprobs(policy)
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-2)
    batch = make_batch(path, family)
    for _ in range(2):  # B starts at zero: the second step moves A as well
        inputs = collate(batch, [0, 1, 2])
        mask = inputs.pop("mask")
        logp = module(**inputs, temperature=1.0)
        loss = -(logp * mask * torch.tensor(batch.advantages)[:, None]).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    changed = {n for n, p in policy.named_parameters() if not torch.equal(p, before[n])}
    assert changed == trained

    # The adapters-off pass is the initial policy exactly when only adapters trained (the reference option).
    base = compute_logprobs(CompletionLogprobs(load_policy(path, family, "float32")), batch, 8, "cpu", 1.0)
    with adapters_disabled(peft):
        off = compute_logprobs(module, batch, 8, "cpu", 1.0)
    gap = max(np.abs(a - b).max() for a, b in zip(base, off))
    assert gap == 0.0 if freeze_audio_encoder else gap > 1e-3


@pytest.mark.parametrize("family", FAMILIES)
def test_merged_weights_equal_the_hand_merge_and_give_the_same_logprobs(family, tiny_models):
    path = tiny_models[family]
    original = load_policy(path, family, "float32").state_dict()
    policy, _ = lora_policy(path, family, LoraConfig(rank=4, alpha=12, target_modules=["q_proj", "down_proj"]), True)
    gen = torch.Generator().manual_seed(0)
    for name, p in policy.named_parameters():
        if ".lora_" in name:  # a trained adapter (B is zero at init)
            p.data = torch.randn(p.shape, generator=gen) * 0.1
    params = dict(policy.named_parameters())
    entries = merged_entries(policy)
    assert [e.name for e in entries] == list(original)  # the original checkpoint's names, in its order
    merged = {e.name: e.merge([params.get(s, policy.state_dict().get(s)) for s in e.sources]) for e in entries}

    layer = f"{language_model_prefix(family)}.layers.1.self_attn.q_proj"
    a = params[f"{layer}.lora_A.default.weight"]
    b = params[f"{layer}.lora_B.default.weight"]
    assert a.shape == (4, original[f"{layer}.weight"].shape[1])
    by_hand = original[f"{layer}.weight"] + (12 / 4) * (b @ a)
    torch.testing.assert_close(merged[f"{layer}.weight"], by_hand, rtol=0, atol=1e-6)
    assert not torch.equal(merged[f"{layer}.weight"], original[f"{layer}.weight"])
    k_proj = f"{language_model_prefix(family)}.layers.1.self_attn.k_proj"
    assert torch.equal(merged[f"{k_proj}.weight"], original[f"{k_proj}.weight"])  # not targeted: untouched

    plain = load_policy(path, family, "float32")
    plain.load_state_dict(merged)
    batch = make_batch(path, family)
    adapted = compute_logprobs(CompletionLogprobs(policy).eval(), batch, 8, "cpu", 1.0)
    for x, y in zip(adapted, compute_logprobs(CompletionLogprobs(plain), batch, 8, "cpu", 1.0)):
        np.testing.assert_allclose(x, y, atol=1e-5)


def test_config_errors_name_the_key(tiny_models):
    with pytest.raises(ConfigError, match=r"trainer\.lora\.rank"):
        load_config(None, ["trainer.lora.rank=0"])
    with pytest.raises(ConfigError, match=r"trainer\.lora\.rnk: unknown key"):
        load_config(None, ["trainer.lora.rnk=4"])
    with pytest.raises(ConfigError, match=r"trainer\.lora\.target_modules.*without dots"):
        load_config(None, ["trainer.lora.target_modules=[self_attn.q_proj]"])
    assert load_config(None, ["trainer.lora={}"]).trainer.lora == LoraConfig()
    # fc1 exists only in the audio encoder: the language model has no such layer
    with pytest.raises(ValueError, match=r"trainer\.lora\.target_modules: \['fc1'\] match no linear layer"):
        check_lora(tiny_models["qwen2_audio"], "qwen2_audio", LoraConfig(target_modules=["q_proj", "fc1"]))


def test_adapter_init_is_seeded_and_leaves_the_global_rng(tiny_models):
    """Every rank (and a resumed run) must start from the same A; the caller's RNG stream is not consumed."""
    path = tiny_models["qwen2_audio"]
    state = torch.get_rng_state()
    first = lora_policy(path, "qwen2_audio", LoraConfig(rank=4), True)[0].state_dict()
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(123)
    second = lora_policy(path, "qwen2_audio", LoraConfig(rank=4), True)[0].state_dict()
    other = lora_policy(path, "qwen2_audio", LoraConfig(rank=4, init_seed=1), True)[0].state_dict()
    a = "model.language_model.layers.0.self_attn.q_proj.lora_A.default.weight"
    assert torch.equal(first[a], second[a]) and not torch.equal(first[a], other[a])


def test_trainable_parameters_of_a_meta_model_from_a_config():
    """The planner's form: a model built from a config on the meta device, no folder. A Qwen2-Audio-7B-shaped
    language model (hidden 4096, MLP 11008, 32 layers, 32 kv heads): r=8 gives 8 x 32 x (4 x 8192 + 3 x 15104)."""
    from transformers import Qwen2AudioConfig, Qwen2AudioForConditionalGeneration

    text = dict(model_type="qwen2", hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                num_attention_heads=32, num_key_value_heads=32, vocab_size=1000)  # fmt: skip
    with torch.device("meta"):
        audio = dict(encoder_layers=1, d_model=64, encoder_attention_heads=2, encoder_ffn_dim=64)  # frozen here
        model = Qwen2AudioForConditionalGeneration(Qwen2AudioConfig(text_config=text, audio_config=audio))
    cfg = TrainerConfig(lora=LoraConfig(rank=8), freeze_audio_encoder=True)
    assert trainable_parameters(model, "qwen2_audio", cfg) == 8 * 32 * (4 * 8192 + 3 * 15104) == 19_988_480
