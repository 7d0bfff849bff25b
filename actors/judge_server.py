"""The reward-judge REST service inside the Ray cluster: one actor running uvicorn on a free port.

The driver reaches it over HTTP through `reward_server.client`, exactly like an external judge, with a key
generated for the run. On a one-node cluster it listens on 127.0.0.1; on a multi-node cluster on its node's
address (auth is always on).
"""

from __future__ import annotations

from collections.abc import Sequence

import ray

from actors.group import ActorGroup
from actors.placement import Placed
from audio_thinker.core.config import JudgeConfig
from audio_thinker.core.log import redirect_actor_output
from audio_thinker.core.threads import use_cpu_share
from reward_server.app import ServerSettings
from reward_server.backends import load_backend
from reward_server.cli import ServerThread, build_server


@ray.remote
class JudgeServer:
    def __init__(self, model_path: str, judge: JudgeConfig, api_key: str, host: str):
        redirect_actor_output("judge-server")
        use_cpu_share(judge.num_cpus)
        settings = ServerSettings(
            **judge.limits().model_dump(), score_mode=judge.score_mode, api_keys=frozenset({api_key})
        )
        server = build_server(lambda: load_backend(judge.backend, model_path), settings, host=host, port=0)
        self.thread = ServerThread(server)
        self.base_url = self.thread.start()

    def url(self) -> str:
        """The base URL (the model may still be loading: poll /ready)."""
        return self.base_url

    def stop(self) -> None:
        """Graceful: stop accepting, answer what is in flight, release the model."""
        self.thread.stop(timeout_s=60)


class JudgeService:
    """The driver's handle on the in-cluster judge: one `JudgeServer` actor in an `ActorGroup`."""

    def __init__(
        self, model_path: str, judge: JudgeConfig, api_key: str, host: str, placement: Sequence[Placed] | None = None
    ):
        self.group = ActorGroup(
            "judge server", JudgeServer, 1, lambda _: (model_path, judge, api_key, host),
            num_cpus=judge.num_cpus, num_gpus=judge.num_gpus, timeout_s=judge.timeout_s, timeout_key="judge.timeout_s",
            placement=placement,
        )
        self.url = self.group.call_rank0("url", what="start the judge server")

    def close(self) -> None:
        try:
            self.group.call_rank0("stop", what="stop the judge server")
        finally:
            self.group.shutdown()
