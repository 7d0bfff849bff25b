"""Config loading: presets validate, overrides apply, bad keys and values are errors that name them."""

from pathlib import Path

import pytest

from audio_thinker.config import CONFIG_DIR, ConfigError, Config, dump_config, load_config, parse_override


@pytest.mark.parametrize("preset", sorted(p.name for p in CONFIG_DIR.glob("*.yaml")))
def test_every_preset_validates(preset):
    assert isinstance(load_config(CONFIG_DIR / preset), Config)


def test_default_is_tiny_cpu():
    cfg = load_config()
    assert cfg.run.name == "tiny-cpu"
    assert cfg.model.family == "qwen2_audio" and cfg.model.dtype == "float32"


@pytest.mark.parametrize(
    "preset,family", [("qwen2-audio-7b.yaml", "qwen2_audio"), ("qwen2.5-omni-7b.yaml", "qwen2_5_omni")]
)
def test_paper_presets_carry_the_paper_settings(preset, family):
    cfg = load_config(CONFIG_DIR / preset)
    assert cfg.model.family == family
    assert cfg.run.num_gpus == 8
    assert cfg.rollout.samples_per_question == 8
    assert cfg.trainer.lr == 1e-6
    assert cfg.trainer.beta == 0.04
    assert cfg.rollout.temperature == 1.0
    assert cfg.run.total_steps == 1000
    assert cfg.run.questions_per_step == 16
    assert cfg.reward.variant == "atar_cr_tr"


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
        load_config(None, ["run.name.x=1"])


def test_cross_field_checks():
    with pytest.raises(ConfigError, match="grpo needs prompt.mode=no_think"):
        load_config(None, ["reward.variant=grpo"])
    cfg = load_config(None, ["reward.variant=grpo", "prompt.mode=no_think"])
    assert cfg.reward.variant == "grpo"
    with pytest.raises(ConfigError, match="grpo_cot needs prompt.mode=think"):
        load_config(None, ["reward.variant=grpo_cot"])


def test_bad_files(tmp_path: Path):
    with pytest.raises(ConfigError, match="does not exist"):
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
