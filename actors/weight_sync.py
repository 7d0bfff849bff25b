"""The trainer -> rollout-worker pair's weight sync: after each optimizer step the trainer's weights reach every
worker (object store or a broadcast group, `trainer.sync_backend`), and every worker's checksum must equal the
trainer's. The transport itself (buckets, object store, broadcast group) is `rollout.weight_sync`."""

from __future__ import annotations

import time

from actors.rollout_worker import RolloutPool
from actors.trainer_group import PolicyTrainerGroup


class WeightSync:
    def __init__(self, trainer: PolicyTrainerGroup, pool: RolloutPool, backend: str):
        self.trainer, self.pool, self.backend = trainer, pool, backend
        self.open = False

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
            if not self.open:
                endpoint = self.trainer.sync_endpoint(len(self.pool.workers))
                self.trainer.open_sync(endpoint, self.pool.open_sync(endpoint))
                self.open = True
            sent, reports = self.trainer.broadcast_weights(version, self.pool.receive_weights(version, rewind))
            report = self.pool.check_reports(reports, version, expected)
            nbytes = sent["bytes"]
        return {"timing_s/sync": time.perf_counter() - t, "sync/bytes": float(nbytes), "sync/load_s": report["seconds"]}

    def reset(self) -> None:
        """The trainer group was started anew: its broadcast group is gone, the next push forms a new one."""
        self.open = False

    def close(self) -> None:
        if self.open:
            self.open = False
            self.trainer.close_sync()
