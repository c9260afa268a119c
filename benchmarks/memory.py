"""Section 6: the relay's memory with a client that stops reading, and under a flood;
and what a prekey bundle costs it to keep.

The relay's defence is its write buffer limit (4 MiB a connection: past a quarter of it,
messages to a client that has fallen behind are refused and their senders told; it is
dropped once it takes nothing for the stall timeout, or the whole 4 MiB waits for it)
and, for floods, its per-connection rate limits (messages and bytes). These runs show
what the relay's resident memory does meanwhile, and that everyone else still gets
every message intact.

Bundles are kept for people who are away, so they add up: the relay's prekey directory
is filled in this process, and what it holds per identity is measured with tracemalloc.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
import tracemalloc
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import nacl.utils
from nacl.public import PublicKey

from benchmarks import servers
from benchmarks.ledger import Integrity, message_text, reconcile
from benchmarks.loadgen import LiveClient
from benchmarks.plan import Context
from benchmarks.report import Figure, Section
from benchmarks.wire import Link, connect_link, new_core, register, start_sessions
from e2echat.client.core import ClientCore
from e2echat.crypto.session import MAX_TEXT
from e2echat.relay.limits import Limits
from e2echat.relay.prekeys import PrekeyDirectory
from e2echat.wire.objects import OneTimePrekey, SignedPrekey

BIG_TEXT = MAX_TEXT - 384  # the largest message a client sends, give or take
# Messages a second: ~16 KiB to four people is ~86 KiB a send, so about 860 KiB a second,
# under the relay's default limits of 50 messages and 1 MiB a second.
SENDER_RATE = 10.0
SAMPLE = 0.05  # seconds between memory samples
FLOOD_CHUNK = 1 << 20  # a flooder waits while this much is queued on its side
STORED_ONE_TIME = 25  # one-time prekeys per stored identity, in the bundle measurement


@dataclass
class MemoryTrace:
    """The relay's resident memory over a run."""

    before: int
    peak: int = 0
    samples: list[tuple[float, int]] = field(default_factory=list)

    def sample(self, relay: servers.Server, started: float) -> None:
        rss = relay.rss()
        self.peak = max(self.peak, rss)
        self.samples.append((round(time.monotonic() - started, 3), rss))

    @property
    def growth_mib(self) -> float:
        return (self.peak - self.before) / 2**20


async def _registered(relay: servers.Server, nick: str, receive_buffer: int = 0) -> tuple[ClientCore, Link]:
    core = new_core(nick)
    link = await connect_link(relay.host, relay.port, receive_buffer=receive_buffer)
    await register(core, link, timeout=30)
    return core, link


async def _live_clients(relay: servers.Server, nicks: list[str], others: int) -> list[LiveClient]:
    clients = [LiveClient(nick, relay.host, relay.port, BIG_TEXT, check_now=True) for nick in nicks]
    await asyncio.gather(*(c.open(others) for c in clients))
    return clients


async def _watch(
    relay: servers.Server, trace: MemoryTrace, until: Callable[[], bool], seconds: float
) -> float | None:
    """Sample memory until ``until()`` or ``seconds``; return when ``until`` came true."""
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        trace.sample(relay, started)
        if until():
            return time.monotonic() - started
        await asyncio.sleep(SAMPLE)
    return None


async def _pace(clients: list[LiveClient], stop: asyncio.Event) -> None:
    async def one(client: LiveClient) -> None:
        while not stop.is_set():
            client.send(0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1 / SENDER_RATE)

    await asyncio.gather(*(one(c) for c in clients))


async def _drain(clients: list[LiveClient], timeout: float) -> None:
    """Wait until each client has every message the others sent (bounded)."""
    deadline = time.monotonic() + timeout
    sent = {c.nick: c.sent for c in clients}
    while time.monotonic() < deadline:
        if all(c.received.get(n, 0) >= k for c in clients for n, k in sent.items() if n != c.nick):
            return
        await asyncio.sleep(0.05)


def _integrity(clients: list[LiveClient]) -> Integrity:
    for client in clients:
        client.settle()
    return reconcile({c.nick: c.sent for c in clients}, {c.nick: c.inbox.summary() for c in clients})


async def non_reader(relay: servers.Server, seconds: float, drain: float, settle: float) -> dict[str, Any]:
    """Three clients send big room messages at a lawful pace; a fourth never reads."""
    _, silent = await _registered(relay, "silent", receive_buffer=4096)
    clients = await _live_clients(relay, ["s1", "s2", "s3", "observer"], 4)
    assert silent.transport is not None  # registered, so connected
    silent.transport.pause_reading()
    await asyncio.sleep(settle)
    trace = MemoryTrace(relay.rss())
    stop = asyncio.Event()
    pacing = asyncio.create_task(_pace(clients[:3], stop))
    observer = clients[3].connection.core
    dropped = await _watch(relay, trace, lambda: "silent" not in observer.directory, seconds)
    stop.set()
    await pacing
    await _drain(clients, drain)
    await asyncio.sleep(settle)
    after = relay.rss()
    integrity = _integrity(clients)
    silent.close()
    await asyncio.gather(*(c.close() for c in clients))
    return {
        "trace": trace,
        "dropped_after": dropped,
        "after": after,
        "integrity": integrity,
        "sent": sum(c.sent for c in clients),
        "bytes_each": len(message_text("s1", 0, 0, BIG_TEXT)),
    }


async def _flooder(core: ClientCore, link: Link, stop: asyncio.Event) -> int:
    """Send big room messages as fast as the socket takes them, reading (and dropping)
    whatever comes, so that only the flood can get it cut off, not a full write buffer.
    Returns how many it sent before the relay hung up or time ran out, counting message
    0, which started its sessions."""
    assert link.transport is not None
    sent = 1
    gone = asyncio.Event()
    link.handler = lambda data: None if data else gone.set()
    while not stop.is_set() and not gone.is_set() and not link.transport.is_closing():
        core.send_room("#lobby", message_text(core.nick, sent, 0, BIG_TEXT))
        link.write(core.data_to_send())
        sent += 1
        while link.transport.get_write_buffer_size() > FLOOD_CHUNK and not stop.is_set():
            await asyncio.sleep(0.005)
            if link.transport.is_closing():
                break
        await asyncio.sleep(0)
    return sent


async def flood(relay: servers.Server, seconds: float, drain: float, settle: float) -> dict[str, Any]:
    """Three clients send big messages as fast as they can; two observers read and decrypt."""
    flooders = [await _registered(relay, f"flood{i}") for i in range(3)]
    clients = await _live_clients(relay, ["watch1", "watch2"], 4)
    for core, link in flooders:
        await asyncio.wait_for(_until(_sees(core, 4)), 30)
        # Message 0 starts the sessions (or every copy would wait for keys, unsent).
        await start_sessions(core, link, message_text(core.nick, 0, 0, BIG_TEXT))
    await asyncio.sleep(settle)
    trace = MemoryTrace(relay.rss())
    stop = asyncio.Event()
    tasks = [asyncio.create_task(_flooder(core, link, stop)) for core, link in flooders]
    watcher = clients[0].connection.core
    cut_off = await _watch(
        relay, trace, lambda: not any(n.startswith("flood") for n in watcher.directory), seconds
    )
    stop.set()
    sent = await asyncio.gather(*tasks)
    await _until_quiet(clients, drain)
    await asyncio.sleep(settle)
    for client in clients:
        client.settle()
    received = sum(len(seqs) for c in clients for n, seqs in c.inbox.seen.items() if n.startswith("flood"))
    integrity = Integrity(
        expected=received,
        delivered=received,
        duplicated=sum(c.inbox.duplicated for c in clients),
        corrupted=sum(c.inbox.corrupted for c in clients),
    )
    left = [c.nick for c in clients if c.disconnected]
    after = relay.rss()
    for _, link in flooders:
        link.close()
    await asyncio.gather(*(c.close() for c in clients))
    return {
        "trace": trace,
        "cut_off_after": cut_off,
        "after": after,
        "integrity": integrity,
        "flooded": sum(sent),
        "received": received,
        "observers_dropped": left,
    }


async def _until_quiet(clients: list[LiveClient], timeout: float) -> None:
    """Wait until the observers have stopped receiving (the relay's queues are empty)."""
    deadline = time.monotonic() + timeout
    last = -1
    while time.monotonic() < deadline:
        count = sum(c.inbox.corrupted + sum(c.received.values()) for c in clients)
        if count == last:
            return
        last = count
        await asyncio.sleep(0.3)


def _sees(core: ClientCore, peers: int) -> Callable[[], bool]:
    return lambda: len(core.directory) >= peers


async def _until(condition: Callable[[], bool]) -> None:
    while not condition():
        await asyncio.sleep(0.01)


def prekey_bytes_per_identity(identities: int, one_time: int = STORED_ONE_TIME) -> float:
    """Bytes the relay's prekey directory holds per identity that has gone away, leaving a
    signed prekey and ``one_time`` one-time prekeys: everything it keeps (its nick and
    identity key too, which nothing else holds once the owner has left)."""
    directory = PrekeyDirectory(Limits(bundles=identities))

    def key() -> PublicKey:
        return PublicKey(nacl.utils.random(32))

    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for index in range(identities):
            nick = f"person{index:06d}"  # a new string, as a decoded nick is
            signed = SignedPrekey(1, key(), nacl.utils.random(64))
            directory.register(nick, key(), signed)
            directory.publish(nick, signed, tuple(OneTimePrekey(i, key()) for i in range(one_time)))
            directory.leave(nick)
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(directory) == identities
    return held / identities


def _run(
    options: tuple[str, ...],
    scenario: Callable[[servers.Server], Coroutine[Any, Any, dict[str, Any]]],
    profile: Any,
) -> dict[str, Any]:
    with servers.relay(*options, profile=profile) as relay:
        result = asyncio.run(scenario(relay))
        result["relay_log"] = relay.log_tail(5)
    result["relay_profile"] = relay.profile_top
    return result


def memory(context: Context) -> Section:
    plan = context.plan
    section = Section("memory", "6. relay memory: one client that stops reading, and floods")
    quiet = _run(
        (),
        lambda r: non_reader(r, plan.memory_seconds, plan.drain_timeout, plan.settle),
        servers.profile_path("memory-nonreader", context.profile),
    )
    limited = _run(
        (),
        lambda r: flood(r, plan.flood_seconds, plan.drain_timeout, plan.settle),
        servers.profile_path("memory-flood", context.profile),
    )
    unlimited = _run(
        servers.UNLIMITED,
        lambda r: flood(r, plan.flood_seconds, plan.drain_timeout, plan.settle),
        servers.profile_path("memory-flood-unlimited", context.profile),
    )
    _non_reader_figures(section, quiet)
    _flood_figures(section, limited, "default limits", "flood")
    _flood_figures(section, unlimited, "limits lifted", "flood_unlimited")
    per_identity = prekey_bytes_per_identity(plan.prekey_identities)
    section.add(
        Figure(
            "prekey_bytes_per_identity",
            f"a stored bundle (signed prekey, {STORED_ONE_TIME} one-time prekeys)",
            round(per_identity),
            "B",
            note=f"{plan.prekey_identities:,} identities away; Limits().bundles of them: "
            f"{per_identity * Limits().bundles / 2**20:.0f} MiB",
        )
    )
    for result in (quiet, limited, unlimited):
        section.integrity = section.integrity.add(result["integrity"])
    section.details = {
        f"{name}_relay_profile": result["relay_profile"]
        for name, result in (("non_reader", quiet), ("flood", limited), ("flood_unlimited", unlimited))
    }
    section.details |= {
        name: {
            **{k: v for k, v in result.items() if k not in ("trace", "integrity", "relay_profile")},
            "rss_before_mib": round(result["trace"].before / 2**20, 1),
            "rss_peak_mib": round(result["trace"].peak / 2**20, 1),
            "rss_after_mib": round(result["after"] / 2**20, 1),
            "rss_samples": result["trace"].samples[:: max(1, len(result["trace"].samples) // 50)],
            "integrity": result["integrity"].as_dict(),
        }
        for name, result in (("non_reader", quiet), ("flood", limited), ("flood_unlimited", unlimited))
    }
    section.notes.append(
        "non-reader: three clients send ~16 KiB room messages at 10/s each (under the default rate "
        "limits) to everyone, including one that registered and then never reads (4 KiB socket "
        "buffer). Everyone else must still get every message; what the relay refuses to the "
        "non-reader its senders are told."
    )
    section.notes.append(
        "flood: three clients send ~16 KiB room messages as fast as their sockets take them (reading "
        "and dropping what comes back); two observers read and decrypt. 'limits lifted' is the relay "
        "as the throughput runs start it (rates and per-address limits lifted)."
    )
    return section


def _non_reader_figures(section: Section, result: dict[str, Any]) -> None:
    trace: MemoryTrace = result["trace"]
    dropped = result["dropped_after"]
    section.add(
        Figure(
            "non_reader_peak_growth_mib",
            "non-reader: relay RSS peak growth",
            trace.growth_mib,
            "MiB",
            note=f"{trace.before / 2**20:.0f} MiB before; write buffer limit 4 MiB",
        )
    )
    section.add(
        Figure(
            "non_reader_dropped_after_s",
            "non-reader: dropped by the relay after",
            dropped if dropped is not None else "not within the run",
            "s" if dropped else "",
        )
    )
    section.add(
        Figure(
            "non_reader_rss_after_mib",
            "non-reader: relay RSS growth after the drop",
            (result["after"] - trace.before) / 2**20,
            "MiB",
        )
    )


def _flood_figures(section: Section, result: dict[str, Any], label: str, key: str) -> None:
    trace: MemoryTrace = result["trace"]
    cut = result["cut_off_after"]
    dropped = result["observers_dropped"]
    section.add(
        Figure(
            f"{key}_peak_growth_mib",
            f"flood ({label}): relay RSS peak growth",
            trace.growth_mib,
            "MiB",
            note=f"{result['flooded']:,} messages flooded, {result['received']:,} delivered to observers",
        )
    )
    section.add(
        Figure(
            f"{key}_cut_off_s",
            f"flood ({label}): flooders disconnected after",
            cut if cut is not None else "not within the run",
            "s" if cut is not None else "",
            note=f"observers dropped: {', '.join(dropped) if dropped else 'none'}",
        )
    )
