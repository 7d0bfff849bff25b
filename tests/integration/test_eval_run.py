"""`audio-thinker eval` end to end on the tiny Qwen2-Audio: files, resume, scoring of known outputs, judge audit.

Generation uses the real transformers engine (greedy). Tests that need exact outputs write them into the
run's `partial.jsonl` first, through the same `PartialLog` the runner uses: the runner then generates
nothing (the engine counts its calls) and scores what is there, so expected numbers are hand-computed.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pyarrow
import pyarrow.parquet
import pytest
from matplotlib.image import imread

from audio_thinker.app.cli.main import main
from audio_thinker.app.errors import EvalError
from audio_thinker.app.eval.options import EvalOptions
from audio_thinker.app.eval.predictions import FORMATS
from audio_thinker.app.eval.runner import PartialLog, item_seed, run_eval, run_settings
from audio_thinker.app.eval.scoring import score_file
from audio_thinker.app.data.synthetic import write_synthetic_dataset
from audio_thinker.core.audio import write_audio
from audio_thinker.core.data import load_dataset
from audio_thinker.core.protocol import LETTERS, load_template
from audio_thinker.core.stats import wilson_percent
from rollout.engine import GenerationEngine
from rollout.hf_engine import TransformersEngine

DATA = Path(__file__).parent.parent / "data" / "eval"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FILES = ("predictions.json", "results.json", "report.md", "no_think_by_difficulty.png")


class CountingEngine(GenerationEngine):
    """The real engine, recording the per-question seed of every request it generates (one seed per id)."""

    def __init__(self, inner: GenerationEngine):
        self.inner = inner
        self.family = inner.family
        self.seeds: list[int] = []

    @property
    def expected_weights(self):
        return self.inner.expected_weights

    def generate(self, requests, sampling):
        self.seeds += [r.seed for r in requests]
        return self.inner.generate(requests, sampling)

    def _load(self, named):
        self.inner._load(named)

    def close(self):
        self.inner.close()


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    """9 questions: sound / music / speech x easy / medium / hard (ids eval-000000 .. eval-000008)."""
    return write_synthetic_dataset(tmp_path_factory.mktemp("synthetic"), n=9, seed=0, split="eval")


@pytest.fixture(scope="module")
def policy(tiny_models) -> Path:
    return tiny_models["qwen2_audio"]


@pytest.fixture(scope="module")
def engine(policy) -> TransformersEngine:
    engine = TransformersEngine(policy, "qwen2_audio", "float32", "cpu")
    yield engine
    engine.close()


def spec_for(policy: Path, data: Path, out: Path, **changes) -> EvalOptions:
    return EvalOptions(
        **{
            "model": str(policy),
            "bench": "synthetic",
            "data": str(data),
            "out": str(out),
            "batch_size": 3,
            "max_new_tokens": 12,
            **changes,
        }
    )


def prefill(spec: EvalOptions, engine: GenerationEngine, outputs: dict[str, str]) -> None:
    """Put known completions into the run's partial.jsonl, as if an earlier run had generated them."""
    spec.out_dir.mkdir(parents=True, exist_ok=True)
    partial = PartialLog(spec.out_dir / "partial.jsonl", run_settings(spec, engine, load_template(spec.prompt)))
    partial.append(
        [{"id": k, "row": 0, "output": v, "finish_reason": "stop", "num_tokens": 0} for k, v in outputs.items()]
    )


def test_eval_command_end_to_end(policy, synthetic, tmp_path):
    out = tmp_path / "run"
    code = main(
        [
            "eval",
            "--model",
            str(policy),
            "--bench",
            "synthetic",
            "--data",
            str(synthetic),
            "--out",
            str(out),
            "--limit",
            "6",
            "--batch-size",
            "3",
            "--max-new-tokens",
            "12",
        ]
    )
    assert code == 0
    for name in FILES + ("partial.jsonl",):
        assert (out / name).is_file(), name
    png = (out / "no_think_by_difficulty.png").read_bytes()
    assert png[:8] == PNG_SIGNATURE and len(png) > 5000
    assert imread(out / "no_think_by_difficulty.png").shape == (360, 500, 4)  # 5 x 3.6 in at 100 dpi, RGBA

    results = json.loads((out / "results.json").read_text())
    assert results == score_file(out / "predictions.json", "synthetic")  # `eval score` reads our file the same
    assert results["total"]["count"] + results["skipped"] == 6
    assert set(results["by_task"]) == {"sound", "music", "speech"}
    assert set(results["by_difficulty"]) == {"easy", "medium"}  # the first 6 questions
    rows = json.loads((out / "predictions.json").read_text())
    manifest = [json.loads(line) for line in synthetic.read_text().splitlines()][:6]
    assert [r["id"] for r in rows] == [m["id"] for m in manifest]
    for row, source in zip(rows, manifest):
        assert {k: row[k] for k in source} == source  # the benchmark's row, untouched
        assert row["model_prediction"] == row["model_output"]
        assert row["audio_thinker"]["mode"] in ("think", "no_think", "invalid")
        assert row["audio_thinker"]["status"] in ("correct", "wrong", "invalid")
    report = (out / "report.md").read_text()
    assert "| Model | Sound | Music | Speech | Average |" in report
    assert "![no-think rate by difficulty](no_think_by_difficulty.png)" in report


def test_an_interrupted_run_resumes_without_generating_twice(policy, engine, synthetic, tmp_path):
    ids = [f"eval-{i:06d}" for i in range(6)]
    seed_of = {item_seed(0, i): i for i in ids}
    first = CountingEngine(engine)
    run_eval(spec_for(policy, synthetic, tmp_path / "a", limit=3), first)  # "interrupted" after one batch
    assert [seed_of[s] for s in first.seeds] == ids[:3]
    resumed = CountingEngine(engine)
    resumed_results = run_eval(spec_for(policy, synthetic, tmp_path / "a", limit=6), resumed)
    assert [seed_of[s] for s in resumed.seeds] == ids[3:]  # nothing generated twice

    fresh = CountingEngine(engine)
    fresh_results = run_eval(spec_for(policy, synthetic, tmp_path / "b", limit=6), fresh)
    assert [seed_of[s] for s in fresh.seeds] == ids
    assert resumed_results == fresh_results
    a, b = (json.loads((tmp_path / d / "predictions.json").read_text()) for d in "ab")
    assert a == b
    assert len((tmp_path / "a" / "partial.jsonl").read_text().splitlines()) == 1 + 6

    again = CountingEngine(engine)
    assert run_eval(spec_for(policy, synthetic, tmp_path / "a", limit=6), again) == fresh_results
    assert again.seeds == []


def test_a_cut_last_line_is_generated_again(policy, engine, synthetic, tmp_path, caplog):
    spec = spec_for(policy, synthetic, tmp_path, limit=3)
    run_eval(spec, CountingEngine(engine))
    partial = tmp_path / "partial.jsonl"
    lines = partial.read_text().splitlines()
    partial.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:20])  # killed in the middle of a write
    counting = CountingEngine(engine)
    with caplog.at_level(logging.WARNING):
        run_eval(spec, counting)
    assert "line 4 is incomplete" in caplog.text
    assert counting.seeds == [item_seed(0, "eval-000002")]
    now = partial.read_text().splitlines()
    assert now[:3] == lines[:3] and len(now) == 4 and json.loads(now[3])["id"] == "eval-000002"


def test_a_partial_file_of_other_settings_is_refused(policy, engine, synthetic, tmp_path):
    run_eval(spec_for(policy, synthetic, tmp_path, limit=1), CountingEngine(engine))
    with pytest.raises(EvalError, match=r"other settings \(different: prompt, template\)"):
        run_eval(spec_for(policy, synthetic, tmp_path, limit=1, prompt="no_think"), CountingEngine(engine))


def known_outputs(manifest: Path) -> dict[str, str]:
    """One completion per synthetic question, chosen so every count below is known (see the test)."""
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    right = [r["multi_choice"][r["answer"]] for r in rows]
    wrong = [r["multi_choice"][(r["answer"] + 1) % len(r["multi_choice"])] for r in rows]
    letter = [LETTERS[r["answer"]] for r in rows]
    texts = [
        f"<answer>{right[0]}</answer>",  # sound easy: no_think, correct
        f"<answer>{letter[1]}</answer>",  # music easy: no_think, a bare letter (letters listed), correct
        f"<think>hmm</think><answer>{wrong[2]}</answer>",  # speech easy: think, wrong
        f"<think>I count.</think>\n<answer>{right[3]}</answer>",  # sound medium: think, correct
        "no tags at all",  # music medium: invalid (scored wrong)
        f"<answer>{wrong[5]}</answer>",  # speech medium: no_think, wrong
        f"<think>x</think><answer>{right[6]}</answer>",  # sound hard: think, correct
        "<think>y</think><answer>something else entirely</answer>",  # music hard: think, names no choice
        f"<answer>{right[8]}</answer><|im_end|>",  # speech hard: no_think, correct
    ]
    return {r["id"]: t for r, t in zip(rows, texts)}


def test_known_outputs_are_scored_and_reported(policy, engine, synthetic, tmp_path):
    spec = spec_for(policy, synthetic, tmp_path, letter_choices=True, answer_extraction="strict")  # the counts below
    counting = CountingEngine(engine)
    prefill(spec, counting, known_outputs(synthetic))
    results = run_eval(spec, counting)
    assert counting.seeds == []

    def acc(accuracy, correct, count):
        return {"accuracy": accuracy, "correct": correct, "count": count, "ci95": wilson_percent(correct, count)}

    rows = [json.loads(line) for line in synthetic.read_text().splitlines()]
    qtype = {r["category"]: r["question_type"] for r in rows}
    by_task = {"music": acc(33.33, 1, 3), "sound": acc(100.0, 3, 3), "speech": acc(33.33, 1, 3)}
    assert results == {
        "total": acc(55.56, 5, 9),
        "by_task": by_task,
        "by_difficulty": {"easy": acc(66.67, 2, 3), "hard": acc(66.67, 2, 3), "medium": acc(33.33, 1, 3)},
        "by_category": {qtype[t]: v for t, v in by_task.items()},
        "no_think_rate": {"total": 50.0, "by_difficulty": {"easy": 66.67, "hard": 33.33, "medium": 50.0},
                          "ci95": {"total": wilson_percent(4, 8), "by_difficulty": {"easy": wilson_percent(2, 3),
                                   "hard": wilson_percent(1, 3), "medium": wilson_percent(1, 2)}}},
        "invalid": 1,
        "skipped": 0,
        "unlabeled": 0,
    }
    assert json.loads((tmp_path / "results.json").read_text()) == results
    predictions = json.loads((tmp_path / "predictions.json").read_text())
    answers = [r["multi_choice"][r["answer"]] for r in rows]
    assert predictions[1]["model_prediction"] == answers[1]  # the letter is stored as the choice's text
    assert predictions[4]["model_prediction"] == "" and predictions[4]["audio_thinker"]["mode"] == "invalid"
    assert predictions[7]["model_prediction"] == "something else entirely"
    assert predictions[3]["audio_thinker"] | {"output": None} == {
        "output": None,
        "mode": "think",
        "think": "I count.",
        "answer": answers[3],
        "finish_reason": "stop",
        "status": "correct",
    }
    assert score_file(tmp_path / "predictions.json", "synthetic") == results
    report = (tmp_path / "report.md").read_text()
    # sound, music, speech, average with their 95% intervals; accuracy by difficulty; no-think rate by difficulty, all
    assert ("| qwen2_audio | 100.00 [43.85, 100.00] | 33.33 [6.15, 79.23] | 33.33 [6.15, 79.23] | "
            "55.56 [26.67, 81.12] |") in report
    assert "| qwen2_audio | 66.67 [20.77, 93.85] | 33.33 [6.15, 79.23] | 66.67 [20.77, 93.85] |" in report
    assert ("| qwen2_audio | 66.67 [20.77, 93.85] | 50.00 [9.45, 90.55] | 33.33 [6.15, 79.23] | "
            "50.00 [21.52, 78.48] |") in report
    assert "Responses: think 4, no_think 4, invalid 1" in report

    # The lenient reading (the default, as the official scripts): the untagged text is read as free text, so
    # it is a wrong answer instead of an invalid one; every other prediction is the same.
    lenient = spec_for(policy, synthetic, tmp_path / "lenient", letter_choices=True)
    prefill(lenient, counting, known_outputs(synthetic))
    relaxed = run_eval(lenient, counting)
    assert relaxed["invalid"] == 0 and relaxed["total"] == results["total"]
    assert (
        json.loads((tmp_path / "lenient" / "predictions.json").read_text())[4]["model_prediction"] == "no tags at all"
    )


def write_benchmark(bench: str, root: Path) -> tuple[Path, list[dict]]:
    """The fixture's rows without predictions, as the benchmark ships them, plus a short wav per clip; the file
    and its rows."""
    if bench in ("air", "mmsu"):
        fixture = "Foundation_result.jsonl" if bench == "air" else "mmsu_predictions.jsonl"
        rows = [json.loads(line) for line in (DATA / fixture).read_text().splitlines()]
        for row in rows:
            row.pop("response", None)
        if bench == "air":
            audio = [f"{r['task_name']}_{r['dataset_name']}/{r['path']}" for r in rows]
        else:
            audio = [f"audio/{r['audio_path']}" for r in rows]
        path = root / ("Foundation_meta.json" if bench == "air" else "mmsu.json")
    elif bench == "mmau-pro":
        rows = json.loads((DATA / "mmau-pro_rows.json").read_text())
        for row in rows:
            row.pop("model_output")
        audio = [clip for r in rows for clip in r["audio_path"]]
        path = root / "test.parquet"
    else:
        fixture = "mmau-test-mini_predictions.json" if bench == "mmau" else "MMAR-meta_predictions.json"
        rows = json.loads((DATA / fixture).read_text())
        for row in rows:
            for key in ("model_prediction", "model_output", "answer_prediction"):
                row.pop(key, None)
        audio = [r["audio_id" if bench == "mmau" else "audio_path"] for r in rows]
        path = root / ("mmau-test-mini.json" if bench == "mmau" else "MMAR-meta.json")
    tone = 0.3 * np.sin(2 * np.pi * 440 * np.arange(1600) / 16000)
    for rel in audio:
        write_audio(root / rel, tone)
    if path.suffix == ".parquet":
        pyarrow.parquet.write_table(pyarrow.Table.from_pylist(rows), path)
    else:
        path.write_text(json.dumps(rows, indent=2))
    return path, rows


@pytest.mark.parametrize(
    "bench, keys",
    [
        ("mmau", ("model_prediction", "model_output")),
        ("mmar", ("answer_prediction", "model_prediction")),
        ("air", ("response",)),
        ("mmsu", ("response",)),
        ("mmau-pro", ("model_output",)),  # its multiple-choice, one-clip questions: 5 of the fixture's 9
    ],
)
def test_predictions_use_each_benchmarks_own_layout(bench, keys, policy, engine, tmp_path):
    data, source = write_benchmark(bench, tmp_path / "bench")
    items = load_dataset(data, FORMATS[bench], check_audio=False).items
    # Every answer names the right choice, except the first one's, which names the next choice.
    picked = [(it.choices.index(it.answer) + (i == 0)) % len(it.choices) for i, it in enumerate(items)]
    spec = spec_for(policy, data, tmp_path / "out", bench=bench)
    counting = CountingEngine(engine)
    prefill(spec, counting, {it.id: f"<answer>{it.choices[k]}</answer>" for it, k in zip(items, picked)})
    results = run_eval(spec, counting)
    assert counting.seeds == []
    n = len(items)
    assert results["total"] == {"accuracy": round(100 * (n - 1) / n, 2), "correct": n - 1, "count": n,
                                "ci95": wilson_percent(n - 1, n)}
    assert results["skipped"] == results["invalid"] == 0
    assert results["no_think_rate"]["total"] == 100.0
    rows = json.loads((tmp_path / "out" / "predictions.json").read_text())
    source = [source[it.row - 1] for it in items]  # the rows evaluated (row: the position in the file)
    assert len(rows) == len(source) == n
    for row, src, item, k in zip(rows, source, items, picked):
        assert {key: row[key] for key in src} == src  # the benchmark's row, untouched
        expected = LETTERS[k] if bench in ("air", "mmsu") else item.choices[k]
        assert {key: row[key] for key in keys} == dict.fromkeys(keys, expected)
    # What eval left out of the file is counted in its results.json, not in the predictions it wrote.
    assert sum(results.pop("excluded", {}).values()) == (4 if bench == "mmau-pro" else 0)
    assert score_file(tmp_path / "out" / "predictions.json", bench) == results


def test_consistency_audit_against_a_real_judge_server(tiny_models, policy, engine, synthetic, tmp_path):
    from reward_server.app import ServerSettings
    from reward_server.backends import TransformersBackend
    from reward_server.cli import ServerThread, build_server
    from reward_server.client import JudgeClient

    judge_path = str(tiny_models["qwen3_judge"])
    thread = ServerThread(
        build_server(lambda: TransformersBackend(judge_path, device="cpu"), ServerSettings(), port=0, no_auth=True)
    )
    url = thread.start()
    try:
        JudgeClient(url).wait_ready(120)
        spec = spec_for(policy, synthetic, tmp_path, letter_choices=True, judge_url=url)
        counting = CountingEngine(engine)
        prefill(spec, counting, known_outputs(synthetic))
        results = run_eval(spec, counting)
    finally:
        thread.stop(60)
    predictions = json.loads((tmp_path / "predictions.json").read_text())
    think = [p["audio_thinker"] for p in predictions if p["audio_thinker"]["mode"] == "think"]
    assert len(think) == 4 and all(d["consistency"] in (0, 1) for d in think)
    assert all("consistency" not in p["audio_thinker"] for p in predictions if p["audio_thinker"]["mode"] != "think")
    consistent = sum(d["consistency"] for d in think)
    assert results["consistency"] == {"rate": round(100 * consistent / 4, 2), "consistent": consistent, "judged": 4}
    report = (tmp_path / "report.md").read_text()
    assert f"({consistent} of 4)" in report and "## Consistency audit" in report


def test_eval_without_required_options_says_what_is_missing(capsys):
    assert main(["eval", "--bench", "mmau"]) == 2
    assert capsys.readouterr().err == "audio-thinker eval: --model is required; --data is required\n"


def test_eval_refuses_a_folder_that_is_not_a_policy(synthetic, tmp_path, capsys):
    shutil.copytree(Path(synthetic).parent, tmp_path / "notamodel")
    (tmp_path / "notamodel" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert main(["eval", "--model", str(tmp_path / "notamodel"), "--bench", "synthetic", "--data", str(synthetic)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--model: " in err
    assert "model_type 'llama' is not a Qwen2-Audio, Qwen2.5-Omni or Qwen3-Omni model" in err
