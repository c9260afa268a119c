"""What the client sends: messages, each encrypted separately for every recipient and put
into ``send`` frames, and the receipts it owes for what arrived. Pure.

``Outbox`` checks a message, picks its recipients (nobody whose key changed and was not
accepted), seals one copy per recipient with that peer's session, splits the copies into
frames under the relay's limits, and hands the message to the ``DeliveryTracker``, which
follows it until it is delivered or reported NOT delivered.

A recipient we have no session with yet gets its copy once the relay has given us their
prekey bundle: the copy waits (numbered already), one ``fetch`` asks for every such
bundle of a message, and ``bundles`` starts the sessions and sends what waited, or
reports it NOT delivered, loudly if the relay handed out a bundle that is not theirs.

Someone away (not online: the relay keeps what is sent to them in their mailbox) gets
copies too: in the session kept with them, if its key is the one pinned, or else after
their bundle, whose key must be the one pinned (or, on first contact, is pinned). Such a
copy is numbered only once its session is known (``DeliveryTracker.numbered``).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator
from typing import NamedTuple, cast

import nacl.utils
from nacl.public import PublicKey

from e2echat.client.directory import Directory
from e2echat.client.events import Event, KeyPinned, SecurityWarning
from e2echat.client.pacing import Pacer
from e2echat.client.receipts import NOT_KNOWN, UNNUMBERED, DeliveryTracker
from e2echat.client.rooms import Rooms
from e2echat.client.status import encode_status
from e2echat.client.trust import KnownPeers, Trust
from e2echat.crypto.keyring import Keyring
from e2echat.crypto.session import (
    MAX_ACKS,
    MAX_TEXT,
    Kind,
    PeerSession,
    Prepared,
    prepare,
    random_nonces,
    seal_all,
    seal_copies,
)
from e2echat.crypto.x3dh import PrekeyBundle
from e2echat.errors import BadPrekeyBundle, BadPrekeySignature, CommandError, RemoteProtocolError
from e2echat.wire import messages as m
from e2echat.wire.binary import BODY_LENGTH
from e2echat.wire.codec import encode_message
from e2echat.wire.fastpath import encode_send, envelope_head, send_frame
from e2echat.wire.framing import MAX_FRAME, encode_frame
from e2echat.wire.grammar import FETCH_CHARGE, MAX_BODY, MAX_FETCH, MAX_ITEMS, is_utf8
from e2echat.wire.objects import Bundle

# What the envelopes of one frame may take, by envelope_size: the rest of MAX_FRAME is
# for the frame's own head (10 bytes), and to spare.
FRAME_BUDGET = MAX_FRAME - 4096
# Rooms whose recipients online are kept (Outbox.send_room): more than anyone is in.
MAX_ROOMS_FOUND = 1024
# Envelope heads kept (Outbox._head): the people one relay holds online, and then some.
MAX_HEADS = 20_000
# What one envelope costs in a frame besides its nick and its body: their lengths, 1 and
# 4 bytes (wire/binary.py).
ENVELOPE_OVERHEAD = 5
# A copy's body is its text and well under 1 KiB besides (headers, room name, tag): the
# bodies a message's envelopes are written with (``join_send``) stay below MAX_BODY.
assert MAX_TEXT + 1024 <= MAX_BODY

# Receipts go out about this often, at most (the rest wait for the next tick): each gap is
# drawn between 0.5 and 1.5 of it. A quiet chat gets its receipt at once; a busy room gets
# one receipt per sender a second, not one per message.
RECEIPT_INTERVAL = 1.0

# How much of a message its delivery report quotes, so the sender knows which one it was.
PREVIEW = 40

# Why a copy that waited for a prekey bundle was not sent.
NO_PREKEYS = "not sent: they have published no prekeys"
BAD_BUNDLE = "not sent: the relay gave keys for them that are not theirs"
GONE_BEFORE_KEYS = "not sent: they left before the relay gave their keys"
NOT_PINNED_KEY = "not sent: the relay gave another key for them than the one pinned"
NOT_ROOM_KEY = "not sent: the relay gave another key for them than the room's member list"


class _Waiting(NamedTuple):
    """A copy waiting for its recipient's prekey bundle."""

    message_id: int
    prepared: Prepared
    #: UNNUMBERED for someone away: numbered in the session their bundle starts
    counter: int
    #: the recipient's identity key when the copy was written: the one it is meant for
    #: (None: someone away we never pinned; their bundle's key, pinned on first contact)
    identity_key: PublicKey | None
    #: a room's copy: the key the room lists for them (the bundle must be for it)
    room_key: PublicKey | None = None


def receipt_gap() -> float:
    """How long until the next batch of receipts may go: 0.5 to 1.5 RECEIPT_INTERVAL, at
    random (from libsodium, as all randomness here; the spread has no security role)."""
    return RECEIPT_INTERVAL * (0.5 + nacl.utils.random(1)[0] / 256)


def envelope_size(to: str, body: bytes) -> int:
    """The room one envelope takes in a ``send`` frame, at most: the one rule for
    deciding what fits in a frame."""
    return len(to) + len(body) + ENVELOPE_OVERHEAD


def send_frames(message_id: int, envelopes: list[tuple[str, bytes]]) -> bytes:
    """``send`` frames carrying ``envelopes`` ((recipient, body) pairs), each frame under
    FRAME_BUDGET and the relay's item limit, and naming no recipient twice (the relay
    refuses such a frame)."""
    count = len(envelopes)
    if not count:
        return b""
    if (
        count <= MAX_ITEMS
        # the sum of envelope_size over the envelopes, without a call for each
        and sum([len(to) + len(body) for to, body in envelopes]) + count * ENVELOPE_OVERHEAD <= FRAME_BUDGET
        and len({to for to, _ in envelopes}) == count
    ):  # the usual case, a room message: everything fits in one frame
        return encode_frame(encode_send(message_id, envelopes))
    frames = bytearray()
    batch: list[tuple[str, bytes]] = []
    names: set[str] = set()
    size = 0
    for to, body in envelopes:
        this_size = envelope_size(to, body)
        full = size + this_size > FRAME_BUDGET or len(batch) == MAX_ITEMS
        if batch and (full or to in names):
            frames += encode_frame(encode_send(message_id, batch))
            batch, names, size = [], set(), 0
        batch.append((to, body))
        names.add(to)
        size += this_size
    frames += encode_frame(encode_send(message_id, batch))
    return bytes(frames)


def preview(text: str) -> str:
    return text if len(text) <= PREVIEW else text[: PREVIEW - 1] + "…"


class Outbox:
    """Messages and receipts out, as frames written to ``outgoing``.

    ``keyring`` holds our sessions; ``session_with`` gives the one to send in with a
    nick, if there is one (``sessions_with``: with each of a list of nicks); ``acks_due``
    is what arriving messages made us owe (``Sessions.acks_due``); ``relay`` (its
    address) names the relay in warnings."""

    def __init__(
        self,
        our_nick: str,
        directory: Directory,
        keyring: Keyring,
        session_with: Callable[[str], PeerSession | None],
        sessions_with: Callable[[list[str]], list[PeerSession | None]],
        tracker: DeliveryTracker,
        clock: Callable[[], float],
        outgoing: Pacer,
        *,
        wall_clock: Callable[[], float],
        notices: list[Event],
        message_ids: Iterator[int],
        acks_due: dict[str, list[int]],
        rooms: Rooms,
        relay: str = "",
    ) -> None:
        self._our_nick = our_nick
        self._directory = directory
        self._rooms = rooms
        self._keyring = keyring
        self._session_with = session_with
        self._sessions_with = sessions_with
        self._relay = relay
        #: nick -> copies waiting for their bundle
        self._awaiting: dict[str, list[_Waiting]] = {}
        #: nick -> fetches of their bundle the relay has not answered yet
        self._fetching: dict[str, int] = {}
        self._tracker = tracker
        self._clock = clock
        self._wall_clock = wall_clock
        self._outgoing = outgoing
        # What sending found to tell the user (first contacts), handed out with the next events.
        self._notices = notices
        self._message_ids = message_ids
        #: who the last room message left out because their key changed
        self.left_out: list[str] = []
        #: sender -> the counters of their messages we owe a receipt for
        self.acks_due = acks_due
        #: when the next batch of receipts may go (clock time)
        self.receipts_due_at = 0.0
        # nick -> envelope_head(nick), for the nicks we send to (see _head)
        self._heads: dict[str, bytes] = {}
        # room -> (what it was found under, its members online, those of them withheld)
        self._found: dict[str, tuple[tuple[str, int, KnownPeers, int], list[str], list[str]]] = {}

    # -- messages ---------------------------------------------------------------------------

    def send_room(
        self, room: str, text: str, only: Collection[str] | None = None, *, report_as: int = 0
    ) -> int:
        """Encrypt ``text`` for every other member of ``room`` (online, or away: theirs wait
        in their mailboxes) whose key is not in doubt (and among ``only``, if given).
        Returns the message id; ``left_out`` then names those left out. ``report_as``: the
        id its copies kept in mailboxes are reported under, if not its own (a line typed
        in an outage, sent later as this message)."""
        members = self._rooms.get(room)
        if members is None:
            raise CommandError(detail=f"you are not in {room} (/join {room}); the message was not sent")
        directory = self._directory
        peers = directory.peers
        others = members.others
        keys = members.members
        # Who of the room is online, and who of them is withheld, kept until the room's
        # members or their keys (its view), the directory or a pin change: found again for
        # every message, this was a tenth of a copy's Python.
        known = directory.known_peers
        stamp = (members.view, directory.version, known, known.generation)
        found = self._found.get(room)
        if found is None or found[0] != stamp:
            online = [nick for nick in others if nick in peers]
            # Every copy goes to the key the room lists (the one its safety number covers):
            # one the directory shows otherwise is not sent (belt and braces: Presence keeps
            # the two the same).
            if len(self._found) >= MAX_ROOMS_FOUND:
                self._found.clear()
            found = self._found[room] = (stamp, online, directory.withheld_among(online, keys))
        online, blocked = found[1], found[2]
        recipients = [nick for nick in online if nick not in blocked] if blocked else online
        if len(online) < len(others):  # (members away: theirs wait in their mailboxes)
            away, away_blocked = self._away_members([nick for nick in others if nick not in peers], keys)
            recipients, blocked = recipients + away, blocked + away_blocked
        if only is not None:
            recipients = [nick for nick in recipients if nick in only]
            blocked = [nick for nick in blocked if nick in only]
        self.left_out = list(blocked)
        if not recipients:
            if blocked:
                raise CommandError(
                    detail=f"not sent: the key of {', '.join(sorted(blocked))} changed and was not "
                    "accepted (see /verify and /trust)"
                )
            raise CommandError(detail=f"nobody else is in {room}; the message was not sent")
        everyone_online = len(online) == len(others)
        return self._send(
            text,
            Kind.ROOM,
            recipients,
            report_as,
            room=room,
            view=members.view,
            keys=keys,
            online=recipients if everyone_online else None,
        )

    def _away_members(self, away: list[str], keys: dict[str, PublicKey]) -> tuple[list[str], list[str]]:
        """(the members of a room away (``away``, sorted) that a room message goes to, those
        withheld because the session kept with them, or the key pinned for them, is under
        another key than the one pinned or than the room's, ``keys``)."""
        recipients, blocked = [], []
        for nick in away:
            session, pinned = self.kept(nick)
            kept = self._keyring.peers.get(nick)
            room_key = bytes(keys[nick])
            if session is None and kept is not None and kept.can_send:
                blocked.append(nick)  # a session under a key that is not the one pinned
            elif (pinned is not None and bytes(pinned) != room_key) or (
                kept is not None and bytes(kept.identity_key) != room_key
            ):
                blocked.append(nick)  # the room lists them under another key
            else:
                recipients.append(nick)
        return recipients, blocked

    def kept(self, nick: str) -> tuple[PeerSession | None, PublicKey | None]:
        """For ``nick``, away: the session kept with them to send in, if it is under the key
        pinned for them (or none is pinned); and the key a copy for them is meant for (the
        pinned one; None if none is: their bundle's, on first contact)."""
        pin = self._directory.known_peers.get(nick)
        session = self._keyring.peers.get(nick)
        if session is None or not session.can_send:
            return None, None if pin is None else pin.identity_key
        if pin is None or bytes(pin.identity_key) == bytes(session.identity_key):
            return session, session.identity_key
        return None, None if pin is None else pin.identity_key

    def send_private(self, recipient: str, text: str, *, report_as: int = 0) -> int:
        if recipient == self._our_nick:
            raise CommandError(detail="that is you; /msg sends to someone else")
        if recipient not in self._directory.peers:
            # Away, or unknown to the relay (its answer says which): see _send.
            session = self._keyring.peers.get(recipient)
            if session is not None and session.can_send and self.kept(recipient)[0] is None:
                raise CommandError(
                    detail=f"not sent: the session kept with {recipient} is not under the key pinned for "
                    f"them; nothing is sent to {recipient} until they are back online and you accept "
                    f"their key with /trust {recipient}"
                )
            return self._send(text, Kind.PRIVATE, [recipient], report_as)
        if self._directory.trust(recipient) is Trust.CHANGED:
            raise CommandError(
                detail=f"not sent: {recipient}'s key changed; nothing is sent to {recipient} until "
                f"you accept the new key with /trust {recipient}"
            )
        return self._send(text, Kind.PRIVATE, [recipient], report_as)

    def _send(
        self,
        text: str,
        kind: Kind,
        recipients: list[str],
        report_as: int = 0,
        *,
        room: str = "",
        view: str = "",
        keys: dict[str, PublicKey] | None = None,
        online: list[str] | None = None,
    ) -> int:
        """``keys``: a room's (nick -> identity key): a copy that waits for its recipient's
        bundle goes only if the bundle is for the key the room lists. ``online``: those of
        ``recipients`` online, if the caller knows (else they are looked up)."""
        if not text:
            raise CommandError(detail="empty message not sent")
        if not is_utf8(text):
            raise CommandError(detail="the message is not valid Unicode; not sent")
        if len(text.encode("utf-8")) > MAX_TEXT:
            raise CommandError(detail=f"message too long (the limit is {MAX_TEXT} bytes); not sent")
        message_id = next(self._message_ids)
        # The plaintext is packed once and the nonces drawn in one call (one a recipient,
        # used or not, in the sealer); per recipient there remain the ratchet's step and
        # the envelope.
        # A room message names its room and carries our view of its members (a private one
        # neither: no view to compare).
        prepared = prepare(text, kind, directory_hash=view, sent=int(self._wall_clock()), room=room)
        peers = self._directory.peers
        if online is None:
            online = [nick for nick in recipients if nick in peers]
        self._notices.extend(self._directory.exchanged(online))  # first contact pins the key
        counters: dict[str, int] = {}
        # Each copy's envelope, written as it is sealed: the frame is then one join. (First
        # the place of the frame's head, written once its size is known.)
        pieces: list[bytes] = [b""]
        fetch: list[str] = []
        sessions = self._sessions_with(recipients)  # (None for someone away)
        seal_copy, length = prepared.copies(len(recipients)), BODY_LENGTH.pack
        awaiting = self._awaiting
        # Those whose copy is sealed now, and their sessions: sealed below, in one call.
        sealed: list[str] = []
        sealing: list[PeerSession] = []
        pairs: Iterable[tuple[str, PeerSession | None]] = zip(recipients, sessions, strict=True)
        if None not in sessions and awaiting.keys().isdisjoint(recipients):
            # The usual message: a session with each, and no copy of theirs waiting for a
            # bundle (which this one would have to wait behind): the loop below, in C.
            sealed, sealing = recipients, cast("list[PeerSession]", sessions)
            pairs = ()
        for nick, session in pairs:
            identity_key: PublicKey | None = None
            if session is None:
                if nick in peers:
                    identity_key = peers[nick].identity_key
                else:  # away
                    session, identity_key = self.kept(nick)
            if session is not None:
                if nick not in awaiting or all(copy.message_id == 0 for copy in awaiting[nick]):
                    sealed.append(nick)
                    sealing.append(session)
                    continue
                # They started a session with us while an earlier copy waits for their
                # bundle: this one waits behind it, or it would reach them first.
                identity_key = session.identity_key
            if identity_key is not None:
                # No session yet: the copy is numbered now and sealed when their bundle comes.
                counter = self._keyring.peer(nick, identity_key).take_counter()
            else:
                counter = UNNUMBERED  # whose key it is, their bundle says
            counters[nick] = counter
            waiting = self._awaiting.setdefault(nick, [])
            # Asked for their bundle already, unless only a session we reach out with
            # waits (message 0, never given up): that fetch may never be answered.
            if all(copy.message_id == 0 for copy in waiting):
                fetch.append(nick)
            room_key = None if keys is None else keys[nick]  # their bundle must be for it
            waiting.append(_Waiting(message_id, prepared, counter, identity_key, room_key))
        # Each envelope's head (made once a nick) and its body's length (once a size: a
        # message's copies are mostly of one), from dictionaries: a call less for each.
        heads, lengths = self._heads, dict[int, bytes]()
        for nick, (counter, body) in zip(sealed, seal_copies(sealing, seal_copy), strict=True):
            counters[nick] = counter
            body_size = len(body)
            pieces += (
                heads.get(nick) or self._head(nick),
                lengths.get(body_size) or lengths.setdefault(body_size, length(body_size)),
                body,
            )
        count = len(sealed)
        size = sum(map(len, pieces))  # the sum of their envelope_size
        if not count:
            frames = b""
        elif (
            count <= MAX_ITEMS and size <= FRAME_BUDGET and len(counters) == len(recipients)  # no nick twice
        ):  # the usual case, a room message: everything fits in one frame
            frames = send_frame(message_id, count, pieces, size)
        else:
            frames = send_frames(message_id, list(zip(sealed, pieces[3::3], strict=True)))
        now = self._clock()
        # Its receipts are due counting from when it leaves, which may be later if we are
        # sending faster than the relay allows.
        leaves = self._outgoing.write(frames, now)
        self._fetch(fetch, now)
        self._tracker.sent(message_id, kind is Kind.PRIVATE, counters, leaves, preview(text), report_as)
        return message_id

    def _head(self, nick: str) -> bytes:
        """``envelope_head(nick)``, kept in ``_heads`` (as many as a relay holds online)."""
        if len(self._heads) >= MAX_HEADS:
            self._heads.clear()
        head = self._heads[nick] = envelope_head(nick)
        return head

    def _fetch(self, nicks: list[str], now: float) -> None:
        """Ask the relay for the bundles of ``nicks``."""
        for nick in nicks:
            self._fetching[nick] = self._fetching.get(nick, 0) + 1
        for start in range(0, len(nicks), MAX_FETCH):
            batch = tuple(nicks[start : start + MAX_FETCH])
            self._outgoing.write(encode_frame(encode_message(m.Fetch(batch))), now, FETCH_CHARGE * len(batch))

    def send_status(
        self, our_session_key: PublicKey, message: str, nicks: Collection[str] | None = None
    ) -> list[str]:
        """A STATUS saying ``message`` (client/status.py: it names our session key and
        each recipient's) to each of ``nicks`` online (all of them if not given) that we
        have a session with and whose key is not in doubt, under message id 0: nothing
        tracks it and no receipt comes back. Nobody is fetched for: an away message
        starts no session. Returns whom it went to."""
        peers = self._directory.peers
        recipients = [nick for nick in (peers if nicks is None else nicks) if nick in peers]
        sessions = self._sessions_with(recipients)
        sent = int(self._wall_clock())
        copies = [
            (
                session,
                prepare(
                    encode_status(our_session_key, peers[nick].session_key, message),
                    Kind.STATUS,
                    sent=sent,
                ),
            )
            for nick, session in zip(recipients, sessions, strict=True)
            # (Belt and braces, as for receipts: a changed key has no session to send in.)
            if session is not None and self._directory.trust(nick) is not Trust.CHANGED
        ]
        if copies:
            self._outgoing.write(send_frames(0, seal_all(copies)), self._clock())
        return [session.peer for session, _ in copies]

    # -- first contact: the relay's answer to a fetch ------------------------------------------

    def bundles(self, answer: m.Bundles) -> list[Event]:
        """Start a session with each bundle the relay gave, and send the copies that
        waited for it; report the others NOT delivered."""
        events: list[Event] = []
        sealed: dict[int, list[tuple[str, bytes]]] = {}
        for bundle in answer.bundles:
            waiting = self._answered(bundle.nick)
            if not waiting:
                continue  # what waited for it was given up
            peer = self._directory.peers.get(bundle.nick)
            if peer is not None or any(copy.message_id == 0 for copy in waiting):
                # Each copy is for the key its recipient had when it was written: if the
                # nick changed hands since, whoever has it now (and the bundle) is not who
                # it was for. (A session we reach out with is only for someone online.)
                key = b"" if peer is None else bytes(peer.identity_key)
                if peer is not None and self._directory.trust(bundle.nick) is Trust.CHANGED:
                    # Copies written while they were away are for the key pinned, not this one.
                    unpinned = [copy for copy in waiting if copy.identity_key is None]
                    events += self._not_sent(bundle.nick, unpinned, NOT_PINNED_KEY)
                    waiting = [copy for copy in waiting if copy.identity_key is not None]
            else:
                # Away: the relay's word for their key, which must be the one pinned.
                pin = self._directory.known_peers.get(bundle.nick)
                key = bytes(bundle.identity_key)
                if pin is not None and bytes(pin.identity_key) != key:
                    events += self._not_sent(bundle.nick, waiting, NOT_PINNED_KEY)
                    continue
                # And a room's copy is for the key the room lists (the one its safety
                # number covers). (Someone online: the bundle is checked against the
                # directory's key, which is the room's.)
                misfit = [copy.room_key is not None and bytes(copy.room_key) != key for copy in waiting]
                if any(misfit):
                    elsewhere = [copy for copy, bad in zip(waiting, misfit, strict=True) if bad]
                    events += self._not_sent(bundle.nick, elsewhere, NOT_ROOM_KEY)
                    waiting = [copy for copy, bad in zip(waiting, misfit, strict=True) if not bad]
            gone = [copy for copy in waiting if _meant_for(copy) not in (key, None)]
            events += self._not_sent(bundle.nick, gone, GONE_BEFORE_KEYS)
            waiting = [copy for copy in waiting if _meant_for(copy) in (key, None)]
            if not key or not waiting:
                continue
            identity_key = peer.identity_key if peer is not None else bundle.identity_key
            session = self._keyring.peer(bundle.nick, identity_key)
            try:
                # Checked even if they have started a session with us meanwhile (then
                # that one serves): a relay handing out a false bundle is news.
                started = _prekey_bundle(bundle)
                if not session.can_send:
                    session.start(started)
                else:
                    session.check(started)
            except BadPrekeyBundle as exc:
                events.append(self._bad_bundle(exc))
                events += self._not_sent(bundle.nick, waiting, BAD_BUNDLE)
                continue
            if self._directory.known_peers.exchanged(bundle.nick, identity_key):
                events.append(KeyPinned(bundle.nick))  # first contact with someone away
            nonces = random_nonces(len(waiting))
            for (message_id, prepared, counter, *_), nonce in zip(waiting, nonces, strict=True):
                if counter == UNNUMBERED:
                    counter = session.take_counter()
                    self._tracker.numbered(message_id, bundle.nick, counter)
                body = session.seal_numbered(prepared, counter, nonce)
                sealed.setdefault(message_id, []).append((bundle.nick, body))
        for nick in answer.missing:
            # Someone online has published no prekeys; someone away, the relay never knew.
            reason = NO_PREKEYS if nick in self._directory.peers else NOT_KNOWN
            events += self._not_sent(nick, self._answered(nick), reason)
        now = self._clock()
        for message_id, envelopes in sealed.items():
            self._outgoing.write(send_frames(message_id, envelopes), now)
        return events

    def _answered(self, nick: str) -> list[_Waiting]:
        """The relay answered one fetch for ``nick``: the copies that waited for it."""
        asked = self._fetching.get(nick, 0)
        if not asked:
            raise RemoteProtocolError(detail=f"relay answered for {nick}, whom we did not ask about")
        if asked == 1:
            del self._fetching[nick]
        else:
            self._fetching[nick] = asked - 1
        return self._awaiting.pop(nick, [])

    def given_up(self, message_id: int) -> None:
        """Message ``message_id`` is settled without its receipts (they timed out): its
        copies still waiting for a bundle wait no more, and a later message to the same
        people asks for their bundles again (the relay may have refused the fetch)."""
        for nick in list(self._awaiting):
            waiting = [copy for copy in self._awaiting[nick] if copy.message_id != message_id]
            if waiting:
                self._awaiting[nick] = waiting
            else:
                del self._awaiting[nick]

    def _bad_bundle(self, exc: BadPrekeyBundle) -> SecurityWarning:
        # The detail only: the error's own text says "nothing was sent" as this one does.
        if isinstance(exc, BadPrekeySignature):
            what = "its signed prekey is not signed by their identity key"
        else:
            what = exc.detail
        relay = f"the relay {self._relay}" if self._relay else "the relay"
        return SecurityWarning(
            f"{relay} gave keys for {exc.nick} that are not theirs ({what}): "
            f"it is lying or broken; nothing was sent to {exc.nick}"
        )

    def _not_sent(self, nick: str, waiting: list[_Waiting], reason: str) -> list[Event]:
        reports: list[Event] = []
        for message_id, *_ in waiting:
            reports += self._tracker.dropped(message_id, nick, reason)
        return reports

    # -- receipts ---------------------------------------------------------------------------

    def send_receipts(self, *, force: bool = False) -> None:
        """Acknowledge what arrived: one frame (a ``send`` with id 0) holding a receipt for
        each sender, at most about every RECEIPT_INTERVAL, so that receipts in a busy room
        cost a few frames a second, not one per message (they count against the relay's
        rate limit like anything else)."""
        if not self.acks_due:
            return
        now = self._clock()
        if not force and now < self.receipts_due_at:
            return  # the next tick sends them shortly
        # The next batch is due after 0.5 to 1.5 intervals, at random: in a busy room a
        # message reaches everyone at once, and fixed intervals would keep everyone's
        # receipts in step, a burst of work for every client (and the relay) at once.
        self.receipts_due_at = now + receipt_gap()
        receipts: list[tuple[PeerSession, Prepared]] = []  # to whoever we have a session with
        peers = self._directory.peers
        for nick, counters in self.acks_due.items():
            # Nothing goes to a nick whose key changed, not even a receipt. To someone away
            # it goes in the session kept with them (the relay keeps it in their mailbox).
            if nick in peers:
                session = self._session_with(nick)
                if session is not None and self._directory.trust(nick) is Trust.CHANGED:
                    session = None
            else:
                session = self.kept(nick)[0]
            if session is None:
                continue
            for start in range(0, len(counters), MAX_ACKS):
                acks = tuple(counters[start : start + MAX_ACKS])
                receipts.append((session, prepare("", Kind.RECEIPT, acks=acks)))
        self.acks_due.clear()
        self._outgoing.write(send_frames(0, seal_all(receipts)), now)

    def reach(self, nicks: set[str]) -> None:
        """Start a session with each of ``nicks`` (online, key not in doubt) that we have
        none with, by sending them an empty receipt in it: they wrote to us in a session we
        lost, and from their next message on they write in the new one."""
        fetch = []
        for nick in sorted(nicks):
            peer = self._directory.peers.get(nick)
            if peer is None or self._directory.trust(nick) is Trust.CHANGED or self._session_with(nick):
                continue
            if nick in self._awaiting:
                continue  # a session with them is on its way already
            counter = self._keyring.peer(nick, peer.identity_key).take_counter()
            empty = prepare("", Kind.RECEIPT)
            self._awaiting[nick] = [_Waiting(0, empty, counter, peer.identity_key)]  # 0: untracked
            fetch.append(nick)
        nicks.clear()
        self._fetch(fetch, self._clock())


def _meant_for(copy: _Waiting) -> bytes | None:
    return None if copy.identity_key is None else bytes(copy.identity_key)


def _prekey_bundle(bundle: Bundle) -> PrekeyBundle:
    """The relay's bundle as X3DH takes it (checked by ``PeerSession.start``)."""
    one_time = bundle.one_time[0] if bundle.one_time else None
    return PrekeyBundle(
        bundle.identity_key,
        bundle.signed_prekey.key,
        bundle.signed_prekey.id,
        bundle.signed_prekey.signature,
        None if one_time is None else one_time.key,
        None if one_time is None else one_time.id,
    )
