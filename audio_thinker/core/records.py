"""`RolloutRecord`: one sample of a training step as the driver sees it, from generation through the judge to
its reward terms and advantage. It is the row of the run directory's rollout dumps (`to_json`), the input of
`audio-thinker rewards`, and what a reward hook receives."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from audio_thinker.core.data import AudioQuestion
from audio_thinker.core.protocol import Parsed
from audio_thinker.core.rewards import SampleReward, SampleVerdict


@dataclass
class RolloutRecord:
    # the question
    step: int
    group: str  # the GRPO group: the question id
    sample: int  # 0..G-1 within the group
    question_id: str
    audio_path: str
    difficulty: str | None
    category: str | None
    question: str
    choices: list[str]
    answer: str
    letters: bool
    # the completion and its parse
    response: str
    num_tokens: int
    finish_reason: str
    mode: str  # think | no_think | invalid
    think: str | None
    answer_text: str | None
    correct: bool
    weights_version: int = 0  # the policy weights version that sampled it (the optimizer step; 0: the initial one)
    # judge verdicts (None: not asked)
    consistency: int | None = None
    consistency_prob: float | None = None
    think_quality: float | None = None
    # reward terms and advantage (None until the step's rewards are computed)
    format: float | None = None
    accuracy: float | None = None
    consistency_reward: float | None = None
    think_reward: float | None = None
    total: float | None = None
    advantage: float | None = None

    @classmethod
    def of(cls, step: int, question: AudioQuestion, index: int, sample, parsed: Parsed, correct: bool, letters: bool):
        """The record of sample `index` of a question's group (`sample`: the engine's text, token ids, finish)."""
        q = question
        return cls(
            step=step, group=q.id, sample=index, question_id=q.id, audio_path=str(q.audio_path),
            difficulty=q.difficulty, category=q.task, question=q.question, choices=q.choices, answer=q.answer,
            letters=letters, response=sample.text, num_tokens=len(sample.token_ids),
            finish_reason=sample.finish_reason, mode=parsed.mode, think=parsed.think, answer_text=parsed.answer,
            correct=correct, weights_version=sample.weights_version,
        )  # fmt: skip

    def verdict(self) -> SampleVerdict:
        return SampleVerdict(self.mode, self.correct, self.group, self.consistency, self.think_quality)

    def set_reward(self, reward: SampleReward) -> None:
        self.format, self.accuracy = reward.format, reward.accuracy
        self.consistency_reward, self.think_reward = reward.consistency, reward.think
        self.total, self.advantage = reward.total, reward.advantage

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, row: dict) -> RolloutRecord:
        """A dumped row back (keys this version does not know are ignored)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in row.items() if k in names})
