"""What a connection is owed beyond what it may be given at once, handed over as it
drains. Pure (no I/O).

A newcomer is sent its welcome (with the directory's pages), then the member list of
each of its rooms, then its mail; a ``join`` is answered with the room's list. A big
room makes that megabytes: a room of 45,000, or 64 rooms of 1,000, is past the 4 MiB a
connection may have waiting before it is dropped as not reading (``write_buffer``), and
a slow link does not drain it in time. So they are owed here, and handed over a window
at a time (``window``): at most what the connection may be given in one turn
(``write_buffer_turn``), each time the shell has written what it had and the connection
is not past its soft mark (``RelayCore.flushed``, ``resumed``). One that never reads is
hung up on after ``stall_timeout``, as for any other frames.

While a connection is owed anything, every other frame for it waits behind (``behind``),
so nothing overtakes its directory or a list, nor the answers it asked for in the order
it asked; deliveries to it are refused, as to a connection behind on reading, and its
mail waits (relay/routing.py). Frames that waited there beyond ``write_buffer`` mean it
is not reading: the core hangs up on it (``overflowing``).

A room's list is made when its turn comes, from the room as it is then, one page at a
time (only its members' entries are held, already encoded): until then an ``entered``
or ``parted`` of that room is not sent to the connection (``lists_due``), as the list
will have the change; after, it comes behind the list's last page.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from e2echat.relay.actions import Action, Close, ConnId, Persist, Write
from e2echat.relay.limits import Backlog, Limits

#: (nick, room) -> the pages of the room's member list for ``nick``, made as they are read
Pages = Callable[[str, str], Iterator[bytes]]


@dataclass(frozen=True, slots=True)
class _Behind:
    """A frame that came for the connection while it was owed something."""

    frame: bytes
    #: it came in a ``Persist``: written only once what the store was given is kept
    kept: bool


class _Owed:
    # One per connection owed something: few, but each may wait for minutes.
    __slots__ = ("behind", "head", "items", "lists", "nick", "pages")

    def __init__(self, nick: str) -> None:
        self.nick = nick
        #: in order: frames (the welcome's), rooms whose lists are due there, and frames behind
        self.items: deque[bytes | str | _Behind] = deque()
        #: the pages of the list being handed over, and the next frame, made but not given
        self.pages: Iterator[bytes] | None = None
        self.head: bytes | _Behind | None = None
        #: room -> how many of its lists are still to be made
        self.lists: dict[str, int] = {}
        #: bytes of the frames behind, not handed over yet
        self.behind = 0


class Paging:
    def __init__(self, limits: Limits, backlog: Backlog) -> None:
        """``backlog`` is the core's own: what a window gives is counted in
        ``backlog.unflushed``, as a delivery is."""
        self.limits = limits
        self.backlog = backlog
        self._owed: dict[ConnId, _Owed] = {}
        #: connections whose frames behind are over ``write_buffer``
        self._over: dict[ConnId, None] = {}

    def __contains__(self, conn: ConnId) -> bool:
        return conn in self._owed

    def __bool__(self) -> bool:
        return bool(self._owed)

    def conns(self) -> list[ConnId]:
        """The connections owed something."""
        return list(self._owed)

    def owe(self, conn: ConnId, nick: str, frames: Sequence[bytes] = (), rooms: Sequence[str] = ()) -> None:
        """Owe ``conn`` (``nick``'s) ``frames``, then the lists of ``rooms``, after what it
        is owed already."""
        owed = self._owed.get(conn)
        if owed is None:
            owed = self._owed[conn] = _Owed(nick)
        owed.items += frames
        owed.items += rooms
        for room in rooms:
            owed.lists[room] = owed.lists.get(room, 0) + 1

    def lists_due(self, conn: ConnId, room: str) -> bool:
        """Whether a list of ``room`` is still to be made for ``conn``: what changes in
        the room until then is in it."""
        owed = self._owed.get(conn)
        return owed is not None and room in owed.lists

    def behind(self, actions: list[Action]) -> list[Action]:
        """``actions`` without the frames for connections owed something: those go
        behind what they are owed, in order."""
        owed_by = self._owed
        if not owed_by:
            return actions
        limit = self.limits.write_buffer
        kept: list[Action] = []
        for action in actions:
            if isinstance(action, Close):
                kept.append(action)
                continue
            after_keep = isinstance(action, Persist)
            frames = []
            for conn, frame in action.frames:
                owed = owed_by.get(conn)
                if owed is None:
                    frames.append((conn, frame))
                    continue
                owed.items.append(_Behind(frame, after_keep))
                owed.behind += len(frame)
                if owed.behind > limit:
                    self._over[conn] = None
            if isinstance(action, Persist):
                kept.append(Persist(action.ops, frames))
            elif frames:
                kept.append(Write(frames))
        return kept

    def overflowing(self) -> ConnId | None:
        """A connection whose frames behind are over ``write_buffer``, if any."""
        return next(iter(self._over), None)

    def window(self, conn: ConnId, pages: Pages) -> tuple[list[bytes], bool, bool]:
        """What ``conn`` (owed something) may be given now, in order: no more than it
        may be given in this turn (``write_buffer_turn``, less what it was given in it
        already), but one frame at least if it was given nothing: with the frames,
        whether they must wait for the store (one came in a ``Persist``), and whether
        that was all it was owed (it is owed nothing from now on)."""
        owed = self._owed[conn]
        unflushed = self.backlog.unflushed
        queued = unflushed.get(conn, 0)
        budget = self.limits.write_buffer_turn - queued
        frames: list[bytes] = []
        after_keep = False
        while (head := self._next(owed, pages)) is not None:
            frame = head.frame if isinstance(head, _Behind) else head
            if len(frame) > budget and (frames or queued):
                break
            owed.head = None
            budget -= len(frame)
            frames.append(frame)
            if isinstance(head, _Behind):
                owed.behind -= len(frame)
                after_keep = after_keep or head.kept
        unflushed[conn] = self.limits.write_buffer_turn - budget
        done = owed.head is None and owed.pages is None and not owed.items
        if done:
            self.forget(conn)
        return frames, after_keep, done

    def _next(self, owed: _Owed, pages: Pages) -> bytes | _Behind | None:
        """The next frame owed (made if it is a list's page), left as ``owed.head``."""
        while owed.head is None:
            if owed.pages is not None:
                owed.head = next(owed.pages, None)
                if owed.head is None:
                    owed.pages = None
                continue
            if not owed.items:
                return None
            item = owed.items.popleft()
            if isinstance(item, str):
                left = owed.lists.pop(item) - 1
                if left:
                    owed.lists[item] = left
                owed.pages = pages(owed.nick, item)  # the room as it is now
            else:
                owed.head = item
        return owed.head

    def forget(self, conn: ConnId) -> None:
        self._owed.pop(conn, None)
        self._over.pop(conn, None)

    def clear(self) -> None:
        self._owed.clear()
        self._over.clear()
