"""The checks of the paths a command is given, before it does anything: each failure is one `OptionError` that
names the option and the path (a missing file, a folder where a file belongs, an empty file, an output that
exists)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from audio_thinker.core.options import OptionError


def input_file(option: str, path: str | Path) -> Path:
    """A file to read: it exists, is a file and is not empty."""
    path = Path(path)
    if path.is_dir():
        raise OptionError(f"{option} {path} is a folder, not a file")
    if not path.is_file():
        raise OptionError(f"{option} {path}: no such file")
    if path.stat().st_size == 0:
        raise OptionError(f"{option} {path} is empty")
    return path


def input_folder(option: str, path: str | Path) -> Path:
    """A folder to read: it exists and is a folder."""
    path = Path(path)
    if path.is_file():
        raise OptionError(f"{option} {path} is a file, not a folder")
    if not path.is_dir():
        raise OptionError(f"{option} {path}: no such folder")
    return path


def output_folder(option: str, path: str | Path) -> Path:
    """A folder to write into: it may exist (as a folder) or not yet; nothing on its way is a file."""
    path = Path(path)
    for part in (path, *path.parents):
        if part.exists() and not part.is_dir():
            raise OptionError(f"{option} {path}: {part} is a file, not a folder")
    return path


def refuse_existing(option: str, paths: Iterable[Path]) -> None:
    """Nothing is written over without being asked: the first of `paths` that exists is an error."""
    for path in paths:
        if path.exists():
            raise OptionError(f"{option}: {path} exists (pass --overwrite to replace it)")
