"""The training driver (single controller): one Audio-Thinker GRPO step after another, over Ray actors.

Per step: sample questions -> rollout workers generate G samples each -> parse -> judge (HTTP, concurrent,
overlapping the old/reference log-probs) -> rewards with ATAR balancing at (step, T) -> group advantages
-> GRPO update -> weight sync to the rollout workers (checksums checked) -> metrics, dumps, checkpoint,
evaluation. Steps are numbered 1..T; ATAR anneals with s = 1 - step/T, so the last step uses the base rewards.

Nothing is invented on failure: a judge that stays unreachable, a dead actor or a non-finite loss stops the
run with a message naming the cause; the last checkpoint stays the resume point.
"""

from __future__ import annotations

import asyncio
import math
import os
import secrets
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import ray

from audio_thinker.app.errors import TrainingError
from audio_thinker.app.run_dir import RunDir, default_output_dir
from audio_thinker.core.config import Config
from audio_thinker.core.data import Dataset, load_dataset
from audio_thinker.core.encoding import EncodedPrompt, PromptEncoder
from audio_thinker.core.families import render_chat
from audio_thinker.core.log import get_logger
from audio_thinker.core.models import load_feature_extractor, load_tokenizer
from audio_thinker.core.protocol import build_instruction, is_correct, load_template, parse_response
from audio_thinker.core.rewards import SampleVerdict, compute_rewards, needs_judge
from rollout.engine import GenerationRequest, Sample, SamplingConfig

log = get_logger(__name__)


# ------------------------------------------------------------------------------------------------ data


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


def prepare_data(config: Config) -> tuple[Dataset, Dataset | None]:
    from audio_thinker.app.synthetic import write_synthetic_dataset

    d = config.data
    root = Path(d.audio_root)
    for manifest, size, split in (
        (d.train_manifest, d.synthetic_train_size, "train"),
        (d.eval_manifest, d.synthetic_eval_size, "eval"),
    ):
        if manifest and not Path(manifest).is_file() and d.make_synthetic_if_missing:
            log.info("writing the synthetic %s split (%d questions) to %s", split, size, root)
            written = write_synthetic_dataset(root, n=size, seed=config.run.seed, split=split)
            if written.resolve() != Path(manifest).resolve():
                raise TrainingError(f"data.{split}_manifest={manifest} but the synthetic set was written to {written}")
    kwargs = dict(audio_root=root, skip_bad_rows=d.skip_bad_rows, max_seconds=d.max_audio_seconds)
    train = load_dataset(d.train_manifest, "avqa", **kwargs)
    held_out = load_dataset(d.eval_manifest, d.eval_format, **kwargs) if d.eval_manifest else None
    return train, held_out


def prepare_models(config: Config) -> None:
    """Build the tiny models where the config allows it and the folders are missing (the CPU default), with
    `model.tiny_warmup_steps` of format warm-up; warn when an existing tiny policy was built with another."""
    from audio_thinker.app.tiny import ensure_tiny_models, read_provenance

    m = config.model
    missing = [p for p in (m.policy_path, m.judge_path) if not (Path(p) / "config.json").is_file()]
    if missing and m.make_tiny_if_missing:
        for folder in sorted({str(Path(p).parent) for p in missing}):
            ensure_tiny_models(folder, seed=config.run.seed, warmup_steps=m.tiny_warmup_steps)
        missing = [p for p in missing if not (Path(p) / "config.json").is_file()]
    if missing:
        raise TrainingError(
            f"model folder(s) {missing} not found (tiny models are named "
            "<folder>/qwen2_audio, qwen2_5_omni, qwen3_judge; real ones must exist)"
        )
    built = read_provenance(m.policy_path)
    if built is not None and built["warmup_steps"] != m.tiny_warmup_steps:
        log.warning(
            "tiny policy %s was built with %d format warm-up steps, model.tiny_warmup_steps=%d: using it as is "
            "(rebuild: audio-thinker make-tiny --out %s --warmup-steps %d)",
            m.policy_path,
            built["warmup_steps"],
            m.tiny_warmup_steps,
            Path(m.policy_path).parent,
            m.tiny_warmup_steps,
        )


# ------------------------------------------------------------------------------------------------ Ray


def connect_ray(config: Config) -> bool:
    """Join the cluster of RAY_ADDRESS (a `ray job submit` run sets it), else start a new local one.
    Returns whether this call started Ray (and so must shut it down)."""
    if ray.is_initialized():
        return False
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
        log.info("joined the Ray cluster at %s", address)
    else:
        ray.init(
            address="local",
            num_cpus=os.cpu_count(),
            include_dashboard=False,
            runtime_env={"env_vars": {k: v for k, v in os.environ.items() if k.startswith(("VLLM_", "TORCH_"))}},
        )
        log.info("started a local Ray instance (%d CPUs)", os.cpu_count())
    return not address


@dataclass
class Judge:
    url: str
    api_key: str
    actor: object | None = None


def start_judge(config: Config) -> Judge | None:
    if not needs_judge(config.reward.variant):
        return None
    if config.judge.url:
        key = config.judge.api_key or os.environ.get("AUDIO_THINKER_JUDGE_API_KEY")
        return Judge(config.judge.url, key)
    from actors.judge_server import JudgeServer

    key = secrets.token_urlsafe(24)
    host = "127.0.0.1" if len(ray.nodes()) == 1 else ray.util.get_node_ip_address()
    actor = JudgeServer.options(num_cpus=config.judge.num_cpus, num_gpus=config.judge.num_gpus).remote(
        config.model.judge_path, config.judge, key, host
    )
    url = ray.get(actor.url.remote(), timeout=config.judge.timeout_s)
    return Judge(url, key, actor)


# ------------------------------------------------------------------------------------------------ judge


def judge_items(rows: list[dict], needed: set[str]) -> dict[tuple[str, ...], list[int]]:
    """Which samples need which verdicts: consistency only for correct think answers (it is zeroed for wrong
    ones), think quality for every think answer."""
    groups: dict[tuple[str, ...], list[int]] = {}
    for i, row in enumerate(rows):
        if row["mode"] != "think":
            continue
        scores = tuple(
            s for s in ("consistency", "think_quality") if s in needed and (s != "consistency" or row["correct"])
        )
        if scores:
            groups.setdefault(scores, []).append(i)
    return groups


def call_judge(judge: Judge, config: Config, rows: list[dict], needed: set[str]) -> int:
    """Fill rows' `consistency` / `think_quality` from the judge; concurrent chunked requests. Returns items judged."""
    from reward_server.client import AsyncJudgeClient

    groups = judge_items(rows, needed)
    chunk = config.judge.request_chunk

    async def run() -> None:
        async with AsyncJudgeClient(
            judge.url, api_key=judge.api_key, timeout_s=config.judge.timeout_s, max_retries=config.judge.max_retries
        ) as client:
            jobs = []
            for scores, idx in groups.items():
                for k in range(0, len(idx), chunk):
                    part = idx[k : k + chunk]
                    items = [
                        {
                            "question": rows[i]["question"],
                            "think": rows[i]["think"],
                            "answer": rows[i]["answer_text"],
                            "choices": rows[i]["choices"],
                        }
                        for i in part
                    ]
                    jobs.append((part, scores, client.judge(items, scores=list(scores))))
            results = await asyncio.gather(*(job for _, _, job in jobs))
            for (part, scores, _), res in zip(jobs, results):
                for i, r in zip(part, res):
                    if "consistency" in scores:
                        rows[i]["consistency"] = int(r.consistency)
                        rows[i]["consistency_prob"] = float(r.consistency_prob)
                    if "think_quality" in scores:
                        rows[i]["think_quality"] = float(r.think_quality)

    asyncio.run(run())
    return sum(len(idx) for idx in groups.values())


# ------------------------------------------------------------------------------------------------ metrics


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else 0.0


def step_metrics(rows: list[dict], batch) -> dict[str, float]:
    valid = [r for r in rows if r["mode"] != "invalid"]
    think = [r for r in rows if r["mode"] == "think"]
    no_think = [r for r in rows if r["mode"] == "no_think"]
    out = {
        "think_rate": batch.think_rate,
        "gamma_think": batch.gamma_think,
        "gamma_no_think": batch.gamma_no_think,
        "reward/total": _mean([r["total"] for r in rows]),
        "reward/accuracy": _mean([r["accuracy"] for r in rows]),
        "reward/format": _mean([r["format"] for r in rows]),
        "reward/consistency": _mean([r["consistency_reward"] for r in rows]),
        "reward/think": _mean([r["think_reward"] for r in rows]),
        "reward/advantage_abs": _mean([abs(r["advantage"]) for r in rows]),
        "acc/overall": _mean([float(r["correct"]) for r in rows]),
        "acc/think": _mean([float(r["correct"]) for r in think]),
        "acc/no_think": _mean([float(r["correct"]) for r in no_think]),
        "count/think": len(think),
        "count/no_think": len(no_think),
        "count/invalid": len(rows) - len(valid),
        "response_length/mean": _mean([r["num_tokens"] for r in rows]),
        "response_length/max": max((r["num_tokens"] for r in rows), default=0),
        "response_length/clip_ratio": _mean([float(r["finish_reason"] == "length") for r in rows]),
    }
    for difficulty in sorted({r["difficulty"] for r in valid if r["difficulty"]}):
        sub = [r for r in valid if r["difficulty"] == difficulty]
        out[f"no_think_rate/{difficulty}"] = _mean([float(r["mode"] == "no_think") for r in sub])
    return out


def console_line(step: int, total: int, m: dict) -> str:
    return (
        f"step {step}/{total} | reward {m['reward/total']:+.3f} | acc {m['acc/overall']:.2f} | "
        f"think {m['think_rate']:.2f} (g_t {m['gamma_think']:.2f} g_n {m['gamma_no_think']:.2f}) | "
        f"len {m['response_length/mean']:.0f} | loss {m.get('actor/loss', float('nan')):+.4f} | "
        f"{m['timing_s/step']:.1f}s"
    )


# ------------------------------------------------------------------------------------------------ driver


class Driver:
    """Owns the actors of one run and runs its steps."""

    def __init__(self, config: Config):
        from actors.reference import start_reference
        from actors.rollout_worker import RolloutPool
        from actors.trainer_group import PolicyTrainerGroup

        self.config = config
        c = config
        self.run_dir = RunDir(c.run.output_dir or default_output_dir(c.run.name))
        prepare_models(c)
        self.train_set, self.eval_set = prepare_data(c)
        self.template = load_template(c.prompt.mode, c.prompt.template_file)
        self.encoder = PromptEncoder(load_tokenizer(c.model.policy_path), load_feature_extractor(c.model.policy_path))
        self.sampling = SamplingConfig.from_rollout(c.rollout)
        self.needed = needs_judge(c.reward.variant)
        self.owns_ray = connect_ray(c)
        self.judge = self.pool = self.trainer = self.reference = None
        self.version, self.sync_open = 0, False
        try:
            self.judge = start_judge(c)
            self.pool = RolloutPool(c.rollout, c.model.policy_path, c.model.family, c.model.dtype, c.run.seed)
            self.trainer = PolicyTrainerGroup(
                c.model.policy_path, c.model.family, c.trainer, c.run.total_steps, c.model.dtype
            )
            self.reference = start_reference(c.model.policy_path, c.model.family, c.trainer, c.model.dtype)
            if self.judge is not None:
                from reward_server.client import JudgeClient

                with JudgeClient(self.judge.url, api_key=self.judge.api_key, timeout_s=c.judge.timeout_s) as client:
                    client.wait_ready(timeout_s=c.judge.timeout_s)
        except BaseException:
            self.close()
            raise

    # -------------------------------------------------------------------------------- one step

    def prompt(self, q) -> str:
        """The chat prompt of a question, in the configured prompt mode (training and evaluation alike)."""
        c = self.config
        instruction = build_instruction(q.question, q.choices, c.prompt.mode, self.template, c.prompt.letter_choices)
        return render_chat(c.model.family, instruction)

    def rollout(self, step: int) -> tuple[list[dict], list[EncodedPrompt], list[list[Sample]]]:
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
        samples = self.pool.generate(requests, self.sampling, min_version=self.version)
        rows = []
        for q, enc, group in zip(items, encoded, samples):
            for j, s in enumerate(group):
                if list(s.prompt_token_ids) != enc.input_ids:
                    raise TrainingError(
                        f"step {step}: the rollout engine tokenized question {q.id} differently from "
                        "the trainer's prompt encoder (audio placeholder expansion mismatch)"
                    )
                parsed = parse_response(s.text)
                correct = parsed.mode != "invalid" and is_correct(parsed, q.choices, q.answer, c.prompt.letter_choices)
                rows.append(
                    {
                        "step": step,
                        "group": q.id,
                        "sample": j,
                        "question_id": q.id,
                        "audio_path": str(q.audio_path),
                        "difficulty": q.difficulty,
                        "category": q.task,
                        "question": q.question,
                        "choices": q.choices,
                        "answer": q.answer,
                        "letters": c.prompt.letter_choices,
                        "response": s.text,
                        "num_tokens": len(s.token_ids),
                        "finish_reason": s.finish_reason,
                        "mode": parsed.mode,
                        "think": parsed.think,
                        "answer_text": parsed.answer,
                        "correct": correct,
                        "consistency": None,
                        "consistency_prob": None,
                        "think_quality": None,
                    }
                )
        return rows, encoded, samples

    def policy_batch(self, encoded: list[EncodedPrompt], samples: list[list[Sample]]):
        from trainer.logprobs import PolicyBatch

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

    def step(self, step: int) -> dict:
        c = self.config
        t_step = time.perf_counter()
        t = time.perf_counter()
        rows, encoded, samples = self.rollout(step)
        timing = {"timing_s/gen": time.perf_counter() - t}
        batch = self.policy_batch(encoded, samples)

        # The old and reference log-probs do not depend on the rewards: compute them while the judge works.
        temperature = c.rollout.temperature
        with ThreadPoolExecutor(max_workers=2) as pool:

            def timed(fn):
                start = time.perf_counter()
                return fn(), time.perf_counter() - start

            old_f = pool.submit(timed, lambda: self.trainer.compute_logprobs(batch, temperature))
            ref_f = pool.submit(
                timed,
                lambda: ray.get(
                    self.reference.compute_logprobs.remote(batch, temperature), timeout=c.trainer.timeout_s
                ),
            )
            t = time.perf_counter()
            judged = call_judge(self.judge, c, rows, self.needed) if self.judge is not None else 0
            timing["timing_s/judge"] = time.perf_counter() - t
            (old, timing["timing_s/old_logprob"]), (ref, timing["timing_s/ref"]) = old_f.result(), ref_f.result()

        verdicts = [
            SampleVerdict(
                mode=r["mode"],
                correct=r["correct"],
                group=r["group"],
                consistency=r["consistency"],
                think_quality=r["think_quality"],
            )
            for r in rows
        ]
        rewards = compute_rewards(verdicts, step, c.run.total_steps, c.reward.variant)
        for r, s in zip(rows, rewards.samples):
            r.update(
                format=s.format,
                accuracy=s.accuracy,
                consistency_reward=s.consistency,
                think_reward=s.think,
                total=s.total,
                advantage=s.advantage,
            )
        batch.advantages = [s.advantage for s in rewards.samples]
        batch.old_logprobs, batch.ref_logprobs = old, ref

        train = self.trainer.train_step(batch, temperature)
        if not math.isfinite(train["actor/loss"]) or not math.isfinite(train.get("actor/grad_norm", 0.0)):
            raise FloatingPointError(
                f"non-finite loss {train['actor/loss']} / grad norm {train.get('actor/grad_norm')}; "
                "the weights of this step are not synced or saved"
            )
        sync = self.sync_weights(step)

        metrics = {"step": step, **step_metrics(rows, rewards), **train, **timing, **sync, "judge/items": judged}
        metrics["timing_s/step"] = time.perf_counter() - t_step
        self.run_dir.write_rollouts(step, rows)
        return metrics

    def sync_weights(self, version: int) -> dict:
        """Push the trainer's weights to every rollout worker (object store or broadcast group, from config);
        every worker's checksum must equal the trainer's."""
        t = time.perf_counter()
        expected = self.trainer.weights_checksum()
        if self.config.trainer.sync_backend == "object_store":
            handle = self.trainer.publish_weights(version)
            report = self.pool.set_weights(handle, version, expected_checksum=expected)
            nbytes = handle.num_bytes
        else:
            if not self.sync_open:
                endpoint = self.trainer.sync_endpoint(len(self.pool.workers))
                self.trainer.open_sync(endpoint, self.pool.open_sync(endpoint))
                self.sync_open = True
            sent, reports = self.trainer.broadcast_weights(version, self.pool.receive_weights(version))
            report = self.pool.check_reports(reports, version, expected)
            nbytes = sent["bytes"]
        self.version = version
        return {"timing_s/sync": time.perf_counter() - t, "sync/bytes": float(nbytes), "sync/load_s": report["seconds"]}

    # -------------------------------------------------------------------------------- the run

    def resume(self) -> int:
        """Restore the latest checkpoint of the run directory; returns the step it ends at (0: fresh run)."""
        from trainer.checkpoint import latest_checkpoint

        latest = latest_checkpoint(self.run_dir.checkpoints)
        if latest is None:
            log.warning("resume: no checkpoint in %s, starting from step 1", self.run_dir.checkpoints)
            return 0
        state = self.trainer.load_checkpoint(latest)
        step = int(state["extra"]["step"])
        self.run_dir.truncate_after(step)
        self.sync_weights(step)
        log.info("resumed from %s at step %d", latest, step)
        return step

    def train(self) -> Path:
        from audio_thinker.core.progress import progress

        c = self.config
        resuming = c.run.resume and self.run_dir.metrics_path.parent.exists()
        self.run_dir.create(c)
        start = self.resume() if resuming else 0
        if not resuming and self.run_dir.logged_steps():
            raise TrainingError(f"{self.run_dir.path} already holds a run; set run.resume=true to continue it")
        self.run_dir.open_tensorboard(purge_step=start + 1)
        log.info("run directory: %s (steps %d..%d)", self.run_dir.path, start + 1, c.run.total_steps)
        steps = range(start + 1, c.run.total_steps + 1)
        for step in progress(steps, desc="training", total=len(steps), unit="step"):
            try:
                metrics = self.step(step)
                if self.eval_set is not None and (
                    step == c.run.total_steps or (c.run.eval_every and step % c.run.eval_every == 0)
                ):
                    metrics.update(self.evaluate())
                if step % c.run.checkpoint_every == 0 or step == c.run.total_steps:
                    self.trainer.save_checkpoint(
                        self.run_dir.checkpoints, extra={"step": step}, keep=c.run.keep_checkpoints
                    )
            except Exception as exc:
                raise TrainingError(self.failure_message(step, exc)) from exc
            self.run_dir.log_metrics(metrics)
            log.info(console_line(step, c.run.total_steps, metrics))
        return self.run_dir.path

    def failure_message(self, step: int, exc: Exception) -> str:
        """Name the cause and what is kept; nothing of the failed step is logged or synced."""
        from ray.exceptions import GetTimeoutError, RayActorError

        from reward_server.client import JudgeError
        from trainer.checkpoint import latest_checkpoint

        if isinstance(exc, JudgeError):
            cause = f"the judge at {self.judge.url} failed after retries ({exc}); no reward is invented"
        elif isinstance(exc, RayActorError):
            cause = f"an actor died ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        elif isinstance(exc, (GetTimeoutError, TimeoutError)):
            cause = f"a remote call timed out ({exc})"
        else:
            cause = f"{type(exc).__name__}: {exc}"
        latest = latest_checkpoint(self.run_dir.checkpoints)
        kept = (
            f"resume from {latest} with run.resume=true run.output_dir={self.run_dir.path}"
            if latest
            else "no checkpoint was written yet"
        )
        return f"step {step} failed: {cause}. Metrics up to step {step - 1} are in {self.run_dir.metrics_path}; {kept}"

    def evaluate(self) -> dict[str, float]:
        """Accuracy and no-think rate on the held-out split: one greedy answer per question (`eval/*` metrics)."""
        from audio_thinker.app.eval.scoring import summarize_for_training

        c = self.config
        n = len(self.eval_set) if c.run.eval_limit is None else min(c.run.eval_limit, len(self.eval_set))
        items = [self.eval_set[i] for i in range(n)]
        requests = [
            GenerationRequest(self.prompt(q), self.eval_set.audio(i), seed=request_seed(c.run.seed, -1, i))
            for i, q in enumerate(items)
        ]
        sampling = SamplingConfig(n=1, max_new_tokens=c.rollout.max_new_tokens, logprobs=False, greedy=True)
        t = time.perf_counter()
        outputs = self.pool.generate(requests, sampling, min_version=self.version)
        result = summarize_for_training(items, [o[0].text for o in outputs], c.prompt.letter_choices)
        result["timing_s/eval"] = time.perf_counter() - t
        return result

    def close(self) -> None:
        if self.sync_open:
            self.sync_open = False
            try:
                self.trainer.close_sync()
            except Exception as exc:
                log.warning("closing the weight-sync group failed: %s", exc)
        for part, stop in (
            (self.pool, lambda p: p.close()),
            (self.trainer, lambda t: t.shutdown()),
            (self.reference, ray.kill),
            (self.judge, lambda j: j.actor and ray.get(j.actor.stop.remote(), timeout=120)),
        ):
            if part is None:
                continue
            try:
                stop(part)
            except Exception as exc:  # closing must go on for the other parts
                log.warning("closing %s failed: %s", type(part).__name__, exc)
        self.run_dir.close()
        if self.owns_ray and ray.is_initialized():
            ray.shutdown()


def run_training(config: Config) -> Path:
    driver = Driver(config)
    try:
        return driver.train()
    finally:
        driver.close()
