"""What differs between the policy families (Qwen2-Audio, the Qwen2.5-Omni thinker, the Qwen3-Omni MoE thinker),
in one place: the chat layout, the audio placeholder and how many tokens a clip becomes, the checkpoint key
layout, the transformers classes, how a folder's `model_type` names its family and how each runs its audio
encoder. Every other module asks here instead of branching on the family name itself."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import transformers
from transformers.masking_utils import create_bidirectional_mask

from audio_thinker.core.fused_experts import is_fused_experts, split_experts
from audio_thinker.core.vocab import FAMILIES

AUDIO_TOKEN = "<|AUDIO|>"
AUDIO_BOS = "<|audio_bos|>"
AUDIO_EOS = "<|audio_eos|>"
SYSTEM_PROMPTS = {
    "qwen2_audio": "You are a helpful assistant.",
    "qwen2_5_omni": (
        "You are Qwen, a virtual human developed by the Qwen Team, Alibaba Group, capable of perceiving auditory "
        "and visual inputs, as well as generating text and speech."
    ),
    "qwen3_omni": None,  # Qwen3-Omni's chat template writes no system turn unless the messages hold one
}
# config.json model_type -> family (the released Omni checkpoints hold thinker + talker; we use the thinker).
MODEL_TYPES = {
    "qwen2_audio": "qwen2_audio",
    "qwen2_5_omni": "qwen2_5_omni",
    "qwen2_5_omni_thinker": "qwen2_5_omni",
    "qwen3_omni_moe": "qwen3_omni",
    "qwen3_omni_moe_thinker": "qwen3_omni",
}
# The model_type of a full Omni folder (thinker + talker + vocoder), whose thinker is the policy.
FULL_OMNI_TYPES = ("qwen2_5_omni", "qwen3_omni_moe")

# ---- Qwen3-Omni: its own audio placeholder and audio encoder (a conv2d front end over 100-frame chunks) ----
QWEN3_OMNI_CLIP = ("<|audio_start|>", "<|audio_pad|>", "<|audio_end|>")
QWEN3_OMNI_N_WINDOW = 50  # audio_config.n_window of the released checkpoint; vLLM's processor assumes it too
# -------------------------------------------------------------------------------------------------------------

# Each family's clip in a prompt: (start, audio placeholder, end); the placeholder is expanded to n copies.
AUDIO_CLIPS = {
    "qwen2_audio": (AUDIO_BOS, AUDIO_TOKEN, AUDIO_EOS),
    "qwen2_5_omni": (AUDIO_BOS, AUDIO_TOKEN, AUDIO_EOS),
    "qwen3_omni": QWEN3_OMNI_CLIP,
}
AUDIO_TOKENS = tuple(dict.fromkeys(clip[1] for clip in AUDIO_CLIPS.values()))  # every family's placeholder

# In-memory transformers keys -> checkpoint keys. Qwen2-Audio checkpoints (the hub's and ours) use the layout
# vLLM reads; transformers 5.19 would save `language_model.model.model.*`, so we write the files ourselves.
_QWEN2_AUDIO_PREFIXES = (
    ("model.audio_tower.", "audio_tower."),
    ("model.multi_modal_projector.", "multi_modal_projector."),
    ("model.language_model.", "language_model.model."),
    ("lm_head.", "language_model.lm_head."),
)


def check_family(family: str) -> str:
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r} ({' or '.join(FAMILIES)})")
    return family


def whisper_audio_tokens(num_frames: int) -> int:
    """Audio tokens of a clip of `num_frames` mel frames for Qwen2-Audio and Qwen2.5-Omni: their Whisper
    encoder halves the frames with a stride-2 conv, then the projection pools pairs."""
    return (((num_frames - 1) // 2 + 1) - 2) // 2 + 1


def qwen3_omni_audio_tokens(num_frames: int) -> int:
    """Audio tokens of a clip of `num_frames` mel frames for Qwen3-Omni: each full chunk of 2 x n_window = 100
    frames gives 13 tokens (three stride-2 convs over 100 frames), the remainder r gives its three halvings
    (transformers' and vLLM's `_get_feat_extract_output_lengths`)."""
    chunk = 2 * QWEN3_OMNI_N_WINDOW
    rest = num_frames % chunk
    tokens = (((rest - 1) // 2 + 1 - 1) // 2 + 1 - 1) // 2 + 1
    return tokens + (num_frames // chunk) * 13


def prompt_audio_token(prompt: str) -> str:
    """The audio placeholder a prompt holds exactly once (each family has its own); ValueError otherwise."""
    counts = {t: prompt.count(t) for t in AUDIO_TOKENS}
    found = [t for t, n in counts.items() if n]
    if len(found) != 1 or counts[found[0]] != 1:
        listed = ", ".join(f"{n} {t}" for t, n in counts.items())
        allowed = " or ".join(AUDIO_TOKENS)
        raise ValueError(f"prompt must hold exactly one audio placeholder ({allowed}), found: {listed}")
    return found[0]


def audio_token_count(audio_token: str, num_frames: int) -> int:
    """How many copies of `audio_token` a clip of `num_frames` mel frames becomes: the placeholder names the
    encoder (`<|AUDIO|>`: the Whisper encoder of Qwen2-Audio and Qwen2.5-Omni; `<|audio_pad|>`: Qwen3-Omni's)."""
    if audio_token == QWEN3_OMNI_CLIP[1]:
        return qwen3_omni_audio_tokens(num_frames)
    return whisper_audio_tokens(num_frames)


def check_tensor_parallel(family: str, audio_heads: int | None, tensor_parallel_size: int) -> None:
    """Qwen3-Omni's audio encoder is vLLM's own tensor-parallel module, which splits its attention heads over the
    TP ranks: `rollout.tensor_parallel_size` must divide them (20 in the released checkpoint: TP 1, 2, 4, 5, 10 or
    20, not 8). vLLM before the fix of vllm-project/vllm#50858 fails at start-up deep in the encoder, and later ones
    keep the encoder whole on every rank; here it is one line naming the key. The Whisper encoders of the other
    families are transformers modules that vLLM does not split."""
    if family != "qwen3_omni" or audio_heads is None or audio_heads % tensor_parallel_size == 0:
        return
    divisors = [d for d in range(1, audio_heads + 1) if audio_heads % d == 0]
    raise ValueError(
        f"rollout.tensor_parallel_size={tensor_parallel_size} does not divide the {audio_heads} attention heads of "
        f"the Qwen3-Omni audio encoder (audio_config.encoder_attention_heads), which vLLM splits over the "
        f"tensor-parallel ranks: use one of {', '.join(map(str, divisors))}"
    )


def detect_family(model: str | Path) -> str:
    """The family of a Hugging Face folder, from its config.json."""
    config = Path(model) / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"{model} is not a Hugging Face model folder (no config.json)")
    model_type = json.loads(config.read_text()).get("model_type")
    if model_type not in MODEL_TYPES:
        raise ValueError(f"{config}: model_type {model_type!r} is not a Qwen2-Audio, Qwen2.5-Omni or Qwen3-Omni model")
    return MODEL_TYPES[model_type]


def render_chat(family: str, instruction: str, system: str | None = None) -> str:
    """One user turn holding one clip and the instruction, ready for the assistant's reply."""
    check_family(family)
    system = SYSTEM_PROMPTS[family] if system is None else system
    clip = "".join(AUDIO_CLIPS[family])
    user = f"Audio 1: {clip}\n{instruction}" if family == "qwen2_audio" else f"{clip}{instruction}"
    head = "" if system is None else f"<|im_start|>system\n{system}<|im_end|>\n"
    return f"{head}<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"


# Where each family keeps its language model's decoder layers and its audio encoder (in-memory names).
_LANGUAGE_MODEL = {"qwen2_audio": "model.language_model", "qwen2_5_omni": "model", "qwen3_omni": "model"}
_AUDIO_TOWER = {"qwen2_audio": "model.audio_tower", "qwen2_5_omni": "audio_tower", "qwen3_omni": "audio_tower"}


def language_model_prefix(family: str) -> str:
    """The module name of the language model (its decoder layers are `<prefix>.layers.N`)."""
    return _LANGUAGE_MODEL[check_family(family)]


def audio_tower_prefix(family: str) -> str:
    """The module name of the audio encoder."""
    return _AUDIO_TOWER[check_family(family)]


def checkpoint_key(family: str, key: str) -> str:
    """In-memory key -> checkpoint key, for the keys that map one to one (`checkpoint_items` handles all)."""
    if check_family(family) in ("qwen2_5_omni", "qwen3_omni"):
        if is_fused_experts(key):
            raise KeyError(f"{key!r} holds all experts of a layer: it is several checkpoint tensors (checkpoint_items)")
        return key
    for src, dst in _QWEN2_AUDIO_PREFIXES:
        if key.startswith(src):
            return dst + key[len(src) :]
    raise KeyError(f"unexpected Qwen2-Audio parameter {key!r}")


def model_key(family: str, key: str) -> str:
    """Checkpoint key -> in-memory transformers key (inverse of `checkpoint_key`)."""
    if check_family(family) in ("qwen2_5_omni", "qwen3_omni"):
        return key
    for src, dst in _QWEN2_AUDIO_PREFIXES:
        if key.startswith(dst):
            return src + key[len(dst) :]
    raise KeyError(f"unexpected Qwen2-Audio checkpoint key {key!r}")


def checkpoint_items(family: str, key: str, tensor: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """In-memory (key, tensor) -> its checkpoint (key, tensor) pairs: one, or for Qwen3-Omni's fused experts
    one per expert and projection (views of `tensor`, core/fused_experts.py)."""
    if family == "qwen3_omni" and is_fused_experts(key):
        return split_experts(key, tensor)
    return [(checkpoint_key(family, key), tensor)]


def model_class(family: str, model_type: str | None = None):
    """The transformers class that loads a folder of this family (and `model_type`, for the full Omni)."""
    if check_family(family) == "qwen2_audio":
        return transformers.Qwen2AudioForConditionalGeneration
    if family == "qwen3_omni":  # a full folder too: the thinker class reads its `thinker.*` weights alone
        return transformers.Qwen3OmniMoeThinkerForConditionalGeneration
    if model_type == "qwen2_5_omni":
        return transformers.Qwen2_5OmniForConditionalGeneration
    return transformers.Qwen2_5OmniThinkerForConditionalGeneration


def policy_family(policy) -> str:
    """The family of a loaded policy model, from its config's `model_type`."""
    model_type = policy.config.model_type
    if model_type not in MODEL_TYPES:
        raise ValueError(f"model_type {model_type!r} is not a Qwen2-Audio, Qwen2.5-Omni or Qwen3-Omni model")
    return MODEL_TYPES[model_type]


def audio_embeddings(policy, input_features: torch.Tensor, feature_attention_mask: torch.Tensor) -> list[torch.Tensor]:
    """Per clip, the embeddings its audio tokens get in the language model ([n_k, hidden]): the audio encoder
    (and Qwen2-Audio's projector) run once on the stacked clips `input_features` [C, mel, frames].

    The same computation as inside each family's forward (transformers 5.19), factored out so that a clip
    shared by G samples is encoded once (`merge_audio_embeddings` then places it in each sample's row).
    """
    dtype = next(policy.parameters()).dtype
    input_features = input_features.to(dtype)
    family = policy_family(policy)
    if family == "qwen2_5_omni":
        hidden = policy.get_audio_features(input_features, feature_attention_mask, return_dict=True).last_hidden_state
        _, lengths = policy.audio_tower._get_feat_extract_output_lengths(feature_attention_mask.sum(-1))
        return list(hidden.split(lengths.tolist()))
    if family == "qwen3_omni":  # the encoder takes the clips' real frames only, concatenated
        return _qwen3_omni_audio_embeddings(policy, input_features, feature_attention_mask)
    model = policy.model
    tower = model.audio_tower
    feat_lengths, lengths = tower._get_feat_extract_output_lengths(feature_attention_mask.sum(-1))
    num_clips, _, frames = input_features.shape
    max_len = (frames - 2) // 2 + 1
    valid = (torch.arange(max_len, device=feat_lengths.device)[None, :] < feat_lengths[:, None]).long()
    mask = create_bidirectional_mask(
        config=tower.config,
        inputs_embeds=torch.zeros(num_clips, max_len, 1, dtype=dtype, device=input_features.device),
        attention_mask=valid,
    )
    hidden = model.multi_modal_projector(tower(input_features, attention_mask=mask).last_hidden_state)
    return [hidden[k, :n] for k, n in enumerate(lengths.tolist())]


def _qwen3_omni_audio_embeddings(policy, features: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
    """Qwen3-Omni's encoder pads every 100-frame chunk of a batch to the batch's longest chunk before its convs,
    and sizes its attention windows by it, so a clip shorter than 1 s encodes differently next to a longer clip
    than alone (transformers and vLLM alike). Every batch is encoded here as one holding a full chunk (what any
    batch with a clip of 1 s or more is): a batch of short clips gets a silent 100-frame clip, whose output is
    dropped. A clip's embeddings then do not depend on the micro-batch it is in."""
    frames = mask.sum(-1)
    full = 2 * QWEN3_OMNI_N_WINDOW
    short = bool((frames < full).all())
    if short:
        features = torch.cat([features, torch.zeros_like(features[:1])])
        mask = torch.cat([mask, (torch.arange(mask.shape[-1], device=mask.device) < full).to(mask.dtype)[None]])
    hidden = policy.get_audio_features(features, mask, return_dict=True).last_hidden_state
    clips = list(hidden.split([qwen3_omni_audio_tokens(int(n)) for n in mask.sum(-1)]))
    return clips[:-1] if short else clips


def merge_audio_embeddings(
    policy, input_ids: torch.Tensor, clips: list[torch.Tensor], clip_index: torch.Tensor
) -> torch.Tensor:
    """The input embeddings [B, L, hidden] of `input_ids` with row r's audio placeholders filled by clip
    `clip_index[r]` of `clips` (a clip used by several rows gets the sum of their gradients)."""
    embeds = policy.get_input_embeddings()(input_ids)
    placeholders = (input_ids == policy.config.audio_token_id)[..., None]
    audio = torch.cat([clips[c] for c in clip_index.tolist()]).to(embeds.dtype)
    if placeholders.sum() != audio.shape[0]:
        raise ValueError(f"{int(placeholders.sum())} audio placeholders for {audio.shape[0]} audio embeddings")
    return embeds.masked_scatter(placeholders, audio)


def forward_with_audio_embeddings(
    policy,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    embeds: torch.Tensor,
    row_feature_mask: torch.Tensor,
    **kwargs,
):
    """The policy's forward on embeddings that already hold the audio (`merge_audio_embeddings`).

    Every family takes the same call: Qwen2-Audio uses only the embeddings (positions from the attention
    mask); the Omni thinkers build their rope index from the ids and each row's feature mask, as with raw
    features (for an audio-only Qwen3-Omni prompt that index is the plain position). `kwargs` go to the
    forward as they are (e.g. `output_router_logits` for Qwen3-Omni's load-balancing loss).
    """
    return policy(
        input_ids=input_ids,
        inputs_embeds=embeds,
        attention_mask=attention_mask,
        feature_attention_mask=row_feature_mask,
        use_cache=False,
        **kwargs,
    )
