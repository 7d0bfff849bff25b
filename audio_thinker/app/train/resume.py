"""Resuming a run as the run it is: its saved `config.yaml` is the base, and a command-line change to what
the run *is* (its schedule, data, model, rewards, optimisation) is refused unless the user says so.

Harmless settings (timeouts, evaluation and checkpoint cadence, resources, logging) may change on a resume;
an allowed change of a run-defining key is logged and appended to `<run>/config_changes.jsonl`.

A resume needs a saved run: `--resume` (or `run.resume=true`) on a folder without one is refused, so that a
mistyped `run.output_dir` never starts a new run in place of the one meant; a job that a scheduler restarts and
that may or may not find its run says so with `--resume-if-exists`. A new run is refused a folder that already
holds one.
"""

from __future__ import annotations

import fnmatch
import json
import sys
import time
from pathlib import Path

from audio_thinker.app.errors import TrainingError
from audio_thinker.app.train.run_dir import CONFIG_FILE, RunDir
from audio_thinker.app.train.rehearsal import rehearsal_config
from audio_thinker.core.config import Config
from audio_thinker.core.log import get_logger
from audio_thinker.core.options import OptionError
from audio_thinker.core.presets import load_config

log = get_logger(__name__)

# Keys that define the run: changing one mid-run changes the ATAR schedule, the data order, the samples or the
# objective (fnmatch patterns over section.key).
RUN_DEFINING = (
    "run.seed",
    "run.total_steps",
    "run.questions_per_step",
    "run.drop_zero_std_groups",
    "model.family",
    "model.policy_path",
    "model.judge_path",
    "model.dtype",
    "data.train_manifest",
    "data.audio_root",
    "data.max_audio_seconds",
    "prompt.*",
    "reward.*",
    "rollout.samples_per_question",
    "rollout.temperature",
    "rollout.top_p",
    "rollout.max_new_tokens",
    "judge.score_mode",
    "trainer.num_ranks",
    "trainer.zero_stage",
    "trainer.lr",
    "trainer.weight_decay",
    "trainer.warmup_steps",
    "trainer.lr_schedule",
    "trainer.beta",
    "trainer.loss_type",
    "trainer.clip_eps_low",
    "trainer.clip_eps_high",
    "trainer.ratio_level",
    "trainer.max_completion_length",
    "trainer.freeze_audio_encoder",
    "sft.*",
    "trainer.lora",  # a LoRA checkpoint holds adapters, a full one every weight: neither resumes as the other
)
CHANGES_FILE = "config_changes.jsonl"



def flatten(config: Config) -> dict[str, object]:
    return {
        f"{section}.{key}": value
        for section, keys in config.model_dump(mode="json").items()
        for key, value in keys.items()
    }


def defining_changes(saved: Config, new: Config) -> dict[str, tuple[object, object]]:
    """The run-defining keys whose value differs: key -> (saved, new)."""
    a, b = flatten(saved), flatten(new)
    return {
        key: (a[key], b[key])
        for key in a
        if a[key] != b[key] and any(fnmatch.fnmatchcase(key, pattern) for pattern in RUN_DEFINING)
    }


def resume_config(
    config_file: str | None,
    overrides: list[str],
    allow_config_change: bool = False,
    rehearse: bool = False,
    sft: bool = False,
) -> tuple[Config, dict[str, tuple[object, object]]]:
    """The config of a resumed run and the run-defining changes it carries (empty unless allowed).

    Without `config_file` the run's saved config plus `overrides` is the new config; with one, that file plus
    `overrides` (as on the first command line) must agree with the saved config on every run-defining key.
    A run directory without a saved config is refused (TrainingError naming it). `rehearse`: `config_file` is
    rehearsed (its swaps applied, app/train/rehearsal.py; `sft`: as `audio-thinker sft` rehearses it), as on the
    first command line.
    """
    if rehearse:
        new, _ = rehearsal_config(config_file, [*overrides, "run.resume=true"], sft)
    else:
        new = load_config(config_file, [*overrides, "run.resume=true"])
    saved_path = saved_config(new)
    if saved_path is None:
        raise TrainingError(
            f"resume: run.output_dir={new.run.output_dir} holds no saved run (no config.yaml): check the folder, or "
            "leave out --resume (and run.resume) to start a new run there"
        )
    saved = load_config(saved_path, saved_run=True)
    if config_file is None:
        new = load_config(saved_path, [*overrides, "run.resume=true"], saved_run=True)
    changes = defining_changes(saved, new)
    if changes and not allow_config_change:
        listed = "; ".join(f"{k}: saved {old!r}, now {now!r}" for k, (old, now) in changes.items())
        raise TrainingError(
            f"resume would change what the run in {new.run.output_dir} is ({listed}); drop the override to continue "
            "the saved run, or pass --allow-config-change to change it on purpose (recorded in the run directory)"
        )
    return new, changes


def saved_config(config: Config) -> Path | None:
    """The saved config.yaml of the run in `run.output_dir`, None when it holds none; a resume needs the folder."""
    if not config.run.output_dir:
        raise TrainingError("resume needs the run directory: add run.output_dir=<the run's directory>")
    path = Path(config.run.output_dir) / CONFIG_FILE
    return path if path.is_file() else None


def start_config(
    config_file: str | None,
    overrides: list[str],
    resume: bool = False,
    resume_if_exists: bool = False,
    allow_config_change: bool = False,
    rehearse: bool = False,
    sft: bool = False,
) -> tuple[Config, dict[str, tuple[object, object]]]:
    """`train` and `sft`: the config to start with and its allowed run-defining changes, by the resume options.

    `--resume` (or `run.resume=true`) continues a saved run and is refused without one; `--resume-if-exists`
    continues one when `run.output_dir` holds it and starts there otherwise; without either a folder that holds
    a run is refused. `--allow-config-change` without a resume option is refused. `rehearse`: the config is
    rehearsed (app/train/rehearsal.py; `sft` as `audio-thinker sft` rehearses it)."""
    if resume and resume_if_exists:
        raise OptionError("--resume and --resume-if-exists: choose one")
    config = rehearsal_config(config_file, overrides, sft)[0] if rehearse else load_config(config_file, overrides)
    resume = resume or config.run.resume
    if allow_config_change and not (resume or resume_if_exists):
        raise OptionError("--allow-config-change: only with --resume or --resume-if-exists")
    if resume_if_exists:
        if saved_config(config) is None:
            log.info("--resume-if-exists: %s holds no saved run, starting it", config.run.output_dir)
            config.run.resume = False
            return config, {}
        return resume_config(config_file, overrides, allow_config_change, rehearse, sft)
    if resume:
        return resume_config(config_file, overrides, allow_config_change, rehearse, sft)
    if config.run.output_dir and RunDir(config.run.output_dir).logged_steps():
        raise TrainingError(
            f"run.output_dir={config.run.output_dir} already holds a run: --resume to continue it, or choose "
            "another run.output_dir"
        )
    return config, {}


def record_changes(run_dir: str | Path, changes: dict[str, tuple[object, object]]) -> None:
    """Log and append an allowed change of run-defining keys to `<run>/config_changes.jsonl`."""
    if not changes:
        return
    for key, (old, now) in changes.items():
        log.warning("resume with --allow-config-change: %s %r -> %r", key, old, now)
    entry = {
        "time": time.time(),
        "command": sys.argv,
        "changes": {k: {"saved": o, "now": n} for k, (o, n) in changes.items()},
    }
    with (Path(run_dir) / CHANGES_FILE).open("a") as f:
        f.write(json.dumps(entry) + "\n")
