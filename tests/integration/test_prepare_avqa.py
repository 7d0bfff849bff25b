"""`audio-thinker prepare-avqa` on videos the test encodes with PyAV: AVQA-layout annotations in, the R1-AQA
jsonl that training reads out; videos without audio, corrupt or missing, and invalid rows are counted and
listed; a rerun resumes; the output is deterministic."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest

from audio_thinker.app.cli.main import main
from audio_thinker.core.audio import load_audio
from audio_thinker.core.data import load_dataset

VIDEO_RATE = 5


def encode_video(path: Path, seconds: float, freq: float | None, sr: int = 44100) -> None:
    """A tiny mpeg4 video (a few 32x32 frames) with a stereo AAC sine track at `freq` Hz (None: no audio)."""
    with av.open(str(path), "w") as container:
        video = container.add_stream("mpeg4", rate=VIDEO_RATE)
        video.width, video.height, video.pix_fmt = 32, 32, "yuv420p"
        audio = None
        if freq is not None:
            audio = container.add_stream("aac", rate=sr)
            audio.layout = "stereo"
        for i in range(int(VIDEO_RATE * seconds)):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 40 * i, dtype=np.uint8), format="rgb24")
            container.mux(video.encode(frame))
        container.mux(video.encode())
        if audio is not None:
            t = np.arange(int(sr * seconds)) / sr
            signal = np.stack([0.5 * np.sin(2 * np.pi * freq * t)] * 2).astype(np.float32)
            for start in range(0, signal.shape[1], 1024):
                frame = av.AudioFrame.from_ndarray(
                    np.ascontiguousarray(signal[:, start : start + 1024]), format="fltp", layout="stereo"
                )
                frame.sample_rate, frame.pts = sr, start
                container.mux(audio.encode(frame))
            container.mux(audio.encode())


def row(i: int, video: str, answer: int = 1, **extra) -> dict:
    return {
        "id": i,
        "video_name": video,
        "video_id": 100 + i,
        "question_text": "What is making the sound in the Video?",
        "multi_choice": ["a dog", "a tone generator", "a car", "rain"],
        "answer": answer,
        "question_relation": "Both",
        "question_type": "Come From",
        **extra,
    }


@pytest.fixture(scope="module")
def avqa(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("avqa")
    videos = root / "videos"
    videos.mkdir()
    encode_video(videos / "clipA_000010.mp4", 1.0, 440.0)
    encode_video(videos / "clipB_000020.mp4", 0.6, 1000.0)
    encode_video(videos / "silent_000000.mp4", 0.6, None)
    (videos / "broken_000000.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 4)
    rows = [
        row(1, "clipA_000010"),
        row(2, "clipB_000020", answer=0),
        row(3, "clipA_000010", answer=2),  # a second question on the same clip: one wav
        row(4, "silent_000000"),
        row(5, "broken_000000"),
        row(6, "gone_000000"),
        row(7, "clipB_000020", answer=9),  # invalid: answer outside the choices
        {k: v for k, v in row(8, "clipB_000020").items() if k != "question_text"},  # invalid: no question
    ]
    annotations = root / "train_qa.json"
    annotations.write_text(json.dumps(rows, indent=1))  # the official file is a JSON list
    return videos, annotations


def prepare(videos: Path, annotations: Path, out: Path) -> dict:
    args = ["prepare-avqa", "--videos", str(videos), "--annotations", str(annotations), "--out", str(out)]
    assert main([*args, "--workers", "2"]) == 0
    return json.loads((out / "train-report.json").read_text())


def test_prepare_avqa_writes_what_training_reads_and_reports_every_row_left_out(avqa, tmp_path):
    videos, annotations = avqa
    out = tmp_path / "out"
    report = prepare(videos, annotations, out)

    assert report["rows"] == 8 and report["rows_written"] == 3
    assert report["rows_invalid"] == 2 and [r["row"] for r in report["invalid_rows"]] == [7, 8]
    assert "answer" in report["invalid_rows"][0]["reason"] and "question_text" in report["invalid_rows"][1]["reason"]
    assert (report["videos"], report["videos_extracted"]) == (5, 2)
    assert (report["videos_missing"], report["videos_no_audio"], report["videos_corrupt"]) == (1, 1, 1)
    kinds = {v["video_name"]: v["kind"] for v in report["failed_videos"]}
    assert kinds == {"broken_000000": "corrupt", "gone_000000": "missing", "silent_000000": "no_audio"}
    assert [r["id"] for r in report["rows_left_out"]] == [4, 5, 6]

    lines = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    assert [r["id"] for r in lines] == [1, 2, 3]  # the annotations' order
    assert lines[0]["question_text"] == "What is making the sound in the Audio?"
    assert lines[0]["audio_path"] == "audio/clipA_000010.wav" and lines[0]["dataset_name"] == "AVQA"
    assert lines[1]["video_id"] == 102 and lines[1]["question_relation"] == "Both"  # original fields kept

    data = load_dataset(out / "train.jsonl", "avqa", out)  # what a training run reads (data.audio_root=out)
    assert [q.answer for q in data] == ["a tone generator", "a dog", "a car"]
    assert data[0].category == "Come From"
    for i, (freq, seconds) in enumerate([(440.0, 1.0), (1000.0, 0.6)]):
        clip = load_audio(data[i].audio_path)  # 16 kHz mono
        assert abs(len(clip) / 16000 - seconds) < 0.05  # AAC adds its ~1024-sample priming at most
        peak = np.argmax(np.abs(np.fft.rfft(clip))) * 16000 / len(clip)
        assert abs(peak - freq) < 5

    # Resume: nothing is decoded again; the output is byte-identical. A fresh folder gives the same bytes too.
    wav = out / "audio" / "clipA_000010.wav"
    before = (wav.stat().st_mtime_ns, (out / "train.jsonl").read_bytes(), wav.read_bytes())
    again = prepare(videos, annotations, out)
    assert (again["videos_extracted"], again["videos_already_done"]) == (0, 2)
    assert (wav.stat().st_mtime_ns, (out / "train.jsonl").read_bytes(), wav.read_bytes()) == before
    fresh = tmp_path / "fresh"
    prepare(videos, annotations, fresh)
    assert (fresh / "train.jsonl").read_bytes() == before[1]
    assert (fresh / "audio" / "clipA_000010.wav").read_bytes() == before[2]


def test_prepare_avqa_names_a_missing_input(tmp_path, capsys):
    code = main(["prepare-avqa", "--videos", str(tmp_path / "nope"), "--annotations", "x.json", "--out", "o"])
    assert code == 2 and "--videos" in capsys.readouterr().err
