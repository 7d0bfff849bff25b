"""Weight sync from the DeepSpeed trainer group to vLLM rollout workers in Ray, both paths (object store and
gloo broadcast): every worker's checksum equals the trainer's, and the workers then sample from the new
weights (their log-probs equal the trainer's log-probs of the same completions, and differ from the old ones).
"""

from __future__ import annotations

import numpy as np
import pytest

from actors.weight_sync import WeightSync
from audio_thinker.core.config import RolloutConfig
from audio_thinker.core.trainer_config import TrainerConfig
from audio_thinker.core.encoding import PromptEncoder
from audio_thinker.core.chat import render_chat
from audio_thinker.core.models import load_feature_extractor, load_policy, load_tokenizer
from rollout.engine import GenerationRequest, SamplingConfig


@pytest.fixture(scope="module")
def actors(ray_session, tiny_models):
    from actors.rollout_pool import RolloutPool
    from actors.trainer_group import PolicyTrainerGroup

    path = str(tiny_models["qwen2_audio"])
    rollout = RolloutConfig(engine="vllm", num_workers=2, num_cpus_per_worker=0.25, max_model_len=1024)
    trainer_cfg = TrainerConfig(num_ranks=1, num_cpus_per_rank=0.25, lr=1e-3, micro_batch_size=8, beta=0.0)
    pool = RolloutPool(rollout, path, "qwen2_audio", "float32", 0).ready()
    trainer = PolicyTrainerGroup(path, "qwen2_audio", trainer_cfg, 4, "float32").ready()
    encoder = PromptEncoder(load_tokenizer(path), load_feature_extractor(path))
    yield pool, trainer, encoder, path
    pool.close()
    trainer.shutdown()


def sample(pool, encoder, version: int):
    rng = np.random.default_rng(version)
    clips = [rng.normal(0, 0.1, 16000).astype(np.float32) for _ in range(2)]
    prompts = [render_chat("qwen2_audio", f"Question {k}: what do you hear?") for k in range(2)]
    requests = [GenerationRequest(p, a, seed=version * 10 + k) for k, (p, a) in enumerate(zip(prompts, clips))]
    samples = pool.generate(requests, SamplingConfig(n=4, max_new_tokens=8), min_version=version)
    encoded = [encoder.encode(p, a) for p, a in zip(prompts, clips)]
    return encoded, samples


def train_once(trainer, pool, encoder, version: int) -> None:
    from trainer.logprobs import PolicyBatch

    encoded, samples = sample(pool, encoder, version - 1)
    flat = [(k, s) for k, group in enumerate(samples) for s in group]
    batch = PolicyBatch(
        prompts=encoded,
        prompt_index=[k for k, _ in flat],
        completion_ids=[s.token_ids for _, s in flat],
        advantages=list(np.linspace(-1.5, 1.5, len(flat))),
    )
    trainer.train_step(batch, 1.0)


@pytest.mark.parametrize("backend", ["object_store", "broadcast"])
def test_sync_reaches_every_worker(actors, backend):
    from trainer.logprobs import CompletionLogprobs, PolicyBatch, compute_logprobs

    pool, trainer, encoder, pool_path = actors
    sync = WeightSync(trainer, pool, backend)  # the driver's sync of this trainer/worker pair
    version = max(pool.versions()) + 1
    train_once(trainer, pool, encoder, version)
    metrics = sync.push(version)
    assert metrics["sync/bytes"] > 1_000_000
    assert pool.versions() == [version, version]

    encoded, samples = sample(pool, encoder, version)
    flat = [(k, s) for k, group in enumerate(samples) for s in group]
    batch = PolicyBatch(
        prompts=encoded, prompt_index=[k for k, _ in flat], completion_ids=[s.token_ids for _, s in flat]
    )
    trainer_lp = trainer.compute_logprobs(batch, 1.0)
    for (_, s), lp in zip(flat, trainer_lp):
        np.testing.assert_allclose(np.asarray(s.logprobs), lp, atol=1e-4)  # sampled from the new weights
    initial_policy = CompletionLogprobs(load_policy(pool_path, "qwen2_audio", "float32"))
    initial = compute_logprobs(initial_policy, batch, 8, "cpu", 1.0)
    assert max(np.abs(a - b).max() for a, b in zip(initial, trainer_lp)) > 1e-3  # ... which are not the old ones

    with pytest.raises(Exception, match="version"):
        pool.generate(
            [GenerationRequest(render_chat("qwen2_audio", "q"), np.zeros(1600, np.float32))],
            SamplingConfig(n=1, max_new_tokens=2),
            min_version=version + 1,
        )
    sync.close()  # a broadcast group is torn down (a no-op for the object store)


def test_exported_folder_loads_in_both_engines(actors, tmp_path):
    """The trainer's Hugging Face export is what both rollout engines load: same log-probs as the trainer."""
    from rollout.hf_engine import TransformersEngine
    from rollout.vllm_engine import VLLMEngine
    from trainer.logprobs import PolicyBatch

    _pool, trainer, encoder, _ = actors
    folder = trainer.export(tmp_path / "export")
    prompt = render_chat("qwen2_audio", "Question 0: what do you hear?")
    audio = np.random.default_rng(0).normal(0, 0.1, 16000).astype(np.float32)
    request = GenerationRequest(prompt, audio, seed=5)
    hf = TransformersEngine(folder, "qwen2_audio", "float32")
    for engine in (hf, VLLMEngine(folder, "qwen2_audio", "float32", max_model_len=1024)):
        try:
            (group,) = engine.generate([request], SamplingConfig(n=2, max_new_tokens=6))
        finally:
            engine.close()
        batch = PolicyBatch(prompts=[encoder.encode(prompt, audio)], prompt_index=[0, 0],
                            completion_ids=[s.token_ids for s in group])
        for s, lp in zip(group, trainer.compute_logprobs(batch, 1.0)):
            np.testing.assert_allclose(np.asarray(s.logprobs), lp, atol=1e-4)
