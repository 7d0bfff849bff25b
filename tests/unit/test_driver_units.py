"""The driver's pure pieces: data order, judge item selection, metrics, run directory, failure messages."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
from pathlib import Path

import numpy as np
import pytest

from actors.group import ActorDiedError
from audio_thinker.app.train.batch import StepBatch, drop_stale
from audio_thinker.app.train.driver import Driver, paper_reward
from audio_thinker.app.errors import Preempted, TrainingError
from audio_thinker.app.train.judging import Judge, call_judge, judge_items
from audio_thinker.app.train.preemption import PreemptionGuard
from audio_thinker.app.train.run_dir import RunDir
from audio_thinker.app.train.sampling import step_questions
from audio_thinker.app.train.step_metrics import step_metrics
from audio_thinker.app.data.synthetic import write_synthetic_dataset
from audio_thinker.core.data import load_dataset
from audio_thinker.core.encoding import EncodedPrompt
from audio_thinker.core.presets import load_config
from audio_thinker.core.records import RolloutRecord
from audio_thinker.core.rewards import SampleVerdict, compute_rewards, rewards_from_totals
from reward_server.client import JudgeUnavailableError
from rollout.engine import Sample
from trainer.checkpoint import checkpoint_dir
from trainer.logprobs import PolicyBatch


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


def row(mode: str, correct: bool, **fields) -> RolloutRecord:
    base = dict(
        step=1,
        group="g",
        sample=0,
        question_id="g",
        audio_path="a.wav",
        difficulty=None,
        category=None,
        question="q",
        choices=["a", "b"],
        answer="a",
        letters=False,
        response="",
        num_tokens=1,
        finish_reason="stop",
        mode=mode,
        think="t",
        answer_text="a",
        correct=correct,
    )
    return RolloutRecord(**{**base, **fields})


def test_judge_items_asks_only_for_what_rewards_use():
    rows = [row("think", True), row("think", False), row("no_think", True), row("invalid", False)]
    assert judge_items(rows, {"consistency", "think_quality"}) == {
        ("consistency", "think_quality"): [0],
        ("think_quality",): [1],
    }
    assert judge_items(rows, {"consistency"}) == {("consistency",): [0]}
    assert judge_items(rows, set()) == {}


def test_unreachable_judge_raises_instead_of_inventing_a_reward():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = load_config(None, ["judge.max_retries=1", "judge.call_timeout_s=2"])
    rows = [row("think", True)]
    with pytest.raises(JudgeUnavailableError):
        call_judge(Judge(f"http://127.0.0.1:{port}", "k"), config.judge, rows, {"consistency", "think_quality"})
    assert rows[0].consistency is None and rows[0].think_quality is None


def test_step_metrics_hand_computed():
    rows = [
        row("think", True, difficulty="easy", num_tokens=10, finish_reason="stop"),
        row("no_think", False, difficulty="easy", num_tokens=4, finish_reason="stop"),
        row("no_think", True, difficulty="hard", num_tokens=6, finish_reason="length"),
        row("invalid", False, difficulty="hard", num_tokens=20, finish_reason="length"),
    ]
    verdicts = [SampleVerdict(r.mode, r.correct, "g", 1, 0.5) for r in rows]
    batch = compute_rewards(verdicts, step=1, total_steps=2, variant="atar_cr_tr")
    for r, s in zip(rows, batch.samples):
        r.set_reward(s)
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


# ------------------------------------------------------------------------------------------------ the step
# Stand-ins for the actor parts with the interfaces the driver calls; the real ones run in tests/integration.

PROMPT_IDS = [5, 6, 7]
RESPONSES = ["<answer>x</answer>", "<think>hm</think><answer>x</answer>", "no tags", "<answer>y</answer>"]


class StubEncoder:
    def encode(self, prompt, audio):
        return EncodedPrompt(PROMPT_IDS, np.zeros((2, 4), np.float32), np.ones(4, np.int64))


class StubRollout:
    """G samples per question, cycling through RESPONSES (no_think, think, invalid, no_think)."""

    def __init__(self, g):
        self.g, self.calls, self.weights, self.arrival, self.rotate, self.version = g, [], [], None, False, 0

    def generate(self, requests, sampling, min_version):
        self.calls.append((len(requests), sampling.n, min_version))
        out = []
        for r in requests:
            shift = r.seed % len(RESPONSES) if self.rotate else 0  # questions tell apart (arrival-order tests)
            texts = [RESPONSES[(j + shift) % len(RESPONSES)] for j in range(self.g)]
            out.append([Sample(PROMPT_IDS, [1] * (j + 1), t, "stop", [-0.5] * (j + 1), weights_version=self.version)
                        for j, t in enumerate(texts)])
        return out

    def stream(self, requests, sampling, min_version, per_call=None):
        groups = self.generate(requests, sampling, min_version)
        for k in self.arrival or range(len(groups)):
            yield k, groups[k]

    def generation_spans(self):
        return [[(100.0, 100.5)]]

    def set_weights(self, handle, version, expected_checksum=None, rewind=False):
        assert rewind or version >= self.version, "an older version needs rewind"
        self.weights.append((version, expected_checksum))
        self.version = version
        return {"seconds": 0.0}

    def take_recovery(self):
        return {"recovery/rollout_restarts": 0, "recovery/regenerated_requests": 0}


class StubTrainer:
    def __init__(self):
        self.batches, self.logprob_calls = [], 0

    def compute_logprobs(self, batch, temperature=1.0):
        self.logprob_calls += 1
        return [np.full(len(ids), -0.5, np.float32) for ids in batch.completion_ids]

    def train_step(self, batch, temperature=1.0):
        self.batches.append(batch)
        return {"actor/loss": 0.0, "actor/grad_norm": 0.1, "actor/kl": 0.0}

    def weights_checksum(self):
        return "sum"

    def dead_ranks(self):
        return []

    def save_checkpoint(self, folder, extra, keep):
        self.saved = [*getattr(self, "saved", []), extra["step"]]

    def export(self, folder):
        self.exported = folder

    def load_checkpoint(self, folder):
        raise AssertionError("a new run loads no checkpoint")

    def publish_weights(self, version):
        return type("Handle", (), {"num_bytes": 10})()


class StubReference(StubTrainer):
    def take_recovery(self):
        return {"recovery/reference_restarts": 0, "recovery/reference_retries": 0}


STUB_OVERRIDES = ["run.total_steps=4", "run.questions_per_step=2", "rollout.samples_per_question=4"]


@pytest.fixture()
def stub_driver(dataset, tmp_path):
    config = load_config(None, STUB_OVERRIDES)
    rollout, trainer = StubRollout(4), StubTrainer()
    run_dir = RunDir(tmp_path / "run").create(config)
    return Driver(config, rollout, trainer, StubReference(), None, run_dir, dataset, encoder=StubEncoder())


def test_a_step_flows_from_generation_to_the_dump(stub_driver):
    driver = stub_driver
    seen = []

    def reward(records, step):
        seen.append((step, len(records)))
        return rewards_from_totals([r.verdict() for r in records], [float(r.mode == "no_think") for r in records])

    driver.reward_fn = reward
    metrics = driver.step(1)
    assert driver.rollout.calls == [(2, 4, 0)]  # 2 questions x G=4, sampled from weights version 0
    assert seen == [(1, 8)]
    batch = driver.trainer.batches[0]
    assert batch.prompt_index == [0, 0, 0, 0, 1, 1, 1, 1]
    assert batch.advantages[0] > 0 > batch.advantages[1]  # no_think paid 1, think 0, within each group
    # One update per batch: no separate old-log-prob pass (the loss pass's detached log-probs are the old ones).
    assert batch.old_logprobs is None and driver.trainer.logprob_calls == 0 and "timing_s/old_logprob" not in metrics
    assert len(batch.ref_logprobs) == 8 and driver.reference.logprob_calls == 1
    assert driver.rollout.weights == [(1, "sum")] and driver.version == 1  # synced as version 1, checksum checked
    dump = [json.loads(line) for line in driver.run_dir.rollout_path(1).read_text().splitlines()]
    assert [d["mode"] for d in dump[:4]] == ["no_think", "think", "invalid", "no_think"]
    assert [d["advantage"] for d in dump] == pytest.approx(batch.advantages)
    assert [d["total"] for d in dump[:4]] == [1.0, 0.0, 0.0, 1.0]
    assert RolloutRecord.from_json(dump[0]).question_id == dump[0]["group"]
    assert metrics["count/invalid"] == 2 and metrics["think_rate"] == pytest.approx(2 / 6)
    assert metrics["step"] == 1 and metrics["sync/bytes"] == 10.0
    phases = {(e["name"], e["tid"]) for e in driver.run_dir.timeline.pending if e["ph"] == "X"}
    assert phases == {("step", 0), ("generate", 0), ("generate", 10), ("judge", 1), ("ref log-probs", 2),
                      ("train", 3), ("sync", 3)}


@pytest.mark.parametrize(
    "override", ["trainer.ppo_epochs=2", "trainer.mini_batches_per_step=2"]
)
def test_several_updates_per_batch_get_a_separate_old_pass(stub_driver, override):
    driver = stub_driver
    driver.config = load_config(None, [*STUB_OVERRIDES, override])
    driver.reward_fn = lambda records, step: rewards_from_totals([r.verdict() for r in records], [0.0] * len(records))
    metrics = driver.step(1)
    batch = driver.trainer.batches[0]
    assert driver.trainer.logprob_calls == 1 and len(batch.old_logprobs) == 8 and "timing_s/old_logprob" in metrics


def test_the_default_reward_is_the_papers_and_a_tokenizer_mismatch_is_named(stub_driver):
    records = [row("think", True, group="g1", consistency=1, think_quality=0.5), row("no_think", False, group="g1")]
    expected = compute_rewards([r.verdict() for r in records], 2, 4, "atar_cr_tr")
    assert stub_driver.reward_fn(records, 2) == expected == paper_reward(stub_driver.config.reward, 4)(records, 2)
    stub_driver.sampler.encoder = type("Other", (), {"encode": lambda self, p, a: EncodedPrompt([9], None, None)})()
    with pytest.raises(Exception, match="tokenized question .* differently"):
        stub_driver.step(1)


def test_failure_message_names_the_cause_and_the_resume_point(stub_driver):
    driver = stub_driver
    driver.judge = Judge("http://127.0.0.1:9", "k")
    message = driver.failure_message(3, JudgeUnavailableError("503 after 5 retries"))
    assert "step 3 failed" in message and "http://127.0.0.1:9" in message and "no reward is invented" in message
    assert "no checkpoint was written yet" in message
    ckpt = checkpoint_dir(driver.run_dir.checkpoints, 2)
    ckpt.mkdir()
    (ckpt / "trainer_state.json").write_text("{}")
    message = driver.failure_message(3, FloatingPointError("non-finite loss nan"))
    assert "non-finite loss" in message and f"resume from {ckpt} with run.resume=true" in message


def test_a_sigterm_stops_the_run_after_the_step_in_flight_with_its_checkpoint(stub_driver):
    driver, trainer = stub_driver, stub_driver.trainer
    driver.config.run.checkpoint_every = 3  # step 1 is no checkpoint step: the preemption saves it
    driver.reward_fn = lambda records, step: rewards_from_totals([r.verdict() for r in records], [0.0] * len(records))
    run_step = driver.step

    def step_then_sigterm(step):
        metrics = run_step(step)
        if step == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # what `ray job stop` / Kubernetes send, mid-step
        return metrics

    driver.step = step_then_sigterm
    with PreemptionGuard() as guard:
        driver.preemption = guard
        with pytest.raises(Preempted, match=r"after step 1 of 4; .*resume with: audio-thinker train --resume "
                           rf"run.output_dir={driver.run_dir.path}$"):
            driver.train()
    assert trainer.saved == [1] and not hasattr(trainer, "exported")
    assert driver.run_dir.logged_steps() == [1]  # the step in flight was finished and logged, no later one began
    status = json.loads(driver.run_dir.status_path.read_text())
    assert status["state"] == "preempted" and "--resume" in status["message"]


# ------------------------------------------------------------------------------------------------ the pipeline


def zero_reward(records, step):
    return rewards_from_totals([r.verdict() for r in records], [float(r.mode == "think") for r in records])


def run_steps(driver, steps):
    driver.reward_fn = zero_reward
    driver.producer.start_at(1)
    try:
        return [driver.step(s) for s in steps]
    finally:
        driver.close()


def dumped(driver, step):
    return [json.loads(line) for line in driver.run_dir.rollout_path(step).read_text().splitlines()]


@pytest.mark.parametrize("arrival", [[0, 1], [1, 0]])
def test_streamed_groups_give_the_batch_modes_rewards_whatever_order_they_arrive_in(dataset, tmp_path, arrival):
    results = {}
    for mode in ("batch", "stream"):
        config = load_config(None, [*STUB_OVERRIDES, f"run.stream_groups={mode == 'stream'}"])
        rollout = StubRollout(4)
        rollout.rotate, rollout.arrival = True, arrival if mode == "stream" else None
        run_dir = RunDir(tmp_path / mode).create(config)
        driver = Driver(config, rollout, StubTrainer(), StubReference(), None, run_dir, dataset, encoder=StubEncoder())
        run_steps(driver, [1])
        batch = driver.trainer.batches[0]
        results[mode] = (dumped(driver, 1), batch.advantages, [len(x) for x in batch.ref_logprobs])
        calls = driver.reference.logprob_calls
        assert calls == (2 if mode == "stream" else 1)  # per group as it arrives, or once for the whole step
    rows = results["batch"][0]
    assert [d["mode"] for d in rows[:4]] != [d["mode"] for d in rows[4:]]  # the two groups tell apart
    assert results["stream"] == results["batch"]


def test_max_staleness_generates_ahead_on_older_weights_and_counts_the_lag(dataset, tmp_path):
    config = load_config(None, [*STUB_OVERRIDES, "run.max_staleness=1"])
    rollout = StubRollout(4)
    run_dir = RunDir(tmp_path / "run").create(config)
    driver = Driver(config, rollout, StubTrainer(), StubReference(), None, run_dir, dataset, encoder=StubEncoder())
    metrics = run_steps(driver, [1, 2, 3, 4])
    # Step s+1 is asked for before step s trains: on the weights the trainer had then (version s-1).
    assert [c[2] for c in rollout.calls] == [0, 0, 1, 2]
    assert [m["step"] for m in metrics] == [1, 2, 3, 4] and [w for w, _ in rollout.weights] == [1, 2, 3, 4]
    for m in metrics:
        assert 0 <= m["staleness/mean"] <= m["staleness/max"] <= 1 and m["count/stale_dropped"] == 0
    assert metrics[0]["staleness/max"] == 0  # nothing was trained before step 1
    for step in (1, 2, 3, 4):  # every sample records the version that sampled it
        versions = {d["weights_version"] for d in dumped(driver, step)}
        assert versions <= {step - 2, step - 1} and min(versions) >= 0


def test_stale_groups_are_left_out_and_counted():
    records = [row("think", True, group=g, step=5, weights_version=v) for g, v in [("a", 4), ("a", 4), ("b", 2),
                                                                                      ("b", 3), ("c", 3)]]
    batch = StepBatch(5, records, PolicyBatch([EncodedPrompt([1], None, None)], [0] * 5, [[1], [2], [3], [4], [5]]))
    kept, m = drop_stale(batch, version=4, max_staleness=1)
    assert [r.group for r in kept.records] == ["a", "a", "c"] and kept.policy.completion_ids == [[1], [2], [5]]
    assert m == {"staleness/mean": pytest.approx((0 + 0 + 2 + 1 + 1) / 5), "staleness/max": 2.0,
                 "count/stale_dropped": 2.0}  # group b goes whole: its oldest sample is 2 versions behind
    same, m0 = drop_stale(batch, version=4, max_staleness=2)
    assert same is batch and m0["count/stale_dropped"] == 0
    with pytest.raises(RuntimeError, match="step 5: every group .* run.max_staleness=0"):
        drop_stale(batch, version=5, max_staleness=0)


def test_a_failure_in_a_step_produced_ahead_stops_the_run_naming_that_step(dataset, tmp_path):
    config = load_config(None, [*STUB_OVERRIDES, "run.max_staleness=1"])

    class FailingAtStep3(StubRollout):
        def generate(self, requests, sampling, min_version):
            if len(self.calls) == 2:
                raise ConnectionError("worker lost")
            return super().generate(requests, sampling, min_version)

    run_dir = RunDir(tmp_path / "run").create(config)
    driver = Driver(config, FailingAtStep3(4), StubTrainer(), StubReference(), None, run_dir, dataset,
                    encoder=StubEncoder())
    driver.reward_fn = zero_reward
    with pytest.raises(TrainingError, match=r"step 3 failed: ConnectionError: worker lost"):
        driver.train()
    driver.close()
    assert run_dir.logged_steps() == [1, 2]  # steps 1 and 2 trained and logged; step 3 named, nothing after it
    assert json.loads(run_dir.status_path.read_text())["state"] == "failed"


def test_a_resumed_asynchronous_run_continues_the_data_order(dataset, tmp_path):
    """Resumed at step 2, steps 3 and 4 get the questions (and seeds) the uninterrupted run gave them."""
    config = load_config(None, [*STUB_OVERRIDES, "run.max_staleness=2"])
    seen = {}
    for name in ("whole", "resumed"):
        rollout = StubRollout(4)
        run_dir = RunDir(tmp_path / name).create(config)
        driver = Driver(config, rollout, StubTrainer(), StubReference(), None, run_dir, dataset, encoder=StubEncoder())
        steps = [1, 2, 3, 4] if name == "whole" else [3, 4]
        driver.producer.start_at(steps[0])
        driver.reward_fn = zero_reward
        try:
            for s in steps:
                driver.step(s)
        finally:
            driver.close()
        seen[name] = {s: [d["question_id"] for d in dumped(driver, s)] for s in steps}
    assert seen["resumed"] == {3: seen["whole"][3], 4: seen["whole"][4]}


class RestartableTrainer(StubTrainer):
    """Rank 1 dies during the `die_at`-th train step (once); the restarted group loads the stand-in checkpoints."""

    def __init__(self, die_at):
        super().__init__()
        self.die_at, self.calls, self.dead, self.restarts, self.loaded = die_at, 0, [], 0, []

    def train_step(self, batch, temperature=1.0):
        self.calls += 1
        if self.calls == self.die_at:
            self.dead = [1]
            raise ActorDiedError("trainer rank 1 died during train_step (killed)")
        return super().train_step(batch, temperature)

    def save_checkpoint(self, folder, extra, keep):
        super().save_checkpoint(folder, extra, keep)
        ckpt = checkpoint_dir(folder, extra["step"])
        ckpt.mkdir(parents=True)
        (ckpt / "trainer_state.json").write_text(json.dumps({"extra": extra}))

    def dead_ranks(self):
        return self.dead

    def restart(self):
        self.restarts, self.dead = self.restarts + 1, []

    def load_checkpoint(self, folder):
        self.loaded.append(Path(folder).name)
        return json.loads((Path(folder) / "trainer_state.json").read_text())


class SeedRecordingRollout(StubRollout):
    def __init__(self, g):
        super().__init__(g)
        self.seeds = []

    def generate(self, requests, sampling, min_version):
        self.seeds.append(tuple(r.seed for r in requests))
        return super().generate(requests, sampling, min_version)


@pytest.mark.parametrize("max_staleness", [0, 1])
def test_a_dead_trainer_rank_restarts_the_group_from_the_checkpoint_with_the_same_data(
    dataset, tmp_path, max_staleness
):
    config = load_config(None, [*STUB_OVERRIDES, "run.checkpoint_every=2", f"run.max_staleness={max_staleness}"])
    rollout, trainer = SeedRecordingRollout(4), RestartableTrainer(die_at=4)
    run_dir = RunDir(tmp_path / "run").create(config)
    driver = Driver(config, rollout, trainer, StubReference(), None, run_dir, dataset, encoder=StubEncoder())
    driver.reward_fn = zero_reward
    try:
        driver.train()
    finally:
        driver.close()
    assert trainer.restarts == 1 and trainer.loaded == [checkpoint_dir(run_dir.checkpoints, 2).name]
    assert run_dir.logged_steps() == [1, 2, 3, 4]  # step 3, logged before the death, was cut and done again once
    metrics = [json.loads(line) for line in run_dir.metrics_path.read_text().splitlines()]
    assert [m.get("recovery/trainer_restarts", 0) for m in metrics] == [0, 0, 1, 1]
    # The workers were rewound to the checkpoint's weights (version 2), then went on; the redone steps 3 and 4
    # got the questions and seeds they had the first time.
    assert [v for v, _ in rollout.weights] == [1, 2, 3, 2, 3, 4]
    first = rollout.seeds[:4]
    assert len(set(first)) == 4 and rollout.seeds[4:] == first[2:]
    assert json.loads(run_dir.status_path.read_text())["state"] == "finished"


def test_past_run_max_restarts_a_dead_trainer_stops_the_run(dataset, tmp_path):
    config = load_config(None, [*STUB_OVERRIDES, "trainer.max_restarts=0"])
    trainer = RestartableTrainer(die_at=2)
    run_dir = RunDir(tmp_path / "run").create(config)
    driver = Driver(config, StubRollout(4), trainer, StubReference(), None, run_dir, dataset, encoder=StubEncoder())
    driver.reward_fn = zero_reward
    with pytest.raises(TrainingError, match="step 2 failed: trainer rank 1 died during train_step"):
        driver.train()
    assert trainer.restarts == 0
