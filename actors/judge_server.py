"""The reward-judge REST service inside the Ray cluster: one actor running uvicorn on a free port.

The driver reaches it over HTTP through `reward_server.client`, exactly like an external judge, with a key
generated for the run. On a one-node cluster it listens on 127.0.0.1; on a multi-node cluster on its node's
address (auth is always on). Ray restarts a dead actor (up to `judge.max_restarts`); the restarted server
listens on a new port, so after failed calls the driver asks `recover()` for the URL again.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

import ray
from ray.exceptions import ActorUnavailableError

from actors.group import ActorDiedError, ActorGroup
from actors.placement import Placed
from audio_thinker.core.judge_config import JudgeConfig
from audio_thinker.core.log import redirect_actor_output
from audio_thinker.core.threads import use_cpu_share
from reward_server.app import ServerSettings
from reward_server.backends import load_backend
from reward_server.cli import ServerThread, build_server
from reward_server.client import JudgeClient

HEALTH_PROBE_S = 10.0  # a judge whose /health does not answer within this is hung: it is killed and restarted


@ray.remote
class JudgeServer:
    def __init__(self, model_path: str, judge: JudgeConfig, api_key: str, host: str, dtype: str | None = None):
        redirect_actor_output("judge-server")
        use_cpu_share(judge.num_cpus)
        settings = ServerSettings(
            **judge.limits().model_dump(), score_mode=judge.score_mode, api_keys=frozenset({api_key})
        )
        server = build_server(
            lambda: load_backend(judge.backend, model_path, dtype=dtype), settings, host=host, port=0
        )
        self.thread = ServerThread(server)
        self.base_url = self.thread.start()

    def url(self) -> str:
        """The base URL (the model may still be loading: poll /ready)."""
        return self.base_url

    def wait_ready(self, timeout_s: float) -> None:
        """Until the model is loaded (/ready), asked inside the actor: a wait that ends when the actor does."""
        with JudgeClient(self.base_url, timeout_s=timeout_s) as client:
            client.wait_ready(timeout_s)

    def pid(self) -> int:
        return os.getpid()

    def stop(self) -> None:
        """Graceful: stop accepting, answer what is in flight, release the model."""
        self.thread.stop(timeout_s=60)


class JudgeService:
    """The driver's handle on the in-cluster judge: one `JudgeServer` actor in an `ActorGroup`."""

    def __init__(
        self,
        model_path: str,
        judge: JudgeConfig,
        api_key: str,
        host: str,
        placement: Sequence[Placed] | None = None,
        dtype: str | None = None,
    ):
        """`dtype`: the judge model's weights dtype, the run's `model.dtype` (None: the backend's default, which for
        vLLM is what it picks for the model: bfloat16 on its CPU backend even for a float32 model)."""
        self.group = ActorGroup(
            "judge server", JudgeServer, 1, lambda _: (model_path, judge, api_key, host, dtype),
            num_cpus=judge.num_cpus, num_gpus=judge.num_gpus, timeout_s=judge.call_timeout_s,
            timeout_key="judge.call_timeout_s",
            placement=placement, max_restarts=judge.max_restarts,
        )
        self.startup_timeout_s = judge.startup_timeout_s
        self.url = ""  # once `ready`

    def ready(self) -> JudgeService:
        """Wait until the server listens and its model is loaded (within `judge.startup_timeout_s`)."""
        timeout_s, key = self.startup_timeout_s, "judge.startup_timeout_s"
        (self.url,) = self.group.get(self.group.submit("url"), "start the judge server", timeout_s, key)
        self.group.get(self.group.submit("wait_ready", timeout_s), "load the judge model", timeout_s, key)
        return self

    def pid(self) -> int:
        return self.group.call_rank0("pid")

    def recover(self, timeout_s: float) -> str:
        """The judge's URL after calls to it failed, once it is ready again. A dead actor is being restarted by
        Ray (past `judge.max_restarts` this raises ActorDiedError naming it); a hung one (its actor or its
        /health does not answer) is killed so that Ray restarts it."""
        try:
            url = self._url(timeout_s)
            hung = url == self.url and not self._answers_health(url)
        except TimeoutError:
            hung = True
        if hung:
            ray.kill(self.group.actors[0], no_restart=False)
            url = self._url(timeout_s)
        with JudgeClient(url, timeout_s=timeout_s) as client:
            client.wait_ready(timeout_s)
        self.url = url
        return url

    @staticmethod
    def _answers_health(url: str) -> bool:
        with JudgeClient(url, timeout_s=HEALTH_PROBE_S) as probe:
            return probe.is_alive()

    def _url(self, timeout_s: float) -> str:
        """The actor's URL, waiting while Ray restarts it (calls meanwhile fail as 'temporarily unavailable')."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return self.group.call_rank0("url", what="reach the restarted judge server")
            except ActorDiedError as exc:
                if not isinstance(exc.__cause__, ActorUnavailableError) or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def close(self) -> None:
        try:
            self.group.call_rank0("stop", what="stop the judge server")
        finally:
            self.group.shutdown()
