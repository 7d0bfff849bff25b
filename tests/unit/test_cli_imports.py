"""The light commands answer at once: `--help` of every subcommand, `rewards`, `eval score`, `plan`, `report` and
`make-synthetic` run to the end without importing torch, transformers, DeepSpeed, vLLM or Ray (their timings are
bench/cli_latency.py's; this checks the behaviour that makes them fast). One fresh interpreter runs them all in turn
and reports, after each, the heavy modules it has loaded."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from audio_thinker.app.cli.parsers import build_parser, subcommands
from audio_thinker.app.eval.scoring import score_file
from audio_thinker.core.presets import dump_config, load_config

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "transformers", "deepspeed", "vllm", "ray")
PREDICTIONS = ROOT / "tests" / "data" / "eval" / "mmau-test-mini_predictions.json"

RUNNER = """
import contextlib, io, json, sys
from audio_thinker.app.cli.main import main
report = []
for argv in json.loads(sys.argv[1]):
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as exc:  # --help
            code = exc.code
    report.append({"argv": argv, "code": code, "heavy": sorted({m.split(".")[0] for m in sys.modules} & set(HEAVY))})
print(json.dumps(report))
""".replace("HEAVY", repr(HEAVY))


def run_commands(commands: list[list[str]], cwd: Path) -> list[dict]:
    out = subprocess.run(
        [sys.executable, "-c", RUNNER, json.dumps(commands)], cwd=cwd, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.splitlines()[-1])


def test_light_commands_import_neither_torch_nor_ray(tmp_path):
    run = tmp_path / "run"  # a run directory with one evaluation: what `report` reads
    (run / "eval" / "mmau").mkdir(parents=True)
    dump_config(load_config(), run / "config.yaml")
    (run / "eval" / "mmau" / "results.json").write_text(json.dumps(score_file(PREDICTIONS, "mmau")))
    helps = [[*prog.split()[1:], "--help"] for prog in subcommands(build_parser())]
    commands = [
        ["--help"],
        *helps,
        ["make-synthetic", "--out", str(tmp_path / "data"), "--n", "3"],
        ["rewards", "--input", str(ROOT / "tests" / "data" / "worked_example.jsonl"), "--step", "1",
         "--total-steps", "10"],
        ["eval", "score", "--bench", "mmau", "--predictions", str(PREDICTIONS)],
        ["plan"],
        ["plan", "--config", "qwen2-audio-7b"],
        ["plan", "--config", "sft-a"],
        ["report", "--runs", str(run), "--out", str(tmp_path / "table")],
    ]  # fmt: skip
    report = run_commands(commands, tmp_path)
    assert [r["argv"] for r in report] == commands
    for r in report:
        assert r["code"] == 0, r["argv"]
        assert r["heavy"] == [], f"{r['argv']} imported {r['heavy']}"
    assert (tmp_path / "data" / "train.jsonl").is_file() and (tmp_path / "table" / "table1.md").is_file()
