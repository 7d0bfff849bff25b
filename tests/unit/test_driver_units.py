"""The driver's pure pieces: data order, judge item selection, metrics, run directory, failure messages."""

from __future__ import annotations

import json
import math
import socket
from pathlib import Path

import pytest

from audio_thinker.app.driver import Driver, Judge, call_judge, judge_items, step_metrics, step_questions
from audio_thinker.app.run_dir import RunDir
from audio_thinker.app.synthetic import write_synthetic_dataset
from audio_thinker.core.data import load_dataset
from audio_thinker.core.presets import load_config
from audio_thinker.core.rewards import SampleVerdict, compute_rewards
from trainer.checkpoint import checkpoint_dir


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("syn")
    write_synthetic_dataset(out, n=10, seed=0)
    return load_dataset(out / "train.jsonl", "avqa", out)


def test_step_questions_walk_through_epochs_and_resume_alike(dataset):
    per_step, n = 4, len(dataset)
    order = [i for step in range(1, 6) for i in step_questions(dataset, seed=3, step=step, per_step=per_step)]
    assert sorted(order[:n]) == list(range(n))  # the first epoch is a permutation
    assert sorted(order[n : 2 * n]) == list(range(n))  # and so is the second
    assert order[:n] != order[n : 2 * n]  # a new shuffle per epoch
    assert step_questions(dataset, 3, 4, per_step) == order[12:16]  # a resumed step 4 gets the same questions
    assert step_questions(dataset, 4, 1, per_step) != order[:4]


def row(mode: str, correct: bool) -> dict:
    return {"mode": mode, "correct": correct, "question": "q", "think": "t", "answer_text": "a", "choices": ["a", "b"]}


def test_judge_items_asks_only_for_what_rewards_use():
    rows = [row("think", True), row("think", False), row("no_think", True), row("invalid", False)]
    assert judge_items(rows, {"consistency", "think_quality"}) == {
        ("consistency", "think_quality"): [0],
        ("think_quality",): [1],
    }
    assert judge_items(rows, {"consistency"}) == {("consistency",): [0]}
    assert judge_items(rows, set()) == {}


def test_unreachable_judge_raises_instead_of_inventing_a_reward():
    from reward_server.client import JudgeUnavailableError

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = load_config(None, ["judge.max_retries=1", "judge.timeout_s=2"])
    rows = [row("think", True)]
    with pytest.raises(JudgeUnavailableError):
        call_judge(Judge(f"http://127.0.0.1:{port}", "k"), config, rows, {"consistency", "think_quality"})
    assert rows[0].get("consistency") is None and rows[0].get("think_quality") is None


def test_step_metrics_hand_computed():
    rows = [
        {**row("think", True), "difficulty": "easy", "num_tokens": 10, "finish_reason": "stop"},
        {**row("no_think", False), "difficulty": "easy", "num_tokens": 4, "finish_reason": "stop"},
        {**row("no_think", True), "difficulty": "hard", "num_tokens": 6, "finish_reason": "length"},
        {**row("invalid", False), "difficulty": "hard", "num_tokens": 20, "finish_reason": "length"},
    ]
    verdicts = [SampleVerdict(r["mode"], r["correct"], "g", 1, 0.5) for r in rows]
    batch = compute_rewards(verdicts, step=1, total_steps=2, variant="atar_cr_tr")
    for r, s in zip(rows, batch.samples):
        r.update(format=s.format, accuracy=s.accuracy, consistency_reward=s.consistency, think_reward=s.think,
                 total=s.total, advantage=s.advantage)
    m = step_metrics(rows, batch)
    assert m["think_rate"] == pytest.approx(1 / 3)
    assert m["acc/overall"] == 0.5 and m["acc/think"] == 1.0 and m["acc/no_think"] == 0.5
    assert m["response_length/mean"] == 10.0 and m["response_length/clip_ratio"] == 0.5
    assert m["no_think_rate/easy"] == 0.5 and m["no_think_rate/hard"] == 1.0
    assert m["reward/format"] == 0.75
    assert m["reward/total"] == pytest.approx(sum(s.total for s in batch.samples) / 4)
    assert m["count/invalid"] == 1


def test_run_dir_truncates_what_came_after_the_checkpoint(tmp_path: Path):
    run = RunDir(tmp_path / "run").create(load_config())
    for step in (1, 2, 3):
        run.log_metrics({"step": step, "reward/total": float(step)})
        run.write_rollouts(step, [{"step": step}])
    run.truncate_after(2)
    assert run.logged_steps() == [1, 2]
    assert sorted(p.name for p in run.rollouts.iterdir()) == ["step_000001.jsonl", "step_000002.jsonl"]
    run.log_metrics({"step": 3, "reward/total": math.nan})
    assert [json.loads(line)["step"] for line in run.metrics_path.read_text().splitlines()] == [1, 2, 3]


def test_failure_message_names_the_cause_and_the_resume_point(tmp_path: Path):
    from reward_server.client import JudgeUnavailableError

    driver = Driver.__new__(Driver)
    driver.run_dir = RunDir(tmp_path / "run").create(load_config())
    driver.judge = Judge("http://127.0.0.1:9", "k")
    message = driver.failure_message(3, JudgeUnavailableError("503 after 5 retries"))
    assert "step 3 failed" in message and "http://127.0.0.1:9" in message and "no reward is invented" in message
    assert "no checkpoint was written yet" in message
    ckpt = checkpoint_dir(driver.run_dir.checkpoints, 2)
    ckpt.mkdir()
    (ckpt / "trainer_state.json").write_text("{}")
    message = driver.failure_message(3, FloatingPointError("non-finite loss nan"))
    assert "non-finite loss" in message and f"resume from {ckpt} with run.resume=true" in message
