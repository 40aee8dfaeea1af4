"""Connecting to a Ray cluster: ``local`` (a private one started here), ``auto`` or
``HOST:PORT`` (a running one), and the ray module itself, or an error naming the extra."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

from recsys_ebm.errors import MissingDependencyError

logger = logging.getLogger(__name__)

#: object store of a cluster started by ``local``: small, the model and one shard per worker
LOCAL_OBJECT_STORE_BYTES = 300 * 1024 * 1024
_LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")
#: Ray Data's driver-side threads that call into Ray (the streaming executor, its block fetchers):
#: one still inside Ray after ``ray.shutdown()`` ends the whole process, so they are let finish
RAY_DATA_THREADS = ("StreamingExecutor-", "iter_threaded")
SETTLE_SECONDS = 30.0


def require_ray(address: str | None = None, feature: str = "--ray-address") -> Any:
    """The ``ray`` module, or :class:`MissingDependencyError` saying how to install it.

    Imported for a cluster at ``address``: a loopback ``HOST:PORT`` keeps this driver on the
    loopback address too (Ray otherwise replaces 127.0.0.1 by the machine's routable address,
    where a loopback cluster is not listening; ray reads the switch once, at import).
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address is not None and (address == "local" or is_loopback(address)):
        # a private cluster (local) needs no other node: it too stays on the loopback address
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    try:
        import ray
        import ray.data  # noqa: F401  (the extra installs both)
    except ImportError as exc:
        raise MissingDependencyError(
            f"{feature} needs Ray, an optional dependency: pip install \"recsys-ebm[ray]\" "
            f"(ray[data,train]); it could not be imported: {exc}") from None
    return ray


def is_loopback(address: str) -> bool:
    """Whether ``HOST:PORT`` names this machine's loopback interface."""
    host = address.rsplit(":", 1)[0] if ":" in address else address
    return host in _LOOPBACK


@contextlib.contextmanager
def ray_cluster(address: str, num_workers: int, *,
                object_store_bytes: int = LOCAL_OBJECT_STORE_BYTES) -> Iterator[Any]:
    """Connected to the cluster at ``address`` for the block; yields the ray module.

    ``local`` starts a private cluster of ``num_workers`` CPUs (no dashboard) and stops it
    afterwards; ``auto`` and ``HOST:PORT`` connect to a running one and only disconnect.
    Inside a driver already connected, the block reuses that connection.
    """
    if num_workers < 1:
        raise ValueError(f"--num-workers must be >= 1, got {num_workers}")
    ray = require_ray(address)
    if ray.is_initialized():
        yield ray
        return
    if address == "local":
        ray.init(address="local", num_cpus=num_workers, object_store_memory=object_store_bytes,
                 include_dashboard=False, log_to_driver=False, configure_logging=False)
    else:
        ray.init(address=address, log_to_driver=False, configure_logging=False)
    logger.info("connected to Ray at %s: %s", address, ray.cluster_resources())
    before = set(threading.enumerate())
    try:
        yield ray
    finally:
        settle_threads(before)
        ray.shutdown()


def settle_threads(before: set[threading.Thread], timeout: float = SETTLE_SECONDS) -> None:
    """Wait (at most ``timeout`` seconds in all) for Ray Data's threads started since
    ``before`` to finish: a pipeline stopped early (an exception, an interrupt) leaves fetcher
    threads inside ``ray.get`` for a moment, and Ray exits the process if they are still
    there once the driver has disconnected."""
    deadline = time.monotonic() + timeout
    for thread in threading.enumerate():
        if thread in before or not thread.name.startswith(RAY_DATA_THREADS):
            continue
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            logger.warning("Ray Data thread %s still running after %.0f s; disconnecting anyway",
                           thread.name, timeout)
