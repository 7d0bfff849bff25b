"""`audio-thinker serve-judge --replicas N | --autoscale MIN,MAX`: the judge on Ray Serve (actors/judge_serve.py),
on the cluster of RAY_ADDRESS or on a new local Ray instance, until SIGINT/SIGTERM."""

from __future__ import annotations

import signal
import threading

import ray

from actors.judge_serve import JudgeDeployment, Scaling, shutdown
from audio_thinker.app.train.launch import connect_ray
from audio_thinker.core.log import get_logger
from reward_server.app import ServerSettings
from reward_server.auth import check_auth_setup, load_api_keys
from reward_server.cli import backend_loader
from reward_server.options import ServeOptions

log = get_logger(__name__)


def scaling(options: ServeOptions) -> Scaling:
    bounds = options.autoscale_bounds()
    if bounds is not None:
        return Scaling(min_replicas=bounds[0], max_replicas=bounds[1])
    return Scaling(replicas=options.replicas)


def run_on_ray_serve(options: ServeOptions) -> int:
    """Deploy, serve until a signal, delete the application. Raises AuthConfigError for refused keys."""
    settings = ServerSettings(
        **options.limits().model_dump(), score_mode=options.score_mode, api_keys=load_api_keys(options.api_key_file)
    )
    check_auth_setup(options.host, settings.api_keys, options.no_auth)
    stop = threading.Event()
    started = connect_ray()
    for sig in (signal.SIGINT, signal.SIGTERM):  # after ray.init, which installs its own
        signal.signal(sig, lambda *_: stop.set())
    try:
        deployment = JudgeDeployment(
            backend_loader(options),
            settings,
            scaling(options),
            host=options.host,
            port=options.port,
            num_cpus=options.replica_cpus,
            num_gpus=options.replica_gpus,
        )
        log.info("judge on Ray Serve at %s (%s backend, %s)", deployment.url, options.backend, options.model)
        stop.wait()
        log.info("stopping: deleting the judge application and Ray Serve")
        deployment.close()
        shutdown()
    finally:
        if started:
            ray.shutdown()
    return 0
