"""Rooms on the relay: memberships (kept, and across a restart), presence only to those
who share a room, member lists (paged), joins and parts, the limits, and the order of
an ``entered`` before anything its newcomer sends."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from nacl.public import PrivateKey
from test_mailboxes import Relay, _to

from e2echat.crypto.identity import registration_proof
from e2echat.relay import registration
from e2echat.relay.core import Close, Persist, Write
from e2echat.relay.server import Relay as RelayServer
from e2echat.relay.sqlite_store import SqliteStore
from e2echat.wire import messages as m
from e2echat.wire.codec import encode_message
from e2echat.wire.fastpath import encode_member, encode_peer
from e2echat.wire.framing import encode_frame
from e2echat.wire.grammar import MAX_ROOMS
from e2echat.wire.objects import Envelope, Member, PeerInfo

from relay_frames import Outgoing, any_signed_prekey, decode_frame
from support import LOOPBACK, WAIT, RawClient, running

BODY = b"\x01" * 41


def _messages(relay: Relay, nick: str, out: list[Outgoing | Close]) -> list[m.Message]:
    return _to(relay.conns[nick], out, m.Message)


def _nicks(peers: tuple[PeerInfo, ...] | tuple[Member, ...]) -> list[str]:
    return [peer.nick for peer in peers]


# -- who hears of whom ---------------------------------------------------------------------------


def test_the_welcome_lists_contacts_only_and_presence_goes_only_to_them() -> None:
    relay = Relay()
    relay.join("alice", rooms=("#a",))
    relay.join("bob", rooms=("#b",))
    relay.join("carol", rooms=("#a", "#b"))
    out = relay.join("dave", rooms=("#a",))
    welcome = _to(relay.conns["dave"], out, m.Welcome)[0]
    assert sorted(_nicks(welcome.peers)) == ["alice", "carol"]
    for contact in ("alice", "carol"):
        assert [type(message) for message in _messages(relay, contact, out)] == [m.PeerJoined, m.Entered]
    assert _messages(relay, "bob", out) == []  # shares no room with dave: never hears of him
    out = relay.leave("dave")
    assert _to(relay.conns["alice"], out, m.PeerLeft) == [m.PeerLeft("dave")]
    assert _to(relay.conns["carol"], out, m.PeerLeft) == [m.PeerLeft("dave")]
    assert _messages(relay, "bob", out) == []


def test_a_client_in_two_rooms_gets_each_rooms_members_and_a_contact_in_both_hears_once() -> None:
    relay = Relay()
    relay.join("erin")
    relay.leave("erin")  # in #lobby, away
    relay.join("alice", rooms=("#a", "#lobby"))
    relay.join("bob", rooms=("#b",))
    out = relay.join("carol", rooms=("#a", "#b", "#lobby"))
    carol = _messages(relay, "carol", out)
    assert [type(message) for message in carol] == [m.Welcome, m.Members, m.Members, m.Members]
    assert sorted(_nicks(_to(relay.conns["carol"], out, m.Welcome)[0].peers)) == ["alice", "bob"]  # once each
    members = {message.room: message for message in carol if isinstance(message, m.Members)}
    assert list(members) == ["#a", "#b", "#lobby"]  # in the order of the register
    assert _nicks(members["#a"].peers) == ["alice"] and members["#a"].away == ()
    assert _nicks(members["#b"].peers) == ["bob"]
    assert _nicks(members["#lobby"].peers) == ["alice"]
    erin_key = relay.keys["erin"].public_key
    assert members["#lobby"].away == (Member("erin", erin_key),)
    # alice shares two rooms with carol: one "joined", and an "entered" for each.
    assert [type(message) for message in _messages(relay, "alice", out)] == [
        m.PeerJoined,
        m.Entered,
        m.Entered,
    ]


def test_a_register_makes_the_memberships_exactly_its_rooms() -> None:
    relay = Relay()
    relay.join("bob", rooms=("#a", "#b"))
    relay.leave("bob")
    relay.join("alice", rooms=("#a",))
    relay.join("carol", rooms=("#c",))
    out = relay.join("bob", rooms=("#b", "#c"))
    # alice shares nothing with bob now: told he left #a, not that he came online.
    assert _messages(relay, "alice", out) == [m.Parted("#a", "bob")]
    bob_peer = _to(relay.conns["carol"], out, m.PeerJoined)[0].peer
    assert _messages(relay, "carol", out) == [m.PeerJoined(bob_peer), m.Entered("#c", bob_peer)]
    rooms = relay.core.kept.rooms
    assert rooms.of("bob") == ["#b", "#c"] and not rooms.is_member("bob", "#a")
    assert "#b" in rooms.members  # his alone, kept while he is away
    kept = {(member.room, member.nick) for member in relay.store.load().members}
    assert kept == {("#a", "alice"), ("#b", "bob"), ("#c", "bob"), ("#c", "carol")}
    relay.leave("bob")
    out = relay.join("bob", rooms=())  # in no room: nobody's contact, and told of nobody
    assert [type(message) for message in _messages(relay, "bob", out)] == [m.Welcome]
    assert _to(relay.conns["bob"], out, m.Welcome)[0].peers == ()
    assert _messages(relay, "carol", out) == [m.Parted("#c", "bob")]
    assert "#b" not in rooms.members  # its last member parted


def test_members_come_after_the_directory_and_before_the_mail() -> None:
    relay = Relay()
    relay.join("bob", rooms=("#a",))
    relay.leave("bob")
    relay.join("alice", rooms=("#a",))
    relay.send("alice", 1, "bob")
    out = relay.join("bob", rooms=("#a",))
    assert [type(message) for message in _messages(relay, "bob", out)] == [m.Welcome, m.Members, m.Mail]


def test_members_are_paged_and_the_pages_hold_the_whole_room(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registration, "DIRECTORY_CHUNK", 3)
    relay = Relay()
    for nick in ("a1", "a2", "a3"):
        relay.join(nick, rooms=("#big",))
        relay.leave(nick)
    for nick in ("o1", "o2"):
        relay.join(nick, rooms=("#big",))
    out = relay.join("newcomer", rooms=("#big", "#empty"))
    pages = _to(relay.conns["newcomer"], out, m.Members)
    assert [(page.room, page.more) for page in pages] == [("#big", True), ("#big", False), ("#empty", False)]
    assert [len(page.peers) + len(page.away) for page in pages] == [3, 2, 0]
    assert _nicks(pages[0].peers) + _nicks(pages[1].peers) == ["o1", "o2"]
    assert _nicks(pages[0].away) + _nicks(pages[1].away) == ["a1", "a2", "a3"]
    keys = {member.nick: member.identity_key for page in pages for member in page.away}
    assert keys == {nick: relay.keys[nick].public_key for nick in ("a1", "a2", "a3")}


def test_members_pages_split_at_any_size() -> None:
    key = PrivateKey.generate().public_key
    online = [PeerInfo(f"p{i}", key, key) for i in range(5)]
    away = [Member(f"a{i}", key) for i in range(4)]
    frames = list(
        registration.members_pages("#r", [encode_peer(p) for p in online], [encode_member(a) for a in away])
    )
    assert [decode_frame(frame) for frame in frames] == [m.Members("#r", tuple(online), tuple(away))]
    for chunk in (1, 2, 4, 5, 9, 10):
        pages = [decode_frame(frame) for frame in _paged(chunk, online, away)]
        assert all(isinstance(page, m.Members) for page in pages)
        members = [page for page in pages if isinstance(page, m.Members)]
        assert [page.more for page in members] == [True] * (len(members) - 1) + [False]
        assert sum((page.peers for page in members), ()) == tuple(online)
        assert sum((page.away for page in members), ()) == tuple(away)
    assert [decode_frame(f) for f in registration.members_pages("#r", [], [])] == [m.Members("#r", (), ())]


def _paged(chunk: int, online: list[PeerInfo], away: list[Member]) -> list[bytes]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(registration, "DIRECTORY_CHUNK", chunk)
        return list(
            registration.members_pages(
                "#r", [encode_peer(p) for p in online], [encode_member(a) for a in away]
            )
        )


# -- join and part -------------------------------------------------------------------------------


def test_a_join_tells_the_members_online_and_is_answered_with_the_members() -> None:
    relay = Relay()
    relay.join("alice", rooms=("#a",))
    relay.join("bob", rooms=("#b",))
    relay.join("erin", rooms=("#a",))
    relay.leave("erin")
    out = relay.say("bob", m.Join("#a"))
    (entered,) = _messages(relay, "alice", out)
    assert isinstance(entered, m.Entered) and entered.room == "#a"
    assert (entered.peer.nick, entered.peer.identity_key) == ("bob", relay.keys["bob"].public_key)
    (members,) = _to(relay.conns["bob"], out, m.Members)
    assert members.room == "#a" and _nicks(members.peers) == ["alice"] and _nicks(members.away) == ["erin"]
    assert ("#a", "bob") in {(member.room, member.nick) for member in relay.store.load().members}
    again = relay.say("bob", m.Join("#a"))  # harmless: the members again, and nobody told
    assert [type(item.message) for item in again if isinstance(item, Outgoing)] == [m.Members]
    assert _messages(relay, "alice", again) == []


def test_a_part_tells_the_members_online_and_is_not_answered() -> None:
    relay = Relay()
    relay.join("alice", rooms=("#a",))
    relay.join("bob", rooms=("#a", "#b"))
    relay.join("carol", rooms=("#b",))
    out = relay.say("bob", m.Part("#a"))
    assert _messages(relay, "alice", out) == [m.Parted("#a", "bob")]
    assert _messages(relay, "bob", out) == [] and _messages(relay, "carol", out) == []
    assert relay.say("bob", m.Part("#a")) == []  # not in it: ignored
    assert relay.say("bob", m.Part("#nowhere")) == []
    # No longer contacts: bob's leaving is not alice's business.
    out = relay.leave("bob")
    assert _messages(relay, "alice", out) == [] and _to(relay.conns["carol"], out, m.PeerLeft)
    assert {(member.room, member.nick) for member in relay.store.load().members} == {
        ("#a", "alice"),
        ("#b", "bob"),
        ("#b", "carol"),
    }


def test_too_many_rooms_for_one_nick_is_an_error_and_the_connection_stays() -> None:
    relay = Relay()
    rooms = tuple(f"#r{i}" for i in range(MAX_ROOMS))
    relay.join("alice", rooms=rooms)
    out = relay.say("alice", m.Join("#one-more"))
    (error,) = _messages(relay, "alice", out)
    assert isinstance(error, m.Error) and error.code == "too_many_rooms"
    assert not [item for item in out if isinstance(item, Close)]
    assert not relay.core.kept.rooms.is_member("alice", "#one-more")
    assert _messages(relay, "alice", relay.say("alice", m.Ping())) == [m.Pong()]
    relay.say("alice", m.Part("#r0"))
    assert _to(relay.conns["alice"], relay.say("alice", m.Join("#one-more")), m.Members)


def test_the_relays_bound_on_rooms_refuses_a_new_room_not_an_existing_one() -> None:
    relay = Relay(max_rooms=2)
    relay.join("alice", rooms=("#a", "#b"))
    relay.join("bob", rooms=())
    (error,) = _messages(relay, "bob", relay.say("bob", m.Join("#c")))
    assert isinstance(error, m.Error) and error.code == "too_many_rooms"
    assert _to(relay.conns["bob"], relay.say("bob", m.Join("#a")), m.Members)
    # A register naming a room there is no place for: joins the others, and is told.
    out = relay.join("carol", rooms=("#c", "#b"))
    kinds = [type(message) for message in _messages(relay, "carol", out)]
    assert kinds == [m.Welcome, m.Members, m.Error]
    assert relay.core.kept.rooms.of("carol") == ["#b"]
    assert "#c" in _to(relay.conns["carol"], out, m.Error)[0].text
    relay.say("alice", m.Part("#b"))
    relay.say("carol", m.Part("#b"))  # #b is gone: a place for #c
    assert _to(relay.conns["carol"], relay.say("carol", m.Join("#c")), m.Members)


ABUSER, HONEST = "203.0.113.7", "198.51.100.1"


def test_throwaway_nicks_from_one_address_cannot_use_up_the_relays_rooms() -> None:
    """The attack: 157 throwaway nicks, each naming 64 new rooms and leaving, would hold
    all 10,000 rooms for a month (memberships last as long as the identities). Each
    address may have made at most ``rooms_per_address`` rooms that still exist, so the
    rest of the relay can still make rooms; and that cap is never anyone's but the
    address's."""
    relay = Relay(connect_rate=1e9, connect_burst=1e9)
    limits = relay.core.limits
    assert (limits.max_rooms, limits.rooms_per_address) == (10_000, 256)
    for index in range(157):
        named = tuple(f"#t{index}-{slot}" for slot in range(MAX_ROOMS))
        relay.join(f"throwaway{index}", rooms=named, address=ABUSER)
        relay.leave(f"throwaway{index}")
    rooms = relay.core.kept.rooms
    assert len(rooms.members) == 256 == rooms.founded[ABUSER]
    # Joining from the abuser's address makes nothing new, and says why ...
    relay.join("throwaway-more", rooms=(), address=ABUSER)
    (error,) = _messages(relay, "throwaway-more", relay.say("throwaway-more", m.Join("#one-more")))
    assert isinstance(error, m.Error) and error.code == "too_many_rooms" and "your address" in error.text
    # ... though a room that exists can still be joined from it.
    assert _to(relay.conns["throwaway-more"], relay.say("throwaway-more", m.Join("#t0-0")), m.Members)
    # Everyone else makes rooms as before.
    out = relay.join("alice", rooms=("#ours",), address=HONEST)
    assert _to(relay.conns["alice"], out, m.Members)[0].room == "#ours"
    assert _to(relay.conns["alice"], relay.say("alice", m.Join("#new")), m.Members)
    assert rooms.founded[HONEST] == 2


def test_rooms_made_count_against_their_address_only_while_they_last() -> None:
    relay = Relay(rooms_per_address=2)
    relay.join("bob", rooms=("#a", "#b"), address=ABUSER)
    out = relay.join("carol", rooms=("#a", "#c"), address=ABUSER)  # #a exists: no new room for it
    (refused,) = _to(relay.conns["carol"], out, m.Error)
    assert refused.code == "too_many_rooms" and refused.text.endswith("not joined: #c")
    assert relay.core.kept.rooms.of("carol") == ["#a"]
    relay.say("bob", m.Part("#b"))  # gone with its last member: a place for one more
    assert _to(relay.conns["carol"], relay.say("carol", m.Join("#c")), m.Members)
    relay.say("bob", m.Part("#a"))  # #a lives on in carol, and still counts
    (error,) = _messages(relay, "carol", relay.say("carol", m.Join("#d")))
    assert isinstance(error, m.Error) and error.code == "too_many_rooms"


def test_rooms_of_people_away_for_a_week_outlive_the_abuse() -> None:
    """Nothing the cap does ends a room: the rooms of people away for a week are all
    there, with their members, after an abuser used up its address's share."""
    relay = Relay(connect_rate=1e9, connect_burst=1e9, rooms_per_address=10, max_rooms=20)
    relay.join("alice", rooms=("#holiday", "#work"), address=HONEST)
    relay.join("bob", rooms=("#holiday",), address=HONEST)
    relay.leave("alice")
    relay.leave("bob")
    relay.tick(7 * 24 * 3600.0)
    for index in range(3):
        relay.join(f"throwaway{index}", rooms=tuple(f"#t{index}-{slot}" for slot in range(8)), address=ABUSER)
        relay.leave(f"throwaway{index}")
    rooms = relay.core.kept.rooms
    assert len(rooms.members) == 12
    assert list(rooms.members["#holiday"]) == ["alice", "bob"] and list(rooms.members["#work"]) == ["alice"]
    out = relay.join("carol", rooms=("#holiday", "#new"), address="192.0.2.9")
    members = _to(relay.conns["carol"], out, m.Members)
    assert [(page.room, _nicks(page.away)) for page in members] == [
        ("#holiday", ["alice", "bob"]),
        ("#new", []),
    ]


def test_a_rooms_limit_hit_is_logged_in_one_line_at_most_once_a_second(
    caplog: pytest.LogCaptureFixture,
) -> None:
    relay = Relay(max_rooms=MAX_ROOMS + 1, rooms_per_address=MAX_ROOMS + 2)
    relay.join("alice", rooms=tuple(f"#secret{i}" for i in range(MAX_ROOMS)), address=HONEST)
    relay.join("bob", rooms=("#secret-too",), address=HONEST)  # the relay's last place
    lines = []
    for _ in range(2):
        with caplog.at_level(logging.WARNING, "e2echat.relay.core"):
            flood = b"".join(_raw(m.Join(f"#secret-more{i}")) for i in range(20))
            relay.core.receive_data(relay.conns["alice"], flood, relay.now)
            relay.core.receive_data(relay.conns["bob"], flood, relay.now)
            relay.join("carol", rooms=("#secret-also",), address=HONEST)
            relay.leave("carol")
        lines.append([record.getMessage() for record in caplog.records])
        caplog.clear()
        relay.now += 1.0
    # Each connection's hit, once a second however often: alice's own bound, bob's (the
    # relay's), and carol's register; never a room's name.
    for logged in lines:
        assert len(logged) == 3 and all("\n" not in line and "secret" not in line for line in logged)
        assert "64 rooms" in logged[0] and "10,000" not in logged[1] and "65 rooms" in logged[1]
    assert "65 rooms" in lines[0][2]


def test_an_evicted_identity_parts_its_rooms() -> None:
    relay = Relay(bundles=2)
    relay.join("bob", rooms=("#a",))
    relay.leave("bob")
    relay.join("alice", rooms=("#a",))
    out = relay.join("carol", rooms=("#c",))  # three identities: bob, away longest, goes
    assert not relay.core.kept.knows("bob")
    assert _messages(relay, "alice", out) == [m.Parted("#a", "bob")]
    assert ("#a", "bob") not in {(member.room, member.nick) for member in relay.store.load().members}


# -- order ---------------------------------------------------------------------------------------


def test_an_entered_is_written_before_anything_the_newcomer_sends_after_it() -> None:
    """Even when what it sends waits for the store (a copy queued for someone away): the
    ``entered`` is never behind a ``Persist``."""
    relay = Relay()
    relay.join("erin", rooms=("#a",))
    relay.leave("erin")
    relay.join("alice", rooms=("#a",))
    relay.join("bob", rooms=())
    frames = b"".join(
        _raw(message)
        for message in (m.Join("#a"), m.Send(1, (Envelope("alice", BODY), Envelope("erin", BODY))))
    )
    actions = relay.core.receive_data(relay.conns["bob"], frames, relay.now)
    alice = relay.conns["alice"]
    to_alice = []
    for action in actions:
        if isinstance(action, Write):
            to_alice += [decode_frame(data) for conn, data in action.frames if conn == alice]
        elif isinstance(action, Persist):
            assert all(conn != alice for conn, _ in action.frames)
    assert [type(message) for message in to_alice] == [m.Entered, m.Deliver]


def _raw(message: m.Message) -> bytes:
    return encode_frame(encode_message(message))


# -- over real sockets ---------------------------------------------------------------------------


async def _register(relay: RelayServer, nick: str, rooms: tuple[str, ...], identity: PrivateKey) -> RawClient:
    """``nick`` registered in ``rooms``: its welcome read, all after it left to read."""
    client = await RawClient.open(relay)
    challenge = await client.receive_kind(m.Challenge)
    session = PrivateKey.generate()
    proofs = registration_proof(identity, session, challenge)
    register = m.Register(nick, identity.public_key, session.public_key, *proofs, any_signed_prekey(), rooms)
    client.send(register)
    await client.receive_kind(m.Welcome)
    return client


async def _nothing_but_pong(client: RawClient) -> bool:
    """A fence: the relay answers a ping in turn, so anything it had for ``client`` before
    comes first. True if nothing did."""
    client.send(m.Ping())
    return await client.receive() == m.Pong()


async def test_memberships_outlive_a_restart_with_a_store(tmp_path: Path) -> None:
    path = tmp_path / "relay.db"
    key = PrivateKey.generate()
    bob = PrivateKey.generate()
    async with running(RelayServer(LOOPBACK, 0, store=SqliteStore(path), key=key)) as relay:
        client = await _register(relay, "bob", ("#a", "#b"), bob)
        await client.receive_kind(m.Members)
        client.close()
        async with asyncio.timeout(WAIT):
            while "bob" in relay.core.online:
                await asyncio.sleep(0.01)
    async with running(RelayServer(LOOPBACK, 0, store=SqliteStore(path), key=key)) as again:
        alice = await _register(again, "alice", ("#a",), PrivateKey.generate())
        members = await alice.receive_kind(m.Members)
        assert members == m.Members("#a", (), (Member("bob", bob.public_key),))
        back = await _register(again, "bob", ("#b",), bob)  # now only in #b
        assert await alice.receive_kind(m.Parted) == m.Parted("#a", "bob")
        assert (await back.receive_kind(m.Members)).room == "#b"
        assert await _nothing_but_pong(back)
    kept = SqliteStore(path)
    try:
        assert {(member.room, member.nick) for member in kept.load().members} == {
            ("#a", "alice"),
            ("#b", "bob"),
        }
    finally:
        kept.close()


async def test_someone_who_shares_no_room_never_hears_of_a_join_or_leave() -> None:
    async with running(RelayServer(LOOPBACK, 0)) as relay:
        alice = await _register(relay, "alice", ("#a",), PrivateKey.generate())
        bob = await _register(relay, "bob", ("#b",), PrivateKey.generate())
        for client in (alice, bob):
            await client.receive_kind(m.Members)
        carol = await _register(relay, "carol", ("#a",), PrivateKey.generate())
        assert (await alice.receive_kind(m.PeerJoined)).peer.nick == "carol"
        assert (await alice.receive_kind(m.Entered)).peer.nick == "carol"
        assert await _nothing_but_pong(bob)
        carol.send(m.Join("#b"))
        entered = await bob.receive_kind(m.Entered)
        assert (entered.room, entered.peer.nick) == ("#b", "carol")
        carol.send(m.Part("#b"))
        assert await bob.receive_kind(m.Parted) == m.Parted("#b", "carol")
        carol.close()
        assert await alice.receive_kind(m.PeerLeft) == m.PeerLeft("carol")
        assert await _nothing_but_pong(bob)


async def test_over_a_socket_an_entered_comes_before_the_newcomers_first_message() -> None:
    async with running(RelayServer(LOOPBACK, 0)) as relay:
        alice = await _register(relay, "alice", ("#a",), PrivateKey.generate())
        await alice.receive_kind(m.Members)
        bob = await _register(relay, "bob", (), PrivateKey.generate())
        bob.send(m.Join("#a"))
        bob.send(m.Send(1, (Envelope("alice", BODY),)))
        entered = await alice.receive()
        assert isinstance(entered, m.Entered) and entered.peer.nick == "bob"
        assert await alice.receive() == m.Deliver("bob", BODY)


def _big_room(relay: Relay, members: int) -> None:
    """``#big``, with ``members`` away."""
    for index in range(members):
        relay.now += 0.25  # within the relay's rate of new connections
        relay.join(f"m{index}", rooms=("#big",))
        relay.leave(f"m{index}")


def test_a_join_is_paid_for_by_the_size_of_its_answer() -> None:
    """A join of a big room makes the relay write its whole member list: 40 bytes asking
    for a megabyte. It is charged to the joiner's byte rate as if it had sent that much,
    beyond the burst too: what the bucket lacks is owed."""
    relay = Relay(byte_rate=1000, byte_burst=3000)
    _big_room(relay, 40)
    relay.join("alice", rooms=())
    (error,) = _messages(relay, "alice", relay.say("alice", m.Join("#big")))  # 40 × 106 > 1000
    assert isinstance(error, m.Error) and error.code == "rate_limited"
    assert not relay.core.kept.rooms.is_member("alice", "#big")
    relay.now += 3.0  # the bucket refills
    (members,) = _to(relay.conns["alice"], relay.say("alice", m.Join("#big")), m.Members)
    assert len(members.away) == 40
    # The answer was over the burst: the rest is owed, and nothing more goes through yet.
    assert m.Pong() not in _messages(relay, "alice", relay.say("alice", m.Ping()))
    # A small room costs next to nothing (but the frame itself, as any frame).
    relay.now += 5.0
    assert _to(relay.conns["alice"], relay.say("alice", m.Join("#small")), m.Members)


def test_refused_joins_are_told_once_a_second_and_a_flood_of_them_is_hung_up_on() -> None:
    """Refused joins follow the rules of every frame over the rate: one ``error
    rate_limited`` a second at most (not one each), and a sender that keeps on after
    being told is disconnected."""
    relay = Relay(byte_rate=1000, byte_burst=3000)
    _big_room(relay, 40)  # a join costs over 4 KB: half a bucket (1,500) is needed
    relay.join("alice", rooms=())
    flood = b"".join(_raw(m.Join("#big")) for _ in range(20))
    out = relay.keep(relay.core.receive_data(relay.conns["alice"], flood, relay.now))
    errors = _to(relay.conns["alice"], out, m.Error)
    # Told once that it is over; then, refused 3,000 bytes' worth in one episode (more
    # than the burst), hung up on.
    assert [error.code for error in errors] == ["rate_limited", "rate_limited"]
    assert "#big" in errors[0].text and "disconnected" in errors[1].text
    assert [item.conn for item in out if isinstance(item, Close)] == [relay.conns["alice"]]
    assert not relay.core.kept.rooms.is_member("alice", "#big")


def test_refused_joins_within_a_second_get_one_warning() -> None:
    relay = Relay(byte_rate=1000, byte_burst=100_000)
    _big_room(relay, 40)
    relay.join("alice", rooms=())
    flood = b"".join(_raw(m.Join("#big")) for _ in range(10))
    out = relay.keep(relay.core.receive_data(relay.conns["alice"], flood, relay.now))
    assert len(_to(relay.conns["alice"], out, m.Error)) == 1
    assert not [item for item in out if isinstance(item, Close)]
    relay.now += 1.0  # a second on, still short: told again
    (error,) = _messages(relay, "alice", relay.say("alice", m.Join("#big")))
    assert isinstance(error, m.Error) and error.code == "rate_limited"


def _written(relay: Relay) -> int:
    """Bytes of the frames the core's latest answer has the relay write."""
    return sum(
        len(frame)
        for action in relay.actions
        if isinstance(action, Write | Persist)
        for _, frame in action.frames
    )


def _charged(relay: Relay, nick: str, message: m.Message) -> tuple[int, int]:
    """What ``nick`` saying ``message`` made the relay write, and what it was charged for
    that beyond the frame's own charge (its size, ``strict_weight`` times: it is not a send)."""
    flow = relay.core._connections[relay.conns[nick]].flow
    assert flow is not None
    before = flow.byte_tokens
    relay.say(nick, message)
    frame_charge = len(encode_message(message)) * relay.core.limits.strict_weight
    return _written(relay), int(before - flow.byte_tokens - frame_charge)


@pytest.mark.parametrize("length", [1, 8, 32])
def test_a_join_and_a_part_are_charged_what_they_make_the_relay_write(length: int) -> None:
    """The answer lists every member (up to 166 bytes each online, 105 away), and each
    member online is sent an ``entered`` (up to 245 bytes), then a ``parted``: all paid
    for by the joiner: never less than it costs, and at most the cost of the longest
    nicks and room names (under 2.5 times, for the shortest)."""
    relay = Relay(connect_rate=1e9, connect_burst=1e9)
    room = "#" + "r" * length
    for index in range(30):
        nick = f"{index:02d}".ljust(length, "a")
        relay.join(nick, rooms=(room,))
        if index % 3:
            relay.leave(nick)
    joiner = "j" * length
    relay.join(joiner, rooms=())
    for message in (m.Join(room), m.Join(room), m.Part(room)):  # a join again: its answer only
        written, charged = _charged(relay, joiner, message)
        assert written > 400
        assert written <= charged <= 2.5 * written
