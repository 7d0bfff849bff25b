"""`audio-thinker sft` on the tiny policy: the loss of step 1 is the NLL of the targets computed here by hand
from the initial weights, the loss falls, the exported model generates in both engines (vLLM loads it as its
checkpoint), and a resumed run continues exactly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from audio_thinker.app.cli.main import main
from audio_thinker.app.train.run_dir import RunDir
from audio_thinker.app.train.sft import SftRun
from audio_thinker.app.train.sft_data import load_sft_data
from audio_thinker.core.models import load_policy, load_tokenizer
from audio_thinker.core.presets import load_config
from rollout.build import build_engine
from rollout.engine import GenerationRequest, SamplingConfig
from rollout.vllm_engine import folder_weights
from trainer.logprobs import CompletionLogprobs, collate

STEPS = 3


@pytest.fixture(scope="module")
def cot_manifest(synthetic, tmp_path_factory) -> Path:
    """Four synthetic questions with a rationale each (make-cot's output layout)."""
    rows = [json.loads(line) for line in (synthetic / "train.jsonl").read_text().splitlines()][:4]
    for row in rows:
        row["rationale"] = f"I listen carefully. Therefore, the answer is {row['multi_choice'][row['answer']]}."
    path = tmp_path_factory.mktemp("cot") / "train_cot.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def overrides(policy: Path, manifest: Path, synthetic: Path, out: Path) -> list[str]:
    return [
        f"model.policy_path={policy}",
        f"data.train_manifest={manifest}",
        f"data.audio_root={synthetic}",
        "data.eval_manifest=null",
        f"run.output_dir={out}",
        f"run.total_steps={STEPS}",
        "run.checkpoint_every=1",
        f"run.keep_checkpoints={STEPS}",
        "prompt.mode=think",
        "sft.target=cot",
        "sft.batch_size=4",
        "trainer.micro_batch_size=2",  # two micro-batches per step: accumulation is exercised
        "trainer.lr=1e-3",
    ]


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_sft_lowers_the_loss_exports_and_resumes_exactly(ray_session, tiny_models, cot_manifest, synthetic, tmp_path):
    policy = tiny_models["qwen2_audio"]
    run = tmp_path / "sft"
    args = overrides(policy, cot_manifest, synthetic, run)
    assert main(["sft", *args]) == 0

    logged = metrics(run)
    assert [m["step"] for m in logged] == [1, 2, 3]
    losses = [m["sft/loss"] for m in logged]
    assert losses[2] < losses[1] < losses[0]
    assert json.loads((run / "status.json").read_text())["state"] == "finished"
    assert list((run / "tensorboard").glob("events.*"))

    # Step 1 by hand: the mean NLL of the step's response tokens under the initial weights.
    config = load_config(None, args)
    data, rationales = load_sft_data(config)
    batch = SftRun(config, None, data, rationales, RunDir(run)).batch(1)
    text = load_tokenizer(policy).decode(batch.completion_ids[0])
    assert text.startswith("<think>I listen carefully. Therefore, the answer is ") and text.endswith(
        "</answer><|im_end|>"
    )
    inputs = collate(batch, range(len(batch)))
    mask = inputs.pop("mask")
    with torch.no_grad():
        logp = CompletionLogprobs(load_policy(policy, "qwen2_audio", "float32"))(**inputs, temperature=1.0)
    assert logged[0]["sft/tokens"] == int(mask.sum())
    assert logged[0]["sft/loss"] == pytest.approx(float(-(logp * mask).sum() / mask.sum()), rel=1e-4)

    # The exported policy is a whole Hugging Face folder (what eval, both engines and an RL run's
    # model.policy_path load): every non-weight file of the source, its weights in the layout vLLM reads (the same
    # export as a GRPO run's, which vLLM loads in test_weight_sync_workers.py), and it generates.
    source_files = {p.name for p in Path(policy).iterdir() if p.suffix != ".safetensors"}
    assert source_files <= {p.name for p in (run / "final").iterdir()}
    assert folder_weights(run / "final", "qwen2_audio") == folder_weights(policy, "qwen2_audio")  # vLLM's layout
    engine = build_engine("transformers", run / "final", "qwen2_audio")
    prompt = "<|im_start|>user\nAudio 1: <|audio_bos|><|AUDIO|><|audio_eos|>\nWhich?<|im_end|>\n<|im_start|>assistant\n"
    out = engine.generate(
        [GenerationRequest(prompt, data.audio(0))], SamplingConfig(n=1, max_new_tokens=4, greedy=True)
    )
    assert len(out[0][0].token_ids) >= 1
    engine.close()

    # Resume from step 1's checkpoint: steps 2 and 3 come out as they did the first time.
    copy = tmp_path / "sft-resumed"
    shutil.copytree(run, copy)
    for name in ("step-00000002", "step-00000003"):
        shutil.rmtree(copy / "checkpoints" / name)
    shutil.rmtree(copy / "final")
    assert main(["sft", "--resume", f"run.output_dir={copy}"]) == 0
    again = metrics(copy)
    assert [m["step"] for m in again] == [1, 2, 3]
    for a, b in zip(logged[1:], again[1:]):
        assert a["sft/loss"] == pytest.approx(b["sft/loss"], rel=1e-6)
        assert a["actor/grad_norm"] == pytest.approx(b["actor/grad_norm"], rel=1e-5)
    first, second = load_file(run / "final" / "model.safetensors"), load_file(copy / "final" / "model.safetensors")
    assert first.keys() == second.keys()
    assert all(torch.allclose(first[k], second[k], atol=1e-6) for k in first)
    initial = load_file(Path(policy) / "model.safetensors")
    assert any(not torch.equal(initial[k], first[k]) for k in initial if k in first)
