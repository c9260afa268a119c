"""The client's asyncio shell around ``ClientCore``: connect, register, move bytes, and
keep the connection alive.

``Connection`` is one connection: events from the core land in ``Connection.events``,
and a final ``Disconnected`` says why it ended. Nothing here decides anything about the
protocol. (Reconnecting is reconnect.py's.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from dataclasses import dataclass

from nacl.public import PrivateKey

from e2echat.client_core import ClientCore
from e2echat.delivery import RECEIPT_TIMEOUT
from e2echat.errors import (
    E2EChatError,
    RegistrationRefused,
    RelayGone,
    RelayUnreachable,
)
from e2echat.events import Event, Registered, RegistrationFailed, RelayClosing
from e2echat.keys import new_session_key
from e2echat.trust import KnownPeers

log = logging.getLogger("e2echat.client")

# How long connecting and registering may take before we give up on the relay.
CONNECT_TIMEOUT = 10.0
# After this long without a byte from the relay we ping it; after twice this long the
# connection is dead (a relay that vanished without a FIN: power cut, cable, NAT).
KEEPALIVE = 20.0
# How often the connection looks at its clocks (receipts held back, overdue, keepalive).
TICK = 0.2
_READ_CHUNK = 64 * 1024
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
        self._sent_at = self._heard_at = 0.0  # loop time; set for real once connected
        self._dead = ""

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
        self._sent_at = self._heard_at = asyncio.get_running_loop().time()
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
            except E2EChatError as exc:
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
        try:
            while True:
                data = await self._read(reader)
                self._heard_at = asyncio.get_running_loop().time()
                if not data:
                    break
                try:
                    events = self.core.receive_data(data)
                except E2EChatError as exc:
                    detail = f"it broke the protocol ({exc})"
                    break
                self._flush()
                for event in events:
                    if isinstance(event, RelayClosing):
                        self._relay_closing = True
                self._publish(events)
        finally:
            if not detail:
                detail = self._dead or ("it shut down" if self._relay_closing else "it closed the connection")
            for event in self.core.abandon(_LOST):
                self.events.put_nowait(event)
            self._close_transport()
            self.events.put_nowait(Disconnected(detail))

    async def _tick_loop(self) -> None:
        # A few times a second: send receipts that were held back, report messages whose
        # receipts are overdue, and keep the connection alive. We ping when we have sent
        # nothing for a while (the relay drops connections it hears nothing from, however
        # much it sends them), and give up when the relay has said nothing for twice that.
        loop = asyncio.get_running_loop()
        interval = min(TICK, self.keepalive / 4)
        while not self.closed:
            await asyncio.sleep(interval)
            now = loop.time()
            try:
                self._publish(self.core.tick())
                if now - self._sent_at >= self.keepalive:
                    self.core.ping()
                self._flush()
            except E2EChatError as exc:  # a bug or a broken state: end this connection, loudly
                self._dead = f"it could not go on ({exc})"
            if not self._dead and now - self._heard_at >= 2 * self.keepalive + interval:
                self._dead = f"no answer from it for {2 * self.keepalive:g}s"
            if self._dead and self._writer is not None:
                self._writer.transport.abort()  # the read loop ends and reports it
                return

    def _publish(self, events: list[Event]) -> None:
        for event in events:
            self.events.put_nowait(event)
        if self.core.settled:
            self._settled.set()

    def _flush(self) -> None:
        data = self.core.data_to_send()
        if data and self._writer is not None and not self._writer.is_closing():
            self._writer.write(data)
            self._sent_at = asyncio.get_running_loop().time()

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
        if not self.closed:
            with contextlib.suppress(E2EChatError):
                self.core.flush_receipts()  # what we read is confirmed before we go
                self._flush()
        self._close_transport()
        for task in (self._reader_task, self._ticker_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._writer is not None:
            with contextlib.suppress(ConnectionError, OSError, TimeoutError):
                await asyncio.wait_for(self._writer.wait_closed(), 2)
