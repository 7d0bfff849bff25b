"""`audio-thinker plan`: where every actor of a run goes and what each GPU will hold, before anything starts.

The placement is the run's own (`core/placement.run_groups`, the groups `actors/placement.py` reserves), laid out
on `run.num_gpus` GPUs in nodes of `run.gpus_per_node` the way Ray's packing fills them. Each GPU's memory is the
sum of its actors' terms: ZeRO model states (DeepSpeed's estimator, trainer/memory.py), training activations (our
formula), the reference's weights and forward, vLLM's reservation (gpu_memory_utilization x the GPU) with the KV
cache left after weights and profiling, and the judge. Formulas and the presets' numbers: docs/placement.md.
`audio-thinker train` and `sft` run `check_plan` first. An SFT run (`job="sft"`) is its trainer ranks alone.
Light to import (no torch, no DeepSpeed): `plan` answers at once. One module of ~360 lines: the layout and each
GPU's terms are one computation, read top to bottom.
"""

from __future__ import annotations

import math
import shutil
import subprocess
from dataclasses import dataclass, field

from audio_thinker.app.errors import TrainingError
from audio_thinker.core.config import Config
from audio_thinker.core.chat import AUDIO_CLIPS, audio_token_count, check_tensor_parallel
from audio_thinker.core.model_shapes import FAMILY_SHAPES, JUDGE_SHAPE, ModelShape, resolve_shape
from audio_thinker.core.placement import GroupSpec, run_groups, sft_groups
from trainer.memory import (
    BF16,
    LOGIT_BYTES,
    layer_activation_bytes,
    lora_parameters,
    model_states,
    training_activations,
)

GB = 1e9
MEL_FRAMES_PER_SECOND = 100  # the feature extractor's 10 ms hop
PROMPT_TEXT_TOKENS = 256  # chat template, system prompt, instruction, question and choices (an allowance)
PROCESS_OVERHEAD = 2 * GB  # per process on a GPU: CUDA context, NCCL / allocator reserve (an allowance)
# vLLM's defaults for the offline LLM class on a GPU of 70 GiB or more: the profiling batch and the sequences
# whose float32 logits the sampler holds at once.
VLLM_PROFILE_TOKENS = 16384
VLLM_MAX_NUM_SEQS = 1024
JUDGE_VLLM_UTILIZATION = 0.5  # reward_server.backends.load_backend's default for an in-cluster judge
JUDGE_PROMPT_TOKENS = 512  # judge template + question + answer, on top of the reasoning it reads


@dataclass
class Term:
    label: str
    bytes: float
    note: str = ""


@dataclass
class Gpu:
    node: int
    index: int
    free: float = 1.0
    actors: list[str] = field(default_factory=list)
    terms: list[Term] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"node {self.node} GPU {self.index}"

    @property
    def total(self) -> float:
        return sum(t.bytes for t in self.terms)


@dataclass
class Plan:
    gpus: list[Gpu]
    cpu_actors: list[str]
    lines: list[str]
    problems: list[str]
    capacity: float | None


def gpu_memory_from_nvidia_smi() -> float | None:
    """Bytes of the first GPU as nvidia-smi reports it, or None without one."""
    if shutil.which("nvidia-smi") is None:
        return None
    out = subprocess.run(
        ["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if out.returncode != 0 or not out.stdout.strip():
        return None
    return float(out.stdout.split()[0]) * 2**20


def layout(config: Config, groups: list[GroupSpec]) -> tuple[list[Gpu], dict[str, list[Gpu]], list[str]]:
    """Lay the groups' bundles on the configured GPUs, in order, first fit (STRICT_PACK: one node for the
    whole group). Returns the GPUs, each actor's GPUs, and the groups that found no room."""
    n = config.run.num_gpus
    per = config.run.gpus_per_node
    gpus = [Gpu(i // per, i % per) for i in range(n)]
    nodes = sorted({g.node for g in gpus})
    where: dict[str, list[Gpu]] = {}
    unplaced = []

    def take(amount: float, node: int, dry: bool) -> list[Gpu] | None:
        mine = [g for g in gpus if g.node == node]
        if amount >= 1:
            whole = [g for g in mine if g.free >= 1 - 1e-9][: math.ceil(amount)]
            if len(whole) < math.ceil(amount):
                return None
            if not dry:
                for g in whole:
                    g.free = 0.0
            return whole
        for g in mine:
            if g.free >= amount - 1e-9:
                if not dry:
                    g.free -= amount
                return [g]
        return None

    for group in groups:
        needs = [b.get("GPU", 0.0) for b in group.bundles]
        if not any(needs):
            continue
        placed: list[list[Gpu] | None] = []
        if group.strategy == "STRICT_PACK":
            for node in nodes:
                snapshot = [g.free for g in gpus]
                placed = [take(a, node, dry=False) if a else [] for a in needs]
                if all(p is not None for p in placed):
                    break
                for g, f in zip(gpus, snapshot):
                    g.free = f
                placed = [None]
        else:
            for a in needs:
                got = None
                for node in nodes:
                    got = take(a, node, dry=False) if a else []
                    if got is not None:
                        break
                placed.append(got)
        if not placed or any(p is None for p in placed):
            unplaced.append(group.name)
            continue
        for slot in group.slots:
            where[slot.actor] = placed[slot.bundle] if slot.num_gpus > 0 else []
    return gpus, where, unplaced


def sequence_lengths(config: Config) -> tuple[int, int, int]:
    """(prompt + completion tokens the trainer sees, completion tokens, audio-encoder positions) of the longest
    sequence: a clip of data.max_audio_seconds, the prompt allowance, rollout.max_new_tokens (capped by the
    context rollout.max_model_len). Audio tokens follow the family's rule: Whisper's 25 per second (its encoder
    runs on 50 positions per second), Qwen3-Omni's 13 per 100 frames (its encoder runs on those 13)."""
    seconds = config.data.max_audio_seconds
    completion = config.rollout.max_new_tokens
    family = config.model.family
    frames = int(seconds * MEL_FRAMES_PER_SECOND)
    audio = audio_token_count(AUDIO_CLIPS[family][1], frames)
    encoder = audio if family == "qwen3_omni" else frames // 2
    prompt = audio + PROMPT_TEXT_TOKENS
    return min(prompt + completion, config.rollout.max_model_len), completion, encoder


def _gb(x: float) -> str:
    return f"{x / GB:.1f}"


def job_of(config: Config, job: str = "auto") -> str:
    """"train" or "sft"; "auto": sft when the config names an `sft:` section (the sft-* presets do), else train."""
    if job != "auto":
        return job
    return "sft" if "sft" in config.model_fields_set else "train"


def sequences_per_step(config: Config, job: str) -> int:
    """The sequences one optimizer step trains on: sft.batch_size, or the questions' samples."""
    if job == "sft":
        return config.sft.batch_size
    return config.run.questions_per_step * config.rollout.samples_per_question


def trainable_params(config: Config, shape: ModelShape) -> int:
    """What the trainer keeps gradients and AdamW states for: everything (the audio encoder unless frozen), or with
    `trainer.lora` the adapters (by hand, trainer/memory.py) plus the audio encoder unless frozen."""
    t = config.trainer
    audio = 0 if t.freeze_audio_encoder else shape.audio_encoder_params
    if t.lora is not None:
        return lora_parameters(shape.decoder, t.lora) + audio
    return shape.params - shape.audio_encoder_params + audio


def trainer_terms(config: Config, shape: ModelShape, job: str) -> list[Term]:
    t = config.trainer
    trainable = trainable_params(config, shape)
    states = model_states(shape.params, trainable, shape.largest_layer_params, t.zero_stage, t.num_ranks)
    sequences = sequences_per_step(config, job)
    micro = min(t.micro_batch_size, math.ceil(sequences / t.num_ranks))
    seq, completion, enc = sequence_lengths(config)
    encoder = None if t.freeze_audio_encoder else shape.audio_encoder
    act = training_activations(shape.decoder, shape.vocab, micro, seq, completion, encoder, enc)
    used, other = (act.checkpointed, act.full) if t.gradient_checkpointing else (act.full, act.checkpointed)
    zero = f"ZeRO-{t.zero_stage} over {t.num_ranks} ranks, DeepSpeed's estimate"
    terms = [
        Term("trainer weights", states.weights, zero),
        Term("trainer gradients", states.gradients, zero),
        Term("trainer optimizer states", states.optimizer, zero + ", AdamW"),
        Term(
            "trainer activations",
            used,
            f"micro-batch {micro} x {seq} tokens ({completion} completion), gradient checkpointing "
            f"{'on' if t.gradient_checkpointing else 'off'}; {'off' if t.gradient_checkpointing else 'on'}: "
            f"{_gb(other)} GB",
        ),
        Term("trainer process", PROCESS_OVERHEAD, "CUDA context, NCCL, allocator"),
    ]
    return terms


def batch_line(config: Config, job: str) -> str:
    t = config.trainer
    sequences = sequences_per_step(config, job)
    per_rank = math.ceil(sequences / t.num_ranks)
    batch = (
        f"sft.batch_size={sequences} sequences per step (audio-thinker sft: trainer ranks only)"
        if job == "sft"
        else f"{config.run.questions_per_step} questions x {config.rollout.samples_per_question} samples = "
        f"{sequences} completions per step"
    )
    return (
        f"batch: {batch}; {t.num_ranks} trainer ranks take <= {per_rank} each, in micro-batches "
        f"of {min(t.micro_batch_size, per_rank)}"
    )


def reference_terms(config: Config, shape: ModelShape) -> list[Term]:
    seq, completion, _ = sequence_lengths(config)
    b = config.trainer.micro_batch_size
    forward = b * seq * layer_activation_bytes(shape.decoder) + b * completion * shape.vocab * LOGIT_BYTES
    return [
        Term("reference weights", shape.params * BF16, "bf16, transformers, no optimizer"),
        Term("reference forward", forward, f"micro-batch {b} x {seq} tokens, no grad: one layer live + logits"),
        Term("reference process", PROCESS_OVERHEAD, "CUDA context"),
    ]


def vllm_terms(
    who: str, shape: ModelShape, utilization: float, capacity: float, max_len: int, tp: int = 1
) -> tuple[list[Term], str | None]:
    """vLLM takes utilization x the GPU; the KV cache is what is left after weights, the profiling forward and
    CUDA graphs; it refuses to start when that cache cannot hold one max_len sequence."""
    d = shape.decoder
    budget = utilization * capacity
    weights = shape.params * BF16 / tp
    profile = (
        VLLM_PROFILE_TOKENS * BF16 * (2 * d.hidden + d.heads * d.head_dim + 2 * d.kv_heads * d.head_dim) / tp
        + VLLM_PROFILE_TOKENS * BF16 * 2 * d.intermediate / tp
        + VLLM_MAX_NUM_SEQS * shape.vocab * 4
    )
    graphs = PROCESS_OVERHEAD
    kv = budget - weights - profile - graphs
    per_token = 2 * d.layers * d.kv_heads * d.head_dim * BF16 / tp
    tokens = max(0, int(kv // per_token))
    terms = [
        Term(f"{who} weights", weights, f"bf16{f', 1/{tp} (tensor parallel)' if tp > 1 else ''}"),
        Term(f"{who} profiling peak", profile, f"{VLLM_PROFILE_TOKENS} batched tokens + sampler logits"),
        Term(f"{who} CUDA graphs and context", graphs, "allowance"),
        Term(f"{who} KV cache", max(kv, 0.0), f"{tokens} tokens of {per_token / 1e3:.0f} kB (max_model_len {max_len})"),
    ]
    problem = None
    if tokens < max_len:
        problem = (
            f"{who}: vLLM's KV cache at gpu_memory_utilization={utilization} holds {tokens} tokens, less than one "
            f"sequence of max_model_len={max_len}: vLLM would refuse to start"
        )
    return terms, problem


def judge_terms(config: Config, shape: ModelShape, capacity: float) -> tuple[list[Term], str | None]:
    j = config.judge
    if j.backend == "vllm":
        return vllm_terms("judge", shape, JUDGE_VLLM_UTILIZATION, capacity, shape.max_position_embeddings)
    tokens = JUDGE_PROMPT_TOKENS + config.rollout.max_new_tokens
    forward = j.max_batch_size * tokens * layer_activation_bytes(shape.decoder) + j.max_batch_size * shape.vocab * 4
    return [
        Term("judge weights", shape.params * BF16, "bf16, transformers"),
        Term("judge forward", forward, f"batch {j.max_batch_size} x {tokens} tokens, no grad"),
        Term("judge process", PROCESS_OVERHEAD, "CUDA context"),
    ], None


def make_plan(config: Config, capacity: float | None, job: str = "train") -> Plan:
    """The plan of `config` run as `audio-thinker train` (job="train") or `audio-thinker sft` (job="sft")."""
    groups = sft_groups(config) if job == "sft" else run_groups(config)
    gpus, where, unplaced = layout(config, groups)
    problems, lines = [], [batch_line(config, job)]
    gpu_run = config.run.num_gpus > 0
    need = sum(b.get("GPU", 0.0) for g in groups for b in g.bundles)
    for name in unplaced:
        problems.append(
            f"the {name} do not fit: the run's actors need {need:g} GPUs, run.num_gpus={config.run.num_gpus} "
            f"in nodes of run.gpus_per_node={config.run.gpus_per_node}"
        )
    cpu_actors = [s.actor for g in groups for s in g.slots if s.num_gpus == 0]
    if not gpu_run and not need:  # a CPU run: nothing to size against a GPU
        return Plan(gpus, cpu_actors, lines, problems, capacity)
    if gpu_run:
        for actor in cpu_actors:
            problems.append(f"{actor} has no GPU on a GPU run (run.num_gpus={config.run.num_gpus}): give it one")
    policy = resolve_shape(config.model.policy_path, FAMILY_SHAPES[config.model.family])
    trainer = trainer_terms(config, policy, job)
    lines.append(f"policy: {policy.name}, {policy.params / 1e9:.2f} B parameters (shape: {policy.source})")
    if policy.decoder.experts:
        d, (language, active) = policy.decoder, policy.language_params
        lines.append(
            f"  mixture of experts: {d.experts} per layer, {d.experts_per_token} per token: the language model's "
            f"{language / 1e9:.2f} B parameters, {active / 1e9:.2f} B active per token (docs/placement.md)"
        )
    lines.append(f"  trainer: {trainable_params(config, policy) / 1e9:.3f} B trainable parameters")
    heads = policy.audio_encoder.heads if policy.audio_encoder else None
    try:
        check_tensor_parallel(config.model.family, heads, config.rollout.tensor_parallel_size)
    except ValueError as exc:
        problems.append(str(exc))
    judge_on_gpu = any(s.role == "judge" for g in groups for s in g.slots)
    judge_shape = resolve_shape(config.model.judge_path, JUDGE_SHAPE) if judge_on_gpu else None
    if judge_shape is not None:
        lines.append(f"judge: {judge_shape.name}, {judge_shape.params / 1e9:.2f} B parameters ({config.judge.backend})")
    size = capacity or 0.0
    r = config.rollout
    for group in groups:
        for slot in group.slots:
            for gpu in where.get(slot.actor, []):
                gpu.actors.append(f"{slot.actor} ({slot.num_gpus:g})")
                if slot.role == "trainer":
                    gpu.terms += trainer
                elif slot.role == "reference":
                    gpu.terms += reference_terms(config, policy)
                elif slot.role == "rollout":
                    terms, problem = vllm_terms(
                        "rollout", policy, r.gpu_memory_utilization, size, r.max_model_len, r.tensor_parallel_size
                    )
                    gpu.terms += terms
                    if problem and gpu is where[slot.actor][0]:
                        problems.append(f"{gpu.name}: {problem}")
                elif slot.role == "judge" and judge_shape is not None:
                    terms, problem = judge_terms(config, judge_shape, size)
                    gpu.terms += terms
                    if problem:
                        problems.append(f"{gpu.name}: {problem}")
    if gpu_run and capacity:
        for gpu in gpus:
            if gpu.total > capacity:
                big = max(gpu.terms, key=lambda t: t.bytes)
                problems.append(
                    f"{gpu.name} ({', '.join(gpu.actors)}) needs {_gb(gpu.total)} GB of {_gb(capacity)} GB: "
                    f"the biggest term is {big.label} ({_gb(big.bytes)} GB)"
                )
    return Plan(gpus, cpu_actors, lines, problems, capacity)


def render(plan: Plan, config: Config) -> str:
    out = [f"audio-thinker plan: {config.run.name}"]
    out += [f"  {line}" for line in plan.lines]
    cap = f"{_gb(plan.capacity)} GB each" if plan.capacity else "size unknown"
    if plan.gpus:
        out.append(f"GPUs: {len(plan.gpus)} ({cap}; estimates in GB = 1e9 bytes)")
    for gpu in plan.gpus:
        head = ", ".join(gpu.actors) or "(idle)"
        fits = "" if not plan.capacity else ("  fits" if gpu.total <= plan.capacity else "  DOES NOT FIT")
        out.append(f"  {gpu.name}: {head}: {_gb(gpu.total)} GB{fits}")
        for t in gpu.terms:
            out.append(f"      {t.label:<34} {_gb(t.bytes):>6}  {t.note}")
    if plan.cpu_actors:
        out.append("on CPU: " + ", ".join(plan.cpu_actors))
    for p in plan.problems:
        out.append(f"problem: {p}")
    return "\n".join(out)


def capacity_of(config: Config) -> float | None:
    if config.run.gpu_memory_gb is not None:
        return config.run.gpu_memory_gb * GB
    return gpu_memory_from_nvidia_smi()


def check_plan(config: Config, job: str = "train") -> Plan:
    """The plan of a config; TrainingError (exit code 2) naming the first problem when a GPU run does not fit."""
    capacity = capacity_of(config)
    if config.run.num_gpus > 0 and capacity is None:
        raise TrainingError("run.gpu_memory_gb is unset and nvidia-smi reports no GPU: set the size of one GPU")
    plan = make_plan(config, capacity, job)
    if plan.problems:
        extra = f" (and {len(plan.problems) - 1} more: audio-thinker plan)" if len(plan.problems) > 1 else ""
        raise TrainingError(f"plan: {plan.problems[0]}{extra}")
    return plan
