"""Official scoring rules on files shaped like the benchmarks' own, checked field by field against hand counts.

Fixtures in tests/data/eval/ (audio is not needed to score):
- mmau-test-mini_predictions.json: mmau-test-mini.json rows plus `model_prediction` (one row: `model_output`
  only, as later versions of MMAU's script read it).
- MMAR-meta_predictions.json: MMAR-meta.json rows plus `answer_prediction` (one row: `model_prediction`).
- Foundation_result.jsonl: the JSON-lines file AIR-Bench's Inference_Foundation.py writes (`response`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from audio_thinker.app.cli.main import main
from audio_thinker.app.eval.predictions import read_predictions
from audio_thinker.app.eval.scoring import air_letter, air_status, score_file, score_rows, token_match_status
from audio_thinker.core.accuracy import Scored, aggregate, summarize_for_training
from audio_thinker.core.data import AudioQuestion
from audio_thinker.core.manifests import DataError
from audio_thinker.core.stats import wilson_percent

DATA = Path(__file__).parent.parent / "data" / "eval"
MMAU = DATA / "mmau-test-mini_predictions.json"
MMAR = DATA / "MMAR-meta_predictions.json"
AIR = DATA / "Foundation_result.jsonl"


def acc(accuracy, correct, count) -> dict:
    """An accuracy group: the hand-counted numbers and the Wilson interval of those counts (tests/unit/test_stats.py
    checks the interval itself against hand computations)."""
    return {"accuracy": accuracy, "correct": correct, "count": count, "ci95": wilson_percent(correct, count)}


def no_mode(by_difficulty: dict) -> dict:
    """The no-think rate of a file without our modes (another system's): null everywhere."""
    return {"total": None, "by_difficulty": by_difficulty,
            "ci95": {"total": None, "by_difficulty": dict(by_difficulty)}}


def test_mmau_results_every_field():
    # Rows (hand-scored with the official string_match):
    #  1 sound/easy/IE      "Dog barking"                 correct
    #  2 music/easy/IE      "Electric piano" vs "Piano"   wrong (answer word inside a wrong choice)
    #  3 speech/medium/R    "The speaker sounds sad."     correct (extra words)
    #  4 music/medium/IE    "B"                           wrong (a bare letter)
    #  5 speech/hard/R      ""                            invalid, counted wrong
    #  6 sound/hard/R       no prediction key             skipped
    #  7 speech/easy/IE     "A man" vs "A man and a woman" wrong
    #  8 speech/medium/IE   "a man" vs "A man"            correct
    #  9 sound/medium/IE    model_prediction null         skipped
    # 10 sound/easy/R       "Dog barking or rainfall"     wrong (names a second choice)
    # 11 music/hard/R       "high pitch."                 correct
    # 12 sound/hard/R       model_output "Rainfall"       correct
    assert score_file(MMAU, "mmau") == {
        "total": acc(50.0, 5, 10),
        "by_task": {"music": acc(33.33, 1, 3), "sound": acc(66.67, 2, 3), "speech": acc(50.0, 2, 4)},
        "by_difficulty": {"easy": acc(25.0, 1, 4), "hard": acc(66.67, 2, 3), "medium": acc(66.67, 2, 3)},
        "by_category": {"Information Extraction": acc(40.0, 2, 5), "Reasoning": acc(60.0, 3, 5)},
        "no_think_rate": no_mode({"easy": None, "hard": None, "medium": None}),
        "invalid": 1,
        "skipped": 2,
        "unlabeled": 0,
    }


def test_mmar_results_every_field():
    # 0 sound "2" correct; 1 music "minor" vs "Minor key" wrong; 2 speech extra words correct;
    # 3 mix-sound-speech no prediction skipped; 4 mix-music-speech model_prediction correct;
    # 5 speech "  " invalid (counted wrong); 6 sound "C" wrong.
    assert score_file(MMAR, "mmar") == {
        "total": acc(50.0, 3, 6),
        "by_task": {
            "mix-music-speech": acc(100.0, 1, 1), "mix-sound-speech": acc(None, 0, 0), "music": acc(0.0, 0, 1),
            "sound": acc(50.0, 1, 2), "speech": acc(50.0, 1, 2),
        },
        "by_difficulty": {},
        "by_category": {
            "Cultural Layer": acc(100.0, 1, 1), "Perception Layer": acc(100.0, 1, 1),
            "Semantic Layer": acc(0.0, 0, 2), "Signal Layer": acc(50.0, 1, 2),
        },
        "no_think_rate": no_mode({}),
        "invalid": 1,
        "skipped": 1,
        "unlabeled": 0,
    }


def test_air_results_every_field():
    # 101 Sound_AQA "B" correct; 102 Music_AQA "The answer is A." correct (second-to-last char);
    # 103 SER "A" wrong; 104 VSC "None" invalid; 105 SNV "" invalid; 106 SNV no response skipped;
    # 107 Sound_AQA "I think it is a street" invalid; 108 genre "D. Rock" correct;
    # 109 genre "Classical music" -> "C" wrong (the official first-character rule);
    # 110 MIDI pitch (numbers in the meta) "C" correct; 111 gender (2 choices) "B" correct;
    # 112 synthesized voice "\nB.\n" correct. Unparseable answers are left out of the accuracy.
    assert score_file(AIR, "air") == {
        "total": acc(75.0, 6, 8),
        "by_task": {"music": acc(75.0, 3, 4), "sound": acc(100.0, 1, 1), "speech": acc(66.67, 2, 3)},
        "by_difficulty": {},
        "by_category": {
            "Music_AQA": acc(100.0, 1, 1), "Music_Genre_Recognition": acc(50.0, 1, 2),
            "Music_Midi_Pitch_Analysis": acc(100.0, 1, 1), "Sound_AQA": acc(100.0, 1, 1),
            "Speaker_Emotion_Recontion": acc(0.0, 0, 1), "Speaker_Gender_Recognition": acc(100.0, 1, 1),
            "Speaker_Number_Verification": acc(None, 0, 0), "Synthesized_Voice_Detection": acc(100.0, 1, 1),
            "vocal_sound_classification": acc(None, 0, 0),
        },
        "no_think_rate": no_mode({}),
        "invalid": 3,
        "skipped": 1,
        "unlabeled": 0,
    }


@pytest.mark.parametrize("response, letter", [
    ("A", "A"), ("B.", "B"), ("D) Rock", "D"), ("The answer is C.", "C"), ("answer: (B)", "B"),
    ("\n C \n", "C"), ("Cat", "C"), ("E", None), ("a", None), ("", None), ("None", None), ("  ", None),
    ("It is a dog", None), ("x", None),
])
def test_air_letter_is_the_official_rule(response, letter):
    assert air_letter(response) == letter


def test_air_status_uses_the_choice_position():
    choices = ["58", "60", "62"]
    assert air_status("C", "62", choices) == "correct"
    assert air_status("D", "62", choices) == "wrong"  # a letter past the choices is a wrong answer, as officially
    assert air_status("hmm", "62", choices) == "invalid"


@pytest.mark.parametrize("prediction, status", [
    ("Dog barking", "correct"), ("dog  BARKING!", "correct"), ("I hear a dog barking.", "correct"),
    ("dog", "wrong"), ("Dog barking, not rainfall", "wrong"), ("B", "wrong"), ("", "invalid"), ("?!", "invalid"),
])
def test_token_match_status(prediction, status):
    choices = ["Man speaking", "Dog barking", "Car engine", "Rainfall"]
    assert token_match_status(prediction, "Dog barking", choices) == status


def test_rows_without_answer_are_unlabeled_not_wrong(tmp_path):
    rows = json.loads(MMAU.read_text())
    for row in rows:
        row.pop("answer")  # the MMAU test split withholds answers
    path = tmp_path / "mmau-test_predictions.json"
    path.write_text(json.dumps(rows))
    results = score_file(path, "mmau")
    assert results["total"] == acc(None, 0, 0)
    assert results["unlabeled"] == 10 and results["skipped"] == 2 and results["invalid"] == 0


def test_no_think_rate_counts_valid_responses_by_difficulty():
    def row(status, difficulty, mode):
        return Scored("x", status, status in ("correct", "wrong"), "sound", difficulty, None, mode)

    scored = [
        row("correct", "easy", "no_think"), row("correct", "easy", "no_think"), row("wrong", "easy", "think"),
        row("wrong", "easy", "invalid"),  # not in the rate: neither think nor no_think
        row("correct", "hard", "think"), row("wrong", "hard", "think"), row("skipped", "hard", None),
        row("correct", "medium", "no_think"),
    ]
    results = aggregate(scored)
    assert results["no_think_rate"] == {
        "total": round(100 * 3 / 6, 2), "by_difficulty": {"easy": 66.67, "hard": 0.0, "medium": 100.0},
        "ci95": {"total": wilson_percent(3, 6), "by_difficulty": {
            "easy": wilson_percent(2, 3), "hard": wilson_percent(0, 2), "medium": wilson_percent(1, 1)}},
    }
    assert results["total"] == acc(57.14, 4, 7)
    assert results["no_think_rate"]["ci95"]["by_difficulty"]["hard"] == [0.0, 65.76]  # z^2 / (2 + z^2)


def test_jsonl_and_json_list_read_the_same(tmp_path):
    rows = [json.loads(line) for line in AIR.read_text().splitlines()]
    listed = tmp_path / "Foundation_result.json"
    listed.write_text(json.dumps(rows, indent=1))
    assert score_file(listed, "air") == score_file(AIR, "air")


def test_bad_prediction_value_names_file_row_and_field(tmp_path):
    rows = json.loads(MMAR.read_text())
    rows[2]["answer_prediction"] = 3
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(rows))
    with pytest.raises(DataError, match=r"bad\.json row 3: field 'answer_prediction' must be a string"):
        read_predictions(path, "mmar")


def test_bad_answer_names_file_row_and_field(tmp_path):
    rows = [json.loads(line) for line in AIR.read_text().splitlines()]
    rows[1]["answer_gt"] = "Allegro"
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=r"bad\.jsonl row 2: field 'answer_gt': answer 'Allegro' is not one of"):
        score_rows(read_predictions(path, "air"), "air")


def test_eval_score_command_prints_the_results_object(capsys):
    assert main(["eval", "score", "--bench", "air", "--predictions", str(AIR)]) == 0
    assert json.loads(capsys.readouterr().out) == score_file(AIR, "air")


def test_eval_score_command_reports_a_missing_file(tmp_path, capsys):
    assert main(["eval", "score", "--bench", "mmau", "--predictions", str(tmp_path / "nope.json")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--predictions {tmp_path / 'nope.json'}: no such file" in err


@pytest.mark.parametrize(
    "name,text,bench,pattern",
    [
        ("results.json", json.dumps({"total": {}, "skipped": 0}, indent=2), "mmau",
         r"results\.json holds one JSON object \(keys: total, skipped\), not rows"),
        ("list.json", "[1, 2]", "mmau", r"list\.json row 1: expected a JSON object, got int"),
        ("cut.json", '[{"id": "a"}', "mmau", r"cut\.json is not valid JSON \("),
        ("mmar.json", (DATA / "MMAR-meta_predictions.json").read_text(), "mmau", r"mmar\.json row 1: missing field"),
        ("manifest.jsonl", json.dumps({"id": "q1", "question": "Which?", "choices": ["a", "b"], "answer": "a",
                                       "audio_id": "x.wav"}) + "\n", "mmau",
         r"manifest\.jsonl: no row has a prediction field"),
    ],
)
def test_eval_score_names_the_expected_layout_and_the_first_wrong_field(tmp_path, capsys, name, text, bench, pattern):
    path = tmp_path / name
    path.write_text(text)
    assert main(["eval", "score", "--bench", bench, "--predictions", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "manifest " not in err
    assert re.search(pattern, err), err
    assert "expected a mmau predictions file: a JSON list or JSON lines of rows with id, question, choices, " \
           "answer, audio_id and the prediction in model_prediction or model_output" in err


def test_summarize_for_training_gives_fractions():
    def item(i, task, difficulty):
        return AudioQuestion(f"q{i}", "Which?", ["yes", "no"], "yes", Path("x.wav"), task, difficulty)

    items = [item(0, "sound", "easy"), item(1, "sound", "hard"), item(2, "music", "easy"), item(3, "music", "hard")]
    outputs = ["<answer>yes</answer>", "<think>t</think><answer>no</answer>", "<think>t</think><answer>yes</answer>",
               "garbage"]
    assert summarize_for_training(items, outputs) == {
        "eval/accuracy": 0.5, "eval/invalid_rate": 0.25, "eval/no_think_rate": round(100 / 3, 2) / 100,
        "eval/accuracy/music": 0.5, "eval/accuracy/sound": 0.5, "eval/accuracy/easy": 1.0, "eval/accuracy/hard": 0.0,
        "eval/no_think_rate/easy": 0.5, "eval/no_think_rate/hard": 0.0,
    }
