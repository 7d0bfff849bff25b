"""Restarts with real Ray actors whose processes are killed by pid (SIGKILL).

ActorGroup: the restart is waited for, counted once however many callers saw the death, the new process is
refreshed before anyone uses it, and past the group's bound (or when Ray cannot restart an actor) the error names
the actor, the restarts used and the config key. A rollout pool (transformers engine: cheap to restart) whose
worker died between two calls: the restarted worker refuses to generate until the pool has given it its
weights, then answers as before; past `rollout.max_restarts` the run's error names the worker. The same for the
reference (`reference.max_restarts`): a restarted one is checked (same weights checksum) before it
answers, with the same log-probs. A vLLM worker killed mid-generation, the reference killed mid-compute and a
trainer rank killed mid-update: the session's shared run, test_run_recovery.py.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import ray

from actors.group import ActorDiedError, ActorGroup, process_id, restarted_actor
from actors.reference import Reference
from actors.rollout_pool import RolloutPool
from audio_thinker.core.config import RolloutConfig
from audio_thinker.core.trainer_config import ReferenceConfig
from audio_thinker.core.encoding import PromptEncoder
from audio_thinker.core.chat import render_chat
from audio_thinker.core.models import load_feature_extractor, load_tokenizer
from rollout.engine import GenerationRequest, SamplingConfig
from trainer.logprobs import PolicyBatch


class Napper:
    def __init__(self, fail_on_restart: bool = False):
        if fail_on_restart and restarted_actor():
            raise RuntimeError("the napper cannot come back")
        self.restarted = restarted_actor()

    def pid(self) -> int:
        return os.getpid()

    def nap(self, seconds: float, value: str, started: str | None = None) -> str:
        if started:
            Path(started).touch()
        time.sleep(seconds)
        return value

    def was_restarted(self) -> bool:
        return self.restarted


@pytest.fixture(scope="module")
def ray_session(ray_session):
    """The session's Ray; the actor class of this module travels with its calls (by value)."""
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield ray_session


def nappers(count: int, max_restarts: int, fail_on_restart: bool = False) -> ActorGroup:
    group = ActorGroup(
        "napper", Napper, count, lambda _: (fail_on_restart,), num_cpus=0.1, timeout_s=60, timeout_key="test.timeout_s",
        max_restarts=max_restarts, restart_key="test.max_restarts", restart_timeout_s=60,
        restart_timeout_key="test.restart_timeout_s",
    )  # fmt: skip
    group.track("start the nappers")
    return group


def wait_restarted(actor, before: str | None) -> None:
    """Until Ray has restarted `actor` in a new process (its handle's caller has noticed nothing)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if ray.get(actor.__ray_call__.remote(process_id), timeout=5) != before:
                return
        except ray.exceptions.RayActorError:
            time.sleep(0.2)
    raise AssertionError("the actor was not restarted within 120 s")


def killed_mid_call(group: ActorGroup, index: int, folder: Path) -> ActorDiedError:
    """Kill actor `index` once its nap has begun; the ActorDiedError its call ends with."""
    pid = group.get([group.actors[index].pid.remote()], "pid")[0]
    started = folder / f"napper-{index}-{pid}"
    ref = group.actors[index].nap.remote(30, "lost", str(started))
    deadline = time.monotonic() + 60
    while not started.exists():
        assert time.monotonic() < deadline, "the nap did not begin within 60 s"
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(ActorDiedError, match=f"napper {index} died during nap") as died:
        group.get([ref], "nap", owners=[f"napper {index}"])
    return died.value


def test_a_killed_actor_is_restarted_once_refreshed_and_refused_past_the_bound(ray_session, tmp_path):
    group = nappers(2, max_restarts=1)
    try:
        before = group.processes[1]
        failure = killed_mid_call(group, 1, tmp_path)
        refreshed = []
        group.recover(1, failure, before, refresh=refreshed.append)
        assert refreshed == [1] and group.restarts == 1 and group.processes[1] not in (before, None)
        assert group.call_rank0("was_restarted") is False
        assert group.get([group.actors[1].was_restarted.remote()], "ask")[0] is True  # a new process, told so
        # A second caller that saw the same death returns at once: no second count, no second refresh.
        group.recover(1, failure, before, refresh=refreshed.append)
        assert refreshed == [1] and group.restarts == 1
        assert group.get([group.actors[1].nap.remote(0, "again")], "nap") == ["again"]

        # The bound is the group's: actor 0's death is past it, and is not waited for.
        failure = killed_mid_call(group, 0, tmp_path)
        t = time.monotonic()
        with pytest.raises(ActorDiedError) as past:
            group.recover(0, failure, group.processes[0], refresh=refreshed.append)
        assert time.monotonic() - t < 5 and refreshed == [1]
        message = str(past.value)
        assert message.startswith("napper 0 died during nap (")
        assert "not restarted again: the nappers were restarted 1 time(s), the most test.max_restarts=1" in message
    finally:
        group.shutdown()


def test_an_actor_ray_cannot_restart_and_a_group_without_restarts_are_named(ray_session, tmp_path):
    group = nappers(1, max_restarts=2, fail_on_restart=True)
    try:
        failure = killed_mid_call(group, 0, tmp_path)
        cause = r"\(its __init__ raised RuntimeError: the napper cannot come back\)"
        with pytest.raises(ActorDiedError, match=rf"napper 0 died during nap \(.*\); Ray did not restart it {cause}"):
            group.recover(0, failure, group.processes[0])
        assert group.restarts == 0
    finally:
        group.shutdown()

    group = nappers(1, max_restarts=0)
    try:
        failure = killed_mid_call(group, 0, tmp_path)
        with pytest.raises(ActorDiedError) as same:
            group.recover(0, failure, group.processes[0])
        assert same.value is failure  # as before restarts existed: the first death stops the caller
    finally:
        group.shutdown()


def test_a_worker_restarted_between_calls_gets_its_weights_before_it_generates(ray_session, tiny_models):
    rollout = RolloutConfig(engine="transformers", num_workers=1, num_cpus_per_worker=0.5, max_restarts=1,
                            startup_timeout_s=120, call_timeout_s=120)  # fmt: skip
    pool = RolloutPool(rollout, str(tiny_models["qwen2_audio"]), "qwen2_audio", "float32", 0).ready()
    try:
        clip = np.random.default_rng(0).normal(0, 0.1, 16000).astype(np.float32)
        requests = [GenerationRequest(render_chat("qwen2_audio", f"Question {k}?"), clip, seed=k) for k in range(3)]
        sampling = SamplingConfig(n=2, max_new_tokens=4)
        before = pool.generate(requests, sampling, min_version=0)
        (worker,) = pool.worker_infos()
        os.kill(worker["pid"], signal.SIGKILL)
        wait_restarted(pool.workers[0], pool.group.processes[0])
        after = pool.generate(requests, sampling, min_version=0)  # refused by the new process, then sent again
        assert [[s.token_ids for s in g] for g in after] == [[s.token_ids for s in g] for g in before]
        assert pool.take_recovery() == {"recovery/rollout_restarts": 1, "recovery/regenerated_requests": 3}
        assert pool.worker_infos()[0]["pid"] != worker["pid"]

        os.kill(pool.worker_infos()[0]["pid"], signal.SIGKILL)
        with pytest.raises(ActorDiedError, match=r"rollout worker 0 died .*; not restarted again: the rollout "
                           r"workers were restarted 1 time\(s\), the most rollout.max_restarts=1 allows"):
            pool.generate(requests, sampling, min_version=0)
    finally:
        pool.group.shutdown()  # no graceful close: the worker is gone


def test_a_reference_restarted_between_calls_is_checked_then_gives_the_same_logprobs(ray_session, tiny_models):
    path = tiny_models["qwen2_audio"]
    cfg = ReferenceConfig(num_cpus=0.25, max_restarts=1, call_timeout_s=120)
    reference = Reference(path, "qwen2_audio", cfg, 8, "float32").ready()
    try:
        encoder = PromptEncoder(load_tokenizer(path), load_feature_extractor(path))
        clip = np.random.default_rng(1).normal(0, 0.1, 16000).astype(np.float32)
        prompt = encoder.encode(render_chat("qwen2_audio", "How many beeps?"), clip)
        batch = PolicyBatch(prompts=[prompt], prompt_index=[0, 0], completion_ids=[[40, 41, 42], [43, 44]])
        before = reference.compute_logprobs(batch, 1.0)
        checksum = reference.checksum
        assert checksum is not None  # taken on first use: what a restart is checked against
        pid = ray.get(reference.group.actors[0].__ray_call__.remote(lambda _: os.getpid()))
        os.kill(pid, signal.SIGKILL)
        wait_restarted(reference.group.actors[0], reference.group.processes[0])
        after = reference.compute_logprobs(batch, 1.0)  # refused by the new process, checked, then asked again
        for a, b in zip(before, after, strict=True):
            np.testing.assert_array_equal(a, b)
        assert reference.checksum == checksum == reference.weights_checksum()
        assert reference.take_recovery() == {"recovery/reference_restarts": 1, "recovery/reference_retries": 1}

        pid = ray.get(reference.group.actors[0].__ray_call__.remote(lambda _: os.getpid()))
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(ActorDiedError, match=r"reference model 0 died .*; not restarted again: the reference "
                           r"models were restarted 1 time\(s\), the most reference.max_restarts=1 allows"):
            reference.compute_logprobs(batch, 1.0)
    finally:
        reference.close()
