"""A real two-node Ray cluster on this machine, bound to 127.0.0.1 only, for the Ray tests.

Run as a script (``python tests/ray_cluster.py TEMP_DIR PORT``) it starts a head node and a
second node joined to it (one CPU and a small object store each), prints the head's address
and waits; SIGTERM (or closing its stdin) stops both nodes. The fixture runs it in a session
of its own, so every process of the cluster can be stopped together, and only those.

Why not ``ray start``: on Linux ``ray start`` turns a loopback ``--node-ip-address`` into the
machine's routable address (so gcs_server, raylets and workers listen beyond 127.0.0.1), and
the only switch that keeps nodes on the loopback address
(``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``) makes ``ray start`` refuse to add a second node.
Ray's own multi-node test helper (``ray.cluster_utils.Cluster``) starts the same processes
(gcs_server, one raylet and object store per node) with an explicit node address.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

#: every node's address; set before ray is imported (ray reads it once, at import)
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"

OBJECT_STORE_BYTES = 100 * 1024 * 1024


def main(temp_dir: str, port: int) -> None:
    # ray's session files and its "current cluster" address file stay in temp_dir, so
    # ray.init("auto") elsewhere on the machine never finds this cluster
    os.environ["RAY_TMPDIR"] = temp_dir
    temp_dir = os.path.join(temp_dir, "ray")
    from ray.cluster_utils import Cluster

    node = {"node_ip_address": "127.0.0.1", "num_cpus": 1, "object_store_memory": OBJECT_STORE_BYTES,
            "include_dashboard": False, "temp_dir": temp_dir}
    cluster = Cluster(initialize_head=True, head_node_args={**node, "gcs_server_port": port})
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        cluster.add_node(**node)
        cluster.wait_for_nodes()
        sys.stdout.write(f"{cluster.address}\n")
        sys.stdout.flush()
        threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
        stop.wait()
    finally:
        cluster.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
