"""A rehearsal's checks on the live run (docs/placement.md): what each check observes, asked of the actors; the
verdicts are app/train/rehearsal_checks.py's, recorded in `<run>/rehearsal.json` and one console line each.

- `begin`: the placement of every actor against the plan, before the first step;
- `check_step` after every update and sync: the judge's backends on the step's items, every worker's weights, and
  on the first step of the run the ranks' update against one rank's: a one-rank trainer (`trainer.num_ranks=1`,
  the same ZeRO stage and micro-batch, outside the run's bundles) started with the run, given the same batch,
  then ended; a resumed run skips it (its ranks no longer hold the weights the folder does).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from actors.placement import RunPlacement, locate
from actors.rollout_pool import RolloutPool
from actors.trainer_group import PolicyTrainerGroup
from audio_thinker.app.train.judging import Judge, judge_item
from audio_thinker.app.train.plan import layout
from audio_thinker.app.train.rehearsal import RehearsalRecord, trainer_groups
from audio_thinker.app.train.rehearsal_checks import (
    CheckResult,
    Expected,
    RehearsalError,
    Scored,
    check_judge,
    check_placement,
    check_update,
    check_weights,
)
from audio_thinker.app.train.run_dir import RunDir
from audio_thinker.core.config import Config
from audio_thinker.core.models import compute_device
from audio_thinker.core.log import STEPS, get_logger
from audio_thinker.core.placement import GroupSpec
from audio_thinker.core.records import RolloutRecord
from reward_server.backends import load_backend
from reward_server.prompts import ALL_LABELS, PROMPTS, render_ids
from reward_server.schemas import JudgeItem
from reward_server.scoring import label_distribution
from rollout.weight_sync import receive_published
from trainer.logprobs import PolicyBatch

log = get_logger(__name__)
steps_log = get_logger(STEPS)


def expected_placement(config: Config, groups: list[GroupSpec], pg_ids: list[str | None]) -> list[Expected]:
    """Every actor of the groups where the plan puts it (`plan.layout`), in its group's placement group."""
    _, where, _ = layout(config, groups)
    return [
        Expected(s.actor, pg, s.num_cpus, s.num_gpus, tuple(g.name for g in where.get(s.actor, [])))
        for g, pg in zip(groups, pg_ids)
        for s in g.slots
    ]


class Rehearsal:
    """The checks of one rehearsal over the run's parts (`rollout`, `judge`, `placement` None in `sft`)."""

    def __init__(
        self,
        config: Config,
        run_dir: RunDir,
        trainer: PolicyTrainerGroup,
        actors: dict[str, object],
        expected: list[Expected],
        rollout: RolloutPool | None = None,
        judge: Judge | None = None,
    ) -> None:
        self.config, self.run_dir, self.trainer, self.rollout, self.judge = config, run_dir, trainer, rollout, judge
        self.actors, self.expected = actors, expected
        self.record = RehearsalRecord(run_dir.path)
        self.first_step: int | None = None  # the step whose update is compared with one rank's
        self.judge_backend = None
        m, t = config.model, config.trainer
        one = t.model_copy(update={"num_ranks": 1, "num_gpus_per_rank": 0.0})  # every GPU is in the run's bundles
        self.single: PolicyTrainerGroup | None = PolicyTrainerGroup(
            m.policy_path, m.family, one, config.run.total_steps, m.dtype
        )
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rehearsal")
        self.single_ready: Future = self.pool.submit(self.single.ready)  # starts while the run starts

    @classmethod
    def of_run(cls, config: Config, run_dir: RunDir, parts, placement: RunPlacement) -> Rehearsal:
        """For `train`: every actor group of the run, in the placement groups `placement` reserved."""
        actors = {f"trainer rank {i}": a for i, a in enumerate(parts.trainer.ranks.actors)}
        actors.update({f"rollout worker {i}": a for i, a in enumerate(parts.rollout.group.actors)})
        actors["reference model"] = parts.reference.group.actors[0]
        if parts.judge is not None and hasattr(parts.judge.service, "group"):
            actors["judge server"] = parts.judge.service.group.actors[0]
        expected = expected_placement(config, placement.groups, [pg.id.hex() for pg in placement.pgs])
        return cls(config, run_dir, parts.trainer, actors, expected, parts.rollout, parts.judge)

    @classmethod
    def of_sft(cls, config: Config, run_dir: RunDir, trainer: PolicyTrainerGroup) -> Rehearsal:
        """For `sft`: the trainer ranks, which Ray places by their shares (no placement groups)."""
        actors = {f"trainer rank {i}": a for i, a in enumerate(trainer.ranks.actors)}
        groups = trainer_groups(config)
        return cls(config, run_dir, trainer, actors, expected_placement(config, groups, [None] * len(groups)))

    # -------------------------------------------------------------------------------- checks

    def begin(self, start: int) -> None:
        """Before the first step of this process (`start` steps are done): the placement check; the update
        check is armed for step 1 of a new run."""
        self.first_step = 1 if start == 0 else None
        if self.first_step is None:
            self._close_single()
            log.info("rehearsal: resumed at step %d, the update check (first step only) is skipped", start)
        self._run(lambda: check_placement(self.expected, locate(self.actors), compute_device().type))

    def check_step(self, step: int, records: list[RolloutRecord], batch: PolicyBatch, train: dict) -> dict:
        """After the step's update and sync: judge, update (first step), weights; the checks' seconds."""
        started = time.perf_counter()
        if self.judge is not None:
            self._run(lambda: self._judge(step, records))
        if step == self.first_step:
            self._run(lambda: self._update(step, batch, train, "actor/loss"))
        if self.rollout is not None:
            rollout = self.rollout
            self._run(lambda: check_weights(step, self.trainer.weights_checksum(), rollout.worker_infos()))
        return {"timing_s/rehearsal": time.perf_counter() - started}

    def check_sft_step(self, step: int, batch: PolicyBatch, metrics: dict) -> None:
        if step == self.first_step:
            self._run(lambda: self._update(step, batch, metrics, "sft/loss"))

    def _update(self, step: int, batch: PolicyBatch, multi: dict, loss_key: str) -> CheckResult:
        """The same batch on one rank, from the weights both started from; the weights after each update."""
        self.single_ready.result()
        single = self.single
        before = dict(receive_published(single.publish_weights(0)))
        if loss_key == "sft/loss":
            one = single.sft_step(batch)
        else:
            one = single.train_step(batch, self.config.rollout.temperature)
        after_1 = dict(receive_published(single.publish_weights(step)))
        after_n = dict(receive_published(self.trainer.publish_weights(step)))
        self._close_single()
        self.first_step = None  # once: a step redone after a trainer restart is not compared again
        ranks = self.config.trainer.num_ranks
        losses, norms = (multi[loss_key], one[loss_key]), (multi["actor/grad_norm"], one["actor/grad_norm"])
        return check_update(step, ranks, losses, norms, after_n, after_1, before)

    def _judge(self, step: int, records: list[RolloutRecord]) -> CheckResult:
        """The run judge's scores of the step's items against the transformers backend's label distributions."""
        jobs = [(i, name, value) for i, r in enumerate(records)
                for name, value in (("consistency", r.consistency_prob), ("think_quality", r.think_quality))
                if value is not None]  # fmt: skip
        if jobs and self.judge_backend is None:
            m = self.config.model  # the run's judge loads in the run's dtype too (app/train/launch.py)
            # progress=False: the console is the run's, with no loading bar of the check's own
            self.judge_backend = load_backend("transformers", m.judge_path, dtype=m.dtype, progress=False)
        backend = self.judge_backend
        prompts = [render_ids(PROMPTS[name], JudgeItem(**judge_item(records[i])), backend.tokenizer).ids
                   for i, name, _ in jobs]  # fmt: skip (the server's own rendering: user fields as plain text)
        rows = backend.label_logprobs(prompts) if jobs else []
        scored = []
        for row, (i, name, value) in zip(rows, jobs):
            prompt = PROMPTS[name]
            p = label_distribution(row[[ALL_LABELS.index(label) for label in prompt.labels]])
            scored.append(Scored(i, name, value, tuple(float(x) for x in p), prompt.values))
        return check_judge(step, scored, self.config.judge.score_mode)

    def _run(self, check: Callable[[], CheckResult]) -> None:
        """Make the check, record its result and time, print one line, and stop the rehearsal when it failed."""
        started = time.perf_counter()
        result = check()
        record = result.record()
        record["seconds"] = round(time.perf_counter() - started, 3)
        self.record.add_check(record)
        where = f"step {result.step}: " if result.step is not None else ""
        summary = ", ".join(f"{k} {v:.3g}" for k, v in result.measured.items() if isinstance(v, float))
        steps_log.info("rehearsal %scheck %s %s%s", where, result.check, "passed" if result.ok else "FAILED",
                       f" ({summary})" if summary else "")  # fmt: skip
        try:
            result.raise_if_failed()
        except RehearsalError as exc:
            if result.step is None:  # before the first step: the driver's step loop does not see it
                self.run_dir.write_status("failed", str(exc))
            raise

    def _close_single(self) -> None:
        if self.single is not None:
            single, self.single = self.single, None
            try:
                self.single_ready.result()
            finally:
                single.shutdown()

    def close(self) -> None:
        try:
            if self.single is not None:
                self.single_ready.cancel()
                self.single.shutdown()
                self.single = None
        finally:
            self.pool.shutdown(wait=False, cancel_futures=True)
            if self.judge_backend is not None:
                self.judge_backend.close()
