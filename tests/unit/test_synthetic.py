"""The synthetic QA set: deterministic bytes, balanced, and answers that a plain analysis of the signal
recovers; harder items are measurably harder."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from audio_thinker.app.cli.main import main
from audio_thinker.app.data.synthetic import RHYTHM, write_synthetic_dataset
from audio_thinker.core.data import load_dataset

SR = 16000
N = 72  # 4 items per (category, difficulty, question type)


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> tuple[Path, list[dict], dict[str, np.ndarray]]:
    out = tmp_path_factory.mktemp("synth")
    manifest = write_synthetic_dataset(out, N, seed=0, split="train")
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    audio = {row["id"]: sf.read(str(out / row["audio_path"]), dtype="float32")[0] for row in rows}
    return out, rows, audio


def rows_of(rows: list[dict], qtype: str, difficulty: str) -> list[dict]:
    return [r for r in rows if r["question_type"] == qtype and r["difficulty"] == difficulty]


def frame_rms(x: np.ndarray, hop: int = 160) -> np.ndarray:
    frames = x[: len(x) // hop * hop].reshape(-1, hop)
    return np.sqrt((frames**2).mean(axis=1))


def bursts(x: np.ndarray, hop: int = 160, rel: float = 0.3) -> list[tuple[int, int]]:
    """(start, end) samples of the stretches whose level (frame RMS over 3 frames) is above rel * the peak."""
    level = np.convolve(frame_rms(x, hop), np.ones(3) / 3, mode="same")
    on = level > rel * level.max()
    edges = np.diff(np.concatenate([[0], on.astype(int), [0]]))
    return [(s * hop, e * hop) for s, e in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1))]


def peak_hz(x: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x)), n=1 << 17))
    return float(np.argmax(spectrum) * SR / (1 << 17))


def f0_autocorr(x: np.ndarray) -> float:
    """Pitch of a voiced stretch: the strongest autocorrelation lag between 2.5 ms and 14 ms, on the part
    below 1 kHz (high harmonics decorrelate at a lag rounded to whole samples and favour octave errors)."""
    spectrum = np.fft.rfft(x - x.mean(), n=2 * len(x))
    spectrum[int(1000 * 2 * len(x) / SR) :] = 0
    r = np.fft.irfft(np.abs(spectrum) ** 2)[: len(x)]
    lo, hi = SR // 400, SR // 70
    return SR / (lo + int(np.argmax(r[lo:hi])))


def answer_text(row: dict) -> str:
    return row["multi_choice"][row["answer"]]


# ---------------------------------------------------------------- the files


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    def hashes(folder: Path) -> dict[str, str]:
        return {
            str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*"))
            if p.is_file()
        }

    a = hashes(write_synthetic_dataset(tmp_path / "a", 12, seed=7).parent)
    b = hashes(write_synthetic_dataset(tmp_path / "b", 12, seed=7).parent)
    c = hashes(write_synthetic_dataset(tmp_path / "c", 12, seed=8).parent)
    assert len(a) == 13 and a == b  # 12 wav files + the manifest
    assert all(a[name] != c[name] for name in a)


def test_splits_differ_for_the_same_seed(tmp_path):
    train = write_synthetic_dataset(tmp_path, 3, seed=0, split="train")
    held_out = write_synthetic_dataset(tmp_path, 3, seed=0, split="eval")
    assert (train.name, held_out.name) == ("train.jsonl", "eval.jsonl")
    assert (tmp_path / "audio/train/train-000000.wav").read_bytes() != (
        tmp_path / "audio/eval/eval-000000.wav"
    ).read_bytes()


def test_balanced_and_well_formed(synth):
    out, rows, audio = synth
    assert len(rows) == N and len({r["id"] for r in rows}) == N
    assert Counter(r["category"] for r in rows) == {"sound": 24, "music": 24, "speech": 24}
    assert Counter(r["difficulty"] for r in rows) == {"easy": 24, "medium": 24, "hard": 24}
    assert set(Counter((r["category"], r["difficulty"], r["question_type"]) for r in rows).values()) == {4}
    for row in rows:
        info = sf.info(str(out / row["audio_path"]))
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        assert 1.0 <= info.duration <= 4.0
        assert 2 <= len(row["multi_choice"]) <= 4 and len(set(row["multi_choice"])) == len(
            row["multi_choice"]
        )
        assert 0 <= row["answer"] < len(row["multi_choice"])
        assert np.max(np.abs(audio[row["id"]])) == pytest.approx(0.9, abs=1e-3)
    assert Counter(len(r["multi_choice"]) for r in rows) == {4: 36, 3: 36}  # counts/pitch: 4; the others: 3
    positions = Counter(r["answer"] for r in rows)
    assert len(positions) >= 3  # the correct choice is not always in the same place


def test_manifest_loads_as_avqa(synth):
    out, rows, _ = synth
    ds = load_dataset(out / "train.jsonl", "avqa")
    assert len(ds) == N and ds.skipped == []
    q = ds[0]
    assert (q.id, q.task, q.difficulty, q.category) == (
        rows[0]["id"],
        rows[0]["category"],
        rows[0]["difficulty"],
        rows[0]["question_type"],
    )
    assert q.answer == answer_text(rows[0]) and q.audio_path == out / rows[0]["audio_path"]
    assert len(ds.audio(0)) == len(sf.read(str(q.audio_path))[0])


def test_cli_make_synthetic(tmp_path, capsys):
    assert main(["make-synthetic", "--out", str(tmp_path), "--n", "6", "--seed", "3", "--split", "eval"]) == 0
    rows = (tmp_path / "eval.jsonl").read_text().splitlines()
    assert len(rows) == 6 and len(list((tmp_path / "audio" / "eval").glob("*.wav"))) == 6
    assert "wrote 6 questions" in capsys.readouterr().out


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="n must be >= 1"):
        write_synthetic_dataset(tmp_path, 0)
    with pytest.raises(ValueError, match="plain file name"):
        write_synthetic_dataset(tmp_path, 1, split="../up")


# ---------------------------------------------------------------- answers recovered from easy signals


def test_easy_beeps_are_countable(synth):
    _, rows, audio = synth
    for row in rows_of(rows, "beeps", "easy"):
        assert str(len(bursts(audio[row["id"]]))) == answer_text(row)


def test_easy_syllables_are_countable(synth):
    _, rows, audio = synth
    for row in rows_of(rows, "syllables", "easy"):
        assert str(len(bursts(audio[row["id"]]))) == answer_text(row)


def test_easy_highest_tone_is_the_fft_peak(synth):
    _, rows, audio = synth
    for row in rows_of(rows, "pitch", "easy"):
        x = audio[row["id"]]
        tones = bursts(x)
        assert len(tones) == 4
        freqs = [peak_hz(x[s:e]) for s, e in tones]
        assert (
            answer_text(row)
            == ("the first tone", "the second tone", "the third tone", "the fourth tone")[
                int(np.argmax(freqs))
            ]
        )


def test_easy_louder_half_is_the_higher_rms(synth):
    _, rows, audio = synth
    for row in rows_of(rows, "loudness", "easy"):
        x = audio[row["id"]]
        mid = len(x) // 2
        first, second = np.sqrt(np.mean(x[: mid - 1600] ** 2)), np.sqrt(np.mean(x[mid + 1600 :] ** 2))
        assert answer_text(row) == ("the first half" if first > second else "the second half")


def test_easy_rhythm_from_onset_intervals(synth):
    _, rows, audio = synth
    fast, slow, _ = RHYTHM["easy"]
    kinds = set()
    for row in rows_of(rows, "rhythm", "easy"):
        onsets = np.array([s for s, _ in bursts(audio[row["id"]], hop=80)]) / SR
        intervals = np.diff(onsets)
        if intervals.std() / intervals.mean() > 0.15:
            kind = "irregular"
        else:
            kind = "fast and steady" if 1 / intervals.mean() > np.sqrt(fast * slow) else "slow and steady"
        assert kind == answer_text(row)
        kinds.add(kind)
    assert len(kinds) >= 2  # the check saw more than one class


def test_easy_intonation_from_autocorrelation_pitch(synth):
    _, rows, audio = synth
    for row in rows_of(rows, "intonation", "easy"):
        x = audio[row["id"]]
        n = len(x)
        start, end = f0_autocorr(x[n // 10 : 3 * n // 10]), f0_autocorr(x[7 * n // 10 : 9 * n // 10])
        change = 12 * np.log2(end / start)
        kind = (
            "it rises, like a question"
            if change > 1.5
            else "it falls, like a statement"
            if change < -1.5
            else "it stays flat"
        )
        assert kind == answer_text(row)


# ---------------------------------------------------------------- difficulty changes the signal


def test_harder_beeps_have_lower_snr(synth):
    _, rows, audio = synth

    def snr_db(x: np.ndarray) -> float:
        levels = np.sort(frame_rms(x))
        k = len(levels) // 5
        return 20 * np.log10(levels[-k:].mean() / levels[:k].mean())  # loudest fifth over quietest fifth

    mean_snr = {
        d: np.mean([snr_db(audio[r["id"]]) for r in rows_of(rows, "beeps", d)])
        for d in ("easy", "medium", "hard")
    }
    assert mean_snr["easy"] > mean_snr["medium"] + 5 > mean_snr["hard"] + 10


def test_harder_pitch_items_have_closer_tones(synth):
    _, rows, audio = synth

    def top_gap(row: dict) -> float:
        """Semitones between the two highest FFT peaks; tones cut where the manifest says they are,
        since at 5 dB SNR the pauses are not found from the level."""
        x, tone_s, pause_s = audio[row["id"]], row["signal"]["tone_s"], row["signal"]["pause_s"]
        starts = [int((0.1 + i * (tone_s + pause_s)) * SR) for i in range(4)]
        freqs = sorted(peak_hz(x[s : s + int(tone_s * SR)]) for s in starts)
        return 12 * np.log2(freqs[-1] / freqs[-2])

    for difficulty, expected in (("easy", 4.0), ("medium", 2.0), ("hard", 0.5)):
        for row in rows_of(rows, "pitch", difficulty):
            assert top_gap(row) == pytest.approx(expected, abs=0.2)


def test_harder_loudness_items_have_smaller_level_gaps(synth):
    _, rows, audio = synth

    def gap_db(x: np.ndarray) -> float:
        mid = len(x) // 2
        first, second = np.mean(x[: mid - 1600] ** 2), np.mean(x[mid + 1600 :] ** 2)
        return abs(10 * np.log10(first / second))

    gaps = {
        d: np.mean([gap_db(audio[r["id"]]) for r in rows_of(rows, "loudness", d)])
        for d in ("easy", "medium", "hard")
    }
    assert gaps["easy"] == pytest.approx(12.0, abs=1.0)
    assert gaps["easy"] > gaps["medium"] > gaps["hard"]


def test_harder_count_questions_have_closer_choices(synth):
    _, rows, _ = synth

    def spread(row: dict) -> float:
        truth = int(answer_text(row))
        return np.mean([abs(int(c) - truth) for c in row["multi_choice"] if c != answer_text(row)])

    mean = {
        d: np.mean(
            [spread(r) for r in rows if r["question_type"] in ("beeps", "syllables") and r["difficulty"] == d]
        )
        for d in ("easy", "medium", "hard")
    }
    assert mean["easy"] > mean["hard"]
    assert all(
        spread(r) <= 3
        for r in rows
        if r["question_type"] in ("beeps", "syllables") and r["difficulty"] != "easy"
    )
