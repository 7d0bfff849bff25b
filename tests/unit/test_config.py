"""Config loading: presets validate, overrides apply, bad keys and values are errors that name them."""

import re
from pathlib import Path

import pytest

from audio_thinker.core.config import Config, RolloutConfig
from audio_thinker.core.presets import (
    PRESET_DIR,
    REMOVED,
    RENAMED,
    ConfigError,
    dump_config,
    load_config,
    parse_override,
)


@pytest.mark.parametrize("preset", sorted(p.name for p in PRESET_DIR.glob("*.yaml")))
def test_every_preset_validates(preset):
    assert isinstance(load_config(PRESET_DIR / preset), Config)


def test_default_is_tiny_cpu():
    cfg = load_config()
    assert cfg.run.name == "tiny-cpu"
    assert cfg.model.family == "qwen2_audio" and cfg.model.dtype == "float32"


@pytest.mark.parametrize(
    "preset,family", [("qwen2-audio-7b.yaml", "qwen2_audio"), ("qwen2.5-omni-7b.yaml", "qwen2_5_omni")]
)
def test_paper_presets_carry_the_paper_settings(preset, family):
    cfg = load_config(PRESET_DIR / preset)
    assert cfg.model.family == family
    assert cfg.run.num_gpus == 8
    assert cfg.rollout.samples_per_question == 8
    assert cfg.trainer.lr == 1e-6
    assert cfg.trainer.beta == 0.04
    assert cfg.rollout.temperature == 1.0
    assert cfg.run.total_steps == 1000
    assert cfg.reward.variant == "atar_cr_tr"


@pytest.mark.parametrize("preset", ["qwen2-audio-7b.yaml", "qwen2.5-omni-7b.yaml"])
def test_paper_presets_take_16_completions_per_step(preset):
    """SWIFT's "effective batch size 16" counts completions: 2 questions x 8 samples (docs/paper-settings.md)."""
    cfg = load_config(PRESET_DIR / preset)
    assert cfg.run.questions_per_step * cfg.rollout.samples_per_question == 16
    assert cfg.run.questions_per_step == 2


def test_overrides_are_typed_yaml_values():
    cfg = load_config(
        None,
        [
            "run.total_steps=7",
            "trainer.lr=3e-5",
            "judge.url=null",
            "rollout.engine=transformers",
            "prompt.letter_choices=true",
        ],
    )
    assert cfg.run.total_steps == 7 and cfg.trainer.lr == 3e-5 and cfg.judge.url is None
    assert cfg.rollout.engine == "transformers" and cfg.prompt.letter_choices is True


@pytest.mark.parametrize(
    "override,needle",
    [
        ("trainer.lrr=1", "trainer.lrr: unknown key"),
        ("nosuch.key=1", "nosuch: unknown key"),
        ("run.total_steps=0", "run.total_steps"),
        ("run.total_steps=ten", "run.total_steps"),
        ("rollout.engine=sglang", "rollout.engine"),
        ("reward.variant=ppo", "reward.variant"),
        ("model.dtype=int8", "model.dtype"),
    ],
)
def test_bad_override_names_key(override, needle):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert needle in str(err.value)


@pytest.mark.parametrize("text", ["no_equals_sign", "=3", "a..b=1"])
def test_malformed_override(text):
    with pytest.raises(ConfigError, match="override"):
        parse_override(text)


def test_override_into_a_value_is_an_error():
    with pytest.raises(ConfigError, match="run.name is not a section"):
        load_config(None, ["run.name=a", "run.name.x=1"])
    with pytest.raises(ConfigError, match=r"run.name: Input should be a valid string \(got \{'x': 1\}\)"):
        load_config(None, ["run.name.x=1"])


def test_cross_field_checks():
    with pytest.raises(ConfigError, match="grpo needs prompt.mode=no_think"):
        load_config(None, ["reward.variant=grpo"])
    cfg = load_config(None, ["reward.variant=grpo", "prompt.mode=no_think"])
    assert cfg.reward.variant == "grpo"
    with pytest.raises(ConfigError, match="grpo_cot needs prompt.mode=think"):
        load_config(None, ["reward.variant=grpo_cot"])


def test_paper_defaults_of_the_loss_and_reward_options():
    """The options the paper is silent on default to its own setting (docs/paper-settings.md)."""
    for cfg in (load_config(), load_config(PRESET_DIR / "qwen2-audio-7b.yaml")):
        t, r = cfg.trainer, cfg.reward
        assert (t.loss_type, t.ratio_level, t.clip_eps_low, t.clip_eps_high) == ("grpo", "token", 0.2, 0.2)
        assert (r.invalid_accuracy, r.min_group_std, r.scale_advantages) == ("worst", 0.0, True)
        assert cfg.run.drop_zero_std_groups is False


def test_loss_option_checks():
    with pytest.raises(ConfigError, match=r"trainer.clip_eps was replaced by trainer.clip_eps_low and "
                       r"trainer.clip_eps_high .* set both to 0.3"):
        load_config(None, ["trainer.clip_eps=0.3"])
    with pytest.raises(ConfigError, match="loss_type=dr_grpo needs trainer.max_completion_length"):
        load_config(None, ["trainer.loss_type=dr_grpo"])
    with pytest.raises(ConfigError, match="max_completion_length=32 < rollout.max_new_tokens=48"):
        load_config(None, ["trainer.loss_type=dr_grpo", "trainer.max_completion_length=32"])
    cfg = load_config(None, ["trainer.loss_type=dr_grpo", "trainer.max_completion_length=48",
                             "reward.scale_advantages=false", "trainer.clip_eps_high=0.28"])
    assert cfg.trainer.max_completion_length == 48 and cfg.reward.scale_advantages is False
    for bad, key in [("trainer.loss_type=ppo", "trainer.loss_type"), ("trainer.clip_eps_low=1", "clip_eps_low"),
                     ("trainer.ratio_level=group", "trainer.ratio_level"), ("judge.score_mode=mean", "score_mode"),
                     ("reward.min_group_std=-1", "reward.min_group_std"),
                     ("reward.invalid_accuracy=none", "reward.invalid_accuracy")]:
        with pytest.raises(ConfigError, match=key):
            load_config(None, [bad])


def test_bad_files(tmp_path: Path):
    with pytest.raises(ConfigError, match="missing.yaml is neither a file nor a packaged preset"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(tmp_path / "list.yaml")
    (tmp_path / "broken.yaml").write_text("run: {name: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "broken.yaml")
    (tmp_path / "typo.yaml").write_text("run:\n  totl_steps: 3\n")
    with pytest.raises(ConfigError, match=r"typo.yaml.*\n  run.totl_steps: unknown key"):
        load_config(tmp_path / "typo.yaml")


def test_dump_round_trips(tmp_path: Path):
    cfg = load_config(None, ["run.total_steps=11"])
    dump_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg


def test_every_field_has_a_description():
    def walk(model):
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"
            ann = field.annotation
            if isinstance(ann, type) and hasattr(ann, "model_fields"):
                walk(ann)

    walk(Config)


def test_the_defaults_are_the_embedded_tiny_run():
    """No file: the pydantic defaults are the CPU demo, one default per key."""
    cfg = load_config()
    assert cfg == Config()
    assert (cfg.run.questions_per_step, cfg.trainer.lr, cfg.model.tiny_warmup_steps) == (4, 1e-4, 150)
    assert cfg.rollout.max_new_tokens == 48


def test_presets_load_by_name_from_any_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_config("qwen2-audio-7b") == load_config(PRESET_DIR / "qwen2-audio-7b.yaml")
    assert load_config("qwen2-audio-7b.yaml").model.family == "qwen2_audio"


def test_the_7b_presets_share_one_base_and_differ_only_in_the_model():
    a, b = load_config("qwen2-audio-7b").model_dump(), load_config("qwen2.5-omni-7b").model_dump()
    differing = {(section, key) for section in a for key in a[section] if a[section][key] != b[section][key]}
    assert differing == {("run", "name"), ("model", "family"), ("model", "policy_path")}


def test_base_inheritance_merges_sections_and_names_bad_files(tmp_path):
    (tmp_path / "base.yaml").write_text("run:\n  total_steps: 9\n  seed: 5\ntrainer:\n  lr: 0.5\n")
    (tmp_path / "child.yaml").write_text("base: base.yaml\nrun:\n  seed: 6\n")
    cfg = load_config(tmp_path / "child.yaml")
    assert (cfg.run.total_steps, cfg.run.seed, cfg.trainer.lr) == (9, 6, 0.5)
    (tmp_path / "preset_child.yaml").write_text("base: qwen2-audio-7b\nrun:\n  total_steps: 2\n")
    cfg = load_config(tmp_path / "preset_child.yaml")
    assert (cfg.run.total_steps, cfg.trainer.lr) == (2, 1e-6)
    (tmp_path / "orphan.yaml").write_text("base: nowhere.yaml\n")
    with pytest.raises(ConfigError, match=r"orphan.yaml: base: config nowhere.yaml is neither a file"):
        load_config(tmp_path / "orphan.yaml")
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match=r"base: cycle .*a.yaml -> .*b.yaml -> .*a.yaml"):
        load_config(tmp_path / "a.yaml")


def test_an_unknown_key_suggests_the_closest_one():
    with pytest.raises(ConfigError, match=r"run.totl_steps: unknown key \(did you mean run.total_steps\?\)"):
        load_config(None, ["run.totl_steps=3"])


@pytest.mark.parametrize(
    "overrides,needle",
    [
        (["model.dtype=float16"], "model.dtype=float16"),
        (["judge.backend=openai"], "judge.backend=openai with judge.url unset"),
        (["rollout.num_gpus_per_worker=1", "rollout.tensor_parallel_size=2"], "rollout.tensor_parallel_size=2"),
        (["trainer.num_ranks=40"], "trainer.num_ranks=40 > the 32 sequences"),
        (["trainer.mini_batches_per_step=9", "trainer.num_ranks=4"], "mini_batches_per_step=9 x trainer.num_ranks=4"),
        (["trainer.ppo_epochs=0"], "ppo_epochs"),
        (["judge.max_items=2000"], "max_items \\(2000\\) > max_queue"),
    ],
)
def test_combinations_the_code_cannot_run_are_refused_at_load(overrides, needle):
    with pytest.raises(ConfigError, match=needle):
        load_config(None, overrides)


def test_tensor_parallelism_needs_its_gpus_in_the_section_itself():
    """Checked where the section is built, so a pool can never be started with a placement that cannot fit."""
    with pytest.raises(ValueError, match="tensor_parallel_size=2 needs that many GPUs per worker"):
        RolloutConfig(engine="vllm", tensor_parallel_size=2, num_gpus_per_worker=1)


@pytest.mark.parametrize("old, new", sorted(RENAMED.items()))
def test_a_renamed_key_is_one_error_naming_its_new_name(tmp_path, old, new):
    with pytest.raises(ConfigError, match=rf"^{re.escape(old)} \(override .*\): renamed {re.escape(new)} "):
        load_config(None, [f"{old}=1"])
    section, key = old.split(".")
    (tmp_path / "old.yaml").write_text(f"{section}:\n  {key}: 1\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(old)} \(.*old.yaml\): renamed {re.escape(new)}"):
        load_config(tmp_path / "old.yaml")


def test_a_benchmark_toggle_is_no_config_key():
    for old in REMOVED:
        with pytest.raises(ConfigError, match=rf"^{re.escape(old)} .*benchmark toggle"):
            load_config(None, [f"{old}=false"])


def test_a_run_directory_saved_before_the_renames_reads_with_the_new_names(tmp_path):
    """A config.yaml that a run wrote before the renames: every old key lands on its new one (resume, export,
    report read it this way), the dropped benchmark toggles are ignored."""
    saved = tmp_path / "config.yaml"
    saved.write_text(
        "run:\n  max_restarts: 1\n"
        "trainer:\n  timeout_s: 77\n  reference_placement: separate\n  reference_num_cpus: 0.5\n"
        "  reference_num_gpus: 0.0\n  reference_max_restarts: 4\n  encode_audio_once: true\n"
        "  recompute_old_logprobs: false\n"
        "judge:\n  timeout_s: 33\n  restart_timeout_s: 44\n"
    )
    config = load_config(saved, saved_run=True)
    assert (config.trainer.max_restarts, config.trainer.call_timeout_s) == (1, 77)
    assert (config.reference.num_cpus, config.reference.max_restarts) == (0.5, 4)
    assert (config.judge.call_timeout_s, config.judge.startup_timeout_s) == (33, 44)
    with pytest.raises(ConfigError, match="renamed"):
        load_config(saved)  # a user's own file is told, not silently moved
