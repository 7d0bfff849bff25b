"""The chat layout of the policy families (Qwen2-Audio, the Qwen2.5-Omni thinker, the Qwen3-Omni MoE thinker):
the audio placeholder of each and how many tokens a clip becomes, and how a folder's `config.json` names its
family; what prompts, evaluation input checks and the light commands need, without torch or transformers
(`core/families.py` holds the parts that touch a loaded model)."""

from __future__ import annotations

import json
from pathlib import Path

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
    try:
        model_type = json.loads(config.read_text(encoding="utf-8-sig")).get("model_type")
    except (ValueError, AttributeError) as exc:
        raise ValueError(f"{config} is not a JSON object ({exc})") from None
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
