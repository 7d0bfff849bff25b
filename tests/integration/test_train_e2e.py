"""End-to-end tiny training on CPU through every real component: Ray actors, vLLM rollout workers (CPU build),
the DeepSpeed trainer group, the reference actor and the HTTP judge actor.

The suite's `audio-thinker train` run of 4 steps with two trainer ranks (the `cli_run` fixture, which the dashboard
tests watch while it writes) is checked step by step against `audio-thinker rewards` and exported again. Then the
same config goes to a two-node Ray cluster on loopback (`ray start --head` and a second node with a custom
resource, 1 CPU each) as a `ray job submit` run: it lands where its placement groups say (the two ranks on one
node, the other actors on the other), is stopped mid-run (`ray job stop`: SIGTERM, a preemption; it keeps the
checkpoint of the step in flight and exits) and is resumed by a second submission that names only the run
directory: its steps equal the shared run's. (One job run checks both the placement and the preemption:
each run of the tiny config costs a minute of actor start-up.)
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from ray.job_submission import JobSubmissionClient
from ray.util.state import list_actors, list_nodes

from audio_thinker.app.cli.main import main
from audio_thinker.app.eval.rescore import rescore_records
from audio_thinker.core.presets import load_config
from trainer.checkpoint import checkpoint_dir
from conftest import CLI_RUN_PLACEMENT, CLI_RUN_STEPS, end_group, free_port

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
REQUIRED = [
    "step",
    "think_rate",
    "gamma_think",
    "gamma_no_think",
    "reward/total",
    "reward/accuracy",
    "reward/format",
    "reward/consistency",
    "reward/think",
    "acc/overall",
    "acc/think",
    "acc/no_think",
    "response_length/mean",
    "timing_s/gen",
    "timing_s/judge",
    "timing_s/ref",
    "timing_s/train",
    "timing_s/sync",
    "timing_s/step",
    "sync/bytes",
]
TERMS = {
    "format": "format",
    "accuracy": "accuracy",
    "consistency": "consistency_reward",
    "think": "think_reward",
    "total": "total",
    "advantage": "advantage",
}


def read_metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def responses(run: Path, step: int) -> list[str]:
    rows = (run / "rollouts" / f"step_{step:06d}.jsonl").read_text().splitlines()
    return [json.loads(line)["response"] for line in rows]


def check_step_dump(run: Path, step: int, total_steps: int, metrics: dict, rows_per_step: int) -> None:
    rows = [json.loads(line) for line in (run / "rollouts" / f"step_{step:06d}.jsonl").read_text().splitlines()]
    assert len(rows) == rows_per_step
    for row in rows:
        for key in (
            "question_id",
            "audio_path",
            "difficulty",
            "response",
            "mode",
            "answer_text",
            "correct",
            "consistency",
            "think_quality",
            *TERMS.values(),
        ):
            assert key in row, key
        assert Path(row["audio_path"]).is_file()
    recomputed = rescore_records(rows, step, total_steps, "atar_cr_tr")
    for row, sample in zip(rows, recomputed["samples"]):
        for term, key in TERMS.items():
            assert math.isclose(sample[term], row[key], rel_tol=1e-9, abs_tol=1e-9), (step, term)
    for stat in ("think_rate", "gamma_think", "gamma_no_think"):
        assert math.isclose(recomputed["batch"][stat], metrics[stat], rel_tol=1e-12)
    s = 1 - step / total_steps
    assert math.isclose(metrics["gamma_think"], math.exp(-metrics["think_rate"] * s))
    assert math.isclose(metrics["gamma_no_think"], math.exp(-(1 - metrics["think_rate"]) * s))


STEPS = CLI_RUN_STEPS
# What the resumed job must reproduce exactly (timings and sync sizes may differ).
COMPARED = (
    "think_rate",
    "gamma_think",
    "gamma_no_think",
    "reward/total",
    "reward/accuracy",
    "reward/think",
    "acc/overall",
    "count/think",
    "count/invalid",
    "response_length/mean",
    "actor/loss",
    "actor/kl",
)


@pytest.fixture(scope="module")
def uninterrupted(cli_run) -> Path:
    """The suite's `audio-thinker train` run of STEPS steps (tests/conftest.py), once it has finished: the
    reference for the resumed job below."""
    run, proc, log = cli_run
    assert proc.wait(timeout=1200) == 0, log.read_text()[-3000:]
    # The closing line's command works as printed: the executable the run was started with (`make demo`:
    # .venv/bin/audio-thinker, which is not on PATH).
    (watch,) = [line for line in log.read_text().splitlines() if line.startswith("watch it: ")]
    assert Path(watch.split()[2]).is_file() and watch.split()[3:5] == ["dashboard", "--runs"], watch
    return run


def test_a_cli_run_writes_every_step_and_exports_the_policy(uninterrupted, tmp_path, capsys):
    out = uninterrupted
    metrics = read_metrics(out)
    assert [m["step"] for m in metrics] == list(range(1, STEPS + 1))
    for m in metrics:
        for key in REQUIRED:
            assert key in m and math.isfinite(m[key]), key
        assert m["sync/bytes"] > 0 and m["judge/items"] >= 0
        check_step_dump(out, m["step"], STEPS, m, rows_per_step=2 * 8)
    assert any(k.startswith("eval/") for k in metrics[-1])
    assert sum(m["judge/items"] for m in metrics) > 0  # the warm policy thinks: the HTTP judge scored it
    assert sum(m["count/think"] + m["count/no_think"] for m in metrics) > 0
    assert (out / "config.yaml").is_file() and load_config(out / "config.yaml").run.total_steps == STEPS
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert sorted(p.name for p in (out / "checkpoints").iterdir() if not p.name.startswith("."))[-1].endswith("4")
    assert json.loads((out / "status.json").read_text())["state"] == "finished"
    check_timeline(out, STEPS)
    # The trained policy is exported at the end; `audio-thinker export` of the last checkpoint (offline: DeepSpeed's
    # two ZeRO-2 shards consolidated in this process, no Ray) writes the same bytes.
    final = (out / "final" / "model.safetensors").read_bytes()
    again = tmp_path / "again"
    assert main(["export", "--run", str(out), "--out", str(again)]) == 0
    assert capsys.readouterr().out == f"{again}\n"
    assert (again / "model.safetensors").read_bytes() == final
    assert (again / "config.json").read_text() == (out / "final" / "config.json").read_text()
    assert (again / "config.json").is_file() and (again / "tokenizer.json").is_file()


def check_timeline(out: Path, steps: int) -> None:
    """Every step's phases in timeline.json (valid JSON), on their lanes; no separate old pass by default."""
    events = json.loads((out / "timeline.json").read_text())
    lanes = {e["tid"]: e["args"]["name"] for e in events if e["ph"] == "M"}
    spans = [(e["args"]["step"], e["name"], lanes[e["tid"]]) for e in events if e["ph"] == "X"]
    for step in range(1, steps + 1):
        phases = sorted({(name, lane) for s, name, lane in spans if s == step})  # a streamed step: a span per group
        expected = [("checkpoint", "trainer"), ("generate", "driver"), ("generate", "rollout worker 0"),
                    ("judge", "judge"), ("ref log-probs", "reference"), ("step", "driver"), ("sync", "trainer"),
                    ("train", "trainer")]
        if step == steps:
            expected = sorted([*expected, ("eval", "driver")])
        assert phases == expected, step
    assert all(e["dur"] >= 0 and e["ts"] > 1.6e15 for e in events if e["ph"] == "X")


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """A two-node Ray cluster on loopback: `ray start --head --block` (1 CPU) and a second node (1 CPU and the
    custom resource `node_b` that tells it apart; tests/integration/ray_node.py), each in its own process group,
    both ended afterwards. Yields the dashboard address and the environment of the `ray` commands."""
    dash, gcs, agent = free_port(), free_port(), free_port()
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths live under it
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "disabled",
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "PATH": f"{BIN}:{os.environ['PATH']}",
        # `ray job stop` sends SIGTERM, then SIGKILL after this grace: long enough for a preempted step to finish,
        # like a pod's terminationGracePeriodSeconds.
        "RAY_JOB_STOP_WAIT_TIME_S": "300",
    }
    quiet = {"env": env, "start_new_session": True, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    head = subprocess.Popen(
        [
            str(BIN / "ray"),
            "start",
            "--head",
            "--block",
            "--node-ip-address=127.0.0.1",
            f"--port={gcs}",
            "--num-cpus=1",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dash}",
            # Ray's default agent port (52365) is taken by any other Ray instance on the machine: the head's job
            # agent would not start and every submission would fail with "No available agent".
            f"--dashboard-agent-listen-port={agent}",
            f"--temp-dir={temp_dir}",
            "--disable-usage-stats",
        ],
        **quiet,
    )
    procs = [head]
    address = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.monotonic() + 120
        while (
            subprocess.run(
                [str(BIN / "ray"), "job", "list", "--address", address], env=env, capture_output=True
            ).returncode
            != 0
        ):
            assert head.poll() is None, "ray start exited"
            assert time.monotonic() < deadline, "the Ray dashboard did not come up"
            time.sleep(1)
        node_b = [sys.executable, str(Path(__file__).with_name("ray_node.py")), f"127.0.0.1:{gcs}",
                  json.dumps({"CPU": 1, "node_b": 1}), temp_dir, str(free_port())]  # fmt: skip
        procs.append(subprocess.Popen(node_b, **quiet))
        wait_for(lambda: len(alive_nodes(address)) == 2, 120, "the second Ray node")
        yield address, env
    finally:
        for proc in reversed(procs):
            end_group(proc, timeout=10)  # a test cluster: no need to wait for Ray's whole graceful stop
        shutil.rmtree(temp_dir, ignore_errors=True)


def alive_nodes(address: str) -> list:
    try:
        return list_nodes(address=address, filters=[("state", "=", "ALIVE")])
    except Exception:  # the dashboard's state API may not answer yet
        return []


def job(address: str, env: dict, *args: str, check: bool = True) -> str:
    command, *rest = args
    done = subprocess.run(
        [str(BIN / "ray"), "job", command, "--address", address, *rest],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if check and done.returncode != 0:
        raise AssertionError(f"ray job {args[0]} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout + done.stderr


def wait_for(predicate, timeout: float, what: str, poll_s: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(poll_s)


def status(address: str, job_id: str) -> str:
    """The job's state, over the dashboard's REST API (a CLI process per poll would load the 2 cores)."""
    return str(JobSubmissionClient(address).get_job_status(job_id).value)


def submit(address: str, env: dict, submission_id: str, *train_args: str) -> None:
    job(address, env, "submit", "--no-wait", "--submission-id", submission_id, "--working-dir", ".", "--",
        "audio-thinker", "train", *train_args)  # fmt: skip


@pytest.fixture(scope="module")
def preempted(ray_cluster, tiny_run, tmp_path_factory):
    """`cli_run`'s config submitted as a job, stopped with `ray job stop` (SIGTERM, as a preemption) once step 1 is
    written: (run directory, submission id, its last step, its status.json, whether the checkpoint of that step
    is there), read before the resumed job writes the run directory on (and rotates that checkpoint out)."""
    address, env = ray_cluster
    out = tmp_path_factory.mktemp("job") / "run"
    first = f"audio-thinker-{os.getpid()}-first"
    submit(address, env, first, *tiny_run(out, STEPS), *CLI_RUN_PLACEMENT)
    wait_for(
        lambda: (
            ((out / "metrics.jsonl").is_file() and len(read_metrics(out)) >= 1)
            or status(address, first) in ("FAILED", "SUCCEEDED")
        ),
        900,
        "step 1 of the first job",
        poll_s=0.2,
    )
    assert status(address, first) == "RUNNING", job(address, env, "logs", first)
    # SIGTERM to the driver mid-run, like a preempted node (over REST: a CLI start would let steps go by).
    JobSubmissionClient(address).stop_job(first)
    wait_for(lambda: status(address, first) in ("STOPPED", "FAILED"), 300, "the first job to stop")
    last = max(m["step"] for m in read_metrics(out))
    kept = checkpoint_dir(out / "checkpoints", last).is_dir()
    return out, first, last, json.loads((out / "status.json").read_text()), kept


@pytest.fixture(scope="module")
def resumed(ray_cluster, preempted) -> str:
    """The second submission, naming only the run directory: the saved config (T, seed, variant, paths, placement)
    is the run; it streams its steps (`run.stream_groups`), which must not change a number. Its submission id,
    once it has ended."""
    address, env = ray_cluster
    out = preempted[0]
    second = f"audio-thinker-{os.getpid()}-second"
    # Streamed (a harmless key on a resume): each group judged and scored as it returns, the same numbers.
    submit(address, env, second, "--resume", f"run.output_dir={out}", "run.stream_groups=true")
    wait_for(lambda: status(address, second) in ("SUCCEEDED", "FAILED", "STOPPED"), 900, "the resumed job")
    return second


def actor_nodes(address: str, submission_id: str) -> dict[str, list[str]]:
    """Actor class -> the node of each of its actors, in the job's run."""
    job_id = JobSubmissionClient(address).get_job_info(submission_id).job_id
    where: dict[str, list[str]] = {}
    for actor in list_actors(address=address, filters=[("job_id", "=", job_id)], detail=True, limit=1000):
        where.setdefault(actor["class_name"], []).append(actor["node_id"])
    return where


@pytest.mark.timeout(900)
def test_ray_job_on_two_nodes_places_the_actors_where_the_placement_groups_say(ray_cluster, preempted, resumed):
    """Two trainer ranks of 0.5 CPU fill one node (their placement group packs them); the rollout worker (0.5 CPU),
    the judge and the reference (0.25 each), reserved next, can then only go to the other node. So in both jobs."""
    address, _ = ray_cluster
    nodes = {n["node_id"]: n["resources_total"] for n in alive_nodes(address)}
    assert any("node_b" in resources for resources in nodes.values())
    for submission_id in (preempted[1], resumed):
        where = actor_nodes(address, submission_id)
        assert len(where["PolicyTrainerRank"]) == 2
        (trainer_node,) = set(where["PolicyTrainerRank"])
        others = where["RolloutWorker"] + where["JudgeServer"] + where["ReferenceModel"]
        (other_node,) = set(others)
        assert len(others) == 3 and {trainer_node, other_node} == set(nodes)  # two and three actors, a node each


@pytest.mark.timeout(1800)
def test_ray_job_submit_preempted_after_step_2_then_resumed(ray_cluster, preempted, resumed, uninterrupted):
    """`ray job stop` (SIGTERM, as a preemption) after step 1: the step in flight ends, its checkpoint is kept and
    the job exits naming the resume command. The resumed job's steps equal the shared run's, which recovered from
    three killed actors (test_run_recovery.py): same samples, rewards, losses and KL."""
    address, env = ray_cluster
    out, first, last, preempted_status, kept = preempted
    assert 1 <= last < STEPS  # the step in flight was finished; no later one began
    assert preempted_status["state"] == "preempted", preempted_status
    assert f"after step {last} of {STEPS}" in preempted_status["message"]
    assert f"resume with: audio-thinker train --resume run.output_dir={out}" in job(address, env, "logs", first)
    assert kept  # the checkpoint of the last finished step

    assert status(address, resumed) == "SUCCEEDED", job(address, env, "logs", resumed)
    assert f"resumed from {checkpoint_dir(out / 'checkpoints', last)}" in job(address, env, "logs", resumed)
    metrics = read_metrics(out)
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]  # every step once
    check_timeline(out, STEPS)  # the killed job's steps after its checkpoint were dropped, not repeated
    for m in metrics:
        check_step_dump(out, m["step"], STEPS, m, rows_per_step=2 * 8)  # ATAR continues at 3/4 and 4/4 (saved T)
    assert metrics[-1]["gamma_think"] == 1.0 and metrics[-1]["gamma_no_think"] == 1.0
    for resumed_step, reference in zip(metrics, read_metrics(uninterrupted), strict=True):
        step = resumed_step["step"]  # the shared run was killed three times (test_run_recovery.py): same samples
        assert responses(out, step) == responses(uninterrupted, step), step
        for key in COMPARED:
            assert math.isclose(resumed_step[key], reference[key], rel_tol=1e-5, abs_tol=1e-6), (
                resumed_step["step"],
                key,
            )
