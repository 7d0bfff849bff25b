"""The dashboard without a browser: incremental reading, bad and missing files, run states, audio path checks,
downsampling and the rollout filters (its guards: test_dashboard_security.py)."""

from __future__ import annotations

import argparse
import json
import os
import socket
import time

import pytest
from fastapi.testclient import TestClient

from audio_thinker.app.dashboard import charts
from audio_thinker.app.dashboard.cli import add_dashboard_parser, check_args, run_dashboard
from audio_thinker.app.dashboard.downsample import minmax_indices
from audio_thinker.app.dashboard.jsonl import JsonlTail
from audio_thinker.app.dashboard.rollouts import Filters, group_samples
from audio_thinker.app.dashboard.runs import AudioRefused, Metrics, Run, RunIndex
from audio_thinker.app.dashboard.server import create_app
from audio_thinker.app.dashboard.synthetic_run import write_synthetic_run
from audio_thinker.app.train.run_dir import RunDir
from audio_thinker.app.train.timeline import Timeline
from conftest import free_port


def line(step: int, **extra) -> str:
    return json.dumps({"step": step, "reward/total": 0.1 * step, **extra}) + "\n"


@pytest.fixture
def run_dir(tmp_path):
    return write_synthetic_run(tmp_path / "runs" / "demo", steps=5, total_steps=10, questions=2, group=8)


@pytest.fixture
def client(run_dir):
    return TestClient(create_app(run_dir.parent))


def test_tail_parses_only_appended_lines_and_waits_for_a_half_written_one(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(line(1) + line(2) + '{"step": 3, "rew')
    tail = JsonlTail(path)
    assert [r["step"] for r in tail.refresh()] == [1, 2]
    assert tail.partial and "incomplete" in tail.warnings()[0]
    with path.open("a") as f:
        f.write('ard/total": 0.3}\n' + line(4))
    assert [r["step"] for r in tail.refresh()] == [3, 4]  # only the new lines
    assert tail.refresh() == [] and tail.warnings() == []


def test_malformed_lines_are_skipped_and_counted(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(line(1) + "{not json\n" + "[1, 2]\n" + line(2) + '{"no_step": 1}\n')
    metrics = Metrics(path)
    metrics.refresh()
    assert metrics.steps == [1, 2]
    warnings = metrics.warnings()
    assert "2 malformed line(s) skipped (line 2, 3)" in warnings[0]
    assert "without an integer step" in warnings[1]


def test_a_rewritten_file_is_read_again_and_a_repeated_step_replaces_the_tail(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(line(1) + line(2) + line(3))
    metrics = Metrics(path)
    metrics.refresh()
    path.write_text(line(1))  # a resumed run cut away steps 2-3
    metrics.refresh()
    assert metrics.steps == [1]
    with path.open("a") as f:
        f.write(line(2, extra_key=1.0) + line(2) + line(3))
    metrics.refresh()
    assert metrics.steps == [1, 2, 3]
    assert "extra_key" in metrics.keys and metrics.rows[1].get("extra_key") is None


def test_missing_files_give_an_empty_run_with_warnings(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "metrics.jsonl").write_text("")
    run = RunIndex(tmp_path).scan()[0]
    summary = run.summary()
    assert summary["step"] == 0 and summary["total"] is None and summary["reward"] is None
    assert "config.yaml is missing" in summary["warnings"]
    assert run.dump(1) is None and run.dump_steps() == [] and run.question_history("q") == []


def test_states_from_status_json_and_inferred(run_dir):
    run = Run(run_dir, stale_after=60)
    run.refresh()
    assert run.status()[0] == "running"
    old = time.time() - 3600
    for name in ("metrics.jsonl", "rollouts", "config.yaml"):
        os.utime(run_dir / name, (old, old))
    assert run.status()[0] == "stale"
    RunDir(run_dir).write_status("failed", "judge down")  # what the driver writes
    assert run.status() == ("failed", "judge down")
    (run_dir / "status.json").write_text("{half")
    os.utime(run_dir / "status.json", (old, old))
    assert run.status()[0] == "stale"  # an unreadable marker: inferred, with a warning
    assert any("status.json" in w for w in run.warnings())
    (run_dir / "status.json").unlink()
    (run_dir / "final").mkdir()
    assert run.status()[0] == "finished"


def test_a_removed_run_shows_as_gone(run_dir, client):
    assert client.get("/").status_code == 200
    for path in sorted(run_dir.rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    run_dir.rmdir()
    page = client.get("/")
    assert page.status_code == 200 and 'data-state="gone"' in page.text
    assert client.get("/api/runs/demo/metrics").json()["state"] == "gone"


def test_bad_lines_show_as_warnings_not_errors(run_dir, client):
    with (run_dir / "metrics.jsonl").open("a") as f:
        f.write("garbage\n")
    dump = run_dir / "rollouts" / "step_000005.jsonl"
    dump.write_text(dump.read_text() + '{"step": 5, "sam')
    data = client.get("/api/runs/demo/metrics").json()
    assert data["last_step"] == 5 and any("malformed" in w for w in data["warnings"])
    page = client.get("/runs/demo/rollouts?step=5")
    assert page.status_code == 200 and "incomplete" in page.text
    assert page.text.count('class="sample ') == 16


def test_audio_is_served_with_ranges_and_traversal_is_refused(run_dir, client, tmp_path):
    clip = run_dir / "audio" / "clip_0000.wav"
    ok = client.get("/runs/demo/audio", params={"path": str(clip)}, headers={"Range": "bytes=0-99"})
    assert ok.status_code == 206 and ok.headers["content-type"] == "audio/wav" and len(ok.content) == 100
    secret = tmp_path / "secret.wav"
    secret.write_bytes(b"RIFF")
    # Outside the audio root, not audio, or missing: the same 404 (the answer tells nothing of other files).
    for path, status in [
        (str(secret), 404),
        (str(run_dir / "audio" / ".." / ".." / ".." / "secret.wav"), 404),
        ("../../../../../../etc/passwd", 404),
        (str(run_dir / "config.yaml"), 404),
        (str(run_dir / "audio" / "missing.wav"), 404),
        (str(tmp_path / "no-such-secret.wav"), 404),
        ("clip\0.wav", 400),
        ("a" * 300 + ".wav", 404),  # a name too long for the file system
        ("a/" * 2100 + "x.wav", 400),
    ]:
        assert client.get("/runs/demo/audio", params={"path": path}).status_code == status, path
    assert client.get("/runs/..%2F..%2Fetc/audio", params={"path": str(clip)}).status_code == 404
    assert RunIndex(run_dir.parent).get("..") is None


def test_the_run_page_links_the_timeline_and_serves_it(run_dir, client):
    assert client.get("/runs/demo/timeline.json").status_code == 404  # no finished step yet
    timeline = Timeline(run_dir / "timeline.json")
    timeline.span("train", "trainer", 10.0, 11.5, 1)
    timeline.flush()
    assert 'href="/runs/demo/timeline.json"' in client.get("/runs/demo").text
    served = client.get("/runs/demo/timeline.json")
    assert served.status_code == 200 and served.json() == json.loads((run_dir / "timeline.json").read_text())


def test_relative_audio_root_resolves_against_the_working_directory_then_the_runs_folder(run_dir):
    (run_dir / "config.yaml").write_text("data:\n  audio_root: demo/audio\n")
    run = Run(run_dir, cwd=run_dir / "nowhere")
    run.refresh()
    file, kind = run.audio_file("demo/audio/clip_0001.wav")
    assert file == (run_dir / "audio" / "clip_0001.wav").resolve() and kind == "audio/wav"
    with pytest.raises(AudioRefused) as refused:
        run.audio_file("demo/config.wav")
    assert refused.value.status == 404


def args(tmp_path, **kw) -> argparse.Namespace:
    base = dict(runs=str(tmp_path), host="127.0.0.1", port=free_port(), token_file=None, stale_after=600.0)
    return argparse.Namespace(**{**base, **kw})


def test_the_parser_defaults_to_loopback_on_a_port_of_its_own():
    parser = argparse.ArgumentParser()
    add_dashboard_parser(parser.add_subparsers(dest="command"))
    parsed = parser.parse_args(["dashboard", "--runs", "r"])
    assert (parsed.host, parsed.port, parsed.token_file, parsed.func) == ("127.0.0.1", 8377, None, run_dashboard)


def test_a_public_host_needs_a_token(tmp_path, capsys):
    assert check_args(args(tmp_path))[1] is None
    assert "--token-file" in check_args(args(tmp_path, host="0.0.0.0"))[1]
    assert run_dashboard(args(tmp_path, host="0.0.0.0")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not loopback" in err
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    assert check_args(args(tmp_path, host="0.0.0.0", token_file=str(token))) == ("s3cret", None)
    token.write_text("\n")
    assert "no token" in check_args(args(tmp_path, host="0.0.0.0", token_file=str(token)))[1]


def test_a_busy_port_is_refused_before_the_address_is_printed(tmp_path, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert run_dashboard(args(tmp_path, port=port)) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert f"--port {port}: cannot listen on 127.0.0.1:{port}" in captured.err
    assert "choose another --port" in captured.err


def test_downsampling_keeps_ends_and_spikes_within_the_budget():
    values = [float(i % 7) for i in range(5000)]
    values[2345] = 100.0
    values[10] = None
    keep = minmax_indices(values, 1000)
    assert len(keep) <= 1000 and keep[0] == 0 and keep[-1] == 4999 and 2345 in keep and 10 not in keep
    assert keep == sorted(set(keep))
    assert minmax_indices([1.0, None, 2.0], 1000) == [0, 2]


def test_payload_of_thousands_of_steps_is_downsampled_and_since_returns_only_new_points(tmp_path):
    write_synthetic_run(tmp_path / "big", steps=3000, questions=1, group=2, dump_every=1000)
    metrics = Metrics(tmp_path / "big" / "metrics.jsonl")
    metrics.refresh()
    full = charts.payload(metrics, 0, 500)
    assert all(len(s["x"]) <= 500 for s in full.values())
    assert full["timing_s/gen"]["x"] == full["timing_s/step"]["x"]  # stacked parts share their points
    assert charts.payload(metrics, 2998, 500)["reward/total"]["x"] == [2999, 3000]
    ids = [p["id"] for p in charts.panels(metrics.keys | {"staleness/mean", "actor/logprob_mismatch_max"})]
    assert "other-staleness" in ids and "mismatch" in ids and "timing" in ids


def test_filters_group_and_sort_the_samples_of_a_step(run_dir):
    run = Run(run_dir)
    run.refresh()
    rows = run.dump(5).rows
    groups = group_samples(rows, Filters())
    assert [len(g["samples"]) for g in groups] == [8, 8]
    think = group_samples(rows, Filters(mode="think"))
    assert sum(len(g["samples"]) for g in think) == sum(r["mode"] == "think" for r in rows)
    assert [g["question_id"] for g in group_samples(rows, Filters(q="clip 1?"))] == ["q0001"]
    ranked = group_samples(rows, Filters(sort="adv_desc"))[0]["samples"]
    assert [r["advantage"] for r in ranked] == sorted((r["advantage"] for r in ranked), reverse=True)
    scored = group_samples(rows, Filters(score_min=0.5))
    assert all(s["consistency_prob"] >= 0.5 for g in scored for s in g["samples"])
    assert Filters.from_query({"mode": "bogus", "score_min": "x", "sort": "adv_asc"}) == Filters(sort="adv_asc")
