"""The run's timeline: Chrome trace events, one valid JSON array after every append and after a resume."""

from __future__ import annotations

import json
import threading

import pytest

from audio_thinker.app.train.timeline import Timeline, lane_id


def step_spans(timeline: Timeline, step: int) -> None:
    t0 = 1000.0 + 10 * step
    threads = [
        threading.Thread(target=timeline.span, args=("judge", "judge", t0 + 1, t0 + 2, step)),
        threading.Thread(target=timeline.span, args=("ref log-probs", "reference", t0 + 1, t0 + 3, step)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    timeline.span("generate", "rollout worker 1", t0, t0 + 0.5, step)
    timeline.span("train", "trainer", t0 + 3, t0 + 4.25, step)


def test_appended_steps_stay_one_valid_trace(tmp_path):
    timeline = Timeline(tmp_path / "timeline.json")
    step_spans(timeline, 1)
    timeline.flush()
    first = json.loads(timeline.path.read_text())
    step_spans(timeline, 2)
    timeline.flush()
    timeline.flush()  # nothing pending: the file is unchanged
    events = json.loads(timeline.path.read_text())
    assert events[: len(first)] == first
    lanes = {e["tid"]: e["args"]["name"] for e in events if e["ph"] == "M"}
    assert lanes == {1: "judge", 2: "reference", 3: "trainer", 11: "rollout worker 1"}  # each named once
    spans = [e for e in events if e["ph"] == "X"]
    assert [e["args"]["step"] for e in spans] == [1] * 4 + [2] * 4
    train = next(e for e in spans if e["name"] == "train" and e["args"]["step"] == 2)
    assert train == {"name": "train", "ph": "X", "pid": 1, "tid": 3, "ts": 1023_000_000, "dur": 1_250_000,
                     "args": {"step": 2}}  # fmt: skip


def test_a_resume_drops_the_later_steps_and_appends_after_them(tmp_path):
    timeline = Timeline(tmp_path / "timeline.json")
    for step in (1, 2, 3):
        step_spans(timeline, step)
        timeline.flush()
    resumed = Timeline(timeline.path)
    resumed.truncate_after(1)
    assert {e["args"]["step"] for e in json.loads(timeline.path.read_text()) if e["ph"] == "X"} == {1}
    step_spans(resumed, 2)
    resumed.flush()
    events = json.loads(timeline.path.read_text())
    assert [e["args"]["step"] for e in events if e["ph"] == "X"] == [1] * 4 + [2] * 4
    resumed.truncate_after(0)
    assert not timeline.path.exists()


def test_a_file_cut_short_by_a_kill_is_repaired_on_resume(tmp_path):
    timeline = Timeline(tmp_path / "timeline.json")
    for step in (1, 2):
        step_spans(timeline, step)
        timeline.flush()
    text = timeline.path.read_text()
    timeline.path.write_text(text[: len(text) - 40])  # killed in the middle of the last event
    Timeline(timeline.path).truncate_after(2)
    events = json.loads(timeline.path.read_text())
    assert [e["args"]["step"] for e in events if e["ph"] == "X"] == [1] * 4 + [2] * 3


def test_lanes_are_named_and_stable():
    assert lane_id("driver") == 0 and lane_id("rollout worker 0") == 10 and lane_id("rollout worker 3") == 13
    with pytest.raises(ValueError, match="unknown timeline lane 'gpu'"):
        lane_id("gpu")
