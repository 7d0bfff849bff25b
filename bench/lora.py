"""LoRA vs full fine-tuning on the tiny Qwen2-Audio (not a test): trainable parameters, optimizer step time, the
time to produce the merged weights a sync sends, and the checkpoint's size on disk.

One in-process DeepSpeed rank (ZeRO-2, CPU, float32) per configuration, the same 8-sequence batch; the step time
is the median of `--steps` steps after one warm-up step. Also prints the trainable-parameter count of the
Qwen2-Audio-7B-Instruct architecture (its hub config.json's language-model shapes; the default audio config is
its Whisper-large-v3 encoder; on the meta device, nothing downloaded).

    python bench/lora.py [--steps 5] [--rank 8]

(from `make bench`, or with the repository on PYTHONPATH).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.update(MASTER_ADDR="127.0.0.1", RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path.cwd() / ".cache" / "torch_extensions"))

import numpy as np
import torch
from transformers import Qwen2AudioConfig

from audio_thinker.app.data.tiny import make_tiny_models
from audio_thinker.core.trainer_config import LoraConfig, TrainerConfig
from audio_thinker.core.encoding import PromptEncoder
from audio_thinker.core.chat import render_chat
from audio_thinker.core.models import load_feature_extractor, load_tokenizer
from rollout.weight_sync import free_port
from trainer.checkpoint import save_checkpoint
from trainer.engine import PolicyEngine, trainable_parameters
from trainer.logprobs import PolicyBatch

FAMILY = "qwen2_audio"
# https://huggingface.co/Qwen/Qwen2-Audio-7B-Instruct/blob/main/config.json, text_config
QWEN2_AUDIO_7B_TEXT = dict(
    model_type="qwen2", vocab_size=156032, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
    num_attention_heads=32, num_key_value_heads=32, tie_word_embeddings=False,
)  # fmt: skip


def make_batch(path: Path) -> PolicyBatch:
    enc = PromptEncoder(load_tokenizer(path), load_feature_extractor(path))
    rng = np.random.default_rng(0)
    prompts = [
        enc.encode(render_chat(FAMILY, f"Question {q}?"), (rng.standard_normal(16000) * 0.1).astype("f4"))
        for q in range(2)
    ]
    completions = [rng.integers(20, 600, size=24).tolist() for _ in range(8)]
    return PolicyBatch(prompts, [i // 4 for i in range(8)], completions, advantages=rng.standard_normal(8).tolist())


def measure(path: Path, cfg: TrainerConfig, steps: int, out: Path) -> dict:
    engine = PolicyEngine(path, FAMILY, cfg, steps + 1, "float32")
    batch = make_batch(path)
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        engine.train_step(batch, len(batch), 1, 1.0)
        times.append(time.perf_counter() - start)
    start = time.perf_counter()
    sent = sum(t.numel() * t.element_size() for _, t in engine.checkpoint_tensors())
    merge_s = time.perf_counter() - start
    folder = save_checkpoint(engine, out)
    ckpt = sum(f.stat().st_size for f in (folder / "deepspeed").iterdir())
    return {
        "trainable": trainable_parameters(path, FAMILY, cfg),
        "step_s": statistics.median(times[1:]),
        "merge_s": merge_s,
        "sent_mb": sent / 2**20,
        "ckpt_mb": ckpt / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rank", type=int, default=8)
    args = parser.parse_args()
    os.environ["MASTER_PORT"] = str(free_port())
    torch.set_num_threads(1)
    lora = LoraConfig(rank=args.rank, alpha=2 * args.rank)
    base = dict(num_cpus_per_rank=1, micro_batch_size=8, beta=0.0)
    configs = {
        "full fine-tuning": TrainerConfig(**base),
        f"LoRA r={args.rank}, audio encoder trains": TrainerConfig(**base, lora=lora),
        f"LoRA r={args.rank}, audio encoder frozen": TrainerConfig(**base, lora=lora, freeze_audio_encoder=True),
    }
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        path = make_tiny_models(tmp / "tiny", seed=0, only=[FAMILY])[FAMILY]
        rows = {name: measure(path, cfg, args.steps, tmp / str(i)) for i, (name, cfg) in enumerate(configs.items())}
        big = tmp / "qwen2-audio-7b"
        Qwen2AudioConfig(text_config=QWEN2_AUDIO_7B_TEXT).save_pretrained(big)
        counts = {name: trainable_parameters(big, FAMILY, cfg) for name, cfg in configs.items()}
    print(f"tiny Qwen2-Audio (CPU, 1 thread, 8 sequences x 24 tokens per step, median of {args.steps} steps)")
    print(f"| {'configuration':<36} | trainable | step s | merged weights s | sent MB | checkpoint MB | 7B trainable |")
    print(f"|{'-' * 38}|----------:|-------:|-----------------:|--------:|--------------:|-------------:|")
    for name, r in rows.items():
        print(
            f"| {name:<36} | {r['trainable']:>9,} | {r['step_s']:>6.3f} | {r['merge_s']:>16.4f} | {r['sent_mb']:>7.2f} "
            f"| {r['ckpt_mb']:>13.2f} | {counts[name] / 1e6:>10.1f} M |"
        )


if __name__ == "__main__":
    main()
