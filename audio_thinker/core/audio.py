"""Audio in and out: every clip the models see is float32 mono at 16 kHz.

soundfile (libsndfile) reads wav/flac/ogg; soxr resamples. No torchaudio: it has no CPU build here, and
vLLM's own resampler needs it, so clips are resampled here before they reach any engine.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from audio_thinker.core.errors import UserError

SAMPLE_RATE = 16000


class AudioError(UserError, ValueError):
    """An audio file that is missing, unreadable, corrupt or empty; the message names the path."""


def _header(path: Path) -> tuple[int, int]:
    """(frames, sample rate) from the header; raises AudioError for a missing, unreadable or empty file."""
    if not path.is_file():
        raise AudioError(f"audio file {path} does not exist")
    try:
        info = sf.info(str(path))
    except (sf.SoundFileError, RuntimeError) as exc:
        raise AudioError(f"audio file {path} cannot be read: {exc}") from None
    if info.frames <= 0:
        raise AudioError(f"audio file {path} contains no samples")
    return info.frames, info.samplerate


def audio_duration(path: str | Path) -> float:
    """Seconds of audio from the file header (cheap: used to check whole datasets before a run)."""
    frames, rate = _header(Path(path))
    return frames / rate


def load_audio(path: str | Path, sr: int = SAMPLE_RATE, max_seconds: float | None = None) -> np.ndarray:
    """Read a clip as float32 mono at `sr` Hz, cut to `max_seconds` when given.

    Channels are averaged (down-mix); a different file rate is resampled with soxr's high-quality filter.
    """
    path = Path(path)
    _header(path)
    try:
        data, file_sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.SoundFileError, RuntimeError) as exc:
        raise AudioError(f"audio file {path} cannot be decoded: {exc}") from None
    if data.shape[0] == 0:
        raise AudioError(f"audio file {path} contains no samples")
    mono = data.mean(axis=1)
    if max_seconds is not None:
        mono = mono[: max(1, round(max_seconds * file_sr))]  # cut first: less to resample
    if file_sr != sr:
        mono = soxr.resample(mono, file_sr, sr, quality="HQ")
        if max_seconds is not None:
            mono = mono[: round(max_seconds * sr)]
    return np.ascontiguousarray(mono, dtype=np.float32)


def write_audio(path: str | Path, array: np.ndarray, sr: int = SAMPLE_RATE, subtype: str = "PCM_16") -> Path:
    """Write a mono (samples,) or multi-channel (samples, channels) clip; the format follows the suffix.

    Integer subtypes (PCM_16, PCM_24) refuse samples outside [-1, 1] instead of letting libsndfile clip them.
    """
    path = Path(path)
    array = np.asarray(array, dtype=np.float32)
    if array.ndim not in (1, 2) or array.shape[0] == 0:
        raise ValueError(
            f"write_audio {path}: expected a non-empty (samples,) or (samples, channels) array, got {array.shape}"
        )
    if not np.all(np.isfinite(array)):
        raise ValueError(f"write_audio {path}: the array holds NaN or infinite samples")
    peak = float(np.max(np.abs(array)))
    if subtype.startswith("PCM") and peak > 1.0:
        raise ValueError(
            f"write_audio {path}: peak {peak:.3f} > 1 would clip in {subtype}; scale the signal first"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), array, sr, subtype=subtype)
    return path


def wav_bytes(array: np.ndarray, sr: int = SAMPLE_RATE) -> bytes:
    """A mono clip as the bytes of a 16-bit PCM wav file (for an HTTP request), clipped to [-1, 1]."""
    buffer = io.BytesIO()
    sf.write(buffer, np.clip(np.asarray(array, dtype=np.float32), -1.0, 1.0), sr, format="WAV", subtype="PCM_16")
    return buffer.getvalue()
