"""The handlers of the `audio-thinker` subcommands: check what the user gave, then run the job.

Every input is checked before the job's heavy implementation is imported (torch, Ray, vLLM, the web stack: each
handler imports its own, here and only here, so that `--help`, the light commands and every option error come
without them). A handler returns the exit code; a bad input raises a `UserError` naming the option or file,
which `main` prints as one line with exit code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

from audio_thinker.app.cli.paths import input_file, input_folder, output_folder, refuse_existing
from audio_thinker.app.dashboard.cli import DEFAULT_PORT
from audio_thinker.app.data.options import AvqaOptions, CotOptions, check_tiny_out
from audio_thinker.app.errors import TrainingError
from audio_thinker.app.eval.options import EvalOptions, ScoreOptions
from audio_thinker.app.table1.options import AblateOptions, ReportOptions
from audio_thinker.app.train.plan import capacity_of, check_plan, job_of, make_plan, render
from audio_thinker.app.train.rehearsal import RehearsalRecord, machine_swaps, rehearsal_cluster, rehearsal_config
from audio_thinker.app.train.resume import record_changes, start_config
from audio_thinker.app.train.run_dir import default_output_dir
from audio_thinker.core.config import Config
from audio_thinker.core.log import quiet_console
from audio_thinker.core.options import OptionError, model_from_args
from audio_thinker.core.presets import load_config
from reward_server.options import ServeOptions


def this_command() -> str:
    """How this command was called (`.venv/bin/audio-thinker` after `make demo`), so a printed command line
    works as shown; `audio-thinker` when it was started otherwise (python -m)."""
    called = Path(sys.argv[0])
    return shlex.quote(str(called)) if called.name == "audio-thinker" else "audio-thinker"


def make_tiny(args: argparse.Namespace) -> int:
    if args.warmup_steps < 0:
        raise OptionError(f"--warmup-steps: must be >= 0, got {args.warmup_steps}")
    output_folder("--out", args.out)
    check_tiny_out(args.out, args.only, args.overwrite)
    from audio_thinker.app.data.tiny import make_tiny_models  # torch: only when this command runs

    paths = make_tiny_models(
        args.out, seed=args.seed, only=args.only, warmup_steps=args.warmup_steps, overwrite=args.overwrite
    )
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


def make_synthetic(args: argparse.Namespace) -> int:
    if args.n < 1:
        raise OptionError(f"--n: the number of questions must be >= 1, got {args.n}")
    if not args.split or any(c in args.split for c in "/\\") or args.split.startswith("."):
        raise OptionError(f"--split {args.split!r}: must be a plain file name (it names <split>.jsonl)")
    output_folder("--out", args.out)
    from audio_thinker.app.data.synthetic import write_synthetic_dataset  # numpy/soundfile: only when this runs

    manifest = write_synthetic_dataset(args.out, n=args.n, seed=args.seed, split=args.split, overwrite=args.overwrite)
    print(f"wrote {args.n} questions: {manifest}")
    return 0


def prepare_avqa(args: argparse.Namespace) -> int:
    options = model_from_args(AvqaOptions, args)
    input_folder("--videos", options.videos)
    input_file("--annotations", options.annotations)
    output_folder("--out", options.out)
    from audio_thinker.app.data.avqa import prepare_avqa as run  # PyAV: only when this command runs

    report = run(options)
    print(
        f"wrote {report['rows_written']} of {report['rows']} rows: {report['manifest']} "
        f"({report['videos_extracted']} videos extracted, {report['videos_already_done']} already done; "
        f"left out: {report['rows_invalid']} invalid rows, {report['rows_without_audio']} rows of "
        f"{len(report['failed_videos'])} videos missing / without audio / corrupt, listed in the report)"
    )
    return 0


def make_cot(args: argparse.Namespace) -> int:
    options = model_from_args(CotOptions, args)
    options.check_inputs()
    from audio_thinker.app.data.cot import make_cot as run  # torch and the engines: only when this command runs

    report = run(options)
    print(
        f"{report['accepted']} of {report['items']} rationales accepted: {report['files']['out']} "
        f"(rejected {report['rejected']} {report['rejected_by_reason']}, failed requests {report['failed']}; "
        f"report: {report['files']['report.json']})"
    )
    return 0


def rewards(args: argparse.Namespace) -> int:
    if args.total_steps < 1:
        raise OptionError(f"--total-steps: must be >= 1, got {args.total_steps}")
    if not 0 <= args.step <= args.total_steps:
        raise OptionError(f"--step: must be in 0..{args.total_steps} (--total-steps), got {args.step}")
    from audio_thinker.app.eval.rescore import run_rescore  # numpy: only when this command runs

    print(json.dumps(run_rescore(input_file("--input", args.input), args)))
    return 0


def serve_judge(args: argparse.Namespace) -> int:
    options = model_from_args(ServeOptions, args)
    options.check_inputs()  # the model folder and the port, before the web stack or a model loads
    if options.on_ray_serve:
        from audio_thinker.app.cli.serve_judge import run_on_ray_serve  # Ray Serve: only for --replicas

        return run_on_ray_serve(options)
    from reward_server.cli import run_serve_judge  # uvicorn/FastAPI: only when this command serves

    return run_serve_judge(options)


def evaluate(args: argparse.Namespace) -> int:
    if args.eval_command == "score":
        options = model_from_args(ScoreOptions, args)
        from audio_thinker.app.eval.scoring import score_file  # only when this command runs

        json.dump(score_file(input_file("--predictions", options.predictions), options.bench), sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    spec = model_from_args(EvalOptions, args)
    family = spec.check_inputs()  # before the engine (and torch) loads
    from audio_thinker.app.eval.runner import run_eval_command  # torch/Ray: only when this command runs

    return run_eval_command(spec, family)


def _run_config(args: argparse.Namespace, default_name: str, sft: bool = False) -> tuple[Config, Path]:
    """`train` and `sft`: the config (checked before Ray and torch load: a bad key fails at once; on a resume the
    run's saved config.yaml is the base, app/train/resume.py; with --rehearse the swaps applied) and its run
    directory. Nothing is written yet (a resume's allowed changes aside): a refused command leaves no run folder."""
    config, changes = start_config(
        args.config, args.overrides, args.resume, args.resume_if_exists, args.allow_config_change, args.rehearse, sft
    )
    record_changes(config.run.output_dir, changes)
    if not os.environ.get("RAY_ADDRESS"):
        # A local run: Ray would otherwise bind its services to the machine's network address, not loopback.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    if config.run.output_dir is None:
        prefix = "rehearsal-" if config.run.rehearse else ""
        config.run.output_dir = str(default_output_dir(prefix + default_name.format(name=config.run.name)))
    return config, Path(config.run.output_dir)


def _begin_run(args: argparse.Namespace, config: Config, run_dir: Path, sft: bool = False) -> Path | None:
    """Once the run is checked and about to start: its console made quiet (the full log in <run>/logs/, unless
    --verbose) and a rehearsal's swaps printed and recorded. Returns where the actors' logs go."""
    actor_logs = None if args.verbose else run_dir / "logs"
    if actor_logs is not None:
        quiet_console(actor_logs / "driver.log")
    declared = rehearsal_cluster(config, sft)  # what a rehearsal declares (app/train/rehearsal.py)
    if declared is not None:
        record = RehearsalRecord(run_dir)
        if not (config.run.resume and record.path.is_file()):  # a resume keeps the record the rehearsal started
            swaps = rehearsal_config(args.config, args.overrides, sft)[1] + machine_swaps(config, declared, not sft)
            record.start(args.config, swaps, declared)
            print(f"rehearsal of {args.config or 'the built-in config'}: swapped (everything else is the preset's):")
            print("\n".join(s.line() for s in swaps))
    return actor_logs


def train(args: argparse.Namespace) -> int:
    config, run_dir = _run_config(args, "{name}")
    check_plan(config)  # a GPU run that cannot fit fails here, before Ray starts (audio-thinker plan shows why)
    from audio_thinker.app.data.demo import prepare_demo, synthetic_splits  # torch/Ray: only when this runs
    from audio_thinker.app.train.driver import run_training

    synthetic_splits(config)  # a missing manifest fails here, before the run folder exists
    actor_logs = _begin_run(args, config, run_dir)
    prepare_demo(config)  # the tiny models and synthetic set of the CPU default, where missing
    run_training(config, actor_logs=actor_logs)
    print(f"run finished: {run_dir} (trained policy: {run_dir / 'final'}; logs: {run_dir / 'logs'})")
    print(f"watch it: {this_command()} dashboard --runs {run_dir.parent}   (http://127.0.0.1:{DEFAULT_PORT}/)")
    return 0


def ablate(args: argparse.Namespace) -> int:
    options = model_from_args(AblateOptions, args)
    from audio_thinker.app.table1.ablate import run_ablation  # Ray: only when this command runs

    out = run_ablation(options, args.overrides)
    print(f"ablation finished: {out / 'table1.md'} (and table1.json, the runs in {out})")
    return 0


def report(args: argparse.Namespace) -> int:
    options = model_from_args(ReportOptions, args)
    pairs = options.pairs()
    runs = [input_folder("--runs", r) for r in options.runs]
    out = output_folder("--out", options.out)
    if not options.overwrite:
        refuse_existing("--out", [out / "table1.md", out / "table1.json"])
    from audio_thinker.app.table1.report import write_report  # matplotlib: only when this command runs

    for path in write_report(runs, out, pairs):
        print(path)
    return 0


def sft(args: argparse.Namespace) -> int:
    config, run_dir = _run_config(args, "sft-{name}", sft=True)
    check_plan(config, job="sft")
    from audio_thinker.app.data.demo import prepare_demo, synthetic_splits  # torch/Ray/DeepSpeed: only now
    from audio_thinker.app.train.sft import run_sft

    synthetic_splits(config, with_eval=False)  # a missing manifest fails here, before the run folder exists
    actor_logs = _begin_run(args, config, run_dir, sft=True)
    prepare_demo(config, with_eval=False)  # the tiny policy and synthetic training split of the CPU default
    run_sft(config, actor_logs=actor_logs)
    print(f"sft finished: {run_dir} (fine-tuned policy: {run_dir / 'final'}; logs: {run_dir / 'logs'})")
    return 0


def plan(args: argparse.Namespace) -> int:
    config = load_config(args.config, args.overrides)
    job = job_of(config, args.job)
    result = make_plan(config, capacity_of(config), job=job)
    print(render(result, config))
    if args.job == "auto" and job == "sft":
        print("(planned as `audio-thinker sft`: the config sets an sft: section; --job train plans a GRPO run)")
    if config.run.num_gpus > 0 and result.capacity is None:
        raise TrainingError("run.gpu_memory_gb is unset and nvidia-smi reports no GPU: set the size of one GPU")
    if result.problems:
        more = f" (and {len(result.problems) - 1} more above)" if len(result.problems) > 1 else ""
        raise TrainingError(f"does not fit: {result.problems[0]}{more}")
    return 0


def export(args: argparse.Namespace) -> int:
    if args.step is not None and args.step < 1:
        raise OptionError(f"--step: a checkpoint's step is >= 1, got {args.step}")
    run = input_folder("--run", args.run)
    if args.out is not None:
        output_folder("--out", args.out)
        if not args.overwrite:
            refuse_existing("--out", [Path(args.out)])
    from audio_thinker.app.train.export import export_run  # torch/DeepSpeed: only when this command runs

    print(export_run(run, args.step, Path(args.out) if args.out else None, overwrite=args.overwrite))
    return 0
