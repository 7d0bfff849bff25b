"""The judge survives being killed: real Ray (one local instance for the module), real processes killed by pid.

- The in-cluster judge actor (`JudgeService`) killed while a step's requests are queued in it: Ray restarts it
  on a new port, `call_judge` finds it again and sends the failed requests again; every item gets its own
  verdict (equal to in-process scoring), computed once by the restarted judge; none is lost or defaulted.
- The judge on Ray Serve with 2 replicas, overloaded (429s) by the bounded loop of bench/judge_load.py while
  one replica is killed: every request is answered once with its own results, nothing lost, and no client sees
  a 5xx (JudgeFront resends the requests that were on the dead replica).
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import os
import signal
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError
from ray.serve import Application
from ray.serve.schema import ServeDeploySchema

from actors import judge_serve
from actors.judge_server import JudgeService
from audio_thinker.app.train.judging import Judge, call_judge
from audio_thinker.app.cli.serve_judge import scaling
from audio_thinker.core.judge_config import JudgeConfig
from audio_thinker.core.records import RolloutRecord
from reward_server.app import ServerSettings
from reward_server.auth import API_KEYS_ENV
from reward_server.backends import TransformersBackend
from reward_server.client import JudgeClient
from reward_server.options import ServeOptions
from reward_server.schemas import JudgeItem
from reward_server.scoring import score_items

ROOT = Path(__file__).resolve().parents[2]
KEY = "serve-key"


def load_bench():
    """bench/judge_load.py as a module (its load loop and checks are what this test runs)."""
    spec = importlib.util.spec_from_file_location("judge_load", ROOT / "bench" / "judge_load.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["judge_load"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def metric(url: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return s.value
    return 0.0


def wait_for(predicate, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


@pytest.fixture(scope="module")
def ray_local(ray_session):
    """The session's Ray instance (tests/conftest.py) for the module's Serve deployments; Serve ends with the
    module."""
    yield
    judge_serve.shutdown()


def think_record(i: int) -> RolloutRecord:
    return RolloutRecord(
        step=1, group=f"q{i // 4}", sample=i % 4, question_id=f"q{i // 4}", audio_path="a.wav", difficulty=None,
        category=None, question=f"Question {i}: which beep is louder?", choices=["first", "second"],
        answer="second", letters=False, response="", num_tokens=1, finish_reason="stop", mode="think",
        think=f"Beep {i % 3} sounds louder than beep {i % 5}.", answer_text="second", correct=i % 2 == 0,
    )  # fmt: skip


@pytest.mark.parametrize(
    "fault,timeout_s,retries", [(signal.SIGKILL, 8.0, 1), (signal.SIGSTOP, 8.0, 0)], ids=["dies", "hangs"]
)
def test_a_judge_actor_that_dies_or_hangs_mid_scoring_is_restarted_and_every_item_scored_once(
    ray_local, judge_path, fault, timeout_s, retries
):
    # One batch waits up to 3 s to fill: the fault lands while all of the step's requests are queued in the judge.
    # A hung judge (SIGSTOP) answers nothing: its requests time out, then the driver has Ray restart it.
    config = JudgeConfig(
        max_batch_size=64,
        max_wait_ms=3000.0,
        request_chunk=3,
        max_restarts=1,
        max_retries=retries,
        call_timeout_s=timeout_s,
        startup_timeout_s=120,
    )
    service = JudgeService(judge_path, config, KEY, "127.0.0.1").ready()
    judge = Judge(service.url, KEY, service)
    try:
        JudgeClient(service.url).wait_ready(120)
        first_pid, first_url = service.pid(), service.url
        records = [think_record(i) for i in range(12)]
        done: dict[str, object] = {}
        scoring = threading.Thread(
            target=lambda: done.update(n=call_judge(judge, config, records, {"consistency", "think_quality"}))
        )
        scoring.start()
        wait_for(lambda: metric(first_url, "judge_queue_depth") == 12, 30)
        os.kill(first_pid, fault)
        scoring.join(120)
        assert not scoring.is_alive() and done["n"] == 12
        assert service.pid() != first_pid and judge.url != first_url and judge.recoveries == 1
        ref = TransformersBackend(judge_path, device="cpu")
        for r in records:
            want = score_items(ref, [JudgeItem(question=r.question, think=r.think, answer=r.answer_text,
                                               choices=r.choices)])[0]  # fmt: skip
            assert r.think_quality == pytest.approx(want.think_quality, abs=1e-5)
            if r.correct:
                assert r.consistency_prob == pytest.approx(want.consistency_prob, abs=1e-5)
            else:
                assert r.consistency is None  # not asked: consistency only pays for correct answers
        # The restarted judge computed each item once: what was in flight at the kill, sent again, no more.
        assert metric(judge.url, "judge_items_total", score="think_quality") == 12
        assert metric(judge.url, "judge_items_total", score="consistency") == 6
    finally:
        judge.close()


def test_serve_with_two_replicas_one_killed_mid_overload_answers_every_request_once(ray_local, judge_path):
    bench = load_bench()
    workers, per_worker = 8, 4
    n = workers * per_worker
    items = bench.make_items(n * bench.ITEMS_PER_REQUEST)
    expected = score_items(TransformersBackend(judge_path, device="cpu"), items)
    settings = ServerSettings(
        api_keys=frozenset({bench.KEY}), max_queue=8, max_items=4, max_batch_size=8, max_wait_ms=2.0, retry_after_s=0
    )
    deployment = judge_serve.JudgeDeployment(
        lambda: TransformersBackend(judge_path, device="cpu"), settings, judge_serve.Scaling(replicas=2), port=0,
        num_cpus=0.5,
    )  # fmt: skip
    try:
        JudgeClient(deployment.url).wait_ready(120)
        pids = deployment.replica_pids()
        assert len(pids) == 2
        hook, fired = bench.killer(lambda: pids[0], after=n // 4)
        load = asyncio.run(bench.drive(deployment.url, items, workers, per_worker, 180.0, hook))
        assert fired.is_set()
        assert sorted(load.answers) == list(range(n)) and load.answered_twice == 0  # none lost, none twice
        assert bench.mismatched(load, items, expected) == 0  # each its own results
        assert load.refused_429 > 0  # it was past capacity
        assert load.errors_5xx == {}  # JudgeFront sent the killed replica's requests to the other one
        wait_for(lambda: len(deployment.replica_pids()) == 2 and pids[0] not in deployment.replica_pids(), 120)
    finally:
        deployment.close()


def test_replica_options_and_the_rayservice_serve_config(monkeypatch):
    opts = ServeOptions(model="m", autoscale=" 1,4")
    assert opts.on_ray_serve and opts.autoscale_bounds() == (1, 4)
    bounds = {"min_replicas": 1, "initial_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 4.0}
    assert scaling(opts).options() == {"autoscaling_config": bounds}
    assert scaling(ServeOptions(model="m", replicas=3)).options() == {"num_replicas": 3}
    assert not ServeOptions(model="m").on_ray_serve
    for kwargs, message in [
        (dict(replicas=2, autoscale="1,2"), "choose one"),
        (dict(autoscale="4"), "expected MIN,MAX"),
        (dict(autoscale="3,1"), "need MIN <= MAX"),
    ]:
        with pytest.raises(ValidationError, match=message):
            ServeOptions(model="m", **kwargs)
    # Serve's queue never fills before the judge's own (429): every request holds at least one item.
    options = judge_serve.replica_options(ServerSettings(max_queue=16, max_batch_size=8), 0.5, 0.0)
    assert options["max_ongoing_requests"] > 16 + 8
    # The RayService manifest's Serve config is valid and its import path builds the judge application.
    manifest = yaml.safe_load((ROOT / "deploy" / "kuberay" / "judge-rayservice.yaml").read_text())
    config = ServeDeploySchema.parse_obj(yaml.safe_load(manifest["spec"]["serveConfigV2"]))
    (app,) = config.applications
    assert app.route_prefix == "/" and app.deployments[0].name == judge_serve.DEPLOYMENT_NAME
    module, name = app.import_path.split(":")
    build = getattr(importlib.import_module(module), name)
    monkeypatch.delenv(API_KEYS_ENV, raising=False)
    with pytest.raises(ValueError, match="needs API keys"):
        build(app.args)
    monkeypatch.setenv(API_KEYS_ENV, "k1,k2")
    assert isinstance(build(app.args), Application)
