"""The training driver (single controller): one Audio-Thinker GRPO step after another, over its parts.

A step, as the README's data flow: sample the step's questions -> the rollout pool generates G samples each
-> parse into `RolloutRecord`s -> the judge fills verdicts (HTTP, concurrent, while the reference computes its
log-probs, and the trainer the old ones when several updates per batch need them) -> the reward hook gives
every reward term and the group advantages (ATAR at (step, T) by default) -> the GRPO update(s) -> weight sync
to the rollout workers (checksums checked) -> metrics, rollout dump, checkpoint, evaluation. Steps are numbered
1..T (docs/architecture.md).

Nothing is invented on failure: a judge that stays unreachable, a dead actor or a non-finite loss stops the
run with a message naming the cause; the last checkpoint stays the resume point.
"""

from __future__ import annotations

import math
import time
import zlib
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path

import numpy as np
import ray

from actors.group import ActorDiedError
from actors.placement import PlacementError, RunPlacement
from actors.reference import Reference
from actors.rollout_worker import RolloutPool
from actors.trainer_group import PolicyTrainerGroup
from actors.weight_sync import WeightSync
from audio_thinker.app.errors import Preempted, TrainingError
from audio_thinker.core.accuracy import summarize_for_training
from audio_thinker.app.train.judging import Judge, call_judge
from audio_thinker.app.train.launch import check_inputs, connect_ray, prepare_data, start_judge
from audio_thinker.app.train.loggers import check_loggers, open_loggers
from audio_thinker.app.train.preemption import PreemptionGuard
from audio_thinker.app.train.run_dir import RunDir, default_output_dir
from audio_thinker.app.train.run_start import open_run, resume_step
from audio_thinker.app.train.step_metrics import console_line, step_metrics
from audio_thinker.app.train.step_rollout import StepRollout, drop_stale, phase_seconds
from audio_thinker.core.config import BenchToggles, Config, RewardConfig
from audio_thinker.core.data import AudioQuestion, Dataset
from audio_thinker.core.encoding import EncodedPrompt, PromptEncoder
from audio_thinker.core.chat import render_chat
from audio_thinker.core.log import STEPS, get_logger
from audio_thinker.core.models import load_feature_extractor, load_tokenizer
from audio_thinker.core.progress import progress
from audio_thinker.core.protocol import build_instruction, is_correct, load_template, parse_response
from audio_thinker.core.records import RolloutRecord
from audio_thinker.core.rewards import RewardBatch, compute_rewards, drop_zero_std_groups, needs_judge
from reward_server.client import JudgeError
from rollout.engine import GenerationRequest, Sample, SamplingConfig
from trainer.checkpoint import latest_checkpoint
from trainer.logprobs import PolicyBatch
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


def step_questions(dataset: Dataset, seed: int, step: int, per_step: int) -> list[int]:
    """Indices of the questions of `step` (1-based): consecutive slices of per-epoch shuffles.

    A pure function of (seed, step), so a resumed run continues the data order without storing it.
    """
    n = len(dataset)
    start = (step - 1) * per_step
    out = []
    for pos in range(start, start + per_step):
        epoch, offset = divmod(pos, n)
        out.append(dataset.shuffled_order(seed, epoch)[offset])
    return out


def request_seed(seed: int, step: int, index: int) -> int:
    return zlib.crc32(f"{seed}/{step}/{index}".encode())


def policy_batch(encoded: list[EncodedPrompt], samples: list[list[Sample]]) -> PolicyBatch:
    flat = [(k, s) for k, group in enumerate(samples) for s in group]
    engine_lp = (
        [np.asarray(s.logprobs, dtype=np.float32) for _, s in flat]
        if all(s.logprobs is not None for _, s in flat)
        else None
    )
    return PolicyBatch(
        prompts=encoded,
        prompt_index=[k for k, _ in flat],
        completion_ids=[list(s.token_ids) for _, s in flat],
        engine_logprobs=engine_lp,
    )


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
        self.toggles = toggles or BenchToggles()
        self.preemption = preemption
        self.rollout, self.trainer, self.reference, self.judge, self.run_dir = (
            rollout,
            trainer,
            reference,
            judge,
            run_dir,
        )
        self.train_set, self.eval_set = train_set, eval_set
        self.reward_fn = reward_fn or paper_reward(c.reward, c.run.total_steps)
        self.needed = needs_judge(c.reward.variant) if judge is not None else set()
        self.template = load_template(c.prompt.mode, c.prompt.template_file)
        self.encoder = encoder or PromptEncoder(
            load_tokenizer(c.model.policy_path), load_feature_extractor(c.model.policy_path)
        )
        self.sampling = SamplingConfig.from_rollout(c.rollout)
        self.sync = WeightSync(trainer, rollout, c.trainer.sync_backend)
        self.version = 0  # the weights version of the trainer (and, once synced, of every worker)
        self.producer: ThreadPoolExecutor | None = None  # produces steps ahead with run.max_staleness > 0
        self.ahead: dict[int, Future] = {}
        self.next_produced = 1
        self.owns_ray = False
        self.placement: RunPlacement | None = None
        self.loggers: list = []

    @classmethod
    def from_config(
        cls,
        config: Config,
        reward_fn: RewardFn | None = None,
        actor_logs: Path | None = None,
        toggles: BenchToggles | None = None,
    ) -> Driver:
        """Models and data on disk, Ray, then the actors: judge, rollout pool, trainer group, reference.
        `actor_logs`: the folder a local run's actors write their output to (None: the console)."""
        c = config
        check_inputs(c, needs_judge_model=reward_fn is None and needs_judge(c.reward.variant) and not c.judge.url)
        check_loggers(c)
        if c.trainer.lora is not None:  # a target that matches nothing fails here, before Ray starts
            try:
                check_lora(c.model.policy_path, c.model.family, c.trainer.lora)
            except ValueError as exc:
                raise TrainingError(str(exc)) from None
        train_set, eval_set = prepare_data(c)
        owns_ray = connect_ray(actor_logs)
        parts: list = []
        try:
            try:  # every actor's bundle reserved up front, or a named error at once
                placement = RunPlacement(c, with_judge=reward_fn is None)
            except PlacementError as exc:
                raise TrainingError(str(exc)) from exc
            parts.append(placement)
            judge = start_judge(c, placement) if reward_fn is None else None
            parts.append(judge)
            rollout = RolloutPool(
                c.rollout, c.model.policy_path, c.model.family, c.model.dtype, c.run.seed, placement.slots("rollout")
            )
            parts.append(rollout)
            trainer = PolicyTrainerGroup(
                c.model.policy_path,
                c.model.family,
                c.trainer,
                c.run.total_steps,
                c.model.dtype,
                placement.slots("trainer"),
                toggles,
            )
            parts.append(trainer)
            reference = Reference(
                c.model.policy_path,
                c.model.family,
                c.reference,
                c.trainer.micro_batch_size,
                c.model.dtype,
                placement.slots("reference"),
                toggles,
            )
        except BaseException:
            for part in reversed([p for p in parts if p is not None]):
                _close_quietly(part)
            if owns_ray:
                ray.shutdown()
            raise
        run_dir = RunDir(c.run.output_dir or default_output_dir(c.run.name))
        driver = cls(c, rollout, trainer, reference, judge, run_dir, train_set, eval_set, reward_fn, toggles=toggles)
        driver.owns_ray = owns_ray
        driver.placement = placement
        return driver

    # -------------------------------------------------------------------------------- one step

    @property
    def separate_old_pass(self) -> bool:
        """Whether the old log-probs need their own forward: the policy moves between the updates of one batch
        (else they are the loss pass's, detached)."""
        return self.config.trainer.updates_per_batch > 1 or self.toggles.recompute_old_logprobs

    def prompt(self, q: AudioQuestion) -> str:
        """The chat prompt of a question, in the configured prompt mode (training and evaluation alike)."""
        c = self.config
        instruction = build_instruction(q.question, q.choices, c.prompt.mode, self.template, c.prompt.letter_choices)
        return render_chat(c.model.family, instruction)

    def requests(self, step: int) -> tuple[list[AudioQuestion], list[EncodedPrompt], list[GenerationRequest]]:
        """The step's questions, their prompts as the trainer encodes them, and the rollout requests (seeded)."""
        c = self.config
        idx = step_questions(self.train_set, c.run.seed, step, c.run.questions_per_step)
        items = [self.train_set[i] for i in idx]
        audios = [self.train_set.audio(i) for i in idx]
        prompts = [self.prompt(q) for q in items]
        encoded = [self.encoder.encode(p, a) for p, a in zip(prompts, audios)]
        requests = [
            GenerationRequest(p, a, seed=request_seed(c.run.seed, step, k))
            for k, (p, a) in enumerate(zip(prompts, audios))
        ]
        return items, encoded, requests

    def parse_group(self, step: int, q: AudioQuestion, enc: EncodedPrompt, group: list[Sample]) -> list[RolloutRecord]:
        """A question's samples as records (mode, answer, correctness); the prompt ids must be the trainer's."""
        letters = self.config.prompt.letter_choices
        records = []
        for j, s in enumerate(group):
            if list(s.prompt_token_ids) != enc.input_ids:
                raise TrainingError(
                    f"step {step}: the rollout engine tokenized question {q.id} differently from "
                    "the trainer's prompt encoder (audio placeholder expansion mismatch)"
                )
            parsed = parse_response(s.text)
            correct = parsed.mode != "invalid" and is_correct(parsed, q.choices, q.answer, letters)
            records.append(RolloutRecord.of(step, q, j, s, parsed, correct, letters))
        return records

    def produce(self, step: int, min_version: int) -> StepRollout:
        """Everything of a step that does not need the trainer: the samples, their records and verdicts, the
        reference log-probs (and, when the trainer is idle, i.e. synchronous, the old ones).

        Batch mode: the whole step is generated, then the judge and the reference run side by side. Streaming
        (`run.stream_groups`): one generation call per question, and each group goes to the judge and the
        reference as soon as it returns; the results are put back in question order, so the order in which
        groups arrive changes nothing.
        """
        c = self.config
        timeline = self.run_dir.timeline
        streaming = c.run.stream_groups
        items, encoded, requests = self.requests(step)
        temperature = c.rollout.temperature

        def judge(recs: list[RolloutRecord]) -> int:
            return call_judge(self.judge, c.judge, recs, self.needed) if self.needed else 0

        groups: dict[int, list[Sample]] = {}
        records: dict[int, list[RolloutRecord]] = {}
        timing: dict[str, float] = {}
        with ThreadPoolExecutor(max_workers=4) as pool:
            ref_f: dict[int | None, Future] = {}
            judge_f: dict[int | None, Future] = {}
            t0 = time.time()
            for k, group in self.rollout.stream(requests, self.sampling, min_version, 1 if streaming else None):
                groups[k], records[k] = group, self.parse_group(step, items[k], encoded[k], group)
                if streaming:
                    part = policy_batch([encoded[k]], [group])
                    ref_f[k] = pool.submit(timeline.timed_span, "ref log-probs", "reference", step,
                                           lambda part=part: self.reference.compute_logprobs(part, temperature))
                    judge_f[k] = pool.submit(timeline.timed_span, "judge", "judge", step,
                                             lambda recs=records[k]: judge(recs))
            t_gen = time.time()
            timeline.span("generate", "driver", t0, t_gen, step)
            timing["timing_s/gen"] = t_gen - t0
            for w, spans in enumerate(self.rollout.generation_spans()):
                for span in spans:
                    timeline.span("generate", f"rollout worker {w}", *span, step)
            order = range(len(requests))
            if streaming:  # back in question order, whatever order the groups arrived in
                ref_f, judge_f = {k: ref_f[k] for k in order}, {k: judge_f[k] for k in order}
            batch = policy_batch(encoded, [groups[k] for k in order])
            flat = [r for k in order for r in records[k]]
            old_f = None
            if self.separate_old_pass and c.run.max_staleness == 0:  # the trainer holds the weights that sampled
                old_f = pool.submit(timeline.timed_span, "old log-probs", "trainer", step,
                                    lambda: self.trainer.compute_logprobs(batch, temperature))
            if not streaming:
                ref_f = {None: pool.submit(timeline.timed_span, "ref log-probs", "reference", step,
                                           lambda: self.reference.compute_logprobs(batch, temperature))}
                judge_f = {None: pool.submit(timeline.timed_span, "judge", "judge", step, lambda: judge(flat))}
            judged = sum(f.result()[0] for f in judge_f.values())
            timing["timing_s/judge"] = phase_seconds(judge_f)
            batch.ref_logprobs = [lp for f in ref_f.values() for lp in f.result()[0]]  # question order
            timing["timing_s/ref"] = phase_seconds(ref_f)
            if old_f is not None:
                batch.old_logprobs = old_f.result()[0]
                timing["timing_s/old_logprob"] = phase_seconds({0: old_f})
        return StepRollout(step, flat, batch, timing, judged)

    def rollout_of(self, step: int) -> StepRollout:
        """The step's rollout: produced ahead by the producer thread (`run.max_staleness` > 0) or here and now;
        then the steps up to `step + max_staleness` are started on the current weights."""
        k = self.config.run.max_staleness
        if k == 0:
            return self.produce(step, self.version)
        self.schedule(step)
        produced = self.ahead.pop(step).result()
        self.schedule(step + k)
        return produced

    def schedule(self, last: int) -> None:
        """Start the production of every step up to `last` (and T) that has not been started."""
        if self.producer is None:
            self.producer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rollout-producer")
        for step in range(self.next_produced, min(last, self.config.run.total_steps) + 1):
            self.ahead[step] = self.producer.submit(self.produce, step, self.version)
            self.next_produced = step + 1

    def step(self, step: int) -> dict:
        c = self.config
        t_step = time.perf_counter()
        produced = self.rollout_of(step)
        records, batch, timing = produced.records, produced.batch, dict(produced.timing)
        records, batch, staleness = drop_stale(records, batch, self.version, c.run.max_staleness)
        if batch.old_logprobs is None and self.separate_old_pass:  # proximal policy: the trainer's weights now
            batch.old_logprobs, timing["timing_s/old_logprob"] = self.run_dir.timeline.timed(
                "old log-probs", "trainer", step, lambda: self.trainer.compute_logprobs(batch, c.rollout.temperature)
            )

        rewards = self.reward_fn(records, step)
        for record, reward in zip(records, rewards.samples, strict=True):
            record.set_reward(reward)
        batch.advantages = [r.advantage for r in records]
        train, sync = self.update(step, batch, records)

        metrics = {
            "step": step,
            **step_metrics(records, rewards),
            **train,
            **timing,
            **sync,
            **staleness,
            "judge/items": produced.judged,
            **self.rollout.take_recovery(),  # worker and reference restarts, requests and calls made again
            **self.reference.take_recovery(),
        }
        metrics["timing_s/step"] = time.perf_counter() - t_step
        self.run_dir.write_rollouts(step, [r.to_json() for r in records])
        every = c.run.log_completions_every
        if every and step % every == 0:
            for logger in self.loggers:
                logger.log_completions(step, records)
        return metrics

    def update(self, step: int, batch: PolicyBatch, records: list[RolloutRecord]) -> tuple[dict, dict]:
        """One optimizer step on the step's samples, then the new weights to the workers as version `step`.

        With `run.drop_zero_std_groups` (DAPO's dynamic sampling) the groups whose rewards are all equal carry
        no gradient and are left out; when no group is left the step takes no update and syncs nothing.
        """
        c = self.config
        dropped = {}
        if c.run.drop_zero_std_groups:
            kept, n_dropped = drop_zero_std_groups([r.total for r in records], [r.group for r in records])
            dropped = {"count/dropped_groups": n_dropped}
            if not kept:
                log.warning("step %d: every group has equal rewards; no update this step", step)
                return dropped, {}
            batch = batch.select(kept)
        timed = self.run_dir.timeline.timed
        train, _ = timed("train", "trainer", step, lambda: self.trainer.train_step(batch, c.rollout.temperature))
        if not math.isfinite(train["actor/loss"]) or not math.isfinite(train.get("actor/grad_norm", 0.0)):
            raise FloatingPointError(
                f"non-finite loss {train['actor/loss']} / grad norm {train.get('actor/grad_norm')}; "
                "the weights of this step are not synced or saved"
            )
        sync, _ = timed("sync", "trainer", step, lambda: self.sync.push(step))
        self.version = step
        return {**train, **dropped}, sync

    # -------------------------------------------------------------------------------- the run

    def train(self) -> Path:
        """Every step from the start (or the resume point) to T, then the exported policy in `final/`."""
        c = self.config
        start = open_run(c, self.run_dir, self.trainer.load_checkpoint)
        if start:  # the workers get the resumed weights (checksum checked) before they generate
            self.sync.push(start)
            self.version = start
        self.next_produced = start + 1
        self.loggers = open_loggers(c, self.run_dir, purge_step=start + 1)
        self.run_dir.write_status("running")
        log.info("run directory: %s (steps %d..%d)", self.run_dir.path, start + 1, c.run.total_steps)
        saved = start  # the step of the newest checkpoint
        restarts = 0
        bar = progress(None, desc="training", total=c.run.total_steps - start, unit="step")
        step = start + 1
        while step <= c.run.total_steps:
            self.stop_if_preempted(step - 1, saved)
            try:
                metrics = self.step(step)
                timed = self.run_dir.timeline.timed
                if self.eval_set is not None and (
                    step == c.run.total_steps or (c.run.eval_every and step % c.run.eval_every == 0)
                ):
                    metrics.update(timed("eval", "driver", step, self.evaluate)[0])
                if step % c.run.checkpoint_every == 0 or step == c.run.total_steps:
                    timed(
                        "checkpoint",
                        "trainer",
                        step,
                        lambda step=step: self.trainer.save_checkpoint(
                            self.run_dir.checkpoints, extra={"step": step}, keep=c.run.keep_checkpoints
                        ),
                    )
                    saved = step
            except Exception as exc:
                dead = self.trainer.dead_ranks() if restarts < c.trainer.max_restarts else []
                if dead:
                    restarts += 1
                    saved = self.restart_trainer(step, dead, exc, restarts)
                    bar.n = saved - start
                    bar.refresh()
                    step = saved + 1
                    continue
                message = self.failure_message(step, exc)
                self.run_dir.write_status("failed", message)
                raise TrainingError(message) from exc
            if restarts:
                metrics["recovery/trainer_restarts"] = restarts
            self.run_dir.log_metrics(metrics)
            self.run_dir.timeline.flush()
            for logger in self.loggers:
                logger.log_metrics(step, metrics)
            steps_log.info(console_line(step, c.run.total_steps, metrics))
            bar.update(1)
            step += 1
        bar.close()
        self.trainer.export(self.run_dir.final)
        self.run_dir.write_status("finished")
        log.info("exported the trained policy to %s", self.run_dir.final)
        return self.run_dir.path

    def restart_trainer(self, step: int, dead: list[int], exc: Exception, restarts: int) -> int:
        """A trainer rank died during `step`: start the group anew, load the newest checkpoint, cut what was logged
        after it, rewind the workers to its weights and go on from there with the same data order (a resume
        within the job). Steps produced ahead on newer weights are waited for and thrown away. Returns the
        checkpoint's step."""
        c = self.config
        for future in self.ahead.values():  # their calls end on their own deadlines; their samples are not used
            future.exception(timeout=c.rollout.call_timeout_s + c.judge.call_timeout_s)
        self.ahead.clear()
        self.run_dir.timeline.flush()
        self.trainer.restart()
        self.sync.reset()
        start = resume_step(self.run_dir, self.trainer.load_checkpoint)
        self.sync.push(start, rewind=True)
        self.version = start
        self.next_produced = start + 1
        for logger in self.loggers:
            _close_quietly(logger)
        self.loggers = open_loggers(c, self.run_dir, purge_step=start + 1)
        cause = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        log.warning(
            "trainer rank %s died during step %d (%s); restart %d of trainer.max_restarts=%d: the trainer group is "
            "back at step %d, steps %d..%d are lost and done again",
            ", ".join(map(str, dead)), step, cause, restarts, c.trainer.max_restarts, start, start + 1, step,
        )  # fmt: skip
        return start

    def stop_if_preempted(self, last: int, saved: int) -> None:
        """After a SIGTERM (app/train/preemption.py): a checkpoint of the last complete step, status `preempted`, and
        Preempted, whose message names the resume command; the caller's `finally` closes the actors."""
        if self.preemption is None or not self.preemption.requested:
            return
        c = self.config
        if last > saved:
            self.trainer.save_checkpoint(self.run_dir.checkpoints, extra={"step": last}, keep=c.run.keep_checkpoints)
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
            notes = "; ".join(getattr(exc, "__notes__", []))
            cause = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}" + (
                f" ({notes})" if notes else ""
            )
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
            GenerationRequest(self.prompt(q), self.eval_set.audio(i), seed=request_seed(c.run.seed, -1, i))
            for i, q in enumerate(items)
        ]
        sampling = SamplingConfig(n=1, max_new_tokens=c.rollout.max_new_tokens, logprobs=False, greedy=True)
        t = time.perf_counter()
        outputs = self.rollout.generate(requests, sampling, min_version=self.version)
        result = summarize_for_training(items, [o[0].text for o in outputs], c.prompt.letter_choices)
        result["timing_s/eval"] = time.perf_counter() - t
        return result

    def close(self) -> None:
        """End every part (each even when another fails to close), then Ray if this driver started it. Steps
        produced ahead are abandoned: their calls fail once the actors are gone, and the producer thread ends
        (waited for a little, so that it does not call into a Ray that is shut down)."""
        if self.producer is not None:
            self.producer.shutdown(wait=False, cancel_futures=True)
        parts = (*self.loggers, self.sync, self.rollout, self.trainer, self.reference, self.judge, self.placement)
        for part in parts:
            if part is not None:
                _close_quietly(part)
        wait(list(self.ahead.values()), timeout=30.0)
        self.ahead.clear()
        if self.owns_ray and ray.is_initialized():
            ray.shutdown()


def _close_quietly(part) -> None:
    try:
        (part.shutdown if hasattr(part, "shutdown") else part.close)()
    except Exception as exc:  # closing must go on for the other parts
        log.warning("closing %s failed: %s", type(part).__name__, exc)


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
