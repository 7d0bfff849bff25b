"""deploy/Dockerfile builds what the package needs (no docker here: a static check): every COPY source exists in
the repository, the packages it copies are every package pyproject.toml installs, the extras it installs exist, and
its entrypoint is the package's command."""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, rest) of each line that is not a comment."""
    lines = [line.strip() for line in DOCKERFILE.read_text().splitlines()]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines if line and line[0] != "#"]


def test_every_copy_source_exists_and_every_package_is_copied():
    copied = []
    for op, rest in instructions():
        if op == "COPY":
            args = [a for a in shlex.split(rest) if not a.startswith("--")]
            for source in args[:-1]:
                assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
                copied.append(source)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert packages <= set(copied), f"packages not copied: {packages - set(copied)}"
    assert {"pyproject.toml", project["project"]["readme"]} <= set(copied)


def test_the_installed_extras_exist_and_the_entrypoint_is_the_command():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    runs = [rest for op, rest in instructions() if op == "RUN"]
    extras = {e for run in runs for m in re.finditer(r"\.\[([\w,]+)\]", run) for e in m.group(1).split(",")}
    assert extras and extras <= set(project["project"]["optional-dependencies"]), extras
    (entrypoint,) = [json.loads(rest) for op, rest in instructions() if op == "ENTRYPOINT"]
    assert entrypoint[0] in project["project"]["scripts"], entrypoint
