"""Where a run's numbers and logs go: TensorBoard scalars and completion tables, a clear error for a logger
that is not installed, a quiet console with everything in the run's log files."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from audio_thinker.app.errors import TrainingError
from audio_thinker.app.train.loggers import TensorBoardLogger, WandbLogger, check_loggers
from audio_thinker.core.audio import write_audio
from audio_thinker.core.log import LOG_DIR_ENV, STEPS, _StepsAndWarnings
from audio_thinker.core.presets import load_config
from audio_thinker.core.records import RolloutRecord


def record(total: float) -> RolloutRecord:
    return RolloutRecord(
        step=2,
        group="q1",
        sample=0,
        question_id="q1",
        audio_path="a.wav",
        difficulty="easy",
        category="sound",
        question="How many | beeps?",
        choices=["1", "2"],
        answer="2",
        letters=False,
        response="<answer>2</answer>",
        num_tokens=5,
        finish_reason="stop",
        mode="no_think",
        think=None,
        answer_text="2",
        correct=True,
        format=1.0,
        accuracy=2.0,
        consistency_reward=1.0,
        think_reward=0.5,
        total=total,
        advantage=0.7,
    )


def test_tensorboard_gets_finite_scalars_and_a_completions_table(tmp_path):
    logger = TensorBoardLogger(tmp_path)
    logger.log_metrics(1, {"step": 1, "reward/total": 0.5, "count/think": 3, "bad": float("nan"), "flag": True})
    logger.log_completions(2, [record(3.5)])
    logger.close()
    events = EventAccumulator(str(tmp_path), size_guidance={"tensors": 0}).Reload()
    assert sorted(events.Tags()["scalars"]) == ["count/think", "reward/total"]
    assert events.Scalars("reward/total")[0].value == 0.5
    text = events.Tensors("completions/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "How many \\| beeps?" in text and "3.5" in text and "advantage" in text.splitlines()[0]


def test_a_logger_that_is_not_installed_is_refused_before_the_run(monkeypatch):
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(TrainingError, match=r'run.loggers has wandb, which is not installed: pip install ".\[wandb\]"'):
        check_loggers(load_config(None, ["run.loggers=[tensorboard, wandb]"]))
    check_loggers(load_config())  # tensorboard alone needs nothing more


def test_the_quiet_console_passes_step_lines_and_warnings_only():
    keep = _StepsAndWarnings()

    def make(name, level):
        return logging.LogRecord(name, level, __file__, 1, "m", None, None)

    assert keep.filter(make(STEPS, logging.INFO))
    assert keep.filter(make("audio_thinker.app.train.driver", logging.WARNING))
    assert not keep.filter(make("audio_thinker.app.train.driver", logging.INFO))
    assert not keep.filter(make("ray", logging.INFO))


def test_an_actor_of_a_local_run_writes_its_output_to_the_run_logs(tmp_path):
    """At the file-descriptor level, so prints, logging and C-level engine output all land in the file."""
    code = (
        "import os, sys\n"
        "from audio_thinker.core.log import redirect_actor_output\n"
        "redirect_actor_output('rollout-worker')\n"
        "print('to stdout'); print('to stderr', file=sys.stderr); os.write(2, b'raw fd 2\\n')\n"
    )
    env = {**os.environ, LOG_DIR_ENV: str(tmp_path / "logs")}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout == "" and done.stderr == ""
    (log,) = (tmp_path / "logs").glob("rollout-worker-*.log")
    assert sorted(log.read_text().splitlines()) == ["raw fd 2", "to stderr", "to stdout"]


def test_wandb_offline_gets_the_metrics_and_a_completions_table_with_audio(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    clip = write_audio(tmp_path / "clip.wav", np.zeros(1600, np.float32))
    run_dir = tmp_path / "tiny-cpu-20261201-000000"
    run_dir.mkdir()
    logger = WandbLogger(load_config(None, ["run.loggers=[wandb]"]), run_dir, resume=False)
    logger.log_metrics(1, {"step": 1, "reward/total": 0.5})
    logger.log_completions(1, [dataclasses.replace(record(1.5), audio_path=str(clip))])
    logger.close()
    (offline,) = (run_dir / "wandb").glob("offline-run-*")
    assert (offline / "run-tiny-cpu-20261201-000000.wandb").stat().st_size > 0
    (table,) = offline.glob("files/media/table/completions_*.table.json")
    logged = json.loads(table.read_text())
    assert logged["columns"][-1] == "audio" and logged["data"][0][-1] == "Audio"  # the clip, as a W&B Audio cell
    assert logged["data"][0][logged["columns"].index("total")] == 1.5
