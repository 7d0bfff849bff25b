"""One generic group of Ray actors: start N with declared resources (in the bundles of the run's placement
groups when given, see actors/placement.py), call them all with a deadline, gather,
ask rank 0 alone, shut down cleanly. The trainer group, the rollout pool, the reference model and the judge
server are thin layers over it, so deadlines and error messages behave the same everywhere.

A failure names the actor: a call past its deadline is a `TimeoutError` naming the group, the call and the
config key that sets the deadline; an actor that died is an `ActorDiedError` naming its index; an exception
raised inside an actor keeps its own type (the driver tells them apart) with a note naming the actor.

Restarts (docs/fault-tolerance.md): with `max_restarts` > 0 Ray restarts a dead actor in a new process (never
re-running a lost call: `max_task_retries` stays 0, so the caller decides what is sent again). `recover` waits
for the new process within its deadline, counts the restart against the group's bound (all actors together),
lets the caller bring the new process up to date and returns; past the bound, or when Ray did not restart
the actor, it raises an `ActorDiedError` naming the actor, the restarts used and the config key.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import ray
from ray.exceptions import ActorUnavailableError, GetTimeoutError, RayActorError, RayTaskError

from actors.placement import Placed
from audio_thinker.core.log import get_logger

log = get_logger(__name__)


def death_cause(exc: RayActorError) -> str:
    """One line for why an actor died: the exception its __init__ raised (the last line of Ray's traceback, which
    would otherwise only be in the actor's log), else the first line of Ray's report."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if exc.actor_init_failed and len(lines) > 1:
        return f"its __init__ raised {lines[-1]}"
    return lines[0] if lines else type(exc).__name__


class ActorDiedError(RuntimeError):
    """An actor of a group is gone (killed, out of memory, node lost); the message names it and the call."""


def process_id(_actor: object = None) -> str:
    """The Ray worker id of the process running this code: a restarted actor runs in a new process, with a new id
    (`ActorGroup` asks its actors through `__ray_call__`, so no actor class needs a method for it)."""
    return ray.get_runtime_context().get_worker_id()


def restarted_actor() -> bool:
    """Whether this code runs in an actor that Ray restarted after its process died (False outside an actor)."""
    context = ray.get_runtime_context() if ray.is_initialized() else None
    return bool(context and context.get_actor_id() and context.was_current_actor_reconstructed)


class ActorGroup:
    """`count` actors of `actor_cls`; `init_args(i)` gives actor i's constructor arguments."""

    def __init__(
        self,
        name: str,
        actor_cls: type,
        count: int,
        init_args: Callable[[int], Sequence[Any]],
        *,
        num_cpus: float,
        num_gpus: float = 0.0,
        timeout_s: float,
        timeout_key: str,
        runtime_env: dict | None = None,
        placement: Sequence[Placed] | None = None,
        max_restarts: int = 0,
        restart_key: str | None = None,
        restart_timeout_s: float | None = None,
        restart_timeout_key: str | None = None,
    ) -> None:
        """`max_restarts`: how often Ray may restart the group's actors, all together, through `recover`
        (`restart_key` names its config key; a restart must be done within `restart_timeout_s`, default
        `timeout_s`, whose key is `restart_timeout_key`)."""
        self.name = name
        self.timeout_s = timeout_s
        self.timeout_key = timeout_key
        self.max_restarts = max_restarts
        self.restart_key = restart_key or "max_restarts"
        self.restart_timeout_s = timeout_s if restart_timeout_s is None else restart_timeout_s
        self.restart_timeout_key = restart_timeout_key or timeout_key
        self.restarts = 0  # counted by `recover`, all actors together
        self.processes: list[str | None] = [None] * count  # which process serves each actor, once `track`ed
        self._actor_locks = [threading.Lock() for _ in range(count)]
        self._count_lock = threading.Lock()
        self._failed_calls: list[ray.ObjectRef] = []  # the refs of calls that failed, read at shutdown
        remote_cls = actor_cls if hasattr(actor_cls, "remote") else ray.remote(actor_cls)
        options: dict[str, Any] = {} if placement else {"num_cpus": num_cpus, "num_gpus": num_gpus}
        options["max_restarts"] = max_restarts
        options["max_task_retries"] = 0  # a call lost with its process is not re-run by Ray: `recover`'s caller decides
        if runtime_env:
            options["runtime_env"] = runtime_env
        if placement is not None and len(placement) != count:
            raise ValueError(f"{name}s: {count} actors but {len(placement)} placement slots")
        # With a placement, each actor goes to its bundle with the share its slot names (rank 0 may give part of
        # its GPU to a colocated reference); without one, Ray places them where it likes (tests, tools).
        self.actors = [
            remote_cls.options(**options, **(placement[i].options() if placement else {})).remote(*init_args(i))
            for i in range(count)
        ]

    def __len__(self) -> int:
        return len(self.actors)

    # -------------------------------------------------------------------------------- calls

    def submit(self, method: str, *args: Any, **kwargs: Any) -> list[ray.ObjectRef]:
        """Start `method` on every actor with the same arguments; the refs, to be awaited with `get`."""
        return [getattr(a, method).remote(*args, **kwargs) for a in self.actors]

    def submit_each(self, method: str, args: Sequence[Sequence[Any]]) -> list[ray.ObjectRef]:
        """Start `method` on actor i with `args[i]` (fewer argument tuples than actors: only the first ones)."""
        return [getattr(a, method).remote(*a_args) for a, a_args in zip(self.actors, args)]

    def get(
        self,
        refs: list,
        what: str,
        timeout_s: float | None = None,
        timeout_key: str | None = None,
        owners: Sequence[str] | None = None,
    ) -> list:
        """Await refs within the deadline; failures name the actor. The refs are this group's in actor order,
        or `owners` names each (calls that await two groups together, like a weight broadcast)."""
        timeout = self.timeout_s if timeout_s is None else timeout_s
        try:
            # One at a time as they finish, so that a failed call raises at once: its peers may be blocked in a
            # collective with the dead actor and would otherwise hold the get until the deadline.
            deadline, pending = time.monotonic() + timeout, list(refs)
            while pending:
                ready, pending = ray.wait(pending, num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
                if not ready:
                    raise GetTimeoutError
                ray.get(ready[0])
            return ray.get(refs)
        except GetTimeoutError:
            key = timeout_key or self.timeout_key
            raise TimeoutError(
                f"{self.name}s: {what}: no answer within {timeout:.0f}s (raise {key} if that is too short)"
            ) from None
        except (RayActorError, RayTaskError) as exc:
            self._failed_calls.extend(refs)
            index = self._failed_index(refs)
            if index is None:
                who = f"a {self.name}"
            else:
                who = owners[index] if owners is not None else f"{self.name} {index}"
            if isinstance(exc, RayActorError):
                raise ActorDiedError(f"{who} died during {what} ({death_cause(exc)})") from exc
            exc.add_note(f"raised by {who} during {what}")
            raise

    def call(self, method: str, *args: Any, what: str | None = None, **kwargs: Any) -> list:
        return self.get(self.submit(method, *args, **kwargs), what or method)

    def call_each(self, method: str, args: Sequence[Sequence[Any]], what: str | None = None) -> list:
        return self.get(self.submit_each(method, args), what or method)

    def call_rank0(self, method: str, *args: Any, what: str | None = None, **kwargs: Any) -> Any:
        """Only actor 0 (the one that answers for a collective group, or holds the single model)."""
        return self.get([getattr(self.actors[0], method).remote(*args, **kwargs)], what or method)[0]

    # -------------------------------------------------------------------------------- restarts

    def track(self, what: str, timeout_s: float | None = None, timeout_key: str | None = None) -> None:
        """Note which process serves each actor (waiting for their start-up): what `recover` compares with."""
        refs = [actor.__ray_call__.remote(process_id) for actor in self.actors]
        self.processes = list(self.get(refs, what, timeout_s, timeout_key))

    def recover(
        self, index: int, failure: Exception, seen: str | None, refresh: Callable[[int], None] | None = None
    ) -> None:
        """A call that actor `index` took while process `seen` served it failed with `failure` (the process died,
        or was replaced since). Wait until Ray has restarted the actor, count the restart, let `refresh(index)`
        bring the new process up to date (other callers of `recover` for this actor wait meanwhile), and return:
        the caller sends what was lost again. Returns at once when another caller has done all that since `seen`,
        or when the same process answers (the call was lost, the actor was not).

        Raises `failure` itself when the group has no restarts; an ActorDiedError naming the actor, the restarts
        used and the config key past the bound, or when Ray does not restart the actor; a TimeoutError naming
        `restart_timeout_key` when the new process is not up in time."""
        if self.max_restarts == 0:
            raise failure
        with self._actor_locks[index]:
            if self.processes[index] != seen:
                return
            with self._count_lock:
                used = self.restarts
            if used >= self.max_restarts:
                raise ActorDiedError(
                    f"{failure}; not restarted again: the {self.name}s were restarted {used} time(s), the most "
                    f"{self.restart_key}={self.max_restarts} allows"
                ) from failure
            process = self._restarted_process(index, failure)
            if process == seen:
                return
            with self._count_lock:
                self.restarts += 1
                used = self.restarts
            log.warning(
                "%s %d is back in a new process after: %s (restart %d of %s=%d)",
                self.name, index, str(failure).splitlines()[0], used, self.restart_key, self.max_restarts,
            )  # fmt: skip
            if refresh is not None:
                refresh(index)
            self.processes[index] = process

    def _restarted_process(self, index: int, failure: Exception) -> str:
        """The process serving actor `index` once it answers again (calls fail as 'unavailable' while Ray
        restarts it), within `restart_timeout_s`."""
        deadline = time.monotonic() + self.restart_timeout_s
        while True:
            ref = self.actors[index].__ray_call__.remote(process_id)
            try:
                return ray.get(ref, timeout=max(0.1, deadline - time.monotonic()))
            except ActorUnavailableError:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            except GetTimeoutError:
                break
            except RayActorError as exc:
                raise ActorDiedError(f"{failure}; Ray did not restart it ({death_cause(exc)})") from exc
        raise TimeoutError(
            f"{self.name} {index}: not back within {self.restart_timeout_s:.0f}s of its restart (raise "
            f"{self.restart_timeout_key} if that is too short); it had failed: {failure}"
        )

    def _failed_index(self, refs: list) -> int | None:
        """Which of `refs` failed (refs are in actor order when they come from submit/submit_each)."""
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        done = set(ready)
        for i, ref in enumerate(refs):
            if ref in done:
                try:
                    ray.get(ref, timeout=0)
                except Exception:
                    return i
        return None

    # -------------------------------------------------------------------------------- shutdown

    def shutdown(self, close_method: str | None = None, timeout_s: float = 120.0) -> None:
        """Ask every actor to release what it holds (`close_method`, with a deadline), then end them all, even
        when a close fails or hangs."""
        try:
            if close_method is not None and self.actors:
                self.get(self.submit(close_method), f"{close_method} (shutdown)", timeout_s=timeout_s)
        finally:
            for actor in self.actors:
                ray.kill(actor)
            self.actors = []
            _read_outcomes(self._failed_calls)
            self._failed_calls = []


def _read_outcomes(refs: list, timeout_s: float = 5.0) -> None:
    """Read what the calls nobody awaits any more ended with (the peers of a failed call, their actors killed):
    Ray logs an error that a dropped ref never had read ("Unhandled error", a traceback on the console), a
    second report of a failure that was already handled and named."""
    if refs:
        ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
    for ref in refs:
        try:
            ray.get(ref, timeout=0)
        except Exception:  # the failure was raised and handled when the call failed
            pass
