"""Who hears of whom: presence and room member lists, without any I/O.

Presence goes only to contacts, those online who share a room (``Rooms.contacts``):
``joined`` and ``left`` when someone comes and goes, ``entered`` and ``parted`` to a
room's members online when someone joins or leaves it. A member list (``members``) is
the whole room: those online, by their directory entries, and those away, by their
identity keys. Each costs the sizes of the rooms involved, never the number online.

``RelayCore`` writes every frame made here at once, in the order their causes came,
never behind a ``Persist``: so a member hears of someone's ``entered`` before anything
they send after it (the shell writes a connection's frames in order), and a client never
sees a room message from someone not yet in its member list, unless the relay lies. To
a connection still owed its lists (relay/paging.py) they go behind them, and nothing is
delivered to it meanwhile, so that holds there too.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from e2echat.relay.actions import ConnId
from e2echat.relay.kept import Kept
from e2echat.relay.paging import Paging
from e2echat.relay.registration import members_pages
from e2echat.relay.rooms import Change
from e2echat.relay.store import Op
from e2echat.wire.codec import encode_message
from e2echat.wire.fastpath import encode_entered, encode_parted, encode_peer
from e2echat.wire.framing import encode_frame
from e2echat.wire.messages import PeerJoined, PeerLeft
from e2echat.wire.objects import PeerInfo

Frames = list[tuple[ConnId, bytes]]


class Presence:
    def __init__(self, kept: Kept, online: dict[str, ConnId], paging: Paging) -> None:
        """``online`` (nick -> connection, for everyone registered) and ``paging`` are
        the core's own: read here, as it changes them."""
        self.kept = kept
        self.paging = paging
        self.rooms = kept.rooms
        self.online = online
        #: nick -> its directory entry as ``encode_peer`` gives it, for everyone online:
        #: encoded once, copied into every welcome, member list and ``entered``
        self.encoded: dict[str, bytes] = {}

    def entries(self, nicks: Iterable[str]) -> list[bytes]:
        """The directory entries of ``nicks`` (online), encoded."""
        encoded = self.encoded
        return [encoded[nick] for nick in nicks]

    def arrived(self, peer: PeerInfo, change: Change, contacts: Iterable[str]) -> Frames:
        """``peer`` registered, its memberships set (``change``), its ``contacts``
        welcomed: what the others are told, in order. Present in its rooms from now on
        (the core puts it ``online``)."""
        nick = peer.nick
        frames: Frames = []
        for room in change.parted:  # (it was away: nobody knew it online)
            frames += self._to_room(room, encode_frame(encode_parted(room, nick)), nick)
        frames += self._to(contacts, encode_frame(encode_message(PeerJoined(peer))))
        encoded = self.encoded[nick] = encode_peer(peer)
        for room in change.joined:
            frames += self._to_room(room, encode_frame(encode_entered(room, encoded)), nick)
        self.rooms.came(nick)
        return frames

    def members(self, nick: str, room: str) -> Iterator[bytes]:
        """The ``members`` frames of ``room`` for ``nick`` (online), as the room is now,
        each made as it is read."""
        rooms, encoded, kept = self.rooms, self.encoded, self.kept
        peers = [encoded[other] for other in rooms.online_in(room) if other != nick]
        return members_pages(room, peers, [kept.encoded_member(other) for other in rooms.away_in(room)])

    def left(self, nick: str) -> Frames:
        """``nick`` went offline (the core takes it out of ``online`` next): a ``left``
        to its contacts. Still a member of its rooms."""
        contacts = self.rooms.contacts(nick)
        self.rooms.went(nick)
        del self.encoded[nick]
        return self._to(contacts, encode_frame(encode_message(PeerLeft(nick))))

    def join(self, nick: str, room: str, now: float, address: str) -> tuple[list[Op], Frames]:
        """``nick`` (online, from ``address``) joins ``room`` (not in it, and
        ``Rooms.refusal`` let it): the ops, and an ``entered`` to its members online.
        (Its member list: ``members``.)"""
        frames = self._to_room(room, encode_frame(encode_entered(room, self.encoded[nick])), nick)
        return self.kept.join_room(nick, room, now, address), frames

    def part(self, nick: str, room: str) -> tuple[list[Op], Frames]:
        """``nick`` leaves ``room``: the ops, and a ``parted`` to its members online;
        nothing if it was not in it."""
        ops = self.kept.part_room(nick, room)
        return ops, self._to_room(room, encode_frame(encode_parted(room, nick)), nick) if ops else []

    def forgotten(self) -> Frames:
        """Each membership of an identity forgotten (away too long, or evicted) as a
        ``parted`` to the room's members online."""
        parted, self.kept.parted = self.kept.parted, []
        frames: Frames = []
        for room, nick in parted:
            frames += self._to_room(room, encode_frame(encode_parted(room, nick)), nick)
        return frames

    def clear(self) -> None:
        """Nobody is online (the relay is stopping)."""
        self.encoded.clear()
        self.rooms.all_gone()

    def _to(self, nicks: Iterable[str], frame: bytes) -> Frames:
        """``frame`` (one bytes object) to each of ``nicks``, online."""
        online = self.online
        return [(online[nick], frame) for nick in nicks]

    def _to_room(self, room: str, frame: bytes, but: str) -> Frames:
        """``frame`` to the members of ``room`` online, but ``but``, and but those whose
        list of ``room`` is still to be made (relay/paging.py): it will have the change."""
        nicks = (nick for nick in self.rooms.online_in(room) if nick != but)
        paging = self.paging
        if not paging:
            return self._to(nicks, frame)
        online = self.online
        return [(online[nick], frame) for nick in nicks if not paging.lists_due(online[nick], room)]
