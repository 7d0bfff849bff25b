"""`audio-thinker` command line: one entry point, one subcommand per job.

Parsers live here so that `--help` is instant; each subcommand imports its (heavy) implementation only
when it runs. Every handler returns a process exit code.
"""

from __future__ import annotations

import argparse
import os
import sys

from audio_thinker.core.log import setup_logging


def _make_tiny(args: argparse.Namespace) -> int:
    from audio_thinker.app.tiny import make_tiny_models

    if args.warmup_steps < 0:
        print(f"audio-thinker make-tiny: --warmup-steps must be >= 0, got {args.warmup_steps}", file=sys.stderr)
        return 2
    paths = make_tiny_models(args.out, seed=args.seed, only=args.only, warmup_steps=args.warmup_steps)
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


def _make_synthetic(args: argparse.Namespace) -> int:
    from audio_thinker.app.synthetic import write_synthetic_dataset

    manifest = write_synthetic_dataset(args.out, n=args.n, seed=args.seed, split=args.split)
    print(f"wrote {args.n} questions: {manifest}")
    return 0


def _rewards(args: argparse.Namespace) -> int:
    from audio_thinker.app.rescore import run_rescore

    return run_rescore(args)


def _serve_judge(args: argparse.Namespace) -> int:
    from reward_server.cli import run_serve_judge

    return run_serve_judge(args)


def _eval(args: argparse.Namespace) -> int:
    from audio_thinker.app.eval.runner import run_eval_command

    return run_eval_command(args)


def _train(args: argparse.Namespace) -> int:
    from audio_thinker.app.driver import TrainingError, run_training
    from audio_thinker.core.presets import ConfigError, load_config

    if not os.environ.get("RAY_ADDRESS"):
        # A local run: Ray would otherwise bind its services to the machine's network address, not loopback.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    overrides = list(args.overrides) + (["run.resume=true"] if args.resume else [])
    try:
        config = load_config(args.config, overrides)
    except ConfigError as exc:
        print(f"audio-thinker train: {exc}", file=sys.stderr)
        return 2
    try:
        run_dir = run_training(config)
    except TrainingError as exc:
        print(f"audio-thinker train: {exc}", file=sys.stderr)
        return 1
    print(f"run finished: {run_dir}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="audio-thinker",
        description="RL for audio language models that learn when and how to think (Audio-Thinker).",
    )
    parser.add_argument("--log-level", default=None, help="DEBUG, INFO (default), WARNING, ERROR")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("make-tiny", help="build the tiny policies (random init, optional warm-up), judge, tokenizer")
    p.add_argument("--out", required=True, help="folder to write one Hugging Face folder per model into")
    p.add_argument("--seed", type=int, default=0, help="initialisation seed (output is deterministic)")
    p.add_argument(
        "--only",
        nargs="*",
        choices=["qwen2_audio", "qwen2_5_omni", "qwen3_judge"],
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

    p = sub.add_parser("make-synthetic", help="write a synthetic audio QA set (real wav files + AVQA manifest)")
    p.add_argument("--out", required=True, help="output folder (audio/ and <split>.jsonl are written there)")
    p.add_argument("--n", type=int, required=True, help="number of questions")
    p.add_argument("--seed", type=int, default=0, help="generator seed (output is deterministic)")
    p.add_argument("--split", default="train", help="manifest name: <split>.jsonl")
    p.set_defaults(func=_make_synthetic)

    p = sub.add_parser("rewards", help="recompute Audio-Thinker rewards and advantages for dumped rollouts")
    p.add_argument("--input", required=True, help="JSONL, one sample per line (see docs/rewards.md)")
    p.add_argument("--step", type=int, required=True, help="global step of the batch")
    p.add_argument("--total-steps", type=int, required=True, help="T, the total training steps")
    p.add_argument(
        "--variant",
        default="atar_cr_tr",
        choices=["grpo", "grpo_cot", "atar", "atar_cr", "atar_cr_tr"],
        help="reward preset (default: atar_cr_tr, the full method)",
    )
    p.set_defaults(func=_rewards)

    p = sub.add_parser("serve-judge", help="run the reward-judge REST service (docs/judge.md)")
    p.add_argument("--model", required=True, help="judge model folder (or the served model name for --backend openai)")
    p.add_argument("--backend", choices=["transformers", "vllm", "openai"], default="transformers")
    p.add_argument("--openai-base-url", default=None, help="with --backend openai: the completions server URL")
    p.add_argument(
        "--openai-tokenizer",
        default=None,
        help="with --backend openai: folder with the judge's tokenizer (default: --model)",
    )
    p.add_argument(
        "--openai-top-logprobs",
        type=int,
        default=None,
        help="with --backend openai: use the top-k logprobs of a non-vLLM server (default: vLLM logprob_token_ids)",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--api-key-file", default=None, help="file with one API key per line (and/or AUDIO_THINKER_JUDGE_API_KEYS)"
    )
    p.add_argument("--no-auth", action="store_true", help="serve without API keys (loopback hosts only)")
    p.add_argument("--max-batch-size", type=int, default=32, help="items per model call")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="how long a micro-batch waits to fill up")
    p.add_argument("--max-queue", type=int, default=1024, help="queued items before 429")
    p.add_argument("--max-items", type=int, default=256, help="items per request before 413")
    p.add_argument("--max-text-chars", type=int, default=16000, help="characters per text field before 413")
    p.add_argument("--max-body-bytes", type=int, default=16 * 2**20, help="request body size before 413")
    p.add_argument("--request-timeout-s", type=float, default=60.0, help="deadline of one request before 504")
    p.add_argument(
        "--device", default=None, help="torch device for --backend transformers (default: cuda if available)"
    )
    p.add_argument("--dtype", default=None, help="weights dtype (default: bfloat16 on GPU, float32 on CPU; vllm: auto)")
    p.add_argument(
        "--max-model-len", type=int, default=None, help="with --backend vllm: context length (default: the model's)"
    )
    p.add_argument("--gpu-memory-utilization", type=float, default=0.5, help="with --backend vllm: GPU memory share")
    p.add_argument(
        "--enforce-eager", action="store_true", help="with --backend vllm: no compilation / CUDA graphs (faster start)"
    )
    p.set_defaults(func=_serve_judge)

    p = sub.add_parser(
        "eval",
        help="evaluate a model on MMAU / MMAR / AIR-Bench / synthetic, or score predictions (docs/eval.md)",
        description="Run: audio-thinker eval --model DIR --bench B --data FILE [...]. "
        "Score an existing predictions file: audio-thinker eval score --bench B --predictions FILE.",
    )
    p.add_argument("--model", help="policy folder (Qwen2-Audio or Qwen2.5-Omni, full or thinker-only)")
    p.add_argument("--bench", choices=["mmau", "mmar", "air", "synthetic"], help="benchmark layout of --data")
    p.add_argument(
        "--data", help="the benchmark's file (mmau-test-mini.json, MMAR-meta.json, Foundation_meta.json, ...)"
    )
    p.add_argument(
        "--audio-root", default=None, help="folder relative audio paths start from (default: --data's folder)"
    )
    p.add_argument("--prompt", choices=["adaptive", "think", "no_think"], default="adaptive")
    p.add_argument("--template-file", default=None, help="instruction template with {question} and {choices}")
    p.add_argument("--letter-choices", action="store_true", help="list choices as (A) ... and accept a bare letter")
    p.add_argument("--engine", choices=["transformers", "vllm"], default="transformers")
    p.add_argument("--out", default=None, help="output folder (default: eval_results/<model>-<bench>-<prompt>)")
    p.add_argument("--limit", type=int, default=None, help="evaluate the first N questions only")
    p.add_argument("--batch-size", type=int, default=8, help="questions per engine call")
    p.add_argument("--max-new-tokens", type=int, default=1024)
    p.add_argument("--temperature", type=float, default=None, help="sample at this temperature (default: greedy)")
    p.add_argument("--top-p", type=float, default=1.0, help="with --temperature: nucleus sampling threshold")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (per question)")
    p.add_argument("--judge-url", default=None, help="judge base URL: audit the consistency of think responses")
    p.add_argument("--judge-api-key", default=None, help="judge API key (default: AUDIO_THINKER_JUDGE_API_KEY)")
    p.add_argument("--dtype", default=None, help="weights dtype (default: bfloat16 on GPU, float32 on CPU)")
    p.add_argument(
        "--device", default=None, help="torch device of the transformers engine (default: cuda if available)"
    )
    p.add_argument("--max-model-len", type=int, default=4096, help="vLLM context length")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.5, help="vLLM GPU memory share")
    eval_sub = p.add_subparsers(dest="eval_command", metavar="score")
    s = eval_sub.add_parser("score", help="score an existing predictions file; prints the results.json object")
    s.add_argument("--bench", choices=["mmau", "mmar", "air", "synthetic"], required=True)
    s.add_argument("--predictions", required=True, help="the benchmark's file with a prediction per row")
    p.set_defaults(func=_eval)

    p = sub.add_parser(
        "train",
        help="Audio-Thinker GRPO training (also the entrypoint of `ray job submit`)",
        description="Runs configs/tiny-cpu.yaml when no --config is given. Joins the Ray cluster of RAY_ADDRESS, "
        "else starts a local one. Overrides: section.key=value, e.g. run.total_steps=10 reward.variant=atar_cr.",
    )
    p.add_argument("--config", default=None, help="YAML config (default: configs/tiny-cpu.yaml)")
    p.add_argument("--resume", action="store_true", help="continue the run in run.output_dir from its last checkpoint")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    p.set_defaults(func=_train)

    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
