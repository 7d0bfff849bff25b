"""Tiny models: built by the CLI, loaded with from_pretrained, generate 8 samples for a synthetic clip."""

import hashlib
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from transformers import AutoModelForCausalLM, AutoProcessor, AutoTokenizer

from audio_thinker.cli import main
from audio_thinker.data import load_dataset
from audio_thinker.models import checkpoint_key, load_feature_extractor, load_policy, load_tokenizer, model_key
from audio_thinker.synthetic import write_synthetic_dataset
from audio_thinker.tiny import MODEL_NAMES, TAG_TOKENS
from rollout.prompts import PromptEncoder, render_chat


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> np.ndarray:
    out = tmp_path_factory.mktemp("syn")
    write_synthetic_dataset(out, n=1, seed=3)
    data = load_dataset(out / "train.jsonl", "avqa", out)
    return data.audio(0)


def _digest(folder: Path) -> str:
    return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file())).hexdigest()


def test_cli_builds_deterministic_folders(tmp_path: Path, capsys):
    assert main(["make-tiny", "--out", str(tmp_path / "a"), "--only", "qwen3_judge", "qwen2_audio"]) == 0
    assert main(["make-tiny", "--out", str(tmp_path / "b"), "--only", "qwen3_judge", "qwen2_audio"]) == 0
    assert "qwen3_judge" in capsys.readouterr().out
    for name in ("qwen3_judge", "qwen2_audio"):
        assert _digest(tmp_path / "a" / name) == _digest(tmp_path / "b" / name)
    assert main(["make-tiny", "--out", str(tmp_path / "c"), "--seed", "1", "--only", "qwen3_judge"]) == 0
    assert _digest(tmp_path / "c" / "qwen3_judge") != _digest(tmp_path / "a" / "qwen3_judge")


def test_tokenizer_has_protocol_and_audio_tokens(tiny_models):
    tok = AutoTokenizer.from_pretrained(tiny_models["qwen3_judge"])
    for t in ["<|im_start|>", "<|im_end|>", "<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>", *TAG_TOKENS]:
        assert len(tok.encode(t, add_special_tokens=False)) == 1, t
    text = "<think>two beeps</think><answer>2</answer>"
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids, skip_special_tokens=True) == text  # the tags survive decoding
    assert all(len(tok.encode(str(d), add_special_tokens=False)) == 1 for d in range(10))


def test_qwen2_audio_checkpoint_uses_the_hub_layout(tiny_models):
    keys = safetensors.torch.load_file(str(tiny_models["qwen2_audio"] / "model.safetensors")).keys()
    assert "language_model.model.embed_tokens.weight" in keys
    assert "language_model.lm_head.weight" in keys  # untied, like the real 7B model
    assert not any(k.startswith("language_model.model.model.") for k in keys)
    model = load_policy(tiny_models["qwen2_audio"], "qwen2_audio")
    assert not torch.equal(model.lm_head.weight, model.model.language_model.embed_tokens.weight)
    for k in model.state_dict():
        assert model_key("qwen2_audio", checkpoint_key("qwen2_audio", k)) == k


def test_qwen2_audio_generates_8_samples(tiny_models, clip):
    path = tiny_models["qwen2_audio"]
    processor = AutoProcessor.from_pretrained(path)
    model = load_policy(path, "qwen2_audio")
    prompt = render_chat("qwen2_audio", "How many beeps?")
    inputs = processor(text=prompt, audio=[clip], sampling_rate=16000, return_tensors="pt")
    torch.manual_seed(0)
    out = model.generate(**inputs, do_sample=True, max_new_tokens=12, num_return_sequences=8)
    assert out.shape[0] == 8 and out.shape[1] > inputs["input_ids"].shape[1]
    assert len({tuple(row.tolist()) for row in out}) > 1  # sampling, not 8 copies


def test_qwen2_5_omni_thinker_generates_8_samples(tiny_models, clip):
    path = tiny_models["qwen2_5_omni"]
    model = load_policy(path, "qwen2_5_omni")
    enc = PromptEncoder(load_tokenizer(path), load_feature_extractor(path)).encode(
        render_chat("qwen2_5_omni", "How many beeps?"), clip
    )
    torch.manual_seed(0)
    out = model.generate(
        input_ids=torch.tensor([enc.input_ids]), attention_mask=torch.ones(1, len(enc.input_ids), dtype=torch.long),
        input_features=torch.from_numpy(enc.input_features)[None],
        feature_attention_mask=torch.from_numpy(enc.feature_attention_mask)[None],
        do_sample=True, max_new_tokens=12, num_return_sequences=8,
    )
    assert out.shape[0] == 8 and out.shape[1] > len(enc.input_ids)


def test_qwen3_judge_loads_and_generates(tiny_models):
    path = tiny_models["qwen3_judge"]
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    ids = tok("Is the reasoning consistent? Answer yes or no:", return_tensors="pt")
    out = model.generate(**ids, do_sample=True, max_new_tokens=8, num_return_sequences=8)
    assert out.shape[0] == 8


def test_all_three_are_built(tiny_models):
    assert set(tiny_models) == set(MODEL_NAMES)
    for path in tiny_models.values():
        assert (path / "config.json").is_file() and (path / "model.safetensors").is_file()
