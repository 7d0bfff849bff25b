"""Shared fixtures: the environment every test runs in, tiny models built once per session, one local Ray instance
for the session's in-process Ray tests (`ray_session`: a test module that called `ray.init` itself would find it
running, so modules take this fixture instead)."""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from faults import KillOnLogLine

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("VLLM_CACHE_ROOT", str(ROOT / ".cache" / "vllm"))
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".cache" / "torch_extensions"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("AUDIO_THINKER_NO_PROGRESS", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
# Ray otherwise resolves 127.0.0.1 to the machine's network address: keep every test's traffic on loopback.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
SHARED_MODELS_ENV = "AUDIO_THINKER_TEST_MODELS"  # tests/run_suite.py: where its two pytest processes share tiny models


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (for a server a test starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def actor_logs(tmp_path_factory) -> Path:
    """Where the session's Ray actors write their output (`<name>-<pid>.log`, as in a local run): the restart
    tests watch these files to kill an actor inside a call (tests/integration/faults.py)."""
    return tmp_path_factory.mktemp("actor-logs")


@pytest.fixture(scope="session")
def ray_session(actor_logs):
    """One local Ray instance (2 CPUs, loopback, no dashboard) for every in-process Ray test of the session,
    started when first asked for: a start and a stop of Ray per module cost seconds each. Whatever a test starts
    in it (actors, placement groups, Serve) it ends, so that the next module finds all 2 CPUs free; a run of the
    driver in this process (`run_training`, `main(["sft", ...])`) joins it and leaves it running. Its actors
    write their output to `actor_logs`."""
    import ray

    from audio_thinker.core.log import LOG_DIR_ENV

    env = {LOG_DIR_ENV: str(actor_logs)}
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": env})
    yield
    ray.shutdown()


def built_tiny_models(tmp_path_factory, folder: str, warmup_steps: int = 0, names: tuple[str, ...] = ()) -> dict:
    """The tiny models `names` (all when empty) with `warmup_steps` of format warm-up, in a new folder of the
    session's; under `make test` (SHARED_MODELS_ENV set) in the folder its two pytest processes share, built by the
    first to take its lock and reused by the other (seeded builds: the same bytes either way)."""
    from audio_thinker.app.data.options import TINY_MODELS
    from audio_thinker.app.data.tiny import ensure_tiny_models

    names = names or TINY_MODELS
    shared = os.environ.get(SHARED_MODELS_ENV)
    if not shared:
        return ensure_tiny_models(tmp_path_factory.mktemp(folder), seed=0, warmup_steps=warmup_steps, names=names)
    out = Path(shared) / folder
    out.mkdir(parents=True, exist_ok=True)
    with (out / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return ensure_tiny_models(out, seed=0, warmup_steps=warmup_steps, names=names)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """Every tiny model (Qwen2-Audio, the Qwen2.5-Omni and Qwen3-Omni thinkers, the Qwen3 judge), built once."""
    return built_tiny_models(tmp_path_factory, "tiny")


@pytest.fixture(scope="session")
def judge_path(tiny_models) -> str:
    """The tiny Qwen3 judge's folder, as the judge servers and backends take it."""
    return str(tiny_models["qwen3_judge"])


@pytest.fixture(scope="session")
def warm_policy(tmp_path_factory) -> Path:
    """The tiny Qwen2-Audio after the CPU demo's format warm-up (the built-in defaults): it writes valid think
    and no_think responses, so rewards, the judge and GRPO have something to work on."""
    from audio_thinker.core.presets import load_config

    steps = load_config().model.tiny_warmup_steps
    return built_tiny_models(tmp_path_factory, "warm", steps, ("qwen2_audio",))["qwen2_audio"]


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory) -> Path:
    """A small synthetic set (24 train, 6 held-out questions) the tiny training runs of the suite share."""
    from audio_thinker.app.data.synthetic import write_synthetic_dataset

    out = tmp_path_factory.mktemp("data")
    write_synthetic_dataset(out, n=24, seed=0, split="train")
    write_synthetic_dataset(out, n=6, seed=0, split="eval")
    return out


@pytest.fixture(scope="session")
def tiny_run(tiny_models, warm_policy, synthetic):
    """`tiny_run(out, steps)`: the overrides of a cheap tiny training run (2 questions x 8 samples, 24 tokens)
    on the warm policy, the tiny judge and the shared synthetic set, writing `out`."""

    def overrides(out: Path, steps: int) -> list[str]:
        return [
            f"model.policy_path={warm_policy}",
            f"model.judge_path={tiny_models['qwen3_judge']}",
            f"data.train_manifest={synthetic / 'train.jsonl'}",
            f"data.eval_manifest={synthetic / 'eval.jsonl'}",
            f"data.audio_root={synthetic}",
            f"run.output_dir={out}",
            f"run.total_steps={steps}",
            "run.questions_per_step=2",
            "run.eval_limit=2",
            "rollout.max_new_tokens=24",
            "trainer.micro_batch_size=16",
        ]

    return overrides


CLI_RUN_STEPS = 4
# Two trainer ranks of 0.5 CPU fill a node of 1 CPU; the rollout worker (0.5), the judge and the reference (0.25
# each) fill another. Locally that is the 2 CPUs of a 2-core machine; the job tests run the same config on a
# two-node cluster of 1 CPU per node, where it can only land one way (test_train_e2e.py), and resume it to
# `cli_run`'s numbers.
CLI_RUN_PLACEMENT = [
    "trainer.num_ranks=2",
    "trainer.num_cpus_per_rank=0.5",
    "rollout.num_cpus_per_worker=0.5",
    "judge.num_cpus=0.25",
    "reference.num_cpus=0.25",
]


@dataclass
class CliRun:
    """The session's shared `audio-thinker train` run (see `cli_run`) and what happened before it started."""

    run: Path  # its run directory
    proc: subprocess.Popen
    log: Path  # its console
    extensions: Path  # the TORCH_EXTENSIONS_DIR it (and the run stopped before it) used
    stopped: Path  # the run directory of the run stopped during its trainer set-up
    stopped_code: int  # that run's exit code
    stale_lock: Path  # the lock file left by hand before the run started
    killers: tuple  # the faults injected into the run (tests/integration/faults.py), in the order they strike

    def __iter__(self):  # (run, proc, log), as most tests take it
        return iter((self.run, self.proc, self.log))


def start_train(args: list[str], cwd: Path, log: Path, extensions: Path) -> subprocess.Popen:
    """`audio-thinker train ARGS` in its own process group, its console in `log`, with its own JIT build folder."""
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PATH": f"{bin_dir}:{os.environ['PATH']}",
           "TORCH_EXTENSIONS_DIR": str(extensions)}  # fmt: skip
    with log.open("w") as out:
        return subprocess.Popen([str(bin_dir / "audio-thinker"), "train", *args], cwd=cwd, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip


def end_group(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
    """End a process started with its own group (and everything in the group), by its pgid; its exit code."""
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode


def private_extensions(folder: Path) -> Path:
    """A copy of the JIT extensions `make install` built (no build at run time), for a test that leaves locks."""
    built = Path(os.environ["TORCH_EXTENSIONS_DIR"]) / "deepspeed_shm_comm"
    out = folder / "torch_extensions"
    if built.is_dir():
        shutil.copytree(built, out / built.name, ignore=shutil.ignore_patterns("lock", "audio-thinker.lock"))
    (out / built.name).mkdir(parents=True, exist_ok=True)
    return out


@pytest.fixture(scope="session")
def cli_run(tiny_run, tmp_path_factory):
    """One `audio-thinker train` of CLI_RUN_STEPS tiny steps with two trainer ranks (CLI_RUN_PLACEMENT) as a
    subprocess (own process group, ended by pgid), started once per session: the dashboard tests watch it while it
    writes, the end-to-end tests check what it wrote and resume a preempted copy of it. A rollout worker, the reference
    and a trainer rank are killed inside their calls during it (`run_faults`): it is also the recovery test's run.

    Before it, in the same working folder and JIT build folder, a run of the same command (without the judge and
    vLLM) is stopped with SIGTERM while its trainer ranks start, and a build lock is left by hand as a process killed
    inside torch's build leaves it: the shared run must start all the same (tests/integration/test_startup.py)."""
    work = tmp_path_factory.mktemp("cli-run")
    extensions = private_extensions(work)
    stopped = work / "runs" / "stopped"
    # Only its trainer set-up matters: no judge (the answer-only baseline) and the transformers engine, not vLLM.
    light = ["reward.variant=grpo", "prompt.mode=no_think", "rollout.engine=transformers"]
    first = start_train([*tiny_run(stopped, CLI_RUN_STEPS), *CLI_RUN_PLACEMENT, *light], work, work / "stopped.log",
                        extensions)  # fmt: skip
    deadline = time.monotonic() + 300
    while not list((stopped / "logs").glob("trainer-rank-0-*.log")) and first.poll() is None:
        assert time.monotonic() < deadline, (work / "stopped.log").read_text()[-3000:]
        time.sleep(0.2)
    stopped_code = end_group(first)
    stale = extensions / "deepspeed_shm_comm" / "lock"
    stale.write_text("")
    run, log = work / "runs" / "live", work / "train.log"
    killers = run_faults(run / "logs")
    proc = start_train([*tiny_run(run, CLI_RUN_STEPS), *CLI_RUN_PLACEMENT], work, log, extensions)
    try:
        yield CliRun(run, proc, log, extensions, stopped, stopped_code, stale, killers)
    finally:
        end_group(proc)
        for killer in killers:
            killer.stop()


def run_faults(logs: Path) -> tuple:
    """SIGKILLs (by pid) inside the shared run's calls, started before it: its rollout worker in the middle of
    step 2's generation (the first call that asks for weights version 1), its reference in the middle of step 3's
    log-probs (its third call), its trainer rank 1 in the middle of step 4's update. The run must recover from
    each and give the same samples and metrics as an undisturbed run (test_run_recovery.py, test_train_e2e.py)."""
    killers = (
        KillOnLogLine(logs, "rollout-worker", r"generating .* at least 1 asked", nth=1),
        KillOnLogLine(logs, "reference", r"log-probs of \d+ completions", nth=3),
        KillOnLogLine(logs, "trainer-rank-1", r"train step on", nth=4),
    )
    for killer in killers:
        killer.start()
    return killers
