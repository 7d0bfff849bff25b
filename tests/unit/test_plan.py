"""`audio-thinker plan` against numbers computed by hand for the two 7B presets (docs/placement.md has the formulas)."""

from __future__ import annotations

import math

import pytest
import torch
import transformers
from transformers.initialization import no_init_weights

from audio_thinker.app.cli.main import main
from audio_thinker.app.train.plan import make_plan
from audio_thinker.core.model_meta import count_params, known_config
from audio_thinker.core.model_shapes import KNOWN_COUNTS, KNOWN_SHAPES, known_shape, shape_of
from audio_thinker.core.presets import load_config
from trainer.memory import deepspeed_model_states, model_states, training_activations

P_AUDIO = 8_397_094_912  # Qwen2-Audio-7B-Instruct
P_OMNI = 8_931_813_888  # Qwen2.5-Omni-7B thinker
L_AUDIO, L_OMNI = 156032 * 4096, 152064 * 3584  # their largest layers: the (untied) embedding / LM head


def test_parameter_counts_by_hand():
    # Qwen3-8B: per layer q, o (4096 x 4096), k, v (4096 x 1024), q/k norms (128), SwiGLU 3 x 4096 x 12288, 2 norms.
    layer = 2 * 4096 * 4096 + 2 * 4096 * 1024 + 2 * 128 + 3 * 4096 * 12288 + 2 * 4096
    assert 36 * layer + 2 * 151936 * 4096 + 4096 == KNOWN_COUNTS["Qwen3-8B"][0] == 8_190_735_360
    # Qwen2-Audio: Whisper-large-v3 encoder (q, v, out biased, k not; fc1/fc2; 2 LayerNorms), two convs, positions,
    # the projector 1280 -> 4096, then a Qwen-7B LM (q, k, v biased, MHA) with an untied head.
    enc_layer = 4 * 1280 * 1280 + 3 * 1280 + 2 * 1280 * 5120 + 5120 + 1280 + 2 * 2 * 1280
    encoder = 32 * enc_layer + (128 * 1280 * 3 + 1280) + (1280 * 1280 * 3 + 1280) + 1500 * 1280 + 2 * 1280
    lm_layer = 4 * 4096 * 4096 + 3 * 4096 + 3 * 4096 * 11008 + 2 * 4096
    total = encoder + (1280 * 4096 + 4096) + 32 * lm_layer + 2 * 156032 * 4096 + 4096
    assert (total, encoder, L_AUDIO) == KNOWN_COUNTS["Qwen2-Audio-7B-Instruct"] == (P_AUDIO, 636_968_960, L_AUDIO)


def test_stored_counts_are_what_transformers_builds_from_the_stored_shape():
    with torch.device("meta"), no_init_weights():
        model = transformers.Qwen3ForCausalLM(known_config("Qwen3-8B"))
    assert count_params(model) == KNOWN_COUNTS["Qwen3-8B"]


@pytest.mark.parametrize("name", sorted(KNOWN_SHAPES))
def test_known_shapes_read_without_transformers_are_what_transformers_reads(name):
    _, _, source = KNOWN_SHAPES[name]
    assert known_shape(name) == shape_of(name, source, known_config(name), KNOWN_COUNTS[name])


@pytest.mark.parametrize("zero_stage, gpus", [(2, 1), (2, 4), (3, 5), (3, 8)])
def test_our_zero_arithmetic_is_deepspeeds_estimator(zero_stage, gpus):
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    if zero_stage == 2:
        _, expected = estimate_zero2_model_states_mem_needs(P_OMNI, num_gpus_per_node=gpus, cpu_offload=False)
    else:
        _, expected, _ = estimate_zero3_model_states_mem_needs(
            P_AUDIO, L_AUDIO, num_gpus_per_node=gpus, cpu_offload=False, cpu_offload_params=False
        )
    params, largest = (P_OMNI, L_OMNI) if zero_stage == 2 else (P_AUDIO, L_AUDIO)
    assert deepspeed_model_states(params, largest, zero_stage, gpus) == int(expected)


def test_zero_model_states_are_deepspeeds_split_by_its_multipliers():
    s3 = model_states(P_AUDIO, P_AUDIO, L_AUDIO, zero_stage=3, num_gpus=5)
    assert s3.total == deepspeed_model_states(P_AUDIO, L_AUDIO, 3, 5) == 4 * L_AUDIO + int(18 * P_AUDIO / 5)
    assert (s3.weights, s3.gradients, s3.optimizer) == (4 * L_AUDIO + 1, int(6 * P_AUDIO / 5), int(12 * P_AUDIO / 5))
    s2 = model_states(P_OMNI, P_OMNI, L_OMNI, zero_stage=2, num_gpus=4)
    assert s2.total == 2 * P_OMNI + int(18 * P_OMNI / 4)
    trainable = P_OMNI - 639_647_232  # the audio encoder frozen: its weights only, in bf16
    frozen = model_states(P_OMNI, trainable, L_OMNI, zero_stage=2, num_gpus=4)
    assert frozen.optimizer == int(12 * trainable / 4) and frozen.weights == pytest.approx(2 * P_OMNI, abs=2)


def test_activations_of_the_presets_micro_batch_by_hand():
    # Micro-batch 4, 2030 tokens (750 audio tokens of 30 s + 256 prompt + 1024 completion), LM head on the 1024.
    a = known_shape("Qwen2-Audio-7B-Instruct")
    dec = 2 * (5 * 4096 + 4096 + 2 * 4096 + 4 * 11008)  # bytes per token per layer = 153600
    enc = 2 * (5 * 1280 + 1280 + 2 * 1280 + 2 * 5120)  # 40960, on the 1500 encoder positions
    logits = 4 * 1024 * 156032 * 10
    act = training_activations(a.decoder, a.vocab, 4, 2030, 1024, a.audio_encoder, 1500)
    assert act.full == 4 * (32 * 2030 * dec + 32 * 1500 * enc) + logits == 54_166_814_720
    kept = 32 * 2030 * 2 * 4096 + 32 * 1500 * 2 * 1280
    assert act.checkpointed == 4 * (kept + 2030 * dec) + logits == 10_258_432_000
    o = known_shape("Qwen2.5-Omni-7B thinker")
    dec = 2 * (5 * 3584 + 28 * 128 + 2 * 4 * 128 + 4 * 18944)  # 196608
    act = training_activations(o.decoder, o.vocab, 4, 2030, 1024, None)  # frozen encoder: nothing kept
    assert act.checkpointed == 4 * (28 * 2030 * 2 * 3584 + 2030 * dec) + 4 * 1024 * 152064 * 10


def _gpu(plan, index):
    return {t.label: t.bytes for t in plan.gpus[index].terms}


@pytest.mark.parametrize(
    "preset, params, largest, dec, vocab, kv_per_token",
    [
        ("qwen2-audio-7b", P_AUDIO, L_AUDIO, 153600, 156032, 2 * 32 * 32 * 128 * 2),
        ("qwen2.5-omni-7b", P_OMNI, L_OMNI, 196608, 152064, 2 * 28 * 4 * 128 * 2),
    ],
)
def test_both_presets_fit_96_gb_with_every_model_on_a_gpu(preset, params, largest, dec, vocab, kv_per_token):
    config = load_config(preset)
    plan = make_plan(config, 96e9)
    assert plan.problems == [] and plan.cpu_actors == []
    assert [g.actors for g in plan.gpus] == [
        ["trainer rank 0 (0.75)", "reference model (0.25)"],
        *[[f"trainer rank {r} (1)"] for r in range(1, 5)],
        ["rollout worker 0 (1)"],
        ["rollout worker 1 (1)"],
        ["judge server (1)"],
    ]
    gpu0 = _gpu(plan, 0)
    assert gpu0["trainer optimizer states"] == int(12 * params / 5)
    assert gpu0["trainer weights"] == pytest.approx(4 * largest, abs=1)
    assert gpu0["reference weights"] == 2 * params
    assert gpu0["reference forward"] == 4 * 2030 * dec + 4 * 1024 * vocab * 10
    assert max(g.total for g in plan.gpus) == plan.gpus[0].total < 96e9
    # vLLM: 0.6 x 96 GB minus weights, the profiling forward (16384 tokens) + sampler logits, 2 GB of graphs.
    rollout = _gpu(plan, 5)
    assert sum(rollout.values()) == pytest.approx(0.6 * 96e9)
    assert rollout["rollout KV cache"] == pytest.approx(
        0.6 * 96e9 - 2 * params - rollout["rollout profiling peak"] - 2e9
    )
    assert math.floor(rollout["rollout KV cache"] / kv_per_token) >= 4096
    assert sum(_gpu(plan, 7).values()) == pytest.approx(0.5 * 96e9)  # the vLLM judge's share


def test_plan_command_prints_the_batch_and_placement(capsys):
    assert main(["plan", "--config", "qwen2-audio-7b"]) == 0
    out = capsys.readouterr().out
    assert "2 questions x 8 samples = 16 completions per step" in out
    assert "node 0 GPU 0: trainer rank 0 (0.75), reference model (0.25): 71.5 GB  fits" in out


def test_a_config_that_does_not_fit_exits_2_naming_the_gpu_and_the_biggest_term(capsys):
    assert main(["plan", "--config", "qwen2-audio-7b", "trainer.gradient_checkpointing=false"]) == 2
    err = capsys.readouterr().err
    assert "node 0 GPU 0 (trainer rank 0 (0.75), reference model (0.25)) needs 115.4 GB of 96.0 GB" in err
    assert "the biggest term is trainer activations (54.2 GB)" in err


def test_an_actor_left_without_a_gpu_or_a_ninth_gpu_is_refused(capsys):
    assert main(["plan", "--config", "qwen2.5-omni-7b", "judge.num_gpus=0"]) == 2
    assert "judge server has no GPU on a GPU run (run.num_gpus=8)" in capsys.readouterr().err
    separate = ["reference.placement=separate", "reference.num_gpus=1"]
    assert main(["plan", "--config", "qwen2.5-omni-7b", *separate]) == 2
    assert "the reference model do not fit: the run's actors need 9 GPUs, run.num_gpus=8" in capsys.readouterr().err
    assert main(["plan", "--config", "qwen2.5-omni-7b", *separate, "run.num_gpus=9"]) == 0  # nodes of 8 and 1
    assert "node 1 GPU 0: reference model (1): " in capsys.readouterr().out


def test_an_sft_config_is_planned_as_sft_runs_it(capsys):
    """sft-a: 8 trainer ranks of one GPU each, nothing else (SFT starts no rollout worker, judge or reference);
    as a GRPO run the same config would need 11 GPUs and is refused."""
    config = load_config("sft-a")
    plan = make_plan(config, 96e9, job="sft")
    assert plan.problems == [] and plan.cpu_actors == []
    assert [g.actors for g in plan.gpus] == [[f"trainer rank {r} (1)"] for r in range(8)]
    gpu = _gpu(plan, 0)
    assert gpu["trainer optimizer states"] == int(12 * P_AUDIO / 8) and "reference weights" not in gpu
    # sft.batch_size=16 over 8 ranks: 2 sequences each, in micro-batches of 1.
    batch = plan.lines[0]
    assert "sft.batch_size=16 sequences per step" in batch and "<= 2 each, in micro-batches of 1" in batch
    assert main(["plan", "--config", "sft-a"]) == 0
    assert "planned as `audio-thinker sft`" in capsys.readouterr().out
    assert main(["plan", "--config", "sft-a", "--job", "train"]) == 2
    assert "the rollout workers do not fit: the run's actors need 11 GPUs" in capsys.readouterr().err
    assert main(["plan", "--config", "qwen2-audio-7b", "--job", "sft"]) == 0  # any config, as `sft` would run it
