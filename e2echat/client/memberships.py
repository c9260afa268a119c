"""Each of our rooms' members as we last saw them, kept across connections. Pure.

``ClientCore`` is made afresh for each connection, and takes the first ``Members`` of each
room as it comes: without a memory, a reader the relay added while we were away (or
between two connections) would change the room's safety number unsaid. ``LastMembers``
outlives the connections (the ``Client`` holds it, and the profile's sealed sessions file
keeps it between runs, as rows like ``PendingDeliveries``'); the first list of each room
on each connection is compared with it, and what changed is said.
"""

from __future__ import annotations

from collections.abc import Mapping

from nacl.public import PublicKey

from e2echat.wire.grammar import is_valid_nick, is_valid_room

#: the prefix of the rows (one per room) in the sessions file
MEMBERS_ROW = "room-members:"
_KEY_SIZE = 32
# Said "and N others" beyond this many changes in one room: one line, not ten thousand.
SAID_AT_MOST = 8


class LastMembers:
    """room -> nick -> identity key (bytes), ours included, as last seen."""

    def __init__(self) -> None:
        self._rooms: dict[str, dict[str, bytes]] = {}
        self._changed: set[str] = set()

    def __contains__(self, room: object) -> bool:
        return room in self._rooms

    def members(self, room: str) -> dict[str, bytes]:
        return dict(self._rooms.get(room, {}))

    def listed(self, room: str, members: Mapping[str, PublicKey]) -> list[str]:
        """The relay's whole list of ``room`` on this connection: what changed since we last
        saw it ("mallory joined", "bob's key changed", "carol left"); nothing if we never
        saw it. It is the room as we see it from now on."""
        now = {nick: bytes(key) for nick, key in members.items()}
        before = self._rooms.get(room)
        self._rooms[room] = now
        self._changed.add(room)
        if before is None:
            return []
        whys = [f"{nick} joined" for nick in sorted(now.keys() - before.keys())]
        whys += [
            f"{nick}'s key changed"
            for nick in sorted(now.keys() & before.keys())
            if now[nick] != before[nick]
        ]
        whys += [f"{nick} left" for nick in sorted(before.keys() - now.keys())]
        if len(whys) > SAID_AT_MOST:
            whys = [*whys[:SAID_AT_MOST], f"and {len(whys) - SAID_AT_MOST:,} more changes"]
        return whys

    def add(self, room: str, nick: str, key: PublicKey) -> None:
        """``nick`` is in ``room`` with ``key`` (joined, or rekeyed)."""
        members = self._rooms.get(room)
        if members is not None:
            members[nick] = bytes(key)
            self._changed.add(room)

    def remove(self, room: str, nick: str) -> None:
        members = self._rooms.get(room)
        if members is not None and members.pop(nick, None) is not None:
            self._changed.add(room)

    def forget(self, room: str) -> None:
        """We left ``room``: whoever is in it when we come back is news to no one."""
        if self._rooms.pop(room, None) is not None:
            self._changed.add(room)

    # -- rows, for the sessions file ------------------------------------------------------------

    @property
    def changed(self) -> bool:
        return bool(self._changed)

    def changes(self) -> dict[str, bytes | None]:
        """The rows changed since the last call (None: delete)."""
        rows: dict[str, bytes | None] = {}
        for room in self._changed:
            members = self._rooms.get(room)
            rows[MEMBERS_ROW + room] = None if members is None else _encode(members)
        self._changed.clear()
        return rows

    @classmethod
    def from_rows(cls, rows: Mapping[str, bytes]) -> LastMembers:
        """The rooms kept in ``rows`` (a row that does not read is skipped: the next list of
        that room is then taken as it comes, as on a first run)."""
        last = cls()
        for name, value in rows.items():
            room = name[len(MEMBERS_ROW) :]
            if name.startswith(MEMBERS_ROW) and is_valid_room(room):
                members = _decode(value)
                if members is not None:
                    last._rooms[room] = members
        return last


def _encode(members: dict[str, bytes]) -> bytes:
    """Each member as key (32 bytes), nick length (1 byte), nick, sorted by nick."""
    return b"".join(key + bytes([len(nick)]) + nick.encode("ascii") for nick, key in sorted(members.items()))


def _decode(data: bytes) -> dict[str, bytes] | None:
    members: dict[str, bytes] = {}
    at = 0
    while at < len(data):
        if at + _KEY_SIZE + 1 > len(data):
            return None
        key = data[at : at + _KEY_SIZE]
        size = data[at + _KEY_SIZE]
        start = at + _KEY_SIZE + 1
        raw = data[start : start + size]
        at = start + size
        try:
            nick = raw.decode("ascii")
        except UnicodeDecodeError:
            return None
        if len(raw) != size or not is_valid_nick(nick):
            return None
        members[nick] = key
    return members
