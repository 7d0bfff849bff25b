"""Getting a run's parts ready: its inputs checked and loaded, a Ray connection, and every actor group started
at once (`start_parts`). `Driver.from_config` uses these; each is usable alone (tests, tools)."""

from __future__ import annotations

import logging
import os
import secrets
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import ray

from actors.judge_serve import JudgeDeployment, Scaling
from actors.judge_server import JudgeService
from actors.placement import RunPlacement
from actors.reference import Reference
from actors.rollout_pool import RolloutPool
from actors.trainer_group import PolicyTrainerGroup
from audio_thinker.app.errors import TrainingError
from audio_thinker.app.train.judging import Judge
from audio_thinker.app.train.rehearsal import DeclaredCluster
from audio_thinker.core.config import BenchToggles, Config
from audio_thinker.core.data import Dataset, load_dataset
from audio_thinker.core.log import LOG_DIR_ENV, STEPS, get_logger
from audio_thinker.core.rewards import needs_judge
from reward_server.app import ServerSettings
from reward_server.backends import load_backend

log = get_logger(__name__)
steps_log = get_logger(STEPS)
STILL_STARTING_EVERY_S = 30.0  # a console line naming the groups still starting, so a stuck start is seen


def check_inputs(config: Config, needs_judge_model: bool = True) -> None:
    """Every model folder and manifest the run reads exists, or one error naming the key (before Ray starts).
    The CLI builds the CPU demo's tiny models and synthetic set first (`app/data/demo.py`)."""
    m, d = config.model, config.data
    paths = [("model.policy_path", m.policy_path, "config.json")]
    if needs_judge_model:
        paths.append(("model.judge_path", m.judge_path, "config.json"))
    missing = [f"{key}={path}" for key, path, marker in paths if not (Path(path) / marker).is_file()]
    if missing:
        raise TrainingError(
            f"model folder(s) not found: {', '.join(missing)} (a Hugging Face folder with a config.json; "
            "`audio-thinker make-tiny --out DIR` builds the tiny ones)"
        )
    for key, manifest in (("data.train_manifest", d.train_manifest), ("data.eval_manifest", d.eval_manifest)):
        if manifest and not Path(manifest).is_file():
            raise TrainingError(f"{key}={manifest}: no such file")


def prepare_data(config: Config) -> tuple[Dataset, Dataset | None]:
    """The training set and the held-out split (None without `data.eval_manifest`)."""
    d = config.data
    kwargs = dict(skip_bad_rows=d.skip_bad_rows, max_seconds=d.max_audio_seconds)
    train = load_dataset(d.train_manifest, "avqa", Path(d.audio_root), **kwargs)
    held_out = None
    if d.eval_manifest:
        held_out = load_dataset(d.eval_manifest, d.eval_format, Path(d.held_out_audio_root), **kwargs)
    return train, held_out


def connect_ray(actor_logs: Path | None = None, declared: DeclaredCluster | None = None) -> bool:
    """Join the cluster of RAY_ADDRESS (a `ray job submit` run sets it), else start a new local one whose
    actors write their output to files in `actor_logs` (None: Ray shows it on the console). A rehearsal's
    `declared` cluster is always a new local one declaring its GPUs and CPUs, and its environment (every process
    on the CPU) is set here for the driver and every actor. Returns whether this call started Ray (and so must
    shut it down)."""
    if declared is not None:
        if os.environ.get("RAY_ADDRESS"):
            raise TrainingError("a rehearsal declares its GPUs on a local Ray cluster of its own: unset RAY_ADDRESS")
        os.environ.update(declared.env)
    if ray.is_initialized():
        return False
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
        log.info("joined the Ray cluster at %s", address)
    else:
        env = {k: v for k, v in os.environ.items() if k.startswith(("VLLM_", "TORCH_"))}
        env.update(declared.env if declared is not None else {})
        if actor_logs is not None:
            env[LOG_DIR_ENV] = str(actor_logs)
        cpus = declared.cpus if declared is not None else os.cpu_count()
        ray.init(
            address="local",
            num_cpus=cpus,
            num_gpus=declared.gpus if declared is not None else None,
            include_dashboard=False,
            log_to_driver=actor_logs is None,
            logging_level=logging.INFO if actor_logs is None else logging.WARNING,
            runtime_env={"env_vars": env},
        )
        if actor_logs is not None:
            _ray_messages_to_log()
        gpus = f", {declared.gpus} GPUs declared" if declared is not None else ""
        log.info("started a local Ray instance (%d CPUs%s)", cpus, gpus)
    return not address


def _ray_messages_to_log() -> None:
    """A quiet run's Ray messages go to the driver's log file, not the console: Ray's driver prints each message
    the raylet publishes (an actor's process that died: ten lines with its exit detail and the usual causes) on
    stdout itself, from a thread of its own that looks the printing function up in its module each time. The
    console has our one line for it (which actor, during which call, which restart of how many)."""
    module = ray._private.worker
    if callable(getattr(module, "print_to_stdstream", None)):
        module.print_to_stdstream = lambda data, ignore_prefix=False: log.info("Ray: %s", " ".join(data["lines"]))


def create_judge(config: Config, placement: RunPlacement | None = None) -> Judge:
    """The run's judge, not yet waited for: an external one (`judge.url`), a new judge actor (in the run's judge
    bundle when `placement` is given), or `judge.replicas` replicas on Ray Serve (started here: Serve places them,
    its proxy on a free port). An in-cluster judge loads its model in the run's `model.dtype`."""
    j = config.judge
    if j.url:
        return Judge(j.url, j.api_key_value() or os.environ.get("AUDIO_THINKER_JUDGE_API_KEY"))
    key = secrets.token_urlsafe(24)
    host = "127.0.0.1" if len(ray.nodes()) == 1 else ray.util.get_node_ip_address()
    if j.replicas is None:
        slots = (placement.slots("judge") or None) if placement is not None else None
        return Judge("", key, JudgeService(config.model.judge_path, j, key, host, slots, dtype=config.model.dtype))
    settings = ServerSettings(**j.limits().model_dump(), score_mode=j.score_mode, api_keys=frozenset({key}))
    path = config.model.judge_path
    deployment = JudgeDeployment(
        lambda: load_backend(j.backend, path, dtype=config.model.dtype),
        settings,
        Scaling(replicas=j.replicas),
        host=host,
        port=0,
        num_cpus=j.num_cpus,
        num_gpus=j.num_gpus,
    )
    return Judge(deployment.url, key, deployment)


@dataclass
class RunParts:
    """A run's actor groups: the judge (None with a reward function of one's own or a variant without verdicts),
    the rollout pool, the trainer group and the reference model."""

    judge: Judge | None
    rollout: RolloutPool
    trainer: PolicyTrainerGroup
    reference: Reference

    def close(self) -> None:
        """End every group, each even when another fails to close."""
        for part in (self.judge, self.rollout, self.trainer, self.reference):
            if part is not None:
                close_quietly(part)


def start_parts(
    config: Config, placement: RunPlacement, with_judge: bool = True, toggles: BenchToggles | None = None
) -> RunParts:
    """Every actor group of the run at once: all are created in their bundles, then waited for together, each
    within its `<part>.startup_timeout_s`, with one console line per group as it is ready. A group that fails or
    misses its deadline ends them all (nothing is left running) and its error is raised, naming it."""
    c, m = config, config.model
    started = time.monotonic()
    created: list = []
    try:
        judge = create_judge(c, placement) if with_judge and needs_judge(c.reward.variant) else None
        created.append(judge)
        rollout = RolloutPool(c.rollout, m.policy_path, m.family, m.dtype, c.run.seed, placement.slots("rollout"))
        created.append(rollout)
        trainer = PolicyTrainerGroup(
            m.policy_path, m.family, c.trainer, c.run.total_steps, m.dtype, placement.slots("trainer"), toggles
        )
        created.append(trainer)
        reference = Reference(
            m.policy_path, m.family, c.reference, c.trainer.micro_batch_size, m.dtype, placement.slots("reference"),
            toggles,
        )  # fmt: skip
    except BaseException:
        for part in reversed([p for p in created if p is not None]):
            close_quietly(part)
        raise
    parts = RunParts(judge, rollout, trainer, reference)
    waits = {
        f"{c.rollout.num_workers} rollout worker(s) ({c.rollout.engine})": rollout.ready,
        f"{c.trainer.num_ranks} trainer rank(s) (ZeRO-{c.trainer.zero_stage})": trainer.ready,
        "the reference model": reference.ready,
    }
    if judge is not None:
        waits["the judge" if judge.service is not None else f"the judge at {judge.url}"] = (
            lambda: judge.ready(c.judge.startup_timeout_s)
        )
    with ThreadPoolExecutor(max_workers=len(waits), thread_name_prefix="start") as pool:
        futures = {pool.submit(ready): name for name, ready in waits.items()}
        pending = set(futures)
        try:
            while pending:
                done, pending = wait(pending, timeout=STILL_STARTING_EVERY_S, return_when=FIRST_COMPLETED)
                for future in done:
                    future.result()
                    steps_log.info("%s ready after %.1f s", futures[future], time.monotonic() - started)
                if pending and not done:
                    waiting = ", ".join(futures[f] for f in pending)
                    steps_log.info("still starting after %.0f s: %s", time.monotonic() - started, waiting)
        except BaseException:
            parts.close()  # the other groups' waits then fail at once
            raise
    return parts


def close_quietly(part) -> None:
    """Close a part (`shutdown` or `close`); a failure is logged, so that closing goes on for the others."""
    try:
        (part.shutdown if hasattr(part, "shutdown") else part.close)()
    except Exception as exc:
        log.warning("closing %s failed: %s", type(part).__name__, exc)
