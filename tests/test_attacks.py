"""The relay is hostile. Each test mounts one attack through a lying relay (tests/hostile.py)
and fails if the attack succeeds. SECURITY.md maps each property to these tests."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable

import pytest
from nacl.public import PrivateKey, PublicKey
from nacl.secret import SecretBox

from e2echat.client.connection import Connection
from e2echat.client.core import (
    ClientCore,
    Event,
    MessageReceived,
    MessagesMissing,
    SecurityWarning,
    SplitView,
)
from e2echat.crypto import session as session_module
from e2echat.crypto.session import MAX_SKIP, Kind, Party, PeerSession, chain_step
from e2echat.errors import DecryptionError, RelayGone, RemoteProtocolError
from e2echat.relay.core import Action, RelayCore, Write
from e2echat.wire import messages as m
from e2echat.wire.codec import encode_message
from e2echat.wire.framing import encode_frame

from hostile import HostileRelay, Tamper, deliveries, flip_bit, substitute_keys
from relay_frames import Outgoing
from support import LOOPBACK, WAIT, connect, peers, running

# -- 1. integrity -----------------------------------------------------------------------------


async def test_integrity_flipped_bits_in_bodies_are_never_shown() -> None:
    """The relay flips one bit in each message to bob, sweeping header, nonce, tag and
    ciphertext. bob shows none of them, and the session survives every attempt."""
    positions = iter(range(0, 8 * 120, 7))  # every 7th bit of the first 120 bytes

    def tamper(relay: HostileRelay, action: Outgoing, deliver: m.Deliver) -> list[Outgoing]:
        bit = next(positions, None)
        if bit is None or bit >= 8 * len(deliver.body):
            return [action]
        return [Outgoing(action.conn, m.Deliver(deliver.sender, flip_bit(deliver.body, bit)))]

    async with (
        running(HostileRelay(deliveries(tamper))) as relay,
        peers(relay, "alice", "bob") as (alice, bob),
    ):
        attempts = len(range(0, 8 * 120, 7))
        for i in range(attempts):
            alice.connection.send_private("bob", f"message {i:03d} padded to cover the ciphertext")
        warnings = [await bob.next_delivery() for _ in range(attempts)]
        assert all(isinstance(w, SecurityWarning) for w in warnings), warnings
        alice.connection.send_private("bob", "untouched")  # positions exhausted: passes as is
        assert (await bob.next(MessageReceived)).text == "untouched"


def _harness() -> tuple[ClientCore, list[bytes]]:
    """alice and bob registered with an in-memory relay core; returns bob's core and the
    frames the relay wrote to bob for one private message from alice."""
    relay = RelayCore()
    cores: dict[int, ClientCore] = {}
    written: dict[int, list[bytes]] = {1: [], 2: []}

    def apply(actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Write):
                for conn, frame in action.frames:
                    written[conn].append(frame)
                    cores[conn].receive_data(frame)
                    pump()

    def pump() -> None:
        for conn, core in cores.items():
            data = core.data_to_send()
            if data:
                apply(relay.receive_data(conn, data, 0.0))

    for conn, nick in ((1, "alice"), (2, "bob")):
        cores[conn] = ClientCore(nick, PrivateKey.generate(), PrivateKey.generate())
        apply(relay.connect(conn, 0.0))
    written[2].clear()
    cores[1].send_private("bob", "attack at dawn")
    pump()
    return cores[2], [frame for frame in written[2] if b'"deliver"' in frame]


def test_integrity_any_bit_anywhere_in_the_frame() -> None:
    """Sans-IO and exhaustive: one bit flipped in every byte of the whole frame (length
    prefix, JSON, base64). The result is a protocol error, a warning, or — where the flip
    did not change what the frame means — the original message; never an altered one."""
    _, (frame,) = _harness()
    outcomes: set[str] = set()
    for position in range(len(frame)):
        bob, _ = _harness()
        try:
            events: list[Event] = bob.receive_data(flip_bit(frame, 8 * position + position % 8))
        except RemoteProtocolError:
            outcomes.add("protocol error")
            continue
        shown = [e for e in events if isinstance(e, MessageReceived)]
        assert all((e.sender, e.text, e.private) == ("alice", "attack at dawn", True) for e in shown)
        if not shown:
            outcomes.add("dropped")
    assert outcomes == {"protocol error", "dropped"}


# -- 2. sender authentication ----------------------------------------------------------------


def _once(rewrite: Callable[[HostileRelay, Outgoing, m.Deliver], list[Outgoing]]) -> Tamper:
    """A deliveries() tamper that rewrites only the first delivery it sees."""
    done: list[bool] = []

    def tamper(relay: HostileRelay, action: Outgoing, deliver: m.Deliver) -> list[Outgoing]:
        if done:
            return [action]
        done.append(True)
        return rewrite(relay, action, deliver)

    return deliveries(tamper)


async def test_sender_relabelled_is_not_shown_as_from_anyone() -> None:
    relabel = _once(lambda relay, action, d: [Outgoing(action.conn, m.Deliver("carol", d.body))])
    async with (
        running(HostileRelay(relabel)) as relay,
        peers(relay, "alice", "bob", "carol") as (alice, bob, _),
    ):
        alice.connection.send_private("bob", "from alice")
        warning = await bob.next_delivery()
        assert isinstance(warning, SecurityWarning) and "carol" in warning.text


async def test_message_redirected_to_someone_else_is_rejected() -> None:
    redirect = _once(lambda relay, action, d: [Outgoing(relay.conn("carol"), d)])
    async with (
        running(HostileRelay(redirect)) as relay,
        peers(relay, "alice", "bob", "carol") as (alice, _, carol),
    ):
        alice.connection.send_private("bob", "for bob's eyes")
        assert isinstance(await carol.next_delivery(), SecurityWarning)


async def test_message_reflected_to_its_sender_is_rejected() -> None:
    reflect = _once(lambda relay, action, d: [Outgoing(relay.conn("alice"), m.Deliver("bob", d.body))])
    async with running(HostileRelay(reflect)) as relay, peers(relay, "alice", "bob") as (alice, _):
        alice.connection.send_private("bob", "mirror, mirror")
        assert isinstance(await alice.next_delivery(), SecurityWarning)


# -- 3. replay ----------------------------------------------------------------------------------


async def test_replayed_frame_is_shown_once_and_warned_about() -> None:
    twice = deliveries(lambda relay, action, d: [action, action])
    async with running(HostileRelay(twice)) as relay, peers(relay, "alice", "bob") as (alice, bob):
        alice.connection.send_private("bob", "pay carol 10 euros")
        assert (await bob.next_delivery()) == MessageReceived("alice", "pay carol 10 euros", private=True)
        duplicate = await bob.next_delivery()
        assert isinstance(duplicate, SecurityWarning) and "replay" in duplicate.text


# -- 4. order and loss --------------------------------------------------------------------------


async def test_held_back_message_is_reported_missing_then_arrives_late() -> None:
    held: list[Outgoing] = []

    def hold_first(relay: HostileRelay, action: Outgoing, deliver: m.Deliver) -> list[Outgoing]:
        if not held:
            held.append(action)
            return []
        return [action, held.pop()] if held[0] is not action else [action]

    async with (
        running(HostileRelay(deliveries(hold_first))) as relay,
        peers(relay, "alice", "bob") as (alice, bob),
    ):
        alice.connection.send_room("one")
        alice.connection.send_room("two")
        assert await bob.next_delivery() == MessagesMissing("alice", 1)
        delivery = await bob.next_delivery()
        assert isinstance(delivery, MessageReceived) and delivery.text == "two"
        late = await bob.next_delivery()
        assert isinstance(late, MessageReceived) and (late.text, late.late) == ("one", True)


async def test_dropped_messages_are_reported() -> None:
    count = iter(range(100))
    drop_two = deliveries(lambda relay, action, d: [] if next(count) < 2 else [action])
    async with running(HostileRelay(drop_two)) as relay, peers(relay, "alice", "bob") as (alice, bob):
        for text in ("one", "two", "three"):
            alice.connection.send_room(text)
        assert await bob.next_delivery() == MessagesMissing("alice", 2)
        delivery = await bob.next_delivery()
        assert isinstance(delivery, MessageReceived) and delivery.text == "three"


@pytest.mark.timeout(60)
async def test_gap_beyond_the_skipped_key_bound_is_rejected() -> None:
    count = iter(range(10_000))
    drop = deliveries(lambda relay, action, d: [] if next(count) < MAX_SKIP + 1 else [action])
    hostile = HostileRelay(drop, rate=1e9, burst=1e9)  # this test floods on purpose
    async with running(hostile) as relay, peers(relay, "alice", "bob") as (alice, bob):
        for i in range(MAX_SKIP + 2):
            alice.connection.send_private("bob", f"#{i}")
        rejected = await bob.next_delivery()
        assert isinstance(rejected, SecurityWarning) and f"more than the {MAX_SKIP} allowed" in rejected.text


# -- 5. room vs private ---------------------------------------------------------------------------


_KIND_PREFIX = b'{"from":"alice","to":"bob","kind":"'
_KIND_MASK = bytes(a ^ b for a, b in zip(b'private"', b'room"   ', strict=True))


def _forge_kind(body: bytes) -> bytes:
    """XSalsa20 is a stream cipher: flipping ciphertext bits flips the same plaintext bits.
    The plaintext layout is public, so this turns `"kind":"private"` into `"kind":"room"   `
    (still valid JSON, same length) without knowing any key."""
    offset = 1 + 8 + 24 + 16 + len(_KIND_PREFIX)  # version, counter, nonce, tag
    forged = bytearray(body)
    for i, byte in enumerate(_KIND_MASK):
        forged[offset + i] ^= byte
    return bytes(forged)


async def test_relay_cannot_turn_a_private_message_into_a_room_message() -> None:
    forge = _once(lambda relay, action, d: [Outgoing(action.conn, m.Deliver(d.sender, _forge_kind(d.body)))])
    async with running(HostileRelay(forge)) as relay, peers(relay, "alice", "bob") as (alice, bob):
        alice.connection.send_private("bob", "between us")
        assert isinstance(await bob.next_delivery(), SecurityWarning)  # Poly1305 caught it
        alice.connection.send_private("bob", "still private")
        assert await bob.next_delivery() == MessagesMissing("alice", 1)  # the forged one
        shown = await bob.next_delivery()
        assert isinstance(shown, MessageReceived) and shown.private


def test_the_kind_forgery_would_work_without_authentication() -> None:
    """Positive control for the test above: opened without the tag check (here: with the
    message key, XORing the plaintext as the relay XORed the ciphertext), the forgery is a
    well-formed room message. Only the authentication stops it."""
    alice, bob = PrivateKey.generate(), PrivateKey.generate()
    alice_session, bob_session = PrivateKey.generate(), PrivateKey.generate()
    alice_party = Party("alice", alice.public_key, alice_session.public_key)
    sender = PeerSession("alice", alice, alice_session, Party("bob", bob.public_key, bob_session.public_key))
    replica = PeerSession("bob", bob, bob_session, alice_party)
    body = sender.encrypt("between us", Kind.PRIVATE)
    _, message_key = chain_step(replica._receiving._chain)
    plaintext = SecretBox(message_key).decrypt(body[9:])
    start = len(_KIND_PREFIX)
    assert plaintext.startswith(_KIND_PREFIX) and plaintext[start : start + 8] == b'private"'
    forged = bytes(p ^ k for p, k in zip(plaintext[start : start + 8], _KIND_MASK, strict=True))
    assert json.loads(plaintext[:start] + forged + plaintext[start + 8 :])["kind"] == "room"
    with pytest.raises(DecryptionError):
        replica.decrypt(_forge_kind(body))


# -- 6. forward secrecy -------------------------------------------------------------------------


async def test_recorded_traffic_stays_secret_when_identity_keys_leak_later(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    alice_identity, bob_identity = PrivateKey.generate(), PrivateKey.generate()
    secrets = ["the safe code is 2468", "meet at the north gate"]
    async with running(HostileRelay()) as relay:
        alice = await connect(relay, "alice", alice_identity)
        bob = await connect(relay, "bob", bob_identity)
        while "bob" not in alice.connection.core.peers:
            await alice.next_any_event()
        for text in secrets:
            alice.connection.send_private("bob", text)
        for text in secrets:
            assert (await bob.next(MessageReceived)).text == text
        bob_session_key = bob.connection.core._session_key  # positive control, see below
        for peer in (alice, bob):
            await peer.connection.close()
            assert peer.connection.core._sessions.by_nick == {}  # chain keys dropped with the connection
        recorded = [e.body for _, msg in relay.received if isinstance(msg, m.Send) for e in msg.items]
        registered = {msg.nick: msg for _, msg in relay.received if isinstance(msg, m.Register)}

    alice_party = Party("alice", alice_identity.public_key, registered["alice"].session_key)
    bob_public_session = registered["bob"].session_key
    identity_privates = {bytes(k.public_key): k for k in (alice_identity, bob_identity)}

    class BobsSessionKey:
        """Stands in for bob's session private key, which the attacker does not have."""

        public_key = bob_public_session

    def attacker_dh(private: PrivateKey | BobsSessionKey, public: PublicKey) -> bytes:
        # The attacker's best: DH(EK_bob, P) = DH(P's private, EK_bob) when P is an identity
        # key it stole. For DH(EK_bob, EK_alice) it has nothing, and must guess.
        if isinstance(private, BobsSessionKey):
            known = identity_privates.get(bytes(public))
            if known is None:
                return bytes(32)
            return real_dh(known, bob_public_session)
        return real_dh(private, public)

    real_dh = session_module._dh
    monkeypatch.setattr(session_module, "_dh", attacker_dh)

    def attempt(session_private: PrivateKey | BobsSessionKey) -> list[str]:
        # The ignore: a stand-in for the key the attacker lacks, which attacker_dh expects.
        session = PeerSession("bob", bob_identity, session_private, alice_party)  # type: ignore[arg-type]
        texts = []
        for body in recorded:
            with contextlib.suppress(DecryptionError):
                texts.append(session.decrypt(body).text)
        return texts

    # The attacker has both identity private keys and every public key. It computes every
    # DH that those allow, but not DH(EK, EK): nothing decrypts.
    assert attempt(BobsSessionKey()) == []
    # Positive control: had bob's session key survived, the same attempt would succeed.
    monkeypatch.setattr(session_module, "_dh", real_dh)
    assert attempt(bob_session_key) == secrets


def test_message_keys_are_gone_after_use() -> None:
    alice, bob = PrivateKey.generate(), PrivateKey.generate()
    alice_session, bob_session = PrivateKey.generate(), PrivateKey.generate()
    bob_party = Party("bob", bob.public_key, bob_session.public_key)
    alice_party = Party("alice", alice.public_key, alice_session.public_key)
    sender = PeerSession("alice", alice, alice_session, bob_party)
    receiver = PeerSession("bob", bob, bob_session, alice_party)
    replica = PeerSession("bob", bob, bob_session, alice_party)  # knows every key, for comparison
    chain, used_keys = replica._receiving._chain, []
    for i in range(3):
        receiver.decrypt(sender.encrypt(f"m{i}", Kind.ROOM))
        chain, key = chain_step(chain)
        used_keys.append(key)
    state = repr(vars(receiver))
    assert all(key.hex() not in state and repr(key) not in state for key in used_keys)
    # Nor among the receiving keys kept: the chain, the lookahead, the skipped keys.
    receiving = receiver._receiving
    budget = receiving._budget
    kept = receiving._chain + b"".join(budget._ahead.values())
    kept += b"".join(key for keys in budget._skipped.values() for key in keys.values())
    assert all(key not in kept for key in used_keys)
    assert receiver.missing == 0


# -- 7. cross-session replay ----------------------------------------------------------------------


async def test_frames_from_an_earlier_connection_are_rejected() -> None:
    recorded: list[m.Deliver] = []

    def record(relay: HostileRelay, action: Outgoing, deliver: m.Deliver) -> list[Outgoing]:
        recorded.append(deliver)
        return [action]

    bob_identity = PrivateKey.generate()
    async with running(HostileRelay(deliveries(record))) as relay, peers(relay, "alice") as (alice,):
        bob = await connect(relay, "bob", bob_identity)
        while "bob" not in alice.connection.core.peers:
            await alice.next_any_event()
        alice.connection.send_private("bob", "transfer approved")
        assert (await bob.next(MessageReceived)).text == "transfer approved"
        await bob.connection.close()

        bob_again = await connect(relay, "bob", bob_identity)
        while bob_again.connection.core.peers != ["alice"]:
            await bob_again.next_any_event()
        relay.inject("bob", recorded[0])
        warning = await bob_again.next_delivery()
        assert isinstance(warning, SecurityWarning)
        await bob_again.connection.close()


async def test_peer_reannounced_with_an_old_session_key_is_ignored() -> None:
    async with running(HostileRelay()) as relay, peers(relay, "alice", "bob") as (alice, bob):
        alice.connection.send_private("bob", "once only")
        assert (await bob.next(MessageReceived)).text == "once only"
        old_alice = bob.connection.core.directory["alice"]
        relay.inject("bob", m.PeerLeft("alice"))
        relay.inject("bob", m.PeerJoined(old_alice))  # would restart the counters at 0
        warning = await bob.next(SecurityWarning)
        assert "already used" in warning.text
        assert "alice" not in bob.connection.core.peers


# -- 8. downgrade ------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", [0, 1, 3])
async def test_client_refuses_another_protocol_version(version: int) -> None:
    challenge = encode_message(m.Challenge(PrivateKey.generate().public_key, b"\x07" * 32))
    downgraded = json.dumps({**json.loads(challenge), "v": version}).encode()

    async def fake_relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(encode_frame(downgraded))
        await reader.read()  # until the client hangs up
        writer.close()

    server = await asyncio.start_server(fake_relay, LOOPBACK, 0)
    try:
        connection = Connection(LOOPBACK, server.sockets[0].getsockname()[1], "alice", PrivateKey.generate())
        with pytest.raises(RelayGone, match=f"unsupported protocol version {version}"):
            await connection.open(timeout=WAIT)
    finally:
        server.close()


@pytest.mark.parametrize("version", [0, 2])
async def test_message_body_of_another_version_is_refused(version: int) -> None:
    rewrite = _once(
        lambda relay, action, d: [Outgoing(action.conn, m.Deliver(d.sender, bytes([version]) + d.body[1:]))]
    )
    async with running(HostileRelay(rewrite)) as relay, peers(relay, "alice", "bob") as (alice, bob):
        alice.connection.send_private("bob", "v1 only")
        warning = await bob.next_delivery()
        assert (
            isinstance(warning, SecurityWarning) and f"unsupported message version {version}" in warning.text
        )


# -- 9. split view ---------------------------------------------------------------------------------


async def test_split_view_is_detected() -> None:
    """The relay shows alice other keys for carol than it shows bob (to stand in the
    middle between alice and carol). bob learns of it from alice's next message."""
    mallory = PrivateKey.generate()
    split = substitute_keys("alice", "carol", session_key=mallory.public_key)
    async with (
        running(HostileRelay(split)) as relay,
        peers(relay, "alice", "bob", "carol") as (alice, bob, _),
    ):
        alice.connection.send_private("bob", "hi bob")
        warning = await bob.next_delivery()
        assert warning == SplitView("alice")
        delivery = await bob.next_delivery()
        assert isinstance(delivery, MessageReceived) and delivery.text == "hi bob"


async def test_no_split_view_warning_while_people_come_and_go() -> None:
    """Joins and leaves race with messages in flight; an honest relay must never trigger
    the warning."""
    async with running(HostileRelay()) as relay, peers(relay, "alice", "bob") as (alice, bob):
        for round_number in range(15):
            alice.connection.send_room(f"before {round_number}")
            visitor = await connect(relay, f"visitor{round_number}")
            alice.connection.send_private("bob", f"during {round_number}")
            bob.connection.send_room(f"reply {round_number}")
            await visitor.connection.close()
            alice.connection.send_room(f"after {round_number}")
        for _ in range(30):
            await bob.next(MessageReceived)
        for _ in range(15):
            await alice.next(MessageReceived)
        assert not [e for e in alice.seen + bob.seen if isinstance(e, SplitView | SecurityWarning)]


async def test_peer_reannounced_with_the_same_keys_keeps_its_session() -> None:
    async with running(HostileRelay()) as relay, peers(relay, "alice", "bob") as (alice, bob):
        alice.connection.send_private("bob", "first")
        assert (await bob.next(MessageReceived)).text == "first"
        relay.inject("bob", m.PeerJoined(bob.connection.core.directory["alice"]))
        relay.inject("bob", m.Deliver("alice", recorded_body(relay, "alice")))  # a replay
        assert isinstance(await bob.next_delivery(), SecurityWarning)  # counters were kept
        alice.connection.send_private("bob", "second")
        assert await bob.next_delivery() == MessageReceived("alice", "second", private=True)
        assert not [e for e in bob.seen if type(e).__name__ == "PeerJoined"]


def recorded_body(relay: HostileRelay, nick: str) -> bytes:
    """The body of the first envelope ``nick`` sent through the relay."""
    return relay.sends_from(nick)[0].items[0].body
