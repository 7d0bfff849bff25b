"""The tiny-model smoke path behind `audio-thinker demo`: every piece that does not need a cluster, end to end.

Builds the tiny models and a synthetic set if missing, renders adaptive-think prompts, samples 8 responses
per question from the tiny Qwen2-Audio with transformers, parses them and scores them with the ATAR rewards
(no judge needed). Writes `smoke/rollouts.jsonl` and prints where everything is.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from audio_thinker.data import load_dataset
from audio_thinker.log import get_logger
from audio_thinker.models import load_feature_extractor, load_policy, load_tokenizer
from audio_thinker.progress import progress
from audio_thinker.protocol import build_instruction, is_correct, parse_response
from audio_thinker.rewards import SampleVerdict, compute_rewards
from audio_thinker.synthetic import write_synthetic_dataset
from audio_thinker.tiny import ensure_tiny_models
from rollout.prompts import PromptEncoder, render_chat

log = get_logger(__name__)

QUESTIONS = 4
SAMPLES = 8


def run_smoke(out: str | Path = "artifacts", seed: int = 0) -> int:
    out = Path(out)
    start = time.perf_counter()
    models = ensure_tiny_models(out / "tiny", seed=seed)
    manifest = out / "synthetic" / "smoke.jsonl"
    if not manifest.is_file():
        write_synthetic_dataset(out / "synthetic", n=QUESTIONS, seed=seed, split="smoke")
    data = load_dataset(manifest, "avqa", audio_root=out / "synthetic")

    path = models["qwen2_audio"]
    model = load_policy(path, "qwen2_audio")
    encoder = PromptEncoder(load_tokenizer(path), load_feature_extractor(path))
    torch.manual_seed(seed)

    rows, verdicts = [], []
    for i in progress(range(len(data)), desc="smoke rollouts", unit="question"):
        item = data[i]
        prompt = render_chat("qwen2_audio", build_instruction(item.question, item.choices, "adaptive"))
        enc = encoder.encode(prompt, data.audio(i))
        with torch.no_grad():
            ids = model.generate(
                input_ids=torch.tensor([enc.input_ids]),
                attention_mask=torch.ones(1, len(enc.input_ids), dtype=torch.long),
                input_features=torch.from_numpy(enc.input_features)[None],
                feature_attention_mask=torch.from_numpy(enc.feature_attention_mask)[None],
                do_sample=True, temperature=1.0, max_new_tokens=32, num_return_sequences=SAMPLES,
            )
        for completion in encoder.tokenizer.batch_decode(ids[:, len(enc.input_ids):], skip_special_tokens=True):
            parsed = parse_response(completion)
            correct = parsed.mode != "invalid" and is_correct(parsed, item.choices, item.answer)
            verdicts.append(SampleVerdict(mode=parsed.mode, correct=correct, group=item.id))
            rows.append({"question_id": item.id, "difficulty": item.difficulty, "completion": completion,
                         "mode": parsed.mode, "answer": parsed.answer, "correct": correct})

    batch = compute_rewards(verdicts, step=0, total_steps=1, variant="atar")
    for row, reward in zip(rows, batch.samples):
        row.update(format=reward.format, accuracy=reward.accuracy, total=reward.total, advantage=reward.advantage)
    dump = out / "smoke" / "rollouts.jsonl"
    dump.parent.mkdir(parents=True, exist_ok=True)
    dump.write_text("".join(json.dumps(r) + "\n" for r in rows))

    modes = [r["mode"] for r in rows]
    print(f"smoke: {len(data)} questions x {SAMPLES} samples from the tiny Qwen2-Audio in {time.perf_counter() - start:.1f}s")
    print(f"  modes: think={modes.count('think')} no_think={modes.count('no_think')} invalid={modes.count('invalid')}"
          f" (a random-init model mostly writes invalid text; RL teaches the format)")
    print(f"  think_rate={batch.think_rate:.2f} gamma_think={batch.gamma_think:.3f} gamma_no_think={batch.gamma_no_think:.3f}")
    print(f"  tiny models: {out / 'tiny'}")
    print(f"  synthetic data: {manifest}")
    print(f"  rollouts with every reward term: {dump}")
    return 0
