"""The options of `audio-thinker ablate` and `audio-thinker report`, typed; the parsers derive from them.

Light to import (no torch, no Ray): the rows, the benchmark files and every row's config are checked
before anything starts.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from audio_thinker.core.options import OptionError, add_model_arguments
from audio_thinker.core.vocab import BENCHMARKS, Benchmark, EngineName


class BenchFile(BaseModel):
    """One benchmark to evaluate every row on: its layout and its file."""

    bench: Benchmark
    data: str

    @classmethod
    def parse(cls, text: str) -> BenchFile:
        name, sep, data = text.partition("=")
        if not sep or not data:
            raise OptionError(f"--bench {text!r}: expected NAME=FILE, e.g. mmau=/data/mmau-test-mini.json")
        if name not in BENCHMARKS:
            raise OptionError(f"--bench {text!r}: unknown benchmark {name!r} (one of {', '.join(BENCHMARKS)})")
        return cls(bench=name, data=data)


def parse_pairs(values: list[str]) -> list[tuple[str, str]]:
    """`--compare A,B` values as (A, B) pairs: B's accuracy minus A's on the same questions."""
    pairs = []
    for text in values:
        parts = [p.strip() for p in text.split(",")]
        if len(parts) != 2 or not all(parts) or parts[0] == parts[1]:
            raise OptionError(f"--compare {text!r}: expected two different rows as A,B, e.g. grpo-a,model-a")
        pairs.append((parts[0], parts[1]))
    return pairs


COMPARE_HELP = ("Rows to compare on the same questions as A,B (B minus A, a paired bootstrap), once per pair; "
                "consecutive rows of the paper's chain GRPO -> +ATAR -> +CR -> +TR are always compared.")


class AblateOptions(BaseModel):
    """Train and evaluate rows of the paper's Table 1, then write table1.md / table1.json beside the paper's."""

    model_config = ConfigDict(extra="forbid")

    preset: str | None = Field(
        None, description="Config (YAML file or preset name) every row starts from (none: the embedded tiny run)."
    )
    rows: list[str] = Field(
        description="Comma-separated rows of Table 1: sft-a,sft-b,grpo-a,grpo-b,model-a,model-b,model-c "
        "(Qwen2-Audio), sft-c,sft-d,grpo-c,grpo-d,model-d,model-e,model-f (Qwen2.5-Omni), the base models "
        "qwen2-audio-base / qwen2.5-omni-base; ours for Qwen3-Omni (no paper numbers): qwen3-omni-base, "
        "qwen3-omni-grpo, qwen3-omni-grpo-cot, qwen3-omni-atar, qwen3-omni-atar-cr, qwen3-omni-atar-cr-tr."
    )
    sft_preset: str | None = Field(
        None, description="Config the SFT rows (`audio-thinker sft`) start from, e.g. sft-a (none: --preset)."
    )
    cot_data: str | None = Field(
        None, description="Training rows with rationales (`make-cot` output) for the SFT+CoT rows sft-b / sft-d."
    )
    out: str | None = Field(None, description="Output folder, one run directory per row (none: runs/ablate-<time>).")
    bench: list[str] = Field(
        default_factory=list,
        description="Benchmarks as NAME=FILE (mmau=, mmau-v05.15.25=, mmau-pro=, mmar=, mmsu=, air=, synthetic=) "
        "every row is evaluated on "
        "(none: the config's held-out split, data.eval_manifest).",
    )
    eval_limit: int | None = Field(None, ge=1, description="Evaluate the first N questions of each benchmark only.")
    eval_engine: EngineName = Field("transformers", description="Generation engine of the evaluations.")
    seeds: int = Field(
        1, ge=1, description="Train (and evaluate) every trained row N times, with run.seed, run.seed+1, ...; the "
        "table gives each seed's numbers, their mean and its 95% interval."
    )
    compare: list[str] = Field(default_factory=list, description=COMPARE_HELP)
    rehearse: bool = Field(
        False,
        description="Rehearse every row here (`train --rehearse`, `sft --rehearse`; docs/placement.md): the preset's "
        "topology on the tiny models, each row evaluated on the swapped data.",
    )

    @field_validator("rows", mode="before")
    @classmethod
    def _split_rows(cls, value: object) -> object:
        """`--rows a,b`, `--rows a b` and a YAML list alike."""
        if isinstance(value, str):
            value = [value]
        if isinstance(value, list):
            value = [part.strip() for item in value for part in str(item).split(",") if part.strip()]
            if not value:
                raise ValueError("name at least one row")
        return value

    def pairs(self) -> list[tuple[str, str]]:
        return parse_pairs(self.compare)

    def benchmarks(self) -> list[BenchFile]:
        """The --bench values parsed and checked (each file exists)."""
        parsed = [BenchFile.parse(text) for text in self.bench]
        for b in parsed:
            if not Path(b.data).is_file():
                raise FileNotFoundError(f"--bench {b.bench}={b.data}: not a file")
        return parsed


class ReportOptions(BaseModel):
    """Table 1 and the no-think-rate figure from finished runs and their evaluations."""

    model_config = ConfigDict(extra="forbid")

    runs: list[str] = Field(
        description="Run directories (each a row by its row.json from `ablate`, else its config.yaml; several "
        "runs of a row with different run.seed are its seeds), with evaluations under DIR/eval/<bench>/.",
        json_schema_extra={"nargs": "+"},
    )
    out: str = Field(description="Folder to write table1.md, table1.json and the figures into.")
    compare: list[str] = Field(default_factory=list, description=COMPARE_HELP)
    overwrite: bool = Field(False, description="Replace the table1.md and table1.json that --out holds.")

    def pairs(self) -> list[tuple[str, str]]:
        return parse_pairs(self.compare)


def add_table1_parsers(subparsers: argparse._SubParsersAction, parents: Sequence[argparse.ArgumentParser] = ()):
    """`ablate` (options from AblateOptions plus config overrides) and `report` (from ReportOptions)."""
    ablate = subparsers.add_parser(
        "ablate",
        parents=list(parents),
        help="train and evaluate rows of the paper's Table 1; writes table1.md / table1.json (docs/ablations.md)",
        description="Each row is one `audio-thinker train` run per seed (a Ray job when RAY_ADDRESS is set, else a "
        "local process, one after the other) and one `audio-thinker eval` per run and benchmark; a rerun with the "
        "same --out skips what is done. Overrides apply to every row, e.g. run.total_steps=100.",
    )
    add_model_arguments(ablate, AblateOptions)
    ablate.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides (default: none)")
    report = subparsers.add_parser(
        "report",
        parents=list(parents),
        help="Table 1 and the no-think-rate-by-difficulty figure from finished runs (docs/ablations.md)",
        description=ReportOptions.__doc__,
    )
    add_model_arguments(report, ReportOptions)
    return ablate, report
