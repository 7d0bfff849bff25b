"""One-call GPU check (bench/gpu_check.sh): the Qwen2-Audio-7B-shaped policy and the Qwen3-8B-shaped judge with
random bf16 weights (no download), through our own code paths: the trainer's log-prob + GRPO loss forward and
backward for one micro-batch with and without gradient checkpointing, generation with the transformers engine,
the judge's transformers backend. Prints peak memory and tokens/s next to the planner's estimates.

Needs PyTorch, transformers and this package's own dependencies; Ray, DeepSpeed and vLLM are not used (the
planner's ZeRO model-states term needs DeepSpeed and is shown as n/a without it). `--tiny` runs the same steps on
the tiny models on CPU (what the test suite can afford).

The trainer part is plain PyTorch on one GPU (no ZeRO): its peak is weights + bf16 gradients + activations, so the
estimate it is compared with is the same sum.
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from audio_thinker.app import plan as planner
from audio_thinker.app.data.tiny import (
    QWEN2_AUDIO_CHAT_TEMPLATE,
    _feature_extractor,
    _generation_config,
    build_tokenizer,
    make_tiny_models,
)
from audio_thinker.core.chat import render_chat
from audio_thinker.core.families import model_class
from audio_thinker.core.model_meta import folder_shape, known_config
from audio_thinker.core.model_shapes import ModelShape
from audio_thinker.core.models import load_policy, save_checkpoint_weights
from audio_thinker.core.presets import load_config
from rollout.engine import GenerationRequest, SamplingConfig
from rollout.hf_engine import TransformersEngine
from trainer.grpo import grpo_loss
from trainer.logprobs import CompletionLogprobs, PolicyBatch, collate
from trainer.memory import BF16, training_activations

FAMILY = "qwen2_audio"
GB = 1e9


@contextmanager
def bf16_default():
    """Build in bf16 directly (an fp32 copy of 8B parameters first would cost 32 GB and time)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def write_policy(out: Path, device: torch.device) -> Path:
    """A Qwen2-Audio-7B-Instruct-shaped folder: random bf16 weights (built on the GPU), the tiny tokenizer."""
    from transformers import Qwen2AudioProcessor

    tokenizer = build_tokenizer(0)
    config = known_config("Qwen2-Audio-7B-Instruct")
    config.audio_token_index = tokenizer.convert_tokens_to_ids("<|AUDIO|>")
    config.architectures = ["Qwen2AudioForConditionalGeneration"]
    with torch.device(device), bf16_default():
        model = model_class(FAMILY)(config)
    out.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(out)
    save_checkpoint_weights(model, FAMILY, out)
    (out / "generation_config.json").write_text(json.dumps(_generation_config(tokenizer)))
    Qwen2AudioProcessor(
        feature_extractor=_feature_extractor(), tokenizer=tokenizer, chat_template=QWEN2_AUDIO_CHAT_TEMPLATE
    ).save_pretrained(out)
    del model
    return out


def write_judge(out: Path, device: torch.device) -> Path:
    from transformers import Qwen3ForCausalLM

    tokenizer = build_tokenizer(0)
    with torch.device(device), bf16_default():
        model = Qwen3ForCausalLM(known_config("Qwen3-8B"))
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    del model
    return out


def peak_reset(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else float("nan")


def policy_batch(folder: Path, micro: int, completion: int, seconds: float) -> tuple[PolicyBatch, int]:
    from audio_thinker.core.encoding import PromptEncoder
    from audio_thinker.core.models import load_feature_extractor, load_tokenizer

    tokenizer = load_tokenizer(folder)
    encoder = PromptEncoder(tokenizer, load_feature_extractor(folder))
    audio = (np.random.default_rng(0).standard_normal(int(16000 * seconds)) * 0.1).astype(np.float32)
    prompt = encoder.encode(render_chat(FAMILY, "Which sound do you hear? Choices: a dog, a cat, rain."), audio)
    ids = np.random.default_rng(1).integers(10, len(tokenizer), size=(micro, completion)).tolist()
    batch = PolicyBatch([prompt], [0] * micro, ids, advantages=[1.0] * micro)
    return batch, len(prompt.input_ids) + completion


def train_micro_batch(folder: Path, device: torch.device, micro: int, completion: int, seconds: float, ckpt: bool):
    """Peak memory and seconds of one micro-batch's log-prob + GRPO loss forward and backward."""
    policy = load_policy(folder, FAMILY, "bfloat16" if device.type == "cuda" else "float32", device)
    policy.train()
    if ckpt:
        policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    module = CompletionLogprobs(policy)
    batch, seq = policy_batch(folder, micro, completion, seconds)
    inputs = collate(batch, list(range(micro)), device)
    mask = inputs.pop("mask")
    peak_reset(device)
    start = time.perf_counter()
    logp = module(**inputs, temperature=1.0)
    loss, _ = grpo_loss(logp, logp.detach(), logp.detach(), torch.ones(micro, device=device), mask)
    loss.backward()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds_taken = time.perf_counter() - start
    measured = peak(device)
    del policy, module, logp, loss, inputs
    return measured, seconds_taken, seq


def generate(folder: Path, device: torch.device, n: int, max_new: int, seconds: float) -> tuple[float, float]:
    engine = TransformersEngine(folder, FAMILY, "bfloat16" if device.type == "cuda" else "float32", str(device))
    audio = (np.random.default_rng(2).standard_normal(int(16000 * seconds)) * 0.1).astype(np.float32)
    request = GenerationRequest(render_chat(FAMILY, "What do you hear?"), audio, seed=0)
    peak_reset(device)
    start = time.perf_counter()
    (samples,) = engine.generate([request], SamplingConfig(n=n, max_new_tokens=max_new, logprobs=False))
    tokens = sum(len(s.token_ids) for s in samples)
    rate = tokens / (time.perf_counter() - start)
    measured = peak(device)
    engine.close()
    del engine
    return measured, rate


def judge(folder: Path, device: torch.device, batch: int, tokens: int) -> tuple[float, float]:
    from reward_server.backends import TransformersBackend

    backend = TransformersBackend(str(folder), device=str(device), dtype="bfloat16" if device.type == "cuda" else None)
    ids = np.random.default_rng(3).integers(10, 600, size=(batch, tokens)).tolist()
    peak_reset(device)
    start = time.perf_counter()
    backend.label_logprobs(ids)
    rate = batch * tokens / (time.perf_counter() - start)
    measured = peak(device)
    backend.close()
    del backend
    return measured, rate


def trainer_estimate(shape: ModelShape, micro: int, seq: int, completion: int, encoder_len: int, ckpt: bool) -> float:
    """Plain PyTorch on one GPU: bf16 weights + bf16 gradients + the planner's activations."""
    act = training_activations(shape.decoder, shape.vocab, micro, seq, completion, shape.audio_encoder, encoder_len)
    return 2 * shape.params * BF16 + (act.checkpointed if ckpt else act.full)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="the tiny models on CPU (a smoke run of every step)")
    parser.add_argument("--work", default=None, help="folder for the random-weight checkpoints (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the written checkpoints")
    args = parser.parse_args()

    config = load_config(None if args.tiny else "qwen2-audio-7b")
    device = torch.device("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
    if not args.tiny and device.type != "cuda":
        print("no GPU: run with --tiny for the CPU smoke run", file=sys.stderr)
        return 2
    work = Path(args.work or tempfile.mkdtemp(prefix="gpu-check-"))
    t0 = time.perf_counter()
    if args.tiny:
        paths = make_tiny_models(work, only=["qwen2_audio", "qwen3_judge"])
        policy_dir, judge_dir = paths["qwen2_audio"], paths["qwen3_judge"]
        seconds, completion, micro, n, judge_batch = 2.0, 16, 2, 2, 4
    else:
        policy_dir, judge_dir = write_policy(work / "policy", device), write_judge(work / "judge", device)
        seconds = config.data.max_audio_seconds
        completion = config.rollout.max_new_tokens
        micro = config.trainer.micro_batch_size
        n = config.rollout.samples_per_question
        judge_batch = config.judge.max_batch_size
    print(f"checkpoints written in {time.perf_counter() - t0:.0f}s to {work}")
    shape = folder_shape(policy_dir)
    judge_shape = folder_shape(judge_dir)
    encoder_len = int(seconds * planner.ENCODER_FRAMES_PER_SECOND)
    rows = []
    try:
        for ckpt in (False, True):
            measured, secs, seq = train_micro_batch(policy_dir, device, micro, completion, seconds, ckpt)
            estimate = trainer_estimate(shape, micro, seq, completion, encoder_len, ckpt)
            what = f"train micro-batch {micro} x {seq} tokens, checkpointing {'on' if ckpt else 'off'}"
            rows.append((what, measured, estimate, f"{micro * completion / secs:.0f} completion tokens/s fwd+bwd"))
        measured, rate = generate(policy_dir, device, n, completion, seconds)
        weights = shape.params * BF16
        rows.append((f"generate {n} x {completion} tokens (transformers)", measured, weights, f"{rate:.1f} tokens/s"))
        tokens = planner.JUDGE_PROMPT_TOKENS + completion
        measured, rate = judge(judge_dir, device, judge_batch, tokens)
        judge_config = load_config(None if args.tiny else "qwen2-audio-7b", ["judge.backend=transformers"])
        estimate = sum(t.bytes for t in planner.judge_terms(judge_config, judge_shape, 0)[0])
        what = f"judge {judge_batch} x {tokens} tokens (transformers)"
        rows.append((what, measured, estimate, f"{rate:.0f} tokens/s"))
    finally:
        if not args.keep and args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\n{'step':<58} {'peak GB':>8} {'planner GB':>11}  speed")
    for what, measured, estimate, speed in rows:
        print(f"{what:<58} {measured / GB:>8.1f} {estimate / GB:>11.1f}  {speed}")
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    print(f"\ntotal {time.perf_counter() - t0:.0f}s on {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
