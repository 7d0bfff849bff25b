"""The command-line contract, held for every subcommand by one table of bad inputs: a missing file, a folder for a
file, an empty file, not JSON / not YAML, wrong types, zero or negative counts, an output that exists, an unknown
option, a busy port where a server starts. Each row must end with exit code 2 and exactly one stderr line, led by
the command, that names the option or the file, with no traceback, before anything heavy loads (the rows run
`main` in this process). A new subcommand joins by adding rows: `test_every_subcommand_has_rows` fails until it
has them. A UTF-8 byte-order mark is accepted alike in every input (`test_a_bom_is_read_alike_everywhere`)."""

from __future__ import annotations

import json
import logging
import socket
from dataclasses import dataclass
from pathlib import Path

import pytest

from audio_thinker.app.cli.main import main
from audio_thinker.app.cli.parsers import build_parser, subcommands
from audio_thinker.core.presets import dump_config, load_config

ROOT = Path(__file__).resolve().parents[2]
REWARDS = ROOT / "tests" / "data" / "worked_example.jsonl"
PREDICTIONS = ROOT / "tests" / "data" / "eval" / "mmau-test-mini_predictions.json"


@dataclass(frozen=True)
class Case:
    command: str  # the subcommand, e.g. "eval score"
    problem: str
    argv: tuple[str, ...]  # with {placeholders} from `inputs`
    names: tuple[str, ...]  # what the one stderr line must name (an option, a file, ...)


def case(command: str, problem: str, argv: str, *names: str) -> Case:
    return Case(command, problem, tuple(argv.split()), names)


COT = "--rationale-url http://127.0.0.1:9 --out {tmp}/cot.jsonl"
CASES = [
    case("make-tiny", "an output folder that is a file", "make-tiny --out {file}", "--out", "{file}"),
    case("make-tiny", "a negative count", "make-tiny --out {tmp}/t --warmup-steps -1", "--warmup-steps"),
    case("make-tiny", "an existing output", "make-tiny --out {tiny} --only qwen3_judge", "qwen3_judge", "--overwrite"),
    case("make-tiny", "an unknown choice", "make-tiny --out {tmp}/t --only qwen9", "--only"),
    case("make-tiny", "a wrong type", "make-tiny --out {tmp}/t --seed one", "--seed"),
    case("make-synthetic", "zero questions", "make-synthetic --out {tmp}/s --n 0", "--n"),
    case("make-synthetic", "a negative count", "make-synthetic --out {tmp}/s --n -3", "--n"),
    case("make-synthetic", "a split that is a path", "make-synthetic --out {tmp}/s --n 2 --split a/b", "--split"),
    case("make-synthetic", "an output folder that is a file", "make-synthetic --out {file} --n 2", "--out"),
    case("make-synthetic", "an existing output", "make-synthetic --out {synthetic} --n 2", "train.jsonl",
         "--overwrite"),
    case("make-synthetic", "an unknown option", "make-synthetic --out {tmp}/s --n 2 --size 3", "--size"),
    case("prepare-avqa", "a missing file", "prepare-avqa --videos {folder} --annotations {missing} --out {tmp}/a",
         "--annotations", "{missing}"),
    case("prepare-avqa", "a folder for a file", "prepare-avqa --videos {folder} --annotations {folder} --out {tmp}/a",
         "--annotations", "is a folder"),
    case("prepare-avqa", "an empty file", "prepare-avqa --videos {folder} --annotations {empty} --out {tmp}/a",
         "--annotations", "is empty"),
    case("prepare-avqa", "not JSON", "prepare-avqa --videos {folder} --annotations {garbage} --out {tmp}/a",
         "--annotations", "no valid AVQA row", "not valid JSON"),
    case("prepare-avqa", "a missing folder", "prepare-avqa --videos {missing} --annotations {garbage} --out {tmp}/a",
         "--videos"),
    case("prepare-avqa", "zero workers",
         "prepare-avqa --videos {folder} --annotations {garbage} --out {tmp}/a --workers 0", "--workers"),
    case("make-cot", "a missing file", "make-cot --data {missing} --captioner {audio_model} " + COT, "--data"),
    case("make-cot", "a model that does not hear", "make-cot --data {rewards} --captioner {text_model} " + COT,
         "--captioner", "qwen3"),
    case("make-cot", "an output that is a folder",
         "make-cot --data {rewards} --captioner {audio_model} --rationale-url http://127.0.0.1:9 --out {folder}",
         "--out"),
    case("make-cot", "a zero count", "make-cot --data {rewards} --captioner {audio_model} --batch-size 0 " + COT,
         "--batch-size"),
    case("rewards", "a missing file", "rewards --input {missing} --step 0 --total-steps 1", "--input", "{missing}"),
    case("rewards", "a folder for a file", "rewards --input {folder} --step 0 --total-steps 1", "is a folder"),
    case("rewards", "an empty file", "rewards --input {empty} --step 0 --total-steps 1", "--input", "is empty"),
    case("rewards", "not JSON", "rewards --input {garbage} --step 0 --total-steps 1", "{garbage}:1", "invalid JSON"),
    case("rewards", "a wrong type in a row", "rewards --input {bad_record} --step 0 --total-steps 1",
         "{bad_record}:1", "'choices'"),
    case("rewards", "zero steps", "rewards --input {rewards} --step 0 --total-steps 0", "--total-steps"),
    case("rewards", "a negative step", "rewards --input {rewards} --step -1 --total-steps 4", "--step"),
    case("rewards", "a wrong type", "rewards --input {rewards} --step one --total-steps 4", "--step"),
    case("serve-judge", "a missing model", "serve-judge --model {missing}", "--model", "{missing}"),
    case("serve-judge", "a folder without a model", "serve-judge --model {folder}", "--model", "no config.json"),
    case("serve-judge", "a busy port", "serve-judge --model {text_model} --port {busy}", "--port {busy}"),
    case("serve-judge", "a zero limit", "serve-judge --model {text_model} --max-items 0", "--max-items"),
    case("serve-judge", "a missing key file", "serve-judge --model {text_model} --api-key-file {missing}",
         "--api-key-file"),
    case("eval", "a missing file", "eval --model {audio_model} --bench mmau --data {missing}", "--data"),
    case("eval", "a folder for a file", "eval --model {audio_model} --bench mmau --data {folder}", "--data"),
    case("eval", "an empty file", "eval --model {audio_model} --bench mmau --data {empty}", "--data", "is empty"),
    case("eval", "a model that does not hear", "eval --model {text_model} --bench mmau --data {garbage}", "--model"),
    case("eval", "a zero count", "eval --model {audio_model} --bench mmau --data {garbage} --limit 0", "--limit"),
    case("eval", "an unknown choice", "eval --model {audio_model} --bench mmlu --data {garbage}", "--bench"),
    case("eval score", "a missing file", "eval score --bench mmau --predictions {missing}", "--predictions"),
    case("eval score", "a folder for a file", "eval score --bench mmau --predictions {folder}", "is a folder"),
    case("eval score", "an empty file", "eval score --bench mmau --predictions {empty}", "is empty"),
    case("eval score", "not JSON", "eval score --bench mmau --predictions {garbage}", "{garbage}", "not valid JSON"),
    case("eval score", "one JSON object, not rows", "eval score --bench mmau --predictions {one_object}",
         "{one_object}", "holds one JSON object (keys: results)"),
    case("eval score", "an unknown option", "eval score --bench mmau --predictions {garbage} --limit 2", "--limit"),
    case("dashboard", "a missing folder", "dashboard --runs {missing}", "--runs"),
    case("dashboard", "a busy port", "dashboard --runs {folder} --port {busy}", "--port {busy}"),
    case("dashboard", "a negative port", "dashboard --runs {folder} --port -1", "--port"),
    case("dashboard", "a zero duration", "dashboard --runs {folder} --stale-after 0", "--stale-after"),
    case("train", "a missing file", "train --config {missing}", "{missing}"),
    case("train", "a folder for a file", "train --config {folder}", "{folder}", "is a folder"),
    case("train", "an empty file", "train --config {empty_yaml}", "{empty_yaml}", "is empty"),
    case("train", "not YAML", "train --config {bad_yaml}", "{bad_yaml}", "not valid YAML", "line 3"),
    case("train", "a key given twice", "train --config {twice_yaml}", "{twice_yaml}", "duplicate key 'run'"),
    case("train", "a wrong type", "train run.total_steps=many", "run.total_steps"),
    case("train", "zero steps", "train run.total_steps=0", "run.total_steps"),
    case("train", "an unknown key", "train run.totl_steps=3", "run.totl_steps", "did you mean run.total_steps"),
    case("train", "a value the trainer cannot run", "train model.dtype=float16", "model.dtype=float16"),
    case("train", "a resume without a saved run", "train --resume run.output_dir={missing}", "{missing}",
         "holds no saved run"),
    case("train", "a config change without a resume", "train --allow-config-change", "--allow-config-change"),
    case("train", "an existing output", "train run.output_dir={saved_run}", "{saved_run}", "already holds a run"),
    case("train", "an unknown option", "train --bogus", "--bogus"),
    case("ablate", "an unknown row", "ablate --rows grpo-z", "grpo-z"),
    case("ablate", "a missing file", "ablate --rows grpo-a --preset {missing}", "{missing}"),
    case("ablate", "a zero count", "ablate --rows grpo-a --eval-limit 0", "--eval-limit"),
    case("ablate", "a missing benchmark file", "ablate --rows grpo-a --bench mmau={missing}", "--bench"),
    case("report", "a missing folder", "report --runs {missing} --out {tmp}/r", "--runs", "{missing}"),
    case("report", "a file for a folder", "report --runs {file} --out {tmp}/r", "--runs", "is a file"),
    case("report", "an output folder that is a file", "report --runs {folder} --out {file}", "--out"),
    case("report", "an existing output", "report --runs {folder} --out {table}", "table1.md", "--overwrite"),
    case("sft", "a resume without a saved run", "sft --resume run.output_dir={missing}", "holds no saved run"),
    case("sft", "not YAML", "sft --config {bad_yaml}", "{bad_yaml}", "not valid YAML"),
    case("sft", "a config change without a resume", "sft --allow-config-change", "--allow-config-change"),
    case("plan", "a missing file", "plan --config {missing}", "{missing}"),
    case("plan", "an unknown choice", "plan --job rl", "--job"),
    case("plan", "a negative count", "plan run.num_gpus=-1", "run.num_gpus"),
    case("export", "a missing folder", "export --run {missing}", "--run", "{missing}"),
    case("export", "a file for a folder", "export --run {file}", "--run", "is a file"),
    case("export", "a zero step", "export --run {saved_run} --step 0", "--step"),
    case("export", "an output folder that is a file", "export --run {saved_run} --out {file}", "--out"),
    case("export", "an existing output", "export --run {saved_run} --out {folder}", "{folder}", "--overwrite"),
]  # fmt: skip


@pytest.fixture
def inputs(tmp_path) -> dict[str, str]:
    """The bad inputs (and a few good ones the rows need) as files under tmp_path, by placeholder name."""
    folder = tmp_path / "a-folder"
    folder.mkdir()
    files = {
        "empty": "",
        "empty_yaml": "",
        "garbage": "{not json: [\n",
        "file": "not a folder\n",
        "bad_yaml": "run:\n  total_steps: [1,\n  seed: }\n",
        "twice_yaml": "run:\n  total_steps: 2\nrun:\n  seed: 1\n",
        "one_object": json.dumps({"results": [{"id": "a", "model_prediction": "x"}]}),  # one line, as json.dump writes
        "bad_record": json.dumps({"group": "q", "response": "<answer>a</answer>", "choices": "a", "answer": "a"})
        + "\n",
        "audio_model/config.json": json.dumps({"model_type": "qwen2_audio"}),
        "text_model/config.json": json.dumps({"model_type": "qwen3"}),
        "tiny/qwen3_judge/config.json": "{}",
        "synthetic/train.jsonl": "{}\n",
        "table/table1.md": "| row |\n",
        "saved_run/metrics.jsonl": json.dumps({"step": 1}) + "\n",
    }
    paths = {"tmp": str(tmp_path), "folder": str(folder), "missing": str(tmp_path / "missing.json")}
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        paths[name.split("/")[0]] = str(tmp_path / name.split("/")[0])
    dump_config(load_config(), tmp_path / "saved_run" / "config.yaml")
    paths["rewards"] = str(REWARDS)
    return paths


@pytest.fixture
def busy_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


@pytest.fixture(autouse=True)
def _console_on_captured_stderr():
    """`main` sets up logging once per process: here each row gets a console handler on the stderr being captured,
    so a log line printed beside the error counts against the one line; the root logger is restored after."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    for h in handlers:
        if getattr(h, "_audio_thinker", False):
            root.removeHandler(h)
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def run_main(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_every_subcommand_has_rows():
    commands = {prog.removeprefix("audio-thinker ") for prog in subcommands(build_parser())}
    assert commands == {c.command for c in CASES}


@pytest.mark.parametrize("row", CASES, ids=[f"{c.command}: {c.problem}" for c in CASES])
def test_a_bad_input_is_one_line_naming_it_and_exit_code_2(row, inputs, busy_port, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # nothing a row writes lands in the checkout
    values = {**inputs, "busy": busy_port}
    argv = [arg.format(**values) for arg in row.argv]
    code, out, err = run_main(argv, capsys)
    assert code == 2, (argv, out, err)
    assert out == "" and err.count("\n") == 1 and err.endswith("\n"), err
    assert err.startswith(f"audio-thinker {row.command.split()[0]}"), err
    assert "Traceback" not in err
    for name in row.names:
        assert name.format(**values) in err, (name, err)


def test_a_bom_is_read_alike_everywhere(tmp_path, capsys):
    """JSON lines, a JSON file and a YAML config with a UTF-8 byte-order mark give what they give without it."""
    config = tmp_path / "run.yaml"
    config.write_text("run:\n  total_steps: 7\n")
    pairs = {
        "rewards": (REWARDS, ["rewards", "--step", "1", "--total-steps", "10", "--input"]),
        "eval score": (PREDICTIONS, ["eval", "score", "--bench", "mmau", "--predictions"]),
        "plan": (config, ["plan", "--config"]),
    }
    for name, (source, argv) in pairs.items():
        bom = tmp_path / f"bom-{source.name}"
        bom.write_bytes(b"\xef\xbb\xbf" + source.read_bytes())
        plain = run_main([*argv, str(source)], capsys)
        marked = run_main([*argv, str(bom)], capsys)
        assert plain[0] == 0 and marked == plain, name


@pytest.mark.parametrize("value, code", [("debug", 0), ("Warning", 0), ("loud", 2)])
def test_the_log_level_variable_in_any_case(value, code, monkeypatch, capsys):
    monkeypatch.setenv("AUDIO_THINKER_LOG_LEVEL", value)
    got, _, err = run_main(["plan"], capsys)
    assert got == code
    if code:
        assert err.count("\n") == 1 and "AUDIO_THINKER_LOG_LEVEL='loud'" in err and "DEBUG" in err


def test_rewards_errors_show_their_traceback_at_debug(tmp_path, capsys, caplog):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    argv = ["rewards", "--input", str(bad), "--step", "0", "--total-steps", "1"]
    assert run_main(argv, capsys)[0] == 2 and not any(r.exc_info for r in caplog.records)
    assert run_main(["--log-level", "DEBUG", *argv], capsys)[0] == 2
    assert any(r.exc_info and "invalid JSON" in str(r.exc_info[1]) for r in caplog.records)


def test_prepare_avqa_reads_a_bom_and_refuses_a_file_without_rows(tmp_path, capsys):
    row = {"id": 1, "video_name": "v1", "question_text": "What is in the video?", "multi_choice": ["a", "b"],
           "answer": 0, "question_relation": "View", "question_type": "Which"}  # fmt: skip
    videos = tmp_path / "videos"
    videos.mkdir()  # no video: the row is left out as missing, and counted
    plain, bom = tmp_path / "plain.json", tmp_path / "bom.json"
    plain.write_text(json.dumps([row]))
    bom.write_bytes(b"\xef\xbb\xbf" + plain.read_bytes())
    reports = []
    for name, source in (("a", plain), ("b", bom)):
        argv = ["prepare-avqa", "--videos", str(videos), "--annotations", str(source), "--out", str(tmp_path / name)]
        assert run_main(argv, capsys)[0] == 0
        reports.append(json.loads((tmp_path / name / "train-report.json").read_text()))
    assert [(r["rows"], r["rows_invalid"], r["videos_missing"]) for r in reports] == [(1, 0, 1)] * 2
    plain.write_text("[]")
    argv = ["prepare-avqa", "--videos", str(videos), "--annotations", str(plain), "--out", str(tmp_path / "c")]
    code, _, err = run_main(argv, capsys)
    assert code == 2 and "no valid AVQA row (it holds no rows)" in err and not (tmp_path / "c" / "train.jsonl").exists()
