"""Getting a run's parts ready: models and data on disk, a Ray connection, the judge. `Driver.from_config`
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
from audio_thinker.app.judging import Judge
from audio_thinker.app.synthetic import write_synthetic_dataset
from audio_thinker.app.tiny import ensure_tiny_models, read_provenance
from audio_thinker.core.config import Config
from audio_thinker.core.data import Dataset, load_dataset
from audio_thinker.core.log import LOG_DIR_ENV, get_logger
from audio_thinker.core.rewards import needs_judge
from reward_server.app import ServerSettings
from reward_server.backends import load_backend
from reward_server.client import JudgeClient

log = get_logger(__name__)


def synthetic_splits(config: Config) -> list[tuple[str, int]]:
    """The synthetic splits (name, size) to write before the run, after checking every manifest path.

    Synthetic data is written only where it belongs (`data.audio_root/<split>.jsonl`) and only when that file is
    missing; any other missing manifest is an error naming the key and the path, raised before anything is
    written or loaded (a typo in a path must never overwrite a data set).
    """
    d = config.data
    root = Path(d.audio_root)
    todo = []
    for key, manifest, size, split in (
        ("data.train_manifest", d.train_manifest, d.synthetic_train_size, "train"),
        ("data.eval_manifest", d.eval_manifest, d.synthetic_eval_size, "eval"),
    ):
        if not manifest or Path(manifest).is_file():
            continue
        target = root / f"{split}.jsonl"
        if not d.make_synthetic_if_missing:
            raise TrainingError(f"{key}={manifest}: no such file (data.make_synthetic_if_missing=false)")
        if Path(manifest).resolve() != target.resolve():
            raise TrainingError(
                f"{key}={manifest}: no such file; synthetic data is only written to {target} "
                "(data.audio_root/<split>.jsonl), so check the path"
            )
        todo.append((split, size))
    return todo


def prepare_data(config: Config) -> tuple[Dataset, Dataset | None]:
    d = config.data
    root = Path(d.audio_root)
    for split, size in synthetic_splits(config):
        log.info("writing the synthetic %s split (%d questions) to %s", split, size, root)
        write_synthetic_dataset(root, n=size, seed=config.run.seed, split=split)
    kwargs = dict(audio_root=root, skip_bad_rows=d.skip_bad_rows, max_seconds=d.max_audio_seconds)
    train = load_dataset(d.train_manifest, "avqa", **kwargs)
    held_out = load_dataset(d.eval_manifest, d.eval_format, **kwargs) if d.eval_manifest else None
    return train, held_out


def prepare_models(config: Config) -> None:
    """Build the tiny models where the config allows it and the folders are missing (the CPU default), with
    `model.tiny_warmup_steps` of format warm-up; warn when an existing tiny policy was built with another."""
    m = config.model
    missing = [p for p in (m.policy_path, m.judge_path) if not (Path(p) / "config.json").is_file()]
    if missing and m.make_tiny_if_missing:
        for folder in sorted({str(Path(p).parent) for p in missing}):
            ensure_tiny_models(folder, seed=config.run.seed, warmup_steps=m.tiny_warmup_steps)
        missing = [p for p in missing if not (Path(p) / "config.json").is_file()]
    if missing:
        raise TrainingError(
            f"model folder(s) {missing} not found (tiny models are named "
            "<folder>/qwen2_audio, qwen2_5_omni, qwen3_judge; real ones must exist)"
        )
    built = read_provenance(m.policy_path)
    if built is not None and built["warmup_steps"] != m.tiny_warmup_steps:
        log.warning(
            "tiny policy %s was built with %d format warm-up steps, model.tiny_warmup_steps=%d: using it as is "
            "(rebuild: audio-thinker make-tiny --out %s --warmup-steps %d)",
            m.policy_path,
            built["warmup_steps"],
            m.tiny_warmup_steps,
            Path(m.policy_path).parent,
            m.tiny_warmup_steps,
        )


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
        with JudgeClient(judge.url, api_key=judge.api_key, timeout_s=config.judge.timeout_s) as client:
            client.wait_ready(timeout_s=config.judge.timeout_s)
    except BaseException:
        judge.close()
        raise
    return judge
