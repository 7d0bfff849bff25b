"""The options `train` and `sft` share (config, resume, rehearsal, console) and the config a run starts from.

Nothing heavy is imported here: a bad key, a refused resume or a bad rehearsal fails before Ray and torch load.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

from audio_thinker.app.train.rehearsal import RehearsalRecord, machine_swaps, rehearsal_cluster, rehearsal_config
from audio_thinker.app.train.resume import record_changes, resume_config
from audio_thinker.app.train.run_dir import default_output_dir
from audio_thinker.core.config import Config
from audio_thinker.core.log import quiet_console
from audio_thinker.core.presets import load_config

REHEARSE_HELP = (
    "rehearse a GPU preset here: its whole topology (ranks, workers, judge backend, reference placement, placement "
    "groups, ZeRO stage, sync) on a local Ray cluster that declares its GPUs, every actor on the CPU with the tiny "
    "models; the swaps are printed and recorded in the run directory's rehearsal.json, and every step is checked "
    "(docs/placement.md) (default: off)"
)


def add_run_arguments(parser: argparse.ArgumentParser, default_config: str) -> None:
    parser.add_argument("--config", default=None, help=f"YAML config or preset name (default: none, {default_config})")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in run.output_dir from its last checkpoint, with the config saved in that run "
        "directory; an override that changes what the run is (steps, seed, data, model, rewards, lr ...) is "
        "refused (default: off)",
    )
    parser.add_argument(
        "--allow-config-change",
        action="store_true",
        help="with --resume: accept run-defining changes; they are logged and recorded in the run directory's "
        "config_changes.jsonl (default: off)",
    )
    parser.add_argument("--rehearse", action="store_true", help=REHEARSE_HELP)
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="show every log line, the actors' and engines' too, on the console (default: off: the progress bar, "
        "one line per step and warnings; the rest goes to the run directory's logs/)",
    )
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides (default: none)")


@dataclass
class RunStart:
    """What a `train` or `sft` command starts from: the config, its run directory and where actor logs go."""

    config: Config
    run_dir: Path
    actor_logs: Path | None


def run_config(args: argparse.Namespace, default_name: str, sft: bool = False) -> RunStart:
    """The config (checked before Ray and torch load: a bad key fails at once; on a resume the run's saved
    config.yaml is the base, app/train/resume.py; with --rehearse the swaps are applied, printed and recorded),
    its run directory, and where actor logs go."""
    swaps = []
    if args.rehearse:
        config, swaps = rehearsal_config(args.config, args.overrides, sft)
    else:
        config = load_config(args.config, args.overrides)
    resuming = args.resume or config.run.resume
    if resuming:
        config, changes = resume_config(args.config, args.overrides, args.allow_config_change, args.rehearse, sft)
        record_changes(config.run.output_dir, changes)
    if not os.environ.get("RAY_ADDRESS"):
        # A local run: Ray would otherwise bind its services to the machine's network address, not loopback.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    if config.run.output_dir is None:
        prefix = "rehearsal-" if config.run.rehearse else ""
        config.run.output_dir = str(default_output_dir(prefix + default_name.format(name=config.run.name)))
    run_dir = Path(config.run.output_dir)
    actor_logs = None if args.verbose else run_dir / "logs"
    if actor_logs is not None:
        quiet_console(actor_logs / "driver.log")
    declared = rehearsal_cluster(config, sft)  # what the run will declare (app/train/rehearsal.py)
    if declared is not None:
        record = RehearsalRecord(run_dir)
        if not (resuming and record.path.is_file()):  # a resume keeps the record the rehearsal started
            swaps += machine_swaps(config, declared, with_rollout=not sft)
            record.start(args.config, swaps, declared)
            print(f"rehearsal of {args.config or 'the built-in config'}: swapped (everything else is the preset's):")
            print("\n".join(s.line() for s in swaps))
    return RunStart(config, run_dir, actor_logs)
