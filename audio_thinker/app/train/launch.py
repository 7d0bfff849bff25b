"""Getting a run's parts ready: its inputs checked and loaded, a Ray connection, the judge. `Driver.from_config`
uses these; each is usable alone (tests, tools)."""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Sequence
from pathlib import Path

import ray

from actors.judge_serve import JudgeDeployment, Scaling
from actors.judge_server import JudgeService
from actors.placement import Placed, RunPlacement
from audio_thinker.app.errors import TrainingError
from audio_thinker.app.train.judging import Judge
from audio_thinker.core.config import Config
from audio_thinker.core.data import Dataset, load_dataset
from audio_thinker.core.log import LOG_DIR_ENV, get_logger
from audio_thinker.core.rewards import needs_judge
from reward_server.app import ServerSettings
from reward_server.backends import load_backend
from reward_server.client import JudgeClient

log = get_logger(__name__)


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


def connect_ray(actor_logs: Path | None = None) -> bool:
    """Join the cluster of RAY_ADDRESS (a `ray job submit` run sets it), else start a new local one whose
    actors write their output to files in `actor_logs` (None: Ray shows it on the console). Returns whether
    this call started Ray (and so must shut it down)."""
    if ray.is_initialized():
        return False
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
        log.info("joined the Ray cluster at %s", address)
    else:
        env = {k: v for k, v in os.environ.items() if k.startswith(("VLLM_", "TORCH_"))}
        if actor_logs is not None:
            env[LOG_DIR_ENV] = str(actor_logs)
        ray.init(
            address="local",
            num_cpus=os.cpu_count(),
            include_dashboard=False,
            log_to_driver=actor_logs is None,
            logging_level=logging.INFO if actor_logs is None else logging.WARNING,
            runtime_env={"env_vars": env},
        )
        log.info("started a local Ray instance (%d CPUs)", os.cpu_count())
    return not address


def start_in_cluster_judge(
    config: Config, key: str, host: str, slots: Sequence[Placed] | None = None
) -> JudgeService | JudgeDeployment:
    """One judge actor (in the run's judge bundle when `slots` are given), or `judge.replicas` replicas on Ray
    Serve (placed by Serve; its proxy on a free port of `host`)."""
    j = config.judge
    if j.replicas is None:
        return JudgeService(config.model.judge_path, j, key, host, slots)
    settings = ServerSettings(**j.limits().model_dump(), score_mode=j.score_mode, api_keys=frozenset({key}))
    path = config.model.judge_path
    return JudgeDeployment(
        lambda: load_backend(j.backend, path),
        settings,
        Scaling(replicas=j.replicas),
        host=host,
        port=0,
        num_cpus=j.num_cpus,
        num_gpus=j.num_gpus,
    )


def start_judge(config: Config, placement: RunPlacement | None = None) -> Judge | None:
    """The run's judge, ready to answer: an external one (`judge.url`) or a new in-cluster server (in the run's
    judge bundle when `placement` is given); None when the reward variant needs no verdicts."""
    if not needs_judge(config.reward.variant):
        return None
    if config.judge.url:
        judge = Judge(config.judge.url, config.judge.api_key or os.environ.get("AUDIO_THINKER_JUDGE_API_KEY"))
    else:
        key = secrets.token_urlsafe(24)
        host = "127.0.0.1" if len(ray.nodes()) == 1 else ray.util.get_node_ip_address()
        slots = (placement.slots("judge") or None) if placement is not None else None
        service = start_in_cluster_judge(config, key, host, slots)
        judge = Judge(service.url, key, service)
    try:
        with JudgeClient(judge.url, api_key=judge.api_key, timeout_s=config.judge.call_timeout_s) as client:
            client.wait_ready(timeout_s=config.judge.startup_timeout_s)
    except BaseException:
        judge.close()
        raise
    return judge
