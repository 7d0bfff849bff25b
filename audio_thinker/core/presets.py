"""Loading a run configuration: packaged presets or YAML files, `base:` inheritance, `key=value` overrides.

`load_config()` is the one entry point the CLI, the driver and the tests use. No file means the built-in
defaults (the tiny CPU run). A file may start from another with `base: other.yaml` (a path relative to the
file, or a packaged preset name); keys of the file replace the base's, section by section. Every error names
the file, the key and the value.
"""

from __future__ import annotations

import difflib
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from audio_thinker.core.config import Config
from audio_thinker.core.errors import UserError

PRESET_DIR = Path(str(resources.files("audio_thinker") / "configs"))

# Keys renamed on 2026-12-07 (README, "Config renames"): one name per idea in every section (`<part>.max_restarts`,
# `<part>.startup_timeout_s`, `<part>.call_timeout_s`) and a `reference` section. An old key in a file or an
# override is an error naming the new one; a run directory's saved config.yaml is read with the new names.
RENAMED = {
    "run.max_restarts": "trainer.max_restarts",
    "trainer.timeout_s": "trainer.call_timeout_s",
    "trainer.reference_placement": "reference.placement",
    "trainer.reference_num_cpus": "reference.num_cpus",
    "trainer.reference_num_gpus": "reference.num_gpus",
    "trainer.reference_max_restarts": "reference.max_restarts",
    "judge.timeout_s": "judge.call_timeout_s",
    "judge.restart_timeout_s": "judge.startup_timeout_s",
}
# Benchmark toggles that left the user config (they change cost, never the numbers): bench/pipeline.py's variants.
REMOVED = {
    "trainer.encode_audio_once": "it is a benchmark toggle now (bench/pipeline.py --variants per-sample)",
    "trainer.recompute_old_logprobs": "it is a benchmark toggle now (bench/pipeline.py --variants once-per-clip)",
}


class ConfigError(UserError, ValueError):
    """A config file or override that does not validate; the message names the key and the value."""


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def resolve_config_path(name: str | Path, relative_to: Path | None = None) -> Path:
    """A YAML path (absolute, or relative to `relative_to` / the working directory) or a packaged preset name."""
    path = Path(name)
    candidates = [relative_to / path] if relative_to is not None and not path.is_absolute() else []
    candidates += [path, PRESET_DIR / path, PRESET_DIR / f"{name}.yaml"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    if path.is_dir():
        raise ConfigError(f"config {name!s} is a folder, not a YAML file")
    raise ConfigError(f"config {name!s} is neither a file nor a packaged preset ({', '.join(preset_names())})")


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key given twice in one mapping is an error (YAML keeps the last one
    silently: a config with two `run:` sections would lose the first)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """One line: what is wrong and where (YAML's own message spans lines and quotes the text)."""
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{getattr(exc, 'problem', None) or type(exc).__name__}{where}"


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"config file {path} is a folder")
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if not text.strip():
        raise ConfigError(f"config file {path} is empty (no --config means the built-in defaults)")
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {_yaml_problem(exc)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def merge(base: dict, child: dict) -> dict:
    """`child` over `base`, recursively for nested mappings."""
    out = dict(base)
    for key, value in child.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def read_config_file(path: Path, _chain: tuple[Path, ...] = ()) -> dict:
    """The file's mapping with its `base:` chain resolved."""
    path = path.resolve()
    if path in _chain:
        cycle = " -> ".join(str(p) for p in (*_chain, path))
        raise ConfigError(f"config file {path}: base: cycle {cycle}")
    data = read_yaml(path)
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"config file {path}: base: must be a file name or preset name, got {base!r}")
    try:
        base_path = resolve_config_path(base, relative_to=path.parent)
    except ConfigError as exc:
        raise ConfigError(f"config file {path}: base: {exc}") from None
    return merge(read_config_file(base_path, (*_chain, path)), data)


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b=value` -> (["a", "b"], value); the value is read as YAML (numbers, booleans, null, lists)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value (e.g. run.total_steps=10)")
    key, _, raw = text.partition("=")
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {key}: value {raw!r} is not valid YAML ({exc})") from None
    return key.split("."), value


def apply_override(data: dict, path: list[str], value: Any) -> None:
    node = data
    for i, part in enumerate(path[:-1]):
        if node.get(part) is None:  # absent, or an optional section that is off (e.g. `trainer.lora: null`)
            node[part] = {}
        child = node[part]
        if not isinstance(child, dict):
            raise ConfigError(f"override {'.'.join(path)}: {'.'.join(path[: i + 1])} is not a section")
        node = child
    node[path[-1]] = value


def _known_keys(loc: tuple) -> list[str]:
    """The keys of the section at `loc` (all but its last element), for a 'did you mean' hint."""
    model: type[BaseModel] = Config
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def format_validation_error(exc: ValidationError, source: str) -> str:
    lines = [f"invalid config ({source}):"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "<root>"
        if err["type"] == "extra_forbidden":
            close = difflib.get_close_matches(str(err["loc"][-1]), _known_keys(err["loc"]), n=1)
            prefix = ".".join(str(p) for p in err["loc"][:-1])
            hint = f" (did you mean {prefix + '.' if prefix else ''}{close[0]}?)" if close else ""
            lines.append(f"  {loc}: unknown key{hint}")
        elif not err["loc"] and err["type"] == "value_error":  # a check across sections: its message names the keys
            lines.append(f"  {err['ctx']['error']}")
        else:
            shown = "" if err["type"] == "missing" else f" (got {err.get('input')!r})"
            lines.append(f"  {loc}: {err['msg']}{shown}")
    return "\n".join(lines)


def _old_keys(data: dict, source: str, migrate: bool) -> None:
    """Renamed and removed keys: an error naming the new name, or (`migrate`: a saved run's config) moved to it."""
    for old, why in [*((o, f"renamed {n}") for o, n in RENAMED.items()), *REMOVED.items()]:
        section, key = old.split(".")
        if not (isinstance(data.get(section), dict) and key in data[section]):
            continue
        if not migrate:
            raise ConfigError(f"{old} ({source}): {why} (README: config renames)")
        value = data[section].pop(key)
        if old in RENAMED:
            new_section, new_key = RENAMED[old].split(".")
            target = data.get(new_section)
            data[new_section] = target if isinstance(target, dict) else {}
            data[new_section].setdefault(new_key, value)


def load_config(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (), saved_run: bool = False
) -> Config:
    """The built-in defaults, or a preset / YAML file with its `base:` chain, then `key=value` overrides.
    `saved_run`: `path` is a run directory's config.yaml, whose keys from before a rename are read as the new ones."""
    source = "built-in defaults"
    data: dict = {}
    if path:
        resolved = resolve_config_path(path)
        data, source = read_config_file(resolved), str(resolved)
        _old_keys(data, source, migrate=saved_run)
    for text in overrides:
        keys, value = parse_override(text)
        apply_override(data, keys, value)
        _old_keys(data, f"override {text}", migrate=False)
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        shown = source + (f" with overrides {list(overrides)}" if overrides else "")
        raise ConfigError(format_validation_error(exc, shown)) from None


def dump_config(config: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
