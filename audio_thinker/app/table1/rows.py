"""The rows of the paper's Table 1: what a run of each row changes in a config, and the paper's numbers.

The numbers are data (`paper.json`, with their source and the paper's own inconsistencies noted), read
here and nowhere else. A row is trained by GRPO with one reward variant and prompt mode, by SFT (the SFT
baselines), or not at all (the base model, "reproduce" in the paper: evaluated as it is).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from typing import Literal

from audio_thinker.core.config import Config

PAPER_FILE = "paper.json"
# Method column of Table 1 -> the config keys that make a GRPO run that row (reward variant and prompt mode).
GRPO_METHODS: dict[str, tuple[str, ...]] = {
    "GRPO": ("reward.variant=grpo", "prompt.mode=no_think"),
    "GRPO+CoT": ("reward.variant=grpo_cot", "prompt.mode=think"),
    "GRPO+ATAR": ("reward.variant=atar", "prompt.mode=adaptive"),
    "GRPO+ATAR+CR": ("reward.variant=atar_cr", "prompt.mode=adaptive"),
    "GRPO+ATAR+CR+TR": ("reward.variant=atar_cr_tr", "prompt.mode=adaptive"),
}
SFT_PROMPTS = {"SFT": "no_think", "SFT+CoT": "think"}  # answer-only targets / <think> rationale targets
BASE_METHOD = "-"
# What the rows set: a user override of one of these would make the run another row.
ROW_KEYS = ("reward.variant", "prompt.mode")
Kind = Literal["base", "grpo", "sft"]


@dataclass(frozen=True)
class Row:
    name: str
    family: str
    method: str
    paper: dict[str, dict[str, float]]  # benchmark -> column (sound, music, speech, average) -> accuracy %

    @property
    def kind(self) -> Kind:
        if self.method == BASE_METHOD:
            return "base"
        return "sft" if self.method in SFT_PROMPTS else "grpo"

    @property
    def overrides(self) -> tuple[str, ...]:
        """The config overrides of a GRPO row (none for the others)."""
        return GRPO_METHODS.get(self.method, ())

    @property
    def prompt_mode(self) -> str:
        """The prompt the row is trained and evaluated with (the base models: the adaptive prompt)."""
        modes = dict(o.split("=", 1) for o in self.overrides)
        return modes.get("prompt.mode", SFT_PROMPTS.get(self.method, "adaptive"))


@cache
def paper_table() -> dict:
    """paper.json as written: source, notes, and every row's family, method and scores."""
    return json.loads(files(__package__).joinpath(PAPER_FILE).read_text())


def rows() -> dict[str, Row]:
    """Every row of Table 1, in the paper's order."""
    return {
        name: Row(name, row["family"], row["method"], row["scores"]) for name, row in paper_table()["rows"].items()
    }


def row_of_config(config: Config) -> Row | None:
    """The GRPO row a training config is (by family, reward variant and prompt mode), None if it is none."""
    for row in rows().values():
        if row.kind == "grpo" and row.family == config.model.family:
            wanted = dict(o.split("=", 1) for o in row.overrides)
            if wanted == {"reward.variant": config.reward.variant, "prompt.mode": config.prompt.mode}:
                return row
    return None
