"""Section 11: rooms (issue 19): what one join costs a client as the relay grows, how fast
the relay fans a room message out, and how long a relay restart takes to heal.

- A client's cost of one join: a real ``ClientCore`` online with N others (a welcome
  with N entries), fed a ``joined`` and an ``entered`` for each newcomer (and a ``left``
  after, untimed): its CPU per join, at 100 and at 10,000 online. Flat is the target.
- Fan-out: one sender in a room of N (real clients registered on a real relay process)
  sends room messages (one ``send`` with N - 1 envelopes each, a window of them
  unanswered); deliveries a second, as the relay's ``routed`` answers count them.
- Restart: N clients in rooms of ``restart_room`` on a relay with ``--store``; the relay
  is stopped and started again on the same port; each client comes back on the real
  client's backoff (with its jitter, client/reconnect.py), registers and sends a message
  to a room-mate: seconds until the last one's is routed.

The clients of the last two register for real (both proofs) but are raw sockets, not
full clients (crowd.py): the figures are the relay's.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nacl.utils
from nacl.public import PrivateKey, PublicKey

from benchmarks import servers
from benchmarks.crowd import join_idle
from benchmarks.plan import Context
from benchmarks.report import Figure, Section, judge
from benchmarks.system import raise_open_files_limit
from benchmarks.wire import BenchmarkError, Link, new_core
from e2echat.client.connection import CONNECT_TIMEOUT
from e2echat.client.reconnect import Backoff
from e2echat.wire import messages as m
from e2echat.wire.codec import decode_message, encode_message
from e2echat.wire.fastpath import encode_send
from e2echat.wire.framing import FrameDecoder, encode_frame
from e2echat.wire.grammar import CHALLENGE_SIZE
from e2echat.wire.objects import PeerInfo

#: issue 19: a relay restart with 10,000 clients: all back and chatting within 30 s
TARGET_RESTART_S = 30.0
#: "flat": the cost of a join at the largest size is at most this many times the smallest
TARGET_FLAT = 1.5
JOIN_TIMEOUT = 60.0
CONCURRENCY = 32
WINDOW = 8  # room messages a fan-out sender keeps unanswered
BODY = bytes(64)  # a short line's ciphertext, about
PAGE = 2000  # directory entries a frame, as the relay pages them


def rooms(context: Context) -> Section:
    plan = context.plan
    section = Section("rooms", "12. rooms: a client's cost of a join, fan-out, a relay restart")
    judged = not plan.smoke
    costs = {size: client_join_cost(size, plan.join_cost_joins) for size in plan.join_cost_sizes}
    small, large = min(costs), max(costs)
    for size, cost in costs.items():
        section.add(Figure(f"client_join_us_{size}", f"client CPU per join, {size:,} online", cost, "µs"))
    ratio = costs[large] / costs[small]
    section.add(
        Figure(
            "client_join_growth",
            f"client join cost at {large:,} / at {small:,} online",
            ratio,
            "×",
            f"≤ {TARGET_FLAT:g} (flat)",
            judge(ratio, lambda r: r <= TARGET_FLAT, judged),
            "a 'joined' and an 'entered' handled by a real ClientCore",
        )
    )
    with servers.relay(*servers.UNLIMITED, "--idle-timeout", "3600", kill=True) as relay:
        fanout = {size: asyncio.run(_fan_out(relay, size, plan.fanout_seconds)) for size in plan.fanout_sizes}
    for size, result in fanout.items():
        section.add(
            Figure(
                f"fanout_{size}_per_s",
                f"room fan-out, a room of {size:,}",
                result["per_s"],
                "deliveries/s",
                note=f"relay CPU {result['relay_us_per_delivery']:.1f} µs a delivery; "
                f"{result['refused']:,} refused (a reader behind)",
            )
        )
    restart = _restart(plan.restart_clients, plan.restart_room, plan.restart_timeout)
    section.add(
        Figure(
            "restart_seconds",
            f"relay restart: {restart['back']:,} of {plan.restart_clients:,} clients back and chatting",
            restart["seconds"],
            "s",
            f"< {TARGET_RESTART_S:g} s",
            judge(
                restart["seconds"],
                lambda s: s < TARGET_RESTART_S and restart["back"] == plan.restart_clients,
                judged,
            ),
            f"median client {restart['median_s']:.1f} s; the relay (--store) stopped and listening "
            f"again after {restart['relay_back_after_s']:.1f} s",
        )
    )
    section.details = {"client_join_us": costs, "fanout": fanout, "restart": restart}
    section.notes.append(
        "fan-out and restart clients register for real (both proofs) but are raw sockets that drop what "
        "they are sent; the fan-out sender counts what each 'routed' says was delivered."
    )
    return section


# -- a client's cost of a join ----------------------------------------------------------------


def _key() -> PublicKey:
    return PublicKey(nacl.utils.random(32))


def _frame(message: m.Message) -> bytes:
    return encode_frame(encode_message(message))


def client_join_cost(size: int, joins: int) -> float:
    """µs of CPU a client core online with ``size`` others spends on one join."""
    core = new_core("me")
    core.receive_data(_frame(m.Challenge(_key(), nacl.utils.random(CHALLENGE_SIZE))))
    core.data_to_send()
    peers = tuple(PeerInfo(f"p{index:05d}", _key(), _key()) for index in range(size))
    # In pages, as a relay sends them (a frame holds about 7,000 entries at most).
    pages = [peers[start : start + PAGE] for start in range(0, size, PAGE)] or [()]
    for number, page in enumerate(pages):
        more = number < len(pages) - 1
        if number == 0:
            core.receive_data(_frame(m.Welcome("me", 1e6, 1e6, 1e12, 1e12, 0, page, more)))
        else:
            core.receive_data(_frame(m.Directory(page, more)))
    for number, page in enumerate(pages):
        core.receive_data(_frame(m.Members("#lobby", page, (), number < len(pages) - 1)))
    core.data_to_send()
    newcomers = [PeerInfo(f"new{index:05d}", _key(), _key()) for index in range(joins)]
    spent = 0.0
    for peer in newcomers:
        joined = _frame(m.PeerJoined(peer)) + _frame(m.Entered("#lobby", peer))
        began = time.process_time()
        core.receive_data(joined)
        spent += time.process_time() - began
        core.receive_data(_frame(m.PeerLeft(peer.nick)))
        core.data_to_send()
    return 1e6 * spent / joins


def _read_every(link: Link, pause: float) -> None:
    """``link`` reads at most once per ``pause`` seconds from now on (0: as data comes),
    and now, not at the end of the pause a registered idle link is in."""
    link.pause = pause
    if link.transport is not None and not link.transport.is_closing():
        link.transport.resume_reading()


# -- fan-out ------------------------------------------------------------------------------------


async def _gather_joins(host: str, port: int, nicks: list[str], room: str) -> list[Link]:
    links: list[Link] = []
    queue = iter(nicks)

    async def runner() -> None:
        for nick in queue:
            link, _ = await join_idle(host, port, nick, JOIN_TIMEOUT, (room,))
            _read_every(link, 0.05)  # a room of ten takes thousands of frames a second
            links.append(link)

    await asyncio.gather(*(runner() for _ in range(CONCURRENCY)))
    return links


async def _fan_out(relay: servers.Server, size: int, seconds: float) -> dict[str, Any]:
    room = f"#fan{size}"
    members = [f"f{size}m{index:04d}" for index in range(size - 1)]
    links = await _gather_joins(relay.host, relay.port, members, room)
    decoder = FrameDecoder()
    nick = f"f{size}sender"
    sender, _ = await join_idle(relay.host, relay.port, nick, JOIN_TIMEOUT, (room,), decoder=decoder)
    try:
        return await _send_for(relay, sender, decoder, members, seconds)
    finally:
        sender.close()
        for link in links:
            link.close()


async def _send_for(
    relay: servers.Server, sender: Link, decoder: FrameDecoder, members: list[str], seconds: float
) -> dict[str, Any]:
    answered: asyncio.Queue[m.Routed] = asyncio.Queue()

    def take(data: bytes) -> None:
        for frame in decoder.receive_data(data):
            if frame.startswith(b'{"v":2,"type":"routed"'):
                message = decode_message(frame)
                assert isinstance(message, m.Routed)
                answered.put_nowait(message)

    sender.handler = take
    _read_every(sender, 0.0)
    items = [(nick, BODY) for nick in members]
    delivered = refused = 0
    next_id = 0
    before, began = relay.cpu(), time.monotonic()
    for _ in range(WINDOW):
        sender.write(encode_frame(encode_send(next_id, items)))
        next_id += 1
    outstanding = WINDOW
    while outstanding:
        routed = await asyncio.wait_for(answered.get(), JOIN_TIMEOUT)
        outstanding -= 1
        delivered += len(routed.delivered)
        refused += len(routed.refused)
        if time.monotonic() - began < seconds:
            sender.write(encode_frame(encode_send(next_id, items)))
            next_id += 1
            outstanding += 1
    elapsed = time.monotonic() - began
    cpu = relay.cpu() - before
    return {
        "messages": next_id,
        "delivered": delivered,
        "refused": refused,
        "per_s": delivered / elapsed,
        "relay_us_per_delivery": 1e6 * cpu / max(1, delivered),
    }


# -- restart ------------------------------------------------------------------------------------


@contextlib.contextmanager
def _relay_files() -> Iterator[tuple[str, str]]:
    with tempfile.TemporaryDirectory(prefix="bench-restart-") as directory:
        yield str(Path(directory) / "relay.key"), str(Path(directory) / "relay.db")


def _relay_args(key: str, store: str, port: int) -> list[str]:
    args = ["e2echat", "relay", "--host", servers.LOOPBACK, "--port", str(port), "--log-level", "warning"]
    return [*args, "--key", key, "--store", store, *servers.UNLIMITED, "--idle-timeout", "3600"]


def _start(key: str, store: str, port: int) -> servers.Server:
    return servers.start("relay", _relay_args(key, store, port))


def _restart(count: int, room_size: int, timeout: float) -> dict[str, Any]:
    with _relay_files() as (key, store):
        first = _start(key, store, 0)
        port = first.port
        nicks = [f"r{index:05d}" for index in range(count)]
        identities = [PrivateKey.generate() for _ in nicks]
        room_of = [f"#restart{index // room_size}" for index in range(count)]
        try:
            return asyncio.run(_restart_run(first, key, store, port, nicks, identities, room_of, timeout))
        finally:
            first.stop(kill=True)
            first.log_path.unlink(missing_ok=True)


async def _restart_run(
    first: servers.Server,
    key: str,
    store: str,
    port: int,
    nicks: list[str],
    identities: list[PrivateKey],
    room_of: list[str],
    timeout: float,
) -> dict[str, Any]:
    host = first.host
    queue = iter(range(len(nicks)))
    links: list[Link] = []

    async def register() -> None:
        for index in queue:
            link, _ = await join_idle(
                host, port, nicks[index], JOIN_TIMEOUT, (room_of[index],), identities[index]
            )
            links.append(link)

    await asyncio.gather(*(register() for _ in range(CONCURRENCY)))
    mates = {index: (index + 1) % len(nicks) for index in range(len(nicks))}
    for index, mate in mates.items():
        if room_of[mate] != room_of[index]:  # the last of a room writes to its first
            mates[index] = next(other for other in range(len(nicks)) if room_of[other] == room_of[index])
    # The restart: stopped (its goodbye to each, its store closed), then started again.
    # Each client starts its backoff as it loses the relay, as a real one would.
    began = time.monotonic()
    first.stop()
    for link in links:
        link.close()
    coming = (
        _come_back(host, port, nicks, identities, room_of, index, mates[index], began)
        for index in range(len(nicks))
    )
    tasks = [asyncio.create_task(client) for client in coming]
    second = await _start_again(key, store, port)
    up = time.monotonic() - began
    try:
        finished, late = await asyncio.wait(tasks, timeout=timeout)
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)
    finally:
        second.kill()
        await second.wait()
    back = [task.result() if not task.exception() else task.exception() for task in finished]
    times = [value for value in back if isinstance(value, float)]
    return {
        "clients": len(nicks),
        "back": len(times),
        "seconds": max(times) if times else None,
        "median_s": statistics.median(times) if times else float("nan"),
        "relay_back_after_s": up,
        "failed": [str(value)[:200] for value in back if not isinstance(value, float)][:5],
    }


async def _start_again(key: str, store: str, port: int) -> asyncio.subprocess.Process:
    """The relay again, on ``port``, once it listens. (Not ``servers.start``: its select()
    cannot watch a descriptor above 1024, and the clients knocking meanwhile hold more.)"""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        *_relay_args(key, store, port),
        cwd=servers.REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        stdin=asyncio.subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        preexec_fn=raise_open_files_limit,
    )
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), servers.START_TIMEOUT)
    if b"listening on" not in line:
        process.kill()
        raise servers.ServerFailed(f"the relay did not start again: {line!r}")
    return process


async def _come_back(
    host: str,
    port: int,
    nicks: list[str],
    identities: list[PrivateKey],
    room_of: list[str],
    index: int,
    mate: int,
    began: float,
) -> float:
    """Reconnect as the real client does (its backoff and jitter), then send one message
    to a room-mate: seconds from the restart until its ``routed`` came."""
    for delay in Backoff().delays():
        await asyncio.sleep(delay)
        decoder = FrameDecoder()
        try:
            link, _ = await join_idle(
                host, port, nicks[index], CONNECT_TIMEOUT, (room_of[index],), identities[index], decoder
            )
        except (OSError, BenchmarkError, TimeoutError):
            continue  # not back yet, or too busy: the next step of the backoff
        try:
            await _chat(link, decoder, nicks[mate])
        finally:
            link.close()
        return time.monotonic() - began
    raise AssertionError("unreachable: the backoff never ends")


async def _chat(link: Link, decoder: FrameDecoder, mate: str) -> None:
    routed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def take(data: bytes) -> None:
        for frame in decoder.receive_data(data):
            if frame.startswith(b'{"v":2,"type":"routed"') and not routed.done():
                routed.set_result(None)

    link.handler = take
    _read_every(link, 0.0)
    link.write(encode_frame(encode_send(1, [(mate, BODY)])))
    await asyncio.wait_for(routed, JOIN_TIMEOUT)
