"""Client-side plumbing shared by the benchmarks: sockets, registration with the real
``ClientCore``, and a cheap frame counter for when decoding must wait."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Callable
from typing import cast

from nacl.public import PrivateKey

from e2echat.client.core import ClientCore, ClientState, MessageReceived, RegistrationFailed
from e2echat.crypto.identity import new_session_key
from e2echat.errors import E2EChatError
from e2echat.streams import BufferedLink, read_buffer
from e2echat.wire.fastpath import send_recipients

LOOPBACK = "127.0.0.1"
_PREFIX = struct.Struct(">I")


class BenchmarkError(RuntimeError):
    pass


def new_core(nick: str) -> ClientCore:
    """A real client core with fresh identity and session keys."""
    return ClientCore(nick, PrivateKey.generate(), new_session_key())


#: what every Link in this process reads into (see e2echat.streams): safe to share while
#: the process runs one event loop, as the load generator's workers do
_READ_BUFFER = read_buffer()


class Link(BufferedLink):
    """A client socket driven by a callback: ``handler(data)`` for each read (``b""`` at
    the end). With ``pause`` set, it reads at most once per ``pause`` seconds: the bytes
    wait in the kernel meanwhile and arrive in one batch, so the load generator spends
    far fewer wake-ups per delivery. The sender is not slowed by it: on loopback the
    kernel buffers far more than arrives in a pause."""

    def __init__(self) -> None:
        super().__init__(_READ_BUFFER)
        self._handler: Callable[[bytes], None] | None = None
        self._early: list[bytes] = []
        self.transport: asyncio.Transport | None = None
        self.pause = 0.0

    @property
    def handler(self) -> Callable[[bytes], None]:
        return self._handler or self._early.append

    @handler.setter
    def handler(self, handler: Callable[[bytes], None]) -> None:
        # What arrived before the first handler was set (an event loop may read the
        # relay's challenge before create_connection returns) goes to it now, in order.
        self._handler = handler
        while self._early and self._handler is not None:
            self._handler(self._early.pop(0))  # the current handler: one may set the next

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (typed loosely: other event loops, such as uvloop, have their own).
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.handler(data)
        transport = self.transport
        if self.pause > 0 and transport is not None and not transport.is_closing():
            transport.pause_reading()
            asyncio.get_running_loop().call_later(self.pause, self._resume)

    def _resume(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.handler(b"")

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        if data and not self.transport.is_closing():
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.abort()


async def connect_link(host: str, port: int, link: Link | None = None, *, receive_buffer: int = 0) -> Link:
    """A TCP connection with TCP_NODELAY (as the real client makes), driven by ``link``.
    ``receive_buffer`` shrinks the kernel's buffer (set before connecting, so that the
    window the peer sees follows it)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if receive_buffer:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    try:
        await loop.sock_connect(sock, (host, port))
        made = link or Link()
        await loop.create_connection(lambda: made, sock=sock)
    except BaseException:
        sock.close()
        raise
    return made


async def register(
    core: ClientCore,
    link: Link,
    until: Callable[[ClientCore], bool] = lambda core: True,
    timeout: float = 30.0,
    heard: set[str] | None = None,
) -> None:
    """Answer the challenge, take the directory, and keep feeding the core until
    ``until(core)`` (for example: every other client has joined). Bytes move; the core
    decides. The core keeps being fed afterwards until ``link.handler`` is replaced;
    who sends us a message meanwhile is added to ``heard``, if given."""
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def fail(why: str) -> None:
        if not done.done():
            done.set_exception(BenchmarkError(f"{core.nick}: {why}"))

    def handle(data: bytes) -> None:
        if not data:
            fail("the relay closed the connection while registering")
            return
        try:
            events = core.receive_data(data)
        except E2EChatError as exc:
            fail(str(exc))
            return
        if heard is not None:
            heard.update(event.sender for event in events if isinstance(event, MessageReceived))
        link.write(core.data_to_send())
        if core.state is ClientState.CLOSED:
            refusals = [f"{e.code}: {e.text}" for e in events if isinstance(e, RegistrationFailed)]
            fail(f"registration refused ({'; '.join(refusals) or 'no reason given'})")
        elif core.state is ClientState.ONLINE and until(core) and not done.done():
            done.set_result(None)

    link.handler = handle
    await asyncio.wait_for(done, timeout)


async def start_sessions(core: ClientCore, link: Link, text: str, timeout: float = 30.0) -> None:
    """Start a session with everyone in ``core``'s directory, as a client's first room
    message (``text``) does: the message, a fetch of their prekey bundles, the copies
    once those are in. Returns when the relay has answered for every copy; what comes after (receipts)
    goes to whoever sets ``link.handler`` next. A core that never reads its link cannot
    send anyone anything: its copies would wait for the bundles for ever."""
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def handle(data: bytes) -> None:
        if not data:
            if not done.done():
                done.set_exception(BenchmarkError(f"{core.nick}: the relay closed the connection"))
            return
        core.receive_data(data)
        link.write(core.data_to_send())
        if not core.pending and not done.done():
            done.set_result(None)

    link.handler = handle
    core.send_room("#lobby", text)
    link.write(core.data_to_send())
    await asyncio.wait_for(done, timeout)


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


def count_receipts(data: bytes) -> int:
    """Receipts (envelopes of ``send`` frames with id 0, as the client core writes them)
    in a stretch of outgoing bytes made of whole frames."""
    count, position = 0, 0
    while position + 4 <= len(data):
        (length,) = _PREFIX.unpack_from(data, position)
        start, position = position + 4, position + 4 + length
        read = send_recipients(data[start:position])
        if read is not None and read[0] == 0:
            count += len(read[1])
    return count
