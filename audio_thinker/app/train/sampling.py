"""The first half of a step, which needs no trainer: questions -> generate -> records -> judge alongside reference.

`Sampler.sample` is that flow for the whole step at once (one engine batch per rollout worker, then the judge
and the reference side by side); `Sampler.stream` is the same per question (`run.stream_groups`): each group goes
to the judge and the reference as soon as it returns, and the results are put back in question order, so the
order in which groups arrive changes nothing. Both give a `StepBatch`; `app/train/producer.py` runs them ahead
of the trainer with `run.max_staleness` > 0.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from actors.reference import Reference
from actors.rollout_pool import RolloutPool
from audio_thinker.app.errors import TrainingError
from audio_thinker.app.train.batch import StepBatch
from audio_thinker.app.train.timeline import Phase, Timeline
from audio_thinker.core.config import Config
from audio_thinker.core.data import AudioQuestion, Dataset
from audio_thinker.core.encoding import EncodedPrompt, PromptEncoder
from audio_thinker.core.chat import render_chat
from audio_thinker.core.protocol import build_instruction, is_correct, load_template, parse_response
from audio_thinker.core.records import RolloutRecord
from rollout.engine import GenerationRequest, Sample, SamplingConfig

# The judge's part: fill the records' verdicts, return the items judged.
JudgeFn = Callable[[list[RolloutRecord]], int]


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


class Sampler:
    """A step's samples, records, verdicts and reference log-probs, from the parts that produce them."""

    def __init__(
        self,
        config: Config,
        train_set: Dataset,
        encoder: PromptEncoder,
        rollout: RolloutPool,
        reference: Reference,
        judge: JudgeFn,
        timeline: Timeline,
    ) -> None:
        self.config, self.train_set, self.encoder = config, train_set, encoder
        self.rollout, self.reference, self.judge, self.timeline = rollout, reference, judge, timeline
        self.template = load_template(config.prompt.mode, config.prompt.template_file)
        self.sampling = SamplingConfig.from_rollout(config.rollout)

    def prompt(self, q: AudioQuestion) -> str:
        """The chat prompt of a question, in the configured prompt mode (training and evaluation alike)."""
        c = self.config
        instruction = build_instruction(q.question, q.choices, c.prompt.mode, self.template, c.prompt.letter_choices)
        return render_chat(c.model.family, instruction)

    def questions(self, step: int) -> tuple[list[AudioQuestion], list[EncodedPrompt], list[GenerationRequest]]:
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

    def records(self, step: int, q: AudioQuestion, enc: EncodedPrompt, group: list[Sample]) -> list[RolloutRecord]:
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

    def sample(self, step: int, version: int) -> StepBatch:
        """The whole step at once, from workers holding at least weights `version`."""
        items, encoded, requests = self.questions(step)
        groups, gen = self.timeline.run(
            "generate", "driver", step, lambda: self.rollout.generate(requests, self.sampling, min_version=version)
        )
        self._worker_spans(step)
        records = [r for k, group in enumerate(groups) for r in self.records(step, items[k], encoded[k], group)]
        batch = StepBatch.of(step, encoded, groups, records)
        temperature = self.config.rollout.temperature
        with ThreadPoolExecutor(max_workers=2) as pool:  # the judge alongside the reference
            judged = pool.submit(self.timeline.run, "judge", "judge", step, lambda: self.judge(records))
            ref = self.timeline.run(
                "ref log-probs", "reference", step,
                lambda: self.reference.compute_logprobs(batch.policy, temperature),
            )  # fmt: skip
            batch.judged, judge = judged.result()
        batch.policy.ref_logprobs = ref[0]
        batch.timing = {"timing_s/gen": gen.seconds, "timing_s/judge": judge.seconds, "timing_s/ref": ref[1].seconds}
        return batch

    def stream(self, step: int, version: int) -> StepBatch:
        """The same, question by question: one generation call per question, and the judge and the reference start
        on each group as it returns; results in question order."""
        items, encoded, requests = self.questions(step)
        temperature = self.config.rollout.temperature
        groups, records, judge_calls, ref_calls = {}, {}, {}, {}
        with ThreadPoolExecutor(max_workers=4) as pool:

            def arrived(k: int, group: list[Sample]) -> None:
                groups[k], records[k] = group, self.records(step, items[k], encoded[k], group)
                part = StepBatch.of(step, [encoded[k]], [group], records[k]).policy
                ref_calls[k] = pool.submit(
                    self.timeline.run, "ref log-probs", "reference", step,
                    lambda: self.reference.compute_logprobs(part, temperature),
                )  # fmt: skip
                judge_calls[k] = pool.submit(self.timeline.run, "judge", "judge", step, lambda: self.judge(records[k]))

            arrivals = self.rollout.stream(requests, self.sampling, version, per_call=1)
            _, gen = self.timeline.run("generate", "driver", step, lambda: [arrived(k, g) for k, g in arrivals])
            order = range(len(requests))
            judged = [judge_calls[k].result() for k in order]
            refs = [ref_calls[k].result() for k in order]
        self._worker_spans(step)
        batch = StepBatch.of(step, encoded, [groups[k] for k in order], [r for k in order for r in records[k]])
        batch.policy.ref_logprobs = [lp for logprobs, _ in refs for lp in logprobs]
        batch.judged = sum(n for n, _ in judged)
        batch.timing = {
            "timing_s/gen": gen.seconds,
            "timing_s/judge": Phase.covering(p for _, p in judged).seconds,
            "timing_s/ref": Phase.covering(p for _, p in refs).seconds,
        }
        return batch

    def _worker_spans(self, step: int) -> None:
        for w, spans in enumerate(self.rollout.generation_spans()):
            for span in spans:
                self.timeline.span("generate", f"rollout worker {w}", *span, step)
