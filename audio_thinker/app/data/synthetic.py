"""A synthetic audio QA set whose answers are fixed by the signal itself, for the CPU demo and the tests.

Six question types, two per category: sound (how many beeps, which half is louder), music (which of four
tones is highest, what rhythm), speech-like (how many syllables in a voiced buzz shaped by vowel formants,
does the intonation rise or fall). Difficulty changes the signal, not the wording: lower SNR, closer
alternatives (semitone gap, loudness gap, tempo gap, count choices around the truth), syllables that merge.

Output: wav files (16 kHz, PCM_16) under `out_dir/audio/<split>/` and `out_dir/<split>.jsonl` in the
AVQA/R1-AQA layout (`question_text`, `multi_choice`, `answer` index, `audio_path` relative to out_dir) plus
`category` (sound / music / speech), `difficulty`, `question_type` and `signal` (the generation parameters).
Every item has its own generator seeded by (seed, split, index): the same arguments give the same bytes.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from audio_thinker.core.audio import SAMPLE_RATE, write_audio
from audio_thinker.core.data import COT_SPLIT_SUFFIX
from audio_thinker.core.progress import progress

SR = SAMPLE_RATE
CATEGORIES = ("sound", "music", "speech")
DIFFICULTIES = ("easy", "medium", "hard")

SNR_DB = {"easy": 30.0, "medium": 15.0, "hard": 5.0}
PITCH_GAP_SEMITONES = {"easy": 4.0, "medium": 2.0, "hard": 0.5}  # highest tone over the next highest
LOUDNESS_GAP_DB = {"easy": 12.0, "medium": 6.0, "hard": 2.0}
RHYTHM = {
    "easy": (5.0, 1.5, 0.5),
    "medium": (4.0, 2.0, 0.35),
    "hard": (3.2, 2.4, 0.2),
}  # fast/s, slow/s, jitter
INTONATION_SEMITONES = {"easy": 7.0, "medium": 4.0, "hard": 2.0}  # f0 change from start to end
BEEP_GAP_S = {"easy": 0.18, "medium": 0.12, "hard": 0.07}
SYLLABLE_GAP_S = {"easy": 0.10, "medium": 0.06, "hard": 0.04}
SYLLABLE_FLOOR = {"easy": 0.0, "medium": 0.2, "hard": 0.45}  # voice level left between syllables
VOWELS = {  # first three formants (Hz) of five vowels
    "a": (730.0, 1090.0, 2440.0),
    "e": (530.0, 1840.0, 2480.0),
    "i": (270.0, 2290.0, 3010.0),
    "o": (570.0, 840.0, 2410.0),
    "u": (300.0, 870.0, 2240.0),
}
ORDINALS = ("first", "second", "third", "fourth")


@dataclass
class Clip:
    signal: np.ndarray  # clean signal, before noise
    question: str
    choices: list[str]
    answer: int
    params: dict


def _time(seconds: float) -> np.ndarray:
    return np.arange(round(seconds * SR)) / SR


def _fade(x: np.ndarray, seconds: float = 0.01) -> np.ndarray:
    """Raised-cosine edges, so clips and tones start and stop without clicks."""
    n = min(int(seconds * SR), len(x) // 2)
    ramp = 0.5 - 0.5 * np.cos(np.linspace(0.0, np.pi, n))
    x = x.copy()
    x[:n] *= ramp
    x[len(x) - n :] *= ramp[::-1]
    return x


def _place(total_s: float, parts: list[tuple[float, np.ndarray]]) -> np.ndarray:
    out = np.zeros(round(total_s * SR))
    for start_s, part in parts:
        i = round(start_s * SR)
        out[i : i + len(part)] += part[: len(out) - i]
    return out


def _tone(freq: float, seconds: float) -> np.ndarray:
    t = _time(seconds)
    partials = sum(a * np.sin(2 * np.pi * k * freq * t) for k, a in ((1, 1.0), (2, 0.3), (3, 0.12)))
    return _fade(partials)


def _voice(f0: np.ndarray, formants: np.ndarray) -> np.ndarray:
    """A voiced buzz: harmonics of a (time-varying) f0 below 4 kHz, weighted by resonances at the formants
    and a -6 dB/octave source tilt, at unit RMS whatever the vowel; formants is (samples, 3)."""
    n, hop = len(f0), 16  # harmonic weights change slowly: compute them once per millisecond
    f0_c, formants_c = f0[::hop], formants[::hop]
    bandwidths = np.array([90.0, 110.0, 140.0])
    gains = []
    for k in range(1, 41):
        fk = k * f0_c
        resonance = (1.0 / (1.0 + ((fk[:, None] - formants_c) / bandwidths) ** 2)).sum(axis=1)
        gains.append(np.where(fk < 4000, resonance / k, 0.0))
    gains = np.array(gains) / np.sqrt(0.5 * np.sum(np.square(gains), axis=0))  # each sine has power 1/2
    base = np.exp(2j * np.pi * np.cumsum(f0) / SR)
    harmonic = np.ones(n, dtype=complex)
    out = np.zeros(n)
    for gain in gains:
        harmonic *= base  # exp(i k phase), cheaper than k sines
        out += np.repeat(gain, hop)[:n] * harmonic.imag
    return out


def _count_choices(rng: np.random.Generator, n: int, difficulty: str, lo: int = 1, hi: int = 10) -> list[str]:
    """Four counts including n: far apart when easy, within 3 when medium, four consecutive when hard."""
    if difficulty == "hard":
        start = min(max(n - int(rng.integers(0, 4)), lo), hi - 3)
        counts = list(range(start, start + 4))
    else:
        near = [c for c in range(lo, hi + 1) if c != n and abs(c - n) <= 3]
        far = [c for c in range(lo, hi + 1) if abs(c - n) >= 2]
        pool = far if difficulty == "easy" else near
        counts = sorted([n, *(int(c) for c in rng.choice(pool, size=3, replace=False))])
    return [str(c) for c in counts]


def _shuffled(rng: np.random.Generator, labels: list[str], correct: str) -> tuple[list[str], int]:
    order = [labels[i] for i in rng.permutation(len(labels))]
    return order, order.index(correct)


def _beeps(rng: np.random.Generator, difficulty: str) -> Clip:
    n = int(rng.integers(2, 8))
    freq, beep_s, gap_s = (
        float(rng.uniform(600, 1500)),
        float(rng.uniform(0.08, 0.12)),
        BEEP_GAP_S[difficulty],
    )
    beep = _fade(np.sin(2 * np.pi * freq * _time(beep_s)), 0.005)
    starts = [0.15 + i * (beep_s + gap_s) for i in range(n)]
    total = max(1.0, starts[-1] + beep_s + 0.15)
    choices = _count_choices(rng, n, difficulty)
    return Clip(
        _place(total, [(s, beep) for s in starts]),
        "How many beeps do you hear in the audio?",
        choices,
        choices.index(str(n)),
        {"count": n, "beep_hz": freq, "gap_s": gap_s},
    )


def _loudness(rng: np.random.Generator, difficulty: str) -> Clip:
    total, f0 = float(rng.uniform(2.0, 4.0)), float(rng.uniform(100, 300))
    t = _time(total)
    amps = rng.uniform(0.2, 1.0, size=5)
    sound = sum(a * np.sin(2 * np.pi * (k + 1) * f0 * t + rng.uniform(0, 2 * np.pi)) for k, a in enumerate(amps))
    louder = int(rng.integers(0, 2))
    gain = 10 ** (-LOUDNESS_GAP_DB[difficulty] / 20)
    ramp = np.clip((t - total / 2) / 0.03 + 0.5, 0.0, 1.0)  # 30 ms crossfade at the middle
    weight = (1 - ramp) + ramp * gain if louder == 0 else (1 - ramp) * gain + ramp
    labels = ["the first half", "the second half", "both halves are equally loud"]
    choices, answer = _shuffled(rng, labels, labels[louder])
    return Clip(
        _fade(sound * weight),
        "Which half of the audio is louder?",
        choices,
        answer,
        {"louder_half": louder, "gap_db": LOUDNESS_GAP_DB[difficulty], "f0_hz": f0},
    )


def _pitch(rng: np.random.Generator, difficulty: str) -> Clip:
    gap = PITCH_GAP_SEMITONES[difficulty]
    top, highest = float(rng.uniform(260, 520)), int(rng.integers(0, 4))
    below = [gap, *(gap + rng.uniform(0.5, 5.0, size=2))]
    others = [top * 2 ** (-s / 12) for s in rng.permutation(below)]
    freqs = others[:highest] + [top] + others[highest:]
    tone_s, pause_s = float(rng.uniform(0.4, 0.5)), 0.12
    parts = [(0.1 + i * (tone_s + pause_s), _tone(f, tone_s)) for i, f in enumerate(freqs)]
    choices = [f"the {o} tone" for o in ORDINALS]
    return Clip(
        _place(0.2 + 4 * tone_s + 3 * pause_s, parts),
        "Four tones are played one after another. Which tone has the highest pitch?",
        choices,
        highest,
        {"freqs_hz": freqs, "gap_semitones": gap, "tone_s": tone_s, "pause_s": pause_s},
    )


def _rhythm(rng: np.random.Generator, difficulty: str) -> Clip:
    fast, slow, jitter = RHYTHM[difficulty]
    labels = ["fast and steady", "slow and steady", "irregular"]
    kind = int(rng.integers(0, 3))
    total, freq = float(rng.uniform(2.5, 3.5)), float(rng.uniform(1200, 2000))
    t = _time(0.06)
    click = np.sin(2 * np.pi * freq * t) * np.exp(-t / 0.012)
    onsets, now, first_sign = [], float(rng.uniform(0.1, 0.2)), int(rng.integers(0, 2))
    mean_ioi = 1.0 / (fast if kind == 0 else slow if kind == 1 else np.sqrt(fast * slow))
    while now < total - 0.15:
        onsets.append(now)
        step = 1.0
        if kind == 2:  # intervals alternately longer and shorter by jitter/2..jitter of the mean
            step += (-1.0) ** (len(onsets) + first_sign) * float(rng.uniform(jitter / 2, jitter))
        now += mean_ioi * step
    choices, answer = _shuffled(rng, labels, labels[kind])
    return Clip(
        _place(total, [(s, click) for s in onsets]),
        "What best describes the rhythm of the clicks in the audio?",
        choices,
        answer,
        {"rhythm": labels[kind], "onsets_s": onsets, "fast_per_s": fast, "slow_per_s": slow},
    )


def _syllables(rng: np.random.Generator, difficulty: str) -> Clip:
    n, f0 = int(rng.integers(2, 8)), float(rng.uniform(100, 220))
    gap_s, floor = SYLLABLE_GAP_S[difficulty], SYLLABLE_FLOOR[difficulty]
    durations = rng.uniform(0.16, 0.26, size=n)
    starts = 0.15 + np.concatenate([[0.0], np.cumsum(durations[:-1] + gap_s)])
    total = max(1.0, float(starts[-1] + durations[-1] + 0.15))
    samples = round(total * SR)
    env, formants = np.zeros(samples), np.tile(np.array(VOWELS["a"]), (samples, 1))
    first, last = round(starts[0] * SR), round((starts[-1] + durations[-1]) * SR)
    env[first:last] = floor
    vowels = rng.choice(list(VOWELS), size=n)
    for start, dur, vowel in zip(starts, durations, vowels):
        i, m = round(start * SR), round(dur * SR)
        env[i : i + m] = np.maximum(env[i : i + m], np.sin(np.pi * np.arange(m) / m))
        formants[i : i + m] = VOWELS[vowel]
    f0_track = f0 * (1 + 0.03 * np.sin(2 * np.pi * 3.0 * np.arange(samples) / SR))  # a little natural drift
    choices = _count_choices(rng, n, difficulty)
    return Clip(
        _voice(f0_track, formants) * env,
        "How many syllables does the speaker say?",
        choices,
        choices.index(str(n)),
        {"count": n, "f0_hz": f0, "floor": floor, "vowels": "".join(vowels)},
    )


def _intonation(rng: np.random.Generator, difficulty: str) -> Clip:
    labels = ["it rises, like a question", "it falls, like a statement", "it stays flat"]
    kind = int(rng.integers(0, 3))
    change = INTONATION_SEMITONES[difficulty] * (1.0, -1.0, 0.0)[kind]
    total, f0 = float(rng.uniform(1.2, 2.0)), float(rng.uniform(110, 200))
    samples = round(total * SR)
    ramp = np.linspace(-0.5, 0.5, samples)
    f0_track = f0 * 2 ** (change * ramp / 12)
    vowels = rng.choice(list(VOWELS), size=3)
    formants = np.array([VOWELS[vowels[min(2, 3 * i // samples)]] for i in range(0, samples, 160)])
    formants = np.repeat(formants, 160, axis=0)[:samples]
    env = 0.6 + 0.4 * np.sin(np.pi * np.arange(samples) / (samples / 3)) ** 2  # three soft syllables
    choices, answer = _shuffled(rng, labels, labels[kind])
    return Clip(
        _fade(_voice(f0_track, formants) * env, 0.05),
        "How does the pitch of the voice move over the utterance?",
        choices,
        answer,
        {"contour": labels[kind], "f0_hz": f0, "change_semitones": change},
    )


QUESTION_TYPES: dict[str, tuple[tuple[str, Callable[[np.random.Generator, str], Clip]], ...]] = {
    "sound": (("beeps", _beeps), ("loudness", _loudness)),
    "music": (("pitch", _pitch), ("rhythm", _rhythm)),
    "speech": (("syllables", _syllables), ("intonation", _intonation)),
}


def _with_noise(rng: np.random.Generator, clean: np.ndarray, snr_db: float) -> np.ndarray:
    """White noise at snr_db below the clip's mean power, then peak-normalised to 0.9 (PCM_16-safe)."""
    noise = rng.standard_normal(len(clean)) * np.sqrt(np.mean(clean**2)) / 10 ** (snr_db / 20)
    mixed = clean + noise
    return 0.9 * mixed / np.max(np.abs(mixed))


def _rounded(value):
    if isinstance(value, float | np.floating):
        return round(float(value), 4)
    if isinstance(value, list | tuple | np.ndarray):
        return [_rounded(v) for v in value]
    return value


def write_synthetic_dataset(
    out_dir: str | Path, n: int, seed: int = 0, split: str = "train", overwrite: bool = False
) -> Path:
    """Write n questions (balanced over categories, difficulties and question types); return the manifest.

    An existing manifest or clip of the split is never replaced unless `overwrite` (FileExistsError)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not split or "/" in split or "\\" in split or split.startswith("."):
        raise ValueError(f"split must be a plain file name, got {split!r}")
    out_dir = Path(out_dir)
    existing = [p for p in (out_dir / f"{split}.jsonl", out_dir / "audio" / split) if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"{existing[0]} exists: the synthetic {split} split is not written over it (--overwrite replaces it)"
        )
    split_key = zlib.crc32(split.encode())
    rows = []
    for i in progress(range(n), desc=f"synthetic {split}", total=n, unit="clip"):
        category = CATEGORIES[i % 3]
        difficulty = DIFFICULTIES[(i // 3) % 3]
        qtype, make = QUESTION_TYPES[category][(i // 9) % 2]
        rng = np.random.default_rng([seed, split_key, i])
        clip = make(rng, difficulty)
        audio = _with_noise(rng, clip.signal, SNR_DB[difficulty])
        rel = f"audio/{split}/{split}-{i:06d}.wav"
        write_audio(out_dir / rel, audio, SR)
        rows.append(
            {
                "id": f"{split}-{i:06d}",
                "question_text": clip.question,
                "multi_choice": clip.choices,
                "answer": clip.answer,
                "audio_path": rel,
                "dataset_name": "synthetic",
                "question_type": qtype,
                "category": category,
                "difficulty": difficulty,
                "signal": {"snr_db": SNR_DB[difficulty], **{k: _rounded(v) for k, v in clip.params.items()}},
            }
        )
    manifest = out_dir / f"{split}.jsonl"
    tmp = manifest.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(row) + "\n" for row in rows))
    tmp.replace(manifest)  # a reader never sees a half-written manifest
    return manifest


def write_synthetic_cot(out_dir: str | Path, split: str = "train", field: str = "rationale") -> Path:
    """`<split>_cot.jsonl` from the synthetic split `<split>`: each row with a rationale in `field` that ends at the
    correct choice (as one `make-cot` accepts), for sft.target=cot where no make-cot output is at hand. The clips
    are the split's own."""
    out_dir = Path(out_dir)
    rows = [json.loads(line) for line in (out_dir / f"{split}.jsonl").read_text().splitlines() if line.strip()]
    for row in rows:
        choice = row["multi_choice"][row["answer"]]
        row[field] = f"I listen to the clip and compare it with each choice. Therefore, the answer is {choice}."
    manifest = out_dir / f"{split}{COT_SPLIT_SUFFIX}.jsonl"
    tmp = manifest.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(row) + "\n" for row in rows))
    tmp.replace(manifest)
    return manifest
