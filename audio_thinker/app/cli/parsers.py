"""The `audio-thinker` argument parser: one subcommand per job, each bound to its handler in `commands.py`.

Typed commands take their options from pydantic models next to their code (`serve-judge`, `eval`, the data and
Table 1 commands); the rest are declared here. Light to import: building the parser (and `--help`) loads no
torch, transformers, Ray or vLLM (tests/unit/test_cli_imports.py). A usage error is one stderr line, exit code 2.
"""

from __future__ import annotations

import argparse
from typing import NoReturn

from audio_thinker.app.cli import commands
from audio_thinker.app.dashboard.cli import add_dashboard_parser
from audio_thinker.app.data.options import TINY_MODELS, AvqaOptions, CotOptions
from audio_thinker.app.eval.options import add_eval_parser
from audio_thinker.app.table1.options import add_table1_parsers
from audio_thinker.core.config import RewardConfig
from audio_thinker.core.options import add_model_arguments
from audio_thinker.core.vocab import INVALID_ACCURACY, VARIANTS
from reward_server.options import add_serve_parser

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
JOBS = ("auto", "train", "sft")


class Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (`audio-thinker train: unrecognized arguments: --x`), exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")

    def parse_args(self, args=None, namespace=None):
        """As argparse's, but an unknown option is reported by the subcommand it was given to."""
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            self._chosen(parsed).error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed

    def _chosen(self, parsed: argparse.Namespace) -> argparse.ArgumentParser:
        """The innermost subcommand parser that `parsed` went through."""
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction) and getattr(parsed, action.dest, None):
                child = action.choices[getattr(parsed, action.dest)]
                return child._chosen(parsed) if isinstance(child, Parser) else child
        return self


def _log_level_option(parser: argparse.ArgumentParser, default: str | None) -> None:
    parser.add_argument(
        "--log-level",
        type=str.upper,
        choices=LOG_LEVELS,
        default=default,
        help="logging threshold; DEBUG also prints the traceback of an error "
        "(default: AUDIO_THINKER_LOG_LEVEL, else INFO)",
    )


def _overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides (default: none)")


def _run_options(p: argparse.ArgumentParser, what: str) -> None:
    """`train` and `sft`: config, resume and console options."""
    p.add_argument("--config", default=None, help=f"YAML config or preset name (default: none, {what})")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run saved in run.output_dir from its last checkpoint, with the config saved there; "
        "refused when run.output_dir holds no saved run; an override that changes what the run is (steps, seed, "
        "data, model, rewards, lr ...) is refused (default: off)",
    )
    p.add_argument(
        "--resume-if-exists",
        action="store_true",
        help="resume the run in run.output_dir when it holds one, else start it there: for a job that a "
        "scheduler restarts, e.g. a KubeRay RayJob (default: off)",
    )
    p.add_argument(
        "--allow-config-change",
        action="store_true",
        help="with --resume: accept run-defining changes; they are logged and recorded in the run directory's "
        "config_changes.jsonl (default: off)",
    )
    p.add_argument(
        "--rehearse",
        action="store_true",
        help="rehearse a GPU preset here: its whole topology (ranks, workers, judge backend, reference placement, "
        "placement groups, ZeRO stage, sync) on a local Ray cluster that declares its GPUs, every actor on the CPU "
        "with the tiny models; the swaps are printed and recorded in the run directory's rehearsal.json, and every "
        "step is checked (docs/placement.md) (default: off)",
    )
    p.add_argument(
        "--verbose",
        action="store_true",
        help="show every log line, the actors' and engines' too, on the console (default: off: the progress bar, "
        "one line per step and warnings; the rest goes to the run directory's logs/)",
    )
    _overrides(p)


def _data_parsers(sub, common) -> None:
    p = sub.add_parser(
        "make-tiny", parents=[common], help="build the tiny policies (random init, optional warm-up), judge, tokenizer"
    )
    p.add_argument("--out", required=True, help="folder to write one Hugging Face folder per model into (required)")
    p.add_argument("--seed", type=int, default=0, help="initialisation seed; output is deterministic (default: 0)")
    p.add_argument(
        "--only", nargs="*", choices=TINY_MODELS, default=None, help="build only these models (default: all four)"
    )
    p.add_argument(
        "--warmup-steps",
        type=int,
        default=0,
        help="steps of supervised format warm-up for the three policies, so that they write well-formed "
        "<think>/<answer> responses (default: 0, pure random init; the CPU demo uses 150)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace model folders that exist under --out, e.g. the demo's warmed-up policies (default: refuse)",
    )
    p.set_defaults(func=commands.make_tiny)

    p = sub.add_parser(
        "make-synthetic", parents=[common], help="write a synthetic audio QA set (real wav files + AVQA manifest)"
    )
    p.add_argument("--out", required=True, help="output folder; audio/ and <split>.jsonl are written there (required)")
    p.add_argument("--n", type=int, required=True, help="number of questions, at least 1 (required)")
    p.add_argument("--seed", type=int, default=0, help="generator seed; output is deterministic (default: 0)")
    p.add_argument("--split", default="train", help="manifest name: <split>.jsonl, a plain file name (default: train)")
    p.add_argument(
        "--overwrite", action="store_true", help="replace an existing split of the same name (default: refuse)"
    )
    p.set_defaults(func=commands.make_synthetic)

    p = sub.add_parser(
        "prepare-avqa",
        parents=[common],
        help="extract AVQA's audio (16 kHz mono wav) and write the R1-AQA jsonl that training reads",
        description="Reads AVQA's annotation file (train_qa.json / val_qa.json), extracts each video's audio "
        "track, writes OUT/SPLIT.jsonl and OUT/SPLIT-report.json (every row left out, and why). A rerun resumes.",
    )
    add_model_arguments(p, AvqaOptions)
    p.set_defaults(func=commands.prepare_avqa)

    p = sub.add_parser(
        "make-cot",
        parents=[common],
        help="chain-of-thought data: caption every clip with the policy, then ask an OpenAI-compatible endpoint for "
        "a rationale that ends at the correct answer",
        description="Step 1 captions every clip of --data with --captioner (greedy, batched); step 2 asks "
        "--rationale-url for a rationale from caption, question and correct answer. A rationale that does not end "
        "at the correct answer is rejected and counted. A rerun does only what is missing and retries failed requests.",
    )
    add_model_arguments(p, CotOptions)
    p.set_defaults(func=commands.make_cot)


def _rewards_parser(sub, common) -> None:
    p = sub.add_parser(
        "rewards", parents=[common], help="recompute Audio-Thinker rewards and advantages for dumped rollouts"
    )
    p.add_argument("--input", required=True, help="JSONL, one sample per line; see docs/rewards.md (required)")
    p.add_argument("--step", type=int, required=True, help="global step of the batch (required)")
    p.add_argument("--total-steps", type=int, required=True, help="T, the total training steps (required)")
    p.add_argument(
        "--variant", default="atar_cr_tr", choices=VARIANTS, help="reward preset (default: atar_cr_tr, the full method)"
    )
    p.add_argument(
        "--invalid-accuracy",
        default=RewardConfig.model_fields["invalid_accuracy"].default,
        choices=INVALID_ACCURACY,
        help="R_a of invalid samples: worst = the step's case-4 value, zero = 0 (default: %(default)s)",
    )
    p.set_defaults(func=commands.rewards)


def _run_parsers(sub, common) -> None:
    p = sub.add_parser(
        "train",
        parents=[common],
        help="Audio-Thinker GRPO training (also the entrypoint of `ray job submit`)",
        description="Runs the embedded tiny CPU run when no --config is given. Joins the Ray cluster of RAY_ADDRESS, "
        "else starts a local one. Overrides: section.key=value, e.g. run.total_steps=10 reward.variant=atar_cr.",
    )
    _run_options(p, "the embedded tiny CPU run")
    p.set_defaults(func=commands.train)

    ablate, report = add_table1_parsers(sub, parents=[common])
    ablate.set_defaults(func=commands.ablate)
    report.set_defaults(func=commands.report)

    p = sub.add_parser(
        "sft",
        parents=[common],
        help="supervised fine-tuning (answer-only or CoT targets) on the trainer engine: the paper's SFT baselines",
        description="Trains the policy on <answer>X</answer> (sft.target=answer) or <think>rationale</think>"
        "<answer>X</answer> (sft.target=cot) targets with the DeepSpeed trainer of `train`; same run directory, "
        "checkpoints, resume and export. Presets: sft-a, sft-b, sft-c, sft-d (the paper's Table 1 rows).",
    )
    _run_options(p, "the tiny CPU run")
    p.set_defaults(func=commands.sft)

    p = sub.add_parser(
        "plan",
        parents=[common],
        help="where every actor of a run goes and an estimate of each GPU's memory, before anything starts",
        description="Prints the placement (node, GPU, share) of every actor and each GPU's memory estimate: ZeRO "
        "model states (DeepSpeed's estimator), activations with and without gradient checkpointing, the reference, "
        "vLLM's reservation and KV cache, the judge; against run.gpu_memory_gb (default: nvidia-smi). Exit code 2 "
        "when a GPU does not fit or an actor of a GPU run has no GPU. Formulas: docs/placement.md.",
    )
    p.add_argument("--config", default=None, help="YAML config or preset name (default: none, the tiny CPU run)")
    p.add_argument(
        "--job",
        choices=JOBS,
        default="auto",
        help="plan the config as `audio-thinker train` runs it (trainer, rollout workers, judge, reference) or as "
        "`audio-thinker sft` does (trainer ranks only); auto: sft when the config has an sft: section, as the "
        "sft-* presets do (default: auto)",
    )
    _overrides(p)
    p.set_defaults(func=commands.plan)

    p = sub.add_parser(
        "export",
        parents=[common],
        help="export a kept checkpoint of a run to a Hugging Face folder (offline: no Ray, no GPU)",
        description="Export a kept checkpoint of a run to a Hugging Face folder: by default the latest, into "
        "DIR/final (or DIR/export-step-N with --step N). Reads DeepSpeed's shards on the CPU, no Ray or trainer "
        "(a LoRA run's adapters are merged into the base model's weights). Prints the folder.",
    )
    p.add_argument("--run", required=True, metavar="DIR", help="the run directory (required)")
    p.add_argument(
        "--step", type=int, default=None, help="the checkpoint's step, >= 1 (default: none, the latest kept)"
    )
    p.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="output folder (default: none, DIR/final or DIR/export-step-N inside the run directory)",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace the output folder when it exists (default: refuse)"
    )
    p.set_defaults(func=commands.export)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="audio-thinker",
        description="RL for audio language models that learn when and how to think (Audio-Thinker).",
    )
    _log_level_option(parser, None)
    # Every subcommand takes --log-level too; SUPPRESS keeps a value given before the subcommand.
    common = argparse.ArgumentParser(add_help=False)
    _log_level_option(common, argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _data_parsers(sub, common)
    _rewards_parser(sub, common)
    add_serve_parser(sub, parents=[common]).set_defaults(func=commands.serve_judge)
    add_eval_parser(sub, parents=[common]).set_defaults(func=commands.evaluate)
    add_dashboard_parser(sub, parents=[common])
    _run_parsers(sub, common)
    return parser


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """Every (nested) subcommand parser by its prog, e.g. "audio-thinker eval score"."""
    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                found[child.prog] = child
                found.update(subcommands(child))
    return found
