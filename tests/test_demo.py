"""`audio-thinker demo`: the whole smoke path runs and writes rollouts with every reward term."""

import json

from audio_thinker.cli import main


def test_demo_runs_end_to_end(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    dump = tmp_path / "smoke" / "rollouts.jsonl"
    assert str(dump) in printed
    rows = [json.loads(line) for line in dump.read_text().splitlines()]
    assert len(rows) == 4 * 8
    for row in rows:
        assert row["mode"] in ("think", "no_think", "invalid")
        assert row["total"] == row["accuracy"] + 0.5 * row["format"]
