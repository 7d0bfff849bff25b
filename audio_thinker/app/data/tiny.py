"""Tiny random-init models for tests and the CPU demo (no weights can be downloaded here).

`make_tiny_models(out)` writes four standard Hugging Face folders, seeded and deterministic:
- `qwen2_audio`: Qwen2AudioForConditionalGeneration with its Qwen2AudioProcessor (Whisper features,
  128 mel bins, 30 s padding) and chat template, saved in the hub key layout that vLLM reads;
- `qwen2_5_omni`: Qwen2_5OmniThinkerForConditionalGeneration with tokenizer, Whisper feature extractor and
  chat template (its own processor class needs torchvision, which this machine cannot have);
- `qwen3_judge`: Qwen3ForCausalLM with the same tokenizer;
- `qwen3_omni`: Qwen3OmniMoeThinkerForConditionalGeneration (4 experts, top-2), a thinker-only folder with the
  tokenizer plus Qwen3-Omni's placeholder tokens (`app/data/tiny_qwen3_omni.py`).

Sizes respect what vLLM's CPU backend needs (head_dim 32) and what the real checkpoints look like
(untied embeddings for Qwen2-Audio). The same loading code reads the real checkpoints from a path.

Random-init policies never write a well-formed response, so every reward of the CPU demo would be 0 and GRPO
would have nothing to learn from. `warmup_steps > 0` adds a supervised format warm-up to the policies
(`format_warmup`): teacher forcing on synthetic questions rendered through the project's real prompt path, with
targets that are well formed but carry a random choice, so the model learns the format, not the answers.
Each folder records how it was built in `tiny.json` (seed, warm-up steps, layout). One module of ~400 lines, mostly data
(the tokenizer's vocabulary, chat templates, model sizes): one builder per model beside what they share.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    PreTrainedTokenizerFast,
    Qwen2_5OmniThinkerConfig,
    Qwen2_5OmniThinkerForConditionalGeneration,
    Qwen2AudioConfig,
    Qwen2AudioForConditionalGeneration,
    Qwen2AudioProcessor,
    Qwen3Config,
    Qwen3ForCausalLM,
    Qwen3OmniMoeThinkerForConditionalGeneration,
    WhisperFeatureExtractor,
)

from audio_thinker.app.data.options import TINY_MODELS, check_tiny_out
from audio_thinker.app.data.tiny_qwen3_omni import CHAT_TEMPLATE as QWEN3_OMNI_CHAT_TEMPLATE
from audio_thinker.app.data.tiny_qwen3_omni import NAMED_TOKENS as QWEN3_OMNI_NAMED_TOKENS
from audio_thinker.app.data.tiny_qwen3_omni import qwen3_omni_tokenizer, save_tokenizer, tiny_config
from audio_thinker.app.data.tiny_warmup import format_warmup
from audio_thinker.core.log import get_logger
from audio_thinker.core.models import save_checkpoint_weights

log = get_logger(__name__)

POLICY_NAMES = ("qwen2_audio", "qwen2_5_omni", "qwen3_omni")  # TINY_MODELS: model k is seeded with seed + k
PROVENANCE_FILE = "tiny.json"
# What a tiny folder holds, recorded in its tiny.json: raised whenever a builder changes the files it writes, so that
# a folder an older checkout wrote is rebuilt, not loaded (2: the Omni tokenizers name their image, video and audio
# tokens, which vLLM's Omni processors read).
TINY_LAYOUT = 2

# Special tokens in the order Qwen checkpoints use them; the tags of our protocol are ordinary added tokens
# so that decoding keeps them in the text.
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|AUDIO|>",
    "<|audio_bos|>",
    "<|audio_eos|>",
    "<|IMAGE|>",
    "<|VIDEO|>",
    "<|vision_bos|>",
    "<|vision_eos|>",
]
TAG_TOKENS = ["<think>", "</think>", "<answer>", "</answer>"]
VOCAB_SIZE = 1024  # tokenizer size; model vocab is padded to a multiple of 64

QWEN2_AUDIO_CHAT_TEMPLATE = (
    "{% set audio_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'audio' %}{% set audio_count.value = audio_count.value + 1 %}"
    "Audio {{ audio_count.value }}: <|audio_bos|><|AUDIO|><|audio_eos|>\n"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

QWEN2_5_OMNI_SYSTEM = (
    "You are Qwen, a virtual human developed by the Qwen Team, Alibaba Group, capable of perceiving auditory "
    "and visual inputs, as well as generating text and speech."
)
QWEN2_5_OMNI_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n"
    + QWEN2_5_OMNI_SYSTEM
    + "<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'audio' %}<|audio_bos|><|AUDIO|><|audio_eos|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# The placeholders the released Qwen2.5-Omni tokenizer names in its tokenizer_config.json.
QWEN2_5_OMNI_NAMED_TOKENS = {
    "audio_bos_token": "<|audio_bos|>", "audio_token": "<|AUDIO|>", "audio_eos_token": "<|audio_eos|>",
    "image_token": "<|IMAGE|>", "video_token": "<|VIDEO|>",
    "vision_bos_token": "<|vision_bos|>", "vision_eos_token": "<|vision_eos|>",
}  # fmt: skip

_CORPUS_WORDS = (
    "the audio clip question answer choice which how many what is louder higher lower pitch tone beep beeps "
    "rhythm fast slow irregular steady sound music speech speaker voice syllable syllables first second half "
    "think reason step because therefore so the final answer is yes no consistent reasoning quality score "
    "listen carefully decide whether this needs thinking give only a direct short explanation options "
    "dog cat car bird engine rain water wind guitar piano drum violin singing male female child man woman "
    "one two three four five six seven eight nine ten zero A B C D easy medium hard noise loud quiet "
    "does the reasoning support judge rate from to of and or in on with for it that there are not"
).split()


def _corpus(seed: int) -> list[str]:
    """A deterministic pseudo-English corpus for the byte-level BPE (quality is irrelevant, coverage is not)."""
    gen = torch.Generator().manual_seed(seed)
    words = _CORPUS_WORDS
    lines = [" ".join(words)]
    for _ in range(400):
        idx = torch.randint(len(words), (12,), generator=gen).tolist()
        lines.append(" ".join(words[i] for i in idx) + ".")
    lines += [f"<think>{w}</think><answer>{w}</answer>" for w in words]
    lines += [str(i) for i in range(100)]
    return lines


def build_tokenizer(seed: int = 0) -> PreTrainedTokenizerFast:
    """Train a small byte-level BPE with the Qwen chat/audio special tokens and our protocol tags."""
    tok = Tokenizer(models.BPE())
    # Digits are split one by one, like Qwen's tokenizers, so score labels 0..9 are single tokens.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE - len(TAG_TOKENS),
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(seed), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        clean_up_tokenization_spaces=False,
        model_max_length=32768,
    )
    fast.add_tokens(TAG_TOKENS)  # ordinary (non-special) tokens: decode keeps them
    fast.padding_side = "left"
    return fast


def _padded_vocab(tokenizer) -> int:
    return (len(tokenizer) + 63) // 64 * 64


def _text_config(tokenizer, tie: bool) -> dict:
    return dict(
        vocab_size=_padded_vocab(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=32,
        max_position_embeddings=4096,
        tie_word_embeddings=tie,
        rms_norm_eps=1e-6,
        bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.pad_token_id,
    )


def _feature_extractor() -> WhisperFeatureExtractor:
    return WhisperFeatureExtractor(feature_size=128, sampling_rate=16000, hop_length=160, chunk_length=30, n_fft=400)


def _init(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Re-initialise every parameter from a seeded generator so that output is independent of torch's global RNG."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if p.ndim == 1 and ("norm" in name or "ln" in name):
                p.fill_(1.0)
            elif p.ndim == 1:
                p.zero_()
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return model.eval()


def _generation_config(tokenizer) -> dict:
    return {
        "bos_token_id": tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        "eos_token_id": [
            tokenizer.convert_tokens_to_ids("<|im_end|>"),
            tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        ],
        "pad_token_id": tokenizer.pad_token_id,
        "do_sample": True,
        "temperature": 1.0,
        "top_p": 1.0,
    }


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")



TINY_AUDIO_ENCODER = {
    "d_model": 64, "encoder_layers": 2, "encoder_attention_heads": 2, "encoder_ffn_dim": 128,
    "num_mel_bins": 128, "max_source_positions": 1500,
}


def make_qwen2_audio(out: Path, tokenizer, seed: int, warmup_steps: int = 0) -> Path:

    config = Qwen2AudioConfig(
        audio_config=dict(TINY_AUDIO_ENCODER),
        text_config=dict(model_type="qwen2", **_text_config(tokenizer, tie=False)),
        audio_token_index=tokenizer.convert_tokens_to_ids("<|AUDIO|>"),
    )
    model = _init(Qwen2AudioForConditionalGeneration(config), seed)
    if warmup_steps:
        format_warmup(model, "qwen2_audio", tokenizer, _feature_extractor(), warmup_steps, seed)
    out.mkdir(parents=True, exist_ok=True)
    config.architectures = ["Qwen2AudioForConditionalGeneration"]
    config.save_pretrained(out)
    save_checkpoint_weights(model, "qwen2_audio", out)
    _write_json(out / "generation_config.json", _generation_config(tokenizer))
    processor = Qwen2AudioProcessor(
        feature_extractor=_feature_extractor(), tokenizer=tokenizer, chat_template=QWEN2_AUDIO_CHAT_TEMPLATE
    )
    processor.save_pretrained(out)
    return out


def make_qwen2_5_omni(out: Path, tokenizer, seed: int, warmup_steps: int = 0) -> Path:

    text = _text_config(tokenizer, tie=False)
    text["rope_parameters"] = {"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": [4, 6, 6]}
    config = Qwen2_5OmniThinkerConfig(
        audio_config={**TINY_AUDIO_ENCODER, "n_window": 100, "output_dim": 64},
        vision_config=dict(
            depth=1,
            hidden_size=32,
            intermediate_size=64,
            num_heads=1,
            out_hidden_size=64,
            fullatt_block_indexes=[0],
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
        ),
        text_config=text,
        audio_token_index=tokenizer.convert_tokens_to_ids("<|AUDIO|>"),
        image_token_index=tokenizer.convert_tokens_to_ids("<|IMAGE|>"),
        video_token_index=tokenizer.convert_tokens_to_ids("<|VIDEO|>"),
        audio_start_token_id=tokenizer.convert_tokens_to_ids("<|audio_bos|>"),
        audio_end_token_id=tokenizer.convert_tokens_to_ids("<|audio_eos|>"),
        user_token_id=tokenizer.convert_tokens_to_ids("user") if "user" in tokenizer.get_vocab() else 0,
    )
    # The released checkpoint carries these too; the rope-index code reads them.
    config.vision_start_token_id = tokenizer.convert_tokens_to_ids("<|vision_bos|>")
    config.vision_end_token_id = tokenizer.convert_tokens_to_ids("<|vision_eos|>")
    model = _init(Qwen2_5OmniThinkerForConditionalGeneration(config), seed)
    if warmup_steps:
        format_warmup(model, "qwen2_5_omni", tokenizer, _feature_extractor(), warmup_steps, seed)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    _write_json(out / "generation_config.json", _generation_config(tokenizer))
    save_tokenizer(tokenizer, out, QWEN2_5_OMNI_CHAT_TEMPLATE, QWEN2_5_OMNI_NAMED_TOKENS)
    _feature_extractor().save_pretrained(out)
    return out


def make_qwen3_judge(out: Path, tokenizer, seed: int) -> Path:

    cfg = _text_config(tokenizer, tie=True)
    cfg["num_key_value_heads"] = 1
    model = _init(Qwen3ForCausalLM(Qwen3Config(**cfg)), seed)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    _write_json(out / "generation_config.json", _generation_config(tokenizer))
    tokenizer.save_pretrained(out)
    return out


def make_qwen3_omni(out: Path, tokenizer, seed: int, warmup_steps: int = 0) -> Path:

    tok = qwen3_omni_tokenizer(tokenizer)
    model = _init(Qwen3OmniMoeThinkerForConditionalGeneration(tiny_config(tok, _text_config(tok, tie=False),
                                                                          TINY_AUDIO_ENCODER)), seed)
    if warmup_steps:
        format_warmup(model, "qwen3_omni", tok, _feature_extractor(), warmup_steps, seed)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)  # the experts one matrix each, the released layout
    _write_json(out / "generation_config.json", _generation_config(tok))
    save_tokenizer(tok, out, QWEN3_OMNI_CHAT_TEMPLATE, QWEN3_OMNI_NAMED_TOKENS)
    _feature_extractor().save_pretrained(out)
    return out


_BUILDERS = {
    "qwen2_audio": make_qwen2_audio,
    "qwen2_5_omni": make_qwen2_5_omni,
    "qwen3_judge": make_qwen3_judge,
    "qwen3_omni": make_qwen3_omni,
}


def _provenance(name: str, seed: int, warmup_steps: int) -> dict:
    """What `tiny.json` records for a model built with these settings (the judge is never warmed up)."""
    return {"model": name, "seed": seed, "warmup_steps": warmup_steps if name in POLICY_NAMES else 0,
            "layout": TINY_LAYOUT}


def make_tiny_models(
    out: str | Path, seed: int = 0, only: list[str] | None = None, warmup_steps: int = 0, overwrite: bool = False
) -> dict[str, Path]:
    """Build the tiny models into `out/<name>/`; each folder is written to a temp path and then renamed. A model
    folder that exists is replaced only with `overwrite` (FileExistsError).

    `warmup_steps` > 0 gives the policies that many steps of format warm-up (`format_warmup`); 0 keeps
    them purely random-init.
    """
    out = Path(out)
    names = list(only) if only else list(TINY_MODELS)
    unknown = set(names) - set(TINY_MODELS)
    if unknown:
        raise ValueError(f"unknown tiny model(s) {sorted(unknown)}; choose from {list(TINY_MODELS)}")
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    check_tiny_out(out, names, overwrite)
    tokenizer = build_tokenizer(seed)
    paths = {}
    for name in names:
        final = out / name
        tmp = out / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        model_seed = seed + TINY_MODELS.index(name)
        if name in POLICY_NAMES:
            _BUILDERS[name](tmp, tokenizer, model_seed, warmup_steps)
        else:
            _BUILDERS[name](tmp, tokenizer, model_seed)
        _write_json(tmp / PROVENANCE_FILE, _provenance(name, seed, warmup_steps))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        log.info("tiny %s written to %s", name, final)
        paths[name] = final
    return paths


def read_provenance(folder: str | Path) -> dict | None:
    """How a tiny model was built (its `tiny.json`), or None for a folder without one (e.g. a real checkpoint)."""
    path = Path(folder) / PROVENANCE_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def stale_layout(folder: str | Path) -> int | None:
    """The layout of a tiny folder an older checkout wrote (1 before tiny.json recorded one), else None: a current
    tiny folder, or a folder that is not a tiny model (no tiny.json: a real checkpoint, never rebuilt)."""
    built = read_provenance(folder)
    layout = None if built is None else built.get("layout", 1)
    return None if layout == TINY_LAYOUT else layout


def ensure_tiny_models(
    out: str | Path, seed: int = 0, warmup_steps: int = 0, names: tuple[str, ...] = TINY_MODELS
) -> dict[str, Path]:
    """Build those of the tiny models `names` that are missing under `out` (used by the demo), and rebuild those an
    older checkout wrote (with their recorded seed and warm-up), saying so."""
    out = Path(out)
    missing = [n for n in names if not (out / n / "config.json").is_file()]
    if missing:
        make_tiny_models(out, seed=seed, only=missing, warmup_steps=warmup_steps)
    for name in names:
        layout = stale_layout(out / name)
        if layout is not None:
            built = read_provenance(out / name)
            log.warning("tiny model %s was written by an older audio-thinker (layout %s, now %d): rebuilding it",
                        out / name, layout, TINY_LAYOUT)  # fmt: skip
            make_tiny_models(out, built["seed"], only=[name], warmup_steps=built["warmup_steps"], overwrite=True)
    return {n: out / n for n in names}
