"""Typed run configuration: YAML presets in `configs/` plus `key=value` overrides, validated at load.

Every section forbids unknown keys, so a typo is an error that names the key instead of a silently
ignored setting. `load_config()` is the one entry point the CLI, the driver and the tests use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO_ROOT / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "tiny-cpu.yaml"

ModelFamily = Literal["qwen2_audio", "qwen2_5_omni"]
PromptMode = Literal["adaptive", "think", "no_think"]
RewardVariant = Literal["grpo", "grpo_cot", "atar", "atar_cr", "atar_cr_tr"]


class ConfigError(ValueError):
    """A config file or override that does not validate; the message names the key and the value."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(Section):
    family: ModelFamily = Field("qwen2_audio", description="Policy architecture: Qwen2-Audio or Qwen2.5-Omni thinker.")
    policy_path: str = Field(
        "artifacts/tiny/qwen2_audio",
        description="Hugging Face folder of the policy (a hub checkpoint on a cluster, the tiny model here).",
    )
    judge_path: str = Field("artifacts/tiny/qwen3_judge", description="Hugging Face folder of the judge causal LM.")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="Weights dtype for rollout and training (bfloat16 on GPU, float32 on CPU)."
    )
    make_tiny_if_missing: bool = Field(
        True, description="Build the tiny random-init models when the paths are missing (CPU demo only)."
    )
    tiny_warmup_steps: int = Field(
        0,
        ge=0,
        description="Supervised format warm-up steps given to tiny policies built by the run, so that they "
        "write well-formed <think>/<answer> responses from step 1 (0: pure random init; see docs/tiny-models.md).",
    )


class DataConfig(Section):
    train_manifest: str = Field(
        "artifacts/synthetic/train.jsonl", description="Training set in the AVQA/R1-AQA jsonl layout."
    )
    eval_manifest: str | None = Field(
        "artifacts/synthetic/eval.jsonl", description="Held-out split for periodic evaluation (None: no evaluation)."
    )
    eval_format: Literal["avqa", "mmau", "mmar", "air"] = Field(
        "avqa", description="Layout of the held-out manifest (the benchmarks' official layouts)."
    )
    audio_root: str = Field("artifacts/synthetic", description="Folder that relative audio paths are resolved against.")
    skip_bad_rows: bool = Field(
        False, description="Skip (and count) rows whose audio is missing or corrupt instead of failing."
    )
    make_synthetic_if_missing: bool = Field(True, description="Write the synthetic set when the manifest is missing.")
    synthetic_train_size: int = Field(96, ge=1, description="Questions in the synthetic training split.")
    synthetic_eval_size: int = Field(24, ge=1, description="Questions in the synthetic held-out split.")
    max_audio_seconds: float = Field(
        30.0, gt=0, description="Clips are cut to this length (Whisper encoders see 30 s)."
    )


class PromptConfig(Section):
    mode: PromptMode = Field(
        "adaptive", description="adaptive: the model decides; think: forced reasoning; no_think: answer only."
    )
    template_file: str | None = Field(
        None, description="Text file with a custom instruction template (placeholders {question} and {choices})."
    )
    letter_choices: bool = Field(
        False, description="List choices as (A) ... (D) and accept a bare letter as the answer."
    )


class RolloutConfig(Section):
    engine: Literal["vllm", "transformers"] = Field("vllm", description="Generation engine of the rollout workers.")
    num_workers: int = Field(1, ge=1, description="Rollout-worker actors; questions of a step are spread over them.")
    num_cpus_per_worker: float = Field(
        0.5, gt=0, description="Ray CPUs per rollout worker (fractional on small boxes)."
    )
    num_gpus_per_worker: float = Field(0.0, ge=0, description="Ray GPUs per rollout worker.")
    tensor_parallel_size: int = Field(1, ge=1, description="vLLM tensor parallelism inside one worker.")
    samples_per_question: int = Field(8, ge=1, description="G: samples per question (the GRPO group size).")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature (must be > 0 for several samples).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling threshold.")
    max_new_tokens: int = Field(256, ge=1, description="Generation budget per sample.")
    gpu_memory_utilization: float = Field(0.5, gt=0, le=1, description="vLLM GPU memory share (GPU only).")
    max_model_len: int = Field(4096, ge=128, description="vLLM context length (prompt with audio tokens + completion).")
    startup_timeout_s: float = Field(
        600.0, gt=0, description="Deadline for the rollout workers to load their engines before the run fails."
    )
    call_timeout_s: float = Field(
        600.0, gt=0, description="Deadline of one rollout-worker call (generate or set_weights) before the step fails."
    )


class JudgeConfig(Section):
    url: str | None = Field(
        None,
        description="External judge base URL (http://host:port). None: the driver starts a judge actor in the cluster.",
    )
    api_key: str | None = Field(
        None, description="Bearer key for an external judge (else AUDIO_THINKER_JUDGE_API_KEY)."
    )
    backend: Literal["transformers", "vllm", "openai"] = Field(
        "transformers", description="Backend of an in-cluster judge."
    )
    max_batch_size: int = Field(32, ge=1, description="Micro-batch size of the in-cluster judge server.")
    max_wait_ms: float = Field(5.0, ge=0, description="How long the server waits to fill a micro-batch.")
    timeout_s: float = Field(120.0, gt=0, description="Client timeout of one judge request.")
    max_retries: int = Field(5, ge=0, description="Client retries on 429/5xx/connection errors before the step fails.")
    request_chunk: int = Field(32, ge=1, description="Items per judge request; requests of a step run concurrently.")
    num_cpus: float = Field(0.25, gt=0, description="Ray CPUs of the judge actor.")
    num_gpus: float = Field(0.0, ge=0, description="Ray GPUs of the judge actor.")


class RewardConfig(Section):
    variant: RewardVariant = Field(
        "atar_cr_tr", description="Reward preset, one per row of the paper's ablation table."
    )


class TrainerConfig(Section):
    num_ranks: int = Field(1, ge=1, description="Policy-trainer actors forming one torch.distributed group.")
    num_cpus_per_rank: float = Field(0.5, gt=0, description="Ray CPUs per trainer rank.")
    num_gpus_per_rank: float = Field(0.0, ge=0, description="Ray GPUs per trainer rank.")
    zero_stage: Literal[2, 3] = Field(2, description="DeepSpeed ZeRO stage.")
    lr: float = Field(1e-6, gt=0, description="AdamW learning rate (paper: 1e-6).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    warmup_steps: int = Field(0, ge=0, description="Linear learning-rate warm-up, in optimizer steps.")
    lr_schedule: Literal["constant", "cosine", "linear"] = Field("constant", description="Schedule after warm-up.")
    beta: float = Field(0.04, ge=0, description="KL coefficient against the reference model (paper: 0.04).")
    clip_eps: float = Field(0.2, gt=0, description="PPO ratio clipping epsilon.")
    grad_clip: float = Field(1.0, gt=0, description="Gradient-norm clipping.")
    micro_batch_size: int = Field(8, ge=1, description="Sequences per forward/backward; accumulation covers the step.")
    gradient_checkpointing: bool = Field(False, description="Recompute activations to save memory.")
    freeze_audio_encoder: bool = Field(False, description="Keep the audio encoder frozen during RL.")
    sync_backend: Literal["object_store", "broadcast"] = Field(
        "object_store", description="How new weights reach the rollout workers."
    )
    sync_bucket_mb: int = Field(256, ge=1, description="Bucket size of the weight broadcast.")
    reference_num_cpus: float = Field(
        0.25, gt=0, description="Ray CPUs of the reference-model actor (fractional: it may share a trainer's node)."
    )
    reference_num_gpus: float = Field(
        0.0, ge=0, description="Ray GPUs of the reference-model actor (fractional: it may share a trainer's GPU)."
    )
    timeout_s: float = Field(
        1800.0,
        gt=0,
        description="Deadline of one trainer call (step, log-probs, checkpoint, export, sync) before the run fails.",
    )


class RunConfig(Section):
    name: str = Field("tiny-cpu", description="Run name; the run directory is runs/<name>-<timestamp>/ by default.")
    output_dir: str | None = Field(None, description="Run directory (default runs/<name>-<timestamp>/).")
    seed: int = Field(0, description="Seed of data order, sampling and initialisation.")
    total_steps: int = Field(3, ge=1, description="T: optimizer steps of the run (also the ATAR annealing horizon).")
    questions_per_step: int = Field(16, ge=1, description="Questions per optimizer step (paper: 16).")
    eval_every: int = Field(0, ge=0, description="Evaluate on the held-out split every N steps (0: only at the end).")
    eval_limit: int | None = Field(None, ge=1, description="Cap on held-out questions per evaluation.")
    checkpoint_every: int = Field(1, ge=1, description="Save a checkpoint every N steps.")
    keep_checkpoints: int = Field(2, ge=1, description="Checkpoints kept (the oldest are removed).")
    resume: bool = Field(False, description="Continue the run in output_dir from its last checkpoint.")
    num_gpus: int = Field(
        0, ge=0, description="GPUs the run expects on the cluster (documentation and placement checks)."
    )


class Config(Section):
    run: RunConfig = Field(default_factory=RunConfig, description="The run: steps, seed, output, checkpoints.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="Policy and judge checkpoints.")
    data: DataConfig = Field(default_factory=DataConfig, description="Training and evaluation data.")
    prompt: PromptConfig = Field(default_factory=PromptConfig, description="Prompt mode and template.")
    rollout: RolloutConfig = Field(default_factory=RolloutConfig, description="Rollout workers and sampling.")
    judge: JudgeConfig = Field(default_factory=JudgeConfig, description="The reward judge service.")
    reward: RewardConfig = Field(default_factory=RewardConfig, description="Reward variant.")
    trainer: TrainerConfig = Field(default_factory=TrainerConfig, description="GRPO and DeepSpeed.")

    @model_validator(mode="after")
    def _check_consistency(self) -> Config:
        if self.reward.variant == "grpo" and self.prompt.mode != "no_think":
            raise ValueError("reward.variant=grpo needs prompt.mode=no_think (answer-only baseline)")
        if self.reward.variant == "grpo_cot" and self.prompt.mode != "think":
            raise ValueError("reward.variant=grpo_cot needs prompt.mode=think (forced-think baseline)")
        if self.rollout.samples_per_question > 1 and self.rollout.temperature <= 0:
            raise ValueError("rollout.temperature must be > 0 when rollout.samples_per_question > 1")
        return self


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b=value` -> (["a", "b"], value); the value is read as YAML (numbers, booleans, null, lists)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value (e.g. run.total_steps=10)")
    key, _, raw = text.partition("=")
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {key}: value {raw!r} is not valid YAML ({exc})") from None
    return key.split("."), value


def _apply_override(data: dict, path: list[str], value: Any) -> None:
    node = data
    for i, part in enumerate(path[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {'.'.join(path)}: {'.'.join(path[: i + 1])} is not a section")
        node = child
    node[path[-1]] = value


def _format_validation_error(exc: ValidationError, source: str) -> str:
    lines = [f"invalid config ({source}):"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "<root>"
        if err["type"] == "extra_forbidden":
            lines.append(f"  {loc}: unknown key")
        else:
            shown = "" if err["type"] == "missing" else f" (got {err.get('input')!r})"
            lines.append(f"  {loc}: {err['msg']}{shown}")
    return "\n".join(lines)


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML preset (default `configs/tiny-cpu.yaml`), apply `key=value` overrides, validate."""
    path = Path(path) if path else DEFAULT_CONFIG
    data = read_yaml(path)
    for text in overrides:
        keys, value = parse_override(text)
        _apply_override(data, keys, value)
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        source = str(path) + (f" with overrides {list(overrides)}" if overrides else "")
        raise ConfigError(_format_validation_error(exc, source)) from None


def dump_config(config: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
