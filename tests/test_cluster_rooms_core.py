"""Rooms across a cluster, without NATS: the rooms bucket's keys and values
(relay/cluster/rooms.py), and what a relay's core makes of the other relays' memberships:
member lists, ``entered`` and ``parted``, presence only to contacts, copies for members
away elsewhere, a member moving between relays, and the cluster's room limit."""

from __future__ import annotations

import pytest
from nacl.public import PrivateKey
from test_cluster_core import _written
from test_cores import UNLIMITED, FakeWire

from e2echat.client.events import PeerJoined, PeerLeft, RoomChanged, RoomEntered, RoomParted, RoomRefused
from e2echat.errors import RemoteProtocolError
from e2echat.relay.actions import ConnId, Persist
from e2echat.relay.cluster.core import Claim, ClusterCore, FetchElsewhere, Forward
from e2echat.relay.cluster.memberships import UNTOLD_WAIT
from e2echat.relay.cluster.rooms import (
    DropMembership,
    Membership,
    SaveMembership,
    decode_membership,
    decode_ordered,
    encode_membership,
    encode_ordered,
    member_key,
    parse_member_key,
)
from e2echat.relay.cluster.wire import encode_forward
from e2echat.relay.limits import Limits
from e2echat.relay.rooms import PEER_ENTRY
from e2echat.relay.routing import Copies
from e2echat.relay.store import Enqueue
from e2echat.wire import messages as m
from e2echat.wire.fastpath import encode_send
from e2echat.wire.framing import encode_frame
from e2echat.wire.messages import Routed
from e2echat.wire.objects import PeerInfo

NODE = "0123456789abcdef"
OTHER = "fedcba9876543210"
KEY = bytes(PrivateKey.generate().public_key)


def _wire(limits: Limits = UNLIMITED) -> tuple[FakeWire, ClusterCore]:
    core = ClusterCore(limits, node=NODE)
    return FakeWire(relay=core), core


def _join(wire: FakeWire, core: ClusterCore, nick: str, *rooms: str) -> ConnId:
    """``nick`` registers on this relay, in ``rooms``, its claim made."""
    conn = wire.connect(nick, rooms=rooms)
    claims = [r for r in core.requests if isinstance(r, Claim) and r.conn == conn]
    assert claims
    wire.apply(core.claimed(conn, None, wire.now))
    wire.pump()
    wire.take(conn)
    return conn


def _elsewhere(nick: str) -> PeerInfo:
    return PeerInfo(nick, PrivateKey.generate().public_key, PrivateKey.generate().public_key)


def _member(room: str, peer: PeerInfo, node: str = OTHER) -> Membership:
    return Membership(room, peer.nick, bytes(peer.identity_key), 1.0, node)


# -- the bucket's keys and values ----------------------------------------------------------


def test_a_membership_goes_both_ways() -> None:
    membership = Membership("#ops.team", "alice", KEY, 1234.5, NODE)
    key = member_key("#ops.team", "alice")
    assert "." in key and key.count(".") == 1  # the room's '.' is inside its hex
    assert parse_member_key(key) == ("#ops.team", "alice")
    assert decode_membership(key, encode_membership(membership)) == membership


@pytest.mark.parametrize(
    "key",
    ["", "23.616c696365", "nothex.616c696365", member_key("#ops", "alice") + ".00", "236f7073.00"],
)
def test_a_key_that_is_not_a_membership_is_refused(key: str) -> None:
    with pytest.raises(RemoteProtocolError):
        parse_member_key(key)


def test_a_forward_s_order_goes_both_ways() -> None:
    forward = encode_forward("alice", [("bob", b"body")])
    assert decode_ordered(encode_ordered(17, 42, forward)) == (17, 42, forward)
    for broken in (encode_ordered(17, 42, forward)[:10], forward):
        with pytest.raises(RemoteProtocolError):
            decode_ordered(broken)


def test_a_value_that_is_not_a_membership_is_refused() -> None:
    key = member_key("#ops", "alice")
    value = encode_membership(Membership("#ops", "alice", KEY, 1.0, NODE))
    for broken in (
        value[:-1],
        value + b"x",
        b"X" + value[1:],  # not a node id
        encode_membership(Membership("#ops", "bobby", KEY, 1.0, NODE)),  # another nick than its key's
    ):
        with pytest.raises(RemoteProtocolError):
            decode_membership(key, broken)


# -- the core --------------------------------------------------------------------------------


def test_another_relay_s_members_are_listed_entered_and_parted() -> None:
    wire, core = _wire()
    alice = _join(wire, core, "alice", "#ops")
    bob = _elsewhere("bob")
    wire.apply(core.remote_joined(OTHER, bob, wire.now))  # online there, no room shared yet
    assert not [e for e in wire.take(alice) if isinstance(e, PeerJoined)]
    wire.apply(core.remote_member(_member("#ops", bob), wire.now))
    events = wire.take(alice)
    assert PeerJoined("bob") in events and RoomEntered("#ops", "bob") in events
    assert wire.clients[alice].room("#ops").others == ["bob"]  # type: ignore[union-attr]
    # A newcomer here gets bob in its welcome and its list of #ops.
    carol = _join(wire, core, "carol", "#ops")
    assert "bob" in wire.clients[carol].peers
    assert sorted(wire.clients[carol].room("#ops").others) == ["alice", "bob"]  # type: ignore[union-attr]
    wire.apply(core.remote_left(OTHER, "bob"))
    assert PeerLeft("bob") in wire.take(alice)
    assert wire.clients[alice].away_in("#ops") == ["bob"]  # a member still
    wire.apply(core.remote_member_gone("#ops", "bob"))
    assert RoomParted("#ops", "bob") in wire.take(alice)


def test_a_membership_seen_before_its_member_online_is_told_when_it_comes() -> None:
    wire, core = _wire()
    alice = _join(wire, core, "alice", "#ops")
    bob = _elsewhere("bob")
    wire.apply(core.remote_member(_member("#ops", bob), wire.now))  # the nicks bucket lags
    assert not wire.take(alice)
    wire.apply(core.remote_joined(OTHER, bob, wire.now))
    events = wire.take(alice)
    assert PeerJoined("bob") in events and RoomEntered("#ops", "bob") in events


def test_presence_of_another_relay_s_clients_goes_only_to_contacts() -> None:
    wire, core = _wire()
    _join(wire, core, "alice", "#a")
    dave = _join(wire, core, "dave", "#b")
    bob = _elsewhere("bob")
    wire.apply(core.remote_member(_member("#b", bob), wire.now))
    wire.apply(core.remote_joined(OTHER, bob, wire.now))
    wire.apply(core.remote_left(OTHER, "bob"))
    # Written to dave only (alice's client would ignore a stranger's, so what the relay
    # wrote is what is checked).
    told = [out.conn for out in wire.outgoing if isinstance(out.message, m.PeerJoined | m.PeerLeft)]
    assert told == [dave, dave]
    assert PeerLeft("bob") in wire.take(dave)
    # Nor is it in a newcomer's directory unless they share a room.
    wire.apply(core.remote_joined(OTHER, bob, wire.now))
    erin = _join(wire, core, "erin", "#a")
    assert "bob" not in wire.clients[erin].peers


def test_a_room_s_copy_for_a_member_away_elsewhere_goes_to_the_relay_that_keeps_it() -> None:
    wire, core = _wire()
    bob = _elsewhere("bob")
    wire.apply(core.remote_member(_member("#ops", bob), wire.now))  # away: unknown here
    alice = _join(wire, core, "alice", "#ops")
    assert wire.clients[alice].away_in("#ops") == ["bob"]
    core.requests.clear()
    # First contact: its bundle is asked of the relay that keeps it.
    wire.clients[alice].send_room("#ops", "for bob")
    wire.pump()
    (fetch,) = core.requests
    assert isinstance(fetch, FetchElsewhere) and fetch.groups == {OTHER: ["bob"]}
    # And its copy goes there.
    core.requests.clear()
    wire.to_relay(alice, encode_frame(encode_send(7, [("bob", b"ciphertext")])))
    (forward,) = core.requests
    assert isinstance(forward, Forward) and forward.groups == {OTHER: [("bob", b"ciphertext")]}


def test_copies_for_a_member_away_here_are_queued_in_its_mailbox() -> None:
    wire, core = _wire()
    carol = _join(wire, core, "carol", "#ops")
    wire.hang_up(carol)
    actions, (delivered, refused, missing, queued, full) = core.deliver_here(
        "bob", 42, [("carol", b"body"), ("zed", b"body"), ("bob", b"body")], wire.now
    )
    assert queued == ["carol"] and missing == ["zed", "bob"] and not delivered + refused + full
    persisted = [op for action in actions if isinstance(action, Persist) for op in action.ops]
    assert [type(op) for op in persisted] == [Enqueue]


def test_an_answer_with_copies_queued_there_reports_them_queued() -> None:
    forward = Forward(7, "alice", 42, Copies(), {OTHER: [("bob", b"b"), ("carol", b"c")]})
    routed = _written(forward.routed({OTHER: ([], [], [], ["bob", "mallory"], ["carol"])}))
    assert isinstance(routed, Routed)
    assert routed.queued == ("bob",) and routed.full == ("carol",)  # mallory: not asked about


def test_each_membership_change_here_is_put_in_or_dropped_from_the_bucket() -> None:
    wire, core = _wire()
    conn = wire.connect("alice", rooms=("#ops", "#dev"))
    actions = core.claimed(conn, None, wire.now)
    core.mirror(actions)  # as the shell does with every action
    saves = [r for r in core.requests if isinstance(r, SaveMembership)]
    assert sorted(s.membership.room for s in saves) == ["#dev", "#ops"]
    assert all(s.membership.node == NODE and s.membership.identity_key for s in saves)
    wire.apply(actions)
    wire.pump()
    core.requests.clear()
    wire.clients[conn].part("#dev")
    core.mirror(core.receive_data(conn, wire.clients[conn].data_to_send(), wire.now))
    assert core.requests == [DropMembership("#dev", "alice")]


def test_a_member_registering_here_takes_its_memberships_from_the_other_relay() -> None:
    wire, core = _wire()
    alice = _join(wire, core, "alice", "#ops")
    identity = PrivateKey.generate()
    bob = PeerInfo("bob", identity.public_key, PrivateKey.generate().public_key)
    for room in ("#ops", "#old"):
        wire.apply(core.remote_member(_member(room, bob), wire.now))
    wire.take(alice)
    core.requests.clear()
    conn = wire.connect("bob", identity, rooms=("#ops",))
    actions = core.claimed(conn, None, wire.now)
    core.mirror(actions)
    wire.apply(actions)
    wire.pump()
    assert core.remote_rooms.of("bob") == []
    assert core.kept.rooms.of("bob") == ["#ops"]
    puts = [r.membership.room for r in core.requests if isinstance(r, SaveMembership)]
    assert "#ops" in puts and DropMembership("#old", "bob") in core.requests
    # alice knew bob in #ops already: it came online, it did not join.
    events = wire.take(alice)
    assert PeerJoined("bob") in events and RoomEntered("#ops", "bob") not in events


def test_a_membership_put_elsewhere_for_a_member_online_here_stays_here() -> None:
    wire, core = _wire()
    _join(wire, core, "alice", "#ops")
    core.requests.clear()
    stale = Membership("#ops", "alice", KEY, 1.0, OTHER)
    wire.apply(core.remote_member(stale, wire.now))
    assert core.kept.rooms.is_member("alice", "#ops") and core.remote_rooms.get("#ops", "alice") is None
    assert [type(r) for r in core.requests] == [SaveMembership]  # put back under this relay


def test_a_member_away_here_whose_membership_moved_is_dropped_quietly() -> None:
    wire, core = _wire()
    alice = _join(wire, core, "alice", "#ops")
    carol = _join(wire, core, "carol", "#ops")
    wire.hang_up(carol)
    wire.take(alice)
    moved = Membership("#ops", "carol", KEY, 1.0, OTHER)
    wire.apply(core.remote_member(moved, wire.now))
    assert not core.kept.rooms.is_member("carol", "#ops")
    assert core.remote_rooms.get("#ops", "carol") == moved
    assert not [e for e in wire.take(alice) if isinstance(e, RoomParted | RoomEntered)]


def test_the_rooms_on_other_relays_count_against_the_limit_and_are_joined_freely() -> None:
    wire, core = _wire(Limits(rate=1e9, burst=1e9, max_rooms=2))
    alice = _join(wire, core, "alice", "#a")
    bob = _elsewhere("bob")
    wire.apply(core.remote_member(_member("#b", bob), wire.now))
    assert core.kept.rooms.refusal("alice", "#c", "x") is not None  # #a here, #b there: full
    assert core.kept.rooms.refusal("alice", "#b", "x") is None  # exists: joined, not made
    wire.clients[alice].join("#c")
    wire.pump()
    assert any(isinstance(e, RoomRefused) for e in wire.take(alice))


def test_a_join_is_charged_for_the_other_relays_members_it_lists() -> None:
    wire, core = _wire()
    before = core.kept.rooms.join_cost("alice", "#big")
    for number in range(100):
        wire.apply(core.remote_member(_member("#big", _elsewhere(f"user{number}")), wire.now))
    assert core.kept.rooms.join_cost("alice", "#big") >= before + 100 * PEER_ENTRY


def test_a_membership_whose_member_never_shows_up_online_is_told_by_the_list() -> None:
    """It registered there and left before this relay read of it (or it is made up): the
    room's members here are sent its list again, and see the change."""
    wire, core = _wire()
    alice = _join(wire, core, "alice", "#ops")
    wire.apply(core.remote_member(_member("#ops", _elsewhere("carol")), wire.now))
    wire.apply(core.tick(wire.now + UNTOLD_WAIT / 2))
    assert not [e for e in wire.take(alice) if isinstance(e, RoomChanged)]
    wire.apply(core.tick(wire.now + UNTOLD_WAIT))
    changed = [e for e in wire.take(alice) if isinstance(e, RoomChanged)]
    assert changed and changed[0].room == "#ops"
    assert wire.clients[alice].away_in("#ops") == ["carol"]
    assert not core.remote_rooms.untold
