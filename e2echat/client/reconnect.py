"""A chat that survives the relay going away.

``Client`` has the interface of one ``Connection`` but keeps going across connections.
It owns the one queue its events reach the UI on: each connection it makes publishes
into it directly. When the relay goes, it says so, reconnects with capped backoff,
registers again with a fresh session key (the sessions with everyone, in the keyring,
go on), and holds what is typed meanwhile until it can be sent, or reports it as not
sent (held.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import nacl.utils
from nacl.public import PrivateKey, PublicKey

from e2echat.client.connection import CONNECT_TIMEOUT, Connection
from e2echat.client.core import ClientCore, ClientState
from e2echat.client.events import (
    ClientEvent,
    ConnectionLost,
    DeliveryReport,
    Disconnected,
    MessageQueued,
    PeerJoined,
    Reconnecting,
    Registered,
    SendReport,
)
from e2echat.client.held import NOT_BACK, HeldLines
from e2echat.client.memberships import LastMembers
from e2echat.client.pending import PendingDeliveries
from e2echat.client.relays import RelayTrust
from e2echat.client.trust import KnownPeers
from e2echat.crypto.keyring import Keyring
from e2echat.errors import (
    CommandError,
    E2EChatError,
    RegistrationRefused,
    RelayGone,
    RelayUnreachable,
    UntrustedRelayKey,
)
from e2echat.wire.grammar import DEFAULT_ROOM

# After a reconnect, how long a line typed during the outage waits for the people it is
# meant for to be back too: after a relay restart everyone reconnects, each on their own
# backoff, and the first attempts are about 1, 2 and 4 s apart.
OUTBOX_GRACE = 5.0
# Why whoever a held line never went to did not get it.
GAVE_UP = "not sent: no connection to the relay"
TURNED_AWAY = "not sent: the relay turned us away"
NOT_TO_IMPOSTOR = "not sent: the relay came back with another key"


@dataclass(frozen=True)
class Backoff:
    """Capped exponential backoff with jitter: about first, 2 × first, 4 × first, ... up
    to ``cap`` seconds, each drawn from ``1 ± jitter`` times that (two significant
    digits). After a relay restart every client reconnects at once: spread out, ten
    thousand come back over seconds rather than in one instant the relay must queue."""

    first: float = 1.0
    cap: float = 30.0
    jitter: float = 0.5

    def delays(self) -> Iterator[float]:
        delay = self.first
        while True:
            spread = 1.0 + self.jitter * (2.0 * _fraction() - 1.0)
            yield float(f"{delay * spread:.2g}")
            delay = min(self.cap, delay * 2)


def _fraction() -> float:
    """A number in [0, 1), from libsodium's randomness (as all of ours is)."""
    return int.from_bytes(nacl.utils.random(4), "big") / 2**32


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
        grace: float = OUTBOX_GRACE,
        keyring: Keyring | None = None,
        pending: PendingDeliveries | None = None,
        rooms: tuple[str, ...] = (DEFAULT_ROOM,),
        last_members: LastMembers | None = None,
        fallbacks: Sequence[tuple[str, int]] = (),
        **connection_options: Any,
    ) -> None:
        """``fallbacks``: more (host, port) of relays of one cluster, tried in order after
        ``host`` and ``port`` whenever the relay in use cannot be reached. They must show
        the key of the relay first connected to: a cluster has one key."""
        self.host = host
        self.port = port
        #: every relay to try, in order; the one in use is ``host``:``port``
        self.relays = [(host, port), *((h, p) for h, p in fallbacks if (h, p) != (host, port))]
        self.nick = nick
        self.backoff = backoff
        self.grace = grace
        self._identity = identity
        # One set of pins for every connection: a reconnect must not forget who was pinned.
        self._known_peers = known_peers if known_peers is not None else KnownPeers()
        # One keyring too: every connection goes on with the same sessions.
        self.keyring = keyring if keyring is not None else Keyring.fresh(nick, identity, time.time())
        self._password = password
        # Which relay key to answer; after the first connection, that connection's key
        # and no other: a relay that comes back with another key is not answered.
        self._relay_trust = relay_trust
        self._connection_options = connection_options
        #: the one queue from every connection's core to the UI
        self.events: asyncio.Queue[ClientEvent] = asyncio.Queue()
        # And one record of our messages waiting in mailboxes, with one numbering for
        # every connection's messages and the lines held between them: a report's id
        # names one message, whichever connection (or run) it went on.
        self.pending = pending if pending is not None else PendingDeliveries()
        self._message_ids = self.pending.ids
        #: the rooms we are in, sent with every registration (``join`` and ``part`` change it)
        self.rooms = list(rooms)
        # And each room's members as last seen: what changed while we were away, between
        # two connections (or runs), is said when the first list of each room comes.
        self.last_members = last_members if last_members is not None else LastMembers()
        # Rooms left while no connection was up: their mail, kept for us before the
        # relay heard of it, is dropped quietly by the next connection.
        self._parted_offline: set[str] = set()
        self.connection = self._make()
        self._held = HeldLines()
        self._held_changed = asyncio.Event()
        self._grace: asyncio.TimerHandle | None = None
        self._online = asyncio.Event()
        self._lost = asyncio.Event()  # the current connection has ended
        self._supervisor: asyncio.Task[None] | None = None
        self._retry_now = asyncio.Event()  # /reconnect: the next attempt waits no longer
        # The away message the user set (/away), said again on each new connection: a
        # dropped connection must not make them "here". A new process starts "here".
        self._away = ""
        self.closed = False

    def _make(self) -> Connection:
        # The rooms its registration names: a join or part typed while it registers goes
        # to the connection before it (the current one until then), and is made up for
        # once it is up (``_rooms_since``).
        self._registered_rooms = tuple(self.rooms)
        return Connection(
            self.host,
            self.port,
            self.nick,
            self._identity,
            self._known_peers,
            password=self._password,
            relay_trust=self._relay_trust,
            publish=self._publish,
            message_ids=self._message_ids,
            keyring=self.keyring,
            pending=self.pending,
            rooms=tuple(self.rooms),
            last_members=self.last_members,
            parted=tuple(self._parted_offline),
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
        """Connected, and the relay has not said goodbye (what is typed after its goodbye
        waits for the next connection)."""
        return self._online.is_set() and self.core.state is ClientState.ONLINE

    @property
    def relay_key(self) -> PublicKey | None:
        """The relay's key, once a connection accepted it (to pin)."""
        return self.connection.core.relay_key

    async def open(self, timeout: float = CONNECT_TIMEOUT) -> Registered:
        """The first connection, to the first relay that can be reached: the failure of
        the last one tried is the caller's to report."""
        for host, port in self.relays[1:]:
            try:
                registered = await self.connection.open(timeout)
                break
            except (RelayUnreachable, RelayGone):
                self.host, self.port = host, port
                self.connection = self._make()
        else:
            registered = await self.connection.open(timeout)  # the last one (or only one)
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
            if self._grace is not None:
                self._grace.cancel()  # the next connection gives its own
            if not self.closed:
                self.events.put_nowait(ConnectionLost(event.detail))
            self._lost.set()
            return
        if isinstance(event, SendReport | DeliveryReport | MessageQueued):
            folded = self._held.settle(event)
            if folded is not None:  # a report on part of a held line
                self._put(folded)
                return
        self.events.put_nowait(event)
        if isinstance(event, PeerJoined) and self._held.waiting:
            self._release(final=False)

    def _put(self, events: list[ClientEvent]) -> None:
        for event in events:
            self.events.put_nowait(event)
        self._held_changed.set()

    async def _supervise(self) -> None:
        while True:
            await self._lost.wait()
            self._lost.clear()
            if self.closed:
                return
            connection = await self._reconnect()
            self._retry_now.clear()  # a /reconnect typed during the attempt is spent with it
            if connection is None:
                return
            # Its "connected" and key-change events are queued already, before the outbox.
            self.connection = connection
            if connection.closed:
                continue  # lost again already: it said so; try anew
            self._rooms_since(connection)
            self._online.set()
            if self._away:  # (before the held lines: one of those would say we are back)
                connection.set_away(self._away)
            # Others are reconnecting too: whoever a held line is meant for who is not back
            # yet gets it when they join, within a grace period; then it is reported.
            self._release(final=False)
            if self._held.waiting:
                self._grace = asyncio.get_running_loop().call_later(self.grace, self._release, True)

    async def _reconnect(self) -> Connection | None:
        why = ""
        for attempt, delay in enumerate(self.backoff.delays(), start=1):
            self.events.put_nowait(Reconnecting(delay, attempt, why))
            # The backoff between attempts, unless the user says to try now (/reconnect).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._retry_now.wait(), delay)
            self._retry_now.clear()
            # From the relay in use on, each relay in turn, at once: a cluster's other
            # relays take its clients when it goes.
            start = self.relays.index((self.host, self.port))
            for step in range(len(self.relays)):
                self.host, self.port = self.relays[(start + step) % len(self.relays)]
                connection, why = await self._attempt()
                if connection is not None or self.closed:
                    return connection
        raise AssertionError("unreachable: the backoff never ends")

    def _rooms_since(self, connection: Connection) -> None:
        """Join and part at the relay what the user joined and parted while ``connection``
        registered (it named the rooms of before)."""
        registered = self._registered_rooms
        for room in self.rooms:
            if room not in registered:
                connection.join(room)
        for room in registered:
            if room not in self.rooms:
                connection.part(room)
        self._parted_offline.clear()  # the relay knows now

    async def _attempt(self) -> tuple[Connection | None, str]:
        """One connection to ``host``:``port``: made, or why not (``closed`` if trying
        again cannot help)."""
        connection = self._make()
        why = ""
        try:
            await connection.open()
            return connection, why
        except UntrustedRelayKey as exc:
            # Perhaps an impostor took the relay's place: it got nothing, and we do not
            # knock again. Only the user can decide that the new key is the relay's.
            self.closed = True
            self._put(self._held.give_up(NOT_TO_IMPOSTOR))
            self.events.put_nowait(
                Disconnected(
                    f"it came back with another key ({exc.offered}): "
                    "it may be an impostor, and nothing was sent to it; reconnect by hand to review it"
                )
            )
            return None, why
        except RegistrationRefused as exc:
            if exc.code in ("bad_password", "password_required", "nick_reserved"):
                self.closed = True  # trying again cannot help
                self._put(self._held.give_up(TURNED_AWAY))
                self.events.put_nowait(Disconnected(f"it refused us: {exc.detail}"))
                return None, why
            # Most likely "nick_taken": the relay has not yet noticed our old connection
            # is gone (it will, by its idle timeout at the latest).
            why = f"it refused us: {exc.detail}"
        except RelayUnreachable:
            why = "the relay is not back yet"
        except RelayGone as exc:
            why = f"the relay broke off: {exc.detail}"
        except E2EChatError as exc:  # whatever else a broken relay causes: try again
            why = str(exc)
        return None, why

    def _release(self, final: bool) -> None:
        if self.online:  # else the next reconnect tries anew
            core = self.connection.core
            held = self._held.release(
                self.connection, core.peers, final=final, away=core.away, members=_members(core)
            )
            self._put(held)

    # -- what the UI calls ----------------------------------------------------------------------

    def send_room(self, room: str, text: str) -> int:
        """Send ``text`` to ``room``; while the relay is away, hold it for the room as we
        last saw it. Returns the id its report will come under."""
        if self.online:
            return self.connection.send_room(room, text)
        return self._hold(None, text, room)

    def join(self, room: str) -> None:
        """Join ``room`` now (or with the next connection, while the relay is away)."""
        if room not in self.rooms:
            self.rooms.append(room)
        self._parted_offline.discard(room)
        self.connection.join(room)

    def part(self, room: str) -> None:
        if room in self.rooms:
            self.rooms.remove(room)
        if not self.online:
            self._parted_offline.add(room)
        self.connection.part(room)

    def send_private(self, nick: str, text: str) -> int:
        if self.online:
            return self.connection.send_private(nick, text)
        return self._hold(nick, text)

    def set_away(self, message: str) -> None:
        """See ``Connection.set_away``: only while online. It is said again on each new
        connection, until the user says they are back (or types a line)."""
        if not self.online:
            raise CommandError(detail="not connected to the relay right now: /away once it is back")
        self.connection.set_away(message)
        self._away = self.core.our_away

    def send_file_part(self, nick: str, part: bytes, *, to_mailbox: bool = False) -> bool:
        """See ``Connection.send_file_part``: False while the relay is away."""
        return self.connection.send_file_part(nick, part, to_mailbox=to_mailbox) if self.online else False

    def file_budget(self) -> int:
        return self.connection.file_budget() if self.online else 0

    def acknowledge_mail(self, seq: int) -> None:
        """See ``Connection.acknowledge_mail`` (a ``MailboxRead`` of an earlier connection
        is ignored: its items come again)."""
        self.connection.acknowledge_mail(seq)

    def _hold(self, recipient: str | None, text: str, room: str = DEFAULT_ROOM) -> int:
        if self.closed:
            raise CommandError(detail="not connected to the relay; the message was not sent")
        message_id = next(self._message_ids)
        self._away = ""  # a line typed: back (it goes out once the relay is, as the UI's would)
        core = self.connection.core
        if recipient is None:
            members = _members(core)(room)
            online = [nick for nick in core.peers if nick in members]
            held = self._held.hold(message_id, None, text, online, core.away_in(room), room=room)
        else:
            held = self._held.hold(message_id, recipient, text, core.peers, core.away)
        self._put([held])
        return message_id

    async def wait_sendable(self) -> None:
        """Wait until nothing is held back for the relay's rate (see Connection)."""
        if self.online:
            await self.connection.wait_sendable()

    async def wait_settled(self, timeout: float) -> bool:
        """Wait (bounded) until everything typed was sent and accounted for: after a
        reconnect if need be. False if the time ran out (see ``give_up``)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._held.waiting and not self.closed and loop.time() < deadline:
            self._held_changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._held_changed.wait(), deadline - loop.time())
        if self._held.waiting:
            return False
        # The connection, not ``online``: after the relay's goodbye the connection still
        # tracks what it sent until it closes (its end reports what is left).
        if self.connection.closed:
            return True
        return await self.connection.wait_settled(max(0.0, deadline - loop.time()))

    def waiting_for(self) -> list[tuple[str, list[str]]]:
        """What leaving would wait for: lines held (not sent yet) and messages sent but not
        accounted for, each as (its preview, whom it waits for)."""
        return self._held.waiting_for() + self.core.deliveries.waiting_for()

    def reconnect_now(self) -> bool:
        """While the relay is away (or saying goodbye): the next attempt to reach it is made
        now, not when the backoff says. False if none will be: given up for good."""
        if self.closed:
            return False
        self._retry_now.set()  # (cleared once an attempt succeeds: it counts for one outage)
        return True

    def give_up(self, reason: str) -> None:
        """Stop waiting: whatever is not yet accounted for is reported now, for ``reason``
        (held lines not yet sent: as not sent)."""
        if not self.connection.closed:  # online, or told goodbye but not yet hung up on
            self.connection.give_up(reason)  # its reports reach us through _publish
        self._put(self._held.give_up(NOT_BACK if self.online else GAVE_UP))

    async def close(self) -> None:
        self.closed = True
        if self._grace is not None:
            self._grace.cancel()
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        await self.connection.close()  # its final reports reach the queue on their own


def _members(core: ClientCore) -> Callable[[str], set[str]]:
    """Who is in a room of ours, by ``core``'s lists (nobody, for a room we are not in)."""

    def members(room: str) -> set[str]:
        joined = core.room(room)
        return set() if joined is None else set(joined.others)

    return members
