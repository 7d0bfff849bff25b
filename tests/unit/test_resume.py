"""A resume resumes the same run; a mistyped data path never writes over a data set (no Ray, no models)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from audio_thinker.app.cli.main import main
from audio_thinker.app.errors import TrainingError
from audio_thinker.app.train.resume import CHANGES_FILE, record_changes, resume_config, start_config
from audio_thinker.app.data.synthetic import write_synthetic_dataset
from audio_thinker.core.options import OptionError
from audio_thinker.core.presets import dump_config, load_config


@pytest.fixture()
def saved_run(tmp_path) -> Path:
    """A run directory whose saved config differs from the defaults in what defines the run."""
    run = tmp_path / "run"
    run.mkdir()
    config = load_config(None, [f"run.output_dir={run}", "run.total_steps=2", "run.seed=5", "reward.variant=atar_cr"])
    dump_config(config, run / "config.yaml")
    return run


def test_resume_without_the_original_overrides_continues_the_saved_run(saved_run):
    config, changes = resume_config(None, [f"run.output_dir={saved_run}"])
    assert (config.run.total_steps, config.run.seed, config.reward.variant) == (2, 5, "atar_cr")
    assert config.run.resume is True and changes == {}


def test_harmless_overrides_are_allowed_on_resume(saved_run):
    config, changes = resume_config(None, [f"run.output_dir={saved_run}", "judge.call_timeout_s=7", "run.eval_every=3"])
    assert (config.judge.call_timeout_s, config.run.eval_every, config.run.total_steps) == (7, 3, 2)
    assert changes == {}


@pytest.mark.parametrize(
    "override,needle",
    [
        ("run.total_steps=3", "run.total_steps: saved 2, now 3"),
        ("run.seed=1", "run.seed: saved 5, now 1"),
        ("reward.variant=atar", "reward.variant: saved 'atar_cr', now 'atar'"),
        ("trainer.lr=0.5", "trainer.lr: saved 0.0001, now 0.5"),
        ("trainer.lora.rank=4", "trainer.lora: saved None, now {'rank': 4"),
    ],
)
def test_a_run_defining_override_is_refused_naming_the_key_and_the_saved_value(saved_run, override, needle):
    with pytest.raises(TrainingError, match=needle):
        resume_config(None, [f"run.output_dir={saved_run}", override])


def test_a_config_file_on_resume_must_agree_with_the_saved_run(saved_run):
    with pytest.raises(TrainingError, match="run.total_steps: saved 2, now 1000"):
        resume_config("qwen2-audio-7b", [f"run.output_dir={saved_run}"])
    same = saved_run.parent / "same.yaml"
    same.write_text((saved_run / "config.yaml").read_text())
    config, changes = resume_config(str(same), [f"run.output_dir={saved_run}"])
    assert changes == {} and config.run.total_steps == 2


def test_an_allowed_change_is_recorded_in_the_run_directory(saved_run):
    config, changes = resume_config(
        None, [f"run.output_dir={saved_run}", "run.total_steps=4"], allow_config_change=True
    )
    assert config.run.total_steps == 4 and changes == {"run.total_steps": (2, 4)}
    record_changes(saved_run, changes)
    entry = json.loads((saved_run / CHANGES_FILE).read_text())
    assert entry["changes"] == {"run.total_steps": {"saved": 2, "now": 4}}


def test_cli_refuses_a_conflicting_resume_in_one_line(saved_run, capsys):
    assert main(["train", "--resume", f"run.output_dir={saved_run}", "run.total_steps=9"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "run.total_steps: saved 2, now 9" in err and "--allow-config-change" in err


def digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()
    }


def test_a_mistyped_manifest_leaves_every_file_as_it_was_and_fails_before_a_model_loads(tmp_path, capsys):
    data = tmp_path / "artifacts" / "synthetic"
    write_synthetic_dataset(data, n=3, seed=0, split="train")
    before = digest(tmp_path)
    models = tmp_path / "models"
    code = main(
        [
            "train",
            f"data.train_manifest={data / 'trian.jsonl'}",
            f"data.audio_root={data}",
            "data.eval_manifest=null",
            f"model.policy_path={models / 'qwen2_audio'}",
            f"model.judge_path={models / 'qwen3_judge'}",
            f"run.output_dir={tmp_path / 'run'}",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert f"data.train_manifest={data / 'trian.jsonl'}: no such file" in err and str(data / "train.jsonl") in err
    assert digest(tmp_path) == before and not models.exists() and not (tmp_path / "run").exists()


def test_a_missing_manifest_without_synthetic_fallback_is_one_line(tmp_path, capsys):
    missing = tmp_path / "none.jsonl"
    assert main(["train", f"data.train_manifest={missing}", "data.make_synthetic_if_missing=false"]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err
        == f"audio-thinker train: data.train_manifest={missing}: no such file (data.make_synthetic_if_missing=false)"
    )


def test_synthetic_data_is_never_written_over_an_existing_split(tmp_path):
    manifest = write_synthetic_dataset(tmp_path, n=3, seed=0)
    before = digest(tmp_path)
    with pytest.raises(FileExistsError, match="train.jsonl exists"):
        write_synthetic_dataset(tmp_path, n=3, seed=1)
    assert digest(tmp_path) == before
    assert write_synthetic_dataset(tmp_path, n=3, seed=1, overwrite=True) == manifest
    assert digest(tmp_path) != before


def test_resume_needs_a_saved_run_and_resume_if_exists_starts_one_when_there_is_none(saved_run, tmp_path):
    typo = tmp_path / "rnu"  # a mistyped run.output_dir: never a fresh run in place of the one meant
    for argv, resume in (([f"run.output_dir={typo}"], True), ([f"run.output_dir={typo}", "run.resume=true"], False)):
        with pytest.raises(TrainingError, match=f"run.output_dir={typo} holds no saved run"):
            start_config(None, argv, resume=resume)
    fresh, changes = start_config(None, [f"run.output_dir={typo}", "run.total_steps=7"], resume_if_exists=True)
    assert (fresh.run.resume, fresh.run.total_steps, changes) == (False, 7, {})
    resumed, _ = start_config(None, [f"run.output_dir={saved_run}"], resume_if_exists=True)
    assert (resumed.run.resume, resumed.run.total_steps, resumed.run.seed) == (True, 2, 5)  # the saved run


def test_a_config_change_without_a_resume_and_a_new_run_over_an_old_one_are_refused(saved_run):
    with pytest.raises(OptionError, match="--allow-config-change: only with --resume"):
        start_config(None, [f"run.output_dir={saved_run}"], allow_config_change=True)
    with pytest.raises(OptionError, match="choose one"):
        start_config(None, [f"run.output_dir={saved_run}"], resume=True, resume_if_exists=True)
    (saved_run / "metrics.jsonl").write_text(json.dumps({"step": 1}) + "\n")
    with pytest.raises(TrainingError, match="already holds a run: --resume to continue it"):
        start_config(None, [f"run.output_dir={saved_run}"])
    config, changes = start_config(None, [f"run.output_dir={saved_run}", "run.total_steps=3"], resume=True,
                                   allow_config_change=True)  # fmt: skip
    assert config.run.total_steps == 3 and changes == {"run.total_steps": (2, 3)}
