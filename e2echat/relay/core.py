"""The relay's directory, routing and policy, without any I/O.

The shell tells ``RelayCore`` what happens to its connections: ``connect``, the bytes each
one sends (``receive_data``), ``disconnect``, time passing (``tick``) and ``shutdown``,
each with the time it happened; and what it sees of their write buffers: one past the
soft mark (``paused``) or drained (``resumed``), and each time it has written everything
it was given (``flushed``). The core answers with two kinds of action: ``Write`` (whole
frames, already encoded, for the shell to write) and ``Close`` (hang up). Framing,
decoding, the rate limits and the timeouts are decided here; the shell only moves bytes.
Where a send's copies go, and mailbox items to their owners, a ``Router`` decides
(relay/routing.py); what a connection is owed beyond what it may be given at once (a
newcomer's welcome and member lists, a join's answer) is handed over as it drains
(relay/paging.py).

The core never sees a message key: a ``send``'s ciphertext bodies are copied unopened
into the ``deliver`` frames (or kept so in mailboxes). What it keeps beyond its connections (known
identities, their prekey bundles, room memberships, the mailboxes of those away:
``Kept``) it describes change by change as ops, in ``Persist`` actions: the shell has a
store keep them before it writes the frames that go with them. It is built from what a
store kept (a ``Snapshot``).
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import nacl.utils
from nacl.public import PrivateKey

from e2echat.errors import FrameTooLarge, RemoteProtocolError
from e2echat.relay.actions import Action, Close, ConnId, Persist, Write, keep
from e2echat.relay.intake import read_frame, refusal
from e2echat.relay.kept import Kept
from e2echat.relay.limits import Backlog, Flow, Limits, Sources, Unfinished, Verdict
from e2echat.relay.paging import Paging
from e2echat.relay.prekeys import PrekeyDirectory
from e2echat.relay.presence import Presence
from e2echat.relay.registration import admit, reserved, welcome_frames
from e2echat.relay.routing import Router
from e2echat.relay.store import Op, Snapshot
from e2echat.wire.codec import decode_message, encode_message, printable_reason
from e2echat.wire.fastpath import Routes
from e2echat.wire.framing import FrameDecoder, encode_frame
from e2echat.wire.grammar import CHALLENGE_SIZE, RELAY_ID_SIZE, skeleton
from e2echat.wire.messages import (
    Ack,
    Bye,
    Challenge,
    Error,
    Fetch,
    Join,
    Message,
    Part,
    Ping,
    Pong,
    Prekeys,
    Publish,
    Register,
)
from e2echat.wire.objects import PeerInfo

# The actions are the core's answers: its users take them from here.
__all__ = ["Action", "Close", "ConnId", "Persist", "RelayCore", "Write"]

log = logging.getLogger("e2echat.relay.core")


def _frame(message: Message) -> bytes:
    return encode_frame(encode_message(message))


def _write(conn: ConnId, message: Message) -> Write:
    return Write([(conn, _frame(message))])


_PONG = _frame(Pong())


@dataclass(slots=True, eq=False)
class _Connection:
    # Slots: one of these per connection, and 10,000 idle clients must stay small.
    conn: ConnId
    decoder: FrameDecoder
    #: when the connection opened, until it registers; from then on, when its last whole
    #: frame came (a trickle of bytes is not a sign of life)
    since: float
    #: the address it counts against (see ``Sources``); one string shared by its connections
    address: str
    # This connection's challenge, which makes its proofs good for it alone; dropped once
    # registration succeeds.
    challenge: bytes
    peer: PeerInfo | None = None
    flow: Flow | None = None
    #: when a rooms limit it hit was last logged (at most once per ``warn_interval``)
    rooms_logged: float = -math.inf


class RelayCore:
    def __init__(
        self,
        limits: Limits | None = None,
        *,
        password: bytes | None = None,
        key: PrivateKey | None = None,
        snapshot: Snapshot | None = None,
        wall: float = 0.0,
        now: float = 0.0,
    ) -> None:
        """``snapshot``: what a store kept; ``wall``: the Unix time when the shell's clock
        (the ``now`` of each call, monotonic) reads 0, and ``now`` that clock now. What
        is kept carries Unix times.

        Mailbox seqs start at the Unix time now in microseconds, and above any the store
        has seen: a seq must never be used again, even for a mailbox that has drained,
        and whether or not the relay kept anything."""
        self.limits = limits or Limits()
        #: the rates each welcome advertises (floats, as the wire has them)
        self._advertised = {
            name: float(getattr(self.limits, name))
            for name in ("rate", "burst", "byte_rate", "byte_burst", "mailbox_ttl")
        }
        #: if set, clients must put it in their registration proof
        self.password = password
        #: the relay's long-term key: clients pin its public half, and only its private half
        #: opens their registration proofs (and the password inside). None: a new one, for
        #: a relay that lives in memory only (tests, benchmarks)
        self.key = key if key is not None else PrivateKey.generate()
        self._connections: dict[ConnId, _Connection] = {}
        #: connections hung up on whose sockets the shell has not yet reported gone (by
        #: ``disconnect``): they still hold a slot of ``max_connections``
        self._closing: set[ConnId] = set()
        #: nick -> connection, for everyone registered
        self.online: dict[str, ConnId] = {}
        #: nick skeleton -> the nick online that has it (see ``grammar.skeleton``)
        self._skeletons: dict[str, str] = {}
        #: known identities, their bundles, room memberships and mailboxes
        self.kept = Kept(self.limits, snapshot, first_seq=int((wall + now) * 1_000_000))
        #: names these mailboxes in each welcome: the store's, or new (kept in memory only)
        self.relay_id = (
            snapshot.relay_id if snapshot and snapshot.relay_id else nacl.utils.random(RELAY_ID_SIZE)
        )
        self._wall = wall
        #: the latest time the shell has given, for changes it gives none with (a disconnect)
        self._now = now
        self._swept = -math.inf
        self._sources = self._new_sources()
        self._unfinished = Unfinished()
        self._backlog = Backlog()
        #: what connections are owed beyond what they may be given at once
        self._paging = Paging(self.limits, self._backlog)
        #: where a send's copies go, and mailbox items to their owners
        self._router = self._new_router()
        #: who hears of whom: presence and member lists
        self._presence = self._new_presence()

    @property
    def prekeys(self) -> PrekeyDirectory:
        """Nick -> its owner's prekey bundle, from its register on; kept when it leaves."""
        return self.kept.prekeys

    def is_registered(self, conn: ConnId) -> bool:
        record = self._connections.get(conn)
        return record is not None and record.peer is not None

    def nick_of(self, conn: ConnId) -> str | None:
        record = self._connections.get(conn)
        return record.peer.nick if record and record.peer else None

    # -- what the shell tells the core ---------------------------------------------------------

    def connect(self, conn: ConnId, now: float, address: str = "") -> list[Action]:
        """A new connection from ``address`` (as ``address_key`` in limits gives it; one for
        all connections that give none): challenge it, or turn it away if the relay is
        full or its address has too many connections or opens them too fast."""
        limits = self.limits
        self._now = now
        if len(self._connections) + len(self._closing) >= limits.max_connections:
            log.warning("connection #%d refused: the relay is full", conn)
            full = Error("busy", f"the relay is full ({limits.max_connections} connections)")
            return [_write(conn, full), Close(conn, "the relay is full")]
        address = sys.intern(address)  # one string per address, not one per connection
        refused = self._sources.open(limits, address, now)
        if refused is not None:
            log.warning("connection #%d from %s refused: %s", conn, address, refused)
            return [_write(conn, Error("busy", f"{refused}; try again later")), Close(conn, refused)]
        challenge = nacl.utils.random(CHALLENGE_SIZE)
        # Until it has registered, a connection may send only small frames.
        decoder = FrameDecoder(max_frame=min(limits.max_frame, limits.handshake_frame))
        self._connections[conn] = _Connection(conn, decoder, now, address, challenge)
        return [_write(conn, Challenge(self.key.public_key, challenge, self.password is not None))]

    def receive_data(self, conn: ConnId, data: bytes, now: float) -> list[Action]:
        """Bytes that ``conn`` sent, in any split: cut into frames, decode and handle them."""
        record = self._connections.get(conn)
        if record is None:
            return []  # refused, or hung up on: what it says no longer matters
        self._now = now
        actions: list[Action] = []
        try:
            frames = record.decoder.receive_data(data)
            for frame in frames:
                flow = record.flow
                if flow is None:  # not registered yet: frames of a few KiB, decoded strictly
                    handled = self._handshake(record, decode_message(frame), now)
                else:
                    handled = self._admit(record, flow, frame, now)
                # Each frame's answers behind what the connection is owed, and what it may
                # be given of that first (a register's welcome, a join's list).
                handled = self._behind(handled)
                if conn in self._paging:
                    handled[:0] = self._release(conn)
                actions += handled
                if conn not in self._connections:
                    return actions
        except FrameTooLarge as exc:
            log.warning("connection #%d: %s", conn, exc)
            return actions + self._behind(self._refuse(record, "too_large", str(exc)))
        except RemoteProtocolError as exc:
            log.info("connection #%d: %s", conn, exc)
            return actions + self._behind(self._refuse(record, "protocol", str(exc)))
        if frames and record.peer is not None:
            record.since = now
        held = record.decoder.buffered
        if held or conn in self._unfinished:  # the usual read ends on a frame boundary
            self._unfinished.hold(conn, held, restart=bool(frames))
            actions += self._behind(self._over_budget())
        return actions

    def paused(self, conn: ConnId, now: float) -> None:
        """More than ``limits.write_buffer_soft`` waits to be written to ``conn``: deliver
        nothing more to it (the senders are told) until ``resumed``; hang up on it if that
        lasts ``stall_timeout``."""
        if conn in self._connections:
            self._backlog.stalled.setdefault(conn, now)

    def resumed(self, conn: ConnId) -> list[Action]:
        """What waited for ``conn`` has drained (below a quarter of the soft mark): the
        next window of what it is owed, if anything."""
        self._backlog.stalled.pop(conn, None)
        return self._release(conn) if conn in self._paging else []

    def flushed(self) -> list[Action]:
        """The shell has handed the transports every frame the core gave it: what is
        queued for each connection shows in their write buffers (``paused``) from now on.
        The next window of what each connection owed something and not past its soft
        mark is owed (it has drained since the last: the shell writes it next turn)."""
        self._backlog.unflushed.clear()
        actions: list[Action] = []
        for conn in self._paging.conns():
            actions += self._release(conn)
        return actions

    def disconnect(self, conn: ConnId) -> list[Action]:
        """The connection is gone (the peer hung up, or the socket we closed is closed):
        take it out of the directory and tell the others; nothing if that is done already."""
        self._closing.discard(conn)
        return self._behind(self._forget(conn))

    def tick(self, now: float, wall: float | None = None) -> list[Action]:
        """Hang up on connections that did not register in time, on silent ones, and on
        ones that have stopped reading; every few seconds, drop what is kept past its time
        to live. ``wall``: the Unix time now, if the shell's clock has drifted from it."""
        limits = self.limits
        self._now = now
        if wall is not None:
            self._wall = wall - now
        actions: list[Action] = []
        if now - self._swept >= limits.sweep_interval:
            self._swept = now
            ops = self.kept.sweep(self._unix(), self.online)
            actions += keep(ops, self._router.notify(), now=self._presence.forgotten())
        for record in list(self._connections.values()):
            if record.peer is not None:
                if now - record.since > limits.idle_timeout:
                    actions += self._refuse(record, "idle", f"nothing heard for {limits.idle_timeout:g}s")
            elif now - record.since > limits.handshake_timeout:
                actions += self._refuse(record, "timeout", "registration took too long")
        for conn in self._backlog.overdue(limits, now):
            log.warning("connection #%d: not reading for %gs", conn, limits.stall_timeout)
            actions += self._hang_up(self._connections[conn], "it is not reading")
        self._sources.sweep(limits, now)
        return self._behind(actions)

    def shutdown(self, reason: str) -> list[Action]:
        """Say goodbye to everyone (one frame, written to each) and hang up on them."""
        conns = list(self._connections)
        if not conns:
            return []
        bye = _frame(Bye(reason))
        ops: list[Op] = []
        for nick in self.online:
            # Not a real leave: everyone goes at once, and comes back with the relay.
            ops += self.kept.leave(nick, self._unix(), evict=False)
        actions = keep(ops, [])
        actions.append(Write([(conn, bye) for conn in conns]))
        actions += [Close(conn, "relay shutting down") for conn in conns]
        self._closing.update(conns)
        for collection in (self._connections, self.online, self._skeletons):
            collection.clear()
        self._presence.clear()
        self._paging.clear()
        self._backlog.stalled.clear()
        self._backlog.unflushed.clear()
        self._sources, self._unfinished = self._new_sources(), Unfinished()
        self._router = self._new_router()
        return actions

    # -- deciding ------------------------------------------------------------------------------

    def _handshake(self, record: _Connection, message: Message, now: float) -> list[Action]:
        if isinstance(message, Register):
            return self._register(record, message, now)
        if isinstance(message, Error):
            return self._hang_up(record, f"client reported error {message.code}")
        return self._refuse(record, "not_registered", "register before sending anything else")

    def _handle(self, record: _Connection, message: Message | Routes) -> list[Action]:
        if isinstance(message, Routes):
            return self._route(record, message)
        if isinstance(message, Fetch):
            return self._fetch(record, message)
        if isinstance(message, Publish):
            return self._publish(record, message)
        if isinstance(message, Ping):
            return [Write([(record.conn, _PONG)])]
        if isinstance(message, Ack):
            return self._ack(record, message)
        if isinstance(message, Join):
            return self._join(record, message)
        if isinstance(message, Part):
            return self._part(record, message)
        if isinstance(message, Pong):
            return []
        if isinstance(message, Error):
            return self._hang_up(record, f"client reported error {message.code}")
        return self._refuse(record, "protocol", f"unexpected {type(message).TYPE!r} message")

    def _admit(self, record: _Connection, flow: Flow, frame: bytes, now: float) -> list[Action]:
        """A registered sender's frame: charged to its rate, and handled if it pays (see
        ``intake``); if not, the sender is told which recipients it did not reach."""
        read = read_frame(flow, self.limits, frame, now)
        if not isinstance(read, Verdict):
            return self._handle(record, read)
        return self._over_rate(record, read, refusal(frame, read, self.limits))

    def _over_rate(self, record: _Connection, verdict: Verdict, answers: list[bytes]) -> list[Action]:
        """A frame of ``record``'s refused for its rate (``verdict``): hang up if it kept
        flooding after being told; else ``answers`` (a WARN's says it is over the rate,
        at most once a second)."""
        conn, limits = record.conn, self.limits
        if verdict is Verdict.DISCONNECT:
            log.warning("connection #%d: disconnected for flooding", conn)
            return self._refuse(record, "rate_limited", "disconnected: too many messages")
        if verdict is Verdict.WARN:
            log.warning("connection #%d: over the rate (%g/s or %d B/s)", conn, limits.rate, limits.byte_rate)
        return [Write([(conn, answer) for answer in answers])] if answers else []

    def _behind(self, actions: list[Action]) -> list[Action]:
        """``actions``, but what is for connections owed something goes behind that (and a
        connection that lets too much pile up there is hung up on: it is not reading)."""
        paging = self._paging
        if not paging:
            return actions
        actions = paging.behind(actions)
        while (conn := paging.overflowing()) is not None:
            log.warning("connection #%d: over %d bytes wait behind its lists", conn, self.limits.write_buffer)
            actions += paging.behind(self._hang_up(self._connections[conn], "it is not reading"))
        return actions

    def _release(self, conn: ConnId) -> list[Action]:
        """The next window of what ``conn`` is owed, unless it is past its soft mark; and
        once it is owed nothing more, its mail."""
        if conn in self._backlog.stalled:
            return []
        frames, after_keep, done = self._paging.window(conn, self._presence.members)
        pairs = [(conn, frame) for frame in frames]
        if done:
            nick = self.nick_of(conn)
            assert nick is not None  # only registered connections are owed anything
            pairs += self._router.due(nick)
        if not pairs:
            return []
        # An answer that waited for the store (a "queued") still does, behind the lists.
        return [Persist([], pairs) if after_keep else Write(pairs)]

    def _over_budget(self) -> list[Action]:
        """Over ``partial_frames`` held in unfinished frames across the relay: hang up on
        the connections whose unfinished frames are oldest until it is back under."""
        actions: list[Action] = []
        while (oldest := self._unfinished.oldest_over(self.limits.partial_frames)) is not None:
            log.warning("connection #%d: unfinished frames over the relay's budget", oldest)
            text = "the relay holds too many unfinished frames; this one was the oldest"
            actions += self._refuse(self._connections[oldest], "busy", text)
        return actions

    def _refuse(self, record: _Connection, code: str, text: str) -> list[Action]:
        """An error frame to the offender, then hang up on it (and on nobody else)."""
        text = printable_reason(text)
        return [_write(record.conn, Error(code, text)), *self._hang_up(record, f"{code}: {text}")]

    def _hang_up(self, record: _Connection, reason: str) -> list[Action]:
        self._closing.add(record.conn)
        return [Close(record.conn, reason), *self._forget(record.conn)]

    def _forget(self, conn: ConnId) -> list[Action]:
        record = self._connections.pop(conn, None)
        if record is None:
            return []
        self._sources.close(record.address)
        self._unfinished.forget(conn)
        self._backlog.forget(conn)
        self._paging.forget(conn)
        self._router.forget(conn)
        if record.peer is None:
            return []
        nick = record.peer.nick
        if self.online.get(nick) != conn:
            return []
        left = self._presence.left(nick)
        del self.online[nick], self._skeletons[skeleton(nick)]
        ops = self.kept.leave(nick, self._unix())
        log.info("connection #%d: %s left", conn, nick)
        # The notices (of mail dropped with an identity evicted) say what is kept: they
        # wait for it; that it left does not.
        return keep(ops, self._router.notify(), now=left + self._presence.forgotten())

    def _unix(self) -> float:
        """The Unix time now (as of the latest call), for what is kept."""
        return self._now + self._wall

    def _join(self, record: _Connection, message: Join) -> list[Action]:
        """``room`` joined (made if new) and its members sent; its members online told
        first. Over a limit, an ``Error`` (not a protocol violation: it stays connected)."""
        assert record.peer is not None and record.flow is not None
        nick, room, conn, rooms = record.peer.nick, message.room, record.conn, self.kept.rooms
        # Paid for by what it makes the relay write, in full (a big room's beyond the
        # burst is owed): its answer, and the ``entered`` to the members online.
        # Refused, it is refused as any frame over the rate is: told at most once a
        # second, and hung up on if it keeps on.
        charge = rooms.join_cost(nick, room)
        verdict = record.flow.admit(self.limits, self._now, charge, frames=0, whole=True)
        if verdict is not Verdict.PASS:
            text = f"joining {room} (its members are many) would go over your rate; try again in a moment"
            warning = [_frame(Error("rate_limited", text))] if verdict is Verdict.WARN else []
            return self._over_rate(record, verdict, warning)
        if rooms.is_member(nick, room):  # again: harmless, answered again
            self._paging.owe(conn, nick, rooms=[room])
            return []
        refused = rooms.refusal(nick, room, record.address)
        if refused is not None:
            self._log_rooms(record, refused)
            return [_write(conn, Error("too_many_rooms", refused))]
        ops, frames = self._presence.join(nick, room, self._unix(), record.address)
        # Its answer, the room's list, is owed: handed over as the connection drains.
        self._paging.owe(conn, nick, rooms=[room])
        return keep(ops, [], now=frames)

    def _log_rooms(self, record: _Connection, why: str) -> None:
        """One line for a rooms limit ``record`` hit (``why``, as ``Rooms.refusal`` says
        it: counts, no room's name), at most once per ``warn_interval`` for a connection."""
        if self._now - record.rooms_logged >= self.limits.warn_interval:
            record.rooms_logged = self._now
            log.warning("connection #%d: a join refused: %s", record.conn, why)

    def _part(self, record: _Connection, message: Part) -> list[Action]:
        """``room`` left, and its members online told; a room not joined: nothing. The
        ``parted`` to each of them is charged to the sender's byte rate, owed if the
        bucket runs short: a part whose frame was paid for is never refused."""
        assert record.peer is not None and record.flow is not None
        nick = record.peer.nick
        record.flow.owe(self.limits, self._now, self.kept.rooms.part_cost(nick, message.room))
        ops, frames = self._presence.part(nick, message.room)
        return keep(ops, [], now=frames)

    def _register(self, record: _Connection, message: Register, now: float) -> list[Action]:
        peer = self._admit_register(record, message, self._skeletons)
        if isinstance(peer, tuple):
            return self._refuse(record, *peer)
        return self._welcome(record, peer, message, now)

    def _admit_register(
        self, record: _Connection, message: Register, skeletons: Mapping[str, str]
    ) -> PeerInfo | tuple[str, str]:
        """The newcomer's directory entry, or why it is refused (see ``admit``): its nick
        checked against ``skeletons`` (a cluster's holds the other relays' nicks too)."""
        peer = admit(self.key, record.challenge, self.password, skeletons, message)
        if isinstance(peer, tuple):
            return peer
        until = self.kept.reserved_until(peer.nick, bytes(peer.identity_key))
        if until is not None:
            return reserved(peer.nick, until)
        return peer

    def _welcome(self, record: _Connection, peer: PeerInfo, message: Register, now: float) -> list[Action]:
        """Let ``peer`` in (it sent ``message``): its welcome, its arrival told to its
        contacts, then its rooms' member lists and its mail."""
        record.peer, record.challenge = peer, b""
        record.flow = Flow(self.limits, now)
        record.decoder.max_frame = self.limits.max_frame
        # Its signed prekey is kept before anyone hears of it: whoever sees it join can
        # fetch its bundle at once.
        nick, conn, unix, presence = peer.nick, record.conn, self._unix(), self._presence
        prekeys, ops = self.kept.join(nick, peer.identity_key, message.signed_prekey, unix)
        # Its memberships are exactly the rooms it names (its profile's word), before the
        # welcome: which lists only its contacts, online people who share a room with it.
        change, room_ops = self.kept.set_rooms(nick, message.rooms, unix, record.address)
        ops += room_ops
        contacts = self.kept.rooms.contacts(nick)
        entries = self._directory(nick, contacts)
        welcome = welcome_frames(nick, entries, self._advertised, prekeys, relay_id=self.relay_id)
        frames = presence.arrived(peer, change, contacts)
        self.online[nick] = conn
        self._skeletons[skeleton(nick)] = nick
        # Then each room's members, so that it knows everyone before its mail: all owed,
        # and handed over as the connection drains (its mail once they are).
        tail = []
        if change.refused:
            self._log_rooms(record, change.why)
            text = f"{change.why}; not joined: {' '.join(change.refused)}"
            tail.append(_frame(Error("too_many_rooms", printable_reason(text))))
        self._paging.owe(conn, nick, welcome, self.kept.rooms.of(nick))
        self._paging.owe(conn, nick, tail)
        return keep(ops, self._router.notify(), now=frames + presence.forgotten())

    def _directory(self, nick: str, contacts: Iterable[str]) -> list[bytes]:
        """The directory newcomer ``nick`` is sent, encoded: its ``contacts`` online (a
        cluster's relay adds the other relays' clients who share a room with it)."""
        return self._presence.entries(contacts)

    def _new_sources(self) -> Sources:
        """What each address has open (a cluster's relay counts the others' too)."""
        return Sources()

    def _new_presence(self) -> Presence:
        return Presence(self.kept, self.online, self._paging)

    def _new_router(self) -> Router:
        return Router(self.limits, self.kept, self.online, self._backlog, self._paging)

    def _route(self, record: _Connection, message: Routes) -> list[Action]:
        assert record.peer is not None
        items = message.items
        if len({to for to, _ in items}) != len(items):
            # Many copies to one person would let one frame make the relay write thousands.
            return self._refuse(record, "protocol", "a send names the same recipient twice")
        return self._router.route(record.conn, record.peer.nick, message, self._unix())

    def _publish(self, record: _Connection, message: Publish) -> list[Action]:
        # Only registered connections get here: before that, every frame but a register
        # is refused (``_handshake``). The signature is not checked: clients check it.
        assert record.peer is not None
        count, ops = self.kept.publish(
            record.peer.nick, message.signed_prekey, message.one_time, replace=message.replace
        )
        return keep(ops, [(record.conn, _frame(Prekeys(count)))])

    def _fetch(self, record: _Connection, message: Fetch) -> list[Action]:
        """The bundles asked for; and to each owner online whose one-time prekeys are
        running low because of it, how many it has left."""
        assert record.peer is not None
        (answer, low), ops = self.kept.fetch(record.peer.nick, message.nicks)
        frames = [(record.conn, _frame(answer))]
        frames += [(self.online[nick], _frame(Prekeys(count))) for nick, count in low.items()]
        # A one-time prekey handed out is gone for good: kept so before anyone has it.
        return keep(ops, frames)

    def _ack(self, record: _Connection, message: Ack) -> list[Action]:
        assert record.peer is not None
        return self._router.ack(record.conn, record.peer.nick, message.seq)
