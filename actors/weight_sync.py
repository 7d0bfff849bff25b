"""The trainer -> rollout-worker pair's weight sync: after each optimizer step the trainer's weights reach every
worker (object store or a broadcast group, `trainer.sync_backend`), and every worker's checksum must equal the
trainer's. The transport itself (buckets, object store, broadcast group) is `rollout.weight_sync`.

A worker that Ray restarted holds the model folder's weights; `rejoin` gives it the version the other workers
hold through the object store, whatever the backend: a new process cannot join a broadcast group formed
before it, so with `broadcast` the next push forms the group again, with every worker (docs/fault-tolerance.md).
"""

from __future__ import annotations

import time

from actors.rollout_pool import RolloutPool
from actors.trainer_group import PolicyTrainerGroup
from audio_thinker.core.log import get_logger

log = get_logger(__name__)


class WeightSync:
    def __init__(self, trainer: PolicyTrainerGroup, pool: RolloutPool, backend: str):
        self.trainer, self.pool, self.backend = trainer, pool, backend
        self.open = False
        self.reform = False  # a worker was restarted: the broadcast group is formed again at the next push
        pool.on_restart = self.rejoin

    def push(self, version: int, rewind: bool = False) -> dict[str, float]:
        """Send the current weights as `version` (`rewind`: after a trainer restart, an older version than the
        workers hold); returns `timing_s/sync`, `sync/bytes`, `sync/load_s`."""
        t = time.perf_counter()
        expected = self.trainer.weights_checksum()
        if self.backend == "object_store":
            handle = self.trainer.publish_weights(version)
            report = self.pool.set_weights(handle, version, expected_checksum=expected, rewind=rewind)
            nbytes = handle.num_bytes
        else:
            self.pool.worker_infos()  # a worker that died since the last push is restarted before the group forms
            if self.open and self.reform:
                self.trainer.close_sync()
                self.open = False
            if not self.open:
                self.reform = False
                endpoint = self.trainer.sync_endpoint(len(self.pool.workers))
                self.trainer.open_sync(endpoint, self.pool.open_sync(endpoint))
                self.open = True
            sent, reports = self.trainer.broadcast_weights(version, self.pool.receive_weights(version, rewind))
            report = self.pool.check_reports(reports, version, expected)
            nbytes = sent["bytes"]
        return {"timing_s/sync": time.perf_counter() - t, "sync/bytes": float(nbytes), "sync/load_s": report["seconds"]}

    def rejoin(self, worker: int) -> None:
        """Rollout worker `worker` was restarted: load the version every other worker holds into it, published by
        the trainer into the object store, checksum checked against the trainer's. When the trainer has already
        trained past that version (only with run.max_staleness > 0, between its update and its push), the coming
        push brings the worker up to date instead (the pool waits for it before the worker generates)."""
        self.reform = True
        pool = self.pool
        if pool.checksum is None:  # nothing sent yet: the folder's weights are the current version
            pool.keep_initial_weights(worker)
            return
        expected = self.trainer.weights_checksum()
        if expected != pool.checksum:
            log.info("rollout worker %d gets its weights with the next push (the trainer is past version %d)",
                     worker, pool.version)  # fmt: skip
            return
        handle = self.trainer.publish_weights(pool.version)
        report = pool.load_worker(worker, handle, pool.version, expected)
        log.info("rollout worker %d is back on weights version %d (%s...) in %.2fs", worker, pool.version,
                 expected[:12], report["seconds"])  # fmt: skip

    def reset(self) -> None:
        """The trainer group was started anew: its broadcast group is gone, the next push forms a new one."""
        self.open = False

    def close(self) -> None:
        if self.open:
            self.open = False
            self.trainer.close_sync()
