"""The transformers rollout engine on both model families, and the engine interface's own rules.

Every log-prob an engine returns is checked against a plain fp32 transformers forward pass of prompt +
completion with the audio features (the way the trainer recomputes them). Tolerance: atol 1e-4 (observed
differences here are below 1e-6; batched left-padded generation vs one unpadded forward).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from audio_thinker.core.audio import load_audio, write_audio
from audio_thinker.core.encoding import PromptEncoder
from audio_thinker.core.chat import render_chat
from audio_thinker.core.families import model_key
from audio_thinker.core.models import checkpoint_state, load_feature_extractor, load_policy, load_tokenizer
from audio_thinker.core.protocol import build_instruction
from audio_thinker.core.weights import state_checksum
from rollout.engine import (
    GenerationRequest,
    SamplingConfig,
    StaleWeightsError,
    WeightsError,
    banned_token_ids,
    check_weights,
    stop_token_ids,
)
from rollout.hf_engine import TransformersEngine, batch_seed, trim_completion

LOGPROB_ATOL = 1e-4
FAMILIES = ["qwen2_audio", "qwen2_5_omni"]
QUESTIONS = [
    ("How many beeps are there?", ["one", "two", "three"]),
    ("Which tone is higher, the first or the second?", ["first", "second"]),
    ("Is this music, speech or noise?", ["music", "speech", "noise"]),
]


def write_clips(folder) -> list[np.ndarray]:
    """Three real wav files (one at 22.05 kHz, so it is resampled on read), read back as 16 kHz mono."""
    t = np.arange(16000) / 16000
    beeps = np.concatenate([0.4 * np.sin(2 * np.pi * 880 * t[:3200]), np.zeros(4800)] * 3)
    two_tones = np.concatenate([0.3 * np.sin(2 * np.pi * 330 * t), 0.3 * np.sin(2 * np.pi * 660 * t[:8000])])
    noise = np.random.default_rng(0).uniform(-0.2, 0.2, 15435)
    paths = [
        write_audio(folder / "beeps.wav", beeps),
        write_audio(folder / "tones.wav", two_tones),
        write_audio(folder / "noise.wav", noise, sr=22050),
    ]
    return [load_audio(p) for p in paths]


def make_requests(family: str, clips: list[np.ndarray], seeds=(0, 1, 2)) -> list[GenerationRequest]:
    return [
        GenerationRequest(render_chat(family, build_instruction(q, choices, "adaptive")), clip, seed)
        for (q, choices), clip, seed in zip(QUESTIONS, clips, seeds)
    ]


def reference_logprobs(
    model, encoder: PromptEncoder, request: GenerationRequest, completions: list[list[int]]
) -> list[torch.Tensor]:
    """Log-probs of each completion after the prompt, from one fp32 forward pass with the audio features.

    The completions are right-padded into one batch; causal attention keeps the padding out of real tokens.
    """
    enc = encoder.encode(request.prompt, request.audio)
    start, width = len(enc.input_ids), max(len(c) for c in completions)
    ids = torch.tensor([enc.input_ids + c + [0] * (width - len(c)) for c in completions])
    rows = len(completions)
    with torch.no_grad():
        logits = model(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            input_features=torch.from_numpy(enc.input_features)[None].expand(rows, -1, -1),
            feature_attention_mask=torch.from_numpy(enc.feature_attention_mask)[None].expand(rows, -1),
        ).logits.float()
    logprobs = torch.log_softmax(logits[:, start - 1 : -1], dim=-1).gather(-1, ids[:, start:, None])[..., 0]
    return [logprobs[i, : len(c)] for i, c in enumerate(completions)]


def max_logprob_error(model, encoder, requests, results) -> float:
    errors = []
    for request, samples in zip(requests, results):
        expected = reference_logprobs(model, encoder, request, [s.token_ids for s in samples])
        errors += [(e - torch.tensor(s.logprobs)).abs().max().item() for e, s in zip(expected, samples)]
    return max(errors)


def perturbed(state: dict[str, torch.Tensor], seed: int = 1, scale: float = 0.02) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {k: v + scale * torch.randn(v.shape, generator=gen) for k, v in state.items()}


def model_with(path, family: str, state: dict[str, torch.Tensor]):
    """A fresh transformers model holding `state` (checkpoint keys): the reference for new weights."""
    model = load_policy(path, family, "float32")
    model.load_state_dict({model_key(family, k): v for k, v in state.items()})
    return model


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> list[np.ndarray]:
    return write_clips(tmp_path_factory.mktemp("clips"))


@pytest.fixture(scope="module", params=FAMILIES)
def setup(request, tiny_models):
    """(family, path, engine, reference model, prompt encoder) shared by the tests of one family."""
    family = request.param
    path = tiny_models[family]
    engine = TransformersEngine(path, family, "float32")
    encoder = PromptEncoder(load_tokenizer(path), load_feature_extractor(path))
    yield family, path, engine, load_policy(path, family, "float32"), encoder
    engine.close()


def test_samples_and_logprobs_match_a_forward_pass(setup, clips):
    family, _, engine, reference, encoder = setup
    requests = make_requests(family, clips)
    results = engine.generate(requests, SamplingConfig(n=4, max_new_tokens=8))
    assert [len(samples) for samples in results] == [4, 4, 4]
    for request, samples in zip(requests, results):
        expected_prompt = encoder.encode(request.prompt, request.audio).input_ids
        for s in samples:
            assert s.prompt_token_ids == expected_prompt
            assert 1 <= len(s.token_ids) <= 8 and len(s.logprobs) == len(s.token_ids)
            stopped = s.token_ids[-1] in engine.stop_ids
            assert s.finish_reason == ("stop" if stopped else "length")
            assert s.text == encoder.tokenizer.decode(s.token_ids, skip_special_tokens=True)
        assert len({tuple(s.token_ids) for s in samples}) > 1, "the n samples of a question should differ"
    assert max_logprob_error(reference, encoder, requests, results) < LOGPROB_ATOL


def test_greedy_takes_the_argmax_token(setup, clips):
    family, _, engine, reference, encoder = setup
    requests = make_requests(family, clips, seeds=(0, 9, 4))
    greedy = engine.generate(requests, SamplingConfig(n=1, max_new_tokens=4, greedy=True))
    again = engine.generate(
        make_requests(family, clips, seeds=(3, 3, 3)), SamplingConfig(n=1, max_new_tokens=4, greedy=True)
    )
    assert [[s.token_ids for s in r] for r in greedy] == [
        [s.token_ids for s in r] for r in again
    ]  # seeds do not matter
    for request, (sample,) in zip(requests, greedy):
        enc = encoder.encode(request.prompt, request.audio)
        with torch.no_grad():
            logits = reference(
                input_ids=torch.tensor([enc.input_ids]),
                attention_mask=torch.ones(1, len(enc.input_ids), dtype=torch.long),
                input_features=torch.from_numpy(enc.input_features)[None],
                feature_attention_mask=torch.from_numpy(enc.feature_attention_mask)[None],
            ).logits[0, -1]
        logits[engine.banned_ids] = float("-inf")  # placeholders are never sampled
        assert sample.token_ids[0] == int(logits.argmax())
    with pytest.raises(ValueError, match="greedy"):
        SamplingConfig(n=2, greedy=True)


def test_qwen2_audio_prompt_ids_equal_the_processor(tiny_models, clips):
    from transformers import AutoProcessor

    path = tiny_models["qwen2_audio"]
    engine = TransformersEngine(path, "qwen2_audio", "float32")
    request = make_requests("qwen2_audio", clips)[1]
    sample = engine.generate([request], SamplingConfig(n=1, max_new_tokens=1))[0][0]
    processor = AutoProcessor.from_pretrained(path)
    processed = processor(text=request.prompt, audio=[request.audio], sampling_rate=16000)
    assert sample.prompt_token_ids == list(processed["input_ids"][0])


def test_same_seeds_same_samples(setup, clips):
    family, _, engine, _, _ = setup
    sampling = SamplingConfig(n=3, max_new_tokens=6, logprobs=False)
    first = engine.generate(make_requests(family, clips), sampling)
    again = engine.generate(make_requests(family, clips), sampling)
    other = engine.generate(make_requests(family, clips, seeds=(5, 6, 7)), sampling)
    tokens = lambda results: [[s.token_ids for s in samples] for samples in results]
    assert tokens(first) == tokens(again)
    assert tokens(first) != tokens(other)
    unseeded = [GenerationRequest(r.prompt, r.audio) for r in make_requests(family, clips)]
    assert tokens(engine.generate(unseeded, sampling)) != tokens(engine.generate(unseeded, sampling))
    assert all(s.logprobs is None for samples in first for s in samples)


@pytest.mark.parametrize("family", FAMILIES)
def test_new_weights_are_used(family, tiny_models, clips):
    path = tiny_models[family]
    engine = TransformersEngine(path, family, "float32")
    old = load_policy(path, family, "float32")
    new_state = perturbed(checkpoint_state(old, family))
    report = engine.load_weights(new_state, version=3)
    assert report.checksum == state_checksum(new_state)
    assert (report.version, report.num_tensors, engine.version) == (3, len(new_state), 3)

    encoder = PromptEncoder(load_tokenizer(path), load_feature_extractor(path))
    requests = make_requests(family, clips)
    results = engine.generate(requests, SamplingConfig(n=2, max_new_tokens=6))
    assert max_logprob_error(model_with(path, family, new_state), encoder, requests, results) < LOGPROB_ATOL
    assert max_logprob_error(old, encoder, requests, results) > 1e-2

    with pytest.raises(StaleWeightsError, match="version 2.*version 3"):
        engine.load_weights(new_state, version=2)


@pytest.mark.parametrize("family", FAMILIES)
def test_multimodal_placeholders_are_never_sampled(family, tiny_models, clips):
    """An lm_head that makes the placeholders almost certain: masked from sampling, not from the log-probs."""
    path = tiny_models[family]
    engine = TransformersEngine(path, family, "float32")
    state = checkpoint_state(load_policy(path, family, "float32"), family)
    head = "language_model.lm_head.weight" if family == "qwen2_audio" else "lm_head.weight"
    banned = banned_token_ids(engine.encoder.tokenizer)
    weight = torch.zeros_like(state[head])
    gen = torch.Generator().manual_seed(0)
    weight[banned] = 50 * torch.randn(len(banned), weight.shape[1], generator=gen)
    state[head] = weight
    engine.load_weights(state, version=1)
    requests = make_requests(family, clips)
    results = engine.generate(requests, SamplingConfig(n=4, max_new_tokens=4))
    sampled = {t for samples in results for s in samples for t in s.token_ids}
    assert not sampled & set(banned)
    encoder = PromptEncoder(load_tokenizer(path), load_feature_extractor(path))
    reference = model_with(path, family, state)
    for request, samples in zip(requests, results):
        expected = reference_logprobs(reference, encoder, request, [s.token_ids for s in samples])
        for e, s in zip(expected, samples):  # log-probs of a few hundred: fp32 resolution needs an rtol
            torch.testing.assert_close(torch.tensor(s.logprobs), e, rtol=1e-5, atol=LOGPROB_ATOL)
    # The probability mass sits on the placeholders.
    assert max(lp for samples in results for s in samples for lp in s.logprobs) < -5


def test_weight_message_errors_name_the_keys():
    expected = {"a.weight": (2, 3), "b.weight": (4,)}
    ok = [("a.weight", torch.zeros(2, 3)), ("b.weight", torch.zeros(4))]
    check_weights(ok, expected)
    with pytest.raises(WeightsError, match=r"1 missing keys, e.g. \['b.weight'\]"):
        check_weights(ok[:1], expected)
    with pytest.raises(WeightsError, match=r"1 unknown keys, e.g. \['c.weight'\]"):
        check_weights(ok + [("c.weight", torch.zeros(1))], expected)
    with pytest.raises(WeightsError, match=r"a.weight: got \(3, 2\), expected \(2, 3\)"):
        check_weights([("a.weight", torch.zeros(3, 2)), ok[1]], expected)
    with pytest.raises(WeightsError, match=r"duplicated keys \['b.weight'\]"):
        check_weights(ok + [ok[1]], expected)


def test_engine_rejects_a_message_without_loading_it(tiny_models):
    engine = TransformersEngine(tiny_models["qwen2_audio"], "qwen2_audio", "float32")
    state = checkpoint_state(load_policy(tiny_models["qwen2_audio"], "qwen2_audio", "float32"), "qwen2_audio")
    before = state_checksum(checkpoint_state(engine.model, "qwen2_audio"))
    broken = {k: v + 1 for k, v in state.items()}
    broken["language_model.model.layers.0.mlp.up_proj.weight"] = torch.zeros(3, 3)
    with pytest.raises(WeightsError, match=r"language_model.model.layers.0.mlp.up_proj.weight: got \(3, 3\)"):
        engine.load_weights(broken, version=1)
    assert state_checksum(checkpoint_state(engine.model, "qwen2_audio")) == before
    assert engine.version == 0


def test_trim_completion():
    assert trim_completion([5, 6, 2, 0, 0], stop_ids=[2, 3]) == ([5, 6, 2], "stop")
    assert trim_completion([3, 0, 0], stop_ids=[2, 3]) == ([3], "stop")
    assert trim_completion([5, 6, 7], stop_ids=[2, 3]) == ([5, 6, 7], "length")


def test_batch_seed_depends_on_every_seed():
    audio = np.zeros(160, dtype=np.float32)
    req = lambda seed: GenerationRequest("<|AUDIO|>", audio, seed)
    assert batch_seed([req(None), req(None)]) is None
    assert batch_seed([req(1), req(2)]) == batch_seed([req(1), req(2)])
    assert batch_seed([req(1), req(2)]) != batch_seed([req(1), req(3)])
    with pytest.raises(ValueError, match="every request"):
        batch_seed([req(1), req(None)])


def test_requests_and_sampling_are_validated():
    audio = np.zeros(160, dtype=np.float32)
    with pytest.raises(ValueError, match="exactly one audio placeholder"):
        GenerationRequest("no placeholder", audio)
    with pytest.raises(ValueError, match="mono 1-D array"):
        GenerationRequest("<|AUDIO|>", np.zeros((160, 2), dtype=np.float32))
    with pytest.raises(ValueError, match="temperature must be > 0"):
        SamplingConfig(temperature=0.0)
    with pytest.raises(ValueError, match="top_p"):
        SamplingConfig(top_p=0.0)


def test_sampling_from_rollout_config():
    from audio_thinker.core.config import RolloutConfig

    rollout = RolloutConfig(samples_per_question=8, temperature=0.7, top_p=0.9, max_new_tokens=48)
    expected = SamplingConfig(n=8, temperature=0.7, top_p=0.9, max_new_tokens=48)
    assert SamplingConfig.from_rollout(rollout) == expected


def test_stop_and_banned_token_ids(tiny_models):
    path = tiny_models["qwen2_audio"]
    tok = load_tokenizer(path)
    assert stop_token_ids(path, tok) == sorted(tok.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"]))
    names = [
        "<|AUDIO|>",
        "<|audio_bos|>",
        "<|audio_eos|>",
        "<|IMAGE|>",
        "<|VIDEO|>",
        "<|vision_bos|>",
        "<|vision_eos|>",
    ]
    assert banned_token_ids(tok) == sorted(tok.convert_tokens_to_ids(names))


def test_folder_weights_keep_the_thinker_of_a_full_omni_checkpoint(tmp_path):
    from safetensors.torch import save_file

    from rollout.vllm_engine import folder_weights, vllm_weight_name

    save_file(
        {
            "thinker.model.norm.weight": torch.zeros(4),
            "thinker.lm_head.weight": torch.zeros(8, 4),
            "talker.model.norm.weight": torch.zeros(4),
            "token2wav.code.weight": torch.zeros(2),
        },
        str(tmp_path / "model-00001-of-00001.safetensors"),
    )
    assert folder_weights(tmp_path, "qwen2_5_omni") == {"model.norm.weight": (4,), "lm_head.weight": (8, 4)}
    assert folder_weights(tmp_path, "qwen2_audio")["talker.model.norm.weight"] == (4,)
    assert vllm_weight_name("qwen2_5_omni", "model.norm.weight") == "thinker.model.norm.weight"
    assert vllm_weight_name("qwen2_audio", "audio_tower.conv1.weight") == "audio_tower.conv1.weight"


def test_folder_weights_of_the_tiny_qwen2_audio_match_what_the_trainer_sends(tiny_models):
    from rollout.vllm_engine import folder_weights

    path = tiny_models["qwen2_audio"]
    state = checkpoint_state(load_policy(path, "qwen2_audio", "float32"), "qwen2_audio")
    assert folder_weights(path, "qwen2_audio") == {k: tuple(v.shape) for k, v in state.items()}


def test_unusable_vllm_fails_with_a_clear_message(monkeypatch):
    """Stand-ins for what this machine does not have: no vLLM, an old one, one without the reload API."""
    import sys
    import types

    from rollout.vllm_engine import import_vllm

    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(RuntimeError, match="needs vLLM.*rollout.engine=transformers"):
        import_vllm()
    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(__version__="0.10.2"))
    with pytest.raises(RuntimeError, match="vLLM 0.10.2 is too old"):
        import_vllm()
    recent = types.SimpleNamespace(__version__="0.40.0", LLM=type("LLM", (), {}), LLMEngine=type("E", (), {}))
    monkeypatch.setitem(sys.modules, "vllm", recent)
    missing = r"lacks \['LLM.collective_rpc', 'LLM.reset_prefix_cache', 'LLMEngine.reset_encoder_cache'\]"
    with pytest.raises(RuntimeError, match=missing):
        import_vllm()
