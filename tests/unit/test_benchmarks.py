"""The newer benchmarks, each read from its official layout and scored by its official rule, against hand counts.

Fixtures in tests/data/eval/ (rows in the layout the benchmark's own repository ships or its scripts write):
- mmau-v05.15.25-test-mini_predictions.json: MMAU-v05.15.25 test-mini rows with `model_output` (what
  Sakshi113/MMAU evaluation.py reads), including the release's quirks: a category given as ["Reasoning"],
  repeated choices (["four", "nine", "fourteen", "fourteen"]), 5 and 8 choices.
- mmau-pro_rows.json: rows with MMAU-Pro test.parquet's columns and `model_output`; the tests write them to a
  parquet file, the layout sonalkum/MMAUPro evaluate_mmau_pro_comprehensive.py reads.
- mmsu_predictions.jsonl: the JSON lines dingdongwang/MMSU mmsu_inference.py writes (`response`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow
import pyarrow.parquet
import pytest

from audio_thinker.app.cli.main import main
from audio_thinker.app.eval.extraction import prediction_from_text
from audio_thinker.app.eval.report import render_report
from audio_thinker.app.eval.scoring import choice_status, mmsu_status, score_file
from audio_thinker.core.accuracy import summarize_for_training
from audio_thinker.core.audio import write_audio
from audio_thinker.core.data import load_dataset
from audio_thinker.core.manifests import DataError
from audio_thinker.core.stats import wilson_percent

DATA = Path(__file__).parent.parent / "data" / "eval"
MMAU_V05 = DATA / "mmau-v05.15.25-test-mini_predictions.json"
MMAU_PRO = DATA / "mmau-pro_rows.json"
MMSU = DATA / "mmsu_predictions.jsonl"
TONE = 0.3 * np.sin(2 * np.pi * 440 * np.arange(1600) / 16000)


def acc(accuracy, correct, count) -> dict:
    return {"accuracy": accuracy, "correct": correct, "count": count, "ci95": wilson_percent(correct, count)}


def no_mode(by_difficulty: dict) -> dict:
    return {"total": None, "by_difficulty": by_difficulty,
            "ci95": {"total": None, "by_difficulty": dict(by_difficulty)}}


def parquet(tmp_path: Path, rows: list[dict], name: str = "test.parquet") -> Path:
    path = tmp_path / name
    pyarrow.parquet.write_table(pyarrow.Table.from_pylist(rows), path)
    return path


def test_mmau_v05_results_every_field():
    # 1 sound/easy/IE "Man" correct; 2 speech/medium/["Reasoning"] "nine" of four, nine, fourteen, fourteen:
    # correct; 3 speech/hard "twenty" of thirteen, twenty, thirteen, five: wrong; 4 music/medium 5 choices ""
    # invalid, counted wrong; 5 music/hard 8 choices "The harp, then the piano": wrong (names a second choice);
    # 6 sound/medium/IE no model_output: skipped (evaluation.py skips rows without its key).
    assert score_file(MMAU_V05, "mmau-v05.15.25") == {
        "total": acc(40.0, 2, 5),
        "by_task": {"music": acc(0.0, 0, 2), "sound": acc(100.0, 1, 1), "speech": acc(50.0, 1, 2)},
        "by_difficulty": {"easy": acc(100.0, 1, 1), "hard": acc(0.0, 0, 2), "medium": acc(50.0, 1, 2)},
        "by_category": {"Information Extraction": acc(100.0, 1, 1), "Reasoning": acc(25.0, 1, 4)},
        "no_think_rate": no_mode({"easy": None, "hard": None, "medium": None}),
        "invalid": 1,
        "skipped": 1,
        "unlabeled": 0,
    }
    assert score_file(MMAU_V05, "mmau") == score_file(MMAU_V05, "mmau-v05.15.25")  # the same layout and rule


def test_mmau_v05_loads_with_its_repeated_choices_and_list_categories(tmp_path):
    rows = json.loads(MMAU_V05.read_text())
    for row in rows:
        write_audio(tmp_path / row["audio_id"], TONE)
    path = tmp_path / "mmau-test-mini.json"
    path.write_text(json.dumps(rows))
    items = load_dataset(path, "mmau").items
    assert [len(it.choices) for it in items] == [4, 3, 3, 5, 8, 2]
    assert items[1].choices == ["four", "nine", "fourteen"] and items[1].answer == "nine"
    assert items[2].choices == ["thirteen", "twenty", "five"] and items[2].answer_index == 0
    assert [it.category for it in items[:3]] == ["Information Extraction", "Reasoning", "Reasoning"]


def test_mmar_empty_choices_are_dropped_as_its_scorer_ignores_them(tmp_path):
    # MMAR-meta.jsonl has 4 rows whose last choice is "" (e.g. ['Entered', 'Did not enter', '']).
    row = {"id": "m1", "audio_path": "./audio/m1.wav", "question": "Did they enter?", "answer": "Entered",
           "choices": ["Entered", "Did not enter", ""], "modality": "speech", "category": "Semantic Layer",
           "answer_prediction": "Did not enter"}
    write_audio(tmp_path / "audio" / "m1.wav", TONE)
    (tmp_path / "MMAR-meta.jsonl").write_text(json.dumps(row) + "\n")
    assert load_dataset(tmp_path / "MMAR-meta.jsonl", "mmar").items[0].choices == ["Entered", "Did not enter"]
    assert score_file(tmp_path / "MMAR-meta.jsonl", "mmar")["total"] == acc(0.0, 0, 1)
    # Training data stays strict: an empty choice there is an error naming the row.
    avqa = {"id": 1, "question_text": "Which?", "multi_choice": ["a", ""], "answer": 0, "audio_path": "audio/m1.wav"}
    (tmp_path / "train.jsonl").write_text(json.dumps(avqa) + "\n")
    with pytest.raises(DataError, match=r"train\.jsonl row 1: field 'multi_choice' item 1 must be a non-empty"):
        load_dataset(tmp_path / "train.jsonl", "avqa")
    (tmp_path / "train.jsonl").write_text(json.dumps({**avqa, "multi_choice": ["a", "A "]}) + "\n")
    with pytest.raises(DataError, match=r"train\.jsonl row 1: field 'multi_choice' has duplicate choices"):
        load_dataset(tmp_path / "train.jsonl", "avqa")


def test_a_text_benchmarks_answer_that_is_no_choice_is_scored_as_its_scorer_scores_it(tmp_path):
    # The MMAR-meta.json of May 2025 (the release the paper evaluated) has 5 answers that are none of the
    # choices, e.g. "American\nColombian" of ["American", "Colombian"]: string_match needs both words and no other.
    row = {"id": "m44", "audio_path": "./audio/m44.wav", "question": "Which nationalities?",
           "choices": ["American", "Colombian"], "answer": "American\nColombian", "modality": "speech",
           "category": "Semantic Layer"}
    write_audio(tmp_path / "audio" / "m44.wav", TONE)
    (tmp_path / "MMAR-meta.json").write_text(json.dumps([row]))
    item = load_dataset(tmp_path / "MMAR-meta.json", "mmar").items[0]
    assert (item.answer, item.answer_index) == ("American\nColombian", None)
    predictions = [{**row, "answer_prediction": p} for p in ("American and Colombian", "American", "Colombian")]
    (tmp_path / "predictions.json").write_text(json.dumps(predictions))
    assert score_file(tmp_path / "predictions.json", "mmar")["total"] == acc(33.33, 1, 3)
    # Held-out metrics of a training run judge it by the same rule (the token rule: both words named).
    outputs = ["<answer>American and Colombian</answer>", "<answer>American</answer>"]
    assert summarize_for_training([item, item], outputs)["eval/accuracy"] == 0.5
    # AIR and MMSU answers are read through the choice's letter: there it stays an error naming the row.
    air = {"path": "a.wav", "question": "Q?", "choice_a": "x", "choice_b": "y", "answer_gt": "z",
           "task_name": "Sound_AQA", "dataset_name": "clotho", "uniq_id": 1, "response": "A"}
    (tmp_path / "air.jsonl").write_text(json.dumps(air) + "\n")
    with pytest.raises(DataError, match=r"air\.jsonl row 1: field 'answer_gt': answer 'z' is not one of the choices"):
        score_file(tmp_path / "air.jsonl", "air")


def test_mmau_pro_multiple_choice_results_every_field(tmp_path):
    # Scored (the multiple-choice part): 1 sound "Glass breaking" = answer: correct; 2 music "Oud" (a choice,
    # not the answer): wrong; 3 speech "the speaker is angry" (no choice's exact text: needs NV-Embed-v2):
    # invalid, counted wrong; 4 sound, two clips, "The second clip": correct; 8 music model_output null: the
    # script's fillna("") -> invalid, counted wrong; 9 sound "Dog" of Dog, Cat, Dog, Bird: correct.
    # Left out as the script leaves them out of that part: 5 open, 6 instruction following, 7 one choice.
    path = parquet(tmp_path, json.loads(MMAU_PRO.read_text()))
    excluded = {
        "category 'open' (judged by a model or by format rules, not multiple choice)": 1,
        "category 'instruction following' (judged by a model or by format rules, not multiple choice)": 1,
        "fewer than 2 choices (left out of the official multiple-choice scoring)": 1,
    }
    assert score_file(path, "mmau-pro") == {
        "total": acc(50.0, 3, 6),
        "by_task": {"music": acc(0.0, 0, 2), "sound": acc(100.0, 3, 3), "speech": acc(0.0, 0, 1)},
        "by_difficulty": {},
        "by_category": {"emotion": acc(0.0, 0, 1), "events": acc(100.0, 2, 2), "instruments": acc(0.0, 0, 1),
                        "multi-audio": acc(100.0, 1, 1), "tempo": acc(0.0, 0, 1)},
        "no_think_rate": no_mode({}),
        "invalid": 2,
        "skipped": 0,
        "unlabeled": 0,
        "excluded": excluded,
    }
    report = render_report(score_file(path, "mmau-pro"), {"model": "x", "bench": "mmau-pro"}, {})
    assert "so its accuracy lies between 50.00 and 83.33." in report  # (3 + 2) / 6
    assert "1 rows, fewer than 2 choices" in report


def test_mmau_pro_loader_reads_the_parquet_and_leaves_out_several_clips(tmp_path):
    rows = json.loads(MMAU_PRO.read_text())
    for row in rows:
        row.pop("model_output")
        for clip in row["audio_path"]:
            write_audio(tmp_path / clip, TONE)
    data = load_dataset(parquet(tmp_path, rows), "mmau-pro")
    assert [it.id for it in data] == ["pro-1", "pro-2", "pro-3", "pro-8", "pro-9"]
    assert data.excluded["several audio clips (a policy takes one clip per question)"] == 1
    assert sum(data.excluded.values()) == 4
    assert data[0].audio_path == tmp_path / "data" / "pro-1-0.wav" and data[0].task == "sound"
    assert data[4].choices == ["Dog", "Cat", "Bird"]


def test_mmsu_results_every_field():
    # 1 "A" = answer: correct; 2 "The answer is B." (second-to-last): correct; 3 "C" wrong; 4 "" and
    # 5 "None": wrong answers, counted (invalid); 6 "I think it's the second one": 'Wrong format', left out;
    # 7 no response key: read as "", counted wrong; 8 "C" on a two-choice question: wrong; 9 response null:
    # the script's .strip() fails, left out (skipped); 10 "B" correct.
    assert score_file(MMSU, "mmsu") == {
        "total": acc(37.5, 3, 8),
        "by_task": {"Perception": acc(40.0, 2, 5), "Reasoning": acc(33.33, 1, 3)},
        "by_difficulty": {},
        "by_category": {"Perception / Phonology": acc(0.0, 0, 3), "Perception / Semantics": acc(100.0, 2, 2),
                        "Reasoning / Paralinguistics": acc(33.33, 1, 3)},
        "no_think_rate": no_mode({}),
        "invalid": 4,
        "skipped": 1,
        "unlabeled": 0,
    }


@pytest.mark.parametrize(("response", "expected"), [
    ("B", ("correct", True)), ("B) calm", ("correct", True)), ("A", ("wrong", True)), ("D", ("wrong", True)),
    ("", ("invalid", True)), ("None", ("invalid", True)), ("\n", ("invalid", True)), ("calm", ("invalid", False)),
])
def test_mmsu_status_is_the_official_rule(response, expected):
    assert mmsu_status(response, "calm", ["angry", "calm", "sad"]) == expected


def test_mmsu_loader_finds_audio_in_the_datasets_audio_folder(tmp_path):
    rows = [json.loads(line) for line in MMSU.read_text().splitlines()]
    for row in rows:
        write_audio(tmp_path / "audio" / row["audio_path"], TONE)
    (tmp_path / "mmsu.jsonl").write_text(MMSU.read_text())
    items = load_dataset(tmp_path / "mmsu.jsonl", "mmsu").items
    assert len(items) == 10 and items[0].audio_path == tmp_path / "audio" / "mmsu-1.wav"
    assert items[7].choices == ["male", "female"] and items[7].task == "Reasoning"


def test_choice_status_scores_exact_choices_only():
    choices = ["Slow", "Fast"]
    assert [choice_status(p, "Fast", choices) for p in ("Fast", "Slow", "fast", "It is fast", "")] == [
        "correct", "wrong", "invalid", "invalid", "invalid"]


@pytest.mark.parametrize(("bench", "text", "expected"), [
    ("mmsu", "<answer>calm</answer>", "B"), ("mmsu", "<answer>(C)</answer>", "C"), ("mmsu", "no tags: B.", "B"),
    ("mmau-pro", "<answer>calm</answer>", "calm"), ("mmau-pro", "<answer>CALM</answer>", "calm"),
    ("mmau-pro", "<answer>maybe calm or sad</answer>", "maybe calm or sad"),
    ("mmau-v05.15.25", "<think>t</think><answer>sad</answer>", "sad"),
])
def test_what_our_responses_put_under_each_new_benchmarks_key(bench, text, expected):
    assert prediction_from_text(bench, text, ["angry", "calm", "sad"], True, "lenient") == expected


def test_eval_score_reads_the_mmau_pro_parquet_and_mmsu_lines(tmp_path, capsys):
    path = parquet(tmp_path, json.loads(MMAU_PRO.read_text()))
    assert main(["eval", "score", "--bench", "mmau-pro", "--predictions", str(path)]) == 0
    assert json.loads(capsys.readouterr().out)["total"] == acc(50.0, 3, 6)
    assert main(["eval", "score", "--bench", "mmsu", "--predictions", str(MMSU)]) == 0
    assert json.loads(capsys.readouterr().out)["total"] == acc(37.5, 3, 8)
    (tmp_path / "bad.parquet").write_text("not parquet")
    assert main(["eval", "score", "--bench", "mmau-pro", "--predictions", str(tmp_path / "bad.parquet")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bad.parquet is not a readable parquet file" in err
    rows = json.loads(MMAU_PRO.read_text())
    for row in rows:
        row.pop("model_output")
    bare = parquet(tmp_path, rows, "bare.parquet")
    assert main(["eval", "score", "--bench", "mmau-pro", "--predictions", str(bare)]) == 2
    assert "no row has a prediction field" in capsys.readouterr().err
