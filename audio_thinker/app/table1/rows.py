"""The rows of the paper's Table 1: what a run of each row changes in a config, and the paper's numbers; and rows
of our own for the Qwen3-Omni family (the same methods, no paper numbers: the paper trains two other models).

The numbers are data (`paper.json`, with their source and the paper's own inconsistencies noted), read
here and nowhere else. A row is trained by GRPO with one reward variant and prompt mode (`train`), by SFT
on answer or CoT targets (`sft`), or not at all (the base model, "reproduce" in the paper: evaluated as it is).
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
# ... and an `audio-thinker sft` run: answer-only targets, or <think> rationale targets with the think prompt.
SFT_METHODS: dict[str, tuple[str, ...]] = {
    "SFT": ("sft.target=answer", "prompt.mode=no_think"),
    "SFT+CoT": ("sft.target=cot", "prompt.mode=think"),
}
BASE_METHOD = "-"
# What the rows set: a user override of one of these would make the run another row.
ROW_KEYS = ("reward.variant", "prompt.mode", "sft.target")
Kind = Literal["base", "grpo", "sft"]
# Rows of our own (not in the paper): the Qwen3-Omni thinker as it is and under each GRPO reward variant.
QWEN3_OMNI_ROWS = {
    "qwen3-omni-base": BASE_METHOD,
    "qwen3-omni-grpo": "GRPO",
    "qwen3-omni-grpo-cot": "GRPO+CoT",
    "qwen3-omni-atar": "GRPO+ATAR",
    "qwen3-omni-atar-cr": "GRPO+ATAR+CR",
    "qwen3-omni-atar-cr-tr": "GRPO+ATAR+CR+TR",
}


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
        return "sft" if self.method in SFT_METHODS else "grpo"

    @property
    def overrides(self) -> tuple[str, ...]:
        """The config overrides that make a run this row (none for a base row)."""
        return GRPO_METHODS.get(self.method) or SFT_METHODS.get(self.method, ())

    @property
    def prompt_mode(self) -> str:
        """The prompt the row is trained and evaluated with (the base models: the adaptive prompt)."""
        return dict(o.split("=", 1) for o in self.overrides).get("prompt.mode", "adaptive")


@cache
def paper_table() -> dict:
    """paper.json as written: source, notes, and every row's family, method and scores."""
    return json.loads(files(__package__).joinpath(PAPER_FILE).read_text())


def rows() -> dict[str, Row]:
    """Every row of Table 1, in the paper's order."""
    return {
        name: Row(name, row["family"], row["method"], row["scores"]) for name, row in paper_table()["rows"].items()
    }


def all_rows() -> dict[str, Row]:
    """Every row `ablate` runs: the paper's, then ours for Qwen3-Omni (their paper numbers empty)."""
    return rows() | {name: Row(name, "qwen3_omni", method, {}) for name, method in QWEN3_OMNI_ROWS.items()}


def row_of_config(config: Config, kind: Kind) -> Row | None:
    """The row a `train` (kind grpo) or `sft` run's config is, by family and the keys its rows set; None: none."""
    c = config
    values = {"reward.variant": c.reward.variant, "prompt.mode": c.prompt.mode, "sft.target": c.sft.target}
    for row in all_rows().values():
        if row.kind == kind and row.family == config.model.family:
            if all(values[key] == value for key, value in (o.split("=", 1) for o in row.overrides)):
                return row
    return None
