"""The relay's word on who is in which of our rooms, and who of our contacts is online:
``members``, ``entered``, ``parted``, ``peer_joined`` and ``peer_left`` into the directory,
the rooms and events. Pure.

A contact is someone who shares a room with us: the relay announces them (with their
keys) when they come online, when they join one of our rooms, and in a room's member
list. Someone who leaves our last shared room is no contact any more and leaves the
directory quietly (no "went offline": they may be online still); a room's member who
goes offline stays a member (their copies wait in their mailbox). Any change of who is
in a room, or of a member's key, changes the room's safety number, and is said: the
``RoomChanged`` of a join or a part right after its ``RoomEntered`` or ``RoomParted``
(ui/arrivals.py says the two in one line, and only when they come so).
"""

from __future__ import annotations

from collections.abc import Callable

from nacl.public import PublicKey

from e2echat.client.directory import Directory
from e2echat.client.events import Event, RoomChanged, RoomEntered, RoomListed, RoomParted, SecurityWarning
from e2echat.client.memberships import LastMembers
from e2echat.client.rooms import Rooms
from e2echat.client.sessions import Sessions
from e2echat.errors import RemoteProtocolError
from e2echat.wire.objects import Member, PeerInfo


class Presence:
    """``new_contact`` hears of each nick that becomes a contact by a room (not by coming
    online: ``peer_joined``'s caller knows that one)."""

    def __init__(
        self,
        our_nick: str,
        rooms: Rooms,
        directory: Directory,
        sessions: Sessions,
        new_contact: Callable[[str], None] = lambda nick: None,
        last: LastMembers | None = None,
    ) -> None:
        self._our_nick = our_nick
        self._rooms = rooms
        self._directory = directory
        self._sessions = sessions
        self._new_contact = new_contact
        #: each room's members as last seen, on an earlier connection too
        self._last = last if last is not None else LastMembers()

    def _contact(self, peer: PeerInfo) -> list[Event]:
        """``peer`` is online and shares a room with us: in the directory, quietly."""
        peers = self._directory.peers
        if peer.nick == self._our_nick or peers.get(peer.nick) == peer:
            return []
        new = peer.nick not in peers
        events = self._sessions.add(peer)
        if new and peer.nick in peers:
            self._new_contact(peer.nick)
        return events + self._rekeyed(peer)

    def _rekeyed(self, peer: PeerInfo) -> list[Event]:
        """The directory shows ``peer``: every room they are in now has them under the key
        it shows (one source of truth for the key copies are encrypted to, and the one
        the safety numbers are made from)."""
        shown = self._directory.peers.get(peer.nick)
        if shown is None:
            return []
        events: list[Event] = []
        for room in self._rooms.rekeyed(peer.nick, shown.identity_key):
            self._last.add(room, peer.nick, shown.identity_key)
            if self._rooms.rooms[room].listed:
                events.append(RoomChanged(room, f"{peer.nick}'s key changed"))
        return events

    def _disagrees(self, nick: str, key: PublicKey) -> bool:
        """Whether the directory shows ``nick`` under another identity key than ``key``."""
        shown = self._directory.peers.get(nick)
        return shown is not None and bytes(shown.identity_key) != bytes(key)

    def members(
        self, room: str, online: tuple[PeerInfo, ...], away: tuple[Member, ...], more: bool
    ) -> list[Event]:
        """A page of the relay's list of ``room``'s members; once the last is in, the room's
        members are these (and us)."""
        if room not in self._rooms:
            return []  # parted while it was on its way
        events: list[Event] = []
        for peer in online:
            events += self._contact(peer)
        listed_before = self._rooms.rooms[room].listed
        # The view, not the safety number, says whether the list changed anything: it
        # changes with the same members and keys, and costs nothing to read.
        view = self._rooms.rooms[room].view
        # Each key online as the directory's own object where it is the same key: a room
        # message compares every recipient's two (Directory.withheld_among), and the same
        # object is the quick answer.
        shown = self._directory.peers
        members = [(peer.nick, _same_key(shown.get(peer.nick), peer)) for peer in online]
        members += [(member.nick, member.identity_key) for member in away]
        listed = self._rooms.listed(room, members, more)
        if listed is None:
            return events
        for nick, key in listed.members.items():
            if nick != self._our_nick and self._disagrees(nick, key):
                # Online under one key and listed under another (away, or a session key
                # the directory refused): which one would the number cover?
                raise RemoteProtocolError(
                    detail=f"the relay listed {nick} in {room} under another identity key than it "
                    "announced them with; disconnected"
                )
        away_changes = self._last.listed(room, listed.members)
        if listed_before and listed.view != view:
            events.append(RoomChanged(room, "the relay's list of its members changed"))
        elif not listed_before and away_changes:
            # The first list on this connection: a reader added while we were away (or
            # between two connections) is said as any other.
            events.append(RoomChanged(room, f"while you were away, {', '.join(away_changes)}"))
        if not listed.asked:
            return events  # after registering: nothing new to say
        listed.asked = False
        others = listed.others
        here = tuple(nick for nick in others if nick in self._directory.peers)
        gone = tuple(nick for nick in others if nick not in self._directory.peers)
        return [*events, RoomListed(room, here, gone)]

    def entered(self, room: str, peer: PeerInfo) -> list[Event]:
        """``peer`` joined ``room``."""
        joined = self._rooms.get(room)
        if joined is None or peer.nick == self._our_nick:
            return []
        events = self._contact(peer)
        if self._disagrees(peer.nick, peer.identity_key):
            # The directory refused the announcement (said in ``events``): it keeps its key.
            return [
                *events,
                SecurityWarning(
                    f"the relay said {peer.nick} joined {room} under another identity key than it "
                    "announced them with; ignored"
                ),
            ]
        new = peer.nick not in joined.members
        if not joined.add(peer.nick, peer.identity_key):
            return events  # a member already, with that key: nothing new
        self._last.add(room, peer.nick, peer.identity_key)
        if new:
            events.append(RoomEntered(room, peer.nick))
        if joined.listed:
            events.append(RoomChanged(room, f"{peer.nick} joined" if new else f"{peer.nick}'s key changed"))
        return events

    def parted(self, room: str, nick: str) -> list[Event]:
        """``nick`` left ``room``: no contact any more if it was the last room we shared."""
        joined = self._rooms.get(room)
        if joined is None or not joined.remove(nick):
            return []
        self._last.remove(room, nick)
        events: list[Event] = [RoomParted(room, nick)]
        if joined.listed:
            events.append(RoomChanged(room, f"{nick} left"))
        self._drop_unless_shared([nick])
        return events

    def we_parted(self, room: str) -> None:
        """We left ``room``: its members we share no other room with are no contacts now."""
        parted = self._rooms.part(room)
        self._last.forget(room)
        if parted is not None:
            self._drop_unless_shared(parted.others)

    def _drop_unless_shared(self, nicks: list[str]) -> None:
        for nick in nicks:
            if nick in self._directory.peers and not self._rooms.shared_with(nick):
                # Quietly: they may well be online still. Their session key is not
                # retired: they are still connected with it, and may join a room of ours.
                self._directory.remove(nick, had_session=False)

    def peer_joined(self, peer: PeerInfo) -> list[Event]:
        """A contact came online (``PeerJoined``)."""
        events = self._sessions.joined(peer)
        if peer.nick not in self._directory.peers:
            return events  # refused (a session key already used)
        return events + self._rekeyed(peer)

    def peer_left(self, nick: str) -> list[Event]:
        """A contact went offline (``PeerLeft``): a member of our rooms still, away."""
        return self._sessions.left(nick)


def _same_key(shown: PeerInfo | None, peer: PeerInfo) -> PublicKey:
    """``peer``'s identity key, as the object ``shown`` (the directory's entry) holds if it
    is the same key."""
    if shown is not None and bytes(shown.identity_key) == bytes(peer.identity_key):
        return shown.identity_key
    return peer.identity_key
