"""The training driver (single controller): one Audio-Thinker GRPO step after another, over its parts.

A step, as the README's data flow: the step's questions -> the rollout pool generates G samples each -> records
-> the judge's verdicts alongside the reference log-probs (`app/train/sampling.py`; produced ahead of the trainer
with `run.max_staleness`, `app/train/producer.py`) -> the reward hook gives every reward term and the group
advantages (ATAR at (step, T) by default) -> the GRPO update -> weight sync to the rollout workers (checksums
checked) -> metrics, rollout dump, checkpoint, evaluation. Steps are numbered 1..T (docs/architecture.md).

Nothing is invented on failure: a judge that stays unreachable, a dead actor or a non-finite loss stops the
run with a message naming the cause; the last checkpoint stays the resume point. A dead trainer rank restarts
the group from that checkpoint within the job (`app/train/recovery.py`). One module of ~400 lines: the step and
the run loop around it (checkpoints, evaluation, preemption, failure messages) read as one story.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import ray

from actors.group import ActorDiedError
from actors.placement import PlacementError, RunPlacement
from actors.reference import Reference
from actors.rollout_pool import RolloutPool
from actors.trainer_group import PolicyTrainerGroup
from actors.weight_sync import WeightSync
from audio_thinker.app.errors import Preempted, TrainingError
from audio_thinker.app.train.batch import StepBatch, drop_stale, drop_zero_std
from audio_thinker.app.train.judging import Judge, call_judge
from audio_thinker.app.train.launch import (
    RunParts,
    check_inputs,
    close_quietly,
    connect_ray,
    prepare_data,
    start_parts,
)
from audio_thinker.app.train.loggers import check_loggers, open_loggers
from audio_thinker.app.train.preemption import PreemptionGuard
from audio_thinker.app.train.producer import Producer
from audio_thinker.app.train.recovery import TrainerRecovery
from audio_thinker.app.train.rehearsal import rehearsal_cluster
from audio_thinker.app.train.rehearsal_run import Rehearsal
from audio_thinker.app.train.run_dir import RunDir, default_output_dir
from audio_thinker.app.train.run_start import open_run
from audio_thinker.app.train.sampling import Sampler, request_seed
from audio_thinker.app.train.step_metrics import console_line, step_metrics
from audio_thinker.core.accuracy import summarize_for_training
from audio_thinker.core.config import BenchToggles, Config, RewardConfig
from audio_thinker.core.data import Dataset
from audio_thinker.core.encoding import PromptEncoder
from audio_thinker.core.log import STEPS, get_logger
from audio_thinker.core.models import load_feature_extractor, load_tokenizer
from audio_thinker.core.progress import progress
from audio_thinker.core.records import RolloutRecord
from audio_thinker.core.rewards import RewardBatch, compute_rewards, needs_judge
from reward_server.client import JudgeError
from rollout.engine import GenerationRequest, SamplingConfig
from trainer.checkpoint import latest_checkpoint
from trainer.lora import check_lora

log = get_logger(__name__)
steps_log = get_logger(STEPS)

# A reward hook: the step's records (verdicts filled) and the global step -> every reward term and advantage.
RewardFn = Callable[[list[RolloutRecord], int], RewardBatch]


def paper_reward(reward: RewardConfig, total_steps: int) -> RewardFn:
    """The paper's rewards for `reward.variant` (ATAR balancing, consistency, think quality, eq. 8 advantages)."""
    options = dict(
        invalid_accuracy=reward.invalid_accuracy,
        min_group_std=reward.min_group_std,
        scale_advantages=reward.scale_advantages,
    )
    return lambda records, step: compute_rewards(
        [r.verdict() for r in records], step, total_steps, reward.variant, **options
    )


def one_line(exc: BaseException) -> str:
    """An exception's first line, with the notes Ray adds (which actor raised it, during what)."""
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    notes = "; ".join(getattr(exc, "__notes__", []))
    return first + (f" ({notes})" if notes else "")


class Driver:
    """Runs the steps of one run over parts it is given; `from_config` starts them."""

    def __init__(
        self,
        config: Config,
        rollout: RolloutPool,
        trainer: PolicyTrainerGroup,
        reference: Reference,
        judge: Judge | None,
        run_dir: RunDir,
        train_set: Dataset,
        eval_set: Dataset | None = None,
        reward_fn: RewardFn | None = None,
        encoder: PromptEncoder | None = None,
        preemption: PreemptionGuard | None = None,
        toggles: BenchToggles | None = None,
    ) -> None:
        c = self.config = config
        self.rollout, self.trainer, self.reference, self.judge = rollout, trainer, reference, judge
        self.run_dir, self.timeline, self.eval_set = run_dir, run_dir.timeline, eval_set
        self.reward_fn = reward_fn or paper_reward(c.reward, c.run.total_steps)
        self.preemption, self.toggles = preemption, toggles or BenchToggles()
        encoder = encoder or PromptEncoder(
            load_tokenizer(c.model.policy_path), load_feature_extractor(c.model.policy_path)
        )
        self.sampler = Sampler(c, train_set, encoder, rollout, reference, self.ask_judge, self.timeline)
        sample = self.sampler.stream if c.run.stream_groups else self.sampler.sample
        self.producer = Producer(sample, c.run.max_staleness, c.run.total_steps)
        self.sync = WeightSync(trainer, rollout, c.trainer.sync_backend)
        self.recovery = TrainerRecovery(trainer, self.sync, run_dir, c.trainer.max_restarts)
        self.version = 0  # the weights version of the trainer (and, once synced, of every worker)
        self.owns_ray = False
        self.placement: RunPlacement | None = None
        self.loggers: list = []
        self.rehearsal: Rehearsal | None = None  # run.rehearse: the checks of app/train/rehearsal_run.py

    @classmethod
    def from_config(
        cls,
        config: Config,
        reward_fn: RewardFn | None = None,
        actor_logs: Path | None = None,
        toggles: BenchToggles | None = None,
    ) -> Driver:
        """Inputs checked and loaded, Ray (a rehearsal's declared cluster), the placement reserved, then every actor
        group started at once."""
        c = config
        with_judge = reward_fn is None
        check_inputs(c, needs_judge_model=with_judge and needs_judge(c.reward.variant) and not c.judge.url)
        check_loggers(c)
        if c.trainer.lora is not None:  # a target that matches nothing fails here, before Ray starts
            try:
                check_lora(c.model.policy_path, c.model.family, c.trainer.lora)
            except ValueError as exc:
                raise TrainingError(str(exc)) from None
        train_set, eval_set = prepare_data(c)
        owns_ray = connect_ray(actor_logs, rehearsal_cluster(c, with_judge=with_judge))
        placement = None
        try:
            try:  # every actor's bundle reserved up front, or a named error at once
                placement = RunPlacement(c, with_judge=with_judge)
            except PlacementError as exc:
                raise TrainingError(str(exc)) from exc
            try:
                parts = start_parts(c, placement, with_judge, toggles)
            except (TimeoutError, ActorDiedError) as exc:  # a group that did not start, named, in one line
                raise TrainingError(f"start-up failed: {one_line(exc)}") from exc
        except BaseException:
            if placement is not None:
                close_quietly(placement)
            if owns_ray:
                ray.shutdown()
            raise
        run_dir = RunDir(c.run.output_dir or default_output_dir(c.run.name))
        driver = cls(c, parts.rollout, parts.trainer, parts.reference, parts.judge, run_dir, train_set, eval_set,
                     reward_fn, toggles=toggles)  # fmt: skip
        driver.owns_ray, driver.placement = owns_ray, placement
        if c.run.rehearse:
            driver.rehearsal = Rehearsal.of_run(c, run_dir, parts, placement)
        return driver

    # -------------------------------------------------------------------------------- one step

    def step(self, step: int) -> dict:
        """One step, as the README's data flow."""
        metrics, phase = self.timeline.run("step", "driver", step, lambda: self._step(step))
        metrics["timing_s/step"] = phase.seconds
        return metrics

    def _step(self, step: int) -> dict:
        c = self.config
        batch = self.producer.take(step, self.version)  # questions -> generate -> records -> judge | reference
        batch, staleness = drop_stale(batch, self.version, c.run.max_staleness)
        timing = dict(batch.timing)
        if self.separate_old_pass:  # the proximal policy: the trainer's weights now
            batch.policy.old_logprobs, old = self.timeline.run(
                "old log-probs", "trainer", step,
                lambda: self.trainer.compute_logprobs(batch.policy, c.rollout.temperature),
            )  # fmt: skip
            timing["timing_s/old_logprob"] = old.seconds
        rewards = self.reward_fn(batch.records, step)  # every term and the group advantages
        batch.set_rewards(rewards)
        train, sync = self.update(batch)  # the GRPO update, then the new weights to the workers
        self.run_dir.write_rollouts(step, [r.to_json() for r in batch.records])
        every = c.run.log_completions_every
        if every and step % every == 0:
            for logger in self.loggers:
                logger.log_completions(step, batch.records)
        return {
            "step": step,
            **step_metrics(batch.records, rewards),
            **train,
            **timing,
            **sync,
            **staleness,
            "judge/items": batch.judged,
            **self.take_recoveries(),
        }

    @property
    def separate_old_pass(self) -> bool:
        """Whether the old log-probs need their own forward: the policy moves between the updates of one batch
        (else they are the loss pass's, detached)."""
        return self.config.trainer.updates_per_batch > 1 or self.toggles.recompute_old_logprobs

    def ask_judge(self, records: list[RolloutRecord]) -> int:
        """The verdicts the reward variant needs, into the records; the items judged."""
        needed = needs_judge(self.config.reward.variant) if self.judge is not None else set()
        return call_judge(self.judge, self.config.judge, records, needed) if needed else 0

    def update(self, batch: StepBatch) -> tuple[dict, dict]:
        """One optimizer step on the step's samples, then the new weights to the workers as version `step`.

        With `run.drop_zero_std_groups` (DAPO's dynamic sampling) the groups whose rewards are all equal carry
        no gradient and are left out; when no group is left the step takes no update and syncs nothing.
        """
        c, step = self.config, batch.step
        dropped = {}
        if c.run.drop_zero_std_groups:
            batch, dropped = drop_zero_std(batch)
            if batch is None:
                log.warning("step %d: every group has equal rewards; no update this step", step)
                return dropped, {}
        train, _ = self.timeline.run(
            "train", "trainer", step, lambda: self.trainer.train_step(batch.policy, c.rollout.temperature)
        )
        if not math.isfinite(train["actor/loss"]) or not math.isfinite(train.get("actor/grad_norm", 0.0)):
            raise FloatingPointError(
                f"non-finite loss {train['actor/loss']} / grad norm {train.get('actor/grad_norm')}; "
                "the weights of this step are not synced or saved"
            )
        sync, _ = self.timeline.run("sync", "trainer", step, lambda: self.sync.push(step))
        self.version = step
        if self.rehearsal is not None:  # a failed check stops the run, naming it
            train = {**train, **self.rehearsal.check_step(step, batch.records, batch.policy, train)}
        return {**train, **dropped}, sync

    def take_recoveries(self) -> dict[str, int]:
        """Restarts of the workers, the reference and the judge since the last step, and the work done again."""
        judge = self.judge.take_recovery() if self.judge is not None else {}
        return {**self.rollout.take_recovery(), **self.reference.take_recovery(), **judge}

    # -------------------------------------------------------------------------------- the run

    def train(self) -> Path:
        """Every step from the start (or the resume point) to T, then the exported policy in `final/`."""
        c = self.config
        start = open_run(c, self.run_dir, self.trainer.load_checkpoint)
        if self.rehearsal is not None:
            self.rehearsal.begin(start)  # the placement check, before the first step
        if start:  # the workers get the resumed weights (checksum checked) before they generate
            self.sync.push(start)
            self.version = start
        self.producer.start_at(start + 1)
        self.loggers = open_loggers(c, self.run_dir, purge_step=start + 1)
        self.run_dir.write_status("running")
        log.info("run directory: %s (steps %d..%d)", self.run_dir.path, start + 1, c.run.total_steps)
        saved = start  # the step of the newest checkpoint
        bar = progress(None, desc="training", total=c.run.total_steps - start, unit="step")
        step = start + 1
        while step <= c.run.total_steps:
            self.stop_if_preempted(step - 1, saved)
            try:
                metrics = self.step(step)
                if self.eval_set is not None and (
                    step == c.run.total_steps or (c.run.eval_every and step % c.run.eval_every == 0)
                ):
                    held_out, phase = self.timeline.run("eval", "driver", step, self.evaluate)
                    metrics.update(held_out, **{"timing_s/eval": phase.seconds})
                if step % c.run.checkpoint_every == 0 or step == c.run.total_steps:
                    self.save_checkpoint(step)
                    saved = step
            except Exception as exc:
                dead = self.recovery.dead_ranks()
                if not dead:
                    message = self.failure_message(step, exc)
                    self.run_dir.write_status("failed", message)
                    raise TrainingError(message) from exc
                saved = self.restart_trainer(step, dead, exc)
                bar.n = saved - start
                bar.refresh()
                step = saved + 1
                continue
            if self.recovery.restarts:
                metrics["recovery/trainer_restarts"] = self.recovery.restarts
            self.log(step, metrics)
            bar.update(1)
            step += 1
        bar.close()
        self.trainer.export(self.run_dir.final)
        self.run_dir.write_status("finished")
        log.info("exported the trained policy to %s", self.run_dir.final)
        return self.run_dir.path

    def log(self, step: int, metrics: dict) -> None:
        self.run_dir.log_metrics(metrics)
        self.timeline.flush()
        for logger in self.loggers:
            logger.log_metrics(step, metrics)
        steps_log.info(console_line(step, self.config.run.total_steps, metrics))

    def save_checkpoint(self, step: int) -> None:
        keep = self.config.run.keep_checkpoints
        self.timeline.run(
            "checkpoint", "trainer", step,
            lambda: self.trainer.save_checkpoint(self.run_dir.checkpoints, extra={"step": step}, keep=keep),
        )  # fmt: skip

    def restart_trainer(self, step: int, dead: list[int], exc: Exception) -> int:
        """A trainer rank died during `step`: the group restarts from the newest checkpoint (`TrainerRecovery`),
        the steps produced ahead on newer weights are thrown away, and the run goes on from the checkpoint's
        step with the same data order; the loggers forget what came after it. Returns that step."""
        c = self.config
        self.producer.discard(timeout_s=c.rollout.call_timeout_s + c.judge.call_timeout_s)
        start = self.recovery.restart(step, dead, exc)
        self.version = start
        self.producer.start_at(start + 1)
        for logger in self.loggers:
            close_quietly(logger)
        self.loggers = open_loggers(c, self.run_dir, purge_step=start + 1)
        return start

    def stop_if_preempted(self, last: int, saved: int) -> None:
        """After a SIGTERM (app/train/preemption.py): a checkpoint of the last complete step, status `preempted`, and
        Preempted, whose message names the resume command; the caller's `finally` closes the actors."""
        if self.preemption is None or not self.preemption.requested:
            return
        c = self.config
        if last > saved:
            self.save_checkpoint(last)
        if last:
            message = (f"preempted (SIGTERM) after step {last} of {c.run.total_steps}; its checkpoint is kept; resume "
                       f"with: audio-thinker train --resume run.output_dir={self.run_dir.path}")
        else:
            message = "preempted (SIGTERM) before step 1 was complete; nothing to keep: run the same command again"
        self.run_dir.write_status("preempted", message)
        raise Preempted(message)

    def failure_message(self, step: int, exc: Exception) -> str:
        """Name the cause and what is kept; nothing of the failed step is logged or synced."""
        if isinstance(exc, JudgeError):
            cause = f"the judge at {self.judge.url} failed after retries ({exc}); no reward is invented"
        elif isinstance(exc, ActorDiedError):
            cause = str(exc)
        elif isinstance(exc, TimeoutError):
            cause = f"a remote call timed out ({exc})"
        else:
            cause = f"{type(exc).__name__}: {one_line(exc)}"
        latest = latest_checkpoint(self.run_dir.checkpoints)
        kept = (
            f"resume from {latest} with run.resume=true run.output_dir={self.run_dir.path}"
            if latest
            else "no checkpoint was written yet"
        )
        return f"step {step} failed: {cause}. Metrics up to step {step - 1} are in {self.run_dir.metrics_path}; {kept}"

    def evaluate(self) -> dict[str, float]:
        """Accuracy and no-think rate on the held-out split: one greedy answer per question (`eval/*` metrics)."""
        c = self.config
        n = len(self.eval_set) if c.run.eval_limit is None else min(c.run.eval_limit, len(self.eval_set))
        items = [self.eval_set[i] for i in range(n)]
        requests = [
            GenerationRequest(self.sampler.prompt(q), self.eval_set.audio(i), seed=request_seed(c.run.seed, -1, i))
            for i, q in enumerate(items)
        ]
        sampling = SamplingConfig(n=1, max_new_tokens=c.rollout.max_new_tokens, logprobs=False, greedy=True)
        outputs = self.rollout.generate(requests, sampling, min_version=self.version)
        return summarize_for_training(items, [o[0].text for o in outputs], c.prompt.letter_choices)

    def close(self) -> None:
        """End every part (each even when another fails to close), then Ray if this driver started it. Steps
        produced ahead are abandoned (`Producer.close`)."""
        for part in (*self.loggers, self.sync, *([self.rehearsal] if self.rehearsal else [])):
            close_quietly(part)
        RunParts(self.judge, self.rollout, self.trainer, self.reference).close()
        if self.placement is not None:
            close_quietly(self.placement)
        self.producer.close()
        if self.owns_ray and ray.is_initialized():
            ray.shutdown()


def run_training(config: Config, reward_fn: RewardFn | None = None, actor_logs: Path | None = None) -> Path:
    """A whole run; once its actors are up, a SIGTERM is a preemption notice (Preempted after the step in flight).
    The guard goes in after `ray.init`, which installs a SIGTERM handler of its own (exit at once)."""
    driver = Driver.from_config(config, reward_fn, actor_logs)
    try:
        with PreemptionGuard() as guard:
            driver.preemption = guard
            return driver.train()
    finally:
        driver.close()
