"""The typed run configuration: one pydantic section per part of the system.

The field defaults ARE the embedded default run (tiny models, synthetic audio, 2 CPU cores); presets in
`audio_thinker/configs/` name only what differs (see `audio_thinker.core.presets`). Every section forbids
unknown keys, and `Config` rejects combinations the code cannot run, naming the keys, before anything starts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationInfo, field_validator, model_validator

from audio_thinker.core.vocab import (
    DataFormat,
    Dtype,
    EngineName,
    InvalidAccuracy,
    IsCorrection,
    JudgeBackendName,
    LoggerName,
    LossType,
    ModelFamily,
    PromptMode,
    RatioLevel,
    ReferencePlacement,
    RewardVariant,
    ScoreMode,
    SftTarget,
)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(Section):
    family: ModelFamily = Field(
        "qwen2_audio",
        description="Policy architecture: Qwen2-Audio, the Qwen2.5-Omni thinker or the Qwen3-Omni (mixture-of-experts) "
        "thinker.",
    )
    policy_path: str = Field(
        "artifacts/tiny/qwen2_audio",
        description="Hugging Face folder of the policy (a hub checkpoint on a cluster, the tiny model here).",
    )
    judge_path: str = Field("artifacts/tiny/qwen3_judge", description="Hugging Face folder of the judge causal LM.")
    dtype: Dtype = Field(
        "float32",
        description="Weights dtype for rollout and training (bfloat16 on GPU, float32 on CPU; the DeepSpeed "
        "trainer takes no float16).",
    )
    make_tiny_if_missing: bool = Field(
        True, description="Build the tiny random-init models when the paths are missing (CPU demo only)."
    )
    tiny_warmup_steps: int = Field(
        150,
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
    eval_format: DataFormat = Field(
        "avqa", description="Layout of the held-out manifest (the benchmarks' official layouts)."
    )
    audio_root: str = Field(
        "artifacts/synthetic", description="Folder that the training set's relative audio paths are resolved against."
    )
    eval_audio_root: str | None = Field(
        None,
        description="Folder that the held-out split's relative audio paths are resolved against (None: "
        "data.audio_root); a benchmark kept apart from the training data (the 7B presets: /data/mmau).",
    )
    skip_bad_rows: bool = Field(
        False, description="Skip (and count) rows whose audio is missing or corrupt instead of failing."
    )
    make_synthetic_if_missing: bool = Field(True, description="Write the synthetic set when the manifest is missing.")
    synthetic_train_size: int = Field(96, ge=1, description="Questions in the synthetic training split.")
    synthetic_eval_size: int = Field(24, ge=1, description="Questions in the synthetic held-out split.")
    max_audio_seconds: float = Field(
        30.0, gt=0, description="Clips are cut to this length (Whisper encoders see 30 s)."
    )

    @property
    def held_out_audio_root(self) -> str:
        """Where the held-out split's relative audio paths start: data.eval_audio_root, else data.audio_root."""
        return self.eval_audio_root or self.audio_root


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
    engine: EngineName = Field("vllm", description="Generation engine of the rollout workers.")
    num_workers: int = Field(1, ge=1, description="Rollout-worker actors; questions of a step are spread over them.")
    num_cpus_per_worker: float = Field(
        0.5, gt=0, description="Ray CPUs per rollout worker (fractional on small boxes)."
    )
    num_gpus_per_worker: float = Field(0.0, ge=0, description="Ray GPUs per rollout worker.")
    tensor_parallel_size: int = Field(1, ge=1, description="vLLM tensor parallelism inside one worker.")
    samples_per_question: int = Field(8, ge=1, description="G: samples per question (the GRPO group size).")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature (must be > 0 for several samples).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling threshold.")
    max_new_tokens: int = Field(48, ge=1, description="Generation budget per sample (the 7B presets: 1024).")
    gpu_memory_utilization: float = Field(0.5, gt=0, le=1, description="vLLM GPU memory share (GPU only).")
    max_model_len: int = Field(
        1024, ge=128, description="vLLM context length (prompt with audio tokens + completion; 7B presets: 4096)."
    )
    startup_timeout_s: float = Field(
        600.0, gt=0, description="Deadline for the rollout workers to load their engines before the run fails."
    )
    call_timeout_s: float = Field(
        600.0, gt=0, description="Deadline of one rollout-worker call (generate or set_weights) before the step fails."
    )
    max_restarts: int = Field(
        3,
        ge=0,
        description="Restarts of dead rollout workers within a run, all workers together: Ray restarts a dead "
        "worker (within rollout.startup_timeout_s), it gets the weights version the others hold (checksum "
        "checked) and the requests it lost are generated again with the same seeds, so the step goes on with the "
        "same samples; past this count the run stops naming the worker. 0: the first death stops the run. "
        "docs/fault-tolerance.md.",
    )

    @model_validator(mode="after")
    def _gpus_for_tensor_parallelism(self) -> RolloutConfig:
        if self.engine == "vllm" and 0 < self.num_gpus_per_worker < self.tensor_parallel_size:
            raise ValueError(
                f"rollout.tensor_parallel_size={self.tensor_parallel_size} needs that many GPUs per worker, "
                f"but rollout.num_gpus_per_worker={self.num_gpus_per_worker}"
            )
        return self


class JudgeLimits(Section):
    """Limits of one judge server: the same defaults for `serve-judge`, the service and a training run's judge."""

    max_batch_size: int = Field(32, ge=1, description="Items per model call (micro-batch size).")
    max_wait_ms: float = Field(5.0, ge=0, description="How long a micro-batch waits to fill up.")
    max_queue: int = Field(1024, ge=1, description="Queued items before the server answers 429.")
    max_items: int = Field(256, ge=1, description="Items per request before the server answers 413.")
    max_text_chars: int = Field(16000, ge=1, description="Characters per text field before 413.")
    max_choices: int = Field(64, ge=1, description="Choices per item before 413 (checked before any tokenizing).")
    max_item_chars: int = Field(
        32000, ge=1, description="Characters of one item, all its texts together, before 413 (checked before any "
        "tokenizing)."
    )
    max_body_bytes: int = Field(16 * 2**20, ge=1024, description="Request body size in bytes before 413.")
    request_timeout_s: float = Field(60.0, gt=0, description="Deadline of one request inside the server before 504.")
    retry_after_s: int = Field(1, ge=0, description="Retry-After seconds of 429 and 503 answers.")

    @field_validator("max_items")
    @classmethod
    def _fits(cls, max_items: int, info: ValidationInfo) -> int:
        """A field check (max_queue is validated first), so that the error names max_items."""
        max_queue = info.data.get("max_queue")
        if max_queue is not None and max_items > max_queue:
            raise ValueError(f"max_items ({max_items}) > max_queue ({max_queue}): a full request could never be queued")
        return max_items

    def limits(self) -> JudgeLimits:
        """Only the limits (a subclass's other fields dropped)."""
        return JudgeLimits(**{k: getattr(self, k) for k in JudgeLimits.model_fields})


class JudgeScoring(Section):
    """How a judge turns label distributions into scores: the same default for a run's judge and `serve-judge`."""

    score_mode: ScoreMode = Field(
        "expected",
        description="How the judge turns its label distribution into a think-quality score: expected = the "
        "expected digit / 9 (smooth); argmax = the most likely digit / 9, the paper's discrete score (the 7B "
        "presets). A run's judge client sends it with every request. Consistency is the same in both "
        "(1 when P(yes) >= P(no)).",
    )


class JudgeConfig(JudgeLimits, JudgeScoring):
    url: str | None = Field(
        None,
        description="External judge base URL (http://host:port). None: the driver starts a judge actor in the cluster.",
    )
    api_key: SecretStr | None = Field(
        None,
        exclude=True,
        description="Bearer key for an external judge (else AUDIO_THINKER_JUDGE_API_KEY). A secret: shown as "
        "'**********', never written to the run's config.yaml nor sent to loggers (give it again on resume).",
    )
    backend: JudgeBackendName = Field("transformers", description="Backend of an in-cluster judge.")
    call_timeout_s: float = Field(120.0, gt=0, description="Deadline of one judge request (the client's timeout).")
    max_retries: int = Field(5, ge=0, description="Client retries on 429/5xx/connection errors before the step fails.")
    request_chunk: int = Field(32, ge=1, description="Items per judge request; requests of a step run concurrently.")
    num_cpus: float = Field(0.25, gt=0, description="Ray CPUs of the judge actor (of each replica on Ray Serve).")
    num_gpus: float = Field(0.0, ge=0, description="Ray GPUs of the judge actor (of each replica on Ray Serve).")
    replicas: int | None = Field(
        None, ge=1, description="In-cluster judge on Ray Serve with this many replicas (none: one judge actor)."
    )
    max_restarts: int = Field(
        2, ge=0, description="Restarts of a dead or unresponsive in-cluster judge actor before the run fails."
    )
    startup_timeout_s: float = Field(
        300.0, gt=0, description="Deadline for the in-cluster judge to start (or restart) and answer /ready."
    )

    def api_key_value(self) -> str | None:
        """The key itself, for the one place that sends it (the judge client's Authorization header)."""
        return self.api_key.get_secret_value() if self.api_key is not None else None


class RewardConfig(Section):
    variant: RewardVariant = Field(
        "atar_cr_tr", description="Reward preset, one per row of the paper's ablation table."
    )
    invalid_accuracy: InvalidAccuracy = Field(
        "worst",
        description="Accuracy reward of an invalid (malformed) response: worst = the step's worst valid value "
        "(case 4, -g_n - 2(1 - g_n)), so malformed output never pays more than any valid answer; zero = 0 (it "
        "then beats a wrong direct answer). Format, consistency and think rewards of invalid samples are 0 either way.",
    )
    min_group_std: float = Field(
        0.0,
        ge=0,
        description="Groups whose reward std (ddof=1) is below this get advantage 0 instead of (R - mean) / std, "
        "which would amplify judge noise to full size. 0 = off (the paper's eq. 8); see docs/rewards.md.",
    )
    scale_advantages: bool = Field(
        True,
        description="Divide by the group std (eq. 8). False: A = R - mean(R), Dr. GRPO's unbiased advantage "
        "(use it with trainer.loss_type=dr_grpo; see docs/trainer.md).",
    )


# The language model's linear layers in both families (attention and MLP of every decoder layer).
LM_LINEAR_LAYERS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class LoraConfig(Section):
    rank: int = Field(8, ge=1, le=1024, description="r: the rank of each adapter (B is out x r, A is r x in).")
    alpha: float = Field(16.0, gt=0, description="lora_alpha: the adapter's update is scaled by alpha / rank.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the adapter's input during training.")
    target_modules: list[str] = Field(
        default_factory=lambda: list(LM_LINEAR_LAYERS),
        min_length=1,
        description="Names of the language model's linear layers that get adapters (the last part of a module "
        "name, e.g. q_proj); only the language model's decoder layers are searched, never the audio encoder. "
        "Default: every attention and MLP projection.",
    )

    init_seed: int = Field(
        0,
        description="Seed of the adapters' initialisation (A random, B zero), the same on every trainer rank and "
        "on a resume; the global RNG is left as it was.",
    )

    @field_validator("target_modules")
    @classmethod
    def _module_names(cls, names: list[str]) -> list[str]:
        bad = [n for n in names if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", n)]
        if bad:
            raise ValueError(f"{bad}: a target module is a layer's own name (e.g. q_proj), without dots")
        if len(set(names)) != len(names):
            raise ValueError(f"{names} names a module twice")
        return names


class TrainerConfig(Section):
    num_ranks: int = Field(1, ge=1, description="Policy-trainer actors forming one torch.distributed group.")
    num_cpus_per_rank: float = Field(0.5, gt=0, description="Ray CPUs per trainer rank.")
    num_gpus_per_rank: float = Field(0.0, ge=0, description="Ray GPUs per trainer rank.")
    zero_stage: Literal[2, 3] = Field(2, description="DeepSpeed ZeRO stage.")
    lr: float = Field(1e-4, gt=0, description="AdamW learning rate (paper and 7B presets: 1e-6; tiny: 1e-4).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    warmup_steps: int = Field(0, ge=0, description="Linear learning-rate warm-up, in optimizer steps.")
    lr_schedule: Literal["constant", "cosine", "linear"] = Field("constant", description="Schedule after warm-up.")
    beta: float = Field(0.04, ge=0, description="KL coefficient against the reference model (paper: 0.04).")
    clip_eps_low: float = Field(
        0.2, gt=0, lt=1,
        description="Lower clip: the ratio is clipped at 1 - clip_eps_low (the paper gives no value; 0.2 is PPO's).",
    )
    clip_eps_high: float = Field(
        0.2,
        gt=0,
        description="Upper clip: the ratio is clipped at 1 + clip_eps_high (the paper gives no value; PPO's 0.2; "
        "DAPO's clip-higher: 0.28; "
        "GSPO with ratio_level=sequence: 3e-4 / 4e-4 for low / high).",
    )
    loss_type: LossType = Field(
        "grpo",
        description="How per-token terms become the step's loss: grpo = per-sequence mean, then mean over "
        "sequences (the paper); bnpo = token mean per micro-batch; dr_grpo = token sum / (sequences x "
        "max_completion_length); dapo = token sum / tokens of the whole step (TRL's definitions).",
    )
    ratio_level: RatioLevel = Field(
        "token",
        description="Importance ratio per token (GRPO) or per sequence, exp(mean log-ratio) (GSPO).",
    )
    max_completion_length: int | None = Field(
        None,
        ge=1,
        description="Dr. GRPO's constant token normaliser (loss_type=dr_grpo only; at least rollout.max_new_tokens).",
    )
    grad_clip: float = Field(1.0, gt=0, description="Gradient-norm clipping.")
    micro_batch_size: int = Field(8, ge=1, description="Sequences per forward/backward; accumulation covers the step.")
    ppo_epochs: int = Field(
        1,
        ge=1,
        description="Passes over each rollout batch (verl's ppo_epochs, TRL's num_iterations); the paper: 1. "
        "Above 1, the old log-probs come from a separate forward before the first update.",
    )
    mini_batches_per_step: int = Field(
        1,
        ge=1,
        description="Optimizer updates per pass over a rollout batch, each on an equal share of its sequences "
        "(verl's ppo_mini_batch_size as a count); the paper: 1. Above 1, the old log-probs come from a separate "
        "forward before the first update.",
    )
    is_correction: IsCorrection = Field(
        "none",
        description="Off-policy correction between the rollout engine's policy (behaviour: the log-probs it reports) "
        "and the trainer's before the update (proximal: the old log-probs): none; token_tis = each token's policy "
        "gradient times min(pi_prox / pi_behav, is_cap) (verl's TIS); seq_tis = every token of a sequence times "
        "min(prod_t pi_prox / pi_behav, is_cap); decoupled = AReaL's decoupled PPO, the ratio clipped against the "
        "proximal policy and weighted by pi_prox / pi_behav, tokens above is_cap left out (docs/trainer.md).",
    )
    is_cap: float = Field(
        2.0,
        gt=1,
        allow_inf_nan=False,
        description="Cap C of the importance weights: where token_tis / seq_tis truncate, above which decoupled "
        "drops a token, and what mismatch/is_clip_frac counts. Above 1 (as AReaL requires): on-policy weights are 1 "
        "plus numerical noise, and a cap of 1 would truncate (decoupled: drop) about half of those tokens; finite, "
        "as untruncated weights have unbounded variance.",
    )
    router_aux_loss_coef: float = Field(
        0.0,
        ge=0,
        allow_inf_nan=False,
        description="Weight of the router's load-balancing loss (transformers' Switch-Transformer loss over the "
        "step's real tokens) added to the GRPO loss; mixture-of-experts policies only (model.family=qwen3_omni). "
        "0 (off): the released router is balanced and a few hundred RL updates at lr 1e-6 barely move it, while "
        "the loss pulls the policy off the RL objective and changes routing between syncs (docs/trainer.md).",
    )
    gradient_checkpointing: bool = Field(False, description="Recompute activations to save memory.")
    freeze_audio_encoder: bool = Field(False, description="Keep the audio encoder frozen during RL.")
    lora: LoraConfig | None = Field(
        None,
        description="Train LoRA adapters on the language model instead of all its weights (peft; e.g. "
        "trainer.lora={rank: 8}); the audio encoder trains too unless trainer.freeze_audio_encoder. None: full "
        "fine-tuning.",
    )
    sync_backend: Literal["object_store", "broadcast"] = Field(
        "object_store", description="How new weights reach the rollout workers."
    )
    sync_bucket_mb: int = Field(256, ge=1, description="Bucket size of the weight broadcast.")
    max_restarts: int = Field(
        2,
        ge=0,
        description="Trainer-group restarts within a run: a dead trainer rank makes the driver start the group "
        "anew, load the last checkpoint and redo the steps since (same data order); past this count the run "
        "stops. 0: the first death stops the run. docs/fault-tolerance.md.",
    )
    startup_timeout_s: float = Field(
        1800.0,
        gt=0,
        description="Deadline for the trainer ranks to start: rendezvous, DeepSpeed set-up and the policy loaded.",
    )
    call_timeout_s: float = Field(
        1800.0,
        gt=0,
        description="Deadline of one trainer call (step, log-probs, checkpoint, export, sync) before the run fails.",
    )

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: object) -> object:
        if isinstance(data, dict) and "clip_eps" in data:
            raise ValueError(
                "trainer.clip_eps was replaced by trainer.clip_eps_low and trainer.clip_eps_high (DAPO's "
                f"clip-higher): set both to {data['clip_eps']} for the same symmetric range"
            )
        return data

    @model_validator(mode="after")
    def _dr_grpo_length(self) -> TrainerConfig:
        if self.loss_type == "dr_grpo" and self.max_completion_length is None:
            raise ValueError(
                "trainer.loss_type=dr_grpo needs trainer.max_completion_length (its constant normaliser), "
                "e.g. rollout.max_new_tokens"
            )
        return self

    @property
    def updates_per_batch(self) -> int:
        """Optimizer updates on each rollout batch; above 1 the old policy differs from the current one."""
        return self.ppo_epochs * self.mini_batches_per_step



class ReferenceConfig(Section):
    """The reference model (the KL anchor): a frozen copy of the initial policy in its own actor."""

    placement: ReferencePlacement = Field(
        "separate",
        description="Where the reference model runs: separate = its own placement bundle (on a GPU run, its own "
        "GPU: reference.num_gpus >= 1); colocate = in trainer rank 0's bundle, sharing its GPU (rank 0 then asks "
        "Ray for trainer.num_gpus_per_rank - reference.num_gpus). See docs/placement.md.",
    )
    num_cpus: float = Field(
        0.25, gt=0, description="Ray CPUs of the reference-model actor (fractional: it may share a trainer's node)."
    )
    num_gpus: float = Field(
        0.0, ge=0, description="Ray GPUs of the reference-model actor (fractional: it may share a trainer's GPU)."
    )
    max_restarts: int = Field(
        2,
        ge=0,
        description="Restarts of a dead reference-model actor within a run: Ray restarts it (within "
        "reference.startup_timeout_s) from the model folder, its weights checksum must equal the one it had "
        "before, and the lost log-prob call is made again; past this count the run stops naming it. 0: the first "
        "death stops the run. docs/fault-tolerance.md.",
    )
    startup_timeout_s: float = Field(
        1800.0, gt=0, description="Deadline for the reference actor to start (or restart) and load the policy."
    )
    call_timeout_s: float = Field(1800.0, gt=0, description="Deadline of one reference log-prob call.")


class RunConfig(Section):
    name: str = Field("tiny-cpu", description="Run name; the run directory is runs/<name>-<timestamp>/ by default.")
    output_dir: str | None = Field(None, description="Run directory (default runs/<name>-<timestamp>/).")
    seed: int = Field(0, description="Seed of data order, sampling and initialisation.")
    total_steps: int = Field(3, ge=1, description="T: optimizer steps of the run (also the ATAR annealing horizon).")
    questions_per_step: int = Field(
        4,
        ge=1,
        description="Questions per optimizer step; each brings rollout.samples_per_question completions (7B presets: "
        "2, i.e. the paper's 16 completions per step; see docs/paper-settings.md).",
    )
    eval_every: int = Field(0, ge=0, description="Evaluate on the held-out split every N steps (0: only at the end).")
    eval_limit: int | None = Field(8, ge=1, description="Cap on held-out questions per evaluation (None: all).")
    checkpoint_every: int = Field(1, ge=1, description="Save a checkpoint every N steps.")
    keep_checkpoints: int = Field(2, ge=1, description="Checkpoints kept (the oldest are removed).")
    resume: bool = Field(False, description="Continue the run in output_dir from its last checkpoint.")
    rehearse: bool = Field(
        False,
        description="A rehearsal of a GPU preset on this machine (set by `--rehearse`, which also swaps the models, "
        "dtype, data and token budgets and records the swaps in rehearsal.json): the preset's placement on a local "
        "Ray cluster that declares its GPUs, every actor computing on the CPU, and each step checked (weights on "
        "every worker, placement, the ranks' update against one rank's, the judge's backends). docs/placement.md.",
    )
    loggers: list[LoggerName] = Field(
        ["tensorboard"], description="Where metrics go besides metrics.jsonl: tensorboard, wandb (the wandb extra)."
    )
    wandb_project: str = Field("audio-thinker", description="W&B project of the run (with wandb in run.loggers).")
    log_completions_every: int = Field(
        0,
        ge=0,
        description="Log a table of the step's completions (question, audio, every reward term, advantage) "
        "to the loggers every N steps (0: never).",
    )
    num_gpus: int = Field(
        0,
        ge=0,
        description="GPUs the run's placement may use: `audio-thinker plan` and `train` refuse a config whose "
        "actors ask for more (0: a CPU run).",
    )
    gpus_per_node: int = Field(8, ge=1, description="GPUs per node of the cluster the planner lays the run out on.")
    gpu_memory_gb: float | None = Field(
        None,
        gt=0,
        description="Memory of one GPU in GB (1e9 bytes) that the planner checks every GPU's estimate against "
        "(None: read from nvidia-smi; the 7B presets: 96, the paper's H20).",
    )
    placement_timeout_s: float = Field(
        120.0,
        gt=0,
        description="Deadline for Ray to reserve the run's placement groups before the run fails, naming them.",
    )
    max_staleness: int = Field(
        0,
        ge=0,
        description="Asynchronous steps: generate (and judge) steps s+1..s+k on the weights of step s-1 while the "
        "trainer trains step s; a group sampled more than k weight versions before the trainer's is left out and "
        "counted. 0: synchronous, every step sampled from the latest weights (the paper). docs/pipeline.md.",
    )
    stream_groups: bool = Field(
        False,
        description="Stream each step: one generation call per question, and the judge and the reference start on "
        "each question's group as soon as it returns (false: the whole step is generated first, one engine batch "
        "per worker). docs/pipeline.md.",
    )
    drop_zero_std_groups: bool = Field(
        False,
        description="DAPO's dynamic-sampling filter: leave out of the update the groups whose rewards are all "
        "equal (they carry no gradient); the step then trains on fewer sequences. The paper keeps them.",
    )


class SftConfig(Section):
    """`audio-thinker sft`: supervised fine-tuning on the trainer engine (the paper's sft-a..sft-d baselines)."""

    target: SftTarget = Field(
        "answer",
        description="answer: <answer>X</answer> (sft-a / sft-c); cot: <think>rationale</think><answer>X</answer> "
        "(sft-b / sft-d), the rationale read from each row's sft.rationale_field (make-cot's output).",
    )
    batch_size: int = Field(
        4, ge=1, description="Sequences per optimizer step, over all ranks (7B presets: 16, the paper's batch)."
    )
    rationale_field: str = Field("rationale", description="Row field holding the rationale of a cot target.")


class Config(Section):
    run: RunConfig = Field(default_factory=RunConfig, description="The run: steps, seed, output, checkpoints.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="Policy and judge checkpoints.")
    data: DataConfig = Field(default_factory=DataConfig, description="Training and evaluation data.")
    prompt: PromptConfig = Field(default_factory=PromptConfig, description="Prompt mode and template.")
    rollout: RolloutConfig = Field(default_factory=RolloutConfig, description="Rollout workers and sampling.")
    judge: JudgeConfig = Field(default_factory=JudgeConfig, description="The reward judge service.")
    reward: RewardConfig = Field(default_factory=RewardConfig, description="Reward variant.")
    trainer: TrainerConfig = Field(default_factory=TrainerConfig, description="GRPO and DeepSpeed.")
    reference: ReferenceConfig = Field(default_factory=ReferenceConfig, description="The reference model (KL).")
    sft: SftConfig = Field(default_factory=SftConfig, description="Supervised fine-tuning (audio-thinker sft).")

    @model_validator(mode="after")
    def _check_consistency(self) -> Config:
        if self.reward.variant == "grpo" and self.prompt.mode != "no_think":
            raise ValueError("reward.variant=grpo needs prompt.mode=no_think (answer-only baseline)")
        if self.reward.variant == "grpo_cot" and self.prompt.mode != "think":
            raise ValueError("reward.variant=grpo_cot needs prompt.mode=think (forced-think baseline)")
        if self.model.dtype == "float16":
            raise ValueError("model.dtype=float16: the DeepSpeed trainer runs float32 (CPU) or bfloat16 (GPU)")
        if self.judge.backend == "openai" and self.judge.url is None:
            raise ValueError(
                "judge.backend=openai with judge.url unset: an in-cluster judge runs transformers or vllm; "
                "point judge.url at a `serve-judge --backend openai` server instead"
            )
        r = self.rollout
        t = self.trainer
        if t.router_aux_loss_coef > 0 and self.model.family != "qwen3_omni":
            raise ValueError(
                f"trainer.router_aux_loss_coef={t.router_aux_loss_coef}: model.family={self.model.family} has no "
                "experts to balance (only qwen3_omni has)"
            )
        if t.max_completion_length is not None and t.max_completion_length < r.max_new_tokens:
            raise ValueError(
                f"trainer.max_completion_length={t.max_completion_length} < rollout.max_new_tokens="
                f"{r.max_new_tokens}: Dr. GRPO's normaliser must cover the longest completion"
            )
        if t.is_correction != "none" and r.temperature != 1:
            raise ValueError(
                f"trainer.is_correction={t.is_correction} needs the behaviour policy's log-probs, but the rollout "
                "engines report those of the untempered logits (vLLM's raw_logprobs), the sampling distribution only "
                f"at rollout.temperature=1 (got {r.temperature}), while the trainer's are tempered"
            )
        sequences = self.run.questions_per_step * r.samples_per_question
        if self.trainer.num_ranks > sequences:
            raise ValueError(
                f"trainer.num_ranks={self.trainer.num_ranks} > the {sequences} sequences of a step "
                "(run.questions_per_step x rollout.samples_per_question): every rank needs at least one"
            )
        if t.mini_batches_per_step * t.num_ranks > sequences:
            raise ValueError(
                f"trainer.mini_batches_per_step={t.mini_batches_per_step} x trainer.num_ranks={t.num_ranks} > the "
                f"{sequences} sequences of a step (run.questions_per_step x rollout.samples_per_question): every "
                "rank needs at least one sequence of every mini-batch"
            )
        return self

    @model_validator(mode="after")
    def _reference_fits(self) -> Config:
        ref, rank, placement = self.reference.num_gpus, self.trainer.num_gpus_per_rank, self.reference.placement
        if placement == "colocate" and ref > 0 and not ref < rank:
            raise ValueError(
                f"reference.placement=colocate: reference.num_gpus={ref} must be a share of trainer "
                f"rank 0's GPU, i.e. less than trainer.num_gpus_per_rank={rank}"
            )
        if placement == "colocate" and rank > 0 and ref == 0:
            raise ValueError(
                "reference.placement=colocate on GPU ranks needs reference.num_gpus > 0 (its share "
                "of rank 0's GPU, e.g. 0.25); with 0 Ray would hide the GPU from the reference"
            )
        return self


@dataclass(frozen=True)
class BenchToggles:
    """The step's earlier, slower ways, kept for benchmarks (bench/pipeline.py) and equivalence tests; not user
    config: the default is always the faster way, and each toggle changes cost, never the numbers."""

    encode_audio_once: bool = True  # False: the audio encoder runs once per sample, not once per clip
    recompute_old_logprobs: bool = False  # True: a separate old-log-prob forward even with one update per batch
