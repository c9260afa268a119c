"""The rooms the user is in, as the chat shows them: in the order they were joined (the
order of /rooms and of Alt+1..9), which one is current (where a typed line goes), and
how many lines each has that were not seen. Pure: the profile keeps ``names`` and
``current`` (cli.py), the client sends ``names`` with every registration.
"""

from __future__ import annotations

from collections.abc import Iterable

from e2echat.errors import CommandError
from e2echat.wire.grammar import DEFAULT_ROOM, MAX_ROOMS, ROOM_RULE, is_valid_room


class RoomList:
    """``names`` in the order joined; ``current`` is one of them, or None when in none."""

    def __init__(self, names: Iterable[str] = (DEFAULT_ROOM,), current: str | None = None) -> None:
        self.names: list[str] = []
        for name in names:
            if is_valid_room(name) and name not in self.names and len(self.names) < MAX_ROOMS:
                self.names.append(name)
        self.current: str | None = (
            current if current in self.names else (self.names[0] if self.names else None)
        )
        #: room -> lines shown there while it was not the current one
        self.unread: dict[str, int] = {}

    def __contains__(self, name: object) -> bool:
        return name in self.names

    def join(self, name: str) -> bool:
        """Join room ``name`` (or switch to it, if in it already): it becomes current.
        Whether it is new. ``CommandError`` for a bad name or one room too many."""
        if not is_valid_room(name):
            raise CommandError(detail=f"no room {name!r}: a room's name is {ROOM_RULE}")
        new = name not in self.names
        if new and len(self.names) >= MAX_ROOMS:
            raise CommandError(detail=f"you are in {MAX_ROOMS} rooms, the most there may be: /part one first")
        if new:
            self.names.append(name)
        self.switch(name)
        return new

    def part(self, name: str | None = None) -> str:
        """Leave room ``name`` (the current one if None): the room left. The current room
        is then the one before it in the list (or after, or none: parting the last room
        leaves you in none)."""
        name = name or self.current
        if name is None:
            raise CommandError(detail="you are in no room: /join #NAME joins one")
        if name not in self.names:
            raise CommandError(detail=f"you are not in {name}")
        index = self.names.index(name)
        self.names.remove(name)
        self.unread.pop(name, None)
        if self.current == name:
            self.current = self.names[max(index - 1, 0)] if self.names else None
        return name

    def switch(self, name: str) -> None:
        """Make ``name`` (one of ours) current: its lines are seen."""
        self.current = name
        self.unread.pop(name, None)

    def switch_to(self, number: int) -> str | None:
        """Make the ``number``-th room (from 1, in /rooms order) current; None if there is
        no such room."""
        if not 1 <= number <= len(self.names):
            return None
        self.switch(self.names[number - 1])
        return self.current

    def step(self, by: int) -> str | None:
        """Make the next (``by`` 1) or previous (-1) room current, round the end."""
        if not self.names:
            return None
        index = self.names.index(self.current) if self.current in self.names else -by
        self.switch(self.names[(index + by) % len(self.names)])
        return self.current

    def shown(self, room: str) -> None:
        """A line was shown in ``room``: unread until the room is current."""
        if room != self.current and room in self.names:
            self.unread[room] = self.unread.get(room, 0) + 1
