"""The typed run configuration: one pydantic section per part of the system (the judge's in `core/judge_config.py`,
the trainer's and the reference's in `core/trainer_config.py`).

The field defaults ARE the embedded default run (tiny models, synthetic audio, 2 CPU cores); presets in
`audio_thinker/configs/` name only what differs (see `audio_thinker.core.presets`). Every section forbids
unknown keys, and `Config` rejects combinations the code cannot run, naming the keys, before anything starts.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import Field, model_validator

from audio_thinker.core.judge_config import JudgeConfig
from audio_thinker.core.section import Section
from audio_thinker.core.trainer_config import ReferenceConfig, TrainerConfig
from audio_thinker.core.vocab import (
    DataFormat,
    Dtype,
    EngineName,
    InvalidAccuracy,
    LoggerName,
    ModelFamily,
    PromptMode,
    RewardVariant,
    SftTarget,
)



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
