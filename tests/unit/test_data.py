"""Manifest readers: the four official layouts, answer mapping, audio paths, and bad rows."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest

from audio_thinker.core.audio import AudioError, write_audio
from audio_thinker.core.data import load_dataset
from audio_thinker.core.manifests import DataError, video_to_audio


def wav(path: Path, seconds: float = 0.1, sr: int = 16000) -> Path:
    t = np.arange(int(seconds * sr)) / sr
    return write_audio(path, 0.3 * np.sin(2 * np.pi * 440 * t), sr)


def jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def avqa_row(audio: Path, **changes) -> dict:
    """A row as R1-AQA writes AVQA (original AVQA keys plus dataset_name and audio_path)."""
    row = {
        "id": 183,
        "video_name": "-HG3Omg_89c_000030",
        "video_id": 341,
        "question_text": "What happened in the video?",
        "multi_choice": ["motorboat", "Yacht consignment", "Sailboat set sail", "Consignment car"],
        "answer": 1,
        "question_relation": "View",
        "question_type": "Happening",
        "dataset_name": "AVQA",
        "audio_path": str(audio),
    }
    row.update(changes)
    return row


def mmau_row(**changes) -> dict:
    row = {
        "id": "a2d0d4b5-2d3e-4c8f-9b6a-1f2e3d4c5b6a",
        "audio_id": "./test-mini-audios/a2d0d4b5.wav",
        "question": "What is the primary sound source in the recording?",
        "choices": ["Man speaking", "Dog barking", "Car engine", "Rainfall"],
        "answer": "Dog barking",
        "dataset": "clotho",
        "task": "sound",
        "split": "test-mini",
        "category": "Sound-Based Event Recognition",
        "sub-category": None,
        "difficulty": "easy",
    }
    row.update(changes)
    return row


def mmar_row(**changes) -> dict:
    row = {
        "id": "17",
        "audio_path": "./audio/17.wav",
        "question": "How many speakers take part in the conversation?",
        "choices": ["1", "2", "3", "4"],
        "answer": "2",
        "modality": "speech",
        "category": "Perception",
        "sub-category": "Counting",
        "language": "en",
        "source": "youtube",
        "url": "https://www.youtube.com/watch?v=xxxxxxxxxxx",
        "timestamp": "00:01:05-00:01:20",
    }
    row.update(changes)
    return row


def air_row(**changes) -> dict:
    row = {
        "path": "Ses01F_impro01_F000.wav",
        "question": "What is the emotion of the speaker?",
        "choice_a": "happy",
        "choice_b": "sad",
        "choice_c": "angry",
        "choice_d": "neutral",
        "answer_gt": "neutral",
        "task_name": "Speaker_Emotion_Recontion",
        "dataset_name": "iemocap",
        "uniq_id": 4021,
    }
    row.update(changes)
    return row


# ---------------------------------------------------------------- layouts


def test_avqa_r1_aqa_layout(tmp_path):
    audio = wav(tmp_path / "wavs" / "-HG3Omg_89c_30.wav")
    manifest = jsonl(
        tmp_path / "train.jsonl",
        [avqa_row(audio), avqa_row(audio, id=184, question_text="Video: what is in the video?", answer=3)],
    )
    ds = load_dataset(
        manifest, "avqa", audio_root=tmp_path / "elsewhere"
    )  # absolute audio paths ignore the root
    assert len(ds) == 2 and ds.skipped == []
    q = ds[0]
    assert q.id == "183"
    assert q.question == "What happened in the audio?"
    assert q.choices == ["motorboat", "Yacht consignment", "Sailboat set sail", "Consignment car"]
    assert q.answer == "Yacht consignment" and q.answer_index == 1
    assert q.audio_path == audio
    assert (q.task, q.difficulty, q.category) == (None, None, "Happening")
    assert q.row == 1 and q.source["video_id"] == 341
    assert ds[1].question == "Audio: what is in the audio?"
    assert ds[1].answer == "Consignment car"


def test_avqa_our_extra_keys_and_default_id(tmp_path):
    wav(tmp_path / "audio" / "x.wav")
    row = avqa_row("audio/x.wav", category="music", difficulty="hard")
    del row["id"]
    ds = load_dataset(jsonl(tmp_path / "synth.jsonl", ["", row]), "avqa")  # relative to the manifest folder
    q = ds[0]
    assert q.id == "synth-2" and q.row == 2  # the row number counts the blank line
    assert (q.task, q.difficulty) == ("music", "hard")
    assert q.audio_path == tmp_path / "audio" / "x.wav"


def test_video_to_audio_keeps_case():
    assert (
        video_to_audio("What is in the video? Video clips. VIDEO")
        == "What is in the audio? Audio clips. AUDIO"
    )
    assert video_to_audio("videos") == "audios"
    assert video_to_audio("no change") == "no change"


def test_mmau_layout_and_dot_slash_paths(tmp_path):
    root = tmp_path / "mmau"
    audio = wav(root / "test-mini-audios" / "a2d0d4b5.wav")
    rows = [
        mmau_row(),
        mmau_row(id="b", answer="  dog   BARKING ", task="music", difficulty="hard", category="Genre"),
        mmau_row(id="c", answer=None, difficulty=""),
    ]
    manifest = tmp_path / "mmau-test-mini.json"
    manifest.write_text(json.dumps(rows, indent=2))
    ds = load_dataset(manifest, "mmau", audio_root=root)
    assert [q.id for q in ds] == ["a2d0d4b5-2d3e-4c8f-9b6a-1f2e3d4c5b6a", "b", "c"]
    assert ds[0].audio_path == audio  # "./test-mini-audios/..." resolved under the root, no "./" left
    assert ds[0].audio_path.is_absolute() and "./" not in str(ds[0].audio_path)
    assert (ds[0].answer, ds[0].task, ds[0].difficulty, ds[0].category) == (
        "Dog barking",
        "sound",
        "easy",
        "Sound-Based Event Recognition",
    )
    assert ds[1].answer == "Dog barking"  # matched ignoring case and spacing, stored as the choice's text
    assert (ds[1].task, ds[1].difficulty, ds[1].category) == ("music", "hard", "Genre")
    assert ds[2].answer == "" and ds[2].answer_index is None  # unlabelled row
    assert ds[2].difficulty is None  # an empty optional field reads as absent
    assert [q.row for q in ds] == [1, 2, 3]  # positions in the JSON list


def test_relative_audio_root_gives_absolute_paths(tmp_path, monkeypatch):
    audio = wav(tmp_path / "data" / "test-mini-audios" / "a2d0d4b5.wav")
    manifest = jsonl(tmp_path / "m.jsonl", [mmau_row()])
    monkeypatch.chdir(tmp_path)
    assert load_dataset(manifest, "mmau", audio_root="data")[0].audio_path == audio


def test_mmar_jsonl_and_json_list_read_the_same(tmp_path):
    audio = wav(tmp_path / "audio" / "17.wav")
    rows = [mmar_row(), mmar_row(id="18", modality="sound-music", answer="4")]
    a = load_dataset(jsonl(tmp_path / "MMAR-meta.jsonl", rows), "mmar")
    (tmp_path / "MMAR-meta.json").write_text(json.dumps(rows))
    b = load_dataset(tmp_path / "MMAR-meta.json", "mmar")
    assert [(q.id, q.answer, q.task, q.category, q.audio_path) for q in a] == [
        ("17", "2", "speech", "Perception", audio),
        ("18", "4", "sound-music", "Perception", audio),
    ]
    assert [(q.id, q.answer, q.task) for q in b] == [(q.id, q.answer, q.task) for q in a]
    assert a[0].source["language"] == "en"


def test_air_official_folder_rule(tmp_path):
    root = tmp_path / "Foundation"
    audio = wav(root / "Speaker_Emotion_Recontion_iemocap" / "Ses01F_impro01_F000.wav")
    manifest = tmp_path / "Foundation_meta.json"
    manifest.write_text(json.dumps([air_row()]))
    q = load_dataset(manifest, "air", audio_root=root)[0]
    assert q.id == "4021" and q.audio_path == audio
    assert q.choices == ["happy", "sad", "angry", "neutral"] and q.answer == "neutral" and q.answer_index == 3
    assert (q.task, q.category, q.difficulty) == ("speech", "Speaker_Emotion_Recontion", None)


def test_air_flac_grounding_fallback_and_flat_layout(tmp_path):
    root = tmp_path / "Foundation"
    flac = wav(root / "Audio_Grounding_AudioGrounding" / "clip1.flac")
    flat = wav(root / "flat.wav")
    rows = [
        air_row(
            path="clip1.wav",
            task_name="Audio_Grounding",
            dataset_name="AudioGrounding",
            uniq_id=1,
            choice_c=None,
            choice_d=None,
            choice_a="[0.5, 1.2]",
            choice_b="[2.0, 3.1]",
            answer_gt="[2.0, 3.1]",
        ),
        air_row(
            path="flat.wav",
            task_name="Music_AQA",
            dataset_name="music_avqa",
            uniq_id=2,
            choice_a=1,
            choice_b=2,
            choice_c=3,
            choice_d=None,
            answer_gt=3,
        ),
    ]
    manifest = tmp_path / "Foundation_meta.json"
    manifest.write_text(json.dumps(rows))
    a, b = load_dataset(manifest, "air", audio_root=root)
    assert a.audio_path == flac and a.choices == ["[0.5, 1.2]", "[2.0, 3.1]"] and a.answer_index == 1
    assert a.task == "sound"
    assert b.audio_path == flat and b.choices == ["1", "2", "3"] and b.answer == "3" and b.task == "music"


def test_air_missing_audio_names_every_tried_path(tmp_path):
    manifest = tmp_path / "Foundation_meta.json"
    manifest.write_text(json.dumps([air_row()]))
    with pytest.raises(DataError) as err:
        load_dataset(manifest, "air", audio_root=tmp_path)
    message = str(err.value)
    assert "row 1" in message and "audio file not found" in message
    assert "Speaker_Emotion_Recontion_iemocap/Ses01F_impro01_F000.wav" in message
    assert "Speaker_Emotion_Recontion_iemocap/Ses01F_impro01_F000.flac" in message


def test_air_choice_gap_is_an_error(tmp_path):
    wav(tmp_path / "Speaker_Emotion_Recontion_iemocap" / "Ses01F_impro01_F000.wav")
    manifest = tmp_path / "Foundation_meta.json"
    manifest.write_text(json.dumps([air_row(choice_b=None)]))
    with pytest.raises(DataError, match="'choice_c' is set but an earlier choice is missing"):
        load_dataset(manifest, "air")


# ---------------------------------------------------------------- bad rows


@pytest.fixture
def mmau_dir(tmp_path) -> Path:
    wav(tmp_path / "test-mini-audios" / "a2d0d4b5.wav")
    return tmp_path


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ({k: v for k, v in mmau_row().items() if k != "question"}, "row 2: missing field 'question'"),
        (
            mmau_row(choices="Man speaking, Dog barking"),
            "row 2: field 'choices' must be a list of strings, got str",
        ),
        (mmau_row(choices=["Man speaking", 3]), "row 2: field 'choices' item 1 must be a non-empty string"),
        (
            mmau_row(choices=["only one"], answer="only one"),
            "row 2: field 'choices' needs at least 2 choices",
        ),
        # a benchmark's repeated choice is merged (its scorer scores repeats alike), leaving one
        (mmau_row(choices=["a", "A "], answer="a"), "row 2: field 'choices' needs at least 2 choices, got 1"),
        (mmau_row(question=7), "row 2: field 'question' must be a string, got int 7"),
        (mmau_row(task=["sound"]), "row 2: field 'task' must be a string, got list"),
        (mmau_row(id=None), "row 2: field 'id' is null"),
        (mmau_row(id=2.5), "row 2: field 'id' must be a non-empty string or an integer, got 2.5"),
        (mmau_row(question=None), "row 2: field 'question' is null"),
        (mmau_row(question="  "), "row 2: field 'question' is empty"),
        (mmau_row(audio_id="./test-mini-audios/missing.wav"), "row 2: audio file not found"),
        ([1, 2], "row 2: expected a JSON object, got list"),
    ],
)
def test_bad_row_is_named(mmau_dir, row, expected):
    manifest = jsonl(mmau_dir / "m.jsonl", [mmau_row(), row])
    with pytest.raises(DataError) as err:
        load_dataset(manifest, "mmau")
    assert expected in str(err.value)
    assert str(manifest) in str(err.value)


def test_avqa_answer_index_checks(tmp_path):
    audio = wav(tmp_path / "a.wav")
    for answer, expected in [
        (4, "index 4 is outside multi_choice (0..3)"),
        ("1", "'answer' must be an integer"),
        (True, "'answer' must be an integer"),
    ]:
        with pytest.raises(DataError, match=re.escape(expected)):
            load_dataset(jsonl(tmp_path / "m.jsonl", [avqa_row(audio, answer=answer)]), "avqa")


def test_invalid_json_line_names_the_line(mmau_dir):
    manifest = jsonl(mmau_dir / "m.jsonl", [mmau_row(), '{"id": "x", "question": '])
    with pytest.raises(DataError, match=r"m.jsonl row 2: not valid JSON"):
        load_dataset(manifest, "mmau")


def test_corrupt_audio_fails_at_load_with_row_and_path(mmau_dir):
    (mmau_dir / "test-mini-audios" / "bad.wav").write_bytes(b"RIFF....not really a wave file")
    manifest = jsonl(
        mmau_dir / "m.jsonl", [mmau_row(), mmau_row(id="b", audio_id="./test-mini-audios/bad.wav")]
    )
    with pytest.raises(DataError, match=r"m.jsonl row 2: audio file .*bad.wav cannot be read"):
        load_dataset(manifest, "mmau")
    lazy = load_dataset(manifest, "mmau", check_audio=False)  # without the check the error comes on first use
    assert lazy.audio(0).shape == (1600,)
    with pytest.raises(AudioError, match=r"m.jsonl row 2 \(id b\): audio file .*bad.wav cannot be read"):
        lazy.audio(1)


def test_skip_bad_rows_counts_and_logs_once(mmau_dir, caplog):
    (mmau_dir / "test-mini-audios" / "empty.wav").touch()
    rows = [
        mmau_row(id="ok1"),
        {k: v for k, v in mmau_row().items() if k != "choices"},
        mmau_row(id="gone", audio_id="./test-mini-audios/missing.wav"),
        mmau_row(id="ok2"),
        mmau_row(id="empty", audio_id="./test-mini-audios/empty.wav"),
        "not json",
    ]
    manifest = jsonl(mmau_dir / "m.jsonl", rows)
    with caplog.at_level(logging.WARNING, logger="audio_thinker.core.data"):
        ds = load_dataset(manifest, "mmau", skip_bad_rows=True)
    assert [q.id for q in ds] == ["ok1", "ok2"]
    assert [row for row, _ in ds.skipped] == [2, 3, 5, 6]
    reasons = dict(ds.skipped)
    assert "missing field 'choices'" in reasons[2]
    assert "audio file not found" in reasons[3]
    assert "empty.wav" in reasons[5]
    assert "not valid JSON" in reasons[6]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "skipped 4 of 6 rows" in warnings[0].getMessage()


def test_all_rows_bad_is_an_error_even_when_skipping(mmau_dir):
    manifest = jsonl(mmau_dir / "m.jsonl", [mmau_row(question=7)])
    with pytest.raises(DataError, match=r"no usable rows \(1 rows, 1 skipped, 0 outside the scored part\)"):
        load_dataset(manifest, "mmau", skip_bad_rows=True)


def test_unknown_format_and_missing_manifest(tmp_path):
    with pytest.raises(
        DataError, match="unknown dataset format 'mmlu'; expected one of avqa, mmau, mmar, air"
    ):
        load_dataset(tmp_path / "x.json", "mmlu")
    with pytest.raises(DataError, match="x.json does not exist"):
        load_dataset(tmp_path / "x.json", "mmau")
    (tmp_path / "broken.json").write_text("[{")
    with pytest.raises(DataError, match="broken.json is not valid JSON"):
        load_dataset(tmp_path / "broken.json", "mmau")


# ---------------------------------------------------------------- dataset helpers


def test_audio_is_resampled_and_cut(tmp_path):
    audio = wav(tmp_path / "a.wav", seconds=1.0, sr=44100)
    ds = load_dataset(jsonl(tmp_path / "m.jsonl", [avqa_row(audio)]), "avqa", max_seconds=0.25)
    clip = ds.audio(0)
    assert clip.dtype == np.float32 and clip.shape == (4000,)


def test_shuffled_order_is_a_pure_function_of_seed_and_epoch(tmp_path):
    audio = wav(tmp_path / "a.wav")
    ds = load_dataset(jsonl(tmp_path / "m.jsonl", [avqa_row(audio, id=i) for i in range(50)]), "avqa")
    order = ds.shuffled_order(seed=3, epoch=0)
    assert sorted(order) == list(range(50))
    assert order == ds.shuffled_order(seed=3, epoch=0)
    assert order != ds.shuffled_order(seed=3, epoch=1)
    assert order != ds.shuffled_order(seed=4, epoch=0)
    assert order != list(range(50))
