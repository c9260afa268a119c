"""The relay: a thin asyncio shell around ``RelayCore``.

Per connection: read bytes, cut frames, decode, ask the core, carry out its actions.
Everything the relay decides lives in relay_core.py; this file only owns sockets, time
limits and signals.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import ipaddress
import itertools
import logging
import signal
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from e2echat.errors import FrameTooLarge, RelayStartError, RemoteProtocolError
from e2echat.framing import MAX_FRAME, FrameDecoder, encode_frame
from e2echat.messages import Error, Message, decode_message, encode_message
from e2echat.relay_core import Action, Close, ConnId, Outgoing, RelayCore, TokenBucket

log = logging.getLogger("e2echat.relay")

DEFAULT_PORT = 8000
# The largest frame before registration: a `register` with the longest password is ~1 KiB.
HANDSHAKE_FRAME = 4096
_READ_CHUNK = 64 * 1024


@dataclass(frozen=True)
class Limits:
    """What one connection may do. Every limit is configurable (``e2echat relay --help``)
    and logged in one line when a client hits it."""

    #: 1 MiB, as websockets and NATS; checked on the length prefix, before the body.
    max_frame: int = MAX_FRAME
    #: a small machine's open-files limit is the real ceiling; 10,000 idle clients cost
    #: the relay a few tens of MiB.
    max_connections: int = 10_000
    #: a client that never answers the challenge must not hold a slot for ever (slowloris)
    handshake_timeout: float = 10.0
    #: clients ping after 20 s of silence, so 60 s of nothing means the peer is gone
    idle_timeout: float = 60.0
    #: messages a second per connection, sustained, and the burst allowed above that:
    #: far beyond anyone typing, well below a flood.
    rate: float = 50.0
    burst: float = 200.0
    #: a client that stops reading is dropped once this much is queued for it, so the
    #: relay's memory cannot grow with a stalled reader: four maximal frames.
    write_buffer: int = 4 * MAX_FRAME


@dataclass
class _Flow:
    """Per-connection rate-limit state (the shell's, not the core's: it is about time)."""

    bucket: TokenBucket
    rejected: int = 0
    last_rejected: float = -1e9
    warned_at: float = -1e9


class Relay:
    def __init__(
        self,
        host: str = "0.0.0.0",
        port: int = DEFAULT_PORT,
        *,
        limits: Limits | None = None,
        password: bytes | None = None,
        **overrides: Any,
    ) -> None:
        """``overrides`` replace single fields of ``limits`` (handy in tests)."""
        self.host = host
        self.requested_port = port
        self.limits = replace(limits or Limits(), **overrides)
        self.core = RelayCore(password=password)
        self._writers: dict[ConnId, asyncio.StreamWriter] = {}
        self._handlers: set[asyncio.Task[None]] = set()
        self._ids = itertools.count(1)
        self._server: asyncio.base_events.Server | None = None
        self._port: int | None = None

    @property
    def port(self) -> int:
        """The port it listens on (the one chosen by the OS, if asked for port 0)."""
        assert self._port is not None, "start() the relay first"
        return self._port

    async def start(self) -> None:
        try:
            self._server = await asyncio.start_server(self._serve_connection, self.host, self.requested_port)
        except OSError as exc:
            raise RelayStartError(
                host=self.host, port=self.requested_port, detail=exc.strerror or str(exc)
            ) from None
        self._port = self._server.sockets[0].getsockname()[1]
        log.info("listening on %s:%d", self.host, self.port)

    async def stop(self, reason: str = "the relay was stopped") -> None:
        """Tell every client we are going, then close everything."""
        if self._server is None:
            return
        self._server.close()
        writers = list(self._writers.values())
        self._apply(self.core.shutdown(reason))
        for task in self._handlers:
            task.cancel()
        # Let each goodbye reach its client before the event loop goes away; bounded, as a
        # client that never reads must not hold the shutdown up.
        waits = [asyncio.ensure_future(_closed(w)) for w in writers] + list(self._handlers)
        if waits:
            await asyncio.wait(waits, timeout=2)
        for writer in writers:
            writer.transport.abort()
        self._server = None
        log.info("stopped")

    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        conn = next(self._ids)
        peer = writer.get_extra_info("peername")
        address = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "?"
        sock = writer.get_extra_info("socket")
        if sock is not None:
            # Chat is small writes; Nagle would hold each one back waiting for an ACK.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if len(self._writers) >= self.limits.max_connections:
            log.warning("refused connection from %s: the relay is full", address)
            full = Error("busy", f"the relay is full ({self.limits.max_connections} connections)")
            writer.write(encode_frame(encode_message(full)))
            writer.close()
            self._handlers.discard(task)
            return
        self._writers[conn] = writer
        log.info("connection #%d from %s", conn, address)
        try:
            self._apply(self.core.connect(conn))
            await self._read_loop(conn, reader)
        except (ConnectionError, OSError) as exc:
            log.info("connection #%d: %s", conn, exc.strerror or type(exc).__name__)
        except asyncio.CancelledError:
            pass
        finally:
            nick = self.core.nick_of(conn)
            self._apply(self.core.disconnect(conn))
            self._drop(conn)
            log.info("connection #%d closed%s", conn, f" ({nick} left)" if nick else "")
            self._handlers.discard(task)

    async def _read_loop(self, conn: ConnId, reader: asyncio.StreamReader) -> None:
        loop = asyncio.get_running_loop()
        limits = self.limits
        # Until it has registered, a connection may send only small frames (a registration
        # is under 1 KiB): a stranger must not make the relay buffer a megabyte each.
        decoder = FrameDecoder(max_frame=min(limits.max_frame, HANDSHAKE_FRAME))
        deadline = loop.time() + limits.handshake_timeout
        flow = _Flow(TokenBucket(limits.rate, limits.burst, loop.time()))
        while conn in self._writers:
            registered = self.core.is_registered(conn)
            timeout = limits.idle_timeout if registered else max(0.0, deadline - loop.time())
            try:
                data = await asyncio.wait_for(reader.read(_READ_CHUNK), timeout)
            except TimeoutError:
                if registered:
                    log.info("connection #%d: idle for %gs", conn, limits.idle_timeout)
                    self._apply(self.core.refuse(conn, "idle", f"nothing heard for {limits.idle_timeout:g}s"))
                else:
                    log.info("connection #%d: no registration within %gs", conn, limits.handshake_timeout)
                    self._apply(self.core.refuse(conn, "timeout", "registration took too long"))
                return
            if not data:
                return
            try:
                for frame in decoder.receive_data(data):
                    message = decode_message(frame)
                    if self.core.is_registered(conn) and not flow.bucket.take(loop.time()):
                        self._over_rate(conn, message, flow, loop.time())
                    else:
                        self._apply(self.core.receive(conn, message))
                    if self.core.is_registered(conn):
                        decoder.max_frame = limits.max_frame
                    if conn not in self._writers:
                        return
            except FrameTooLarge as exc:
                log.warning("connection #%d: %s", conn, exc)
                self._apply(self.core.refuse(conn, "too_large", str(exc)))
                return
            except RemoteProtocolError as exc:
                log.info("connection #%d: %s", conn, exc)
                self._apply(self.core.refuse(conn, "protocol", str(exc)))
                return

    def _over_rate(self, conn: ConnId, message: Message, flow: _Flow, now: float) -> None:
        """A frame beyond the rate limit is not forwarded; the sender is told (at most once a
        second), and a sender that keeps flooding after being told is disconnected."""
        if now - flow.last_rejected > 5.0:
            flow.rejected = 0  # a new episode
        flow.rejected += 1
        flow.last_rejected = now
        if flow.rejected > self.limits.burst:
            log.warning("connection #%d: disconnected for flooding", conn)
            self._apply(self.core.refuse(conn, "rate_limited", "disconnected: too many messages"))
            return
        actions = self.core.refused(conn, message)
        if now - flow.warned_at >= 1.0:
            flow.warned_at = now
            log.warning("connection #%d: over the rate limit (%g/s)", conn, self.limits.rate)
            text = f"too many messages (at most {self.limits.rate:g} a second); some were not forwarded"
            actions.append(Outgoing(conn, Error("rate_limited", text)))
        self._apply(actions)

    def _apply(self, actions: list[Action]) -> None:
        encoded: dict[int, bytes] = {}  # a broadcast is encoded once, not once per peer
        for action in actions:
            if isinstance(action, Close):
                log.info("closing connection #%d: %s", action.conn, action.reason)
                self._drop(action.conn)
                continue
            assert isinstance(action, Outgoing)
            writer = self._writers.get(action.conn)
            if writer is None or writer.transport.is_closing():
                continue  # gone, or going: its handler will report the disconnect
            key = id(action.message)
            if key not in encoded:
                encoded[key] = encode_frame(encode_message(action.message))
            writer.write(encoded[key])
            if writer.transport.get_write_buffer_size() > self.limits.write_buffer:
                log.warning("closing connection #%d: it is not reading (write buffer full)", action.conn)
                self._drop(action.conn, abort=True)

    def _drop(self, conn: ConnId, *, abort: bool = False) -> None:
        writer = self._writers.pop(conn, None)
        if writer is None:
            return
        if abort:
            writer.transport.abort()  # discard what it never read
        else:
            writer.close()  # flushes what is queued (an error frame), then closes


async def _closed(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        await writer.wait_closed()


def lan_addresses() -> list[str]:
    """This machine's IPv4 addresses other than loopback, read from the interfaces.

    Uses the SIOCGIFADDR ioctl (Linux) and falls back to resolving the host name. It
    sends no packet anywhere.
    """
    found: list[str] = []
    with (
        contextlib.suppress(OSError, AttributeError),
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe,
    ):
        for _, name in socket.if_nameindex():
            with contextlib.suppress(OSError):
                request = struct.pack("256s", name.encode()[:15])
                reply = fcntl.ioctl(probe.fileno(), 0x8915, request)  # SIOCGIFADDR
                found.append(socket.inet_ntoa(reply[20:24]))
    if not found:
        with contextlib.suppress(OSError):
            infos = socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)
            found = [str(info[4][0]) for info in infos]
    usable = []
    for address in found:
        ip = ipaddress.ip_address(address)
        if not ip.is_loopback and not ip.is_link_local and str(ip) not in usable:
            usable.append(str(ip))
    return usable


def connect_hint(host: str, port: int) -> str:
    """The exact command people on the LAN should type."""
    if host in ("0.0.0.0", "", "::"):
        addresses = lan_addresses()
        host = addresses[0] if addresses else "127.0.0.1"
    return f"e2echat connect --nick YOUR_NAME --host {host} --port {port}"


async def run_relay(
    host: str,
    port: int,
    say: Callable[[str], None],
    *,
    limits: Limits | None = None,
    password: bytes | None = None,
) -> None:
    """Serve until Ctrl+C or SIGTERM, then tell clients and stop."""
    relay = Relay(host, port, limits=limits, password=password)
    await relay.start()
    say(f"e2echat relay listening on {host}:{relay.port}")
    say("People on your network can join with:")
    say(f"  {connect_hint(host, relay.port)}")
    if password is not None:
        say("It asks for a password: share it with the people you invite, not on the network.")
    say("Press Ctrl+C to stop.")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        await relay.stop("stopped by the person running it")
    say("relay stopped")
