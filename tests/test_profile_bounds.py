"""What strangers coming and going, and a hostile relay, can make a client keep: pins, the
session keys of people who left, the directory (issue 16, denial of service 5 and 6)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import nacl.utils
import pytest
from nacl.public import PrivateKey, PublicKey
from test_cores import FakeWire, _frame

from e2echat.client.core import ClientCore, KeyChanged, KeyPinned, MessageReceived, SecurityWarning
from e2echat.client.directory import MAX_PEERS, RETIRED_PER_NICK, RETIRED_TOTAL, Directory
from e2echat.client.trust import KnownPeers, Trust
from e2echat.errors import CommandError, RelayGone, RemoteProtocolError
from e2echat.relay.core import ConnId
from e2echat.store.pins import KNOWN_PEERS_FILE, PinFile
from e2echat.store.sessions import SESSIONS_FILE, SessionFile
from e2echat.wire import messages as m
from e2echat.wire.grammar import CHALLENGE_SIZE
from e2echat.wire.objects import PeerInfo

from hostile import HostileRelay, made_up_peers
from relay_frames import Outgoing
from support import connect, peers, running

# -- pins: on the first message exchanged, not on sight ----------------------------------------


async def test_strangers_coming_and_going_pin_nothing(tmp_path: Path) -> None:
    """Registration churn: 500 nicks join and leave (today's relay lets one process make
    1,685 a second). Before, each was pinned forever (2.7 MiB of known_peers.json in 10 s)."""
    store = PinFile(tmp_path / KNOWN_PEERS_FILE)
    async with running(HostileRelay()) as relay:
        alice = await connect(relay, "alice", known_peers=store.load(), pin_file=store)
        strangers = [fake.info for fake in made_up_peers(relay, "alice", 500)]
        relay.inject_many("alice", [m.PeerJoined(peer) for peer in strangers])
        relay.inject_many("alice", [m.PeerLeft(peer.nick) for peer in strangers])
        while alice.connection.core.peers or len(alice.seen) < 1000:
            await alice.next_any_event()
        assert alice.connection.core.known_peers.get("fake0") is None
        await alice.connection.close()
    assert not store.path.exists() or KnownPeers.decode(store.path.read_bytes()).get("fake0") is None


def test_the_first_message_either_way_pins_the_key() -> None:
    wire = FakeWire()
    alice, bob, _ = wire.connect("alice"), wire.connect("bob"), wire.connect("carol")
    client = wire.clients[alice]
    assert client.known_peers.get("bob") is None and client.trust("bob") is Trust.UNVERIFIED
    wire.take_all()
    client.send_private("bob", "hi bob")
    wire.pump()
    assert KeyPinned("bob") in wire.take(alice, pins=True)  # we sent to bob: pinned
    assert wire.take(bob, pins=True)[:2] == [KeyPinned("alice"), MessageReceived("alice", "hi bob", True)]
    assert wire.clients[bob].known_peers.get("alice") is not None  # bob got one: pinned too
    assert client.known_peers.get("carol") is None  # never talked to carol
    assert client.trust("carol") is Trust.UNVERIFIED
    client.send_private("bob", "again")  # said once
    wire.pump()
    assert KeyPinned("bob") not in wire.take(alice, pins=True)


def test_a_key_change_is_caught_for_people_we_talked_to_only() -> None:
    wire = FakeWire()
    alice, bob, carol = wire.connect("alice"), wire.connect("bob"), wire.connect("carol")
    wire.meet(alice, bob)
    wire.hang_up(bob)
    wire.hang_up(carol)
    wire.take_all()
    wire.connect("bob")  # another identity key
    wire.connect("carol")  # another identity key, but alice never talked to carol
    events = wire.take(alice)
    assert [e.nick for e in events if isinstance(e, KeyChanged)] == ["bob"]
    assert wire.clients[alice].trust("bob") is Trust.CHANGED
    assert wire.clients[alice].trust("carol") is Trust.UNVERIFIED


def test_verifying_a_key_pins_it() -> None:
    wire = FakeWire()
    alice, _ = wire.connect("alice"), wire.connect("bob")
    client = wire.clients[alice]
    client.set_verified("bob", True)
    pin = client.known_peers.get("bob")
    assert pin is not None and pin.verified and pin.identity_key == client.directory["bob"].identity_key


# -- the session keys of people who left --------------------------------------------------------


def _retired(wire: FakeWire, conn: ConnId) -> int:
    return len(wire.clients[conn]._directory._retired)


def test_a_nick_reconnecting_again_and_again_keeps_its_last_keys_only() -> None:
    wire = FakeWire()
    alice = wire.connect("alice")
    bob_identity = PrivateKey.generate()
    entries = []
    for _ in range(RETIRED_PER_NICK + 4):
        bob = wire.connect("bob", bob_identity)
        wire.meet(alice, bob)
        entries.append(wire.clients[alice].directory["bob"])
        wire.hang_up(bob)
    assert _retired(wire, alice) == RETIRED_PER_NICK  # not one per reconnect, forever
    wire.take_all()
    # The last ones are still refused if the relay announces them again.
    wire.deliver(alice, _frame(m.PeerJoined(entries[-1])))
    assert [type(e) for e in wire.take(alice)] == [SecurityWarning]


def test_strangers_coming_and_going_leave_no_session_keys_behind() -> None:
    """Nobody we never had a session with can have a session replayed: their keys are
    not kept (before, every departed key was, without bound: churn grew it forever)."""
    wire = FakeWire()
    alice = wire.connect("alice")
    for index in range(200):
        stranger = PeerInfo(f"s{index}", PrivateKey.generate().public_key, PrivateKey.generate().public_key)
        wire.deliver(alice, _frame(m.PeerJoined(stranger)))
        wire.deliver(alice, _frame(m.PeerLeft(stranger.nick)))
    assert _retired(wire, alice) == 0


def test_retired_session_keys_are_bounded_in_all_oldest_first() -> None:
    directory = Directory(KnownPeers())
    entries = []
    for index in range(RETIRED_TOTAL + 50):
        entry = PeerInfo(f"p{index}", PublicKey(nacl.utils.random(32)), PublicKey(nacl.utils.random(32)))
        directory.add(entry)
        directory.remove(entry.nick, had_session=True)
        entries.append(entry)
    assert len(directory._retired) == RETIRED_TOTAL
    assert not directory.reuses_a_session_key(entries[0])
    assert directory.reuses_a_session_key(entries[50])
    assert directory.reuses_a_session_key(entries[-1])


def test_a_join_drops_only_the_joiner_s_cached_trust_and_a_new_key_is_still_caught() -> None:
    """The trust cache outlives joins (issue 19: the message after a join must not compare
    every key again), but never hides a key that changed."""

    def entry(nick: str, identity: PublicKey) -> PeerInfo:
        return PeerInfo(nick, identity, PublicKey(nacl.utils.random(32)))

    pinned, other = PublicKey(nacl.utils.random(32)), PublicKey(nacl.utils.random(32))
    directory = Directory(KnownPeers())
    directory.add(entry("bob", pinned))
    directory.add(entry("carol", other))
    directory.exchanged(["bob", "carol"])
    assert directory.trust("bob") is Trust.UNVERIFIED and directory.trust("carol") is Trust.UNVERIFIED
    directory.add(entry("dave", other))
    assert directory._trust_cache.keys() == {"bob", "carol"}  # kept across a join
    directory.remove("bob", had_session=False)
    with pytest.raises(CommandError):
        directory.trust("bob")  # gone: nothing cached answers for them
    directory.add(entry("bob", PublicKey(nacl.utils.random(32))))  # back with another key
    assert directory.trust("bob") is Trust.CHANGED
    directory.remove("bob", had_session=False)
    directory.add(entry("bob", pinned))
    assert directory.trust("bob") is Trust.UNVERIFIED


# -- the directory a relay may announce --------------------------------------------------------


def _strangers(count: int, start: int = 0) -> tuple[PeerInfo, ...]:
    return tuple(
        PeerInfo(f"s{index}", PublicKey(nacl.utils.random(32)), PublicKey(nacl.utils.random(32)))
        for index in range(start, start + count)
    )


async def test_an_endless_directory_is_refused_with_the_relay_named() -> None:
    """The relay answers alice's registration with a directory that never ends (before,
    96k entries and as many pins, until memory ran out)."""
    chunk = 5000

    def endless(relay: HostileRelay, action: Outgoing) -> list[Outgoing]:
        if not isinstance(action.message, m.Welcome) or action.message.nick != "alice":
            return [action]
        welcome = dataclasses.replace(action.message, peers=_strangers(chunk), more=True)
        parts = range(1, MAX_PEERS // chunk + 2)
        rest = [m.Directory(_strangers(chunk, n * chunk), more=True) for n in parts]
        return [Outgoing(action.conn, message) for message in (welcome, *rest)]

    async with running(HostileRelay(endless)) as relay:
        with pytest.raises(RelayGone) as refused:
            await connect(relay, "alice")
    said = str(refused.value)
    assert f"127.0.0.1:{relay.port}" in said and f"more than {MAX_PEERS:,} people online" in said


def test_joins_beyond_the_bound_end_the_connection() -> None:
    client = ClientCore("alice", PrivateKey.generate(), PrivateKey.generate())
    relay = PrivateKey.generate()
    client.receive_data(_frame(m.Challenge(relay.public_key, b"\x00" * CHALLENGE_SIZE)))
    part = 5000  # what fits in a frame
    client.receive_data(_frame(m.Welcome("alice", 50.0, 200.0, 1e6, 4e6, 0, _strangers(part), more=True)))
    for start in range(part, MAX_PEERS - part, part):
        client.receive_data(_frame(m.Directory(_strangers(part, start), more=True)))
    client.receive_data(_frame(m.Directory(_strangers(part, MAX_PEERS - part))))
    assert len(client.peers) == MAX_PEERS
    again = client.directory["s7"]
    client.receive_data(_frame(m.PeerJoined(again)))  # the same again: nothing new, no error
    with pytest.raises(RemoteProtocolError, match=f"more than {MAX_PEERS:,}"):
        client.receive_data(_frame(m.PeerJoined(_strangers(1, MAX_PEERS)[0])))


def test_a_directory_part_after_the_directory_is_a_protocol_error() -> None:
    wire = FakeWire()
    alice = wire.connect("alice")
    with pytest.raises(RemoteProtocolError, match="unexpected 'directory'"):
        wire.deliver(alice, _frame(m.Directory(_strangers(1), more=True)))


# -- the sessions a relay can make us keep ---------------------------------------------------------


async def test_people_a_relay_makes_up_cannot_grow_the_sessions_past_their_bound(tmp_path: Path) -> None:
    """Each made-up person's first message starts a session, kept (and saved) for when they
    write again. The keyring keeps at most max_peers (MAX_PEERS, 10,000, by default),
    dropping whoever it used least recently, and sessions.db follows: a relay cannot grow
    either without bound. Someone in use now is not the one dropped."""
    identity = PrivateKey.generate()
    session_file = SessionFile.open(tmp_path / SESSIONS_FILE, identity)
    keyring = session_file.load("alice", identity)
    keyring.max_peers = 20
    async with running(HostileRelay()) as relay, peers(relay, "bob") as (bob,):
        alice = await connect(relay, "alice", identity, keyring=keyring, session_file=session_file)
        fakes = made_up_peers(relay, "alice", 60)
        relay.inject_many("alice", [fake.entered() for fake in fakes])
        for batch in range(0, 60, 10):
            bob.connection.send_private("alice", f"still here {batch}")  # bob stays in use
            assert (await alice.next(MessageReceived, lambda e: e.sender == "bob")).text.startswith("still")
            relay.inject_many("alice", [fake.deliver("hi") for fake in fakes[batch : batch + 10]])
            for _ in range(10):
                await alice.next(MessageReceived, lambda e: e.sender.startswith("fake"))
            assert len(keyring.peers) <= 20
        assert "bob" in keyring.peers and "fake59" in keyring.peers and "fake0" not in keyring.peers
        await alice.connection.close()
    session_file.close()
    again = SessionFile.open(tmp_path / SESSIONS_FILE, identity)
    try:
        saved = again.load("alice", identity)
    finally:
        again.close()
    assert sorted(saved.peers) == sorted(keyring.peers)


async def test_forged_first_messages_take_no_place_among_the_sessions_kept() -> None:
    """A first message that does not authenticate starts nothing: the people a relay
    makes up and forges first messages from take no place in the keyring, so they cannot
    push out anyone's sessions. Control: a real first message from one of them is kept."""
    identity = PrivateKey.generate()
    async with running(HostileRelay()) as relay, peers(relay, "bob") as (bob,):
        alice = await connect(relay, "alice", identity)
        keyring = alice.connection.core.keyring
        keyring.max_peers = 3
        bob.connection.send_private("alice", "hello")
        await alice.next(MessageReceived, lambda e: e.sender == "bob")
        bobs = keyring.peers["bob"]
        fakes = made_up_peers(relay, "alice", 5)
        relay.inject_many("alice", [fake.entered() for fake in fakes])
        forged: list[m.Message] = [m.Deliver(fake.nick, b"\x02" + nacl.utils.random(200)) for fake in fakes]
        relay.inject_many("alice", forged)
        for _ in forged:
            await alice.next(SecurityWarning)
        assert set(keyring.peers) == {"bob"} and keyring.peers["bob"] is bobs
        relay.inject("alice", fakes[0].deliver("really me"))
        await alice.next(MessageReceived, lambda e: e.sender == "fake0")
        assert set(keyring.peers) == {"bob", "fake0"} and keyring.peers["bob"] is bobs
        await alice.connection.close()


# -- the pin file a relay can make us write -----------------------------------------------------


async def test_people_a_relay_makes_up_cannot_grow_the_pin_file_past_its_bound(tmp_path: Path) -> None:
    """The relay hands out keys, so it can make up people who really write to us: each is
    a first contact, pinned. The file keeps at most max_pins (MAX_PINS, 10,000, by default),
    dropping the least recently used unverified pins; the one the user verified stays."""
    store = PinFile(tmp_path / KNOWN_PEERS_FILE)
    known = KnownPeers(max_pins=20)
    bob = PrivateKey.generate().public_key
    known.see("bob", bob)
    known.set_verified("bob", bob, True)  # verified long ago, not used since
    async with running(HostileRelay()) as relay:
        alice = await connect(relay, "alice", known_peers=known, pin_file=store)
        fakes = made_up_peers(relay, "alice", 60)
        relay.inject_many("alice", [fake.entered() for fake in fakes])
        relay.inject_many("alice", [fake.deliver("hi") for fake in fakes])
        for _ in fakes:
            await alice.next(MessageReceived)
        await alice.connection.close()
    kept = KnownPeers.decode(store.path.read_bytes())
    assert len(kept) == 20
    assert kept.state("bob", bob) is Trust.VERIFIED
    assert kept.get("fake59") is not None and kept.get("fake0") is None
