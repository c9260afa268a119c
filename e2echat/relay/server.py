"""The relay: a thin asyncio shell around ``RelayCore``.

Per connection: hand the bytes read to the core, and carry out what it answers (write
these frames, close that connection; keep these changes, then write those frames).
Everything the relay decides lives in core.py and limits.py; this file only owns sockets,
the clock, write buffers, signals and the store (through journal.py).
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
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, cast

from nacl.public import PrivateKey

from e2echat.crypto.identity import fingerprint
from e2echat.errors import RelayStartError
from e2echat.relay.core import Action, Close, ConnId, Persist, RelayCore, Write
from e2echat.relay.journal import Journal
from e2echat.relay.limits import Limits, address_key
from e2echat.relay.store import MemoryStore, RelayStore, Snapshot
from e2echat.streams import BufferedLink, read_buffer

log = logging.getLogger("e2echat.relay.server")

# Connections the kernel holds for us to accept: after a restart every client comes back
# within a few seconds (spread by their jitter), thousands at once. With asyncio's 100, the
# rest have their SYNs dropped and wait out TCP's own backoff (1, 3, 7, 15 s…). The kernel
# caps it at net.core.somaxconn (4096 on current Linux).
LISTEN_BACKLOG = 4096

DEFAULT_PORT = 8000


class _Link(BufferedLink):
    """One client connection: hands its bytes to the relay, and tells it when it ends."""

    __slots__ = ("closing_since", "conn", "relay", "transport")

    def __init__(self, relay: Relay) -> None:
        super().__init__(relay._read_buffer)  # one for every connection (see streams)
        self.relay = relay
        self.conn: ConnId = 0
        self.transport: asyncio.Transport | None = None
        self.closing_since = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (typed loosely: other event loops, such as uvloop, have their own).
        self.transport = cast(asyncio.Transport, transport)
        self.relay._connected(self)

    def data_received(self, data: bytes) -> None:
        self.relay._received(self, data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.relay._lost(self, exc)

    def pause_writing(self) -> None:
        # Its write buffer passed the soft mark (set in _connected): it is not keeping up.
        self.relay._paused(self)

    def resume_writing(self) -> None:
        self.relay._resumed(self)


class Relay:
    def __init__(
        self,
        host: str = "0.0.0.0",
        port: int = DEFAULT_PORT,
        *,
        limits: Limits | None = None,
        password: bytes | None = None,
        key: PrivateKey | None = None,
        store: RelayStore | None = None,
        **overrides: Any,
    ) -> None:
        """``key`` is the relay's long-term key (default: a new one, lost when this object
        goes); ``store`` keeps what the relay knows (default: memory only; it is loaded in
        ``start`` and closed in ``stop``). ``overrides`` replace single fields of ``limits``
        (handy in tests)."""
        self.host = host
        self.requested_port = port
        self.limits = replace(limits or Limits(), **overrides)
        self._password = password
        self.core = RelayCore(self.limits, password=password, key=key)
        self.store: RelayStore = store if store is not None else MemoryStore()
        #: has a durable store keep the core's changes; None with a store that keeps nothing
        self._journal: Journal | None = None
        #: set when the relay stopped on its own: its store failed (``failure``)
        self.halted = asyncio.Event()
        self.failure: BaseException | None = None
        #: open connections, registered or not
        self._links: dict[ConnId, _Link] = {}
        #: connections we hung up on, until the transport reports them closed
        self._closing: dict[ConnId, _Link] = {}
        #: bytes for each connection, written once per turn of the event loop
        self._pending: dict[ConnId, list[bytes]] = {}
        self._flush_due = False
        self._ids = itertools.count(1)
        self._server: asyncio.base_events.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._port: int | None = None
        self._closed = asyncio.Event()
        self._read_buffer = read_buffer()
        # Kept, not looked up per read: on Python 3.11 get_running_loop() makes a system call.
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def port(self) -> int:
        """The port it listens on (the one chosen by the OS, if asked for port 0)."""
        assert self._port is not None, "start() the relay first"
        return self._port

    def transport(self, conn: ConnId) -> asyncio.Transport | None:
        link = self._links.get(conn)
        return link.transport if link else None

    async def start(self) -> None:
        """Load what the store kept, then listen."""
        self._loop = loop = asyncio.get_running_loop()
        if self.store.durable:
            snapshot = await loop.run_in_executor(None, self.store.load)
            self._journal = Journal(self.store, loop, self._apply_now, self._store_failed)
        else:
            snapshot = self.store.load()
        self.core = self._new_core(snapshot, wall=time.time() - loop.time(), now=loop.time())
        try:
            self._server = await loop.create_server(
                lambda: _Link(self), self.host, self.requested_port, backlog=LISTEN_BACKLOG
            )
        except OSError as exc:
            raise RelayStartError(
                host=self.host, port=self.requested_port, detail=exc.strerror or str(exc)
            ) from None
        except UnicodeError:  # a host name getaddrinfo's IDNA step cannot encode
            raise RelayStartError(
                host=self.host, port=self.requested_port, detail="not a valid host name"
            ) from None
        self._port = self._server.sockets[0].getsockname()[1]
        self._sweeper = asyncio.create_task(self._sweep())
        log.debug("listening on %s:%d", self.host, self.port)

    async def stop(self, reason: str = "the relay was stopped") -> None:
        """Finish keeping what the store was given (and tell senders), tell every client
        we are going, then close everything, the store last."""
        if self._server is None:
            return
        self._server.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        if self._journal is not None:
            await self._journal.drain()
        self._apply(self.core.shutdown(reason))
        # Let each goodbye reach its client before the event loop goes away; bounded, as a
        # client that never reads must not hold the shutdown up.
        if self._links or self._closing:
            self._closed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closed.wait(), timeout=2)
        for link in [*self._links.values(), *self._closing.values()]:
            assert link.transport is not None
            link.transport.abort()
        self._server = None
        if self._journal is not None:
            await self._journal.close()
        else:
            self.store.close()
        log.debug("stopped")

    def _new_core(self, snapshot: Snapshot, *, wall: float, now: float) -> RelayCore:
        """The core, built from what the store kept (a cluster's relay has its own)."""
        return RelayCore(
            self.limits, password=self._password, key=self.core.key, snapshot=snapshot, wall=wall, now=now
        )

    def _store_failed(self, failure: BaseException) -> None:
        """The store could not keep a batch: drop every client at once (they see the
        connection lost, and report what was not confirmed) and have the relay stop."""
        self.failure = failure
        for link in [*self._links.values(), *self._closing.values()]:
            if link.transport is not None:
                link.transport.abort()
        self.halted.set()

    # -- the connections' callbacks --------------------------------------------------------

    def _connected(self, link: _Link) -> None:
        transport = link.transport
        assert transport is not None and self._loop is not None  # set by start()
        peer = transport.get_extra_info("peername")
        address = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "?"
        source = address_key(str(peer[0])) if isinstance(peer, tuple) else "?"
        # Past the soft mark asyncio calls pause_writing, and the core delivers no more to it.
        transport.set_write_buffer_limits(high=self.limits.write_buffer_soft)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # Chat is small writes; Nagle would hold each one back waiting for an ACK.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        link.conn = conn = next(self._ids)
        self._links[conn] = link
        log.info("connection #%d from %s", conn, address)
        self._apply(self.core.connect(conn, self._loop.time(), source))

    def _received(self, link: _Link, data: bytes) -> None:
        assert self._loop is not None  # set by start(), before any connection
        self._apply(self.core.receive_data(link.conn, data, self._loop.time()))

    def _paused(self, link: _Link) -> None:
        assert self._loop is not None
        self.core.paused(link.conn, self._loop.time())

    def _resumed(self, link: _Link) -> None:
        # Drained: the next window of what it is owed (its member lists), if anything.
        self._apply(self.core.resumed(link.conn))

    def _lost(self, link: _Link, exc: Exception | None) -> None:
        conn = link.conn
        if self._links.get(conn) is link:
            del self._links[conn]
        if self._closing.get(conn) is link:
            del self._closing[conn]
        self._pending.pop(conn, None)
        if conn:
            if isinstance(exc, OSError):
                log.info("connection #%d: %s", conn, exc.strerror or type(exc).__name__)
            self._apply(self.core.disconnect(conn))
            log.info("connection #%d closed", conn)
        if not self._links and not self._closing:
            self._closed.set()

    async def _sweep(self) -> None:
        """Let the core check its timeouts, and abort the connections we hung up on that
        have not drained within ``close_grace``. One timer for every connection: a timer
        each would cost memory per connection and a reset on every read."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.limits.tick_interval)
            try:
                now = loop.time()
                self._apply(self.core.tick(now, time.time()))
                self._abort_undrained(now)
            except Exception:  # a bug: say so, and keep the timeouts working for everyone else
                log.exception("error while checking connection timeouts")

    def _abort_undrained(self, now: float) -> None:
        grace = self.limits.close_grace
        for conn, link in list(self._closing.items()):
            if now - link.closing_since > grace and link.transport is not None:
                log.info("connection #%d: did not take its last bytes within %gs", conn, grace)
                link.transport.abort()

    # -- writing -----------------------------------------------------------------------------

    def _apply(self, actions: list[Action]) -> None:
        """Carry out the core's actions: a ``Persist`` through the journal if the store is
        durable (and what follows it for the same connections behind it), the rest now."""
        journal = self._journal
        if journal is None:
            for action in actions:
                if isinstance(action, Persist):
                    self.store.apply(action.ops)  # keeps nothing that outlives us: at once
            self._apply_now(actions)
            return
        if journal.failure is not None:
            return  # stopping: nothing more is written
        now: list[Action] = []
        held = journal.held
        for action in actions:
            if isinstance(action, Persist):
                self._apply_now(now)
                now = []
                journal.persist(action.ops, action.frames)
            elif not held:
                now.append(action)
            elif isinstance(action, Close):
                if action.conn in held:
                    journal.hold(action)
                else:
                    now.append(action)
            else:
                free = [pair for pair in action.frames if pair[0] not in held]
                if len(free) < len(action.frames):
                    journal.hold(Write([pair for pair in action.frames if pair[0] in held]))
                now.append(Write(free))
        self._apply_now(now)

    def _apply_now(self, actions: list[Action]) -> None:
        """Carry out the core's actions. Frames are queued per connection and written once
        per turn of the event loop: a busy relay makes one system call per recipient for
        everything it has for them, not one per message."""
        pending = self._pending
        for action in actions:
            if isinstance(action, Write | Persist):  # a Persist here is kept already
                for conn, frame in action.frames:
                    queued = pending.get(conn)
                    if queued is None:
                        pending[conn] = [frame]
                    else:
                        queued.append(frame)
            else:
                log.info("closing connection #%d: %s", action.conn, action.reason)
                self._write(action.conn, pending.pop(action.conn, None))
                self._drop(action.conn)
        if pending and not self._flush_due:
            self._flush_due = True
            assert self._loop is not None
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_due = False
        pending, self._pending = self._pending, {}
        for conn, parts in pending.items():
            self._write(conn, parts)
        # Those still owed something and not past the soft mark get their next window.
        self._apply(self.core.flushed())

    def _write(self, conn: ConnId, parts: list[bytes] | None) -> None:
        link = self._links.get(conn)
        if link is None or parts is None:
            return
        transport = link.transport
        assert transport is not None
        if transport.is_closing():
            return  # going: its connection_lost will report the disconnect
        transport.write(b"".join(parts))
        if transport.get_write_buffer_size() > self.limits.write_buffer:
            log.warning("closing connection #%d: it is not reading (write buffer full)", conn)
            self._drop(conn, abort=True)
            # Out of the directory at once: its connection_lost comes later.
            self._apply(self.core.disconnect(conn))

    def _drop(self, conn: ConnId, *, abort: bool = False) -> None:
        link = self._links.get(conn)
        if link is None or link.transport is None:
            return
        if abort:
            link.transport.abort()  # discard what it never read
        else:
            link.transport.close()  # flushes what is queued (an error frame), then closes
        # No longer read from or written to (a peer that is not reading could take minutes
        # to close); stop() waits for it until connection_lost, and the sweeper aborts it
        # after close_grace.
        del self._links[conn]
        assert self._loop is not None
        link.closing_since = self._loop.time()
        self._closing[conn] = link


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
    key: PrivateKey | None = None,
    key_note: str = "",
    store: RelayStore | None = None,
    announce: bool = False,
    make_relay: Callable[..., Relay] = Relay,
) -> None:
    """Serve until Ctrl+C or SIGTERM, then tell clients and stop. ``key_note`` says where
    the key is kept. If the ``store`` fails, the relay stops and its error is raised.
    ``announce``: announce the relay on the LAN (mDNS) while it serves. ``make_relay``
    makes it (a cluster's relay, say) from these arguments."""
    relay = make_relay(host, port, limits=limits, password=password, key=key, store=store)
    await relay.start()
    announcer = None
    if announce:
        from e2echat.discovery import Announcer  # zeroconf is imported by those who announce

        announcer = Announcer(host, relay.port, fingerprint(relay.core.key.public_key), lan_addresses)
        announcer.start()
    say(f"e2echat relay listening on {host}:{relay.port}")
    say("People on your network can join with:")
    say(f"  {connect_hint(host, relay.port)}")
    say(f"The relay's key fingerprint is {fingerprint(relay.core.key.public_key)}")
    say("(clients show it when they first connect: tell people, so they can check it).")
    if key_note:
        say(key_note)
    if password is not None:
        say("It asks for a password: share it with the people you invite, not on the network.")
    if announce:
        say("It announces itself by mDNS, so that `e2echat connect` finds it on the LAN.")
    say("Press Ctrl+C to stop.")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    stopped, halted = asyncio.ensure_future(stop.wait()), asyncio.ensure_future(relay.halted.wait())
    try:
        await asyncio.wait((stopped, halted), return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
        halted.cancel()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        if announcer is not None:
            await announcer.stop()  # first: no one should find a relay that is going
        await relay.stop("stopped by the person running it")
    if relay.failure is not None:
        raise relay.failure
    say("relay stopped")
