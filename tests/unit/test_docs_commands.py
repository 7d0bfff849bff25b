"""Every `audio-thinker` command in README.md and docs/ works as printed: written as `.venv/bin/audio-thinker` (what
works after `make demo`; commands inside a cluster's image excepted), its options exist, the configs of the long
ones (`train`, `sft`, `ablate`) load and `plan` accepts them, and the ones that need no model or data (`plan`,
`rewards`) run, with the exit code the text gives them."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

from audio_thinker.app.cli.main import main
from audio_thinker.app.cli.parsers import build_parser
from audio_thinker.app.train.plan import GB, job_of, make_plan
from audio_thinker.core.presets import load_config

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
VENV_COMMAND = ".venv/bin/audio-thinker"
ENV = re.compile(r"^[A-Z_][A-Z0-9_]*=\S*$")


@dataclass(frozen=True)
class Command:
    where: str  # file:line
    first: str  # how the line calls the command (its first word after environment variables)
    argv: list[str]  # after `audio-thinker`
    comment: str


def code_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of the shell code: fenced bash/sh blocks and indented blocks, continuations joined."""
    lines, fenced, lang, previous_blank, indented = [], False, "", True, False
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip().startswith("```"):
            fenced, lang = (not fenced), line.strip()[3:]
            continue
        indented = not fenced and line.startswith("    ") and (indented or previous_blank)
        previous_blank = not line.strip()
        if (fenced and lang in ("bash", "sh", "")) or indented:
            lines.append((number, line))
    joined, start, current = [], None, ""
    for number, line in lines:
        start = start or number
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        joined.append((start, current + line))
        start, current = None, ""
    return joined


def commands() -> list[Command]:
    found = []
    for path in DOCS:
        for number, line in code_lines(path):
            code, _, comment = line.partition(" #")
            if "audio-thinker" not in code or code.lstrip().startswith("#"):
                continue
            words = shlex.split(code.split(" > ")[0].split(" | ")[0].rstrip(" &"))
            calls = [i for i, w in enumerate(words) if w.endswith("audio-thinker")]
            if not calls:
                continue
            first = next((w for w in words if not ENV.match(w)), "")
            found.append(Command(f"{path.name}:{number}", first, words[calls[0] + 1 :], comment))
    return found


COMMANDS = commands()


def test_the_docs_have_commands_and_call_them_the_venvs_way():
    assert len(COMMANDS) > 40
    for c in COMMANDS:
        if c.first.endswith("audio-thinker"):  # typed on this machine (not inside `ray job submit ... --`)
            assert c.first == VENV_COMMAND, f"{c.where}: {c.first} (write {VENV_COMMAND})"


@pytest.mark.parametrize("command", COMMANDS, ids=[c.where for c in COMMANDS])
def test_a_documented_command_works_as_printed(command, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    try:
        args = build_parser().parse_args(command.argv)
    except SystemExit:
        pytest.fail(f"{command.where}: audio-thinker {shlex.join(command.argv)}: {capsys.readouterr().err}")
    expected = 2 if "exit 2" in command.comment else 0
    if args.command in ("plan", "rewards"):
        assert main(command.argv) == expected, capsys.readouterr().err
    elif args.command in ("train", "sft") and not (args.resume or args.resume_if_exists):
        config = load_config(args.config, args.overrides)
        job = "sft" if args.command == "sft" else job_of(config, "train")
        capacity = config.run.gpu_memory_gb * GB if config.run.gpu_memory_gb else None
        assert make_plan(config, capacity, job).problems == [], command.where
    elif args.command == "ablate":
        load_config(args.preset, args.overrides)
