"""What our responses put under each benchmark's prediction key, and the paper-shaped report and plot."""

from __future__ import annotations

from pathlib import Path

import pytest
from matplotlib.image import imread

from audio_thinker.app.eval.predictions import prediction_row, prediction_text
from audio_thinker.app.eval.report import plot_no_think, render_report
from audio_thinker.app.eval.scoring import score_file
from audio_thinker.core.protocol import parse_response

DATA = Path(__file__).parent.parent / "data" / "eval"
CHOICES = ["Man speaking", "Dog barking", "Car engine", "Rainfall"]
META = {
    "model": "tiny",
    "bench": "air",
    "data": "Foundation_meta.json",
    "prompt": "adaptive",
    "engine": "TransformersEngine",
    "decoding": "greedy",
    "questions": "12",
}


@pytest.mark.parametrize(
    "response, letters, mmau, air",
    [
        ("<answer>Dog barking</answer>", False, "Dog barking", "B"),
        ("<answer>  dog BARKING </answer>", False, "Dog barking", "B"),  # stored as the choice's own text
        ("<think>Barks.</think><answer>the dog barking loudly</answer>", False, "Dog barking", "B"),  # token rule
        ("<answer>(B)</answer>", True, "Dog barking", "B"),  # a letter, when the prompt listed letters
        ("<answer>B</answer>", False, "B", ""),  # a bare letter the prompt did not offer: kept as written
        ("<answer>a dog or rain</answer>", False, "a dog or rain", ""),  # names no choice
        ("Dog barking", False, "", ""),  # invalid (no tags): scored wrong on MMAU, unparseable on AIR
    ],
)
def test_prediction_text(response, letters, mmau, air):
    parsed = parse_response(response)
    assert prediction_text("mmau", parsed, CHOICES, letters) == mmau
    assert prediction_text("mmar", parsed, CHOICES, letters) == mmau
    assert prediction_text("air", parsed, CHOICES, letters) == air


def test_prediction_row_adds_every_official_key_and_keeps_the_source():
    source = {"id": "1", "choices": CHOICES, "answer": "Rainfall", "task": "sound"}
    row = prediction_row("mmau", source, "Rainfall", {"mode": "no_think"})
    assert row == {
        **source,
        "model_prediction": "Rainfall",
        "model_output": "Rainfall",
        "audio_thinker": {"mode": "no_think"},
    }
    assert "model_prediction" not in source
    with pytest.raises(ValueError, match="unknown benchmark 'mmlu'"):
        prediction_row("mmlu", source, "x", {})


def test_air_report_has_the_papers_table_3_columns():
    results = score_file(DATA / "Foundation_result.jsonl", "air")
    report = render_report(results, META, {"think": 0, "no_think": 0, "invalid": 0})
    assert report.startswith("# AIR-Bench foundation: tiny\n")
    assert (
        "| Model | Sound | Music | Speech | Average |\n|---|---|---|---|---|\n"
        "| tiny | 100.00 [20.65, 100.00] | 75.00 [30.06, 95.44] | 66.67 [20.77, 93.85] | 75.00 [40.93, 92.85] |"
        in report
    )
    # SoundAQA, MusicAQA, SER, VSC (all unparseable: no score), SNV (no score), AIR-Avg.
    assert "| Model | SoundAQA | MusicAQA | SER | VSC | SNV | AIR-Avg |" in report
    assert "| tiny | 100.00 [20.65, 100.00] | 100.00 [20.65, 100.00] | 0.00 [0.00, 79.35] | - | - | 75.00 [" in report
    assert "Scored questions: 8 (6 correct); invalid: 3; skipped (no prediction): 1; unlabeled: 0." in report
    assert "| Speaker_Number_Verification | - | 0 | 0 |" in report
    assert "by difficulty\n" not in report.split("No-think")[0]  # AIR has no difficulty levels


def test_mmar_report_orders_modalities_like_the_paper():
    results = score_file(DATA / "MMAR-meta_predictions.json", "mmar")
    report = render_report(results, {**META, "bench": "mmar"}, {})
    assert "| Model | Sound | Music | Speech | Mix-music-speech | Mix-sound-speech | Average |" in report
    assert "| tiny | 50.00 [9.45, 90.55] | 0.00 [0.00, 79.35] | 50.00 [9.45, 90.55] | 100.00 [20.65, 100.00] | - |" \
           " 50.00 [18.76, 81.24] |" in report


def test_mmau_report_has_difficulty_tables():
    results = score_file(DATA / "mmau-test-mini_predictions.json", "mmau")
    report = render_report(results, {**META, "bench": "mmau"}, {})
    assert "| Model | Easy | Medium | Hard |\n|---|---|---|---|\n| tiny | 25.00 [4.56, 69.94] | 66.67 [" in report
    assert "| Model | Easy | Medium | Hard | All |\n|---|---|---|---|---|\n| tiny | - | - | - | - |" in report


@pytest.mark.parametrize(
    "rates",
    [
        {"total": 40.0, "by_difficulty": {"hard": 10.0, "easy": 70.0, "medium": None},
         "ci95": {"total": [30.0, 50.0], "by_difficulty": {"hard": [2.0, 30.0], "easy": [50.0, 85.0], "medium": None}}},
        {"total": None, "by_difficulty": {}},  # no difficulty levels, no mode, no interval: one empty "all" bar
    ],
)
def test_plot_is_a_png(rates, tmp_path):
    path = plot_no_think({"no_think_rate": rates}, tmp_path / "plot.png", "title")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert imread(path).shape == (360, 500, 4)
