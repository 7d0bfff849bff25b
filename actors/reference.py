"""The reference model: the frozen initial policy, asked only for completion log-probs (the KL anchor).

Plain transformers, no DeepSpeed and no optimizer state, in a one-actor `ActorGroup`. Its resources are
fractional (`trainer.reference_num_cpus` / `reference_num_gpus`) so that it can share trainer rank 0's bundle and
GPU (`trainer.reference_placement=colocate`) or have its own (`separate`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from actors.group import ActorGroup
from actors.placement import Placed
from audio_thinker.core.config import TrainerConfig
from audio_thinker.core.log import redirect_actor_output
from audio_thinker.core.threads import use_cpu_share
from audio_thinker.core.models import checkpoint_state, load_policy
from audio_thinker.core.weights import state_checksum
from trainer.logprobs import CompletionLogprobs, PolicyBatch, compute_logprobs


class ReferenceModel:
    """The actor: the policy as it was at step 0."""

    def __init__(
        self,
        model_path: str,
        family: str,
        dtype: str = "float32",
        micro_batch_size: int = 8,
        encode_audio_once: bool = True,
        num_cpus: float = 1.0,
    ):
        redirect_actor_output("reference")
        use_cpu_share(num_cpus)
        self.family = family
        self.device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
        self.module = CompletionLogprobs(load_policy(model_path, family, dtype=dtype, device=self.device)).eval()
        self.module.requires_grad_(False)
        self.micro_batch_size = micro_batch_size
        self.encode_audio_once = encode_audio_once

    def compute_logprobs(self, batch: PolicyBatch, temperature: float = 1.0) -> list[np.ndarray]:
        return compute_logprobs(
            self.module,
            batch,
            self.micro_batch_size,
            self.device,
            temperature,
            share_clips=self.encode_audio_once,
        )

    def weights_checksum(self) -> str:
        return state_checksum(checkpoint_state(self.module.policy, self.family))


class Reference:
    """The driver's handle on the reference actor."""

    def __init__(
        self,
        model_path: str | Path,
        family: str,
        cfg: TrainerConfig,
        dtype: str = "float32",
        placement: Sequence[Placed] | None = None,
    ):
        self.group = ActorGroup(
            "reference model",
            ReferenceModel,
            1,
            lambda _: (
                str(model_path),
                family,
                dtype,
                cfg.micro_batch_size,
                cfg.encode_audio_once,
                cfg.reference_num_cpus,
            ),
            num_cpus=cfg.reference_num_cpus,
            num_gpus=cfg.reference_num_gpus,
            timeout_s=cfg.timeout_s,
            timeout_key="trainer.timeout_s",
            placement=placement,
        )

    def compute_logprobs(self, batch: PolicyBatch, temperature: float = 1.0) -> list[np.ndarray]:
        return self.group.call_rank0("compute_logprobs", batch, temperature, what="reference log-probs")

    def weights_checksum(self) -> str:
        return self.group.call_rank0("weights_checksum")

    def close(self) -> None:
        self.group.shutdown()
