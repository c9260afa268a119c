"""What a cluster relay's core does with room memberships across the relays, without any
I/O: ``RoomsAcross``, a part of ``ClusterCore`` (relay/cluster/core.py).

The other relays' memberships (``RemoteRooms``, as the ``rooms`` bucket says) are told to
this relay's clients as theirs are: ``entered`` and ``parted`` to a room's members online,
``joined`` and ``left`` only to contacts. The changes to the memberships this relay keeps
become requests to put or drop their keys (``mirror``); a member who registers here takes
its memberships along (``_adopt``). See relay/cluster/rooms.py for the bucket itself.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from e2echat.relay.actions import Action, ConnId, Persist, Write, keep
from e2echat.relay.cluster.rooms import (
    ClusterPresence,
    DropMembership,
    Membership,
    RemoteRooms,
    SaveMembership,
)
from e2echat.relay.kept import Kept
from e2echat.relay.paging import Paging
from e2echat.relay.presence import Presence
from e2echat.relay.store import ForgetMember, Member, Op, SaveMember
from e2echat.wire.codec import encode_message
from e2echat.wire.fastpath import encode_entered, encode_parted
from e2echat.wire.framing import encode_frame
from e2echat.wire.messages import PeerJoined

if TYPE_CHECKING:
    from e2echat.relay.cluster.core import Remote, Request

#: seconds a membership of another relay's member not known online waits for its member
#: to be (the two buckets are read apart); then its room's members here are sent the
#: room's list again, which has it (a member away: registered and gone meanwhile)
UNTOLD_WAIT = 2.0


class RoomsAcross:
    """``ClusterCore``'s part for rooms (a mixin: it works on the core's own state)."""

    if TYPE_CHECKING:  # what it uses of the core
        node: str
        kept: Kept
        online: dict[str, ConnId]
        remote: Remote
        remote_rooms: RemoteRooms
        requests: list[Request]
        _dropped: list[DropMembership]
        _paging: Paging
        _presence: Presence
        _now: float

        def _behind(self, actions: list[Action]) -> list[Action]: ...

        def _release(self, conn: ConnId) -> list[Action]: ...

    def remote_member(self, membership: Membership, now: float, *, starting: bool = False) -> list[Action]:
        """Another relay keeps ``membership`` now (the ``rooms`` bucket says so). New: an
        ``entered`` to the room's members online here (once its member is known online;
        until then it is listed as away). One this relay kept: its member registered
        there, and it is dropped here, quietly (the room's members know it already);
        but not one of a member online here, nor while ``starting`` (the bucket read
        through at start-up): that one is put again under this relay."""
        self._now = now
        room, nick = membership.room, membership.nick
        kept_here = self.kept.rooms.is_member(nick, room)
        if kept_here and (starting or nick in self.online):
            identity = self.kept.identities.get(nick)
            if identity is not None and nick in self.online:
                since = self.kept.rooms.members[room][nick]
                self.requests.append(
                    SaveMembership(self._membership(Member(room, nick, since), identity.identity_key))
                )
            return []
        if nick in self.online:
            return []  # not a member here: the news of its part, or older
        remote_rooms, presence = self.remote_rooms, self._presence
        assert isinstance(presence, ClusterPresence)
        if kept_here:
            remote_rooms.add(membership)
            return self._behind(keep(self.kept.part_room(nick, room), []))
        contacts = self._contacts(nick)
        before = remote_rooms.add(membership)
        if before is not None and (
            before.identity_key == membership.identity_key or (room, nick) in remote_rooms.untold
        ):
            return []  # moved between relays, or seen again: nothing new for its members
        entry = self.remote.peers.get(nick)
        if entry is None:
            remote_rooms.untold[(room, nick)] = now
            return []
        # Those it is a new contact of are told it is online, as a register tells them on
        # one relay (whether it registered or joined, the order the two buckets are read
        # in does not say), then everyone in the room that it joined it.
        joined = encode_frame(encode_message(PeerJoined(self.remote.info(nick))))
        news = [other for other in self.kept.rooms.online_in(room) if other not in contacts and other != nick]
        frames = presence.to(news, joined)
        frames += presence.to_room(room, encode_frame(encode_entered(room, entry[1])), nick)
        return self._behind([Write(frames)] if frames else [])

    def remote_member_gone(self, room: str, nick: str) -> list[Action]:
        """The key of ``nick``'s membership of ``room`` is gone from the ``rooms`` bucket:
        if another relay kept it, a ``parted`` to the room's members online here."""
        remote_rooms, presence = self.remote_rooms, self._presence
        assert isinstance(presence, ClusterPresence)
        untold = (room, nick) in remote_rooms.untold
        if remote_rooms.drop(room, nick) is None or untold:
            return []
        frames = presence.to_room(room, encode_frame(encode_parted(room, nick)), nick)
        return self._behind([Write(frames)] if frames else [])

    def _tell_untold(self, now: float) -> list[Action]:
        """The memberships still untold after ``UNTOLD_WAIT`` (their member never came
        online here) told: by the room's list, sent again to its members online."""
        untold = self.remote_rooms.untold
        late = [key for key, since in untold.items() if now - since >= UNTOLD_WAIT]
        if not late:
            return []
        paging, online, owed = self._paging, self.online, []
        for room, nick in late:
            del untold[(room, nick)]
            for member in self.kept.rooms.online_in(room):
                conn = online[member]
                if not paging.lists_due(conn, room):
                    paging.owe(conn, member, rooms=[room])
                    owed.append(conn)
        actions: list[Action] = []
        for conn in dict.fromkeys(owed):
            actions += self._release(conn)
        return actions

    def mirror(self, actions: Iterable[Action]) -> None:
        """The changes to memberships kept here among ``actions``, as requests to put or
        drop their keys in the ``rooms`` bucket (and those of identities forgotten)."""
        requests, identities = self.requests, self.kept.identities
        for action in actions:
            if not isinstance(action, Persist):
                continue
            for op in action.ops:
                if isinstance(op, SaveMember):
                    member = op.member
                    identity = identities.get(member.nick)
                    if identity is not None:
                        requests.append(SaveMembership(self._membership(member, identity.identity_key)))
                elif isinstance(op, ForgetMember):
                    requests.append(DropMembership(op.room, op.nick))
        if self._dropped:
            requests += self._dropped
            self._dropped.clear()

    def memberships(self) -> list[SaveMembership]:
        """Every membership kept here, to put under this relay's node (at start-up: the
        bucket read through, the ones it has under another relay are dropped here)."""
        rooms, identities = self.kept.rooms, self.kept.identities
        return [
            SaveMembership(Membership(room, nick, identities[nick].identity_key, since, self.node))
            for room, members in rooms.members.items()
            for nick, since in members.items()
            if nick in identities
        ]

    # -- helpers -------------------------------------------------------------------------------

    def _contacts(self, nick: str, *, untold: bool = False) -> dict[str, None]:
        """Those online here who share a room with ``nick`` (another relay's client) that
        they have been told it is in (or not yet, with ``untold``): by its memberships
        there, and by those still kept here (it moved, and the bucket's news of that is
        on its way)."""
        presence = self._presence
        assert isinstance(presence, ClusterPresence)
        found = presence.contacts(nick)
        if self.remote_rooms.untold and not untold:
            untold_rooms = self.remote_rooms.untold
            present = self.kept.rooms.present
            found = {}
            for room in self.remote_rooms.of(nick):
                if (room, nick) not in untold_rooms:
                    found.update(present.get(room, {}))
        found.update(self.kept.rooms.contacts(nick))
        found.pop(nick, None)
        return found

    def _adopt(self, nick: str) -> list[Action]:
        """``nick``'s memberships the other relays kept, kept here from now on."""
        ops: list[Op] = []
        rooms = self.kept.rooms
        for room in self.remote_rooms.of(nick):
            membership = self.remote_rooms.drop(room, nick)
            assert membership is not None
            if not rooms.is_member(nick, room):
                rooms.join(nick, room, membership.since, online=False)
                ops.append(SaveMember(Member(room, nick, membership.since)))
        return keep(ops, [])

    def _put_again(self, nick: str, rooms: Iterable[str]) -> None:
        """``nick``'s ``rooms`` kept here before it registered, put anew (under the key
        it registered with now), if it is still in them."""
        identity = self.kept.identities.get(nick)
        if identity is None:
            return
        members = self.kept.rooms.members
        for room in rooms:
            since = members.get(room, {}).get(nick)
            if since is not None:
                self.requests.append(
                    SaveMembership(self._membership(Member(room, nick, since), identity.identity_key))
                )

    def _membership(self, member: Member, identity_key: bytes) -> Membership:
        return Membership(member.room, member.nick, identity_key, member.last_seen, self.node)
