"""The ``ray_address`` fixture: a real two-node Ray cluster on 127.0.0.1 (tests/ray_cluster.py),
started once for the session when a test asks for it (tests/conftest.py registers it),
stopped afterwards even on failure, in bounded time."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

LAUNCHER = Path(__file__).with_name("ray_cluster.py")
START_SECONDS = 120
STOP_SECONDS = 30


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def session_pids(session: int) -> set[int]:
    """Every live process of the session ``session`` (the cluster's, and only them); zombies,
    already dead and waiting to be reaped, are not counted."""
    out = subprocess.run(["ps", "-e", "-o", "pid=,sid=,stat="], capture_output=True, text=True).stdout
    pids = set()
    for line in out.splitlines():
        pid, sid, stat = line.split()[:3]
        if int(sid) == session and not stat.startswith("Z"):
            pids.add(int(pid))
    return pids


def listening_addresses(pids: set[int]) -> list[str]:
    """``address:port`` of every TCP socket the processes ``pids`` listen on (``ss -ltnp``)."""
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    found = []
    for line in out.splitlines():
        owners = {int(pid) for pid in re.findall(r"pid=(\d+)", line)}
        if owners & pids:
            found.append(line.split()[3])
    return found


def loopback_only(addresses: list[str]) -> bool:
    return all(a.startswith(("127.0.0.1:", "[::ffff:127.0.0.1]:", "[::1]:")) for a in addresses)


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM the launcher (it shuts both nodes down), then SIGKILL whatever of its session is
    left; only processes of that session (all started by the launcher) are signalled."""
    session = process.pid
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_SECONDS)
        except subprocess.TimeoutExpired:
            pass
    deadline = time.monotonic() + STOP_SECONDS
    # by pid: some of Ray's workers leave the launcher's process group, never its session
    while (left := session_pids(session)) and time.monotonic() < deadline:
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.5)
    if process.poll() is None:
        process.kill()
        process.wait(STOP_SECONDS)


@pytest.fixture(scope="session")
def ray_cluster_info():
    """``{"address": "127.0.0.1:PORT", "session": SID}`` of a running two-node cluster."""
    # found, not imported: ray reads its address switches once, at import, and the drivers of
    # these tests import it through recsys_ebm.distributed.cluster, which sets them
    if importlib.util.find_spec("ray") is None:
        pytest.fail("the Ray tests need the ray extra (make test installs it): "
                    "pip install -e '.[ray]'", pytrace=False)
    # a short path: Ray's Unix sockets live under it (at most 107 bytes)
    temp_dir = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(LAUNCHER.parents[1]),
                                                         os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen([sys.executable, str(LAUNCHER), temp_dir, str(free_port())],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
                               start_new_session=True)
    try:
        address = _read_address(process)
        yield {"address": address, "session": process.pid}
    finally:
        _stop(process)
        shutil.rmtree(temp_dir, ignore_errors=True)
    left = session_pids(process.pid)
    assert not left, f"processes of the test cluster outlived it: {sorted(left)}"


def _read_address(process: subprocess.Popen) -> str:
    import selectors

    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    if not selector.select(START_SECONDS):
        raise RuntimeError(f"the Ray test cluster did not start within {START_SECONDS} s")
    line = process.stdout.readline().strip()
    if not re.fullmatch(r"127\.0\.0\.1:\d+", line):
        raise RuntimeError(f"the Ray test cluster failed to start (exit {process.poll()}): {line!r}")
    return line
