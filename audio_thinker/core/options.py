"""Command-line options derived from a pydantic model, so that a command's fields, types, choices, defaults
and help are written once (in the model) and argparse and validation cannot drift apart.

    add_model_arguments(parser, ServeOptions)          # --max-items, --backend {transformers,vllm,openai}, ...
    options = model_from_args(ServeOptions, parser.parse_args())   # OptionError: "--max-items: ..."

A field `max_items` becomes `--max-items`; `Literal` fields get their values as `choices`; a bool field is a
flag (`--x`, or `--no-x` when it defaults to True); `int | None` and the like parse the inner type; a
`list[str]` field is an option given once per value (`--bench a=1 --bench b=2`: no `nargs`, so it cannot
swallow a command's positional arguments), or, with `json_schema_extra={"nargs": "+"}`, one option followed by
its values (`--runs a b`); a field without a default is a required option. Each help text
is the field's description plus its default.
"""

from __future__ import annotations

import argparse
import types
from collections.abc import Collection
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from audio_thinker.core.errors import UserError

M = TypeVar("M", bound=BaseModel)
_SCALARS = (int, float, str)


class OptionError(UserError, ValueError):
    """Options that do not validate; the message is one line naming the option(s)."""


def option_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def _inner(annotation: Any) -> Any:
    """`X | None` -> X; anything else unchanged."""
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _shown(value: Any) -> str:
    return "none" if value is None else str(value)


def _argument(model: type[BaseModel], name: str, field: FieldInfo, required: bool) -> tuple[str, dict[str, Any]]:
    """The option string and the add_argument keywords of one field."""
    flag = option_name(name)
    kind = _inner(field.annotation)
    described = (field.description or "").rstrip()
    kwargs: dict[str, Any] = {"dest": name}
    if field.is_required():
        kwargs["required"] = required
        kwargs["help"] = f"{described} (required)"
    else:
        default = field.get_default(call_default_factory=True)
        kwargs["default"] = default
        kwargs["help"] = f"{described} (default: {_shown(default)})"
    if kind is bool:
        if kwargs.get("default") is True:
            flag = "--no-" + name.replace("_", "-")
            kwargs.update(action="store_false", help=f"{described} (default: on; this flag turns it off)")
        else:
            kwargs.update(action="store_true", help=f"{described} (default: off)")
        return flag, kwargs
    if get_origin(kind) is list and get_args(kind)[0] in _SCALARS:
        # None, not the model's default: argparse would append to a copy of it ([1] + --x 2 = [1, 2]).
        kwargs.update(type=get_args(kind)[0], default=None)
        if (field.json_schema_extra or {}).get("nargs") == "+":  # opted in by a command without positionals
            kwargs["nargs"] = "+"
        else:
            kwargs["action"] = "append"
    elif get_origin(kind) is Literal:
        choices = get_args(kind)
        kwargs.update(choices=choices, type=type(choices[0]))
    elif kind in _SCALARS:
        kwargs["type"] = kind
    else:
        raise TypeError(f"{model.__name__}.{name}: no command-line option for the type {field.annotation!r}")
    return flag, kwargs


def add_model_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    model: type[BaseModel],
    *,
    exclude: Collection[str] = (),
    required: bool = True,
) -> None:
    """One `--field-name` option per field of `model` (except `exclude`), on a parser or an argument group.

    `required=False` leaves the check of fields without a default to `model_from_args` (for a parser with a
    sub-command that does not need them); their help still says "(required)".
    """
    for name, field in model.model_fields.items():
        if name not in exclude:
            flag, kwargs = _argument(model, name, field, required)
            parser.add_argument(flag, **{**kwargs, "help": kwargs["help"].replace("%", "%%")})


def _message(option: str, err: dict[str, Any]) -> str:
    if err["type"] == "missing":
        return f"{option} is required"
    if err["type"] == "value_error":
        return f"{option}: {err['ctx']['error']}"
    return f"{option}: {err['msg']} (got {err.get('input')!r})"


def format_option_error(exc: ValidationError) -> str:
    """One line: each error led by the option it is about (cross-field errors name the options themselves)."""
    parts = []
    for err in exc.errors():
        if err["loc"]:
            parts.append(_message(option_name(str(err["loc"][0])), err))
        else:
            parts.append(str(err["ctx"]["error"]) if err["type"] == "value_error" else err["msg"])
    return "; ".join(parts)


def model_from_args(model: type[M], namespace: argparse.Namespace) -> M:
    """Build `model` from the parsed options (other attributes of the namespace are ignored).

    A field without a default that was not given (None) is reported as a required option; a list option not
    given takes the model's default. Raises OptionError.
    """
    values = {  # None: not given (a list option, a required one), so the model's default or its error applies
        name: getattr(namespace, name)
        for name in model.model_fields
        if getattr(namespace, name, None) is not None
    }
    try:
        return model(**values)
    except ValidationError as exc:
        raise OptionError(format_option_error(exc)) from None
