"""The `audio-thinker` command line contract: help shows every default, --log-level on either side of the
subcommand, every project error is one stderr line and exit code 2 (the traceback only at DEBUG)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import types
from pathlib import Path

import pytest

from audio_thinker.app.cli.main import main
from audio_thinker.app.cli.parsers import build_parser, subcommands
from audio_thinker.app.eval.options import EvalOptions, ScoreOptions
from audio_thinker.core.options import option_name
from audio_thinker.core.presets import dump_config
from reward_server.options import ServeOptions

AVQA_ROW = {"id": "q1", "question_text": "Which?", "multi_choice": ["a", "b"], "answer": 0, "audio_path": "x.wav"}


@pytest.fixture(autouse=True)
def _keep_root_level():
    level = logging.getLogger().level
    yield
    logging.getLogger().setLevel(level)


@pytest.fixture
def manifest(tmp_path) -> Path:
    path = tmp_path / "eval.jsonl"
    path.write_text(json.dumps(AVQA_ROW) + "\n")
    return path


@pytest.fixture
def policy(tmp_path) -> Path:
    folder = tmp_path / "policy"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "qwen2_audio"}))
    return folder


def normalized_help(parser: argparse.ArgumentParser) -> str:
    return " ".join(parser.format_help().split())


def test_every_option_of_every_command_has_help_showing_its_default():
    parsers = subcommands(build_parser())
    assert {"audio-thinker export", "audio-thinker eval score", "audio-thinker serve-judge"} <= set(parsers)
    for prog, parser in parsers.items():
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
                continue
            assert action.help, f"{prog} {action.dest}: no help"
            assert "(default: " in action.help or action.help.endswith("(required)"), f"{prog} {action.dest}"


@pytest.mark.parametrize(
    "argv,models",
    [(["serve-judge"], [ServeOptions]), (["eval"], [EvalOptions]), (["eval", "score"], [ScoreOptions])],
)
def test_help_of_typed_commands_shows_every_field_and_default(argv, models, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    parser = subcommands(build_parser())[" ".join(["audio-thinker", *argv])]
    text = normalized_help(parser)
    for model in models:
        for name, field in model.model_fields.items():
            assert option_name(name) in text or f"--no-{name.replace('_', '-')}" in text, name
            if field.is_required():
                continue
            default = field.get_default()
            shown = "none" if default is None else {True: "on", False: "off"}[default] if isinstance(
                default, bool) else default
            assert f"(default: {shown}" in text, name
    assert "(default: 16777216)" in normalized_help(subcommands(build_parser())["audio-thinker serve-judge"])


def test_log_level_before_or_after_the_subcommand():
    parser = build_parser()
    rest = ["--input", "x.jsonl", "--step", "0", "--total-steps", "1"]
    assert parser.parse_args(["rewards", *rest]).log_level is None
    assert parser.parse_args(["--log-level", "WARNING", "rewards", *rest]).log_level == "WARNING"
    assert parser.parse_args(["rewards", "--log-level", "debug", *rest]).log_level == "DEBUG"
    assert parser.parse_args(["eval", "score", "--bench", "air", "--predictions", "p", "--log-level", "ERROR"]
                             ).log_level == "ERROR"


def test_log_level_after_the_subcommand_is_applied(tmp_path, capsys):
    assert main(["rewards", "--log-level", "DEBUG", "--input", str(tmp_path / "no.jsonl"), "--step", "0",
                 "--total-steps", "1"]) == 2
    assert logging.getLogger().level == logging.DEBUG


def one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1, captured.err
    assert captured.err.startswith(f"audio-thinker {argv[0]}: ")
    return captured.err


def test_eval_checks_its_inputs_before_loading_a_model(capsys, monkeypatch, tmp_path, manifest, policy):
    monkeypatch.setitem(sys.modules, "audio_thinker.app.eval.runner", types.SimpleNamespace())  # never reached
    base = ["eval", "--model", str(policy), "--bench", "synthetic"]
    assert "--data is required" in one_line_error(capsys, base)
    assert f"--data {tmp_path / 'missing.jsonl'} is not a file" in one_line_error(
        capsys, [*base, "--data", str(tmp_path / "missing.jsonl")])
    missing_root = [*base, "--data", str(manifest), "--audio-root", str(tmp_path / "x")]
    assert f"--audio-root {tmp_path / 'x'} is not a folder" in one_line_error(capsys, missing_root)
    err = one_line_error(capsys, ["eval", "--model", str(tmp_path), "--bench", "synthetic", "--data", str(manifest)])
    assert "--model: " in err and "no config.json" in err
    assert "--batch-size: Input should be greater than or equal to 1 (got 0)" in one_line_error(
        capsys, [*base, "--data", str(manifest), "--batch-size", "0"])


def test_eval_score_of_a_benchmark_file_without_predictions(capsys, manifest):
    err = one_line_error(capsys, ["eval", "score", "--bench", "synthetic", "--predictions", str(manifest)])
    assert "no row has a prediction field" in err and "expected a synthetic predictions file" in err


def test_serve_judge_bad_limit_names_the_option(capsys):
    err = one_line_error(capsys, ["serve-judge", "--model", "m", "--max-items", "2000", "--max-queue", "10"])
    assert "--max-items: max_items (2000) > max_queue (10)" in err


def test_train_config_error_is_one_line(capsys):
    err = one_line_error(capsys, ["train", "judge.max_items=2000", "run.total_steps=0"])
    assert "judge.max_items" in err and "run.total_steps" in err


def test_traceback_only_at_debug(capsys, caplog, monkeypatch, manifest):
    monkeypatch.delenv("AUDIO_THINKER_LOG_LEVEL", raising=False)
    argv = ["eval", "score", "--bench", "synthetic", "--predictions", str(manifest)]
    assert main(argv) == 2
    assert not any(r.exc_info for r in caplog.records)
    assert main(["--log-level", "DEBUG", *argv]) == 2
    assert any(r.exc_info and "no row has a prediction" in str(r.exc_info[1]) for r in caplog.records)
    assert capsys.readouterr().err.count("audio-thinker eval: ") == 2


def test_rehearse_prints_and_records_the_swaps_once_and_a_resume_keeps_the_record(monkeypatch, capsys, tmp_path):
    runs = []
    monkeypatch.setitem(sys.modules, "audio_thinker.app.train.driver",
                        types.SimpleNamespace(run_training=lambda config, **kw: runs.append((config, kw))))
    monkeypatch.setattr("audio_thinker.app.cli.commands.check_plan", lambda c, **kw: None)
    demo = types.SimpleNamespace(prepare_demo=lambda c: None, synthetic_splits=lambda c: [])
    monkeypatch.setitem(sys.modules, "audio_thinker.app.data.demo", demo)
    run = tmp_path / "run"
    argv = ["train", "--config", "qwen2-audio-7b", "--rehearse", "--verbose", "run.total_steps=2",
            f"run.output_dir={run}"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("rehearsal of qwen2-audio-7b: swapped") and "model.dtype: bfloat16 -> float32" in out
    config, _ = runs[0]
    assert config.run.rehearse and config.trainer.num_ranks == 5 and config.model.dtype == "float32"
    record = json.loads((run / "rehearsal.json").read_text())
    assert record["preset"] == "qwen2-audio-7b" and "model.dtype" in {s["what"] for s in record["swaps"]}
    assert record["cluster"] == {"cpus": 37, "gpus": 8}
    record["checks"] = [{"check": "placement", "ok": True}]
    (run / "rehearsal.json").write_text(json.dumps(record))
    dump_config(config, run / "config.yaml")  # the first run's saved config: resumed below
    assert main(["train", "--resume", "--verbose", f"run.output_dir={run}"]) == 0
    assert runs[1][0].run.rehearse and runs[1][0].trainer.num_ranks == 5
    assert json.loads((run / "rehearsal.json").read_text())["checks"] == [{"check": "placement", "ok": True}]
    assert "swapped" not in capsys.readouterr().out
