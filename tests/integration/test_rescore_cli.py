"""`audio-thinker rewards` in-process and as a subprocess, its error contract, the doc's worked example."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from audio_thinker.app.cli.main import main
from audio_thinker.app.eval.rescore import RecordError, rescore_records

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "tests" / "data" / "worked_example.jsonl"
DOC = ROOT / "docs" / "rewards.md"
FIELDS = ["mode", "correct", "format", "accuracy", "consistency", "think", "total", "advantage"]


def _run(capsys, path: Path, *extra: str) -> tuple[int, str, str]:
    code = main(["rewards", "--input", str(path), *extra])
    out, err = capsys.readouterr()
    return code, out, err


def _write(tmp_path: Path, rows: list) -> Path:
    path = tmp_path / "rollouts.jsonl"
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _row(**kw) -> dict:
    row = {"group": "q", "response": "<answer>dog</answer>", "choices": ["dog", "cat"], "answer": "dog"}
    row.update(kw)
    return row


def _table(title: str) -> list[list[str]]:
    """Body rows of the first markdown table after the line that starts with `title`."""
    lines = DOC.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title))
    rows, seen = [], False
    for line in lines[start:]:
        if line.startswith("|"):
            seen = True
            cells = [c.strip() for c in line.strip("|").split("|")]
            if not set(cells[0]) <= set("-"):
                rows.append(cells)
        elif seen:
            break
    return rows[1:]  # drop the header


def test_worked_example_in_the_doc_matches_the_code():
    records = [json.loads(line) for line in EXAMPLE.read_text().splitlines()]
    result = rescore_records(records, step=250, total_steps=1000, variant="atar_cr_tr")
    batch = {name: float(value) for name, value in _table("| batch | value |")}
    assert set(batch) == {"think_rate", "gamma_think", "gamma_no_think"}
    for name, value in batch.items():
        assert result["batch"][name] == pytest.approx(value, abs=5e-5), name
    rows = _table("**Per sample.**")
    assert len(rows) == len(records) == 8
    for row, sample in zip(rows, result["samples"]):
        assert row[1] == sample["mode"]
        assert row[2] == ("yes" if sample["correct"] else "no")
        numbers = [float(x) for x in row[3:]]
        expected = [sample[k] for k in ("format", "accuracy", "consistency", "think", "total", "advantage")]
        assert numbers == pytest.approx(expected, abs=5e-5), row[0]


def test_invalid_accuracy_zero_is_the_earlier_rule():
    """With `zero` the invalid row 8 earns 0 and beats the wrong direct answer of row 7 (docs/rewards.md sec. 3)."""
    records = [json.loads(line) for line in EXAMPLE.read_text().splitlines()]
    zero = rescore_records(records, 250, 1000, "atar_cr_tr", invalid_accuracy="zero")["samples"]
    worst = rescore_records(records, 250, 1000, "atar_cr_tr")["samples"]
    assert zero[7]["accuracy"] == zero[7]["total"] == 0.0 and zero[7]["total"] > zero[6]["total"]
    assert worst[7]["accuracy"] == worst[6]["accuracy"] == pytest.approx(-1.2749, abs=5e-5)
    assert worst[7]["total"] == pytest.approx(worst[6]["total"] - 0.5 - 0.55)
    assert [s["advantage"] for s in zero] == pytest.approx(
        [0.6859, 0.0944, -0.4070, -0.7652, 1.2935, 1.2935, -1.1781, -1.0170], abs=5e-5
    )


def test_cli_in_process_matches_rescore_records(capsys):
    code, out, err = _run(capsys, EXAMPLE, "--step", "250", "--total-steps", "1000")
    assert code == 0 and err == ""
    result = json.loads(out)
    assert out.count("\n") == 1  # one JSON object
    records = [json.loads(line) for line in EXAMPLE.read_text().splitlines()]
    assert result == rescore_records(records, 250, 1000, "atar_cr_tr")
    assert [list(s) for s in result["samples"]] == [FIELDS] * 8
    assert [s["mode"] for s in result["samples"]] == ["think"] * 4 + ["no_think"] * 3 + ["invalid"]


def test_cli_variant_and_letters(capsys, tmp_path):
    rows = [
        _row(response="<answer>(B)</answer>", choices=["dog", "cat"], answer="cat", letters=True),
        _row(response="<answer>B</answer>", choices=["dog", "cat"], answer="cat"),  # no letters: not a match
        _row(response="<think>x</think><answer>dog</answer>"),  # think is invalid for grpo
        "",  # blank lines are skipped
        _row(group="other"),
    ]
    code, out, err = _run(
        capsys, _write(tmp_path, rows), "--step", "0", "--total-steps", "5", "--variant", "grpo"
    )
    assert code == 0, err
    samples = json.loads(out)["samples"]
    assert [s["correct"] for s in samples] == [True, False, True, True]
    assert [s["total"] for s in samples] == [1.5, 0.5, 0.0, 1.5]
    assert samples[3]["advantage"] == 0.0  # a group of one


def test_cli_as_subprocess(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "audio_thinker.app.cli.main", "rewards", "--input", str(EXAMPLE)]
    ok = subprocess.run(
        [*cmd, "--step", "1000", "--total-steps", "1000", "--variant", "atar"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    result = json.loads(ok.stdout)
    assert result["batch"]["gamma_think"] == result["batch"]["gamma_no_think"] == 1.0
    # Base rewards at step T; the invalid sample gets the worst one, -1.
    assert [s["accuracy"] for s in result["samples"]] == [1, 1, 0, 0, 2, 2, -1, -1]
    bad = subprocess.run(
        [*cmd, "--step", "7", "--total-steps", "5"], capture_output=True, text=True, env=env, check=False
    )
    assert bad.returncode == 2 and bad.stdout == ""
    assert (
        bad.stderr.count("\n") == 1 and "--step: must be in 0..5 (--total-steps), got 7" in bad.stderr
    )


@pytest.mark.parametrize(
    "rows,variant,pattern",
    [
        ([_row(), "{not json"], "atar", r":2: invalid JSON"),
        ([_row(), _row(), "[1, 2]"], "atar", r":3: field '<record>': expected a JSON object"),
        ([_row(), {"group": "q", "choices": ["a"], "answer": "a"}], "atar", r":2: field 'response': missing"),
        ([_row(group=3)], "atar", r":1: field 'group': expected str, got int 3"),
        ([_row(choices="dog")], "atar", r":1: field 'choices': expected list"),
        ([_row(choices=["dog", ""])], "atar", r":1: field 'choices': expected a list of non-empty strings"),
        ([_row(answer="horse")], "atar", r":1: field 'answer': answer 'horse' is not one of the choices"),
        ([_row(letters="yes")], "atar", r":1: field 'letters': expected bool"),
        ([_row(consistency=2)], "atar_cr", r":1: field 'consistency': must be 0 or 1"),
        ([_row(consistency="1")], "atar_cr", r":1: field 'consistency': expected int or bool"),
        ([_row(think_quality=True)], "atar_cr_tr", r":1: field 'think_quality': expected int or float"),
        ([_row(think_quality=1.2)], "atar_cr_tr", r":1: field 'think_quality': must be a number in \[0, 1\]"),
        (
            ["", _row(), _row(response="<think>t</think><answer>dog</answer>", think_quality=0.5)],
            "atar_cr",
            r":3: field 'consistency': missing: atar_cr needs it for a correct think sample",
        ),
        (
            [_row(response="<think>t</think><answer>cat</answer>", consistency=0)],
            "atar_cr_tr",
            r":1: field 'think_quality': missing: atar_cr_tr needs it for a think sample",
        ),
        (["", "  "], "atar", r": no records"),
    ],
)
def test_cli_bad_input(capsys, tmp_path, rows, variant, pattern):
    path = _write(tmp_path, rows)
    code, out, err = _run(capsys, path, "--step", "1", "--total-steps", "4", "--variant", variant)
    assert code == 2 and out == ""
    assert err.count("\n") == 1
    assert re.search(re.escape(str(path)) + pattern, err), err


def test_cli_missing_file(capsys, tmp_path):
    code, out, err = _run(capsys, tmp_path / "nope.jsonl", "--step", "0", "--total-steps", "1")
    assert code == 2 and out == "" and f"--input {tmp_path / 'nope.jsonl'}: no such file" in err


def test_rescore_records_errors_name_the_record():
    with pytest.raises(RecordError, match="record 1: answer") as info:
        rescore_records([_row(), _row(answer="horse")], 0, 1, "atar")
    assert (info.value.index, info.value.field) == (1, "answer")
