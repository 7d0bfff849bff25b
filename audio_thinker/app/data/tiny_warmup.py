"""The tiny policies' supervised format warm-up: a few hundred AdamW steps of teacher forcing on well-formed
think and no_think responses to synthetic questions (random choices, so the model learns the format, not the
answers; docs/tiny-models.md). It runs the real prompt path: instruction template, chat, audio encoding."""

from __future__ import annotations

import hashlib
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import numpy as np
import torch
from transformers.modeling_outputs import BaseModelOutput

from audio_thinker.app.data.synthetic import write_synthetic_dataset
from audio_thinker.core.data import load_dataset
from audio_thinker.core.encoding import PromptEncoder
from audio_thinker.core.chat import render_chat
from audio_thinker.core.log import get_logger
from audio_thinker.core.protocol import build_instruction
from trainer.logprobs import CompletionLogprobs, PolicyBatch, collate

log = get_logger(__name__)

# Short reasonings for the think targets: few, made of words the tokenizer knows whole and that no synthetic
# choice uses, so that the tiny model can tell from the content alone whether it is inside <think> or <answer>.
THINK_SENTENCES = ("I listen carefully.", "this needs thinking.", "listen carefully then decide.")
WARMUP_QUESTIONS = 24  # synthetic questions (all six types, all difficulties) the targets are built on
WARMUP_BATCH = 8  # sequences per step
WARMUP_LR = 1e-2


def warmup_target(rng: np.random.Generator, choices: list[str]) -> str:
    """A well-formed response with a random choice: think + answer or answer alone, half and half."""
    answer = f"<answer>{choices[int(rng.integers(len(choices)))]}</answer>"
    if rng.random() < 0.5:
        return f"<think>{THINK_SENTENCES[int(rng.integers(len(THINK_SENTENCES)))]}</think>{answer}<|im_end|>"
    return answer + "<|im_end|>"


@contextmanager
def _encode_each_clip_once(encoder: torch.nn.Module) -> Iterator[None]:
    """Let a frozen Qwen2-Audio encoder compute each clip's output once and reuse it afterwards.

    Its forward always covers a 30 s window (input [B, mel, 3000]): two thirds of a warm-up step's time for the
    ~24 clips that the warm-up repeats. Rows are keyed by their feature bytes, so a cached output is exactly
    what the encoder would return for that row.
    """

    forward, cache = encoder.forward, {}

    def cached(input_features: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs) -> BaseModelOutput:
        keys = [hashlib.sha256(row.numpy().tobytes()).digest() for row in input_features]
        new = [i for i, key in enumerate(keys) if key not in cache]
        if new:
            mask = None if attention_mask is None else attention_mask[new]
            for i, hidden in zip(new, forward(input_features[new], attention_mask=mask, **kwargs).last_hidden_state):
                cache[keys[i]] = hidden
        return BaseModelOutput(last_hidden_state=torch.stack([cache[key] for key in keys]))

    encoder.forward = cached
    try:
        yield
    finally:
        del encoder.forward  # back to the class's forward


def format_warmup(
    model: torch.nn.Module, family: str, tokenizer, feature_extractor, steps: int, seed: int
) -> list[float]:
    """Train `model` in place for `steps` AdamW steps of teacher forcing on well-formed responses; returns the
    mean completion-token loss of each step.

    Prompts go through the same path as a rollout (synthetic clips, adaptive instruction, `render_chat`,
    `PromptEncoder`), and the loss covers only the completion tokens (`CompletionLogprobs` runs the LM head only
    there), so the model learns what to write after `<|im_start|>assistant`, whatever the audio.
    """

    start = time.perf_counter()
    encoder = PromptEncoder(tokenizer, feature_extractor)
    with tempfile.TemporaryDirectory(prefix="tiny-warmup-") as tmp:
        data = load_dataset(write_synthetic_dataset(tmp, n=WARMUP_QUESTIONS, seed=seed, split="warmup"), "avqa", tmp)
        prompts = [
            encoder.encode(render_chat(family, build_instruction(q.question, q.choices, "adaptive")), data.audio(i))
            for i, q in enumerate(data)
        ]
    rng = np.random.default_rng(seed)
    module = CompletionLogprobs(model)
    # The format lives on the language side: the audio encoder keeps its init (and its backward pass, the
    # costly part of a step for Qwen2-Audio's 30 s window, is skipped).
    trained = [p for name, p in model.named_parameters() if p.requires_grad and "audio_tower." not in name]
    flags = {p: p.requires_grad for p in model.parameters()}
    model.requires_grad_(False)
    for p in trained:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(trained, lr=WARMUP_LR, weight_decay=0.0)
    # Linear decay to 0: the last steps average over many batches instead of following the latest one (with a
    # constant lr the think/answer balance of the first token drifts with the last few batches).
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 - step / steps)
    losses = []
    # Qwen2.5-Omni's encoder takes the clips concatenated and only their real frames: it is cheap as it is.
    cache = _encode_each_clip_once(model.model.audio_tower) if family == "qwen2_audio" else nullcontext()
    # One thread: the matrices are tiny, the result does not depend on the machine's core count, and on shared
    # cores a second OpenMP thread made the warm-up 6-10x slower (measured with other tests running).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with cache:
            for _ in range(steps):
                index = [int(i) for i in rng.integers(len(prompts), size=WARMUP_BATCH)]
                texts = [warmup_target(rng, data[i].choices) for i in index]
                targets = [tokenizer.encode(t, add_special_tokens=False) for t in texts]
                batch = PolicyBatch(prompts=prompts, prompt_index=index, completion_ids=targets)
                inputs = collate(batch, range(len(batch)))
                mask = inputs.pop("mask")
                loss = -(module(**inputs, temperature=1.0) * mask).sum() / mask.sum()  # the untempered NLL
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
                losses.append(loss.item())
    finally:
        torch.set_num_threads(threads)
        for p, flag in flags.items():
            p.requires_grad_(flag)
    if losses:
        log.info(
            "tiny %s format warm-up: %d steps, loss %.3f -> %.3f, %.1fs",
            family,
            steps,
            losses[0],
            float(np.mean(losses[-10:])),
            time.perf_counter() - start,
        )
    return losses


# The Whisper-style audio encoder both tiny policies share (128 mel bins, 30 s = 1500 positions).
