"""The client's end-to-end side: peers announced and gone, our sessions with them, and
what they send decrypted into events.

``ClientCore`` is the client's side of the conversation with the relay; ``Sessions``
follows the peers it announces (in the directory, or as they join) and decrypts what
they send with the ``Keyring``, which outlives the connection: a peer who leaves and
comes back, or a reconnect of ours, keeps the session. What is owed a receipt collects
in ``acks_due``, which the ``Outbox`` sends.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from nacl.public import PublicKey

from e2echat.client.directory import Directory
from e2echat.client.events import (
    Event,
    KeyPinned,
    MailFromPastMember,
    MailReceived,
    MessageReceived,
    MessagesMissing,
    PeerJoined,
    PeerLeft,
    SecurityWarning,
    SplitView,
    received,
)
from e2echat.client.filestate import FileGap
from e2echat.client.receipts import DeliveryTracker
from e2echat.client.rooms import Rooms
from e2echat.client.status import Refused, TheirStatuses
from e2echat.client.trust import Trust
from e2echat.crypto.keyring import Keyring
from e2echat.crypto.session import PREKEY_HEADER_SIZE, PREKEY_MESSAGE, Kind, PeerSession
from e2echat.errors import DecryptionError, RemoteProtocolError, ReplayError
from e2echat.wire.grammar import is_valid_room
from e2echat.wire.objects import PeerInfo

__all__ = ["Sessions"]

log = logging.getLogger("e2echat.client.sessions")

# What deliver compares with, once per message: an enum member read through its class
# costs more than the rest of a comparison (Python 3.11).
_PREKEY_TYPE = bytes([PREKEY_MESSAGE])
_RECEIPT, _PRIVATE, _STATUS, _ROOM, _FILE = Kind.RECEIPT, Kind.PRIVATE, Kind.STATUS, Kind.ROOM, Kind.FILE
_CHANGED = Trust.CHANGED
_NEW = tuple.__new__
# Senders of mail whose trust is remembered (see Sessions._trust_in), at most.
_TRUST_CACHE = 4096

#: what takes the parts of file transfers: (sender, the part's bytes, the sender's trust,
#: its place: ``FileGap``)
FileParts = Callable[[str, bytes, Trust, FileGap], list[Event]]
#: told of a message from a peer that came in order right after a part of a file of theirs
#: (``FileGap``), not itself a part: the messages missing before it, and whether its gap is
#: held (the next part says, client/files.py ``Transfers.other_message``)
OtherMessage = Callable[[str, FileGap], tuple[list[Event], bool]]


class Sessions:
    """Our sessions with the peers the ``directory`` holds (kept in ``keyring``), and with
    anyone else who writes to us in a session kept there.

    ``tracker`` hears of receipts and of peers gone; ``our_session_key`` is this
    connection's (a status names it); ``wall_clock`` tells the time (Unix), for how old a
    status is; ``rooms`` says which rooms a room message may be shown in, and from whom."""

    def __init__(
        self,
        our_nick: str,
        keyring: Keyring,
        directory: Directory,
        tracker: DeliveryTracker,
        our_session_key: PublicKey,
        wall_clock: Callable[[], float],
        rooms: Rooms,
    ) -> None:
        self._our_nick = our_nick
        self._our_session_key = our_session_key
        self._wall_clock = wall_clock
        self.keyring = keyring
        self._directory = directory
        self._rooms = rooms
        self._tracker = tracker
        #: sender -> the numbers of their messages we owe a receipt for
        self.acks_due: dict[str, list[int]] = {}
        #: peers who wrote to us in a session we do not have: we start a new one
        self.lost: set[str] = set()
        # sender -> (their key, the pins' generation, its trust): a returning client reads
        # thousands of mailbox items, and comparing keys costs more than the rest.
        self._mail_trust: dict[str, tuple[bytes, int, Trust]] = {}
        #: the away messages of peers online (/away)
        self.statuses = TheirStatuses()
        #: takes the parts of file transfers (client/files.py); without it they are dropped
        self.file_parts: FileParts | None = None
        #: told of other messages that come right after a part (see ``OtherMessage``)
        self.other_message: OtherMessage | None = None
        #: sender -> the session whose last message in order was a part of a file
        self._file_last: dict[str, PeerSession] = {}

    def session_with(self, nick: str) -> PeerSession | None:
        """Our session with ``nick`` (under the key the directory shows), if we have one
        to send in; None if a session must first be started (``Outbox`` fetches their
        prekey bundle)."""
        peer = self._directory.peers.get(nick)
        if peer is None:
            return None
        session = self.keyring.get(nick, peer.identity_key)
        return session if session is not None and session.can_send else None

    def sessions_with(self, nicks: list[str]) -> list[PeerSession | None]:
        """``session_with`` of each of ``nicks``, in one call: a room message asks for 49."""
        return self.keyring.senders(nicks, self._directory.peers)

    def unanswered(self, nick: str) -> None:
        """A message to ``nick`` got no receipt in time: if they never answered in our
        current session with them, they may be unable to read it (their one-time prekey
        was handed out twice, or our first message was lost), so the next message starts
        a new one."""
        peer = self._directory.peers.get(nick)
        session = None if peer is None else self.keyring.get(nick, peer.identity_key)
        if session is not None:
            session.drop_unanswered()

    # -- peers come and go ------------------------------------------------------------------

    def add(self, peer: PeerInfo) -> list[Event]:
        """A peer the relay announced (in the directory, as joined, or in a room)."""
        if peer.nick == self._our_nick:
            raise RemoteProtocolError(detail="relay listed our own nick as a peer")
        known = self._directory.peers.get(peer.nick)
        if known == peer:
            return []  # announced again with the same keys: keep the session and its counters
        if self._directory.reuses_a_session_key(peer):
            return [
                SecurityWarning(
                    f"the relay announced {peer.nick} again with a session key already used; "
                    "ignored (a replay attempt?)"
                )
            ]
        # Back with a new connection (another session key), or with other keys: the
        # directory entry is replaced. Our sessions stay with the keyring, which keeps
        # them for as long as the identity key is the same.
        events: list[Event] = self.retire(peer.nick) if known is not None else []
        return events + self._directory.add(peer)

    def joined(self, peer: PeerInfo) -> list[Event]:
        if self._directory.peers.get(peer.nick) == peer:
            return []  # the same person, announced again: nothing new
        events = self.add(peer)
        if peer.nick not in self._directory.peers:
            return events  # refused (see add)
        return [PeerJoined(peer.nick), *events]

    def left(self, nick: str) -> list[Event]:
        if nick not in self._directory.peers:
            return []
        return [PeerLeft(nick), *self.retire(nick, away=True)]

    def retire(self, nick: str, *, away: bool = False) -> list[Event]:
        """``nick``'s directory entry ends: they left (``away``), or came back with other keys."""
        had_session = nick in self.keyring.peers
        self._directory.remove(nick, had_session=had_session)
        self.statuses.forget(nick)  # a new connection of theirs starts "here"
        # Receipts cannot reach someone gone; what we owe them is not sent later either:
        # their copies were reported to them as unconfirmed when they went. (Nor is it
        # sent to their mailbox: by the time it would go, they may be back and have
        # started a new session with us, and numbers of the old one must not confirm
        # messages of the new.)
        self.acks_due.pop(nick, None)
        return list(self._tracker.peer_left(nick, away=away))

    # -- what arrives -----------------------------------------------------------------------

    def deliver(self, sender: str, body: bytes) -> list[Event]:
        """What ``sender`` sent (as the relay passed it on), decrypted into events.

        Every room message comes this way, once per delivery: kept lean (the enum members
        it compares with are module constants, the common case first)."""
        directory = self._directory
        peer = directory.peers.get(sender)
        if peer is None:
            # Not a contact (we share no room): a private message, or a receipt, read as
            # mail from someone away is, in the session kept with them.
            return self.mail(sender, body, kept=False)
        # keyring.get, inline: the session is ours only under the key the directory shows
        # (the same object, usually: a session is made with the directory's key)
        peers = self.keyring.peers
        session = peers.get(sender)
        if session is not None:
            if session.identity_key is peer.identity_key or bytes(session.identity_key) == bytes(
                peer.identity_key
            ):
                peers.move_to_end(sender)
            else:
                session = None
        candidate = None
        if session is None:
            # Sessions they started under a key not (yet) accepted, or one they start now:
            # kept only once their first message authenticates.
            candidate = self.keyring.unaccepted(sender, peer.identity_key)
            if candidate is None and body[:1] == _PREKEY_TYPE:
                candidate = self.keyring.candidate(sender, peer.identity_key)
            session = candidate
        if session is None:
            # They write in a session we do not have (we lost ours: a profile restored
            # without its sessions, a damaged row): start a new one with them, so that
            # what they send next can be read.
            self.lost.add(sender)
            return [
                SecurityWarning(f"dropped a message claiming to be from {sender}, who has no session with us")
            ]
        try:
            kind, counter, text, skipped, late, view, acks, sent, room, data = session.read(body)
        except DecryptionError as exc:
            log.info("dropped a message that did not authenticate")
            return [SecurityWarning(f"{exc}; it was dropped")]
        if candidate is not None:
            if directory.trust(sender) is not Trust.CHANGED:
                self.keyring.pending.pop(sender, None)
                self.keyring.adopt(candidate)
            else:
                # Shown (flagged), and held apart: sessions under a key the user has not
                # accepted must not replace the sessions with the key pinned.
                self.keyring.hold(candidate)
        # The session is the one with ``sender``: the plaintext is theirs (session.py).
        trust = directory.trust(sender)
        if kind is _FILE:  # (messages skipped before a chunk may be chunks: the file says)
            gap = self._file_order(sender, session, kind, skipped, late)
            return self._file_part(sender, data, trust, session.identity_key, gap)
        events: list[Event] = [MessagesMissing(sender, skipped)] if skipped else []
        if not late and self._file_last:
            # _file_order for any other message: the next gap after this one is not one
            # after a file part, unless the transfers hold this one's gap.
            after = self._file_last.pop(sender, None)
            if after is not None and self.other_message is not None:
                events, held = self.other_message(sender, FileGap(skipped, False, after is session))
                if held:
                    self._file_last[sender] = session
        if kind is _RECEIPT:
            # A receipt from a key we do not accept confirms nothing. (Belt and braces: a
            # changed key gets no copies and a replaced session's copies fail in retire,
            # so no receipt from one can match today; this keeps it so if that changes.)
            if trust is not _CHANGED:
                events.extend(self._tracker.acknowledged(sender, list(acks)))
            return events
        if kind is _STATUS:  # no receipt is owed for one
            return events + self._status(sender, counter, text, trust, sent)
        if kind is _ROOM:
            shown_in = self._rooms.rooms.get(room)
            if shown_in is None or sender not in shown_in.members:
                # Not shown, and not acknowledged: its sender hears it did not arrive.
                return events + self._misplaced(sender, room)
            if view != shown_in.view and shown_in.is_split_view(sender, view):
                events.append(SplitView(sender, room))
        if trust is not _CHANGED:  # nothing is owed to a key we do not accept, even later
            owed = self.acks_due.get(sender)
            if owed is not None:
                owed.append(counter)
            else:
                self.acks_due[sender] = [counter]
                # First contact pins the key. Asked with the first message from them in
                # each batch of receipts (about a second), not with every one: that is
                # first contact too, and the pin's last use is kept to the day.
                if directory.known_peers.exchanged(sender, session.identity_key):
                    events.append(KeyPinned(sender))
            back = self.statuses.spoke(sender, counter)  # a line typed: back, if away
            if back is not None:
                events.append(back)
        # (received, without the partial's call)
        events.append(_NEW(MessageReceived, (sender, text, kind is _PRIVATE, trust, late, sent, room)))
        return events

    def _status(self, sender: str, counter: int, text: str, trust: Trust, sent: int | None) -> list[Event]:
        """A STATUS from ``sender`` (online: it came in a session with them): the change
        it makes to their away message, if it is believed (client/status.py)."""
        if trust is _CHANGED:
            return []  # from a key not accepted: not shown in /who, where no mark would flag it
        try:
            change = self.statuses.receive(
                sender,
                counter,
                text,
                self._directory.peers[sender].session_key,
                self._our_session_key,
                sent,
                self._wall_clock(),
            )
        except ValueError:
            return [SecurityWarning(f"{sender} sent a malformed away message; it was ignored")]
        if isinstance(change, Refused):
            return [SecurityWarning(change.text)]
        return [] if change is None else [change]

    def _misplaced(self, sender: str, room: str) -> list[Event]:
        """A room message from ``sender`` that names ``room``, which is not one of ours, or
        of which ``sender`` is not a member: dropped, and said (unless we just parted the
        room: it was on its way when we did)."""
        if room not in self._rooms:
            if self._rooms.just_parted(room):
                return []
            named = room if is_valid_room(room) else "a room with an invalid name"
            return [
                SecurityWarning(
                    f"dropped a message from {sender} for {named}, a room you are not in: the relay "
                    f"(or {sender}) tried to show it to you"
                )
            ]
        return [
            SecurityWarning(
                f"dropped a message from {sender} in {room}: {sender} is not a member of {room} as "
                f"the relay told you; it (or {sender}) tried to post it there"
            )
        ]

    def mail(self, sender: str, body: bytes, *, kept: bool = True) -> list[Event]:
        """What ``sender`` sent while we were away (a mailbox item, ``kept``), or what
        someone who is not a contact sends now, decrypted into events.

        As ``deliver``, but ``sender`` may be away now, not in the directory: their key is
        the one of the session kept with them, or the one their first message names (which
        X3DH with our prekeys authenticates, and which is checked against the pin). The
        same message again (the relay sends again what we did not acknowledge) is dropped
        quietly; and no split view is looked for (the sender's view was of another time,
        or of a room we do not share)."""
        known = self._directory.known_peers
        session, candidate = self._mail_session(sender, body)
        if session is None:
            what = "a message kept for us" if kept else "a message"
            return [SecurityWarning(f"dropped {what} from {sender}, who has no session with us")]
        try:
            plaintext = session.decrypt(body)
        except ReplayError:
            # Read already (its key is used up): a mailbox item we had not acknowledged,
            # sent again. Nothing to warn about: nothing new was shown.
            log.info("dropped a mailbox item from %s read before", sender)
            return []
        except DecryptionError as exc:
            log.info("dropped a mailbox item that did not authenticate")
            return [SecurityWarning(f"{exc}; it was dropped")]
        key = session.identity_key
        trust = self._trust_in(sender, key)
        if candidate:
            if trust is not _CHANGED:
                self.keyring.pending.pop(sender, None)
                self.keyring.adopt(session)
            else:
                self.keyring.hold(session)
        gap = self._file_order(sender, session, plaintext.kind, plaintext.skipped, plaintext.late)
        if plaintext.kind is _FILE:
            return self._file_part(sender, plaintext.data, trust, key, gap)
        events: list[Event] = [MessagesMissing(sender, plaintext.skipped)] if plaintext.skipped else []
        if plaintext.kind is _RECEIPT:
            if trust is not _CHANGED:
                events.extend(self._tracker.acknowledged(sender, list(plaintext.acks)))
            return events
        if plaintext.kind is _STATUS:
            # Sent to us online, and kept because we had just left: the sender's status
            # then was for a connection of ours that is over (or, from someone not a
            # contact, one they may not send us). Nothing is owed for it.
            log.info("ignored a status from %s kept in our mailbox", sender)
            return events
        room = plaintext.room
        past_member = False
        if plaintext.kind is _ROOM:
            shown_in = self._rooms.get(room)
            if shown_in is None or (not kept and sender not in shown_in.members):
                if kept and room in self._rooms.parted_offline:
                    return events  # written before we left it, while we were away
                return events + self._misplaced(sender, room)
            # Kept for us while we were away, in a room of ours, from someone not in it
            # now: most likely they left after writing it. The relay could also hide a
            # member from our list and then show their message; it cannot write one.
            past_member = sender not in shown_in.members
        if trust is not _CHANGED:
            self.acks_due.setdefault(sender, []).append(plaintext.counter)
            if known.exchanged(sender, key):
                events.append(KeyPinned(sender))
        fields = (
            sender,
            plaintext.text,
            plaintext.kind is _PRIVATE,
            trust,
            plaintext.late,
            plaintext.sent,
            room,
        )
        if past_member:
            events.append(MailFromPastMember(*fields))
        else:
            events.append(MailReceived(*fields) if kept else received(fields))
        return events

    def _file_order(self, sender: str, session: PeerSession, kind: Kind, skipped: int, late: bool) -> FileGap:
        """Where this message came among ``sender``'s (see ``FileGap``); notes whether it
        was a part of a file, for the next one."""
        gap = FileGap(skipped, late, self._file_last.get(sender) is session)
        if not late:
            if kind is _FILE:
                if len(self._file_last) >= _TRUST_CACHE and sender not in self._file_last:
                    self._file_last.clear()  # (then the next gap of each is told as it is)
                self._file_last[sender] = session
            else:
                self._file_last.pop(sender, None)
        return gap

    def _file_part(self, sender: str, data: bytes, trust: Trust, key: PublicKey, gap: FileGap) -> list[Event]:
        """A part of a file transfer: owes no receipt (transfers acknowledge their own
        parts), but is an exchange with ``sender`` all the same: first contact pins.
        Messages skipped before it: the transfers say whether each was a chunk of the
        file, and if not, that they are missing."""
        events: list[Event] = []
        if trust is not _CHANGED and self._directory.known_peers.exchanged(sender, key):
            events.append(KeyPinned(sender))
        if self.file_parts is None:
            log.info("dropped a part of a file transfer from %s: no transfers here", sender)
            return [MessagesMissing(sender, gap.skipped), *events] if gap.skipped else events
        return events + self.file_parts(sender, data, trust, gap)

    def _trust_in(self, sender: str, key: PublicKey) -> Trust:
        """``known_peers.state(sender, key)``, remembered until a pin changes."""
        known = self._directory.known_peers
        raw = bytes(key)
        cached = self._mail_trust.get(sender)
        if cached is not None and cached[0] == raw and cached[1] == known.generation:
            return cached[2]
        if len(self._mail_trust) >= _TRUST_CACHE:
            self._mail_trust.clear()
        trust = known.state(sender, key)
        self._mail_trust[sender] = (raw, known.generation, trust)
        return trust

    def _mail_session(self, sender: str, body: bytes) -> tuple[PeerSession | None, bool]:
        """The session a mailbox item from ``sender`` opens in, and whether it is a new one
        (a candidate: kept only once the item authenticates)."""
        keyring = self.keyring
        kept = keyring.peers.get(sender)
        if body[:1] == _PREKEY_TYPE and len(body) >= PREKEY_HEADER_SIZE:
            # The identity key it says it is from (X3DH with our prekeys proves it): most
            # often the one of the session kept with them, whose object serves.
            claimed = body[1:33]
            key = kept.identity_key if kept is not None and bytes(kept.identity_key) == claimed else None
            key = key or PublicKey(claimed)
        else:
            peer = self._directory.peers.get(sender)
            kept = kept or keyring.pending.get(sender)
            if peer is not None:
                key = peer.identity_key
            elif kept is not None:
                key = kept.identity_key
            else:
                return None, False
        session = keyring.get(sender, key)
        if session is not None:
            return session, False
        session = keyring.unaccepted(sender, key)
        if session is not None:
            return session, True
        if body[:1] == _PREKEY_TYPE:
            return keyring.candidate(sender, key), True
        return None, False
