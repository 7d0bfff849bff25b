"""A synthetic run directory in the driver's layout (config.yaml, metrics.jsonl, rollouts/, audio clips), for
the dashboard's benchmark, unit tests and screenshots without training anything."""

from __future__ import annotations

import json
import math
import random
import wave
from pathlib import Path

import yaml

DIFFICULTIES = ("easy", "medium", "hard")
CATEGORIES = ("sound", "music", "speech")


def write_wav(path: Path, seconds: float = 0.5, rate: int = 16000, freq: float = 440.0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    n = int(seconds * rate)
    frames = b"".join(
        int(8000 * math.sin(2 * math.pi * freq * i / rate)).to_bytes(2, "little", signed=True) for i in range(n)
    )
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(frames)


def metrics_row(step: int, total: int, rng: random.Random) -> dict:
    progress = step / total
    think = 0.7 - 0.4 * progress + rng.uniform(-0.05, 0.05)
    s = 1 - progress
    n = 128
    n_think = int(n * think)
    n_invalid = rng.randint(0, 3)
    return {
        "step": step,
        "think_rate": think,
        "gamma_think": math.exp(-think * s),
        "gamma_no_think": math.exp(-(1 - think) * s),
        "reward/total": 0.5 + 0.8 * progress + rng.gauss(0, 0.05),
        "reward/accuracy": 0.4 + 0.4 * progress + rng.gauss(0, 0.03),
        "reward/format": 0.9 + rng.uniform(0, 0.1),
        "reward/consistency": 0.3 + rng.gauss(0, 0.05),
        "reward/think": 0.2 + rng.gauss(0, 0.05),
        "advantage/abs_mean": 0.7 + rng.gauss(0, 0.05),
        "reward/think_group_std": 0.02 + rng.uniform(0, 0.01),
        "acc/overall": 0.4 + 0.4 * progress,
        "acc/think": 0.45 + 0.4 * progress,
        "acc/no_think": 0.35 + 0.4 * progress,
        "count/think": n_think,
        "count/no_think": n - n_think - n_invalid,
        "count/invalid": n_invalid,
        "response_length/mean": 300 - 150 * progress + rng.gauss(0, 10),
        "response_length/max": 1024,
        "response_length/clip_ratio": max(0.0, 0.05 - 0.04 * progress + rng.gauss(0, 0.01)),
        "no_think_rate/easy": min(1.0, 0.3 + 0.6 * progress),
        "no_think_rate/medium": 0.2 + 0.4 * progress,
        "no_think_rate/hard": 0.1 + 0.1 * progress,
        "actor/loss": rng.gauss(0, 0.01),
        "actor/kl": 0.001 * step**0.5,
        "actor/clip_frac": rng.uniform(0, 0.05),
        "actor/grad_norm": abs(rng.gauss(0.5, 0.2)),
        "actor/lr": 1e-6,
        "timing_s/gen": 20 + rng.uniform(0, 5),
        "timing_s/judge": 3 + rng.uniform(0, 2),
        "timing_s/old_logprob": 2 + rng.uniform(0, 1),
        "timing_s/ref": 2 + rng.uniform(0, 1),
        "timing_s/train": 15 + rng.uniform(0, 3),
        "timing_s/sync": 1 + rng.uniform(0, 0.5),
        "timing_s/step": 45 + rng.uniform(0, 8),
        "sync/bytes": 1.5e10,
        "sync/load_s": 0.8,
        "judge/items": rng.randint(40, 90),
    }


def sample_row(step: int, q: int, j: int, rng: random.Random, audio: str) -> dict:
    mode = rng.choices(["think", "no_think", "invalid"], [0.5, 0.45, 0.05])[0]
    choices = [f"choice {k} of question {q}" for k in range(4)]
    answer = choices[q % 4]
    picked = rng.choice(choices) if mode != "invalid" else None
    correct = picked == answer
    think = f"The clip of question {q} sounds like {picked}. " * rng.randint(1, 6) if mode == "think" else None
    total = float(correct) + (0.5 if mode != "invalid" else 0.0) + rng.uniform(-0.2, 0.2)
    body = f"<think>{think}</think>" if think else ""
    return {
        "step": step,
        "group": f"q{q:04d}",
        "sample": j,
        "question_id": f"q{q:04d}",
        "audio_path": audio,
        "difficulty": DIFFICULTIES[q % 3],
        "category": CATEGORIES[q % 3],
        "question": f"What is heard in clip {q}?",
        "choices": choices,
        "answer": answer,
        "letters": False,
        "response": body + (f"<answer>{picked}</answer>" if picked else "I am not sure"),
        "num_tokens": rng.randint(10, 1024),
        "finish_reason": rng.choice(["stop"] * 9 + ["length"]),
        "mode": mode,
        "think": think,
        "answer_text": picked,
        "correct": correct,
        "consistency": int(rng.random() > 0.3) if think else None,
        "consistency_prob": rng.random() if think else None,
        "think_quality": rng.random() if think else None,
        "format": 1.0 if mode != "invalid" else 0.0,
        "accuracy": float(correct),
        "consistency_reward": rng.uniform(0, 0.5) if think else 0.0,
        "think_reward": rng.uniform(0, 0.5) if think else 0.0,
        "total": total,
        "advantage": rng.gauss(0, 1),
    }


def write_synthetic_run(
    path: str | Path,
    steps: int = 20,
    total_steps: int | None = None,
    questions: int = 16,
    group: int = 8,
    dump_every: int = 1,
    seed: int = 0,
) -> Path:
    """A run directory at `path`, with its audio under `path`/audio (the run's data.audio_root)."""
    path = Path(path)
    rng = random.Random(seed)
    audio_root = path / "audio"
    for q in range(questions):
        write_wav(audio_root / f"clip_{q:04d}.wav", freq=220.0 * (1 + q % 5))
    total = total_steps or steps
    config = {
        "run": {"name": path.name, "total_steps": total, "questions_per_step": questions},
        "model": {"family": "qwen2_audio", "policy_path": "/models/Qwen2-Audio-7B-Instruct"},
        "data": {"audio_root": str(audio_root)},
        "rollout": {"samples_per_question": group},
        "reward": {"variant": "atar_cr_tr"},
    }
    (path / "rollouts").mkdir(parents=True, exist_ok=True)
    (path / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    with (path / "metrics.jsonl").open("w") as f:
        for step in range(1, steps + 1):
            f.write(json.dumps(metrics_row(step, total, rng), sort_keys=True) + "\n")
    for step in range(1, steps + 1):
        if step % dump_every and step != steps:
            continue
        rows = [
            sample_row(step, q, j, rng, str(audio_root / f"clip_{q:04d}.wav"))
            for q in range(questions)
            for j in range(group)
        ]
        (path / "rollouts" / f"step_{step:06d}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
