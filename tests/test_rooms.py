"""The rooms model and the room safety number: pure, no relay (client/rooms.py,
crypto/identity.py)."""

from __future__ import annotations

import itertools

import pytest
from nacl.public import PrivateKey, PublicKey

from e2echat.client.rooms import MAX_MEMBERS, PARTED_GRACE, VIEW_GRACE, Room, Rooms
from e2echat.crypto.identity import encode_member, room_digest_input, room_safety_number, room_view
from e2echat.errors import RemoteProtocolError


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


# -- the room safety number ----------------------------------------------------------------------

# Computed once with this code and pinned: numbers people compared must stay valid.
KNOWN_MEMBERS = {"alice": key(1), "bob": key(2), "carol": key(3)}
KNOWN_NUMBER = "033133403158867200869140377392535020385116408235066909791955"
KNOWN_VIEW = "122794b00c0eb5a500c0beffba86d3c8897d10ed7ffd29419ea63b71c8b769c9"


def test_room_safety_number_known_answer() -> None:
    assert number("#ops", KNOWN_MEMBERS) == KNOWN_NUMBER
    encoded = {nick: encode_member(nick, k) for nick, k in KNOWN_MEMBERS.items()}
    assert room_view(room_digest_input("#ops", encoded)).hex() == KNOWN_VIEW
    # Its input, byte for byte: the room's name, then each member in nick order.
    expected = b"\x04#ops" + b"".join(
        bytes([len(nick)]) + nick.encode() + bytes(k) for nick, k in sorted(KNOWN_MEMBERS.items())
    )
    assert room_digest_input("#ops", encoded) == expected


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


def test_every_member_sees_the_same_number_and_view() -> None:
    keys = {nick: PrivateKey.generate().public_key for nick in ("alice", "bob", "carol", "user10")}
    rooms = []
    for nick in keys:
        room = Room("#ops", nick, keys[nick], Clock())
        room.replace((other, k) for other, k in keys.items() if other != nick)
        rooms.append(room)
    assert len({room.safety_number() for room in rooms}) == 1
    assert len({room.view for room in rooms}) == 1


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
