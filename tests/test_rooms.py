"""The rooms model, the room safety number and the user's list of rooms: pure, no relay
(client/rooms.py, crypto/identity.py, ui/roomlist.py)."""

from __future__ import annotations

import itertools

import nacl.hashlib
import pytest
from nacl.public import PrivateKey, PublicKey

from e2echat.client.rooms import (
    MAX_MEMBERS,
    PARTED_GRACE,
    RECENT_VIEWS,
    SPLIT_WARNINGS,
    VIEW_GRACE,
    Room,
    Rooms,
)
from e2echat.crypto.identity import (
    ROOM_BUCKETS,
    encode_member,
    room_bucket,
    room_digest_input,
    room_safety_number,
    room_view,
)
from e2echat.errors import CommandError, RemoteProtocolError
from e2echat.ui.roomlist import RoomList
from e2echat.wire.grammar import MAX_ROOMS


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def key(byte: int) -> PublicKey:
    return PublicKey(bytes([byte]) * 32)


def number(room: str, members: dict[str, PublicKey]) -> str:
    encoded = {nick: encode_member(nick, k) for nick, k in members.items()}
    return room_safety_number(room_digest_input(room, encoded))


def view_of(room: str, members: dict[str, PublicKey]) -> str:
    """The view a member of ``room`` with ``members`` (theirs included) holds, as the
    ``Room`` keeps it, the members added one by one."""
    first, *others = members.items()
    kept = Room(room, first[0], first[1], Clock())
    for nick, k in others:
        kept.add(nick, k)
    return kept.view


def spelled_view(room: str, members: dict[str, PublicKey]) -> str:
    """The view as docs/PROTOCOL.md spells it, from nothing but BLAKE2b: the check on the
    ``Room``'s incremental one."""

    def blake2b(data: bytes, label: bytes) -> bytes:
        return nacl.hashlib.blake2b(data, digest_size=32, key=label).digest()

    buckets: list[bytes] = [b""] * 256
    for nick in sorted(members):
        place = blake2b(nick.encode(), b"e2echat room bucket place v2")[0]
        buckets[place] += bytes([len(nick.encode())]) + nick.encode() + bytes(members[nick])
    hashes = b"".join(blake2b(bucket, b"e2echat room bucket v2") for bucket in buckets)
    head = bytes([len(room.encode())]) + room.encode() + len(members).to_bytes(4, "big")
    return blake2b(head + hashes, b"e2echat room view v2").hex()


# -- the room safety number and view ---------------------------------------------------------

# Computed once with this code and pinned: numbers people compared, and views other
# clients hold, must stay valid.
KNOWN_MEMBERS = {"alice": key(1), "bob": key(2), "carol": key(3)}
KNOWN_NUMBER = "033133403158867200869140377392535020385116408235066909791955"
KNOWN_VIEW = "169dbaebf7fa5a460d119e3dd6c422c13d1d3e37d00da9667e37300606d5ed60"


def test_room_safety_number_known_answer() -> None:
    assert number("#ops", KNOWN_MEMBERS) == KNOWN_NUMBER
    encoded = {nick: encode_member(nick, k) for nick, k in KNOWN_MEMBERS.items()}
    # Its input, byte for byte: the room's name, then each member in nick order.
    expected = b"\x04#ops" + b"".join(
        bytes([len(nick)]) + nick.encode() + bytes(k) for nick, k in sorted(KNOWN_MEMBERS.items())
    )
    assert room_digest_input("#ops", encoded) == expected


def test_room_view_known_answer() -> None:
    assert view_of("#ops", KNOWN_MEMBERS) == KNOWN_VIEW
    assert spelled_view("#ops", KNOWN_MEMBERS) == KNOWN_VIEW


def test_room_view_is_the_spelled_one_in_a_big_room_with_full_buckets() -> None:
    members = {f"user{i}": PrivateKey.generate().public_key for i in range(2000)}
    assert len({room_bucket(nick) for nick in members}) == ROOM_BUCKETS  # every bucket used
    assert view_of("#lobby", members) == spelled_view("#lobby", members)


def test_room_view_takes_every_bucket() -> None:
    with pytest.raises(ValueError):
        room_view("#ops", 1, [b"\0" * 32] * (ROOM_BUCKETS - 1))


def test_room_safety_number_is_60_digits_and_not_the_view() -> None:
    shown = number("#ops", KNOWN_MEMBERS)
    assert len(shown) == 60 and shown.isdigit()
    assert KNOWN_VIEW not in shown  # a different key for each: the view is not the number


def test_room_safety_number_does_not_depend_on_order() -> None:
    items = list(KNOWN_MEMBERS.items())
    for order in itertools.permutations(items):
        assert number("#ops", dict(order)) == KNOWN_NUMBER


def test_room_safety_number_changes_with_any_member_or_key() -> None:
    changed = [
        number("#ops", {**KNOWN_MEMBERS, "dave": key(4)}),  # a reader added
        number("#ops", {n: k for n, k in KNOWN_MEMBERS.items() if n != "carol"}),  # one hidden
        number("#ops", {**KNOWN_MEMBERS, "bob": key(9)}),  # a key changed
        number("#ops", {"alice": key(1), "bob": key(2), "caro": key(3)}),  # a nick changed
        number("#dev", KNOWN_MEMBERS),  # another room
    ]
    assert KNOWN_NUMBER not in changed
    assert len(set(changed)) == len(changed)


def test_room_view_does_not_depend_on_order() -> None:
    items = list(KNOWN_MEMBERS.items())
    for order in itertools.permutations(items):
        assert view_of("#ops", dict(order)) == KNOWN_VIEW
    # Nor on whether they came one by one, in one list, or came, went and came back.
    room = Room("#ops", "bob", key(2), Clock())
    room.replace([("carol", key(3)), ("alice", key(1))])
    assert room.view == KNOWN_VIEW
    room.add("dave", key(4))
    room.add("alice", key(9))
    room.remove("dave")
    room.add("alice", key(1))
    assert room.view == KNOWN_VIEW


def same_bucket_nicks() -> tuple[str, str]:
    """Two nicks in one bucket: a change inside a bucket must change the view too."""
    seen: dict[int, str] = {}
    for index in itertools.count():
        nick = f"n{index}"
        other = seen.setdefault(room_bucket(nick), nick)
        if other != nick:
            return other, nick
    raise AssertionError("unreachable")


def test_room_view_changes_with_any_member_or_key() -> None:
    first, second = same_bucket_nicks()
    base = {**KNOWN_MEMBERS, first: key(5), second: key(6)}
    before = view_of("#ops", base)
    changed = [
        view_of("#ops", {**base, "dave": key(4)}),  # a reader added
        view_of("#ops", {n: k for n, k in base.items() if n != "carol"}),  # one hidden
        view_of("#ops", {n: k for n, k in base.items() if n != second}),  # one hidden, bucket shared
        view_of("#ops", {**base, "bob": key(9)}),  # a key changed
        view_of("#ops", {**base, first: key(6), second: key(5)}),  # keys swapped within a bucket
        view_of("#ops", {"alice": key(1), "bob": key(2), "caro": key(3), first: key(5), second: key(6)}),
        view_of("#dev", base),  # another room
    ]
    assert before not in changed
    assert len(set(changed)) == len(changed)


def test_every_member_sees_the_same_number_and_view() -> None:
    keys = {nick: PrivateKey.generate().public_key for nick in ("alice", "bob", "carol", "user10")}
    rooms = []
    for nick in keys:
        room = Room("#ops", nick, keys[nick], Clock())
        room.replace((other, k) for other, k in keys.items() if other != nick)
        rooms.append(room)
    assert len({room.safety_number() for room in rooms}) == 1
    assert len({room.view for room in rooms}) == 1
    assert rooms[0].safety_number() == number("#ops", keys)
    # One by one, in any order, ends at the same view and number.
    late = Room("#ops", "user10", keys["user10"], Clock())
    for nick in ("carol", "alice", "bob"):
        late.add(nick, keys[nick])
    assert (late.view, late.safety_number()) == (rooms[0].view, rooms[0].safety_number())


def test_others_stay_sorted_as_members_come_and_go() -> None:
    room = Room("#ops", "mallory", key(1), Clock())
    nicks = [f"u{(index * 7919) % 1000:03d}" for index in range(1000)]
    for nick in nicks:
        room.add(nick, key(2))
    for nick in nicks[::3]:
        room.remove(nick)
    room.add("aaron", key(3))
    assert room.others == sorted(set(nicks) - set(nicks[::3]) | {"aaron"})


def test_every_view_a_member_had_stays_accepted_for_the_grace() -> None:
    """A sender may have seen any of the views a burst of joins passed through."""
    clock = Clock()
    room = Room("#lobby", "alice", key(1), clock)
    room.replace((f"u{index}", key(2)) for index in range(500))
    views = [room.view]
    for index in range(100):
        room.add(f"new{index}", key(3))
        views.append(room.view)
        if index % 2:
            room.remove(f"u{index}")
            views.append(room.view)
    assert len(set(views)) == len(views)
    assert not any(room.is_split_view("bob", view) for view in views)
    clock.now += VIEW_GRACE
    assert all(room.is_split_view("bob", view) for view in views[:-1])


# -- a room's members -------------------------------------------------------------------------


def test_a_room_starts_with_us_alone_and_follows_joins_and_parts() -> None:
    room = Room("#ops", "alice", key(1), Clock())
    alone = room.safety_number()
    assert room.others == [] and not room.listed
    assert room.add("bob", key(2))
    assert not room.add("bob", key(2))  # the same again: nothing changed
    assert room.others == ["bob"]
    assert room.add("bob", key(7))  # another key for bob: the view changes
    assert room.remove("bob") and not room.remove("bob")
    assert room.safety_number() == alone
    assert not room.add("alice", key(9))  # our own key is ours to say
    assert room.members["alice"] == key(1)


def test_replace_keeps_us_and_says_whether_anything_changed() -> None:
    room = Room("#ops", "alice", key(1), Clock())
    assert room.replace([("bob", key(2)), ("alice", key(9))])
    assert room.listed and room.members == {"alice": key(1), "bob": key(2)}
    assert not room.replace([("bob", key(2))])
    assert room.replace([("bob", key(3))])


def test_split_view_within_grace_is_accepted_once_then_flagged() -> None:
    clock = Clock()
    room = Room("#ops", "alice", key(1), clock)
    before = room.view
    room.add("bob", key(2))
    assert not room.is_split_view("bob", room.view)
    assert not room.is_split_view("bob", before)  # just changed: in flight
    clock.now += VIEW_GRACE
    assert room.is_split_view("bob", before)
    assert not room.is_split_view("bob", before)  # said once
    assert room.is_split_view("carol", "00" * 32)


def test_only_the_last_views_count_however_fast_they_change() -> None:
    room = Room("#ops", "bob", key(1), Clock())
    views = []
    for index in range(RECENT_VIEWS + 2):  # all within the grace
        views.append(room.view)
        room.add(f"v{index}", key(2))
    assert not room.is_split_view("alice", views[-RECENT_VIEWS])
    assert room.is_split_view("alice", views[0])


def test_made_up_views_cannot_grow_the_warnings_without_bound() -> None:
    room = Room("#ops", "bob", key(1), Clock())
    for index in range(SPLIT_WARNINGS + 10):
        assert room.is_split_view("mallory", f"{index:064x}")
    assert len(room._split_warned) <= SPLIT_WARNINGS


def test_a_view_that_comes_back_counts_from_its_latest_time() -> None:
    """Someone comes and goes: our first view is ours again, then changes again. It is
    then among the newest views, not the oldest."""
    room = Room("#ops", "bob", key(1), Clock())
    first = room.view
    room.add("visitor", key(2))
    with_visitor = room.view
    room.remove("visitor")
    assert room.view == first
    for index in range(1, RECENT_VIEWS + 1):  # one view more than kept, after with_visitor
        room.add(f"v{index}", key(3))
    assert not room.is_split_view("alice", first)
    assert room.is_split_view("alice", with_visitor)


def test_rooms_keep_the_order_joined_and_forget_parted_ones_after_a_grace() -> None:
    clock = Clock()
    rooms = Rooms("alice", key(1), clock, ["#lobby", "#ops"])
    assert rooms.names == ["#lobby", "#ops"] and "#ops" in rooms
    rooms.join("#dev")
    assert rooms.names == ["#lobby", "#ops", "#dev"]
    assert rooms.part("#ops") is not None and rooms.part("#ops") is None
    assert rooms.just_parted("#ops") and "#ops" not in rooms
    clock.now += PARTED_GRACE
    assert not rooms.just_parted("#ops")
    rooms.join("#ops")
    assert rooms.names[-1] == "#ops" and not rooms.just_parted("#ops")


def test_members_come_in_pages_and_only_for_our_rooms() -> None:
    rooms = Rooms("alice", key(1), Clock(), ["#ops"])
    assert rooms.listed("#ops", [("bob", key(2))], more=True) is None
    assert rooms.get("#ops").others == []  # type: ignore[union-attr]
    room = rooms.listed("#ops", [("carol", key(3))], more=False)
    assert room is not None and room.others == ["bob", "carol"]
    assert rooms.listed("#dev", [("bob", key(2))], more=False) is None  # not ours: ignored
    assert rooms.shared_with("bob") == ["#ops"] and rooms.shared_with("dave") == []


def test_rooms_refused_are_those_named_or_the_first_join_unanswered_and_never_listed_ones() -> None:
    rooms = Rooms("alice", key(1), Clock(), ["#lobby", "#a", "#b"])  # registering
    rooms.listed("#a", [], more=False)
    # At registration the relay names what it refused; a room it listed is never refused.
    assert rooms.refused("the relay is full; not joined: #b #a #zz", oldest=True) == ["#b"]
    assert rooms.names == ["#lobby", "#a"]
    # Naming none: no join was asked on this connection, so nothing is refused.
    assert rooms.refused("the relay is full", oldest=True) == [] and rooms.names == ["#lobby", "#a"]
    rooms.join("#c", asked=True)
    rooms.join("#d", asked=True)
    assert rooms.refused("too many", oldest=True) == ["#c"] and rooms.names == ["#lobby", "#a", "#d"]
    # A rate limit refuses only the join it names.
    assert rooms.refused("you send too fast", oldest=False) == []
    assert rooms.refused("joining #d (its members are many) would go over your rate", oldest=False) == ["#d"]
    assert rooms.names == ["#lobby", "#a"]


def test_a_new_key_for_a_member_changes_the_rooms_they_are_in() -> None:
    rooms = Rooms("alice", key(1), Clock(), ["#ops", "#dev"])
    rooms.listed("#ops", [("bob", key(2))], more=False)
    assert rooms.rekeyed("bob", key(2)) == []
    assert rooms.rekeyed("bob", key(5)) == ["#ops"]
    assert rooms.get("#ops").members["bob"] == key(5)  # type: ignore[union-attr]


def test_a_relay_listing_more_members_than_it_keeps_is_refused() -> None:
    rooms = Rooms("alice", key(1), Clock(), ["#ops"])
    many = [(f"u{i}", key(2)) for i in range(MAX_MEMBERS)]
    rooms.listed("#ops", many[: MAX_MEMBERS // 2], more=True)
    with pytest.raises(RemoteProtocolError):
        rooms.listed("#ops", [*many[MAX_MEMBERS // 2 :], ("one-more", key(3))], more=False)


# -- the user's list of rooms (ui/roomlist.py) ---------------------------------------------------


def test_a_new_profile_is_in_the_lobby() -> None:
    rooms = RoomList()
    assert rooms.names == ["#lobby"] and rooms.current == "#lobby"


def test_the_profile_s_rooms_are_checked_and_kept_in_order() -> None:
    rooms = RoomList(["#ops", "#Bad", "#ops", "#dev", 7, "lobby"], "#dev")  # type: ignore[list-item]
    assert rooms.names == ["#ops", "#dev"] and rooms.current == "#dev"
    assert RoomList(["#ops"], "#gone").current == "#ops"
    assert RoomList([], None).current is None
    assert len(RoomList([f"#r{i}" for i in range(MAX_ROOMS + 5)]).names) == MAX_ROOMS


def test_join_makes_a_room_current_and_says_whether_it_is_new() -> None:
    rooms = RoomList()
    assert rooms.join("#ops") and rooms.current == "#ops"
    assert not rooms.join("#lobby") and rooms.current == "#lobby"
    assert rooms.names == ["#lobby", "#ops"]
    with pytest.raises(CommandError, match="a room's name is"):
        rooms.join("#No Spaces")


def test_one_room_too_many_is_refused() -> None:
    rooms = RoomList([f"#r{i}" for i in range(MAX_ROOMS)])
    with pytest.raises(CommandError, match=f"{MAX_ROOMS} rooms"):
        rooms.join("#one-more")
    rooms.join("#r3")  # switching is fine


def test_parting_moves_to_a_neighbour_and_the_last_leaves_you_in_none() -> None:
    rooms = RoomList(["#a", "#b", "#c"], "#b")
    assert rooms.part() == "#b" and rooms.current == "#a"
    assert rooms.part("#c") == "#c" and rooms.current == "#a"
    with pytest.raises(CommandError, match="not in #zzz"):
        rooms.part("#zzz")
    assert rooms.part() == "#a" and rooms.current is None and rooms.names == []
    with pytest.raises(CommandError, match="no room"):
        rooms.part()


def test_switching_by_number_and_round_the_ends() -> None:
    rooms = RoomList(["#a", "#b", "#c"], "#a")
    assert rooms.switch_to(3) == "#c" and rooms.switch_to(4) is None and rooms.current == "#c"
    assert rooms.step(1) == "#a" and rooms.step(-1) == "#c" and rooms.step(-1) == "#b"
    assert RoomList([], None).step(1) is None


def test_lines_in_other_rooms_are_unread_until_switched_to() -> None:
    rooms = RoomList(["#a", "#b"], "#a")
    rooms.shown("#a")
    rooms.shown("#b")
    rooms.shown("#b")
    rooms.shown("#elsewhere")
    assert rooms.unread == {"#b": 2}
    rooms.step(1)
    assert rooms.unread == {}
