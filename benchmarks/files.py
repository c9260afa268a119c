"""Section 13: one file through the relay, end to end encrypted, beside a plain TCP copy of
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

Two copies of the same bytes through benchmarks/forwarder.py come first, each from this
process to a sink process, in frames of the clients' chunk (fileparts.CHUNK_SIZE): the
*forwarder copy*, as fast as the sockets take them (no crypto, no acknowledgement, no
disk); and the *crypto floor*, where the source seals each chunk with the AEAD the ratchet
uses (XChaCha20-Poly1305, a random nonce each, the key drawn once) and the sink opens it
and feeds it to a BLAKE2b of the whole file: the two things issue 20 requires of every
byte, and nothing of the protocol. On loopback the floor, not the forwarder, is what a
transfer can at best come near.
"""

from __future__ import annotations

import asyncio
import hashlib
import multiprocessing
import os
import queue
import socket
import statistics
import struct
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import nacl.utils
from nacl.public import PrivateKey

from benchmarks import servers
from benchmarks.plan import Context
from benchmarks.report import Figure, Section, judge
from benchmarks.system import peak_rss_bytes
from e2echat.client.fileparts import CHUNK_SIZE
from e2echat.crypto.primitives import KEY_SIZE, MAC_SIZE, NONCE_SIZE, aead_decrypt, aead_encrypt
from e2echat.wire.framing import FrameDecoder

MiB = 1024 * 1024
#: the relay's limits for this section: rates far above what one transfer reaches
RELAY_OPTIONS = ("--byte-rate", str(1 << 40), "--byte-burst", str(1 << 34), "--rate", "1e6", "--burst", "1e6")
#: a chat message this often while the file moves
CHAT_EVERY = 0.02
#: issue 20's targets
RATIO_TARGET = 0.5
CHAT_P99_TARGET = 50.0  # ms
#: what each frame of the two copies carries: a client's chunk of the file
FRAME = CHUNK_SIZE
_PREFIX = struct.Struct(">I")
_ROUTE = struct.Struct(">IH")  # a frame's length, then the forwarder's 2-byte address
TIMEOUT = 1800.0


def _rss_peak_kib() -> int:
    # VmHWM, not getrusage's ru_maxrss: that one outlives execve, so a process spawned
    # from this one (fork, then exec) reported this one's peak (51 MiB) when larger.
    return peak_rss_bytes(os.getpid()) // 1024


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


def _joined(port: int, client_id: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(_PREFIX.pack(2) + client_id.to_bytes(2, "big"))
    if len(sock.recv(6)) != 6:  # "you are in"
        raise RuntimeError("the forwarder did not take a client")
    return sock


def _sink(port: int, key: bytes | None, expected: int, ready: Any, results: Any) -> None:
    """Take the copy (``expected`` bytes): count them, or (``key``) open each frame and
    hash what it holds, in a thread of its own as the receiver does (both calls let go of
    the GIL, so the two run at once on two cores). Puts when it had them all, how many,
    and the hash."""
    sock = _joined(port, 2)
    ready.set()
    cpu = time.process_time()
    decoder = FrameDecoder(max_frame=FRAME + 1024)
    digest = hashlib.blake2b(digest_size=32)
    opened: queue.Queue[bytes | None] = queue.Queue(maxsize=64)

    def hashing() -> None:
        while (block := opened.get()) is not None:
            digest.update(block)

    hasher = threading.Thread(target=hashing)
    hasher.start()
    got = 0
    while got < expected:
        data = sock.recv(1 << 20)
        if not data:
            break
        got += len(data)
        if key is None:
            continue
        for frame in decoder.receive_data(data):
            sealed = frame[2:]
            opened.put(aead_decrypt(sealed[NONCE_SIZE:], b"", sealed[:NONCE_SIZE], key))
    opened.put(None)
    hasher.join()
    results.put((time.monotonic(), time.process_time() - cpu, got, digest.digest()))
    sock.close()


def _copy(port: int, path: Path, digest: bytes, *, sealed: bool) -> tuple[float, float, float]:
    """Copy ``path`` through the forwarder in FRAME-sized frames to a sink in a process
    of its own; ``sealed``: the crypto floor (each frame sealed, opened, hashed). Returns
    the seconds it took, and the CPU seconds of the source and of the sink."""
    spawn = multiprocessing.get_context("spawn")
    key = nacl.utils.random(KEY_SIZE) if sealed else None
    size = path.stat().st_size
    per_frame = _ROUTE.size + (NONCE_SIZE + MAC_SIZE if sealed else 0)
    expected = size + -(-size // FRAME) * per_frame
    ready, results = spawn.Event(), spawn.Queue()
    sink = spawn.Process(target=_sink, args=(port, key, expected, ready, results))
    sink.start()
    if not ready.wait(30):
        raise RuntimeError("the sink did not start")
    sender = _joined(port, 1)
    started, cpu = time.monotonic(), time.process_time()
    with path.open("rb") as source:
        while block := source.read(FRAME):
            if key is not None:
                nonce = nacl.utils.random(NONCE_SIZE)
                block = nonce + aead_encrypt(block, b"", nonce, key)
            sender.sendall(_ROUTE.pack(len(block) + 2, 2) + block)
    source_cpu = time.process_time() - cpu
    finished: float
    sink_cpu: float
    finished, sink_cpu, got, hashed = results.get(timeout=TIMEOUT)
    sink.join(30)
    sender.close()
    if got != expected:
        raise RuntimeError(f"the copy got {got} bytes of {expected}")
    if key is not None and hashed != digest:
        raise RuntimeError("the crypto floor's hash is not the file's")
    return finished - started, source_cpu, sink_cpu


def files(context: Context) -> Section:
    plan = context.plan
    size = plan.file_mib * MiB
    section = Section("files", f"13. one {plan.file_mib} MiB file through the relay, end to end")
    judged = not plan.smoke
    spawn = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="bench-files-") as directory:
        path = Path(directory) / "file.bin"
        digest = _make_file(path, size)
        with servers.forwarder() as forwarder:
            copy_seconds, _, _ = _copy(forwarder.port, path, digest, sealed=False)
            floor_mark = forwarder.mark()
            floor_seconds, floor_sender_cpu, floor_receiver_cpu = _copy(
                forwarder.port, path, digest, sealed=True
            )
            floor_forwarder_cpu = forwarder.cpu() - floor_mark.cpu
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
    floor_rate = size / floor_seconds / 1e6
    ratio = rate / copy_rate
    latencies = sorted(received["latencies_ms"])
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] if latencies else float("nan")
    mib = size / MiB
    section.add(Figure("forwarder_mb_s", "plain TCP copy through the forwarder", copy_rate, "MB/s"))
    section.add(
        Figure(
            "floor_mb_s",
            "crypto floor: sealed, opened, hashed, through the forwarder",
            floor_rate,
            "MB/s",
            note=f"floor ÷ forwarder {floor_rate / copy_rate:.2f}",
        )
    )
    section.add(Figure("transfer_mb_s", "transfer, through the relay", rate, "MB/s"))
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
    section.add(Figure("transfer_over_floor", "transfer ÷ crypto floor", rate / floor_rate, "×"))
    section.add(
        Figure("hash_seconds", "sender's BLAKE2b of the file, before its offer", sent["hash_seconds"], "s")
    )
    # Beside each, what its part of the crypto floor cost: the rest is the protocol's.
    for key, label, cpu, floor_cpu in (
        ("sender", "sender", sent["cpu"], floor_sender_cpu),
        ("receiver", "receiver", received["cpu"], floor_receiver_cpu),
        ("relay", "relay", relay_cpu, floor_forwarder_cpu),
    ):
        floor_role = {"sender": "source", "receiver": "sink", "relay": "forwarder"}[key]
        section.add(
            Figure(
                f"{key}_cpu_ms_per_mib",
                f"{label} CPU per MiB",
                cpu * 1000 / mib,
                "ms",
                note=f"floor's {floor_role} {floor_cpu * 1000 / mib:.2f} ms",
            )
        )
    for role, result in (("sender", sent), ("receiver", received)):
        section.add(Figure(f"{role}_peak_rss_mib", f"{role} peak RSS", result["peak_rss_kib"] / 1024, "MiB"))
    section.add(Figure("relay_peak_rss_mib", "relay peak RSS", relay_rss / MiB, "MiB"))
    section.add(
        Figure(
            "chat_p99_ms",
            f"chat p99 during the {plan.file_mib} MiB transfer ({len(latencies)} messages)",
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
