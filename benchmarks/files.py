"""Section 12: one file through the relay, end to end encrypted, beside a plain TCP copy of
the same bytes through the baseline forwarder (issue 20).

The relay is the real one, in its own process, with its byte and frame rates lifted (its
defaults are for chat: 1 MiB/s a connection). The sender and the receiver are real
clients (``Connection``, ``Transfers``, ``FilePump``), each in a process of its own, so
that each one's CPU time and peak RSS are its own. The sender offers a file of
``file_mib`` random bytes (256 MiB in the full run); the receiver accepts it, writes it to
a partial file, checks its BLAKE2b and names it. The clock runs from the accept to the
sender hearing that the receiver kept the file: the hash the sender computes before its
offer is timed apart. While the file moves, the sender sends the receiver a private chat
message every ``CHAT_EVERY`` seconds carrying the system-wide monotonic clock; the
receiver notes when each one is decrypted: the chat latency during the transfer.

The baseline copies the same bytes, in frames of the same 64 KiB, from one socket to
another through benchmarks/forwarder.py, as fast as the sockets take them: no crypto, no
acknowledgement, no disk.
"""

from __future__ import annotations

import asyncio
import hashlib
import multiprocessing
import os
import resource
import socket
import statistics
import struct
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from nacl.public import PrivateKey

from benchmarks import servers
from benchmarks.plan import Context
from benchmarks.report import Figure, Section, judge

MiB = 1024 * 1024
#: the relay's limits for this section: rates far above what one transfer reaches
RELAY_OPTIONS = ("--byte-rate", str(1 << 40), "--byte-burst", str(1 << 34), "--rate", "1e6", "--burst", "1e6")
#: a chat message this often while the file moves
CHAT_EVERY = 0.02
#: issue 20's targets
RATIO_TARGET = 0.5
CHAT_P99_TARGET = 50.0  # ms
FRAME = 64 * 1024
_PREFIX = struct.Struct(">I")
TIMEOUT = 1800.0


def _rss_peak_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def _receiver(port: int, downloads: str, ready: Any, results: Any) -> None:
    asyncio.run(_receive(port, Path(downloads), ready, results))


async def _receive(port: int, downloads: Path, ready: Any, results: Any) -> None:
    from e2echat.client.connection import Connection
    from e2echat.client.core import MessageReceived
    from e2echat.client.fileevents import FileOffered, TransferDone
    from e2echat.client.filepump import FilePump
    from e2echat.client.files import Transfers

    transfers = Transfers(max_size=1 << 40)
    connection = Connection("127.0.0.1", port, "receiver", PrivateKey.generate(), files=transfers)
    await connection.open()
    pump = FilePump(connection, transfers, downloads)
    pump.start()
    ready.set()
    latencies: list[float] = []
    started = cpu = 0.0
    while True:
        event = await asyncio.wait_for(connection.events.get(), TIMEOUT)
        if isinstance(event, MessageReceived) and event.text.startswith("ping "):
            latencies.append((time.monotonic() - float(event.text.split()[1])) * 1000)
        elif isinstance(event, FileOffered):
            started, cpu = time.monotonic(), time.process_time()
            transfers.accept(event.number)
        elif isinstance(event, TransferDone):
            seconds, cpu = time.monotonic() - started, time.process_time() - cpu
            kept = Path(event.path) if event.ok else None
            results.put(
                {
                    "role": "receiver",
                    "ok": event.ok,
                    "detail": event.detail,
                    "seconds": seconds,
                    "cpu": cpu,
                    "peak_rss_kib": _rss_peak_kib(),
                    "latencies_ms": latencies,
                    "size": kept.stat().st_size if kept else 0,
                }
            )
            if kept:
                kept.unlink()
            break
    await pump.close()
    await connection.close()


def _sender(port: int, path: str, results: Any) -> None:
    asyncio.run(_send(port, Path(path), results))


async def _send(port: int, path: Path, results: Any) -> None:
    from e2echat.client.connection import Connection
    from e2echat.client.fileevents import TransferChanged, TransferDone
    from e2echat.client.filepump import FilePump
    from e2echat.client.files import Transfers

    transfers = Transfers()
    connection = Connection("127.0.0.1", port, "sender", PrivateKey.generate(), files=transfers)
    await connection.open()
    pump = FilePump(connection, transfers, path.parent / "sender-downloads")
    pump.start()
    while "receiver" not in connection.core.peers:
        await asyncio.wait_for(connection.events.get(), 30)
    connection.send_private("receiver", "hello")  # the session, before the clock
    hashed = time.monotonic()
    await pump.send("receiver", path)
    hash_seconds = time.monotonic() - hashed
    started = cpu = 0.0
    chatting: asyncio.Task[None] | None = None

    async def chat() -> None:
        while True:
            connection.send_private("receiver", f"ping {time.monotonic()!r}")
            await asyncio.sleep(CHAT_EVERY)

    while True:
        event = await asyncio.wait_for(connection.events.get(), TIMEOUT)
        if isinstance(event, TransferChanged) and event.state == "accepted":
            started, cpu = time.monotonic(), time.process_time()
            chatting = asyncio.create_task(chat())
        elif isinstance(event, TransferDone):
            seconds, cpu = time.monotonic() - started, time.process_time() - cpu
            if chatting is not None:
                chatting.cancel()
            results.put(
                {
                    "role": "sender",
                    "ok": event.ok,
                    "seconds": seconds,
                    "cpu": cpu,
                    "hash_seconds": hash_seconds,
                    "peak_rss_kib": _rss_peak_kib(),
                }
            )
            break
    await pump.close()
    await connection.close()


def _make_file(path: Path, size: int) -> bytes:
    digest = hashlib.blake2b(digest_size=32)
    with path.open("wb") as handle:
        left = size
        while left:
            block = os.urandom(min(left, 4 * MiB))  # benchmark data only
            handle.write(block)
            digest.update(block)
            left -= len(block)
    return digest.digest()


def _forwarder_copy(port: int, path: Path) -> float:
    """Seconds to copy ``path`` through the forwarder in FRAME-sized frames."""

    def joined(client_id: int) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(_PREFIX.pack(2) + client_id.to_bytes(2, "big"))
        assert sock.recv(6)  # "you are in"
        return sock

    receiver, sender = joined(2), joined(1)
    size = path.stat().st_size
    frames = -(-size // FRAME)
    expected = size + frames * (_PREFIX.size + 2)
    got = [0]

    def read() -> None:
        while got[0] < expected:
            data = receiver.recv(1 << 20)
            if not data:
                return
            got[0] += len(data)

    reading = threading.Thread(target=read)
    started = time.monotonic()
    reading.start()
    with path.open("rb") as source:
        while block := source.read(FRAME):
            sender.sendall(_PREFIX.pack(len(block) + 2) + (2).to_bytes(2, "big") + block)
    reading.join(TIMEOUT)
    seconds = time.monotonic() - started
    sender.close()
    receiver.close()
    if got[0] != expected:
        raise RuntimeError(f"the forwarder copy got {got[0]} bytes of {expected}")
    return seconds


def files(context: Context) -> Section:
    plan = context.plan
    size = plan.file_mib * MiB
    section = Section("files", f"13. one {plan.file_mib} MiB file through the relay, end to end")
    judged = not plan.smoke
    spawn = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="bench-files-") as directory:
        path = Path(directory) / "file.bin"
        _make_file(path, size)
        with servers.forwarder() as forwarder:
            copy_seconds = _forwarder_copy(forwarder.port, path)
        with servers.relay(*RELAY_OPTIONS) as relay:
            results = spawn.Queue()
            ready = spawn.Event()
            receiver = spawn.Process(target=_receiver, args=(relay.port, directory, ready, results))
            receiver.start()
            ready.wait(30)
            sender = spawn.Process(target=_sender, args=(relay.port, str(path), results))
            relay_mark = relay.mark()
            sender.start()
            got = {}
            for _ in range(2):
                result = results.get(timeout=TIMEOUT)
                got[result["role"]] = result
            relay_cpu = relay.cpu() - relay_mark.cpu
            relay_rss = relay.peak_rss()
            for process in (sender, receiver):
                process.join(30)
    sent, received = got["sender"], got["receiver"]
    if not (sent["ok"] and received["ok"] and received["size"] == size):
        raise RuntimeError(f"the transfer failed: {received.get('detail')}")
    seconds = sent["seconds"]
    rate = size / seconds / 1e6
    copy_rate = size / copy_seconds / 1e6
    ratio = rate / copy_rate
    latencies = sorted(received["latencies_ms"])
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] if latencies else float("nan")
    mib = size / MiB
    section.add(Figure("transfer_mb_s", "transfer, through the relay", rate, "MB/s"))
    section.add(Figure("forwarder_mb_s", "plain TCP copy through the forwarder", copy_rate, "MB/s"))
    section.add(
        Figure(
            "transfer_over_forwarder",
            "transfer ÷ forwarder copy",
            ratio,
            "×",
            f"≥ {RATIO_TARGET}",
            judge(ratio, lambda value: value >= RATIO_TARGET, judged),
        )
    )
    section.add(
        Figure("hash_seconds", "sender's BLAKE2b of the file, before its offer", sent["hash_seconds"], "s")
    )
    section.add(Figure("sender_cpu_ms_per_mib", "sender CPU per MiB", sent["cpu"] * 1000 / mib, "ms"))
    section.add(Figure("receiver_cpu_ms_per_mib", "receiver CPU per MiB", received["cpu"] * 1000 / mib, "ms"))
    section.add(Figure("relay_cpu_ms_per_mib", "relay CPU per MiB", relay_cpu * 1000 / mib, "ms"))
    for role, result in (("sender", sent), ("receiver", received)):
        section.add(Figure(f"{role}_peak_rss_mib", f"{role} peak RSS", result["peak_rss_kib"] / 1024, "MiB"))
    section.add(Figure("relay_peak_rss_mib", "relay peak RSS", relay_rss / MiB, "MiB"))
    section.add(
        Figure(
            "chat_p99_ms",
            f"chat p99 during the transfer ({len(latencies)} messages)",
            p99,
            "ms",
            f"< {CHAT_P99_TARGET:g}",
            judge(p99, lambda value: value < CHAT_P99_TARGET, judged),
            f"p50 {statistics.median(latencies):.1f} ms" if latencies else "",
        )
    )
    section.details.update(
        {
            "sender": sent,
            "receiver": {k: v for k, v in received.items() if k != "latencies_ms"},
            "p99_ms": p99,
        }
    )
    return section
