"""/join, /part, /rooms, /names and switching rooms: the chat's side of rooms. Pure.

Which rooms the user is in, and which is current, is the ``RoomList`` (ui/roomlist.py),
kept in the profile after every change; who is in each is the client's (client/rooms.py),
as the relay lists them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from e2echat.client.core import ClientCore
from e2echat.client.trust import Trust
from e2echat.errors import CommandError, E2EChatError
from e2echat.ui.render import HelpText, Notice, Problem, Shown, members_text
from e2echat.ui.roomlist import RoomList


class Rooming(Protocol):
    """What the chat's rooms need of its way to the relay (``Link``)."""

    @property
    def core(self) -> ClientCore: ...
    def join(self, room: str) -> None: ...
    def part(self, room: str) -> None: ...


class Places:
    """``rooms`` are the user's; ``link`` joins and parts them at the relay; ``say`` shows
    an event to the user; ``keep`` (names, current) keeps them in the profile, if there is
    one; ``who_entry`` says a member as /who does."""

    def __init__(
        self,
        rooms: RoomList,
        link: Callable[[], Rooming],
        say: Callable[[Shown], None],
        keep: Callable[[list[str], str | None], None] | None,
        who_entry: Callable[[str, Trust], str],
    ) -> None:
        self.rooms = rooms
        self._link = link
        self._say = say
        self._keep = keep
        self._who_entry = who_entry
        # Rooms the relay refused on this run: out of the list, still in the profile.
        self._refused: list[str] = []

    def join(self, room: str) -> None:
        """/join #ROOM: joined (at the relay too) if new, and current either way. A room
        asked for whose members have not come (the answer was lost, or is slow) is asked
        for again."""
        if room in self._refused:
            self._refused.remove(room)
        if self.rooms.join(room):
            self._link().join(room)
            self._kept()
            self._say(Notice(f"you joined {room}; typed lines go there"))
            return
        joined = self._link().core.room(room)
        if joined is None or not joined.listed:
            self._link().join(room)
        self._switched()

    def part(self, room: str | None) -> None:
        """/part [#ROOM]: left (at the relay too); the current one if none is named."""
        parted = self.rooms.part(room)
        self._link().part(parted)
        self._kept()
        now = self.rooms.current
        where = f"typed lines go to {now}" if now else "you are in no room now: /join #NAME joins one"
        self._say(Notice(f"you left {parted}; {where}"))

    def switch_to(self, number: int) -> None:
        """Alt+1..9: the ``number``-th room (in /rooms order) becomes current."""
        if self.rooms.switch_to(number) is not None:
            self._switched()

    def step(self, by: int) -> None:
        """Ctrl+N / Ctrl+P: the next (1) or previous (-1) room becomes current."""
        if self.rooms.step(by) is not None:
            self._switched()

    def _switched(self) -> None:
        self._kept()
        self._say(Notice(f"typed lines go to {self.rooms.current}"))

    def refused(self, room: str) -> None:
        """The relay refused ``room`` (its error says why): out of our list for this run,
        and not named in this run's registrations; the profile is not rewritten (an error
        from the relay is anyone's word): the next run asks for it again."""
        if room not in self.rooms:
            return
        self.rooms.part(room)
        self._link().part(room)
        if room not in self._refused:
            self._refused.append(room)
        now = self.rooms.current
        where = f"typed lines go to {now}" if now else "you are in no room now"
        self._say(
            Notice(
                f"you are not in {room}: the relay refused it; {where}. Your profile keeps it, and the "
                f"next start asks for it again (/join {room} asks now)"
            )
        )

    def _kept(self) -> None:
        if self._keep is None:
            return
        # The rooms refused on this run stay in the profile (see ``refused``).
        names = [*self.rooms.names, *(room for room in self._refused if room not in self.rooms)]
        try:
            self._keep(names, self.rooms.current)
        except E2EChatError as exc:
            self._say(Problem(f"your rooms were NOT kept for next time: {exc}"))

    def list(self) -> None:
        """/rooms: each room's number (Alt+N), members online of all, lines unread."""
        if not self.rooms.names:
            self._say(Notice("you are in no room: /join #NAME joins one"))
            return
        core = self._link().core
        counts = []
        for name in self.rooms.names:
            room = core.room(name)
            others = room.others if room is not None else []
            online = sum(1 for nick in others if nick in core.directory) + 1
            counts.append(f"{online}/{len(others) + 1}")
        # In columns: the counts under each other, whatever the length of the names
        name_width = max(len(name) for name in self.rooms.names)
        count_width = max(len(count) for count in counts)
        lines = ["your rooms (Alt+1..9 switches; members online/all):"]
        for number, (name, count) in enumerate(zip(self.rooms.names, counts, strict=True), 1):
            unread = self.rooms.unread.get(name, 0)
            mark = "*" if name == self.rooms.current else " "
            line = f" {mark}{number:>2} {name:<{name_width}}  {count:>{count_width}}"
            lines.append(line + (f"  {unread} unread" if unread else ""))
        self._say(HelpText(tuple(lines)))

    def names(self, name: str | None) -> None:
        """/names [#ROOM]: its members, online (as /who says them) and away."""
        name = name or self.rooms.current
        if name is None:
            raise CommandError(detail="you are in no room: /names #NAME, or /join one first")
        core = self._link().core
        room = core.room(name)
        if room is None or name not in self.rooms:
            raise CommandError(detail=f"you are not in {name} (/join {name})")
        here = [nick for nick in room.others if nick in core.directory]
        online = [self._who_entry(nick, core.trust(nick)) for nick in here]
        away = [nick for nick in room.others if nick not in core.directory]
        count = len(room.others) + 1
        self._say(Notice(f"{name}, {count} member{'s' if count != 1 else ''}: {members_text(online, away)}"))
