"""`audio-thinker` command line: one entry point, one subcommand per job.

Parsers live here, or next to the typed options they are derived from (`serve-judge`, `eval`); each
subcommand imports its heavy implementation (torch, Ray) only when it runs, so `--help` and option errors
come without them. Every handler returns a process exit code; a project error is one line on stderr and
exit code 2 (with the traceback under `--log-level DEBUG`).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from audio_thinker.app.dashboard.cli import DEFAULT_PORT, add_dashboard_parser
from audio_thinker.app.data.chat_client import ChatError
from audio_thinker.app.data.options import AvqaOptions, CotOptions
from audio_thinker.app.errors import CotError, EvalError, Preempted, TrainingError
from audio_thinker.app.eval.options import EvalOptions, ScoreOptions, add_eval_parser
from audio_thinker.app.eval.scoring import score_file
from audio_thinker.app.train.preemption import EXIT_PREEMPTED
from audio_thinker.app.cli.run_options import add_run_arguments, run_config
from audio_thinker.app.table1.options import AblateOptions, ReportOptions, add_table1_parsers
from audio_thinker.core.audio import AudioError
from audio_thinker.core.config import RewardConfig
from audio_thinker.core.log import setup_logging
from audio_thinker.core.manifests import DataError
from audio_thinker.core.options import OptionError, add_model_arguments, model_from_args
from audio_thinker.core.presets import ConfigError, load_config
from audio_thinker.core.protocol import TemplateError
from audio_thinker.core.vocab import INVALID_ACCURACY, VARIANTS
from reward_server.auth import AuthConfigError
from reward_server.client import JudgeError
from reward_server.options import ServeOptions, add_serve_parser

log = logging.getLogger(__name__)

# Errors whose message tells the user what to change: one line and exit code 2 (a traceback only at DEBUG).
USER_ERRORS = (
    OptionError,
    ConfigError,
    DataError,
    AudioError,
    TemplateError,
    EvalError,
    CotError,
    ChatError,
    JudgeError,
    TrainingError,
    AuthConfigError,
    FileNotFoundError,
    FileExistsError,
)
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
TINY_MODELS = ("qwen2_audio", "qwen2_5_omni", "qwen3_judge")


def _make_tiny(args: argparse.Namespace) -> int:
    if args.warmup_steps < 0:
        raise OptionError(f"--warmup-steps: must be >= 0, got {args.warmup_steps}")
    from audio_thinker.app.data.tiny import make_tiny_models  # torch/Ray: loaded only when this command runs

    paths = make_tiny_models(args.out, seed=args.seed, only=args.only, warmup_steps=args.warmup_steps)
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


def _make_synthetic(args: argparse.Namespace) -> int:
    from audio_thinker.app.data.synthetic import write_synthetic_dataset  # numpy/soundfile: only when this runs

    manifest = write_synthetic_dataset(args.out, n=args.n, seed=args.seed, split=args.split, overwrite=args.overwrite)
    print(f"wrote {args.n} questions: {manifest}")
    return 0


def _prepare_avqa(args: argparse.Namespace) -> int:
    from audio_thinker.app.data.avqa import prepare_avqa  # PyAV: loaded only when this command runs

    report = prepare_avqa(model_from_args(AvqaOptions, args))
    print(
        f"wrote {report['rows_written']} of {report['rows']} rows: {report['manifest']} "
        f"({report['videos_extracted']} videos extracted, {report['videos_already_done']} already done; "
        f"left out: {report['rows_invalid']} invalid rows, {report['rows_without_audio']} rows of "
        f"{len(report['failed_videos'])} videos missing / without audio / corrupt, listed in the report)"
    )
    return 0


def _make_cot(args: argparse.Namespace) -> int:
    from audio_thinker.app.data.cot import make_cot  # torch and the engines: loaded only when this command runs

    report = make_cot(model_from_args(CotOptions, args))
    print(
        f"{report['accepted']} of {report['items']} rationales accepted: {report['files']['out']} "
        f"(rejected {report['rejected']} {report['rejected_by_reason']}, failed requests {report['failed']}; "
        f"report: {report['files']['report.json']})"
    )
    return 0


def _rewards(args: argparse.Namespace) -> int:
    from audio_thinker.app.eval.rescore import run_rescore  # torch/Ray: loaded only when this command runs

    return run_rescore(args)


def _serve_judge(args: argparse.Namespace) -> int:
    options = model_from_args(ServeOptions, args)
    if options.on_ray_serve:
        from audio_thinker.app.cli.serve_judge import run_on_ray_serve  # Ray Serve: loaded only for --replicas

        return run_on_ray_serve(options)
    from reward_server.cli import run_serve_judge  # uvicorn/FastAPI: loaded only when this command serves

    return run_serve_judge(options)


def _eval(args: argparse.Namespace) -> int:
    if args.eval_command == "score":
        options = model_from_args(ScoreOptions, args)
        json.dump(score_file(options.predictions, options.bench), sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    spec = model_from_args(EvalOptions, args)
    family = spec.check_inputs()  # before the engine (and torch) loads
    from audio_thinker.app.eval.runner import run_eval_command  # torch/Ray: loaded only when this command runs

    return run_eval_command(spec, family)


def _train(args: argparse.Namespace) -> int:
    start = run_config(args, "{name}")
    config, run_dir = start.config, start.run_dir
    from audio_thinker.app.data.demo import prepare_demo  # torch/Ray: loaded only when this command runs
    from audio_thinker.app.train.driver import run_training
    from audio_thinker.app.train.plan import check_plan

    check_plan(config)  # a GPU run that cannot fit fails here, before Ray starts (audio-thinker plan shows why)
    prepare_demo(config)  # the tiny models and synthetic set of the CPU default, where missing
    run_training(config, actor_logs=start.actor_logs)
    print(f"run finished: {run_dir} (trained policy: {run_dir / 'final'}; logs: {run_dir / 'logs'})")
    print(f"watch it: audio-thinker dashboard --runs {run_dir.parent}   (http://127.0.0.1:{DEFAULT_PORT}/)")
    return 0


def _ablate(args: argparse.Namespace) -> int:
    options = model_from_args(AblateOptions, args)
    from audio_thinker.app.table1.ablate import run_ablation  # Ray: loaded only when this command runs

    out = run_ablation(options, args.overrides)
    print(f"ablation finished: {out / 'table1.md'} (and table1.json, the runs in {out})")
    return 0


def _report(args: argparse.Namespace) -> int:
    options = model_from_args(ReportOptions, args)
    from audio_thinker.app.table1.report import write_report  # matplotlib: loaded only when this command runs

    for path in write_report([Path(r) for r in options.runs], options.out):
        print(path)
    return 0


def _sft(args: argparse.Namespace) -> int:
    start = run_config(args, "sft-{name}", sft=True)
    config, run_dir = start.config, start.run_dir
    from audio_thinker.app.data.demo import prepare_demo  # torch/Ray/DeepSpeed: loaded only when this command runs
    from audio_thinker.app.train.sft import run_sft

    prepare_demo(config, with_eval=False)  # the tiny policy and synthetic training split of the CPU default
    run_sft(config, actor_logs=start.actor_logs)
    print(f"sft finished: {run_dir} (fine-tuned policy: {run_dir / 'final'}; logs: {run_dir / 'logs'})")
    return 0


def _plan(args: argparse.Namespace) -> int:
    config = load_config(args.config, args.overrides)
    from audio_thinker.app.train.plan import capacity_of, make_plan, render  # torch/DeepSpeed: only when this runs

    plan = make_plan(config, capacity_of(config))
    print(render(plan, config))
    if config.run.num_gpus > 0 and plan.capacity is None:
        raise TrainingError("run.gpu_memory_gb is unset and nvidia-smi reports no GPU: set the size of one GPU")
    if plan.problems:
        more = f" (and {len(plan.problems) - 1} more above)" if len(plan.problems) > 1 else ""
        raise TrainingError(f"does not fit: {plan.problems[0]}{more}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from audio_thinker.app.train.export import export_run  # torch/Ray: loaded only when this command runs

    print(export_run(Path(args.run), args.step, Path(args.out) if args.out else None))
    return 0


def _log_level_option(parser: argparse.ArgumentParser, default: str | None) -> None:
    parser.add_argument(
        "--log-level",
        type=str.upper,
        choices=LOG_LEVELS,
        default=default,
        help="logging threshold; DEBUG also prints the traceback of an error "
        "(default: AUDIO_THINKER_LOG_LEVEL, else INFO)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="audio-thinker",
        description="RL for audio language models that learn when and how to think (Audio-Thinker).",
    )
    _log_level_option(parser, None)
    # Every subcommand takes --log-level too; SUPPRESS keeps a value given before the subcommand.
    common = argparse.ArgumentParser(add_help=False)
    _log_level_option(common, argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "make-tiny",
        parents=[common],
        help="build the tiny policies (random init, optional warm-up), judge, tokenizer",
    )
    p.add_argument("--out", required=True, help="folder to write one Hugging Face folder per model into (required)")
    p.add_argument("--seed", type=int, default=0, help="initialisation seed; output is deterministic (default: 0)")
    p.add_argument(
        "--only",
        nargs="*",
        choices=TINY_MODELS,
        default=None,
        help="build only these models (default: all three)",
    )
    p.add_argument(
        "--warmup-steps",
        type=int,
        default=0,
        help="steps of supervised format warm-up for the two policies, so that they write well-formed "
        "<think>/<answer> responses (default: 0, pure random init; the CPU demo uses 150)",
    )
    p.set_defaults(func=_make_tiny)

    p = sub.add_parser(
        "make-synthetic", parents=[common], help="write a synthetic audio QA set (real wav files + AVQA manifest)"
    )
    p.add_argument("--out", required=True, help="output folder; audio/ and <split>.jsonl are written there (required)")
    p.add_argument("--n", type=int, required=True, help="number of questions (required)")
    p.add_argument("--seed", type=int, default=0, help="generator seed; output is deterministic (default: 0)")
    p.add_argument("--split", default="train", help="manifest name: <split>.jsonl (default: train)")
    p.add_argument(
        "--overwrite", action="store_true", help="replace an existing split of the same name (default: refuse)"
    )
    p.set_defaults(func=_make_synthetic)

    p = sub.add_parser(
        "prepare-avqa",
        parents=[common],
        help="extract AVQA's audio (16 kHz mono wav) and write the R1-AQA jsonl that training reads",
        description="Reads AVQA's annotation file (train_qa.json / val_qa.json), extracts each video's audio "
        "track, writes OUT/SPLIT.jsonl and OUT/SPLIT-report.json (every row left out, and why). A rerun resumes.",
    )
    add_model_arguments(p, AvqaOptions)
    p.set_defaults(func=_prepare_avqa)

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
    p.set_defaults(func=_make_cot)

    p = sub.add_parser(
        "rewards", parents=[common], help="recompute Audio-Thinker rewards and advantages for dumped rollouts"
    )
    p.add_argument("--input", required=True, help="JSONL, one sample per line; see docs/rewards.md (required)")
    p.add_argument("--step", type=int, required=True, help="global step of the batch (required)")
    p.add_argument("--total-steps", type=int, required=True, help="T, the total training steps (required)")
    p.add_argument(
        "--variant",
        default="atar_cr_tr",
        choices=VARIANTS,
        help="reward preset (default: atar_cr_tr, the full method)",
    )
    p.add_argument(
        "--invalid-accuracy",
        default=RewardConfig.model_fields["invalid_accuracy"].default,
        choices=INVALID_ACCURACY,
        help="R_a of invalid samples: worst = the step's case-4 value, zero = 0 (default: %(default)s)",
    )
    p.set_defaults(func=_rewards)

    add_serve_parser(sub, parents=[common]).set_defaults(func=_serve_judge)
    add_eval_parser(sub, parents=[common]).set_defaults(func=_eval)
    add_dashboard_parser(sub, parents=[common])

    p = sub.add_parser(
        "train",
        parents=[common],
        help="Audio-Thinker GRPO training (also the entrypoint of `ray job submit`)",
        description="Runs the embedded tiny CPU run when no --config is given. Joins the Ray cluster of RAY_ADDRESS, "
        "else starts a local one. Overrides: section.key=value, e.g. run.total_steps=10 reward.variant=atar_cr.",
    )
    add_run_arguments(p, "the embedded tiny CPU run")
    p.set_defaults(func=_train)

    ablate, report = add_table1_parsers(sub, parents=[common])
    ablate.set_defaults(func=_ablate)
    report.set_defaults(func=_report)

    p = sub.add_parser(
        "sft",
        parents=[common],
        help="supervised fine-tuning (answer-only or CoT targets) on the trainer engine: the paper's SFT baselines",
        description="Trains the policy on <answer>X</answer> (sft.target=answer) or <think>rationale</think>"
        "<answer>X</answer> (sft.target=cot) targets with the DeepSpeed trainer of `train`; same run directory, "
        "checkpoints, resume and export. Presets: sft-a, sft-b, sft-c, sft-d (the paper's Table 1 rows).",
    )
    add_run_arguments(p, "the tiny CPU run")
    p.set_defaults(func=_sft)

    p = sub.add_parser(
        "plan",
        parents=[common],
        help="where every actor of a run goes and an estimate of each GPU's memory, before anything starts",
        description="Prints the placement (node, GPU, share) of every actor and each GPU's memory estimate: ZeRO "
        "model states (DeepSpeed's estimator), activations with and without gradient checkpointing, the reference, "
        "vLLM's reservation and KV cache, the judge; against run.gpu_memory_gb (default: nvidia-smi). Exit code 2 "
        "when a GPU does not fit or an actor of a GPU run has no GPU. Formulas: docs/placement.md.",
    )
    p.add_argument(
        "--config", default=None, help="YAML config or preset name (default: none, the embedded tiny CPU run)"
    )
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides (default: none)")
    p.set_defaults(func=_plan)

    p = sub.add_parser(
        "export",
        parents=[common],
        help="export a kept checkpoint of a run to a Hugging Face folder",
        description="Export a kept checkpoint of a run to a Hugging Face folder: by default the latest, into "
        "DIR/final (or DIR/export-step-N with --step N). Prints the folder.",
    )
    p.add_argument("--run", required=True, metavar="DIR", help="the run directory (required)")
    p.add_argument("--step", type=int, default=None, help="the checkpoint's step (default: none, the latest kept)")
    p.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="output folder (default: none, DIR/final or DIR/export-step-N inside the run directory)",
    )
    p.set_defaults(func=_export)

    return parser


def _one_line(message: str) -> str:
    """A multi-line message (e.g. a config error listing keys) as one line."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    return " ".join(lines[:1] + ["; ".join(lines[1:])]).strip()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    try:
        return int(args.func(args) or 0)
    except Preempted as exc:  # a checkpoint is kept: not an error, a distinct exit code for schedulers to retry
        print(f"audio-thinker {args.command}: {exc}", file=sys.stderr)
        return EXIT_PREEMPTED
    except USER_ERRORS as exc:
        log.debug("audio-thinker %s failed", args.command, exc_info=True)
        print(f"audio-thinker {args.command}: {_one_line(str(exc)) or type(exc).__name__}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
