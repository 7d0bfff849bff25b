"""argparse options derived from a pydantic model: types, choices, flags, defaults in the help, errors."""

from __future__ import annotations

import argparse
from typing import Literal

import pytest
from pydantic import BaseModel, Field, model_validator

from audio_thinker.core.judge_config import JudgeLimits
from audio_thinker.core.options import OptionError, add_model_arguments, model_from_args


class Demo(BaseModel):
    name: str = Field(description="A required name.")
    mode: Literal["fast", "slow"] = Field("fast", description="How to go.")
    level: Literal[1, 2, 3] = Field(2, description="An integer choice.")
    count: int = Field(3, ge=1, description="How many.")
    ratio: float | None = Field(None, gt=0, description="An optional share.")
    tag: str | None = Field(None, description="An optional tag, 100% free text.")
    verbose: bool = Field(False, description="Say more.")
    cache: bool = Field(True, description="Use the cache.")

    @model_validator(mode="after")
    def _slow_needs_ratio(self) -> Demo:
        if self.mode == "slow" and self.ratio is None:
            raise ValueError("--mode slow needs --ratio")
        return self


def parser_for(model: type[BaseModel], **kwargs) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="demo")
    add_model_arguments(parser, model, **kwargs)
    return parser


def parse(argv: list[str]) -> Demo:
    return model_from_args(Demo, parser_for(Demo).parse_args(argv))


def test_defaults_and_types():
    demo = parse(["--name", "x"])
    assert demo == Demo(name="x")
    demo = parse(["--name", "x", "--mode", "slow", "--level", "3", "--count", "7", "--ratio", "0.5", "--tag", "t",
                  "--verbose", "--no-cache"])
    assert demo.model_dump() == {"name": "x", "mode": "slow", "level": 3, "count": 7, "ratio": 0.5, "tag": "t",
                                 "verbose": True, "cache": False}


def test_choices_types_and_required_are_enforced_by_argparse(capsys):
    for argv in (["--name", "x", "--mode", "medium"], ["--name", "x", "--level", "4"], ["--name", "x", "--count", "a"],
                 []):
        with pytest.raises(SystemExit) as info:
            parse(argv)
        assert info.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'medium' (choose from" in err and "invalid int value: 'a'" in err
    assert "the following arguments are required: --name" in err


def test_help_shows_description_choices_and_default(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    text = " ".join(parser_for(Demo).format_help().split())
    assert "--name NAME A required name. (required)" in text
    assert "--mode {fast,slow} How to go. (default: fast)" in text
    assert "--level {1,2,3} An integer choice. (default: 2)" in text
    assert "--count COUNT How many. (default: 3)" in text
    assert "--ratio RATIO An optional share. (default: none)" in text
    assert "An optional tag, 100% free text. (default: none)" in text
    assert "--verbose Say more. (default: off)" in text
    assert "--no-cache Use the cache. (default: on; this flag turns it off)" in text


def test_a_bad_value_names_the_option():
    with pytest.raises(OptionError, match=r"^--count: Input should be greater than or equal to 1 \(got 0\)$"):
        parse(["--name", "x", "--count", "0"])
    with pytest.raises(OptionError, match=r"^--count: .*; --ratio: Input should be greater than 0 \(got -1.0\)$"):
        parse(["--name", "x", "--ratio", "-1", "--count", "0"])
    with pytest.raises(OptionError, match=r"^--mode slow needs --ratio$"):
        parse(["--name", "x", "--mode", "slow"])


def test_cross_field_limit_names_the_option():
    parser = parser_for(JudgeLimits)
    with pytest.raises(OptionError, match=r"^--max-items: max_items \(2000\) > max_queue \(10\)"):
        model_from_args(JudgeLimits, parser.parse_args(["--max-items", "2000", "--max-queue", "10"]))


def test_not_required_leaves_missing_fields_to_validation():
    parser = parser_for(Demo, required=False, exclude={"tag"})
    namespace = parser.parse_args([])
    assert not hasattr(namespace, "tag")
    with pytest.raises(OptionError, match=r"^--name is required$"):
        model_from_args(Demo, namespace)
    namespace.extra = "ignored"  # other attributes of the namespace (the command, a handler) are not fields
    namespace.name = "x"
    assert model_from_args(Demo, namespace) == Demo(name="x")


def test_a_type_without_an_option_is_refused():
    class Odd(BaseModel):
        items: dict[str, int] = Field(default_factory=dict, description="A mapping.")

    with pytest.raises(TypeError, match=r"Odd\.items: no command-line option for the type"):
        parser_for(Odd)


def test_a_list_field_is_an_option_given_once_per_value():
    class Many(BaseModel):
        files: list[str] = Field(default_factory=list, description="Files.")
        sizes: list[int] = Field([1], description="Sizes.")

    parser = parser_for(Many)
    assert model_from_args(Many, parser.parse_args([])) == Many(files=[], sizes=[1])
    got = model_from_args(Many, parser.parse_args(["--files", "a=1", "--files", "b", "--sizes", "2"]))
    assert got == Many(files=["a=1", "b"], sizes=[2])  # the values given replace the default
    with pytest.raises(SystemExit):
        parser.parse_args(["--sizes", "x"])


def test_a_list_field_may_take_its_values_after_one_option():
    class Runs(BaseModel):
        runs: list[str] = Field(description="Runs.", json_schema_extra={"nargs": "+"})

    parser = parser_for(Runs)
    assert model_from_args(Runs, parser.parse_args(["--runs", "a", "b"])) == Runs(runs=["a", "b"])
    with pytest.raises(SystemExit):
        parser.parse_args(["--runs"])
