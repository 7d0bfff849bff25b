"""`audio-thinker train model.family=qwen3_omni` end to end on the tiny default: vLLM rollout worker, judge,
reference, evaluation, the router's load-balancing loss, `final/` loaded by both engines with the trainer's
log-probs. (The two-rank ZeRO-3 group with LoRA on the experts: test_qwen3_omni_lora.py.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

from audio_thinker.core.encoding import PromptEncoder
from audio_thinker.core.chat import render_chat
from audio_thinker.core.models import load_feature_extractor, load_policy, load_tokenizer
from rollout.engine import GenerationRequest, SamplingConfig
from trainer.logprobs import CompletionLogprobs, PolicyBatch, compute_logprobs

FAMILY = "qwen3_omni"
ROOT = Path(__file__).resolve().parents[2]
PARITY = 1e-4  # engine vs trainer log-probs, as for the other families
STEPS = 2


@pytest.fixture(scope="module")
def warm_qwen3_omni(tmp_path_factory) -> Path:
    """The tiny Qwen3-Omni thinker after the CPU demo's format warm-up (150 steps, about 40 s on 2 cores)."""
    from audio_thinker.app.data.tiny import make_tiny_models
    from audio_thinker.core.presets import load_config

    steps = load_config().model.tiny_warmup_steps
    return make_tiny_models(tmp_path_factory.mktemp("warm-q3o"), only=[FAMILY], warmup_steps=steps)[FAMILY]


@pytest.fixture(scope="module")
def omni_run(tiny_run, warm_qwen3_omni, tmp_path_factory):
    """`audio-thinker train` of STEPS tiny steps on the warm Qwen3-Omni (the suite's tiny-run overrides, vLLM
    rollout, the router's load-balancing loss on), as a subprocess in its own process group."""
    work = tmp_path_factory.mktemp("omni-run")
    run, log = work / "runs" / "omni", work / "train.log"
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    args = [*tiny_run(run, STEPS), "model.family=qwen3_omni", f"model.policy_path={warm_qwen3_omni}",
            "trainer.router_aux_loss_coef=0.01"]  # fmt: skip
    with log.open("w") as out:
        proc = subprocess.Popen([str(bin_dir / "audio-thinker"), "train", *args], cwd=work, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        assert proc.wait(timeout=1500) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return run


def test_train_runs_end_to_end_and_final_loads_in_both_engines(omni_run, warm_qwen3_omni):
    from rollout.hf_engine import TransformersEngine
    from rollout.vllm_engine import VLLMEngine

    metrics = [json.loads(line) for line in (omni_run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    assert [m["step"] for m in metrics] == list(range(1, STEPS + 1))
    assert json.loads((omni_run / "status.json").read_text())["state"] == "finished"
    assert sum(m["judge/items"] for m in metrics) > 0  # the warm policy thinks: the judge scored it
    assert any(k.startswith("eval/") for k in metrics[-1])
    for m in metrics:
        assert m["actor/router_aux_loss"] > 0 and m["sync/bytes"] > 0
        # vLLM's log-probs (behaviour) against the trainer's: equal within the other families' tolerance
        assert abs(m["actor/logprob_mismatch_mean"]) < PARITY and m["mismatch/kl"] < PARITY
    final = omni_run / "final"
    assert json.loads((final / "config.json").read_text())["model_type"] == "qwen3_omni_moe_thinker"
    warm_keys = set(load_file(str(warm_qwen3_omni / "model.safetensors")))
    assert set(load_file(str(final / "model.safetensors"))) == warm_keys  # the released layout: experts one each
    model = load_policy(final, FAMILY, "float32")
    encoder = PromptEncoder(load_tokenizer(final), load_feature_extractor(final))
    prompt = render_chat(FAMILY, "Which sound do you hear?")
    audio = (np.random.default_rng(0).standard_normal(24000) * 0.1).astype(np.float32)
    engines = (TransformersEngine(final, FAMILY, "float32"), VLLMEngine(final, FAMILY, "float32", max_model_len=1024))
    request, sampling = GenerationRequest(prompt, audio, seed=5), SamplingConfig(n=2, max_new_tokens=8)
    for engine in engines:
        try:
            (group,) = engine.generate([request], sampling)
        finally:
            engine.close()
        batch = PolicyBatch([encoder.encode(prompt, audio)], [0, 0], [s.token_ids for s in group])
        for s, lp in zip(group, compute_logprobs(CompletionLogprobs(model), batch, 2, "cpu", 1.0)):
            np.testing.assert_allclose(np.asarray(s.logprobs), lp, atol=PARITY)
