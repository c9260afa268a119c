"""Idle clients for the scale benchmark: thousands of real registrations, then quiet.

Each client makes fresh keys and answers the relay's challenge with the real proofs
(the two Boxes, crypto/identity.py), naming its rooms, then takes the directory of its
contacts as raw frames without decoding it: thousands of clients decoding directories
would cost the load generator far more than the relay, which is the clients' problem,
not the relay's. (The newcomer the conductor times uses a full real client.) Once
registered a client reads what the relay sends (presence, member lists) at most once a
second, in one batch, and drops it.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

from nacl.public import PrivateKey

from benchmarks.pool import Channel
from benchmarks.system import cpu_seconds, rss_bytes
from benchmarks.wire import BenchmarkError, Link, connect_link
from e2echat.crypto.identity import registration_proof
from e2echat.errors import E2EChatError
from e2echat.wire import messages as m
from e2echat.wire.codec import decode_message, encode_message
from e2echat.wire.framing import FrameDecoder, encode_frame
from e2echat.wire.grammar import PROTOCOL_VERSION, SIGNATURE_SIZE
from e2echat.wire.objects import SignedPrekey

_WELCOME = b'{"v":%d,"type":"welcome"' % PROTOCOL_VERSION
_DIRECTORY = b'{"v":%d,"type":"directory"' % PROTOCOL_VERSION
# A directory ends with it; a welcome has its mailbox time to live and relay id after it.
_LAST_PART = b'],"more":false'
_TAIL = 128  # bytes at the end of a part that hold it
IDLE_READ_INTERVAL = 1.0


def rooms_of(index: int, rooms: int) -> tuple[str, ...]:
    """The room of idle client number ``index`` among ``rooms`` rooms (none: #lobby):
    each room fills at the same pace."""
    return (f"#room{index % rooms}",) if rooms else ("#lobby",)


def register_frame(
    challenge: m.Challenge, nick: str, rooms: tuple[str, ...], identity: PrivateKey | None = None
) -> bytes:
    """A real registration (both proofs) of ``nick`` in ``rooms``, with fresh keys (or
    ``identity``). The signed prekey is a stand-in: the relay does not check it."""
    identity = identity or PrivateKey.generate()
    session = PrivateKey.generate()
    proofs = registration_proof(identity, session, challenge)
    stand_in = SignedPrekey(1, session.public_key, bytes(SIGNATURE_SIZE))
    register = m.Register(nick, identity.public_key, session.public_key, *proofs, stand_in, rooms)
    return encode_frame(encode_message(register))


async def join_idle(
    host: str,
    port: int,
    nick: str,
    timeout: float,
    rooms: tuple[str, ...] = ("#lobby",),
    identity: PrivateKey | None = None,
    decoder: FrameDecoder | None = None,
) -> tuple[Link, int]:
    """Register ``nick`` in ``rooms`` (with ``identity``, or a new one); return its link
    (now reading once a second) and the directory's size in bytes. What comes after the
    directory is cut into frames by ``decoder`` (and dropped): a caller that reads what
    comes later passes its own, which then starts at a frame's beginning."""
    began = time.monotonic()
    link = await asyncio.wait_for(connect_link(host, port), timeout)
    timeout -= time.monotonic() - began
    decoder = decoder or FrameDecoder()
    done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    directory_bytes = 0

    def fail(why: str) -> None:
        if not done.done():
            done.set_exception(BenchmarkError(f"{nick}: {why}"))

    def drop(data: bytes) -> None:
        decoder.receive_data(data)  # in frames, so that a caller's reads start at one

    def take_directory(data: bytes) -> None:
        nonlocal directory_bytes
        for frame in decoder.receive_data(data):
            if not frame.startswith((_WELCOME, _DIRECTORY)):
                fail(f"relay sent {decode_message(frame)!r} instead of the directory")
                return
            directory_bytes += len(frame)
            if _LAST_PART in frame[-_TAIL:]:
                link.handler = drop  # registered: from now on, drop what comes
                link.pause = IDLE_READ_INTERVAL
                if not done.done():
                    done.set_result(directory_bytes)
                return

    def answer_challenge(data: bytes) -> None:
        frames = decoder.receive_data(data)
        if not frames:
            return
        try:
            challenge = decode_message(frames[0])
        except E2EChatError as exc:
            fail(str(exc))
            return
        if not isinstance(challenge, m.Challenge):
            fail(f"refused: {challenge!r}")
            return
        link.write(register_frame(challenge, nick, rooms, identity))
        link.handler = lambda data: take_directory(data) if data else fail("relay hung up")

    link.handler = lambda data: answer_challenge(data) if data else fail("relay hung up")
    try:
        size = await asyncio.wait_for(done, timeout)
    except BaseException:
        link.close()
        raise
    return link, size


def checkpoints(target: int) -> list[int]:
    marks = {
        round(target * share) for share in (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1)
    }
    return sorted(mark for mark in marks if mark > 0)


async def idle_crowd(channel: Channel, config: dict[str, Any]) -> dict[str, Any]:
    """Register up to ``target`` idle clients, ``concurrency`` at a time, until the
    ``budget`` (seconds) runs out; note the relay's CPU and memory at checkpoints."""
    host, port, pid = config["host"], config["port"], config["relay_pid"]
    target, budget, rooms = config["target"], config["budget"], config.get("rooms", 0)
    links: list[Link] = []
    durations: list[float] = []
    marks, progress = checkpoints(target), []
    start, cpu_start = time.monotonic(), cpu_seconds(pid)
    next_index = 0

    async def runner() -> None:
        nonlocal next_index
        while next_index < target and time.monotonic() - start < budget:
            index, next_index = next_index, next_index + 1
            began = time.monotonic()
            nick = f"idle{index:05d}"
            link, _ = await join_idle(host, port, nick, config["join_timeout"], rooms_of(index, rooms))
            durations.append(time.monotonic() - began)
            links.append(link)
            if len(links) in marks:
                progress.append(_checkpoint(len(links), start, cpu_start, pid, durations))

    try:
        await asyncio.gather(*(runner() for _ in range(config["concurrency"])))
        if not progress or progress[-1]["clients"] != len(links):
            progress.append(_checkpoint(len(links), start, cpu_start, pid, durations))
        channel.report(
            "ramped", {"reached": len(links), "seconds": time.monotonic() - start, "progress": progress}
        )
        await channel.expect("finish", config["hold"])
    finally:
        for link in links:
            link.close()
    return {"reached": len(links)}


def _checkpoint(
    clients: int, start: float, cpu_start: float, pid: int, durations: list[float]
) -> dict[str, Any]:
    recent = durations[-100:]
    return {
        "clients": clients,
        "seconds": round(time.monotonic() - start, 2),
        "relay_cpu_s": round(cpu_seconds(pid) - cpu_start, 2),
        "relay_rss_mib": round(rss_bytes(pid) / 2**20, 1),
        "registration_ms_recent_median": round(1e3 * statistics.median(recent), 1) if recent else None,
    }
