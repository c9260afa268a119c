"""What the relay keeps beyond its connections, and every change to it as an ``Op``. Pure
(no I/O).

- Known identities: each nick that has registered here, with the identity key it last
  used and when it was last online. Someone known can be written to while away: the
  message waits in their mailbox (relay/mailboxes.py), and their prekey bundle
  (relay/prekeys.py) is handed out for first contact.
- Room memberships (relay/rooms.py): each nick's rooms are the ones its register named
  (its profile's word), then as it joins and parts. A member away stays one, and its
  mailbox gets the room's messages, until its identity is forgotten.

A nick whose mailbox holds messages cannot be registered with another identity key (see
``reserved_until``): they are for the old key's owner, and a stranger must not be able
to wipe them by taking the nick. Once they are gone (delivered or expired), another key
may take it; the notices left for the old key's owner go with it, silently.
An identity away longer than ``identity_ttl`` with an empty mailbox is forgotten, and so
is the one offline longest when there are more than ``bundles``.

Each method returns the ops that keep its changes (relay/store.py), in order; the nicks
given new mailbox items meanwhile (notices) are collected in ``notified`` for the core
to hand them to those online, and the rooms a forgotten identity was in, in ``parted``,
for the core to tell their members online.
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Sequence

from nacl.public import PublicKey

from e2echat.relay.limits import Limits
from e2echat.relay.mailboxes import Mailboxes
from e2echat.relay.prekeys import Handed, PrekeyDirectory
from e2echat.relay.rooms import Change, Rooms
from e2echat.relay.store import (
    MAIL,
    Dequeue,
    ForgetIdentity,
    ForgetMember,
    Identity,
    MailItem,
    Member,
    Op,
    SaveBundle,
    SaveIdentity,
    SaveMember,
    Snapshot,
)
from e2echat.wire.fastpath import encode_member
from e2echat.wire.objects import Member as AwayMember
from e2echat.wire.objects import OneTimePrekey, SignedPrekey


class Kept:
    def __init__(self, limits: Limits, snapshot: Snapshot | None = None, first_seq: int = 0) -> None:
        self.limits = limits
        #: nick -> its identity, least recently seen first
        self.identities: dict[str, Identity] = {}
        #: who is in which room, and who of them is online
        self.rooms = Rooms(limits.max_rooms, limits.rooms_per_address)
        #: nick -> its ``Member`` as ``encode_member`` gives it (what ``members`` frames
        #: list of those away), made once per identity key rather than for every list
        self._encoded: dict[str, bytes] = {}
        self.prekeys = PrekeyDirectory(limits)
        self.mailboxes = Mailboxes(limits, max(first_seq, snapshot.next_seq if snapshot else 0))
        #: nicks given new mailbox items since the core last looked
        self.notified: set[str] = set()
        #: (room, nick) for each membership of an identity forgotten since the core last looked
        self.parted: list[tuple[str, str]] = []
        #: registrations counted so far (``Identity.registered``)
        self._registrations = 0
        if snapshot is not None:
            self._restore(snapshot)

    def _restore(self, snapshot: Snapshot) -> None:
        for identity in sorted(snapshot.identities, key=lambda identity: identity.last_seen):
            self.identities[identity.nick] = identity
        for member in sorted(snapshot.members, key=lambda member: member.last_seen):
            if member.nick in self.identities:  # nobody is online yet
                self.rooms.join(member.nick, member.room, member.last_seen, online=False)
        bundles = {bundle.nick: bundle for bundle in snapshot.bundles}
        # In the order they last registered, as the directory keeps them (it drops the
        # least recent first); a store that did not count registrations: last seen.
        for identity in sorted(self.identities.values(), key=lambda identity: identity.registered):
            if identity.nick in bundles:
                self.prekeys.restore(identity.nick, identity.identity_key, bundles[identity.nick])
        self._registrations = max((identity.registered for identity in self.identities.values()), default=0)
        self.mailboxes.restore(item for item in snapshot.mail if item.to in self.identities)

    def knows(self, nick: str) -> bool:
        return nick in self.identities

    def reserved_until(self, nick: str, identity_key: bytes) -> float | None:
        """If ``nick`` may not be registered with ``identity_key`` because messages wait
        for it under another key: when the last of them expires."""
        known = self.identities.get(nick)
        if known is None or known.identity_key == identity_key:  # public keys: nothing to time
            return None
        return self.mailboxes.messages_until(nick)

    def encoded_member(self, nick: str) -> bytes:
        """``nick`` (known) as ``encode_member`` gives it, for a room's ``members`` list."""
        encoded = self._encoded.get(nick)
        if encoded is None:
            key = PublicKey(self.identities[nick].identity_key)
            encoded = self._encoded[nick] = encode_member(AwayMember(nick, key))
        return encoded

    def learn(self, identity: Identity) -> None:
        """``identity`` as another relay of a cluster keeps it (nothing to keep here: it is
        kept already): someone away may be written to through any relay. A nick whose
        mailbox here holds messages for another key keeps that key (``reserved_until``)."""
        nick = identity.nick
        known = self.identities.get(nick)
        if known is not None and known.identity_key != identity.identity_key:  # public keys
            if self.mailboxes.messages_until(nick) is not None:
                return
            self._encoded.pop(nick, None)
            self.prekeys.forget(nick)  # the old key's bundle is no one's now
        self.identities.pop(nick, None)
        self.identities[nick] = identity  # seen most recently

    # -- changes -------------------------------------------------------------------------------

    def join(
        self, nick: str, identity_key: PublicKey, signed: SignedPrekey, now: float
    ) -> tuple[int, list[Op]]:
        """``nick`` registered with ``identity_key`` and ``signed``: how many one-time
        prekeys the relay holds for it, and the ops. With another key than before, only
        once no message waits for it (``reserved_until``)."""
        key = bytes(identity_key)
        ops: list[Op] = []
        known = self.identities.get(nick)
        if known is not None and known.identity_key != key:  # public keys: nothing to time
            ops += self._empty(nick)
        count = self.prekeys.register(nick, identity_key, signed)
        self._registrations += 1
        ops += self._seen(nick, key, now, self._registrations)
        ops.append(SaveBundle(self.prekeys.saved(nick)))
        ops += self._evicted(now)
        self.mailboxes.connected(nick)
        return count, ops

    def leave(self, nick: str, now: float, *, evict: bool = True) -> list[Op]:
        """``nick`` went offline: its bundle and mailbox stay, for those who write to it.
        ``evict=False`` for the relay stopping (see ``PrekeyDirectory.leave``)."""
        self.prekeys.leave(nick, evict=evict)
        known = self.identities[nick]
        ops = self._seen(nick, known.identity_key, now, known.registered)
        return ops + self._evicted(now) if evict else ops

    def set_rooms(self, nick: str, rooms: Sequence[str], now: float, address: str) -> tuple[Change, list[Op]]:
        """``nick`` (registering from ``address``: not online yet) is in exactly ``rooms``
        from now (each named once): what changed, and the ops. A new room the relay has
        no place for (``Limits.max_rooms``, ``Limits.rooms_per_address``) is left out,
        and said so in ``refused``."""
        wanted = set(rooms)
        change = Change()
        ops: list[Op] = []
        for room in self.rooms.of(nick):
            if room not in wanted:  # parted first: that may leave a place for a new room
                ops += self.part_room(nick, room)
                change.parted.append(room)
        for room in rooms:
            if self.rooms.is_member(nick, room):
                continue
            refused = self.rooms.refusal(nick, room, address)
            if refused is None:
                ops += self.join_room(nick, room, now, address, online=False)
                change.joined.append(room)
            else:
                change.refused.append(room)
                change.why = refused
        return change, ops

    def join_room(self, nick: str, room: str, now: float, address: str, *, online: bool = True) -> list[Op]:
        """``nick`` (from ``address``) joins ``room`` (it is not in it, and
        ``rooms.refusal`` let it)."""
        self.rooms.join(nick, room, now, online=online, address=address)
        return [SaveMember(Member(room, nick, now))]

    def part_room(self, nick: str, room: str) -> list[Op]:
        """``nick`` leaves ``room``; nothing if it was not in it."""
        return [ForgetMember(room, nick)] if self.rooms.part(nick, room) else []

    def publish(
        self, nick: str, signed: SignedPrekey, one_time: Sequence[OneTimePrekey], *, replace: bool
    ) -> tuple[int, list[Op]]:
        count = self.prekeys.publish(nick, signed, one_time, replace=replace)
        return count, [SaveBundle(self.prekeys.saved(nick))]

    def fetch(self, requester: str, nicks: Sequence[str]) -> tuple[Handed, list[Op]]:
        """As ``PrekeyDirectory.fetch``, and the bundles that gave a one-time prekey away."""
        handed = self.prekeys.fetch(requester, nicks)
        ops: list[Op] = [
            SaveBundle(self.prekeys.saved(bundle.nick)) for bundle in handed.answer.bundles if bundle.one_time
        ]
        return handed, ops

    def sweep(self, now: float, online: Container[str]) -> list[Op]:
        """Drop what has outlived its time to live: mailbox items (each message's sender
        told, if still known), then identities with nothing waiting for them (and their
        memberships with them)."""
        ops: list[Op] = []
        dequeues, gone = self.mailboxes.expire(now, online)
        ops += dequeues
        ops += self._notices(gone, "expired", now)
        seen = ((nick, identity.last_seen) for nick, identity in self.identities.items())
        for nick in self._stale(seen, now - self.limits.identity_ttl, online):
            if not self.mailboxes.count(nick):
                ops += self._forget(nick, now)
        return ops

    # -- helpers -------------------------------------------------------------------------------

    @staticmethod
    def _stale(seen: Iterable[tuple[str, float]], cutoff: float, online: Container[str]) -> list[str]:
        """The nicks last seen at ``cutoff`` or before and not online, from (nick, last
        seen) pairs least recent first: the walk stops at the first one seen since."""
        stale = []
        for nick, last_seen in seen:
            if last_seen > cutoff:
                break
            if nick not in online:
                stale.append(nick)
        return stale

    def _seen(self, nick: str, key: bytes, now: float, registered: int) -> list[Op]:
        identity = Identity(nick, key, now, registered)
        # Out and in again: it stays in the order they were last seen.
        known = self.identities.pop(nick, None)
        if known is not None and known.identity_key != key:  # public keys: nothing to time
            self._encoded.pop(nick, None)
        self.identities[nick] = identity
        return [SaveIdentity(identity)]

    def _evicted(self, now: float) -> list[Op]:
        ops: list[Op] = []
        for nick in self.prekeys.take_evicted():
            ops += self._forget(nick, now)
        return ops

    def _forget(self, nick: str, now: float) -> list[Op]:
        """Forget ``nick``: identity, bundle, membership and mailbox. Its messages' senders
        are told ``evicted``: only the ``bundles`` bound forgets an identity whose mailbox
        holds any (``identity_ttl`` waits for it to empty)."""
        gone = self.mailboxes.drop(nick)
        self.identities.pop(nick, None)
        self._encoded.pop(nick, None)
        # Its memberships go with its identity (ForgetIdentity, for the store).
        self.parted += ((room, nick) for room in self.rooms.forget(nick))
        self.prekeys.forget(nick)
        return [ForgetIdentity(nick), *self._notices(gone, "evicted", now)]

    def _empty(self, nick: str) -> list[Op]:
        """Drop the notices left for ``nick``'s previous key's owner (no message is left:
        see ``reserved_until``)."""
        gone = self.mailboxes.drop(nick)
        assert all(item.kind != MAIL for item in gone), "a reserved nick was taken"
        return [Dequeue(nick, upto=gone[-1].seq)] if gone else []

    def _notices(self, gone: list[MailItem], reason: str, now: float) -> list[Op]:
        """A notice to the sender of each message in ``gone`` who is still known. Notices
        themselves go silently: whoever they were for learns nothing from a notice's notice."""
        ops: list[Op] = []
        for item in gone:
            if item.kind == MAIL and item.sender in self.identities:
                ops += self.mailboxes.put_notice(item.sender, item.to, item.message_id, reason, now)
                self.notified.add(item.sender)
        return ops
