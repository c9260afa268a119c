"""Comings and goings, one line per person: what one turn of the event loop brings about
someone (came online, joined #lobby and #ops, and the safety numbers that changed with
it) is said in one line, not one per fact (issue 19). Pure: no I/O.

Only the screen is quieter: ``--json`` keeps one event per fact, and every safety-number
change is still said, in the person's line or in a line of its own. A change is the
person's only when it comes right after their join or part of that room: the client says
the two one after the other (client/presence.py), and says any other change (a key, the
relay's list of members) on its own, which is how it stays shown: on its own line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from e2echat.client.events import PeerJoined, PeerLeft, RoomChanged, RoomEntered, RoomParted

#: what someone did: came online, went offline, joined a room, left one
Step = Literal["online", "offline", "joined", "left"]
#: the events whose lines are coalesced
PresenceEvent = PeerJoined | PeerLeft | RoomEntered | RoomParted | RoomChanged


@dataclass(frozen=True)
class Arrival:
    """What one turn brought about ``nick``, shown as one line: its ``steps`` in order
    (each with its room, or "" for coming online or going offline), and the rooms whose
    safety numbers those joins and parts ``changed``."""

    nick: str
    steps: tuple[tuple[Step, str], ...]
    changed: tuple[str, ...] = ()


def arrival_text(arrival: Arrival) -> str:
    """``arrival`` in words: "bob came online and joined #lobby (safety number changed:
    /verify #lobby)", "bob left #lobby and #ops, went offline"."""
    groups: list[tuple[Step, list[str]]] = []
    for step, room in arrival.steps:
        if groups and groups[-1][0] == step and room:
            groups[-1][1].append(room)
        else:
            groups.append((step, [room] if room else []))
    said = [_STEP_WORDS[step] + (f" {_and(rooms)}" if rooms else "") for step, rooms in groups]
    # Rooms listed with "and" already: the steps between them take commas, not more "and"s.
    several = any(len(rooms) > 1 for _, rooms in groups)
    text = f"{arrival.nick} {', '.join(said) if several else _and(said)}"
    if arrival.changed:
        numbers = "safety numbers" if len(arrival.changed) > 1 else "safety number"
        text += f" ({numbers} changed: {', '.join(f'/verify {room}' for room in arrival.changed)})"
    return text


_STEP_WORDS: dict[Step, str] = {
    "online": "came online",
    "offline": "went offline",
    "joined": "joined",
    "left": "left",
}


def _and(items: list[str]) -> str:
    """ "a", "a and b", "a, b and c"."""
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


class Arrivals:
    """The comings and goings of one turn, gathered (``add``) until its end (``take``)."""

    def __init__(self) -> None:
        # nick -> its steps, and the rooms whose safety numbers they changed; in the
        # order the people first appear this turn
        self._steps: dict[str, list[tuple[Step, str]]] = {}
        self._changed: dict[str, list[str]] = {}
        #: changes that are no one's join or part: (room, why), each said as it is
        self._others: list[tuple[str, str]] = []
        #: the event added last: a RoomChanged right after a join or part is its doing
        self._last: PresenceEvent | None = None

    def __bool__(self) -> bool:
        return bool(self._steps or self._others)

    def add(self, event: PresenceEvent) -> None:
        last, self._last = self._last, event
        if isinstance(event, RoomChanged):
            if isinstance(last, RoomEntered | RoomParted) and last.room == event.room:
                changed = self._changed.setdefault(last.nick, [])
                if event.room not in changed:
                    changed.append(event.room)
            else:
                self._others.append((event.room, event.why))
            return
        if isinstance(event, PeerJoined):
            step: tuple[Step, str] = ("online", "")
        elif isinstance(event, PeerLeft):
            step = ("offline", "")
        elif isinstance(event, RoomEntered):
            step = ("joined", event.room)
        else:
            step = ("left", event.room)
        self._steps.setdefault(event.nick, []).append(step)

    def take(self) -> tuple[list[PresenceEvent | Arrival], list[tuple[str, str]]]:
        """What to show, and empty again: for each person, the event as it came when it
        is all there is of them (its line as ever), else their ``Arrival``; then the
        safety-number changes that are nobody's join or part, (room, why) in order."""
        shown: list[PresenceEvent | Arrival] = []
        for nick, steps in self._steps.items():
            changed = tuple(self._changed.get(nick, ()))
            if len(steps) == 1 and not changed:
                shown.append(_event(nick, *steps[0]))
            else:
                shown.append(Arrival(nick, tuple(steps), changed))
        others = self._others
        self._steps, self._changed, self._others, self._last = {}, {}, [], None
        return shown, others


def _event(nick: str, step: Step, room: str) -> PresenceEvent:
    """The one event a step came from."""
    if step == "online":
        return PeerJoined(nick)
    if step == "offline":
        return PeerLeft(nick)
    return RoomEntered(room, nick) if step == "joined" else RoomParted(room, nick)
