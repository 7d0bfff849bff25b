"""The build lock of DeepSpeed's JIT ops, made safe against processes that die holding it.

On a CPU machine DeepSpeed's communication op (`deepspeed_shm_comm`) is a JIT extension: torch builds it once
into `TORCH_EXTENSIONS_DIR/<op>/` (`make install` does it ahead of any run) and every process that loads it
creates, checks and removes the file `<op>/lock` around that (torch's `FileBaton`). A process stopped at that
moment (Ctrl-C in the first start-up of a fresh clone, a SIGTERM from a deadline) leaves the file behind, and
every later process waits for it forever, silently.

So our processes take an OS lock first: `fcntl.flock` on `<op>/audio-thinker.lock`, which the kernel releases
when its holder dies, with the holder's pid written in it. Whoever holds it is the only one of ours in torch's
critical section, so a torch lock file found then was left by a dead process and is removed, with one warning
naming it. A live holder is waited for, with a message every few seconds naming the lock, its holder and the
waiting process, up to a deadline. (A process that uses the same extensions folder without audio-thinker takes
only torch's lock; keep TORCH_EXTENSIONS_DIR to audio-thinker, as the Makefile does.)

`load_cpu_ops` builds or loads the op (DeepSpeed imported there only, as in the other trainer modules that use it);
`prebuild_cpu_ops` is what `make install` runs.
"""

from __future__ import annotations

import fcntl
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from audio_thinker.core.log import get_logger

log = get_logger(__name__)
SHM_COMM_OP = "deepspeed_shm_comm"
GUARD_FILE = "audio-thinker.lock"
TORCH_LOCK_FILE = "lock"
MESSAGE_EVERY_S = 5.0


class BuildLockTimeout(TimeoutError):
    """A live process held the build lock past the deadline."""


def extensions_dir() -> Path:
    """Where torch builds and finds JIT extensions: TORCH_EXTENSIONS_DIR (the Makefile and the tests set it to
    the checkout's .cache/torch_extensions), else that folder under the working directory."""
    return Path(os.environ.get("TORCH_EXTENSIONS_DIR") or Path.cwd() / ".cache" / "torch_extensions")


def _holder(guard: Path) -> str:
    try:
        return guard.read_text().strip() or "unknown"
    except OSError:
        return "unknown"


@contextmanager
def build_guard(op: str, who: str, timeout_s: float) -> Iterator[None]:
    """Hold the op's build lock while torch builds or loads it (`who`: the waiting process, for the messages).

    Raises BuildLockTimeout naming the lock and its holder when a live process holds it longer than `timeout_s`.
    """
    folder = extensions_dir() / op
    folder.mkdir(parents=True, exist_ok=True)
    guard = folder / GUARD_FILE
    with guard.open("a+") as f:
        start = last_message = time.monotonic()
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                now = time.monotonic()
                if now - start > timeout_s:
                    raise BuildLockTimeout(
                        f"{who} waited {timeout_s:.0f}s for the build lock {guard} of DeepSpeed's {op} op, held by "
                        f"live process {_holder(guard)}"
                    ) from None
                if now - last_message >= MESSAGE_EVERY_S:
                    log.warning(
                        "%s waits for the build lock %s (held by process %s) for %.0fs", who, guard, _holder(guard),
                        now - start,
                    )  # fmt: skip
                    last_message = now
                time.sleep(0.2)
        try:
            f.seek(0)
            f.truncate()
            f.write(f"{os.getpid()}\n")
            f.flush()
            stale = folder / TORCH_LOCK_FILE
            if stale.exists():
                log.warning("removed a stale build lock %s (its builder is gone: stopped during a start-up)", stale)
                stale.unlink(missing_ok=True)
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def describe_lock(op: str = SHM_COMM_OP) -> str | None:
    """What holds the op's build lock now, for an error that names the cause of a stuck start-up (None: free)."""
    folder = extensions_dir() / op
    guard = folder / GUARD_FILE
    if guard.exists():
        with guard.open("a+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(f, fcntl.LOCK_UN)
            except BlockingIOError:
                return f"the build lock {guard} is held by process {_holder(guard)}"
    if (folder / TORCH_LOCK_FILE).exists():
        return f"the build lock {folder / TORCH_LOCK_FILE} exists (left by a process stopped during a start-up?)"
    return None


def prebuild_cpu_ops() -> str:
    """Build (or find built) DeepSpeed's JIT communication op for CPU ranks, under its build lock: `make install`
    calls it so that a run only loads the op. Returns the folder it is in."""
    with build_guard(SHM_COMM_OP, f"process {os.getpid()} (install)", timeout_s=900.0):
        load_cpu_ops()
    return str(extensions_dir() / SHM_COMM_OP)


def load_cpu_ops() -> None:
    """Build (or find built) and load DeepSpeed's communication op for CPU ranks; the caller holds its build lock.

    Always with this environment's ninja (the one beside its Python): torch runs ninja on every load, and a ninja
    of another version (the system's, when the environment is not first on PATH) discards the other's build log
    and builds the op again, for minutes."""
    from deepspeed.accelerator import get_accelerator  # DeepSpeed is imported only where it is used

    env_bin = str(Path(sys.executable).parent)
    if os.environ.get("PATH", "").split(os.pathsep)[0] != env_bin:
        os.environ["PATH"] = os.pathsep.join([env_bin, os.environ.get("PATH", "")])
    get_accelerator().create_op_builder("ShareMemCommBuilder").load(verbose=False)
