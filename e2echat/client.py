"""The client's asyncio shell around ``ClientCore``: connect, register, move bytes,
keep the connection alive, and reconnect when the relay goes away.

``Connection`` is one connection: events from the core land in ``Connection.events``,
and a final ``Disconnected`` says why it ended. ``Client`` keeps a chat going across
connections: it reconnects with capped backoff, re-registers (a new session key, so new
sessions with everyone), and holds what is typed meanwhile until it can be sent. Nothing
here decides anything about the protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from nacl.public import PrivateKey

from e2echat.client_core import ClientCore
from e2echat.delivery import RECEIPT_TIMEOUT
from e2echat.errors import (
    CommandError,
    RegistrationRefused,
    RelayGone,
    RelayUnreachable,
    RemoteProtocolError,
)
from e2echat.events import Event, PeerJoined, Registered, RegistrationFailed, RelayClosing
from e2echat.keys import new_session_key
from e2echat.trust import KnownPeers

log = logging.getLogger("e2echat.client")

# How long connecting and registering may take before we give up on the relay.
CONNECT_TIMEOUT = 10.0
# After this long without a byte from the relay we ping it; after twice this long the
# connection is dead (a relay that vanished without a FIN: power cut, cable, NAT).
KEEPALIVE = 20.0
_READ_CHUNK = 64 * 1024
# After a reconnect, how long a queued message may wait for its recipients to be back.
OUTBOX_GRACE = 5.0
_LOST = "the connection was lost before it was confirmed (it may still have arrived)"


@dataclass(frozen=True)
class Disconnected:
    """The last event of a connection: why it ended."""

    detail: str


class Connection:
    """One registered connection to the relay, with a fresh session key."""

    def __init__(
        self,
        host: str,
        port: int,
        nick: str,
        identity: PrivateKey,
        known_peers: KnownPeers | None = None,
        *,
        password: bytes | None = None,
        keepalive: float = KEEPALIVE,
        receipt_timeout: float = RECEIPT_TIMEOUT,
    ) -> None:
        self.host = host
        self.port = port
        self.nick = nick
        self.keepalive = keepalive
        # The session key's private half lives in this object only: when the connection
        # is gone, so is every session key derived from it (forward secrecy).
        self.core = ClientCore(
            nick, identity, new_session_key(), known_peers, password=password, receipt_timeout=receipt_timeout
        )
        self.events: asyncio.Queue[Event | Disconnected] = asyncio.Queue()
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._ticker_task: asyncio.Task[None] | None = None
        self._settled = asyncio.Event()
        self._settled.set()
        self.closed = False
        self._relay_closing = False

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def open(self, timeout: float = CONNECT_TIMEOUT) -> Registered:
        """Connect and register. Raises RelayUnreachable or RegistrationRefused."""
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), timeout)
        except (OSError, TimeoutError):
            raise RelayUnreachable(host=self.host, port=self.port) from None
        self._writer = writer
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            registered = await asyncio.wait_for(self._register(reader), timeout)
        except TimeoutError:
            writer.close()
            raise RelayGone(host=self.host, port=self.port, detail="registration timed out") from None
        except BaseException:
            writer.close()
            raise
        self._reader_task = asyncio.create_task(self._read_loop(reader))
        self._ticker_task = asyncio.create_task(self._tick_loop())
        return registered

    async def _register(self, reader: asyncio.StreamReader) -> Registered:
        while True:
            data = await self._read(reader)
            if not data:
                raise RelayGone(host=self.host, port=self.port, detail="it closed the connection")
            try:
                events = self.core.receive_data(data)
            except RemoteProtocolError as exc:
                raise RelayGone(host=self.host, port=self.port, detail=str(exc)) from None
            self._flush()
            self._relay_closing |= any(isinstance(event, RelayClosing) for event in events)
            for index, event in enumerate(events):
                if isinstance(event, RegistrationFailed):
                    raise RegistrationRefused(nick=self.nick, detail=event.text, code=event.code)
                if isinstance(event, Registered):
                    for later in events[index:]:
                        self.events.put_nowait(later)
                    return event

    async def _read(self, reader: asyncio.StreamReader) -> bytes:
        try:
            return await reader.read(_READ_CHUNK)
        except (ConnectionError, OSError):
            return b""

    async def _read_loop(self, reader: asyncio.StreamReader) -> None:
        detail = ""
        pinged = False
        try:
            while True:
                try:
                    data = await asyncio.wait_for(self._read(reader), self.keepalive)
                except TimeoutError:
                    if pinged:
                        detail = f"no answer from it for {2 * self.keepalive:g}s"
                        break
                    self.core.ping()
                    self._flush()
                    pinged = True
                    continue
                pinged = False
                if not data:
                    break
                try:
                    events = self.core.receive_data(data)
                except RemoteProtocolError as exc:
                    detail = f"it broke the protocol ({exc})"
                    break
                self._flush()
                for event in events:
                    if isinstance(event, RelayClosing):
                        self._relay_closing = True
                self._publish(events)
        finally:
            if not detail:
                detail = "it shut down" if self._relay_closing else "it closed the connection"
            for event in self.core.abandon(_LOST):
                self.events.put_nowait(event)
            self._close_transport()
            self.events.put_nowait(Disconnected(detail))

    async def _tick_loop(self) -> None:
        # Once a second: report messages whose receipts are overdue.
        while not self.closed:
            await asyncio.sleep(1.0)
            self._publish(self.core.tick())

    def _publish(self, events: list[Event]) -> None:
        for event in events:
            self.events.put_nowait(event)
        if self.core.settled:
            self._settled.set()

    def _flush(self) -> None:
        data = self.core.data_to_send()
        if data and self._writer is not None and not self._writer.is_closing():
            self._writer.write(data)

    # -- what the UI calls --------------------------------------------------------------------

    def send_room(self, text: str) -> int:
        message_id = self.core.send_room(text)
        self._sent()
        return message_id

    def send_private(self, nick: str, text: str) -> int:
        message_id = self.core.send_private(nick, text)
        self._sent()
        return message_id

    def _sent(self) -> None:
        self._settled.clear()
        self._flush()

    async def wait_settled(self, timeout: float) -> bool:
        """Wait until every message sent is accounted for: the relay answered, and each
        recipient confirmed it or is known not to have got it. False on timeout."""
        if self._writer is not None:
            with contextlib.suppress(ConnectionError, OSError, TimeoutError):
                await asyncio.wait_for(self._writer.drain(), timeout)
        try:
            await asyncio.wait_for(self._settled.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def _close_transport(self) -> None:
        self.closed = True
        self.core.forget_keys()
        self._settled.set()  # nothing more will be answered
        if self._writer is not None:
            self._writer.close()

    async def close(self) -> None:
        self._close_transport()
        for task in (self._reader_task, self._ticker_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._writer is not None:
            with contextlib.suppress(ConnectionError, OSError, TimeoutError):
                await asyncio.wait_for(self._writer.wait_closed(), 2)


# -- keeping a chat going across connections --------------------------------------------------


@dataclass(frozen=True)
class ConnectionLost:
    """The relay went away; ``Client`` is about to reconnect."""

    detail: str


@dataclass(frozen=True)
class Reconnecting:
    """The next attempt to reach the relay is in ``delay`` seconds."""

    delay: float
    attempt: int
    why: str


@dataclass(frozen=True)
class Queued:
    """Typed while disconnected: it will be sent after the reconnect."""

    preview: str


@dataclass(frozen=True)
class NotSent:
    """Typed while disconnected, and never sent: the connection did not come back."""

    previews: tuple[str, ...]


ClientEvent = Event | Disconnected | ConnectionLost | Reconnecting | Queued | NotSent


@dataclass(frozen=True)
class Backoff:
    """Capped exponential backoff: first, 2 × first, 4 × first, ... up to ``cap`` seconds."""

    first: float = 1.0
    cap: float = 30.0

    def delays(self) -> Iterator[float]:
        delay = self.first
        while True:
            yield delay
            delay = min(self.cap, delay * 2)


@dataclass(frozen=True)
class _Outgoing:
    recipient: str | None  # None: the room
    text: str


class Client:
    """A chat that survives the relay going away: same interface as ``Connection``."""

    def __init__(
        self,
        host: str,
        port: int,
        nick: str,
        identity: PrivateKey,
        known_peers: KnownPeers | None = None,
        *,
        password: bytes | None = None,
        backoff: Backoff = Backoff(),
        **connection_options: Any,
    ) -> None:
        self.host = host
        self.port = port
        self.nick = nick
        self.backoff = backoff
        self._identity = identity
        self._known_peers = known_peers
        self._password = password
        self._connection_options = connection_options
        self.connection = self._make()
        self.events: asyncio.Queue[ClientEvent] = asyncio.Queue()
        self._outbox: list[_Outgoing] = []
        self._outbox_changed = asyncio.Event()
        self._online = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None
        self.closed = False

    def _make(self) -> Connection:
        return Connection(
            self.host,
            self.port,
            self.nick,
            self._identity,
            self._known_peers,
            password=self._password,
            **self._connection_options,
        )

    @property
    def core(self) -> ClientCore:
        return self.connection.core

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def online(self) -> bool:
        return self._online.is_set()

    async def open(self, timeout: float = CONNECT_TIMEOUT) -> Registered:
        """The first connection: its failures are the caller's to report."""
        registered = await self.connection.open(timeout)
        self._online.set()
        self._supervisor = asyncio.create_task(self._supervise(), name="e2echat-client")
        return registered

    async def _supervise(self) -> None:
        while True:
            ended = await self._forward(self.connection)
            self._online.clear()
            if self.closed:
                return
            self.events.put_nowait(ConnectionLost(ended.detail))
            connection = await self._reconnect()
            if connection is None:
                return
            self.connection = connection
            self._online.set()
            while not connection.events.empty():  # "connected", key changes: before the outbox
                event = connection.events.get_nowait()
                if isinstance(event, Disconnected):
                    connection.events.put_nowait(event)
                    break
                self.events.put_nowait(event)
            # Others are reconnecting too: what cannot go out yet (nobody back, or not the
            # recipient) waits for them to join, for a grace period, before it is reported.
            self._send_outbox(final=False)
            if self._outbox:
                loop = asyncio.get_running_loop()
                loop.call_later(OUTBOX_GRACE, self._send_outbox, True)

    async def _forward(self, connection: Connection) -> Disconnected:
        while True:
            event = await connection.events.get()
            if isinstance(event, Disconnected):
                return event
            self.events.put_nowait(event)
            if self._outbox and isinstance(event, PeerJoined):
                self._send_outbox(final=False)

    async def _reconnect(self) -> Connection | None:
        for attempt, delay in enumerate(self.backoff.delays(), start=1):
            why = "" if attempt == 1 else "the relay is not back yet"
            self.events.put_nowait(Reconnecting(delay, attempt, why))
            await asyncio.sleep(delay)  # backoff between attempts, not a wait for an event
            connection = self._make()
            try:
                await connection.open()
                return connection
            except RegistrationRefused as exc:
                if exc.fields.get("code") in ("bad_password", "password_required", "bad_nick"):
                    self.closed = True  # trying again cannot help
                    self.events.put_nowait(Disconnected(f"it refused us: {exc.fields.get('detail')}"))
                    self._give_up_outbox()
                    return None
                # "nick_taken": the relay may not have noticed our old connection is gone.
            except (RelayUnreachable, RelayGone):
                pass
        raise AssertionError("unreachable: the backoff never ends")

    def _send_outbox(self, final: bool = True) -> None:
        if not self.online:
            return  # gone again: the next reconnect tries anew
        waiting, self._outbox = self._outbox, []
        for item in waiting:
            try:
                if item.recipient is None:
                    self.connection.send_room(item.text)
                else:
                    self.connection.send_private(item.recipient, item.text)
            except CommandError as exc:
                if final:
                    self.events.put_nowait(NotSent((f"{_preview(item.text)} ({exc})",)))
                else:
                    self._outbox.append(item)
        self._outbox_changed.set()

    def _give_up_outbox(self) -> None:
        if self._outbox:
            self.events.put_nowait(NotSent(tuple(_preview(item.text) for item in self._outbox)))
            self._outbox.clear()

    # -- what the UI calls ----------------------------------------------------------------------

    def send_room(self, text: str) -> int | None:
        if self.online:
            return self.connection.send_room(text)
        self._queue(_Outgoing(None, text))
        return None

    def send_private(self, nick: str, text: str) -> int | None:
        if self.online:
            return self.connection.send_private(nick, text)
        self._queue(_Outgoing(nick, text))
        return None

    def _queue(self, item: _Outgoing) -> None:
        if self.closed:
            raise CommandError(detail="not connected to the relay; the message was not sent")
        self._outbox.append(item)
        self.events.put_nowait(Queued(_preview(item.text)))

    async def wait_settled(self, timeout: float) -> bool:
        """Wait (bounded) until everything typed was sent and accounted for: after a
        reconnect if need be. Anything still unsent at the deadline is reported."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._outbox and not self.closed and loop.time() < deadline:
            self._outbox_changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._outbox_changed.wait(), deadline - loop.time())
        if self._outbox:
            self._give_up_outbox()
            return False
        if not self.online:
            return True
        return await self.connection.wait_settled(max(0.0, deadline - loop.time()))

    async def close(self) -> None:
        self.closed = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        await self.connection.close()
        # Events of the last connection (its final reports) go to our queue too.
        while not self.connection.events.empty():
            event = self.connection.events.get_nowait()
            if not isinstance(event, Disconnected):
                self.events.put_nowait(event)


def _preview(text: str) -> str:
    return text if len(text) <= 40 else text[:39] + "…"
