"""Idle clients for the scale benchmark: thousands of real registrations, then quiet.

Each client makes fresh keys and answers the relay's challenge with the real
``ClientCore`` (the two Box proofs), then takes the directory as raw frames without decoding
it: 10,000 clients decoding directories that grow to 10,000 entries would cost the load
generator O(n²) decodes, which is the clients' problem, not the relay's. (The newcomer
the conductor times uses a full real client.) Once registered a client reads what the
relay sends (joins and leaves) at most once a second, in one batch, and drops it.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

from benchmarks.pool import Channel
from benchmarks.system import cpu_seconds, rss_bytes
from benchmarks.wire import BenchmarkError, Link, connect_link, new_core
from e2echat.client.core import ClientState
from e2echat.errors import E2EChatError
from e2echat.wire.codec import decode_message
from e2echat.wire.framing import FrameDecoder
from e2echat.wire.grammar import PROTOCOL_VERSION

_WELCOME = b'{"v":%d,"type":"welcome"' % PROTOCOL_VERSION
_DIRECTORY = b'{"v":%d,"type":"directory"' % PROTOCOL_VERSION
# A directory ends with it; a welcome has its mailbox time to live and relay id after it.
_LAST_PART = b'],"more":false'
_TAIL = 128  # bytes at the end of a part that hold it
IDLE_READ_INTERVAL = 1.0


async def join_idle(host: str, port: int, nick: str, timeout: float) -> tuple[Link, int]:
    """Register ``nick``; return its link (now reading once a second) and the directory's
    size in bytes."""
    link = await connect_link(host, port)
    core = new_core(nick)
    decoder = FrameDecoder()
    done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    directory_bytes = 0

    def fail(why: str) -> None:
        if not done.done():
            done.set_exception(BenchmarkError(f"{nick}: {why}"))

    def take_directory(data: bytes) -> None:
        nonlocal directory_bytes
        for frame in decoder.receive_data(data):
            if not frame.startswith((_WELCOME, _DIRECTORY)):
                fail(f"relay sent {decode_message(frame)!r} instead of the directory")
                return
            directory_bytes += len(frame)
            if _LAST_PART in frame[-_TAIL:]:
                link.handler = lambda data: None  # registered: from now on, drop what comes
                link.pause = IDLE_READ_INTERVAL
                if not done.done():
                    done.set_result(directory_bytes)
                return

    def answer_challenge(data: bytes) -> None:
        try:
            core.receive_data(data)
        except E2EChatError as exc:
            fail(str(exc))
            return
        link.write(core.data_to_send())
        if core.state is ClientState.AWAIT_WELCOME:
            link.handler = lambda data: take_directory(data) if data else fail("relay hung up")
        elif core.state is ClientState.CLOSED:
            fail("refused")

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
    target, budget = config["target"], config["budget"]
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
            link, _ = await join_idle(host, port, f"idle{index:05d}", config["join_timeout"])
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
