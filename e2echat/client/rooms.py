"""The rooms we are in, who is in each as the relay says, and how far we trust what it
says. Pure.

A ``Room`` holds its members (nick -> identity key, ours included, online or away: who
is online is the ``Directory``'s business), the room's safety number made from them, and
our recent views of them. Every room message carries its sender's view of the room, so a
relay that shows two members different member lists (it added a reader for one of them,
or hid one) is noticed at the next message, and their safety numbers differ.
"""

from __future__ import annotations

import bisect
import re
from collections import OrderedDict
from collections.abc import Callable, Iterable

from nacl.public import PublicKey

from e2echat.crypto.identity import (
    EMPTY_BUCKET,
    ROOM_BUCKETS,
    encode_member,
    room_bucket,
    room_bucket_hash,
    room_digest_input,
    room_safety_number,
    room_view,
)
from e2echat.errors import RemoteProtocolError
from e2echat.wire.grammar import ROOM

# A message encrypted just before its sender saw a join or part carries the room's
# previous view, and may arrive after we saw it: as for the directory before rooms, a view
# of ours is still accepted for VIEW_GRACE after it changed, and only the last
# RECENT_VIEWS of them. Any other view is flagged: a join or part the relay withholds
# from one of two members for longer than that shows at their next message.
VIEW_GRACE = 10.0
RECENT_VIEWS = 256
# Split views already said, per room, at most: each (sender, view) is said once, and a
# peer that sends made-up views with every message must not grow the set without bound.
SPLIT_WARNINGS = 4096
# The most members a client believes one room has: every identity a relay keeps (five
# times the most people one relay holds online). A relay listing more is hostile or
# broken, and would otherwise fill our memory.
MAX_MEMBERS = 100_000
# Rooms parted, remembered this long: what was already on its way to us when we parted is
# dropped quietly, not warned about.
PARTED_GRACE = VIEW_GRACE
# A room named in the relay's text (its errors name the rooms they refuse).
_ROOM_IN_TEXT = re.compile(ROOM + r"(?![a-z0-9_-])")


class Room:
    """One room we are in: its members and our views of them."""

    def __init__(self, name: str, our_nick: str, our_key: PublicKey, clock: Callable[[], float]) -> None:
        self.name = name
        self._our_nick = our_nick
        self._clock = clock
        #: nick -> identity key, for every member as the relay says (ours included)
        self.members: dict[str, PublicKey] = {}
        # Each member's encoding, and the view's hash tree (crypto/identity.py room_view):
        # each bucket's members in nick order and its hash, so that a join or part
        # re-hashes one bucket and the root, and costs the same in a room of 100 or
        # 10,000 (issue 19).
        self._encoded: dict[str, bytes] = {}
        self._bucket_nicks: list[list[str]] = [[] for _ in range(ROOM_BUCKETS)]
        self._bucket_hashes: list[bytes] = [EMPTY_BUCKET] * ROOM_BUCKETS
        # Every member but us, in nick order: kept in order as they come and go, not sorted
        # again (every message sent to the room asks).
        self._others: list[str] = []
        #: the relay has listed the room's members (a whole ``Members``) on this connection
        self.listed = False
        #: we asked to join it on this connection (``Rooms.join``), and its members are
        #: not listed yet: the list that comes is the answer, worth showing
        self.asked = False
        #: our view of the room now (hex): every room message we send to it carries it
        self.view = ""
        # Our views before this one -> when each stopped being ours, oldest first.
        self._past_views: OrderedDict[str, float] = OrderedDict()
        self._split_warned: set[tuple[str, str]] = set()
        self._put(our_nick, our_key)
        self._refresh(room_bucket(our_nick))

    @property
    def others(self) -> list[str]:
        """Every member but us, sorted (the room's own list: not to be changed)."""
        return self._others

    def safety_number(self) -> str:
        """The room's safety number (60 digits): the same for every member who sees the
        same members with the same keys. Made from the whole room, so asked for by
        /verify, not at every join."""
        return room_safety_number(room_digest_input(self.name, self._encoded))

    # -- who is in it -------------------------------------------------------------------------

    def replace(self, members: Iterable[tuple[str, PublicKey]]) -> bool:
        """The relay's whole list of the room's members (without us: we are in it). Whether
        our view changed. Raises ``RemoteProtocolError`` beyond MAX_MEMBERS."""
        ours = self.members[self._our_nick]
        listed = {self._our_nick: ours}
        for nick, key in members:
            if nick != self._our_nick:
                listed[nick] = key
            if len(listed) > MAX_MEMBERS:
                raise _too_many(self.name)
        self.listed = True
        if listed.keys() == self.members.keys() and all(
            bytes(key) == bytes(self.members[nick]) for nick, key in listed.items()
        ):
            return False
        self.members = {}
        self._encoded = {}
        self._bucket_nicks = [[] for _ in range(ROOM_BUCKETS)]
        self._others = []
        for nick, key in listed.items():
            self.members[nick] = key
            self._encoded[nick] = encode_member(nick, key)
            self._bucket_nicks[room_bucket(nick)].append(nick)
            if nick != self._our_nick:
                self._others.append(nick)
        self._others.sort()
        for nicks in self._bucket_nicks:
            nicks.sort()
        return self._refresh(*range(ROOM_BUCKETS))

    def add(self, nick: str, key: PublicKey) -> bool:
        """``nick`` is a member, with ``key``: whether our view changed (they are new, or
        their key is). Raises ``RemoteProtocolError`` beyond MAX_MEMBERS."""
        if nick == self._our_nick:
            return False  # our own key is ours to say
        known = self.members.get(nick)
        if known is not None and bytes(known) == bytes(key):
            return False
        if known is None and len(self.members) >= MAX_MEMBERS:
            raise _too_many(self.name)
        if known is None:
            bisect.insort(self._others, nick)
        return self._refresh(self._put(nick, key))

    def remove(self, nick: str) -> bool:
        """``nick`` left the room: whether they were in it."""
        if nick == self._our_nick or nick not in self.members:
            return False
        del self.members[nick]
        del self._encoded[nick]
        _discard(self._others, nick)
        bucket = room_bucket(nick)
        _discard(self._bucket_nicks[bucket], nick)
        return self._refresh(bucket)

    def _put(self, nick: str, key: PublicKey) -> int:
        """``nick`` is a member with ``key`` (new, or with another key): the bucket to re-hash."""
        bucket = room_bucket(nick)
        if nick not in self.members:
            bisect.insort(self._bucket_nicks[bucket], nick)
        self.members[nick] = key
        self._encoded[nick] = encode_member(nick, key)
        return bucket

    # -- views ----------------------------------------------------------------------------------

    def _refresh(self, *changed: int) -> bool:
        """The view again, after the members of the ``changed`` buckets changed: whether it
        is another. The view it replaces stays accepted for VIEW_GRACE (a sender may have
        seen it last), whatever changed."""
        encoded = self._encoded
        for bucket in changed:
            self._bucket_hashes[bucket] = room_bucket_hash(
                encoded[nick] for nick in self._bucket_nicks[bucket]
            )
        view = room_view(self.name, len(self.members), self._bucket_hashes).hex()
        if view == self.view:
            return False
        past = self._past_views
        if self.view:
            past[self.view] = self._clock()
            past.move_to_end(self.view)
            if len(past) > RECENT_VIEWS:
                past.popitem(last=False)
        self.view = view
        return True

    def is_split_view(self, sender: str, view: str) -> bool:
        """Whether ``sender``'s ``view`` of this room is neither ours nor one we had until
        less than VIEW_GRACE ago; said once per sender and view."""
        if view == self.view:
            return False
        changed_at = self._past_views.get(view)
        if changed_at is not None and self._clock() - changed_at < VIEW_GRACE:
            return False
        warned = self._split_warned
        if (sender, view) in warned:
            return False
        if len(warned) >= SPLIT_WARNINGS:
            warned.clear()  # at worst one of them is said again
        warned.add((sender, view))
        return True


class Rooms:
    """The rooms we are in on one connection, in the order we joined them."""

    def __init__(
        self,
        our_nick: str,
        our_key: PublicKey,
        clock: Callable[[], float],
        names: Iterable[str] = (),
        parted: Iterable[str] = (),
    ) -> None:
        """``parted``: rooms we left while no connection was up (the relay learnt it from
        the registration): mail kept for us there is dropped quietly on this connection."""
        self._our_nick = our_nick
        #: rooms left while offline (see above)
        self.parted_offline = frozenset(parted)
        self._our_key = our_key
        self._clock = clock
        self.rooms: dict[str, Room] = {}
        # room -> the members of the ``Members`` pages read so far (``more`` was set)
        self._pages: dict[str, list[tuple[str, PublicKey]]] = {}
        self._paged: dict[str, set[str]] = {}  # (and their nicks)
        # room -> when we parted it (clock), the oldest first
        self._parted: OrderedDict[str, float] = OrderedDict()
        for name in names:
            self.join(name)

    @property
    def names(self) -> list[str]:
        return list(self.rooms)

    def __contains__(self, name: object) -> bool:
        return name in self.rooms

    def get(self, name: str) -> Room | None:
        return self.rooms.get(name)

    def join(self, name: str, *, asked: bool = False) -> Room:
        """We are in room ``name`` (again): its members come with the relay's ``Members``
        (the answer to our ``Join``, if ``asked``)."""
        room = self.rooms.get(name)
        if room is None:
            room = self.rooms[name] = Room(name, self._our_nick, self._our_key, self._clock)
        room.asked = room.asked or asked
        self._parted.pop(name, None)
        return room

    def part(self, name: str) -> Room | None:
        """We left room ``name``: the room as it was, if we were in it."""
        room = self.rooms.pop(name, None)
        self._pages.pop(name, None)
        self._paged.pop(name, None)
        if room is not None:
            now = self._clock()
            self._parted[name] = now
            while self._parted and now - next(iter(self._parted.values())) >= PARTED_GRACE:
                self._parted.popitem(last=False)
        return room

    def refused(self, text: str, *, oldest: bool) -> list[str]:
        """The relay refused a room (its ``Error`` says ``text``): the rooms we are not in
        after all, on this connection, parted. Only rooms whose members are not listed
        yet can be refused: those ``text`` names (the relay's errors name them: the
        registration's "not joined: #a #b", a join's "joining #a ..."); if it names none
        of them and ``oldest``, the first ``Join`` asked and not yet answered (a refused
        one is answered in its turn). Nothing else: an error is the relay's word alone (no
        one signs it), so it never takes away a room it has listed, nor one we did not
        ask for on this connection."""
        unanswered = {name for name, room in self.rooms.items() if not room.listed}
        names = [name for name in dict.fromkeys(_ROOM_IN_TEXT.findall(text)) if name in unanswered]
        if not names and oldest:
            names = [name for name, room in self.rooms.items() if room.asked and not room.listed][:1]
        for name in names:
            del self.rooms[name]  # (not "just parted": nothing of it can be on its way)
            self._pages.pop(name, None)
            self._paged.pop(name, None)
        return names

    def just_parted(self, name: str) -> bool:
        """Whether we parted room ``name`` less than PARTED_GRACE ago."""
        parted_at = self._parted.get(name)
        return parted_at is not None and self._clock() - parted_at < PARTED_GRACE

    def listed(self, name: str, members: Iterable[tuple[str, PublicKey]], more: bool) -> Room | None:
        """One page of the relay's ``Members`` of room ``name``. Once the last is in (not
        ``more``), the room with its members replaced; None before, or for a room we are
        not in (parted while the answer was on its way)."""
        room = self.rooms.get(name)
        if room is None:
            return None
        pages = self._pages.setdefault(name, [])
        seen = self._paged.setdefault(name, set())
        for nick, key in members:
            if nick in seen:
                # One list, one key per nick: a nick listed twice (on two pages, or
                # online and away) under two keys would put one in the safety number and
                # encrypt to the other.
                raise RemoteProtocolError(
                    detail=f"the relay listed {nick} twice among the members of {name}; disconnected"
                )
            seen.add(nick)
            pages.append((nick, key))
        if len(pages) > MAX_MEMBERS:
            raise _too_many(name)
        if more:
            return None
        del self._pages[name], self._paged[name]
        room.replace(pages)
        return room

    def shared_with(self, nick: str) -> list[str]:
        """The rooms ``nick`` is in with us."""
        return [name for name, room in self.rooms.items() if nick in room.members]

    def rekeyed(self, nick: str, key: PublicKey) -> list[str]:
        """The relay now shows ``key`` for ``nick``: the rooms whose view it changed (where
        they are a member under another key)."""
        changed = []
        for name, room in self.rooms.items():
            known = room.members.get(nick)
            if known is not None and bytes(known) != bytes(key) and room.add(nick, key):
                changed.append(name)
        return changed


def _discard(nicks: list[str], nick: str) -> None:
    """Take ``nick`` (there) out of the sorted ``nicks``."""
    del nicks[bisect.bisect_left(nicks, nick)]


def _too_many(room: str) -> RemoteProtocolError:
    return RemoteProtocolError(
        detail=f"the relay listed more than {MAX_MEMBERS:,} members of {room}, more than a relay keeps "
        "(a hostile or broken relay); disconnected"
    )
