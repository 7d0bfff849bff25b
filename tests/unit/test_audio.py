"""Audio I/O: down-mix, resampling to 16 kHz, formats, and clear errors for bad files."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from audio_thinker.core.audio import AudioError, audio_duration, load_audio, write_audio


def sine(freq: float, seconds: float, sr: int, amp: float = 0.5) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * freq * np.arange(int(seconds * sr)) / sr)).astype(np.float32)


def peak_hz(x: np.ndarray, sr: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spectrum) * sr / len(x))


def test_mono_16k_float_is_read_unchanged(tmp_path):
    x = sine(440.0, 0.25, 16000)
    path = write_audio(tmp_path / "a.wav", x, 16000, subtype="FLOAT")
    y = load_audio(path)
    assert y.dtype == np.float32 and y.shape == (4000,)
    np.testing.assert_array_equal(y, x)


def test_stereo_is_averaged_to_mono(tmp_path):
    left, right = sine(300.0, 0.25, 16000, amp=0.5), sine(300.0, 0.25, 16000, amp=0.25)
    path = write_audio(tmp_path / "st.wav", np.stack([left, right], axis=1), 16000, subtype="FLOAT")
    y = load_audio(path)
    assert y.ndim == 1
    np.testing.assert_allclose(y, 0.375 * left / 0.5, atol=1e-6)


@pytest.mark.parametrize("rate", [8000, 44100, 48000])
def test_resampling_keeps_length_and_frequency(tmp_path, rate):
    path = write_audio(tmp_path / f"s{rate}.wav", sine(1234.0, 1.0, rate), rate)
    y = load_audio(path)
    assert abs(len(y) - 16000) <= 1  # one second stays one second
    assert peak_hz(y, 16000) == pytest.approx(1234.0, abs=1.5)
    assert np.max(np.abs(y)) == pytest.approx(0.5, abs=0.02)  # a pass-band tone keeps its level


def test_flac_stereo_22k(tmp_path):
    x = sine(700.0, 0.5, 22050)
    path = write_audio(tmp_path / "a.flac", np.stack([x, x], axis=1), 22050)
    assert sf.info(str(path)).format == "FLAC"
    y = load_audio(path)
    assert abs(len(y) - 8000) <= 1
    assert peak_hz(y, 16000) == pytest.approx(700.0, abs=2.0)


def test_max_seconds_cuts_after_resampling(tmp_path):
    path = write_audio(tmp_path / "long.wav", sine(500.0, 2.0, 48000), 48000)
    assert len(load_audio(path, max_seconds=0.5)) == 8000
    assert len(load_audio(path, max_seconds=5.0)) == pytest.approx(32000, abs=1)


def test_audio_duration_reads_the_header(tmp_path):
    path = write_audio(tmp_path / "d.wav", sine(500.0, 1.5, 44100), 44100)
    assert audio_duration(path) == pytest.approx(1.5, abs=1 / 44100)


def test_missing_file(tmp_path):
    path = tmp_path / "nope.wav"
    with pytest.raises(AudioError, match="nope.wav does not exist"):
        load_audio(path)
    assert issubclass(AudioError, ValueError)


def test_corrupt_file(tmp_path):
    path = tmp_path / "corrupt.wav"
    path.write_bytes(np.random.default_rng(0).bytes(2000))
    with pytest.raises(AudioError, match="corrupt.wav cannot be read"):
        load_audio(path)
    with pytest.raises(AudioError, match="corrupt.wav"):
        audio_duration(path)


def test_zero_byte_file(tmp_path):
    path = tmp_path / "zero.wav"
    path.touch()
    with pytest.raises(AudioError, match="zero.wav"):
        load_audio(path)


def test_header_only_wav_has_no_samples(tmp_path):
    path = tmp_path / "empty.wav"
    sf.write(str(path), np.zeros(0, dtype=np.float32), 16000)
    with pytest.raises(AudioError, match="empty.wav contains no samples"):
        load_audio(path)


def test_write_audio_refuses_clipping_and_nan(tmp_path):
    with pytest.raises(ValueError, match="would clip"):
        write_audio(tmp_path / "loud.wav", np.array([0.5, 1.5], dtype=np.float32))
    with pytest.raises(ValueError, match="NaN"):
        write_audio(tmp_path / "nan.wav", np.array([0.5, np.nan], dtype=np.float32))
    assert not (tmp_path / "loud.wav").exists()
    write_audio(tmp_path / "float.wav", np.array([0.5, 1.5], dtype=np.float32), subtype="FLOAT")
    np.testing.assert_allclose(sf.read(str(tmp_path / "float.wav"))[0], [0.5, 1.5])
