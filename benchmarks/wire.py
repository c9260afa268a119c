"""Client-side plumbing shared by the benchmarks: sockets, registration with the real
``ClientCore``, and a cheap frame counter for when decoding must wait."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Callable

from nacl.public import PrivateKey

from e2echat.client_core import ClientCore, ClientState
from e2echat.errors import E2EChatError
from e2echat.keys import new_session_key

LOOPBACK = "127.0.0.1"
READ_CHUNK = 256 * 1024
_PREFIX = struct.Struct(">I")


class BenchmarkError(RuntimeError):
    pass


async def open_stream(
    host: str, port: int, *, receive_buffer: int | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TCP connection with TCP_NODELAY, as the real client makes. ``receive_buffer``
    shrinks the kernel's buffer (set before connecting, so the window follows it)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if receive_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(sock, (host, port))
    except BaseException:
        sock.close()
        raise
    return await asyncio.open_connection(sock=sock, limit=READ_CHUNK)


def new_core(nick: str) -> ClientCore:
    """A real client core with fresh identity and session keys."""
    return ClientCore(nick, PrivateKey.generate(), new_session_key())


async def register(
    core: ClientCore,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    until: Callable[[ClientCore], bool] = lambda core: True,
    timeout: float = 30.0,
) -> None:
    """Answer the challenge, take the directory, and keep reading until ``until(core)``
    (for example: every other client has joined). Bytes move; the core decides."""

    async def run() -> None:
        while not (core.state is ClientState.ONLINE and until(core)):
            data = await reader.read(READ_CHUNK)
            if not data:
                raise BenchmarkError(f"{core.nick}: the relay closed the connection while registering")
            try:
                core.receive_data(data)
            except E2EChatError as exc:
                raise BenchmarkError(f"{core.nick}: {exc}") from None
            if core.state is ClientState.CLOSED:
                raise BenchmarkError(f"{core.nick}: registration refused")
            writer.write(core.data_to_send())

    await asyncio.wait_for(run(), timeout)


def close_quietly(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(Exception):
        writer.transport.abort()


class FrameTally:
    """Counts complete frames by kind as bytes arrive, without decoding them: the relay
    benchmark decrypts everything after the clock stops, so while it runs the clients
    only need to know how many deliveries and answers have arrived. ``classify`` sees the
    first bytes of each payload."""

    PEEK = 24

    def __init__(self, classify: Callable[[bytes], int], kinds: int) -> None:
        self._classify = classify
        self._buffer = bytearray()
        self.counts = [0] * kinds

    def feed(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        position, size = 0, len(buffer)
        while size - position >= 4:
            (length,) = _PREFIX.unpack_from(buffer, position)
            end = position + 4 + length
            if end > size:
                break
            self.counts[self._classify(bytes(buffer[position + 4 : position + 4 + self.PEEK]))] += 1
            position = end
        del buffer[:position]
