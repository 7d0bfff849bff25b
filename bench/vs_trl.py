"""TRL's GRPOTrainer adapted for audio (the R1-AQA way) beside our pipeline, on the same work, in one invocation.

The peer a user would otherwise pick for Qwen2-Audio GRPO is TRL's `GRPOTrainer` with the audio features passed
through by hand, as R1-AQA (xiaomi-research/r1-aqa) does: one process, Hugging Face `generate`, the Qwen2-Audio
processor's `input_features` given to `generate` and to every log-prob pass (so the audio encoder runs once per
sample). Our own small subclass does that here on TRL 1.16's hooks. Three systems, each on the same tiny
Qwen2-Audio policy, the same synthetic questions in the same order (our pipeline's seeded order), G samples per
question, the same questions per step, token budget, sampling, optimizer and GRPO loss, the same number of steps:

- trl: `AudioGRPOTrainer`, on CPU: `use_cpu=True`, no bf16, no vLLM (Hugging Face generate), no gradient
  checkpointing (TRL turns it on by default; ours is off), the same micro-batch with gradient accumulation over
  the step, the dataset in our order (`shuffle_dataset=False`), reward: accuracy + format computed locally;
  `--trl-threads` torch threads (default 1, what each of our actors gets on 2 cores);
- ours: `run_training` as `audio-thinker train` runs it: vLLM rollout worker, DeepSpeed trainer, reference actor,
  the judge over HTTP, the paper's reward (`reward.variant`, default atar_cr_tr);
- ours-local: the same with the judge off and TRL's local reward through the reward hook (like for like).

The reward of trl and ours-local: 1 for a correct answer plus 1 for a well-formed response (R1-AQA's accuracy and
format rewards, with our parser and answer matching). Each system's first step warms up (vLLM, DeepSpeed and
first-call costs) and is left out of the means; checkpoints, evaluation and start-up are outside the step times.
Each system's line gives its phases (ours: judge and reference overlap; trl: "train" is the loss passes and the
update). Needs the `bench` extra (TRL); not a test. Numbers go to the README's performance section.

    make bench-vs-trl                                        # installs the extra, then runs this
    python bench/vs_trl.py [--steps 4] [--systems trl,ours,ours-local] [key=value ...]   # any config override
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import _run_env  # noqa: F401 (the run's environment, before vLLM, DeepSpeed and Ray are imported)
warnings.filterwarnings("ignore", message="TRL currently supports vLLM")  # TRL's vLLM path is not used here

if importlib.util.find_spec("trl") is None:
    print(
        "bench/vs_trl.py needs TRL, which comes with the `bench` extra (not in the main install): run "
        "`make bench-vs-trl`, or `.venv/bin/python -m pip install -c requirements/cpu-constraints.txt -e '.[bench]'` "
        "(on a GPU node without the -c constraint), then this script again",
        file=sys.stderr,
    )
    sys.exit(2)

import numpy as np
import torch
from datasets import Dataset as HFDataset
from transformers import PrinterCallback, Qwen2AudioForConditionalGeneration, Qwen2AudioProcessor, TrainerCallback
from trl import GRPOConfig, GRPOTrainer

from audio_thinker.app.train.driver import run_training
from audio_thinker.app.train.sampling import step_questions
from audio_thinker.app.data.demo import prepare_demo
from audio_thinker.app.train.launch import prepare_data
from audio_thinker.core.audio import SAMPLE_RATE
from audio_thinker.core.config import Config
from audio_thinker.core.chat import AUDIO_TOKEN, render_chat
from audio_thinker.core.log import quiet_console, setup_logging
from audio_thinker.core.presets import load_config
from audio_thinker.core.protocol import build_instruction, is_correct, load_template, parse_response
from audio_thinker.core.records import RolloutRecord
from audio_thinker.core.rewards import RewardBatch, rewards_from_totals

SYSTEMS = ("trl", "ours", "ours-local")
OUR_PHASES = ("gen", "judge", "old_logprob", "ref", "train", "sync")  # timing_s/* of metrics.jsonl


# ------------------------------------------------------------------------------------------- the local reward


def accuracy_format(mode: str, correct: bool) -> float:
    """R1-AQA's two rewards summed: 1 for a correct answer, 1 for a well-formed response."""
    return float(correct) + float(mode != "invalid")


def local_reward_fn(records: list[RolloutRecord], step: int) -> RewardBatch:
    """Our reward hook with the local reward (the driver parsed and matched each answer already)."""
    return rewards_from_totals([r.verdict() for r in records], [accuracy_format(r.mode, r.correct) for r in records])


def trl_reward(letters: bool):
    """The same reward as a TRL reward function (completions are the decoded texts; dataset columns come along)."""

    def accuracy_format_reward(prompts, completions, choices, answer, **_) -> list[float]:
        out = []
        for text, ch, ans in zip(completions, choices, answer, strict=True):
            parsed = parse_response(text)
            out.append(accuracy_format(parsed.mode, parsed.mode != "invalid" and is_correct(parsed, ch, ans, letters)))
        return out

    return accuracy_format_reward


# ------------------------------------------------------------------------------------------- TRL, adapted for audio


class AudioGRPOTrainer(GRPOTrainer):
    """TRL's GRPOTrainer with Qwen2-Audio clips, the R1-AQA way: the processor turns each prompt row (TRL repeats
    a question's row G times) and its clip into token ids and Whisper features; the features go to `generate`, to
    the reference pass and to the loss pass, sliced like the rows they belong to. TRL 1.16 carries image fields
    only; these overrides carry the audio ones. `phase_s` sums the seconds of generation (processor included) and
    of the reference pass; the callback reads and resets it every step."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.phase_s = {"gen": 0.0, "ref": 0.0}

    def _generate(self, prompts):
        start = time.perf_counter()
        out = super()._generate(prompts)
        self.phase_s["gen"] += time.perf_counter() - start
        return out

    def _generate_and_score_completions(self, inputs):
        self._clips = [np.asarray(x["audio"], dtype=np.float32) for x in inputs]
        output = super()._generate_and_score_completions(inputs)
        # the rows' features travel with the rows (TRL shuffles and splits the batch into micro-batches)
        output["input_features"], output["feature_attention_mask"] = self._audio
        return output

    def _tokenize_prompts(self, prompts):
        batch = self.processing_class(
            text=prompts, audio=self._clips, sampling_rate=SAMPLE_RATE, padding=True, return_tensors="pt"
        )
        ids = [row[mask.bool()].tolist() for row, mask in zip(batch["input_ids"], batch["attention_mask"])]
        device = self.accelerator.device
        self._audio = (batch["input_features"].to(device), batch["feature_attention_mask"].to(device))
        features = {"input_features": self._audio[0], "feature_attention_mask": self._audio[1]}
        return ids, None, features  # tensors in the third slot go to generate as they are

    def _compute_loss(self, model, inputs):
        self._audio = (inputs["input_features"], inputs["feature_attention_mask"])
        return super()._compute_loss(model, inputs)

    def _get_per_token_logps_and_entropies(
        self,
        model,
        input_ids,
        attention_mask,
        logits_to_keep,
        batch_size=None,
        compute_entropy=False,
        compute_aux_loss=False,  # MoE only; Qwen2-Audio has no router
        **_image_fields,
    ):
        """Completion-token log-probs (and entropies) of the rows, in chunks of `batch_size`, with each row's clip
        encoded again (once per sample) through TRL's fused LM head."""
        begin = time.perf_counter()
        features, feature_mask = self._audio
        step = batch_size or input_ids.size(0)
        logps, entropies = [], []
        for start in range(0, input_ids.size(0), step):
            rows = slice(start, start + step)
            ids, mask = input_ids[rows], attention_mask[rows]
            labels = ids.masked_fill(mask == 0, -100)
            labels[:, :-logits_to_keep] = -100  # only the completion is scored
            with self.accelerator.autocast():
                out = model(
                    input_ids=ids,
                    attention_mask=mask,
                    input_features=features[rows],
                    feature_attention_mask=feature_mask[rows],
                    labels=labels,
                    fused_lm_head=True,
                )
            logps.append(out.log_probs[:, -logits_to_keep:])
            if compute_entropy:
                entropies.append(out.entropy[:, -logits_to_keep:])
        if model is self.ref_model:
            self.phase_s["ref"] += time.perf_counter() - begin
        return torch.cat(logps), torch.cat(entropies) if compute_entropy else None, None


class StepTimes(TrainerCallback):
    """Seconds of each optimizer step (from the end of the previous one: generation, rewards, reference, loss
    passes, update), its generation and reference seconds (`phases`: the trainer's `phase_s`), the step's logged
    reward and completion length; one progress line per step."""

    def __init__(self, steps: int):
        self.steps, self.times, self.phases, self.logs, self.last = steps, [], [], [], 0.0
        self.phase_s: dict[str, float] = {}

    def on_train_begin(self, args, state, control, **kwargs):
        self.last = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        now = time.perf_counter()
        self.times.append(now - self.last)
        self.phases.append(dict(self.phase_s))
        self.phase_s.update(dict.fromkeys(self.phase_s, 0.0))
        self.last = now

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "reward" in logs:
            self.logs.append(logs)
            gen, ref = self.phases[-1]["gen"], self.phases[-1]["ref"]
            print(
                f"trl step {len(self.logs)}/{self.steps}: {self.times[-1]:.2f} s (gen {gen:.2f}, ref {ref:.2f}, "
                f"loss passes and update {self.times[-1] - gen - ref:.2f}), reward {logs['reward']:.3f}, "
                f"length {logs['completions/mean_length']:.1f}, kl {logs['kl']:.4f}",
                flush=True,
            )


def trl_dataset(config: Config, steps: int) -> HFDataset:
    """The questions our pipeline trains on at steps 1..N, in that order, with their prompts and clips."""
    c = config
    train, _ = prepare_data(c)
    template = load_template(c.prompt.mode, c.prompt.template_file)
    rows = {"prompt": [], "audio": [], "choices": [], "answer": []}
    for step in range(1, steps + 1):
        for i in step_questions(train, c.run.seed, step, c.run.questions_per_step):
            q = train[i]
            instruction = build_instruction(q.question, q.choices, c.prompt.mode, template, c.prompt.letter_choices)
            rows["prompt"].append(render_chat(c.model.family, instruction))
            rows["audio"].append(train.audio(i).tolist())
            rows["choices"].append(q.choices)
            rows["answer"].append(q.answer)
    return HFDataset.from_dict(rows)


def run_trl(config: Config, steps: int, out: Path, threads: int) -> dict:
    c = config
    torch.set_num_threads(threads)
    if c.model.family != "qwen2_audio":
        raise SystemExit(f"model.family={c.model.family}: the TRL adaptation here is for Qwen2-Audio (R1-AQA's model)")
    sequences = c.run.questions_per_step * c.rollout.samples_per_question
    micro = min(c.trainer.micro_batch_size, sequences)
    if sequences % micro:
        raise SystemExit(f"trainer.micro_batch_size={micro} must divide the step's {sequences} sequences for TRL")
    model = Qwen2AudioForConditionalGeneration.from_pretrained(c.model.policy_path, dtype=torch.float32)
    processor = Qwen2AudioProcessor.from_pretrained(c.model.policy_path)
    # TRL suppresses the image placeholder during sampling; for audio that is the audio placeholder
    model.config.image_token_id = processor.tokenizer.convert_tokens_to_ids(AUDIO_TOKEN)
    t = c.trainer
    args = GRPOConfig(
        output_dir=str(out),
        use_cpu=True,  # this machine has no GPU; on a GPU node drop this and set bf16=True
        bf16=False,
        use_vllm=False,  # R1-AQA's way: Hugging Face generate in the training process
        gradient_checkpointing=False,  # TRL's default is on; ours (trainer.gradient_checkpointing) is off
        seed=c.run.seed,
        max_steps=steps,
        num_generations=c.rollout.samples_per_question,
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=sequences // micro,  # one optimizer step per rollout batch, as ours
        shuffle_dataset=False,  # the rows are already in our pipeline's order
        max_completion_length=c.rollout.max_new_tokens,
        temperature=c.rollout.temperature,
        top_p=c.rollout.top_p,
        learning_rate=t.lr,
        lr_scheduler_type="constant_with_warmup" if t.lr_schedule == "constant" and t.warmup_steps else t.lr_schedule,
        warmup_steps=t.warmup_steps,
        weight_decay=t.weight_decay,
        max_grad_norm=t.grad_clip,
        beta=t.beta,
        epsilon=t.clip_eps_low,
        epsilon_high=t.clip_eps_high,
        loss_type=t.loss_type,  # our loss types are TRL's definitions
        scale_rewards="group" if c.reward.scale_advantages else "none",
        remove_unused_columns=False,  # the clips, choices and answers must reach the trainer and the reward
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_pin_memory=False,
    )
    timer = StepTimes(steps)
    trainer = AudioGRPOTrainer(
        model=model,
        reward_funcs=trl_reward(c.prompt.letter_choices),
        args=args,
        train_dataset=trl_dataset(c, steps),
        processing_class=processor,
        callbacks=[timer],
    )
    timer.phase_s = trainer.phase_s
    trainer.remove_callback(PrinterCallback)  # StepTimes prints one line per step instead of the log dicts
    trainer.train()
    return {
        "seconds": timer.times,
        "sequences": [sequences] * len(timer.times),
        "reward": [log["reward"] for log in timer.logs],
        "length": [log["completions/mean_length"] for log in timer.logs],
        "phases": [{**p, "train": t - p["gen"] - p["ref"]} for p, t in zip(timer.phases, timer.times, strict=True)],
    }


# ------------------------------------------------------------------------------------------- our pipeline


def run_ours(config_overrides: list[str], steps: int, out: Path, local_reward: bool) -> dict:
    config = load_config(
        None,
        [
            *config_overrides,
            f"run.output_dir={out}",
            f"run.total_steps={steps}",
            f"run.checkpoint_every={steps}",
            "run.loggers=[]",
            "data.eval_manifest=null",  # evaluation is no part of the step; leave it out of the bench's time
        ],
    )
    # as `audio-thinker train` runs it: actor output to the run's logs/, step lines and warnings on the console
    run = run_training(config, reward_fn=local_reward_fn if local_reward else None, actor_logs=out / "logs")
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    generated = config.run.questions_per_step * config.rollout.samples_per_question  # as TRL's: all, trained or not
    return {
        "seconds": [m["timing_s/step"] for m in metrics],
        "sequences": [generated] * len(metrics),
        "reward": [m["reward/total"] for m in metrics],
        "length": [m["response_length/mean"] for m in metrics],
        "phases": [{p: m[f"timing_s/{p}"] for p in OUR_PHASES if f"timing_s/{p}" in m} for m in metrics],
    }


# ------------------------------------------------------------------------------------------- the table


def summarize(result: dict) -> dict:
    """Means over the steps after the first (the warm-up)."""
    seconds = float(np.mean(result["seconds"][1:]))
    return {
        "s/step": seconds,
        "samples/s": float(np.mean(result["sequences"][1:])) / seconds,
        "reward": float(np.mean(result["reward"][1:])),
        "tokens/sample": float(np.mean(result["length"][1:])),
        "warm-up s": float(result["seconds"][0]),
        "phases": {p: float(np.mean([step[p] for step in result["phases"][1:]])) for p in result["phases"][0]},
    }


# (key, header width, format) of the table's columns after the system's name; "vs trl" is samples/s over trl's
COLUMNS = (("s/step", 9, ".2f"), ("samples/s", 11, ".1f"), ("vs trl", 8, ".2f"), ("reward", 9, ".3f"),
           ("tokens/sample", 15, ".1f"), ("warm-up s", 11, ".1f"))  # fmt: skip


def table(results: dict[str, dict]) -> str:
    base = results.get("trl")
    lines = [f"{'system':<12}" + "".join(f"{key:>{width}}" for key, width, _ in COLUMNS)]
    for name, r in results.items():
        row = {**r, "vs trl": r["samples/s"] / base["samples/s"] if base else float("nan")}
        lines.append(f"{name:<12}" + "".join(f"{row[key]:>{width}{fmt}}" for key, width, fmt in COLUMNS))
    return "\n".join(lines)


def systems_list(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in SYSTEMS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"{text!r}: expected some of {', '.join(SYSTEMS)}, comma-separated")
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps per system (the first is a warm-up)")
    parser.add_argument(
        "--systems",
        type=systems_list,
        default=list(SYSTEMS),
        help=f"comma-separated systems to run, in this order (default {','.join(SYSTEMS)})",
    )
    parser.add_argument(
        "--trl-threads",
        type=int,
        default=1,
        help="torch CPU threads of the TRL process (default 1, as each of our actors gets on 2 cores: on the shared "
        "machine 2 OpenMP threads ran the tiny model's passes 1.3-6x slower; try 2 on an idle one)",
    )
    parser.add_argument("overrides", nargs="*", help="config overrides for every system (key=value), e.g. run.seed=1")
    args = parser.parse_args()
    if args.steps < 2:
        parser.error("--steps must be at least 2 (the first step is a warm-up)")
    config = load_config(None, args.overrides)
    prepare_demo(config)  # the tiny policy and the synthetic set, built once if missing, shared by all
    prepare_data(config)
    c = config
    print(
        f"{c.run.questions_per_step} questions x {c.rollout.samples_per_question} samples x {c.rollout.max_new_tokens} "
        f"new tokens per step, {args.steps} steps, policy {c.model.policy_path}, seed {c.run.seed}, "
        f"TRL on {args.trl_threads} CPU thread(s)",
        flush=True,
    )
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-vs-trl-") as tmp:
        setup_logging("INFO")
        quiet_console(Path(tmp) / "driver.log")  # our step lines and warnings on the console, the rest to the file
        for name in args.systems:
            print(f"--- {name}", flush=True)
            if name == "trl":
                raw = run_trl(config, args.steps, Path(tmp) / name, args.trl_threads)
            else:
                raw = run_ours(args.overrides, args.steps, Path(tmp) / name, local_reward=name == "ours-local")
            results[name] = summarize(raw)
            r = results[name]
            phases = ", ".join(f"{k} {v:.2f}" for k, v in r["phases"].items())
            print(f"{name}: {r['s/step']:.2f} s per step ({phases}), {r['samples/s']:.1f} samples/s", flush=True)
    print(f"\nmean of steps 2..{args.steps} of {args.steps} (step 1 warms up: left out, its time in the last column)")
    print(table(results))
    print("reward: trl and ours-local accuracy + format (0..2); ours the paper's reward (reward.variant)")


if __name__ == "__main__":
    main()
