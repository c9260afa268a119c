"""The relay is hostile. Each test mounts one attack through a lying relay (tests/hostile.py)
and fails if the attack succeeds. SECURITY.md maps each property to these tests."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable

import pytest
from nacl.public import PrivateKey
from test_session import started

from e2echat.client.connection import Connection
from e2echat.client.core import (
    ClientCore,
    Event,
    MessageReceived,
    MessagesMissing,
    SecurityWarning,
    SplitView,
)
from e2echat.crypto.kdf import kdf_chain
from e2echat.crypto.keyring import Keyring
from e2echat.crypto.primitives import MAC_SIZE, NONCE_SIZE, aead_decrypt, aead_encrypt
from e2echat.crypto.ratchet import MAX_SKIP, MIN_MESSAGE
from e2echat.crypto.session import PREKEY_HEADER_SIZE, PREKEY_MESSAGE, Kind
from e2echat.errors import DecryptionError, RelayGone, RemoteProtocolError
from e2echat.relay.core import Action, Persist, RelayCore, Write
from e2echat.wire import messages as m
from e2echat.wire.binary import DELIVER_TAG
from e2echat.wire.codec import encode_message
from e2echat.wire.framing import encode_frame

from hostile import HostileRelay, Tamper, deliveries, flip_bit, substitute_keys
from relay_frames import Outgoing
from support import LOOPBACK, WAIT, connect, meet, peers, running

# -- 1. integrity -----------------------------------------------------------------------------


async def test_integrity_flipped_bits_in_bodies_are_never_shown() -> None:
    """The relay flips one bit in each message from alice to bob. It sweeps first messages
    (type, identity key, base key, prekey ids, then the ratchet header and tag) while bob
    has no session with alice, then, once the session is established, ratchet messages
    (header, tag, nonce, ciphertext). bob shows none of them, and the session survives
    every attempt."""
    flips: list[int] = []  # the bits still to flip, one a message

    def tamper(relay: HostileRelay, action: Outgoing, deliver: m.Deliver) -> list[Outgoing]:
        if deliver.sender != "alice" or not flips:
            return [action]
        return [Outgoing(action.conn, m.Deliver(deliver.sender, flip_bit(deliver.body, flips.pop(0))))]

    hostile = HostileRelay(deliveries(tamper), rate=1e9, burst=1e9)  # hundreds of messages
    async with running(hostile) as relay, peers(relay, "alice", "bob") as (alice, bob):
        for sweep, kind in [
            (range(0, 8 * (PREKEY_HEADER_SIZE + 57), 11), "first"),  # the prekey header, 41 + 16
            (range(0, 8 * 120, 7), "ratchet"),  # ratchet header, tag, nonce, the ciphertext's start
        ]:
            flips.extend(sweep)
            for i in range(len(sweep)):
                alice.connection.send_private("bob", f"{kind} message {i:03d} padded to cover the ciphertext")
            warnings = [await bob.next_delivery() for _ in sweep]
            assert all(isinstance(w, SecurityWarning) for w in warnings), warnings
            alice.connection.send_private("bob", f"untouched {kind}")  # flips used up: passes as is
            assert (await bob.next(MessageReceived)).text == f"untouched {kind}"
            bob.connection.send_private("alice", "answered")  # alice's next are ratchet messages
            await alice.next(MessageReceived)
        assert alice.connection.core.keyring.peers["bob"].confirmed


def _harness() -> tuple[ClientCore, list[bytes]]:
    """alice and bob registered with an in-memory relay core; returns bob's core and the
    frames the relay wrote to bob for one private message from alice."""
    relay = RelayCore()
    cores: dict[int, ClientCore] = {}
    written: dict[int, list[bytes]] = {1: [], 2: []}

    def apply(actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Write | Persist):
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
    return cores[2], [frame for frame in written[2] if frame[4] == DELIVER_TAG]


def test_integrity_any_bit_anywhere_in_the_frame() -> None:
    """Sans-IO and exhaustive: one bit flipped in every byte of the whole frame (length
    prefix, the binary deliver's fields, the body). The result is a protocol error, a
    warning, or — where the flip did not change what the frame means — the original
    message; never an altered one."""
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
        alice.connection.send_room("#lobby", "one")
        alice.connection.send_room("#lobby", "two")
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
            alice.connection.send_room("#lobby", text)
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
        assert isinstance(rejected, SecurityWarning)
        assert f"more than the {MAX_SKIP} e2echat will wait for" in rejected.text


# -- 5. room vs private ---------------------------------------------------------------------------


# A plaintext is n (8 bytes), then the kind: 1 private, 0 room (crypto/session.py).
_KIND_OFFSET = 8
_KIND_MASK = 1  # private ^ room
_CIPHERTEXT_AT = MIN_MESSAGE - MAC_SIZE  # after the ratchet header, tag and nonce


def _kind_at(body: bytes) -> int:
    """Where the kind is in a body: after the prekey header of a first message, the
    ratchet header, tag and nonce, at its offset in the plaintext (the AEAD's ciphertext
    is as long as the plaintext, its tag after it)."""
    prekey_header = PREKEY_HEADER_SIZE if body[0] == PREKEY_MESSAGE else 0
    return prekey_header + _CIPHERTEXT_AT + _KIND_OFFSET


def _forge_kind(body: bytes) -> bytes:
    """XChaCha20-Poly1305 encrypts as plaintext XOR a keystream that depends on the
    key, nonce and associated data only: flipping a ciphertext bit there flips the same
    plaintext bit. The plaintext layout is public, so this turns "private" into "room"
    without knowing any key."""
    offset = _kind_at(body)
    return body[:offset] + bytes([body[offset] ^ _KIND_MASK]) + body[offset + 1 :]


async def test_relay_cannot_turn_a_private_message_into_a_room_message() -> None:
    forge = _once(lambda relay, action, d: [Outgoing(action.conn, m.Deliver(d.sender, _forge_kind(d.body)))])
    async with running(HostileRelay(forge)) as relay, peers(relay, "alice", "bob") as (alice, bob):
        alice.connection.send_private("bob", "between us")
        assert isinstance(await bob.next_delivery(), SecurityWarning)  # the AEAD caught it
        alice.connection.send_private("bob", "still private")
        assert await bob.next_delivery() == MessagesMissing("alice", 1)  # the forged one
        shown = await bob.next_delivery()
        assert isinstance(shown, MessageReceived) and shown.private


def test_the_kind_forgery_would_work_without_authentication() -> None:
    """Positive control for the test above: the forgery flips exactly the kind. Opened
    without the tag check (here: the first block's keystream, got by encrypting zeros
    under the same key, nonce and associated data, XORed with the forged ciphertext), it
    reads as a room message. Only the authentication stops it."""
    _, _, to_bob, to_alice = started()
    # The message key the next message goes under: the sender's, one chain step on.
    _, message_key = kdf_chain(to_bob._sessions[0].ratchet._cks or b"")
    body = to_bob.encrypt("between us", Kind.PRIVATE)
    message = body[PREKEY_HEADER_SIZE:]
    associated, nonce = (
        message[: _CIPHERTEXT_AT - NONCE_SIZE],
        message[_CIPHERTEXT_AT - NONCE_SIZE : _CIPHERTEXT_AT],
    )
    first_block = slice(_CIPHERTEXT_AT, _CIPHERTEXT_AT + 16)
    keystream = aead_encrypt(bytes(16), associated, nonce, message_key)[:16]
    plaintext = aead_decrypt(message[_CIPHERTEXT_AT:], associated, nonce, message_key)
    assert plaintext[_KIND_OFFSET] == 1  # private
    assert bytes(c ^ k for c, k in zip(message[first_block], keystream, strict=True)) == plaintext[:16]
    forged = _forge_kind(body)[PREKEY_HEADER_SIZE:]
    opened_unchecked = bytes(c ^ k for c, k in zip(forged[first_block], keystream, strict=True))
    assert opened_unchecked == plaintext[:_KIND_OFFSET] + b"\x00" + plaintext[_KIND_OFFSET + 1 : 16]  # room
    with pytest.raises(DecryptionError):
        to_alice.decrypt(_forge_kind(body))
    assert to_alice.decrypt(body).kind is Kind.PRIVATE  # the forgery left no trace


# -- 6. forward secrecy -------------------------------------------------------------------------


async def test_recorded_traffic_stays_secret_when_identity_keys_leak_later() -> None:
    """The relay records every body alice sends bob. Afterwards the attacker gets both
    identity private keys and bob's whole state as it is then (his keyring: sessions,
    prekeys, as saved), and even drops his session with alice to start afresh from the
    recorded first message. Nothing decrypts: the message keys are gone, and the one-time
    prekey the first message used was deleted when it arrived. Positive control: the
    same attack with bob's state from before the messages (stolen earlier) reads the
    messages of the first chain."""
    alice_identity, bob_identity = PrivateKey.generate(), PrivateKey.generate()
    secrets = ["the safe code is 2468", "meet at the north gate"]
    async with running(HostileRelay()) as relay:
        alice = await connect(relay, "alice", alice_identity)
        bob = await connect(relay, "bob", bob_identity)
        while "bob" not in alice.connection.core.peers:
            await alice.next_any_event()
        earlier = bob.connection.core.keyring.rows()
        for text in secrets:
            alice.connection.send_private("bob", text)
        for text in secrets:
            assert (await bob.next(MessageReceived)).text == text
        bob.connection.send_private("alice", "noted")  # a DH ratchet step each way
        await alice.next(MessageReceived)
        alice.connection.send_private("bob", "burn this")
        await bob.next(MessageReceived, lambda e: e.text == "burn this")
        recorded = [e.body for send in relay.sends_from("alice") for e in send.items if e.to == "bob"]
        for peer in (alice, bob):
            await peer.connection.close()
        later = bob.connection.core.keyring.rows()

    def attempt(rows: dict[str, bytes], *, afresh: bool = False) -> list[str]:
        keyring = Keyring.from_rows("bob", bob_identity, rows, time.time())
        if afresh:
            keyring.forget("alice")  # no session, no memory of base keys
        with_alice = keyring.peer("alice", alice_identity.public_key)
        texts = []
        for body in recorded:
            with contextlib.suppress(DecryptionError):
                texts.append(with_alice.decrypt(body).text)
        return [text for text in texts if text]  # receipts have none

    assert len(recorded) >= 3
    assert attempt(later) == []
    assert attempt(later, afresh=True) == []
    assert attempt(earlier) == secrets  # positive control


def test_message_keys_are_gone_after_use() -> None:
    """Every message key bob used, including those kept a while for messages that came
    late, is gone from all he keeps once the messages are read."""
    _, bob, to_bob, to_alice = started()
    used_keys, bodies = [], []
    for i in range(4):
        _, message_key = kdf_chain(to_bob._sessions[0].ratchet._cks or b"")
        used_keys.append(message_key)
        bodies.append(to_bob.encrypt(f"m{i}", Kind.ROOM))
    assert to_alice.decrypt(bodies[3]).skipped == 3  # three keys kept for the late ones
    assert to_alice.missing == 3
    for body in bodies[:3]:
        assert to_alice.decrypt(body).late
    kept = b"".join(bob.rows().values())
    assert all(key not in kept for key in used_keys)
    assert to_alice.missing == 0 and len(bob.budget) == 0


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

        # bob's next connection goes on with his sessions, as his profile's keyring does.
        keyring = bob.connection.core.keyring
        bob_again = await connect(relay, "bob", bob_identity, keyring=keyring)
        while bob_again.connection.core.peers != ["alice"]:
            await bob_again.next_any_event()
        relay.inject("bob", recorded[0])
        warning = await bob_again.next_delivery()
        assert isinstance(warning, SecurityWarning) and "replay" in warning.text
        alice.connection.send_private("bob", "and the next one")  # the session itself goes on
        assert await bob_again.next_delivery() == MessageReceived("alice", "and the next one", private=True)
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


@pytest.mark.parametrize(
    ("first", "at", "version", "refused"),
    [
        (False, 0, 0, "unsupported message type 0"),
        (False, 0, 3, "unsupported message type 3"),
        (True, PREKEY_HEADER_SIZE, 0, "unsupported message version 0"),  # the ratchet message inside
        (True, PREKEY_HEADER_SIZE, 2, "unsupported message version 2"),
    ],
    ids=["type-0", "type-3", "first-version-0", "first-version-2"],
)
async def test_message_body_of_another_version_is_refused(
    first: bool, at: int, version: int, refused: str
) -> None:
    """The relay rewrites the version byte of a message from alice to bob: a ratchet
    message's type, or the version of the ratchet message inside a first message."""
    armed: list[bool] = []

    def downgrade(relay: HostileRelay, action: Outgoing, deliver: m.Deliver) -> list[Outgoing]:
        if not armed or deliver.sender != "alice":
            return [action]
        armed.clear()
        body = deliver.body[:at] + bytes([version]) + deliver.body[at + 1 :]
        return [Outgoing(action.conn, m.Deliver(deliver.sender, body))]

    async with (
        running(HostileRelay(deliveries(downgrade))) as relay,
        peers(relay, "alice", "bob") as (alice, bob),
    ):
        if not first:
            await meet(alice, bob)
        armed.append(True)
        alice.connection.send_private("bob", "v2 only")
        warning = await bob.next_delivery()
        assert isinstance(warning, SecurityWarning) and refused in warning.text


# -- 9. split view ---------------------------------------------------------------------------------


async def test_split_view_is_detected() -> None:
    """The relay shows alice another identity key for carol than it shows bob (to stand in
    the middle between alice and carol). bob learns of it from alice's next message to a
    room they share with carol, and the room's safety numbers of the two differ. (More
    in tests/test_room_attacks.py.)"""
    mallory = PrivateKey.generate()
    split = substitute_keys("alice", "carol", identity_key=mallory.public_key)
    async with (
        running(HostileRelay(split)) as relay,
        peers(relay, "alice", "bob", "carol") as (alice, bob, _),
    ):
        numbers = {peer.connection.core.room_safety_number("#lobby") for peer in (alice, bob)}
        assert len(numbers) == 2
        alice.connection.send_room("#lobby", "hi all")
        warning = await bob.next_delivery()
        assert warning == SplitView("alice", "#lobby")
        delivery = await bob.next_delivery()
        assert isinstance(delivery, MessageReceived) and delivery.text == "hi all"


async def test_no_split_view_warning_while_people_come_and_go() -> None:
    """Joins and leaves race with messages in flight; an honest relay must never trigger
    the warning."""
    async with running(HostileRelay()) as relay, peers(relay, "alice", "bob") as (alice, bob):
        for round_number in range(15):
            alice.connection.send_room("#lobby", f"before {round_number}")
            visitor = await connect(relay, f"visitor{round_number}")
            alice.connection.send_private("bob", f"during {round_number}")
            bob.connection.send_room("#lobby", f"reply {round_number}")
            await visitor.connection.close()
            alice.connection.send_room("#lobby", f"after {round_number}")
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
