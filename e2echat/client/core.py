"""The client's protocol state machine, without any I/O.

Bytes from the relay go in through ``receive_data`` and come out as events for the UI;
what to write to the relay collects in ``data_to_send()``. The core keeps the state,
answers the relay and hands the rest to its parts: the ``Handshake`` (registering), the
``Sessions`` (a session with each peer, what arrives decrypted), the ``Directory`` (who
is online, trust, views), the ``Outbox`` (messages and receipts out), the
``DeliveryTracker`` (what became of each message sent) and ``MailboxReads`` (what waited
in our mailbox while we were away, and when to acknowledge it). The asyncio shell in
connection.py only moves bytes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterator
from enum import Enum

from nacl.public import PrivateKey, PublicKey

from e2echat.client import files as transfers
from e2echat.client.directory import Directory
from e2echat.client.events import (  # re-exported: the UI's vocabulary
    Event,
    KeyChanged,
    KeyPinned,
    MailboxRead,
    MailReceived,
    MessageQueued,
    MessageReceived,
    MessagesMissing,
    PeerJoined,
    PeerLeft,
    Registered,
    RegistrationFailed,
    RelayClosing,
    RelayError,
    RelayKeyRefused,
    RoomChanged,
    RoomEntered,
    RoomListed,
    RoomParted,
    RoomRefused,
    SecurityWarning,
    SendReport,
    SplitView,
)
from e2echat.client.handshake import Handshake
from e2echat.client.mailbox import MailboxReads
from e2echat.client.memberships import LastMembers
from e2echat.client.outbox import RECEIPT_INTERVAL, Outbox, receipt_gap, send_frames
from e2echat.client.pacing import Pacer
from e2echat.client.pending import PendingDeliveries
from e2echat.client.presence import Presence
from e2echat.client.publishing import PrekeyPublisher
from e2echat.client.receipts import RECEIPT_TIMEOUT, TIMED_OUT, DeliveryReport, DeliveryTracker, Message
from e2echat.client.relays import RelayTrust
from e2echat.client.rooms import Room, Rooms
from e2echat.client.sessions import Sessions
from e2echat.client.status import checked_away
from e2echat.client.trust import KnownPeers, Trust
from e2echat.crypto.identity import safety_number
from e2echat.crypto.keyring import Keyring
from e2echat.crypto.session import prepare_data, random_nonces
from e2echat.errors import CommandError, E2EChatError, LocalProtocolError, RemoteProtocolError
from e2echat.wire import messages as m
from e2echat.wire.codec import decode_message, encode_message
from e2echat.wire.fastpath import decode_deliver, decode_deliver_frame, decode_mail
from e2echat.wire.framing import FrameDecoder, encode_frame
from e2echat.wire.grammar import DEFAULT_ROOM, NICK_RULE, is_valid_nick
from e2echat.wire.objects import PeerInfo

__all__ = [
    "RECEIPT_INTERVAL",
    "ClientCore",
    "ClientState",
    "DeliveryReport",
    "Event",
    "KeyChanged",
    "KeyPinned",
    "MailReceived",
    "MailboxRead",
    "MessageQueued",
    "MessageReceived",
    "MessagesMissing",
    "PeerJoined",
    "PeerLeft",
    "Registered",
    "RegistrationFailed",
    "RelayClosing",
    "RelayError",
    "RelayKeyRefused",
    "RoomChanged",
    "RoomEntered",
    "RoomListed",
    "RoomParted",
    "RoomRefused",
    "SecurityWarning",
    "SendReport",
    "SplitView",
    "receipt_gap",
]


class ClientState(Enum):
    AWAIT_CHALLENGE = "await-challenge"
    AWAIT_WELCOME = "await-welcome"
    AWAIT_DIRECTORY = "await-directory"
    ONLINE = "online"
    CLOSED = "closed"


# How often, in seconds, waiting copies are checked for having waited too long.
OUTLIVED_CHECK = 60.0

#: the code of the relay's ``Error`` that refuses a room (too many, ours or the relay's)
TOO_MANY_ROOMS = "too_many_rooms"
#: the code of the relay's ``Error`` that says we go too fast (a join among other things)
RATE_LIMITED = "rate_limited"

# What file chunks leave in the pacer's buckets for chat: a long line to a room of 16
# (about 256 KiB) and a few frames, so a line typed during a transfer goes at once.
FILE_RESERVE_BYTES = 256 * 1024
FILE_RESERVE_FRAMES = 8
# The most chunk bytes queued at once: the socket drains them in about a millisecond on
# loopback, 9 ms on a gigabit LAN, before anything typed behind them; 256 KiB (two
# chunks) made the sender's loop turn per two chunks, and halved what a transfer moved.
FILE_BURST = 1024 * 1024

_ONLINE = ClientState.ONLINE  # read per frame: a module constant costs less than the enum's


class ClientCore:
    def __init__(
        self,
        nick: str,
        identity: PrivateKey,
        session_key: PrivateKey,
        known_peers: KnownPeers | None = None,
        *,
        password: bytes | None = None,
        relay_trust: RelayTrust | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        receipt_timeout: float = RECEIPT_TIMEOUT,
        message_ids: Iterator[int] | None = None,
        keyring: Keyring | None = None,
        relay_name: str = "",
        pending: PendingDeliveries | None = None,
        hold_acks: bool = False,
        rooms: tuple[str, ...] = (DEFAULT_ROOM,),
        files: transfers.Transfers | None = None,
        last_members: LastMembers | None = None,
        parted: tuple[str, ...] = (),
    ) -> None:
        """``relay_trust`` says which relay key to answer (default: any, first contact).
        ``keyring`` holds our prekeys and sessions, which outlive this connection (a new
        one, kept in memory only, if not given); ``relay_name`` (its address) names the
        relay in warnings about what it handed out.
        ``clock`` measures intervals (receipts due, views that just changed);
        ``wall_clock`` tells the time each message is sent, inside its encryption.
        ``pending`` keeps our copies waiting in mailboxes, which outlive this connection
        (a new one, in memory only, if not given). ``hold_acks``: mailbox items are
        acknowledged by ``acknowledge``, not as soon as they are read.
        ``message_ids`` numbers the messages sent (``pending``'s numbering if not given); a
        client that reconnects passes the same one to each connection, so that no id
        comes twice. ``rooms``: the rooms we are in (the profile's word), sent with the
        registration. ``files`` takes the parts of file transfers that arrive (without it
        they are dropped). ``last_members``: each room's members as last seen, which
        outlive this connection (the first list of each room is compared with them).
        ``parted``: rooms left since the last connection, whose mail is dropped quietly."""
        if not is_valid_nick(nick):
            raise LocalProtocolError(detail=f"invalid nick {nick!r}: {NICK_RULE}")
        self.nick = nick
        self.state = ClientState.AWAIT_CHALLENGE
        self._identity = identity
        self._session_key = session_key.public_key
        #: our away message ("" : here); a new connection starts here, until the Client
        #: says it again (client/reconnect.py)
        self.our_away = ""
        self._relay_name = relay_name
        self._lost: list[Event] = []
        # Joins and parts asked for once registered, before the welcome: sent once online.
        self._after_welcome: list[m.Join | m.Part] = []
        self._clock = clock
        self._wall_clock = wall_clock
        self.keyring = keyring if keyring is not None else Keyring.fresh(nick, identity, wall_clock())
        self._decoder = FrameDecoder()
        #: what we write, released no faster than the relay allows
        self._pacer = Pacer()
        # Found while sending, or in a read that then broke: handed out with the next events.
        self._notices: list[Event] = []
        self._publisher = PrekeyPublisher(
            self.keyring.prekeys, identity, self._write, clock=clock, wall_clock=wall_clock
        )
        self._directory = Directory(known_peers if known_peers is not None else KnownPeers())
        self._rooms = Rooms(nick, identity.public_key, clock, rooms, parted)
        pending = pending if pending is not None else PendingDeliveries()
        self.deliveries = DeliveryTracker(receipt_timeout, pending)
        # The last mailbox item handled, the last said in a MailboxRead, and the last the
        # relay was told of.
        self._mailbox = MailboxReads(hold_acks)
        self._outlived_due = 0.0  # wall clock: when next to look for copies waiting too long
        self._sessions = Sessions(
            nick, self.keyring, self._directory, self.deliveries, self._session_key, wall_clock, self._rooms
        )
        #: each room's members as last seen (on earlier connections too)
        self.last_members = last_members if last_members is not None else LastMembers()
        self._presence = Presence(
            nick, self._rooms, self._directory, self._sessions, self._tell_away, self.last_members
        )
        if files is not None:
            self._sessions.file_parts = lambda sender, data, trust, gap: files.receive(
                sender, data, trust, clock(), gap
            )
            self._sessions.other_message = lambda sender, gap: files.other_message(sender, gap, clock())
        self._outbox = Outbox(
            nick,
            self._directory,
            self.keyring,
            self._sessions.session_with,
            self._sessions.sessions_with,
            self.deliveries,
            clock,
            self._pacer,
            wall_clock=wall_clock,
            notices=self._notices,
            message_ids=message_ids if message_ids is not None else pending.ids,
            acks_due=self._sessions.acks_due,
            rooms=self._rooms,
            relay=relay_name,
        )
        self._handshake = Handshake(
            nick,
            identity,
            session_key,
            password=password,
            relay_trust=relay_trust or RelayTrust(),
            prekeys=self.keyring.prekeys,
            write=self._write,
            pacer=self._pacer,
            publisher=self._publisher,
            sessions=self._sessions,
            directory=self._directory,
            rooms=self._rooms,
            clock=clock,
            wall_clock=wall_clock,
        )

    # -- bytes in, bytes out --------------------------------------------------------------

    def data_to_send(self) -> bytes:
        """What may be written to the relay now: within its rate (see ``send_delay``)."""
        return self._pacer.take(self._clock())

    def send_delay(self) -> float | None:
        """Seconds until more may be written (call ``data_to_send`` then); None if
        nothing is held back."""
        return self._pacer.delay(self._clock())

    def receive_data(self, data: bytes) -> list[Event]:
        """Feed bytes from the relay. Raises ``RemoteProtocolError`` if the relay breaks
        the protocol; the connection is then useless and must be closed. The events of
        the frames read before the one that broke it come out of ``abandon``."""
        events: list[Event] = []
        online = self.state is _ONLINE
        try:
            # The usual read, one whole deliver and nothing buffered before it, is read in
            # place; the rest is cut into frames first.
            fast = decode_deliver_frame(data) if online and not self._decoder.buffered else None
            if fast is not None:
                # No mailbox item in it, and no notice or receipt from it can be due but
                # by the clock: the rest of this function, for the usual read, is that check.
                events = self._sessions.deliver(*fast)
                outbox = self._outbox
                if (outbox.acks_due and self._clock() >= outbox.receipts_due_at) or self._sessions.lost:
                    self._send_receipts()
                return self._take_notices() + events if self._notices else events
            else:
                for frame in self._decoder.receive_data(data):
                    # Most frames are deliveries in the relay's one canonical form: those
                    # skip the strict decoder (decode_deliver accepts nothing it would refuse).
                    deliver = decode_deliver(frame) if online else None
                    if deliver is not None:
                        events += self._sessions.deliver(*deliver)
                    elif online and (mail := decode_mail(frame)) is not None:
                        # What waited in our mailbox, read the same way: on our return it
                        # comes in thousands.
                        events += self._mail(mail[0], mail[1], mail[3])
                    else:
                        events += self._handle(decode_message(frame))
                        online = self.state is _ONLINE
        except E2EChatError:
            # What the earlier frames did stands: a message they settled is no longer the
            # tracker's to abandon, one they decrypted cannot be decrypted again. The UI
            # must still hear of it, with the reports of the connection's end.
            self._notices += events
            raise
        if (read := self._mailbox.end_of_read()) is not None:
            if self._mailbox.hold_acks:
                events.append(MailboxRead(read))
            else:
                self.acknowledge(read)
        # Receipts owed go when due (asked here once per read, so without a call: the
        # usual answer, in a busy room, is "not yet").
        outbox = self._outbox
        if online and (self._sessions.lost or (outbox.acks_due and self._clock() >= outbox.receipts_due_at)):
            self._send_receipts()
        return self._take_notices() + events if self._notices else events

    def _take_notices(self) -> list[Event]:
        notices = list(self._notices)
        self._notices.clear()  # in place: the outbox adds to this very list
        return notices

    def _write(self, message: m.Message) -> None:
        self._pacer.write(encode_frame(encode_message(message)), self._clock())

    def acknowledge(self, seq: int) -> None:
        """Every mailbox item up to ``seq`` is handled (and stored): the relay may forget
        them. Ignored if not above what was acknowledged, or above what this connection
        read (a ``MailboxRead`` of an earlier one: the relay sends those items again)."""
        if self._mailbox.acknowledge(seq):
            # The receipts owed go first, through the same pacer: once the relay has the
            # ack it forgets the mail, and a receipt still held back (till the next tick)
            # would die with us if we crashed, leaving the sender waiting for good.
            self._send_receipts(force=True)
            self._write(m.Ack(seq))

    def ping(self) -> None:
        """Ask the relay whether it is still there (it answers with a pong)."""
        self._write(m.Ping())

    def tick(self) -> list[Event]:
        """Call now and then: sends receipts held back, reports messages whose receipts
        are overdue."""
        self._send_receipts()
        if self.state is ClientState.ONLINE:
            self._publisher.tick()
        reports = self.deliveries.expire(self._clock())
        for report in reports:
            self._outbox.given_up(report.message_id)
            for nick, reason in report.failed:
                if reason == TIMED_OUT:
                    self._sessions.unanswered(nick)
        if self.state is ClientState.ONLINE and (now := self._wall_clock()) >= self._outlived_due:
            # Once a minute: the copies' lives are days long, and there may be 100,000.
            self._outlived_due = now + OUTLIVED_CHECK
            reports += self.deliveries.outlived(now)
        return self._take_notices() + list(reports)

    def abandon(self, reason: str) -> list[Event]:
        """The connection is gone: report every message not yet confirmed, after what
        was found but not yet handed out (the frames before one that broke the protocol)."""
        return self._take_notices() + list(self.deliveries.abandon(reason))

    def flush_receipts(self) -> None:
        """Acknowledge everything that arrived, now: the connection is about to close, and
        a message we read must not be reported to its sender as never confirmed."""
        self._send_receipts(force=True)

    def _send_receipts(self, *, force: bool = False) -> None:
        if self.state is ClientState.ONLINE and self._outbox.acks_due:
            self._outbox.send_receipts(force=force)
        if self.state is ClientState.ONLINE and self._sessions.lost:
            self._outbox.reach(self._sessions.lost)

    def forget_keys(self) -> None:
        """The connection is over. The sessions stay in the keyring, for the next one; the
        session private key goes with this object (Python cannot wipe memory)."""
        self._directory.forget_caches()
        self.state = ClientState.CLOSED

    # -- what the UI reads ------------------------------------------------------------------

    @property
    def relay_key(self) -> PublicKey | None:
        """The relay's long-term key, once its challenge was accepted (to pin it)."""
        return self._handshake.relay_key

    @property
    def directory(self) -> dict[str, PeerInfo]:
        """nick -> the keys the relay says they have, for every contact online."""
        return self._directory.peers

    @property
    def peers(self) -> list[str]:
        """Every contact online (who shares a room with us), sorted."""
        return self._directory.nicks()

    @property
    def rooms(self) -> list[str]:
        """The rooms we are in, in the order joined."""
        return self._rooms.names

    def room(self, name: str) -> Room | None:
        """Room ``name``, if we are in it: its members as the relay says."""
        return self._rooms.get(name)

    def away_in(self, room: str) -> list[str]:
        """The members of ``room`` who are not online, sorted (a message to them waits in
        their mailbox)."""
        joined = self._rooms.get(room)
        return [] if joined is None else [n for n in joined.others if n not in self._directory.peers]

    @property
    def away(self) -> list[str]:
        """The members of our rooms who are not online, sorted."""
        return sorted({nick for room in self._rooms.names for nick in self.away_in(room)})

    @property
    def known_peers(self) -> KnownPeers:
        return self._directory.known_peers

    @known_peers.setter
    def known_peers(self, known_peers: KnownPeers) -> None:
        self._directory.known_peers = known_peers

    @property
    def left_out(self) -> list[str]:
        """Who the last room message left out because their key changed."""
        return self._outbox.left_out

    @property
    def settled(self) -> bool:
        """Everything is written, the relay has answered for every message, and every
        recipient has confirmed (or is known not to have got it)."""
        return not self._pacer.queued and self.deliveries.settled

    @property
    def pending(self) -> dict[int, Message]:
        """Messages the relay has not yet answered for, by id."""
        return self.deliveries.awaiting_relay

    def trust(self, nick: str) -> Trust:
        """How far the key the directory shows for ``nick`` is trusted."""
        return self._directory.trust(nick)

    def withheld(self) -> list[str]:
        """Peers online whose identity key changed: nothing is sent to them until accepted."""
        return self._directory.withheld()

    def safety_number(self, nick: str) -> str:
        peer = self._directory.peer(nick)
        return safety_number(self._identity.public_key, self.nick, peer.identity_key, nick)

    def room_safety_number(self, room: str) -> str:
        """The safety number of ``room`` (60 digits): every member who sees the same
        members with the same keys has the same one."""
        joined = self._rooms.get(room)
        if joined is None:
            raise CommandError(detail=f"you are not in {room}")
        return joined.safety_number()

    # -- what the UI does -------------------------------------------------------------------

    def send_room(
        self, room: str, text: str, only: Collection[str] | None = None, *, report_as: int = 0
    ) -> int:
        """Encrypt ``text`` for every other member of ``room`` whose key is not in doubt
        (and among ``only``, if given). Returns the message id; ``left_out`` then names
        those left out. ``report_as``: the id its copies kept in mailboxes are reported
        under, if not its own."""
        self._require_online()
        return self._outbox.send_room(room, text, only, report_as=report_as)

    def join(self, room: str) -> None:
        """Join ``room`` (or ask for its members again, if in it): the relay answers with
        its members. Before we register, the room is joined with the registration; once
        registered but not yet online, the ``Join`` goes as soon as we are."""
        online = self.state is ClientState.ONLINE
        self._rooms.join(room, asked=online)
        if online:
            self._write(m.Join(room))
        elif self._registered:
            self._after_welcome.append(m.Join(room))

    def part(self, room: str) -> None:
        """Leave ``room``; its members we share no other room with are no contacts now."""
        self._presence.we_parted(room)
        if self.state is ClientState.ONLINE:
            self._write(m.Part(room))
        elif self._registered:
            self._after_welcome.append(m.Part(room))

    @property
    def _registered(self) -> bool:
        """Our registration is sent, and named the rooms we were in then: a join or part
        after it waits for the welcome (it would be lost otherwise)."""
        return self.state in (ClientState.AWAIT_WELCOME, ClientState.AWAIT_DIRECTORY)

    def send_private(self, recipient: str, text: str, *, report_as: int = 0) -> int:
        self._require_online()
        return self._outbox.send_private(recipient, text, report_as=report_as)

    def set_away(self, message: str) -> list[str]:
        """Say we are away (``message``: why) or back (""), to everyone online we have a
        session with (client/status.py); and, while away, to each who joins later.
        ``CommandError`` for a message that cannot be one. Returns whom it went to."""
        self._require_online()
        message = checked_away(message)
        self.our_away = message
        return self._outbox.send_status(self._session_key, message)

    @property
    def session_key(self) -> PublicKey:
        """This connection's session key, as the directory shows it to peers."""
        return self._session_key

    def their_away(self, nick: str) -> str:
        """``nick``'s away message, as they last said it in this connection of theirs; ""
        if they are not away (or not online)."""
        return self._sessions.statuses.message(nick)

    def their_away_since(self, nick: str) -> float | None:
        """When ``nick`` said they are away (Unix time, by their clock but not after ours);
        None if they are not away."""
        return self._sessions.statuses.since(nick)

    def send_file_part(self, nick: str, part: bytes, *, to_mailbox: bool = False) -> bool:
        """Seal a part of a file transfer for ``nick`` (online, key not in doubt) in our
        session with them, and queue it. False if there is no session yet: one is started
        (as for someone who wrote to us in a session we lost), and the part can go later.
        ``to_mailbox``: if they are away, into their mailbox, in the session kept with
        them (``reachable_away``); False if there is none."""
        self._require_online()
        if nick in self._directory.peers:
            if self._directory.trust(nick) is Trust.CHANGED:
                return False
            session = self._sessions.session_with(nick)
            if session is None:
                self._outbox.reach({nick})
                return False
        elif to_mailbox and self.reachable_away(nick):
            session = self._outbox.kept(nick)[0]
            assert session is not None  # (reachable_away says so)
        else:
            return False
        body = session.seal(prepare_data(part), random_nonces(1)[0])
        self._pacer.write(send_frames(0, [(nick, body)]), self._clock())
        return True

    def reachable_away(self, nick: str) -> bool:
        """``nick`` is away, and a session is kept with them under the key pinned: what is
        sent to them waits in their mailbox (an offer of a file may; its chunks never)."""
        return (
            nick not in self._directory.peers and nick in self.away and self._outbox.kept(nick)[0] is not None
        )

    def file_budget(self) -> int:
        """Bytes of file chunks that may be queued now without holding up what is typed
        next (see ``Pacer.spare``)."""
        spare = self._pacer.spare(self._clock(), FILE_RESERVE_BYTES, FILE_RESERVE_FRAMES)
        return int(min(spare, FILE_BURST))

    @property
    def relay_byte_rate(self) -> float:
        """The bytes a second the relay takes from this connection (its ``--byte-rate``)."""
        return self._pacer.relay_byte_rate

    def key_fingerprint(self, nick: str) -> str:
        """The fingerprint of the identity key the directory shows for ``nick`` now."""
        return self._directory.fingerprint(nick)

    def key_changed(self, nick: str) -> KeyChanged | None:
        """The KEY CHANGED warning for ``nick``, if their key is not the one pinned."""
        return self._directory.key_changed(nick)

    def accept_key(self, nick: str, key_fingerprint: str) -> None:
        """Pin ``nick``'s key (clears verification), if it still is the one whose
        ``key_fingerprint`` the user was shown; ``CommandError`` if the relay has since
        announced another."""
        self._directory.accept(nick, key_fingerprint)

    def set_verified(self, nick: str, verified: bool, *, key_fingerprint: str | None = None) -> None:
        """Mark ``nick`` verified (or not); with ``key_fingerprint``, only that key."""
        self._directory.set_verified(nick, verified, key_fingerprint=key_fingerprint)

    def _require_online(self) -> None:
        if self.state is not ClientState.ONLINE:
            raise CommandError(detail="not connected to the relay; the message was not sent")

    # -- receiving --------------------------------------------------------------------------

    def _handle(self, message: m.Message) -> list[Event]:
        if isinstance(message, m.Error):
            if self.state is not ClientState.ONLINE:
                self.state = ClientState.CLOSED
                return [RegistrationFailed(message.code, message.text)]
            events: list[Event] = [RelayError(message.code, message.text)]
            if message.code in (TOO_MANY_ROOMS, RATE_LIMITED):
                # Not in it after all, on this connection (no members listed: no contacts
                # made there either); the connection stays. A rate limit refuses a join
                # only if it names it: it also answers sending too fast.
                refused = self._rooms.refused(message.text, oldest=message.code == TOO_MANY_ROOMS)
                events += [RoomRefused(name, message.code) for name in refused]
            return events
        if isinstance(message, m.Bye):
            self.state = ClientState.CLOSED
            return [RelayClosing(message.reason)]
        if self.state is ClientState.AWAIT_CHALLENGE and isinstance(message, m.Challenge):
            return self._answer_challenge(message)
        if self.state is ClientState.AWAIT_WELCOME and isinstance(message, m.Welcome):
            self._handshake.welcome(message)
            # Copies queued at a relay that has since lost its mailboxes: told once registered.
            self._lost = [*self.deliveries.welcome(self._relay_name, message.relay_id, message.mailbox_ttl)]
            self.state = ClientState.AWAIT_DIRECTORY
            return self._receive_directory(message.peers, message.more)
        if self.state is ClientState.AWAIT_DIRECTORY and isinstance(message, m.Directory):
            return self._receive_directory(message.peers, message.more)
        if self.state is ClientState.ONLINE:
            if isinstance(message, m.Deliver):
                return self._sessions.deliver(message.sender, message.body)
            if isinstance(message, m.PeerJoined):
                joined = self._presence.peer_joined(message.peer)
                if joined:
                    self._tell_away(message.peer.nick)
                return joined
            if isinstance(message, m.PeerLeft):
                return self._presence.peer_left(message.nick)
            if isinstance(message, m.Members):
                return self._presence.members(message.room, message.peers, message.away, message.more)
            if isinstance(message, m.Entered):
                return self._presence.entered(message.room, message.peer)
            if isinstance(message, m.Parted):
                return self._presence.parted(message.room, message.nick)
            if isinstance(message, m.Routed):
                return self._routed(message)
            if isinstance(message, m.Bundles):
                return self._outbox.bundles(message)
            if isinstance(message, m.Mail):
                return self._mail(message.seq, message.sender, message.body)
            if isinstance(message, m.Expired):
                self._mailbox.handle(message.seq)
                return list(self.deliveries.mailbox_dropped(message.id, message.to, message.reason))
            if isinstance(message, m.Prekeys):
                self._publisher.held(message.count)
                return []
            if isinstance(message, m.Ping):
                self._write(m.Pong())
                return []
            if isinstance(message, m.Pong):
                return []
        raise RemoteProtocolError(
            detail=f"relay sent an unexpected {message.TYPE!r} message ({self.state.value})"
        )

    def _tell_away(self, nick: str) -> None:
        """``nick`` is online and a contact now, and was not when we said we are away (or
        it was another connection of theirs): tell them."""
        if self.our_away and nick in self._directory.peers:
            self._outbox.send_status(self._session_key, self.our_away, (nick,))

    def _mail(self, seq: int, sender: str, body: bytes) -> list[Event]:
        self._mailbox.handle(seq)
        return self._sessions.mail(sender, body)

    def _answer_challenge(self, challenge: m.Challenge) -> list[Event]:
        refused = self._handshake.answer(challenge)
        if refused is not None:
            self.state = ClientState.CLOSED
            return [refused]
        self.state = ClientState.AWAIT_WELCOME
        return []

    def _receive_directory(self, peers: tuple[PeerInfo, ...], more: bool) -> list[Event]:
        events = self._handshake.directory(peers, more)
        if not more:
            self.state = ClientState.ONLINE
            events += self._lost
            self._lost = []
            for message in self._after_welcome:  # in the order typed
                if isinstance(message, m.Join) and message.room in self._rooms:
                    self._rooms.join(message.room, asked=True)
                self._write(message)
            self._after_welcome = []
        return events

    def _routed(self, routed: m.Routed) -> list[Event]:
        return list(
            self.deliveries.routed(
                routed.id,
                routed.delivered,
                routed.missing,
                routed.refused,
                routed.queued,
                routed.full,
                now=self._wall_clock(),
            )
        )
