"""Tiny models: built by the CLI, loaded with from_pretrained, generate 8 samples for a synthetic clip."""

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from transformers import AutoModelForCausalLM, AutoProcessor, AutoTokenizer

from audio_thinker.app.cli.main import main
from audio_thinker.app.data.synthetic import write_synthetic_dataset
from audio_thinker.app.data.options import TINY_MODELS
from audio_thinker.app.data.tiny import TAG_TOKENS, TINY_LAYOUT, ensure_tiny_models, read_provenance
from audio_thinker.core.data import load_dataset
from audio_thinker.core.encoding import PromptEncoder
from audio_thinker.core.chat import render_chat
from audio_thinker.core.families import checkpoint_key, model_key
from audio_thinker.core.models import load_feature_extractor, load_policy, load_tokenizer


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
    # An existing model folder is replaced only when asked: the demo's warmed-up policies live in artifacts/tiny.
    capsys.readouterr()
    assert main(["make-tiny", "--out", str(tmp_path / "c"), "--only", "qwen3_judge"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert _digest(tmp_path / "c" / "qwen3_judge") != _digest(tmp_path / "a" / "qwen3_judge")
    assert main(["make-tiny", "--out", str(tmp_path / "c"), "--only", "qwen3_judge", "--overwrite"]) == 0
    assert _digest(tmp_path / "c" / "qwen3_judge") == _digest(tmp_path / "a" / "qwen3_judge")


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
    model = load_policy(tiny_models["qwen2_audio"], "qwen2_audio", "float32")
    assert not torch.equal(model.lm_head.weight, model.model.language_model.embed_tokens.weight)
    for k in model.state_dict():
        assert model_key("qwen2_audio", checkpoint_key("qwen2_audio", k)) == k


def test_qwen2_audio_generates_8_samples(tiny_models, clip):
    path = tiny_models["qwen2_audio"]
    processor = AutoProcessor.from_pretrained(path)
    model = load_policy(path, "qwen2_audio", "float32")
    prompt = render_chat("qwen2_audio", "How many beeps?")
    inputs = processor(text=prompt, audio=[clip], sampling_rate=16000, return_tensors="pt")
    torch.manual_seed(0)
    out = model.generate(**inputs, do_sample=True, max_new_tokens=12, num_return_sequences=8)
    assert out.shape[0] == 8 and out.shape[1] > inputs["input_ids"].shape[1]
    assert len({tuple(row.tolist()) for row in out}) > 1  # sampling, not 8 copies


def test_qwen2_5_omni_thinker_generates_8_samples(tiny_models, clip):
    path = tiny_models["qwen2_5_omni"]
    model = load_policy(path, "qwen2_5_omni", "float32")
    enc = PromptEncoder(load_tokenizer(path), load_feature_extractor(path)).encode(
        render_chat("qwen2_5_omni", "How many beeps?"), clip
    )
    torch.manual_seed(0)
    out = model.generate(
        input_ids=torch.tensor([enc.input_ids]),
        attention_mask=torch.ones(1, len(enc.input_ids), dtype=torch.long),
        input_features=torch.from_numpy(enc.input_features)[None],
        feature_attention_mask=torch.from_numpy(enc.feature_attention_mask)[None],
        do_sample=True,
        max_new_tokens=12,
        num_return_sequences=8,
    )
    assert out.shape[0] == 8 and out.shape[1] > len(enc.input_ids)


def test_qwen3_judge_loads_and_generates(tiny_models):
    path = tiny_models["qwen3_judge"]
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    ids = tok("Is the reasoning consistent? Answer yes or no:", return_tensors="pt")
    out = model.generate(**ids, do_sample=True, max_new_tokens=8, num_return_sequences=8)
    assert out.shape[0] == 8


def test_every_tiny_model_is_built(tiny_models):
    assert set(tiny_models) == set(TINY_MODELS)
    for path in tiny_models.values():
        assert (path / "config.json").is_file() and (path / "model.safetensors").is_file()


# ------------------------------------------------------------------------------------------- format warm-up

WARMUP_STEPS = 150  # what the built-in defaults use


@pytest.fixture(scope="module")
def warm_models(warm_policy, tmp_path_factory) -> dict[str, Path]:
    """Both policies after the format warm-up of the CPU demo: the session's warm Qwen2-Audio (conftest) and a
    warm Qwen2.5-Omni thinker built here (about 10 s on 2 idle cores)."""
    from audio_thinker.app.data.tiny import make_tiny_models

    omni = make_tiny_models(tmp_path_factory.mktemp("warm"), seed=0, only=["qwen2_5_omni"], warmup_steps=WARMUP_STEPS)
    return {"qwen2_audio": warm_policy, **omni}


def test_warmup_targets_are_well_formed_with_random_choices():
    from audio_thinker.app.data.tiny_warmup import warmup_target
    from audio_thinker.core.protocol import parse_response

    rng = np.random.default_rng(0)
    choices = ["the first half", "the second half", "both halves are equally loud"]
    texts = [warmup_target(rng, choices) for _ in range(400)]
    parsed = [parse_response(t) for t in texts]
    assert all(t.endswith("</answer><|im_end|>") for t in texts)
    assert all(p.mode in ("think", "no_think") and p.answer in choices for p in parsed)
    think = sum(p.mode == "think" for p in parsed)
    assert 160 < think < 240  # about half and half
    picked = [sum(p.answer == c for p in parsed) for c in choices]
    assert min(picked) > 90  # every choice, about a third each: the format is taught, not the answers


def test_warmup_is_deterministic_and_recorded(tmp_path: Path):
    args = ["make-tiny", "--only", "qwen2_audio", "--warmup-steps", "3"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert main([*args, "--out", str(tmp_path / "b")]) == 0
    assert main(["make-tiny", "--only", "qwen2_audio", "--out", str(tmp_path / "c")]) == 0
    assert _digest(tmp_path / "a" / "qwen2_audio") == _digest(tmp_path / "b" / "qwen2_audio")
    a = safetensors.torch.load_file(str(tmp_path / "a" / "qwen2_audio" / "model.safetensors"))
    c = safetensors.torch.load_file(str(tmp_path / "c" / "qwen2_audio" / "model.safetensors"))
    assert a.keys() == c.keys()  # same hub layout after the warm-up
    changed = {k for k in a if not torch.equal(a[k], c[k])}
    assert "language_model.lm_head.weight" in changed and "language_model.model.embed_tokens.weight" in changed
    assert not any(k.startswith("audio_tower.") for k in changed)  # the audio encoder keeps its init
    assert read_provenance(tmp_path / "a" / "qwen2_audio") == {
        "model": "qwen2_audio", "seed": 0, "warmup_steps": 3, "layout": TINY_LAYOUT
    }  # fmt: skip
    assert read_provenance(tmp_path / "c" / "qwen2_audio")["warmup_steps"] == 0


def test_a_tiny_model_an_older_checkout_wrote_is_rebuilt_and_a_real_checkpoint_never(tmp_path: Path, caplog):
    assert main(["make-tiny", "--only", "qwen3_judge", "--seed", "3", "--out", str(tmp_path)]) == 0
    folder = tmp_path / "qwen3_judge"
    before = _digest(folder)
    old = {"model": "qwen3_judge", "seed": 3, "warmup_steps": 0}  # tiny.json before it recorded a layout
    (folder / "tiny.json").write_text(json.dumps(old))
    (folder / "tokenizer_config.json").write_text("{}")  # what an older builder wrote differs
    real = tmp_path / "real"
    shutil.copytree(folder, real)
    (real / "tiny.json").unlink()  # no tiny.json: not ours to rebuild
    with caplog.at_level("WARNING"):
        ensure_tiny_models(tmp_path, names=("qwen3_judge",))
    assert f"tiny model {folder} was written by an older audio-thinker (layout 1, now {TINY_LAYOUT})" in caplog.text
    assert read_provenance(folder) == {**old, "layout": TINY_LAYOUT} and _digest(folder) == before  # its own seed
    caplog.clear()
    ensure_tiny_models(tmp_path, names=("qwen3_judge",))  # current: left alone
    ensure_tiny_models(tmp_path, names=("real",))
    assert not caplog.text and (real / "tokenizer_config.json").read_text() == "{}"


def test_negative_warmup_steps_is_refused(tmp_path: Path, capsys):
    assert main(["make-tiny", "--out", str(tmp_path), "--warmup-steps", "-1"]) == 2
    assert "--warmup-steps: must be >= 0, got -1" in capsys.readouterr().err
    assert not tmp_path.joinpath("qwen2_audio").exists()


def test_driver_builds_missing_tiny_policies_with_the_configured_warmup(tmp_path: Path, caplog):
    from audio_thinker.app.data.demo import prepare_models
    from audio_thinker.app.data.tiny import read_provenance
    from audio_thinker.core.presets import load_config

    paths = [f"model.policy_path={tmp_path / 'qwen2_audio'}", f"model.judge_path={tmp_path / 'qwen3_judge'}"]
    prepare_models(load_config(overrides=[*paths, "model.tiny_warmup_steps=2"]))
    assert read_provenance(tmp_path / "qwen2_audio")["warmup_steps"] == 2
    assert read_provenance(tmp_path / "qwen3_judge")["warmup_steps"] == 0  # the judge is never warmed up
    assert sorted(p.name for p in tmp_path.iterdir()) == ["qwen2_audio", "qwen3_judge"]  # only what the config names
    with caplog.at_level("WARNING"):
        prepare_models(load_config(overrides=[*paths, "model.tiny_warmup_steps=5"]))  # present: not rebuilt
    assert read_provenance(tmp_path / "qwen2_audio")["warmup_steps"] == 2
    assert "built with 2 format warm-up steps, model.tiny_warmup_steps=5" in caplog.text


def test_demo_config_warms_the_tiny_policies_up():
    from audio_thinker.core.presets import load_config

    assert load_config().model.tiny_warmup_steps == WARMUP_STEPS
    assert load_config(overrides=["model.make_tiny_if_missing=false"]).model.tiny_warmup_steps == WARMUP_STEPS


@pytest.mark.parametrize("family", ["qwen2_audio", "qwen2_5_omni"])
def test_warm_policies_sample_both_valid_modes(warm_models, tiny_models, family, tmp_path: Path):
    """At temperature 1.0 the warm policies write valid think AND no_think responses (measured with seed 0:
    Qwen2-Audio 114/128 valid, 47 think; Qwen2.5-Omni 108/128 valid, 56 think); random-init ones write none."""
    from audio_thinker.core.protocol import build_instruction, parse_response
    from rollout.engine import GenerationRequest, SamplingConfig
    from rollout.hf_engine import TransformersEngine

    data = load_dataset(write_synthetic_dataset(tmp_path, n=16, seed=0), "avqa", tmp_path)
    prompts = [render_chat(family, build_instruction(q.question, q.choices, "adaptive")) for q in data]
    requests = [GenerationRequest(p, data.audio(i), seed=i) for i, p in enumerate(prompts)]
    sampling = SamplingConfig(n=8, temperature=1.0, max_new_tokens=48, logprobs=False)
    modes = {}
    for name, path in (("warm", warm_models[family]), ("random", tiny_models[family])):
        engine = TransformersEngine(path, family, "float32", device="cpu")
        groups = engine.generate(requests, sampling)
        engine.close()
        modes[name] = [parse_response(s.text).mode for group in groups for s in group]
    warm = modes["warm"]
    assert len(warm) == 128
    assert sum(m != "invalid" for m in warm) >= 0.70 * len(warm)
    assert warm.count("think") >= 0.15 * len(warm) and warm.count("no_think") >= 0.15 * len(warm)
    assert modes["random"].count("invalid") >= 0.95 * len(modes["random"])
