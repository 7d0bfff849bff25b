"""A second Ray node on this machine, on 127.0.0.1, for the multi-node tests: what `ray start --address GCS
--node-ip-address=127.0.0.1 --resources ...` does. The CLI refuses to start a worker node while
RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, the setting that keeps Ray on loopback (without it Ray rewrites 127.0.0.1 to
the machine's network address), so this starts the node through Ray's own `Node`, as `ray start` would, and
ends it on SIGTERM.

    python tests/integration/ray_node.py GCS_ADDRESS '{"CPU": 2, "node_b": 1}' TEMP_DIR AGENT_PORT

AGENT_PORT is the node's dashboard agent port (Ray's default, 52365, is taken by any other Ray on the machine).
"""

from __future__ import annotations

import json
import signal
import sys

from ray._private.node import Node
from ray._private.parameter import RayParams


def main() -> None:
    gcs, resources, temp_dir, agent_port = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    cpus = int(resources.pop("CPU"))
    params = RayParams(gcs_address=gcs, node_ip_address="127.0.0.1", num_cpus=cpus, resources=resources,
                       temp_dir=temp_dir, dashboard_agent_listen_port=agent_port)  # fmt: skip
    node = Node(params, head=False, shutdown_at_exit=True, spawn_reaper=False)
    print(f"node {node.node_id} joined {gcs}", flush=True)
    signal.sigwait([signal.SIGTERM, signal.SIGINT])
    node.kill_all_processes(check_alive=False, allow_graceful=True)


if __name__ == "__main__":
    main()
