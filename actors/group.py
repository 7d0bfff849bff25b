"""One generic group of Ray actors: start N with declared resources (in the bundles of the run's placement
groups when given, see actors/placement.py), call them all with a deadline, gather,
ask rank 0 alone, shut down cleanly. The trainer group, the rollout pool, the reference model and the judge
server are thin layers over it, so deadlines and error messages behave the same everywhere.

A failure names the actor: a call past its deadline is a `TimeoutError` naming the group, the call and the
config key that sets the deadline; an actor that died is an `ActorDiedError` naming its index; an exception
raised inside an actor keeps its own type (the driver tells them apart) with a note naming the actor.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

from actors.placement import Placed


class ActorDiedError(RuntimeError):
    """An actor of a group is gone (killed, out of memory, node lost); the message names it and the call."""


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
    ) -> None:
        self.name = name
        self.timeout_s = timeout_s
        self.timeout_key = timeout_key
        remote_cls = actor_cls if hasattr(actor_cls, "remote") else ray.remote(actor_cls)
        options: dict[str, Any] = {} if placement else {"num_cpus": num_cpus, "num_gpus": num_gpus}
        options["max_restarts"] = max_restarts
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
            index = self._failed_index(refs)
            if index is None:
                who = f"a {self.name}"
            else:
                who = owners[index] if owners is not None else f"{self.name} {index}"
            if isinstance(exc, RayActorError):
                first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise ActorDiedError(f"{who} died during {what} ({first})") from exc
            exc.add_note(f"raised by {who} during {what}")
            raise

    def call(self, method: str, *args: Any, what: str | None = None, **kwargs: Any) -> list:
        return self.get(self.submit(method, *args, **kwargs), what or method)

    def call_each(self, method: str, args: Sequence[Sequence[Any]], what: str | None = None) -> list:
        return self.get(self.submit_each(method, args), what or method)

    def call_rank0(self, method: str, *args: Any, what: str | None = None, **kwargs: Any) -> Any:
        """Only actor 0 (the one that answers for a collective group, or holds the single model)."""
        return self.get([getattr(self.actors[0], method).remote(*args, **kwargs)], what or method)[0]

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
