"""Chat prompts with audio: our rendering and token expansion equal what the processors produce."""

import numpy as np
import pytest
from transformers import AutoProcessor

from audio_thinker.core.encoding import PromptEncoder, num_audio_tokens
from audio_thinker.core.chat import AUDIO_TOKEN, render_chat
from audio_thinker.core.models import load_feature_extractor, load_tokenizer

MESSAGES = [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": "Which tone is highest?"}]}]


def test_qwen2_audio_rendering_matches_processor_template(tiny_models):
    processor = AutoProcessor.from_pretrained(tiny_models["qwen2_audio"])
    expected = processor.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    assert render_chat("qwen2_audio", "Which tone is highest?") == expected


def test_qwen2_5_omni_rendering_matches_chat_template(tiny_models):
    tok = load_tokenizer(tiny_models["qwen2_5_omni"])
    expected = tok.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    assert render_chat("qwen2_5_omni", "Which tone is highest?") == expected


@pytest.mark.parametrize("seconds", [0.5, 1.0, 3.3, 12.0, 30.0])
def test_encoder_equals_qwen2_audio_processor(tiny_models, seconds):
    path = tiny_models["qwen2_audio"]
    processor = AutoProcessor.from_pretrained(path)
    audio = np.random.default_rng(0).normal(0, 0.1, int(seconds * 16000)).astype(np.float32)
    prompt = render_chat("qwen2_audio", "How many beeps?")
    ref = processor(text=prompt, audio=[audio], sampling_rate=16000, return_tensors="np")
    enc = PromptEncoder(load_tokenizer(path), load_feature_extractor(path)).encode(prompt, audio)
    assert enc.input_ids == ref["input_ids"][0].tolist()
    np.testing.assert_allclose(enc.input_features, ref["input_features"][0], atol=1e-6)
    np.testing.assert_array_equal(enc.feature_attention_mask, ref["feature_attention_mask"][0])


def test_audio_placeholder_sits_between_bos_and_eos(tiny_models):
    path = tiny_models["qwen2_5_omni"]
    tok = load_tokenizer(path)
    enc = PromptEncoder(tok, load_feature_extractor(path)).encode(
        render_chat("qwen2_5_omni", "Q?"), np.zeros(16000 * 2, dtype=np.float32)
    )
    audio_id = tok.convert_tokens_to_ids(AUDIO_TOKEN)
    first = enc.input_ids.index(audio_id)
    n = enc.input_ids.count(audio_id)
    assert n == num_audio_tokens(200) == 50  # 2 s = 200 mel frames -> 50 tokens
    assert enc.input_ids[first - 1] == tok.convert_tokens_to_ids("<|audio_bos|>")
    assert enc.input_ids[first + n] == tok.convert_tokens_to_ids("<|audio_eos|>")


def test_num_audio_tokens_rule():
    # 30 s of audio = 3000 mel frames -> 1500 encoder frames -> 750 audio tokens (the Qwen2-Audio maximum).
    assert num_audio_tokens(3000) == 750
    assert num_audio_tokens(100) == 25
    assert num_audio_tokens(101) == 25  # (50 + 1 - 2) // 2 + 1
    assert num_audio_tokens(103) == 26


def test_prompt_must_hold_one_placeholder(tiny_models):
    path = tiny_models["qwen2_audio"]
    enc = PromptEncoder(load_tokenizer(path), load_feature_extractor(path))
    with pytest.raises(ValueError, match="exactly one"):
        enc.encode("no audio here", np.zeros(1600, dtype=np.float32))


def test_unknown_family():
    with pytest.raises(ValueError, match="unknown model family"):
        render_chat("llama", "x")
