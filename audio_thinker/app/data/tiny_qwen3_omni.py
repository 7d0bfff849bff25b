"""What is particular to the tiny Qwen3-Omni thinker (`app/data/tiny.py` builds it with the other tiny models):
its config (mixture of experts: 4 experts, top-2 routing, head_dim 32 for vLLM's CPU attention), the shared tiny
tokenizer plus Qwen3-Omni's own placeholder tokens, and its chat template. It is saved as a thinker-only folder
(`model_type: qwen3_omni_moe_thinker`); docs/tiny-models.md.

Its audio encoder is Qwen3-Omni's (conv2d front end over 100-frame chunks, n_window 50 as released, which vLLM's
processor assumes); `save_pretrained` writes the experts one matrix per expert, the released checkpoints' layout.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

from transformers import Qwen3OmniMoeThinkerConfig

from audio_thinker.core.chat import QWEN3_OMNI_CLIP, QWEN3_OMNI_N_WINDOW

# Named placeholders of the released tokenizer (its tokenizer_config.json); the processors read them by name.
NAMED_TOKENS = {
    "audio_bos_token": QWEN3_OMNI_CLIP[0],
    "audio_token": QWEN3_OMNI_CLIP[1],
    "audio_eos_token": QWEN3_OMNI_CLIP[2],
    "image_token": "<|image_pad|>",
    "video_token": "<|video_pad|>",
    "vision_bos_token": "<|vision_start|>",
    "vision_eos_token": "<|vision_end|>",
}
NUM_EXPERTS = 4
EXPERTS_PER_TOKEN = 2

# Qwen3-Omni's template writes no system turn of its own; an audio part is <|audio_start|><|audio_pad|><|audio_end|>.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'audio' %}" + "".join(QWEN3_OMNI_CLIP) + ""
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def qwen3_omni_tokenizer(tokenizer):
    """A copy of the shared tiny tokenizer with Qwen3-Omni's placeholders added (special: never split)."""
    tok = copy.deepcopy(tokenizer)
    tok.add_special_tokens({"extra_special_tokens": list(NAMED_TOKENS.values())}, replace_extra_special_tokens=False)
    return tok


def tiny_config(tokenizer, text_config: dict, audio_encoder: dict) -> Qwen3OmniMoeThinkerConfig:
    """The tiny thinker's config: the other tiny policies' text sizes with a 4-expert MoE in every layer."""
    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in NAMED_TOKENS.items()}
    text = dict(
        text_config,
        moe_intermediate_size=64,
        num_experts=NUM_EXPERTS,
        num_experts_per_tok=EXPERTS_PER_TOKEN,
        norm_topk_prob=True,
        decoder_sparse_step=1,
        mlp_only_layers=[],
        # interleaved multimodal rope as released ([24, 20, 20] of head_dim 128), scaled to head_dim 32
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": [6, 5, 5],
                         "interleaved": True},
    )  # fmt: skip
    config = Qwen3OmniMoeThinkerConfig(
        audio_config={
            **audio_encoder, "output_dim": text["hidden_size"], "n_window": QWEN3_OMNI_N_WINDOW,
            "n_window_infer": 16 * QWEN3_OMNI_N_WINDOW, "downsample_hidden_size": 32, "conv_chunksize": 500,
        },
        vision_config=dict(
            depth=1, hidden_size=32, intermediate_size=64, num_heads=1, out_hidden_size=text["hidden_size"],
            patch_size=16, spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=16,
            deepstack_visual_indexes=[0],
            # read by vLLM's vision encoder, written in the released config: (image_size / patch_size)^2 positions
            image_size=64, apply_vit_abs_pos_embed=True,
        ),
        text_config=text,
        audio_token_id=ids["audio_token"],
        image_token_id=ids["image_token"],
        video_token_id=ids["video_token"],
        audio_start_token_id=ids["audio_bos_token"],
        user_token_id=tokenizer.convert_tokens_to_ids("user") if "user" in tokenizer.get_vocab() else 0,
    )  # fmt: skip
    # The released config carries these too; the rope-index code reads them.
    config.vision_start_token_id = ids["vision_bos_token"]
    config.vision_end_token_id = ids["vision_eos_token"]
    config.audio_end_token_id = ids["audio_eos_token"]
    return config


def save_tokenizer(tokenizer, out: Path, chat_template: str, named_tokens: dict[str, str]) -> None:
    """The tokenizer with its chat template, and its placeholders named in tokenizer_config.json as the released
    Omni checkpoints name them (the Omni processors read `tokenizer.audio_token` and the like)."""
    tokenizer.chat_template = chat_template
    tokenizer.save_pretrained(out)
    tokenizer.chat_template = None
    settings = out / "tokenizer_config.json"
    settings.write_text(json.dumps({**json.loads(settings.read_text()), **named_tokens}, indent=2) + "\n")
