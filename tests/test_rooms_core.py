"""Rooms in the client core, against the protocol: the relay's member lists, joins and
parts, the room named inside every room message and checked, per-room views and safety
numbers. The relay here is the real core (FakeWire); what it says about rooms is
written by hand where a test needs the relay to say it (to one client, or falsely)."""

from __future__ import annotations

import pytest
from nacl.public import PrivateKey
from test_cores import FakeWire, _frame

from e2echat.client.core import ClientCore, ClientState
from e2echat.client.events import (
    MessageReceived,
    PeerLeft,
    RoomChanged,
    RoomEntered,
    RoomListed,
    RoomParted,
    RoomRefused,
    SecurityWarning,
    SplitView,
)
from e2echat.client.memberships import LastMembers
from e2echat.client.rooms import VIEW_GRACE
from e2echat.errors import CommandError, RemoteProtocolError
from e2echat.relay.core import ConnId
from e2echat.wire import messages as m
from e2echat.wire.objects import Member, PeerInfo


class Clock:
    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


def peer_of(wire: FakeWire, conn: ConnId) -> PeerInfo:
    """``conn``'s entry, as the relay announces it."""
    core = wire.clients[conn]
    return PeerInfo(core.nick, core._identity.public_key, core._handshake._session_key.public_key)


def in_room(wire: FakeWire, room: str, *conns: ConnId) -> None:
    """``conns`` are the members of ``room``, all online, each told so by the relay (the
    profile names the room, and the relay lists its members)."""
    for conn in conns:
        wire.clients[conn]._rooms.join(room)
        others = tuple(peer_of(wire, other) for other in conns if other != conn)
        wire.deliver(conn, _frame(m.Members(room, others, (), more=False)))
    wire.take_all()


def people(*nicks: str, clock: Clock | None = None) -> tuple[FakeWire, list[ConnId]]:
    wire = FakeWire()
    conns = [wire.connect(nick) if clock is None else wire.connect(nick, clock=clock) for nick in nicks]
    in_room(wire, "#lobby", *conns)
    return wire, conns


def received(wire: FakeWire, conn: ConnId) -> list[MessageReceived]:
    return [e for e in wire.take(conn) if isinstance(e, MessageReceived)]


def core(wire: FakeWire, conn: ConnId) -> ClientCore:
    return wire.clients[conn]


# -- a room's members ------------------------------------------------------------------------


def test_two_rooms_a_member_of_one_gets_nothing_of_the_other() -> None:
    wire, (alice, bob, carol) = people("alice", "bob", "carol")
    in_room(wire, "#ops", alice, bob)
    ops = core(wire, alice).send_room("#ops", "ops only")
    core(wire, alice).send_room("#lobby", "for everyone")
    wire.pump()
    assert [(e.text, e.room) for e in received(wire, bob)] == [
        ("ops only", "#ops"),
        ("for everyone", "#lobby"),
    ]
    assert [(e.text, e.room) for e in received(wire, carol)] == [("for everyone", "#lobby")]
    # Not even a copy: the relay never had one for carol to lose or show.
    sends = [e for e in wire.sent[alice] if isinstance(e, m.Send) and e.id == ops]
    assert [item.to for send in sends for item in send.items] == ["bob"]


def test_a_room_message_goes_to_its_members_away_too() -> None:
    wire, (alice, bob) = people("alice", "bob")
    erin = PrivateKey.generate().public_key
    wire.deliver(
        alice, _frame(m.Members("#lobby", (peer_of(wire, bob),), (Member("erin", erin),), more=False))
    )
    assert core(wire, alice).away_in("#lobby") == ["erin"]
    core(wire, alice).send_room("#lobby", "for bob, and erin when she is back")
    wire.pump()
    fetches = [msg for msg in wire.sent[alice] if isinstance(msg, m.Fetch)]
    assert fetches == [m.Fetch(("bob", "erin"))]  # theirs: erin's starts a session for her mailbox


def test_a_member_list_again_is_said_only_if_it_changed_the_room() -> None:
    wire, (alice, bob) = people("alice", "bob")
    before = core(wire, alice).room_safety_number("#lobby")
    wire.deliver(alice, _frame(m.Members("#lobby", (peer_of(wire, bob),), (), more=False)))
    assert wire.take(alice) == []  # the same list: nothing to say
    erin = PrivateKey.generate().public_key
    wire.deliver(
        alice, _frame(m.Members("#lobby", (peer_of(wire, bob),), (Member("erin", erin),), more=False))
    )
    assert RoomChanged("#lobby", "the relay's list of its members changed") in wire.take(alice)
    assert core(wire, alice).room_safety_number("#lobby") != before


def test_sending_to_a_room_we_are_not_in_or_alone_in_is_refused() -> None:
    wire, (alice,) = people("alice")
    with pytest.raises(CommandError, match="not in #ops"):
        core(wire, alice).send_room("#ops", "hello?")
    with pytest.raises(CommandError, match="nobody else is in #lobby"):
        core(wire, alice).send_room("#lobby", "hello?")


def test_joins_and_parts_are_said_and_change_the_room_safety_number() -> None:
    wire, (alice, _bob) = people("alice", "bob")
    before = core(wire, alice).room_safety_number("#lobby")
    carol = wire.connect("carol")  # in #lobby, as every new profile
    events = wire.take(alice)
    assert RoomEntered("#lobby", "carol") in events and RoomChanged("#lobby", "carol joined") in events
    with_carol = core(wire, alice).room_safety_number("#lobby")
    assert with_carol != before
    assert core(wire, carol).room_safety_number("#lobby") == with_carol  # the same for all three
    wire.deliver(alice, _frame(m.Entered("#lobby", peer_of(wire, carol))))  # again: nothing new
    assert wire.take(alice) == []
    core(wire, carol).part("#lobby")
    wire.pump()
    assert wire.take(alice) == [RoomParted("#lobby", "carol"), RoomChanged("#lobby", "carol left")]
    assert core(wire, alice).room_safety_number("#lobby") == before


def test_someone_who_leaves_the_last_shared_room_leaves_the_directory_quietly() -> None:
    wire, (alice, bob) = people("alice", "bob")
    in_room(wire, "#ops", alice, bob)
    wire.deliver(alice, _frame(m.Parted("#ops", "bob")))
    assert "bob" in core(wire, alice).peers  # still in #lobby together
    wire.deliver(alice, _frame(m.Parted("#lobby", "bob")))
    events = wire.take(alice)
    assert "bob" not in core(wire, alice).peers
    assert not [e for e in events if isinstance(e, PeerLeft)]  # not "went offline": he did not
    # Still reachable, and still able to reach us: a private message needs no room.
    core(wire, alice).send_private("bob", "still there?")
    wire.pump()
    assert [e.text for e in received(wire, bob)] == ["still there?"]
    core(wire, bob).send_private("alice", "yes")
    wire.pump()
    assert [(e.text, e.private) for e in received(wire, alice)] == [("yes", True)]


def test_the_answer_to_a_join_lists_the_room() -> None:
    wire, (alice, bob) = people("alice", "bob")
    erin = wire.connect("erin", rooms=("#ops",))
    wire.hang_up(erin)  # a member away
    core(wire, bob).join("#ops")
    wire.pump()
    assert wire.take(bob) == [RoomListed("#ops", (), ("erin",))]
    core(wire, alice).join("#ops")
    assert m.Join("#ops") in _written(wire, alice)
    assert wire.take(alice) == [RoomListed("#ops", ("bob",), ("erin",))]
    assert core(wire, alice).room("#ops").others == ["bob", "erin"]  # type: ignore[union-attr]
    # In pages, as the relay may send them: the room is listed once the last is in.
    core(wire, alice).join("#dev")
    key = PrivateKey.generate().public_key
    wire.deliver(alice, _frame(m.Members("#dev", (peer_of(wire, bob),), (), more=True)))
    assert wire.take(alice) == []  # a page: more to come
    wire.deliver(alice, _frame(m.Members("#dev", (), (Member("fred", key),), more=False)))
    assert wire.take(alice) == [RoomListed("#dev", ("bob",), ("fred",))]


def test_a_member_list_for_a_room_we_are_not_in_is_ignored() -> None:
    wire, (alice, bob) = people("alice", "bob")
    wire.deliver(alice, _frame(m.Members("#elsewhere", (peer_of(wire, bob),), (), more=False)))
    wire.deliver(alice, _frame(m.Entered("#elsewhere", peer_of(wire, bob))))
    wire.deliver(alice, _frame(m.Parted("#elsewhere", "bob")))
    assert wire.take(alice) == [] and core(wire, alice).rooms == ["#lobby"]


def test_parting_tells_the_relay_and_forgets_contacts_shared_there_only() -> None:
    wire, (alice, _bob) = people("alice", "bob")
    core(wire, alice).join("#ops")
    dave = wire.connect("dave", rooms=("#ops",))  # not in #lobby
    assert "dave" in core(wire, alice).peers and "alice" in core(wire, dave).peers
    core(wire, alice).part("#ops")
    assert m.Part("#ops") in _written(wire, alice)
    assert core(wire, alice).rooms == ["#lobby"]
    assert "dave" not in core(wire, alice).peers and "bob" in core(wire, alice).peers


def _written(wire: FakeWire, conn: ConnId) -> list[m.Message]:
    wire.pump()
    return list(wire.sent[conn])


# -- the room, named inside the encryption, checked by the receiver ---------------------------------


def test_a_message_for_a_room_the_receiver_is_not_in_is_dropped_and_said() -> None:
    """The relay (or a sender who thinks otherwise) shows carol a #ops message: carol is not
    in #ops, so it is not shown; she hears why; its sender gets no receipt for it."""
    wire, (alice, bob, carol) = people("alice", "bob", "carol")
    core(wire, alice)._rooms.join("#ops")  # alice's view of #ops: bob and carol
    wire.deliver(alice, _frame(m.Members("#ops", (peer_of(wire, bob), peer_of(wire, carol)), (), False)))
    in_room(wire, "#ops", bob)  # bob is in #ops (carol is not)
    wire.deliver(bob, _frame(m.Entered("#ops", peer_of(wire, alice))))
    wire.take_all()
    core(wire, alice).send_room("#ops", "ops secret")
    wire.pump()
    events = wire.take(carol)
    assert not [e for e in events if isinstance(e, MessageReceived)]
    (warning,) = [e for e in events if isinstance(e, SecurityWarning)]
    assert "for #ops, a room you are not in" in warning.text and "alice" in warning.text
    assert [e.text for e in received(wire, bob)] == ["ops secret"]
    assert "carol" not in core(wire, carol)._sessions.acks_due  # not acknowledged


def test_a_message_from_someone_not_a_member_of_the_room_is_dropped_and_said() -> None:
    wire, (alice, bob, carol) = people("alice", "bob", "carol")
    in_room(wire, "#ops", alice, bob)
    core(wire, carol)._rooms.join("#ops")  # carol believes she is in #ops with bob
    wire.deliver(carol, _frame(m.Members("#ops", (peer_of(wire, bob),), (), False)))
    core(wire, carol).send_room("#ops", "let me in")
    wire.pump()
    events = wire.take(bob)
    assert not [e for e in events if isinstance(e, MessageReceived)]
    (warning,) = [e for e in events if isinstance(e, SecurityWarning)]
    assert "carol is not a member of #ops" in warning.text


def test_a_message_for_a_room_just_parted_is_dropped_quietly() -> None:
    clock = Clock()
    wire, (alice, bob) = people("alice", "bob", clock=clock)
    in_room(wire, "#ops", alice, bob)
    core(wire, bob).part("#ops")
    wire.take_all()
    core(wire, alice).send_room("#ops", "crossed in the post")
    wire.pump()
    assert wire.take(bob) == []
    clock.now += VIEW_GRACE
    core(wire, alice).send_room("#ops", "long after")
    wire.pump()
    assert [type(e) for e in wire.take(bob)] == [SecurityWarning]


# -- views of a room -----------------------------------------------------------------------------


def test_a_reader_added_for_one_member_shows_in_the_safety_numbers_and_as_a_split_view() -> None:
    """The relay tells alice that mallory is in #ops, and keeps it from bob: their numbers of
    the room differ, and bob is warned at alice's next message, naming the room."""
    clock = Clock()
    wire, (alice, bob) = people("alice", "bob", clock=clock)
    in_room(wire, "#ops", alice, bob)
    assert core(wire, alice).room_safety_number("#ops") == core(wire, bob).room_safety_number("#ops")
    mallory = wire.connect("mallory", clock=clock)
    wire.take_all()
    clock.now += 60
    wire.deliver(alice, _frame(m.Entered("#ops", peer_of(wire, mallory))))  # to alice only
    assert core(wire, alice).room_safety_number("#ops") != core(wire, bob).room_safety_number("#ops")
    core(wire, alice).send_room("#ops", "who is here?")
    wire.pump()
    events = wire.take(bob)
    assert SplitView("alice", "#ops") in events
    assert [e.text for e in events if isinstance(e, MessageReceived)] == ["who is here?"]  # shown, flagged
    # The other room is not affected: the same two agree on #lobby.
    core(wire, alice).send_room("#lobby", "and here?")
    wire.pump()
    assert not [e for e in wire.take(bob) if isinstance(e, SplitView)]


def test_a_message_written_just_before_a_join_is_no_alarm() -> None:
    clock = Clock()
    wire, (alice, bob) = people("alice", "bob", clock=clock)
    carol = wire.connect("carol", clock=clock)
    wire.meet(alice, bob)  # (a session: the message leaves at once)
    wire.take_all()
    core(wire, alice).send_room("#lobby", "written before carol came")
    in_flight = core(wire, alice).data_to_send()
    wire.deliver(bob, _frame(m.Entered("#lobby", peer_of(wire, carol))))
    clock.now += VIEW_GRACE - 1
    wire.to_relay(alice, in_flight)
    events = wire.take(bob)
    assert [e.text for e in events if isinstance(e, MessageReceived)] == ["written before carol came"]
    assert not [e for e in events if isinstance(e, SplitView)]


def test_a_private_message_carries_no_view_and_is_never_a_split_view() -> None:
    wire, (alice, bob) = people("alice", "bob")
    mallory = wire.connect("mallory")
    wire.deliver(alice, _frame(m.Entered("#lobby", peer_of(wire, mallory))))  # to alice only
    core(wire, alice).send_private("bob", "just us")
    wire.pump()
    assert not [e for e in wire.take(bob) if isinstance(e, SplitView)]


def test_a_new_key_for_a_member_changes_the_room_safety_number_and_says_so() -> None:
    wire, (alice, _bob) = people("alice", "bob")
    before = core(wire, alice).room_safety_number("#lobby")
    impostor = PeerInfo("bob", PrivateKey.generate().public_key, PrivateKey.generate().public_key)
    wire.deliver(alice, _frame(m.PeerJoined(impostor)))
    events = wire.take(alice)
    assert RoomChanged("#lobby", "bob's key changed") in events
    assert core(wire, alice).room_safety_number("#lobby") != before


def test_a_room_the_relay_refuses_is_not_ours_and_the_connection_stays() -> None:
    wire, (alice, bob) = people("alice", "bob")
    core(wire, alice).join("#ops")
    core(wire, alice)._rooms.get("#ops").listed = True  # type: ignore[union-attr]  # (answered)
    core(wire, alice).join("#full")  # the relay holds as many rooms as it may
    core(wire, alice).join("#later")
    wire.deliver(alice, _frame(m.Error("too_many_rooms", "the relay holds 10,000 rooms")))
    assert core(wire, alice).rooms == ["#lobby", "#ops", "#later"]
    assert [type(e).__name__ for e in wire.take(alice)] == ["RelayError", "RoomRefused"]
    core(wire, alice).send_room("#lobby", "still here")
    wire.pump()
    assert [e.text for e in received(wire, bob)] == ["still here"]


# -- one key per member: the one copies go to is the one the safety number covers ------------


def _pages(room: str, *pages: tuple[tuple[PeerInfo, ...], tuple[Member, ...]]) -> bytes:
    """``pages`` as the relay's ``Members`` frames, ``more`` on all but the last."""
    return b"".join(
        _frame(m.Members(room, online, away, more=index < len(pages) - 1))
        for index, (online, away) in enumerate(pages)
    )


def test_a_member_listed_twice_across_pages_under_two_keys_is_refused() -> None:
    wire, (alice, bob) = people("alice", "bob")
    core(wire, alice).join("#ops")
    wire.take_all()
    other = Member("bob", PrivateKey.generate().public_key)
    pages = _pages("#ops", ((peer_of(wire, bob),), ()), ((), (other,)))
    with pytest.raises(RemoteProtocolError, match="listed bob twice"):
        core(wire, alice).receive_data(pages)


def test_a_member_online_under_one_key_and_listed_away_under_another_is_refused() -> None:
    wire, (alice, _bob) = people("alice", "bob")
    core(wire, alice).join("#ops")
    wire.take_all()
    other = Member("bob", PrivateKey.generate().public_key)  # bob is online, with his own key
    with pytest.raises(RemoteProtocolError, match="another identity key"):
        core(wire, alice).receive_data(_pages("#ops", ((), (other,))))


def test_a_new_key_in_one_room_rekeys_every_room_the_member_is_in() -> None:
    """The relay shows bob under a new key in #ops only: the directory, and so what alice
    encrypts to, takes it; #lobby, whose number still covered the old one, follows."""
    wire, (alice, bob) = people("alice", "bob")
    in_room(wire, "#ops", alice, bob)
    impostor = PeerInfo("bob", PrivateKey.generate().public_key, PrivateKey.generate().public_key)
    wire.deliver(alice, _frame(m.Entered("#ops", impostor)))
    events = wire.take(alice)
    assert RoomChanged("#lobby", "bob's key changed") in events
    shown = core(wire, alice).directory["bob"].identity_key
    for room in ("#lobby", "#ops"):
        assert bytes(core(wire, alice).room(room).members["bob"]) == bytes(shown)  # type: ignore[union-attr]
    assert bytes(shown) == bytes(impostor.identity_key)
    del bob


def test_a_room_copy_goes_only_to_the_key_the_room_lists() -> None:
    """Belt and braces behind the presence checks: were the room and the directory ever to
    disagree on bob's key, nothing goes to the directory's."""
    wire, (alice, bob) = people("alice", "bob")
    core(wire, alice).room("#lobby").members["bob"] = PrivateKey.generate().public_key  # type: ignore[union-attr]
    with pytest.raises(CommandError, match="not sent"):
        core(wire, alice).send_room("#lobby", "to the key the number covers only")
    wire.pump()
    assert not [msg for msg in wire.sent[alice] if isinstance(msg, m.Send | m.Fetch)]
    del bob


def test_a_copy_for_someone_away_needs_a_bundle_for_the_room_s_key() -> None:
    """The relay lists carol (away) in #lobby under a key of its own, then hands out her
    real bundle: the copy is not sealed to a key the room's number does not cover."""
    wire, (alice,) = people("alice")
    carol = wire.connect("carol")
    wire.hang_up(carol)  # known to the relay, away
    wire.take_all()
    listed = Member("carol", PrivateKey.generate().public_key)
    wire.deliver(alice, _frame(m.Members("#lobby", (), (listed,), more=False)))
    core(wire, alice).send_room("#lobby", "for carol's real key only?")
    wire.pump()
    assert [msg for msg in wire.sent[alice] if isinstance(msg, m.Fetch)] == [m.Fetch(("carol",))]
    assert not [msg for msg in wire.sent[alice] if isinstance(msg, m.Send)]


def test_a_join_under_a_key_the_directory_refused_is_ignored() -> None:
    """bob is back with a new connection; the relay says he joined #ops under another
    identity key, with his old session key (which the directory refuses as a replay):
    #ops must not list him under a key nothing is encrypted to."""
    wire, (alice, bob) = people("alice", "bob")
    wire.meet(alice, bob)
    old = peer_of(wire, bob)
    wire.hang_up(bob)
    wire.connect("bob", identity=core(wire, bob)._identity)
    core(wire, alice).join("#ops")
    wire.take_all()
    replayed = PeerInfo("bob", PrivateKey.generate().public_key, old.session_key)
    wire.deliver(alice, _frame(m.Entered("#ops", replayed)))
    assert [type(e).__name__ for e in wire.take(alice)] == ["SecurityWarning", "SecurityWarning"]
    assert "bob" not in core(wire, alice).room("#ops").members  # type: ignore[union-attr]


# -- what changed between two connections ------------------------------------------------------


def test_a_reader_added_while_we_were_away_is_said_on_the_next_connection() -> None:
    """Each connection has a new core; the members last seen outlive it (the Client's, and
    the profile's): a mallory in the first list of the next connection is news."""
    last = LastMembers()
    wire = FakeWire()
    alice, bob = wire.connect("alice", last_members=last), wire.connect("bob")
    in_room(wire, "#ops", alice, bob)
    identity = core(wire, alice)._identity
    wire.hang_up(alice)
    mallory = wire.connect("mallory")
    again = wire.connect("alice", identity, last_members=last)
    core(wire, again).join("#ops")
    wire.take_all()
    listed = (peer_of(wire, bob), peer_of(wire, mallory))
    wire.deliver(again, _frame(m.Members("#ops", listed, (), more=False)))
    assert RoomChanged("#ops", "while you were away, mallory joined") in wire.take(again)
    # The same list once more, on a third connection: nothing new.
    wire.hang_up(again)
    third = wire.connect("alice", identity, last_members=last)
    core(wire, third).join("#ops")
    wire.take_all()
    wire.deliver(third, _frame(m.Members("#ops", listed, (), more=False)))
    assert not [e for e in wire.take(third) if isinstance(e, RoomChanged)]


def test_the_members_last_seen_are_kept_as_rows_and_a_bad_row_is_skipped() -> None:
    last = LastMembers()
    bob, carol = PrivateKey.generate().public_key, PrivateKey.generate().public_key
    last.listed("#ops", {"bob": bob, "carol": carol})
    last.listed("#lobby", {"bob": bob})
    rows = {name: value for name, value in last.changes().items() if value is not None}
    rows["room-members:#bad"] = b"\x00" * 40  # cut short
    kept = LastMembers.from_rows(rows)
    assert kept.members("#ops") == {"bob": bytes(bob), "carol": bytes(carol)}
    assert "#bad" not in kept
    assert kept.listed("#ops", {"bob": bob, "carol": PrivateKey.generate().public_key}) == [
        "carol's key changed"
    ]
    assert kept.listed("#lobby", {}) == ["bob left"]


def test_a_live_room_message_from_a_non_contact_not_a_member_is_dropped() -> None:
    """Only mail kept while we were away may come from a member who has since left: the
    same from someone who writes now, and shares no room with us, is dropped and said."""
    wire, (alice, bob) = people("alice", "bob")
    in_room(wire, "#ops", alice, bob)
    mallory = wire.connect("mallory", rooms=())  # in no room: no contact of bob's
    wire.take_all()
    in_room(wire, "#ops", mallory)  # as mallory believes: #ops, with bob
    wire.deliver(mallory, _frame(m.Members("#ops", (peer_of(wire, bob),), (), False)))
    wire.take_all()
    assert "mallory" not in core(wire, bob).directory
    core(wire, mallory).send_room("#ops", "let me in")
    wire.pump()
    events = wire.take(bob)
    assert not [e for e in events if isinstance(e, MessageReceived)]
    assert [e for e in events if isinstance(e, SecurityWarning) and "not a member of #ops" in e.text]


# -- refusals, and joins asked for while registering ---------------------------------------------


def test_an_error_naming_no_room_we_asked_for_takes_no_room_away() -> None:
    """Anyone on the path can write an Error: one that names no room we asked for on this
    connection (and follows no join of ours) refuses nothing."""
    wire, (alice, _bob) = people("alice", "bob")
    in_room(wire, "#ops", alice)
    core(wire, alice)._rooms.join("#later")  # named at registration, not listed yet
    for code in ("too_many_rooms", "rate_limited"):
        wire.deliver(alice, _frame(m.Error(code, "the relay holds 10,000 rooms; not joined: #elsewhere")))
    assert core(wire, alice).rooms == ["#lobby", "#ops", "#later"]
    assert [type(e).__name__ for e in wire.take(alice)] == ["RelayError", "RelayError"]


def test_a_rate_limited_join_is_not_ours_and_can_be_asked_again() -> None:
    wire, (alice, _bob) = people("alice", "bob")
    core(wire, alice).join("#big")
    wire.take_all()
    text = "joining #big (its members are many) would go over your rate; try again in a moment"
    wire.deliver(alice, _frame(m.Error("rate_limited", text)))
    assert "#big" not in core(wire, alice).rooms
    assert RoomRefused("#big", "rate_limited") in wire.take(alice)
    core(wire, alice).join("#big")
    wire.pump()
    assert [msg for msg in wire.sent[alice] if isinstance(msg, m.Join)] == [m.Join("#big")] * 2
    assert core(wire, alice).room("#big").listed  # type: ignore[union-attr]


def test_a_join_or_part_between_registering_and_the_welcome_is_sent_once_online() -> None:
    wire = FakeWire()
    alice = wire.connect("alice", pump=False)  # its registration (naming #lobby) waits, unsent
    assert core(wire, alice).state is ClientState.AWAIT_WELCOME
    core(wire, alice).join("#ops")
    core(wire, alice).part("#lobby")
    wire.pump()
    assert wire.relay.kept.rooms.is_member("alice", "#ops")
    assert not wire.relay.kept.rooms.is_member("alice", "#lobby")
    assert core(wire, alice).rooms == ["#ops"]
    assert core(wire, alice).room("#ops").listed  # type: ignore[union-attr]


def test_no_copy_goes_in_a_session_kept_under_another_key_than_the_room_s() -> None:
    """bob is away; the relay lists him in #lobby under a key of its own: the session kept
    with him is under his real key, which the room's safety number does not cover."""
    wire, (alice, bob, carol) = people("alice", "bob", "carol")
    wire.meet(alice, bob)
    wire.hang_up(bob)
    wire.take_all()
    listed = Member("bob", PrivateKey.generate().public_key)
    wire.deliver(alice, _frame(m.Members("#lobby", (peer_of(wire, carol),), (listed,), more=False)))
    message_id = core(wire, alice).send_room("#lobby", "not for a key the number does not cover")
    wire.pump()
    assert core(wire, alice).left_out == ["bob"]
    sends = [msg for msg in wire.sent[alice] if isinstance(msg, m.Send) and msg.id == message_id]
    assert [item.to for msg in sends for item in msg.items] == ["carol"]


# -- who a room message goes to, kept between messages (Outbox.send_room) ---------------------


def test_a_member_who_joins_gets_the_next_room_message() -> None:
    """The room's view changes: its members online are found again."""
    wire, (alice, bob, carol) = people("alice", "bob", "carol")
    in_room(wire, "#ops", alice, bob)
    core(wire, alice).send_room("#ops", "bob's key pinned")  # (a pin is another change)
    core(wire, alice).send_room("#ops", "before carol")
    in_room(wire, "#ops", alice, bob, carol)  # carol, a contact already, joins #ops
    core(wire, alice).send_room("#ops", "after carol")
    wire.pump()
    assert [e.text for e in received(wire, carol)] == ["after carol"]


def test_a_member_back_online_gets_the_next_room_message_live() -> None:
    """Only the directory changes (the room lists her under the same key throughout)."""
    wire, (alice, bob) = people("alice", "bob")
    key = PrivateKey.generate()
    carol = wire.connect("carol", identity=key)
    in_room(wire, "#lobby", alice, bob, carol)
    core(wire, alice).send_room("#lobby", "all here")
    wire.pump()
    wire.hang_up(carol)
    wire.pump()
    core(wire, alice).send_room("#lobby", "carol away")
    wire.pump()
    back = wire.connect("carol", identity=key, keyring=core(wire, carol).keyring)  # (her sessions)
    wire.pump()
    wire.take_all()
    assert "carol" in core(wire, alice).peers
    view = core(wire, alice).room("#lobby").view  # type: ignore[union-attr]
    core(wire, alice).send_room("#lobby", "carol back")
    wire.pump()
    assert core(wire, alice).room("#lobby").view == view  # type: ignore[union-attr]
    assert "carol back" in [e.text for e in received(wire, back)]


def test_a_key_accepted_lets_the_next_room_message_go_to_it() -> None:
    """Only a pin changes: the members withheld are found again."""
    wire, (alice, _bob) = people("alice", "bob")
    core(wire, alice).send_room("#lobby", "to bob's key, pinned now")
    wire.pump()
    impostor = PeerInfo("bob", PrivateKey.generate().public_key, PrivateKey.generate().public_key)
    wire.deliver(alice, _frame(m.PeerJoined(impostor)))
    wire.take_all()
    with pytest.raises(CommandError, match="not sent"):
        core(wire, alice).send_room("#lobby", "not to the new key")
    assert core(wire, alice).left_out == ["bob"]
    core(wire, alice).accept_key("bob", core(wire, alice).key_fingerprint("bob"))
    core(wire, alice).send_room("#lobby", "to the key accepted")
    assert core(wire, alice).left_out == []
