"""`audio-thinker sft`: supervised fine-tuning of the policy, the paper's SFT baselines (Table 1: sft-a..sft-d).

The same parts as a GRPO run, without rollouts, judge or reference: the DeepSpeed trainer group
(`PolicyTrainerGroup`, same model loading and ranks), the same run directory (config.yaml, metrics.jsonl,
tensorboard/, checkpoints/, status.json, final/), the same resume (`run.resume=true`: the latest checkpoint,
metrics after it cut) and the same export, so `final/` is a policy that `audio-thinker eval`, both engines and
an RL run (`model.policy_path=<run>/final`) load.

Each step takes `sft.batch_size` questions of `data.train_manifest` in the seeded per-epoch order of the RL
driver (a pure function of seed and step, so a resumed run continues it), renders each with the instruction of
`prompt.mode` and teaches the target (`sft.target`): `<answer>X</answer>` or
`<think>rationale</think><answer>X</answer>`, each followed by `<|im_end|>`. The loss is the mean NLL over the
step's response tokens (trainer/sft_loss.py); the prompt and the audio are context only.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import ray

from actors.trainer_group import PolicyTrainerGroup
from audio_thinker.app.train.sampling import step_questions
from audio_thinker.app.errors import TrainingError
from audio_thinker.app.train.launch import check_inputs, connect_ray
from audio_thinker.app.train.loggers import open_loggers
from audio_thinker.app.train.rehearsal import rehearsal_cluster
from audio_thinker.app.train.rehearsal_run import Rehearsal
from audio_thinker.app.train.run_dir import RunDir, default_output_dir
from audio_thinker.app.train.run_start import open_run
from audio_thinker.app.train.sft_data import load_sft_data, sft_target
from audio_thinker.core.config import Config
from audio_thinker.core.data import Dataset
from audio_thinker.core.encoding import PromptEncoder
from audio_thinker.core.chat import render_chat
from audio_thinker.core.log import STEPS, get_logger
from audio_thinker.core.models import load_feature_extractor, load_tokenizer
from audio_thinker.core.progress import progress
from audio_thinker.core.protocol import build_instruction, load_template
from trainer.checkpoint import latest_checkpoint
from trainer.logprobs import PolicyBatch

log = get_logger(__name__)
steps_log = get_logger(STEPS)


class SftRun:
    """One SFT run over its trainer group and run directory (`run_sft` builds it from a config)."""

    def __init__(self, config: Config, trainer, data: Dataset, rationales: list[str | None], run_dir: RunDir):
        self.config, self.trainer, self.data, self.rationales, self.run_dir = config, trainer, data, rationales, run_dir
        path = config.model.policy_path
        self.tokenizer = load_tokenizer(path)
        self.encoder = PromptEncoder(self.tokenizer, load_feature_extractor(path))
        self.template = load_template(config.prompt.mode, config.prompt.template_file)
        self.loggers: list = []
        self.rehearsal: Rehearsal | None = None  # run.rehearse: the checks of app/train/rehearsal_run.py

    def batch(self, step: int) -> PolicyBatch:
        """The step's questions as prompts (instruction + clip) and target token ids."""
        c = self.config
        index = step_questions(self.data, c.run.seed, step, c.sft.batch_size)
        prompts, targets = [], []
        for i in index:
            q = self.data[i]
            instruction = build_instruction(
                q.question, q.choices, c.prompt.mode, self.template, c.prompt.letter_choices
            )
            prompts.append(self.encoder.encode(render_chat(c.model.family, instruction), self.data.audio(i)))
            targets.append(self.tokenizer.encode(sft_target(q.answer, self.rationales[i]), add_special_tokens=False))
        return PolicyBatch(prompts=prompts, prompt_index=list(range(len(index))), completion_ids=targets)

    def step(self, step: int) -> dict:
        start = time.perf_counter()
        batch = self.batch(step)
        metrics = self.trainer.sft_step(batch)
        if not math.isfinite(metrics["sft/loss"]) or not math.isfinite(metrics["actor/grad_norm"]):
            raise FloatingPointError(f"non-finite loss {metrics['sft/loss']} / grad norm {metrics['actor/grad_norm']}")
        if self.rehearsal is not None:  # a failed check stops the run, naming it
            self.rehearsal.check_sft_step(step, batch, metrics)
        return {"step": step, **metrics, "timing_s/step": time.perf_counter() - start}

    def train(self) -> Path:
        c = self.config
        start = open_run(c, self.run_dir, self.trainer.load_checkpoint)
        if self.rehearsal is not None:
            self.rehearsal.begin(start)  # the placement check, before the first step
        self.loggers = open_loggers(c, self.run_dir, purge_step=start + 1)
        self.run_dir.write_status("running")
        steps = range(start + 1, c.run.total_steps + 1)
        for step in progress(steps, desc="sft", total=len(steps), unit="step"):
            try:
                metrics = self.step(step)
                if step % c.run.checkpoint_every == 0 or step == c.run.total_steps:
                    self.trainer.save_checkpoint(
                        self.run_dir.checkpoints, extra={"step": step}, keep=c.run.keep_checkpoints
                    )
            except Exception as exc:
                latest = latest_checkpoint(self.run_dir.checkpoints)
                kept = f"resume from {latest} with --resume" if latest else "no checkpoint was written yet"
                message = f"sft step {step} failed: {type(exc).__name__}: {exc}; {kept}"
                self.run_dir.write_status("failed", message)
                raise TrainingError(message) from exc
            self.run_dir.log_metrics(metrics)
            for logger in self.loggers:
                logger.log_metrics(step, metrics)
            steps_log.info(
                "sft step %d/%d | loss %.4f | tokens %d | grad norm %.3f | lr %.2e | %.1fs",
                step,
                c.run.total_steps,
                metrics["sft/loss"],
                metrics["sft/tokens"],
                metrics["actor/grad_norm"],
                metrics["actor/lr"],
                metrics["timing_s/step"],
            )
        self.trainer.export(self.run_dir.final)
        self.run_dir.write_status("finished")
        return self.run_dir.path

    def close(self) -> None:
        for logger in self.loggers:
            logger.close()
        if self.rehearsal is not None:
            self.rehearsal.close()
        self.trainer.shutdown()


def run_sft(config: Config, actor_logs: Path | None = None) -> Path:
    """Check the inputs, start Ray (or join RAY_ADDRESS; a rehearsal declares its own) and the trainer group, train,
    export; the run directory."""
    m, c = config.model, config
    if c.trainer.num_ranks > c.sft.batch_size:
        raise TrainingError(
            f"trainer.num_ranks={c.trainer.num_ranks} > sft.batch_size={c.sft.batch_size}: every rank needs a sequence"
        )
    check_inputs(config.model_copy(update={"data": config.data.model_copy(update={"eval_manifest": None})}),
                 needs_judge_model=False)  # SFT reads no held-out split
    data, rationales = load_sft_data(config)  # a bad manifest fails before any model is loaded
    if c.run.output_dir is None:
        c.run.output_dir = str(default_output_dir(f"sft-{c.run.name}"))
    run_dir = RunDir(c.run.output_dir)
    owns_ray = connect_ray(actor_logs, rehearsal_cluster(c, sft=True))
    trainer = None
    try:
        trainer = PolicyTrainerGroup(m.policy_path, m.family, c.trainer, c.run.total_steps, m.dtype).ready()
        run = SftRun(config, trainer, data, rationales, run_dir)
        if c.run.rehearse:
            run.rehearsal = Rehearsal.of_sft(c, run_dir, trainer)
        try:
            return run.train()
        finally:
            trainer = None
            run.close()
    finally:
        if trainer is not None:
            trainer.shutdown()
        if owns_ray and ray.is_initialized():
            ray.shutdown()
