"""A chat that survives the relay going away.

``Client`` has the interface of one ``Connection`` but keeps going across connections.
It owns the one queue its events reach the UI on: each connection it makes publishes
into it directly. When the relay goes, it says so, reconnects with capped backoff,
registers again with a fresh session key (so new sessions with everyone), and holds what
is typed meanwhile until it can be sent, or reports it as not sent.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from nacl.public import PrivateKey, PublicKey

from e2echat.client.connection import CONNECT_TIMEOUT, Connection
from e2echat.client.core import ClientCore
from e2echat.client.events import (
    ClientEvent,
    ConnectionLost,
    Disconnected,
    NotSent,
    PeerJoined,
    Queued,
    Reconnecting,
    Registered,
)
from e2echat.client.relays import RelayTrust
from e2echat.client.trust import KnownPeers
from e2echat.errors import (
    CommandError,
    E2EChatError,
    RegistrationRefused,
    RelayGone,
    RelayUnreachable,
    UntrustedRelayKey,
)

# After a reconnect, how long a queued message may wait for its recipients to be back.
OUTBOX_GRACE = 5.0


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
        relay_trust: RelayTrust | None = None,
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
        # Which relay key to answer; after the first connection, that connection's key
        # and no other: a relay that comes back with another key is not answered.
        self._relay_trust = relay_trust
        self._connection_options = connection_options
        #: the one queue from every connection's core to the UI
        self.events: asyncio.Queue[ClientEvent] = asyncio.Queue()
        self.connection = self._make()
        self._outbox: list[_Outgoing] = []
        self._outbox_changed = asyncio.Event()
        self._online = asyncio.Event()
        self._lost = asyncio.Event()  # the current connection has ended
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
            relay_trust=self._relay_trust,
            publish=self._publish,
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

    @property
    def relay_key(self) -> PublicKey | None:
        """The relay's key, once a connection accepted it (to pin)."""
        return self.connection.core.relay_key

    async def open(self, timeout: float = CONNECT_TIMEOUT) -> Registered:
        """The first connection: its failures are the caller's to report."""
        registered = await self.connection.open(timeout)
        self._relay_trust = RelayTrust(pinned=self.relay_key)
        if not self.connection.closed:  # else it is lost already, and the supervisor knows
            self._online.set()
        self._supervisor = asyncio.create_task(self._supervise(), name="e2echat-client")
        return registered

    def _publish(self, event: ClientEvent) -> None:
        """A connection's event, on its way into the one queue. Called in the same turn
        of the event loop as the connection read it: no task or queue in between."""
        if isinstance(event, Disconnected):  # the connection's end, not the chat's
            self._online.clear()
            if not self.closed:
                self.events.put_nowait(ConnectionLost(event.detail))
            self._lost.set()
            return
        self.events.put_nowait(event)
        if self._outbox and isinstance(event, PeerJoined):
            self._send_outbox(final=False)

    async def _supervise(self) -> None:
        while True:
            await self._lost.wait()
            self._lost.clear()
            if self.closed:
                return
            connection = await self._reconnect()
            if connection is None:
                return
            # Its "connected" and key-change events are queued already, before the outbox.
            self.connection = connection
            if connection.closed:
                continue  # lost again already: it said so; try anew
            self._online.set()
            # Others are reconnecting too: what cannot go out yet (nobody back, or not the
            # recipient) waits for them to join, for a grace period, before it is reported.
            self._send_outbox(final=False)
            if self._outbox:
                loop = asyncio.get_running_loop()
                loop.call_later(OUTBOX_GRACE, self._send_outbox, True)

    async def _reconnect(self) -> Connection | None:
        why = ""
        for attempt, delay in enumerate(self.backoff.delays(), start=1):
            self.events.put_nowait(Reconnecting(delay, attempt, why))
            await asyncio.sleep(delay)  # backoff between attempts, not a wait for an event
            connection = self._make()
            try:
                await connection.open()
                return connection
            except UntrustedRelayKey as exc:
                # Perhaps an impostor took the relay's place: it got nothing, and we do not
                # knock again. Only the user can decide that the new key is the relay's.
                self.closed = True
                self.events.put_nowait(
                    Disconnected(
                        f"it came back with another key ({exc.offered}): "
                        "it may be an impostor, and nothing was sent to it; reconnect by hand to review it"
                    )
                )
                self._give_up_outbox()
                return None
            except RegistrationRefused as exc:
                if exc.code in ("bad_password", "password_required"):
                    self.closed = True  # trying again cannot help
                    self.events.put_nowait(Disconnected(f"it refused us: {exc.detail}"))
                    self._give_up_outbox()
                    return None
                # Most likely "nick_taken": the relay has not yet noticed our old connection
                # is gone (it will, by its idle timeout at the latest).
                why = f"it refused us: {exc.detail}"
            except RelayUnreachable:
                why = "the relay is not back yet"
            except RelayGone as exc:
                why = f"the relay broke off: {exc.detail}"
            except E2EChatError as exc:  # whatever else a broken relay causes: try again
                why = str(exc)
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
        await self.connection.close()  # its final reports reach the queue on their own


def _preview(text: str) -> str:
    return text if len(text) <= 40 else text[:39] + "…"
