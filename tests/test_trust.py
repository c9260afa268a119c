"""Identity, trust on first use, key changes and safety numbers — including attacks by a
relay that substitutes keys."""

from __future__ import annotations

import json
import os
import re
import stat
import time
from pathlib import Path

import pytest
from nacl.public import PrivateKey, PublicKey

from e2echat.client.core import (
    KeyChanged,
    KeyPinned,
    MessageReceived,
    PeerJoined,
    SecurityWarning,
    SendReport,
    SplitView,
)
from e2echat.client.trust import KnownPeers, Trust
from e2echat.crypto.identity import format_safety_number, safety_number
from e2echat.crypto.keyring import Keyring
from e2echat.errors import CommandError, DecryptionError, KeyFileError, PassphraseRequired, WrongPassphrase
from e2echat.store import pins
from e2echat.store.files import write_private_file
from e2echat.store.keyfile import IDENTITY_FILE, KdfCost, load_identity, load_or_create_identity
from e2echat.store.pins import KNOWN_PEERS_FILE, PinFile
from e2echat.ui.chat import Chat

from hostile import HostileRelay, made_up_peers, substitute_keys
from support import connect, meet, peers, run_cli, running, running_relay, text_into

VECTORS = json.loads((Path(__file__).parent / "vectors" / "safety_numbers.json").read_text())["vectors"]
CHEAP = KdfCost(opslimit=1, memlimit=8192)  # Argon2id at its minimum: tests need speed, not cost


# -- safety numbers -------------------------------------------------------------------------


@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
def test_safety_number_matches_signal_vectors(vector: dict[str, str]) -> None:
    local = PublicKey(bytes.fromhex(vector["local_key"]))
    remote = PublicKey(bytes.fromhex(vector["remote_key"]))
    expected = vector["safety_number"]
    assert safety_number(local, vector["local_id"], remote, vector["remote_id"]) == expected
    assert safety_number(remote, vector["remote_id"], local, vector["local_id"]) == expected


def test_safety_number_changes_with_any_key_or_name() -> None:
    alice, bob, mallory = (PrivateKey.generate().public_key for _ in range(3))
    base = safety_number(alice, "alice", bob, "bob")
    assert len(base) == 60 and base.isdigit()
    assert safety_number(alice, "alice", mallory, "bob") != base
    assert safety_number(alice, "alice", bob, "bobby") != base
    assert format_safety_number(base).split() == [base[i : i + 5] for i in range(0, 60, 5)]


# -- identities that last -------------------------------------------------------------------


def test_identity_persists_with_private_file_modes(tmp_path: Path) -> None:
    home = tmp_path / "profile"
    first, created = load_or_create_identity(home)
    again, created_again = load_or_create_identity(home)
    assert created and not created_again
    assert bytes(first) == bytes(again)
    assert stat.S_IMODE((home / IDENTITY_FILE).stat().st_mode) == 0o600
    assert stat.S_IMODE(home.stat().st_mode) == 0o700


def test_passphrase_round_trip_and_wrong_passphrase(tmp_path: Path) -> None:
    key, _ = load_or_create_identity(tmp_path, "correct horse", cost=CHEAP)
    text = (tmp_path / IDENTITY_FILE).read_text()
    assert "private_key" not in json.loads(text)  # only the sealed form is stored
    loaded, protected = load_identity(tmp_path / IDENTITY_FILE, "correct horse")
    assert protected and bytes(loaded) == bytes(key)
    with pytest.raises(WrongPassphrase):
        load_identity(tmp_path / IDENTITY_FILE, "battery staple")
    with pytest.raises(PassphraseRequired):
        load_identity(tmp_path / IDENTITY_FILE, None)


def test_a_passphrase_protects_an_existing_key(tmp_path: Path) -> None:
    key, _ = load_or_create_identity(tmp_path)
    same, created = load_or_create_identity(tmp_path, "now protected", cost=CHEAP)
    assert not created and bytes(same) == bytes(key)
    with pytest.raises(PassphraseRequired):
        load_identity(tmp_path / IDENTITY_FILE)


def test_tampered_sealed_key_is_refused(tmp_path: Path) -> None:
    load_or_create_identity(tmp_path, "pw", cost=CHEAP)
    path = tmp_path / IDENTITY_FILE
    document = json.loads(path.read_text())
    document["public_key"] = document["public_key"][::-1]
    path.write_text(json.dumps(document))
    with pytest.raises(KeyFileError):
        load_identity(path, "pw")


async def test_cli_identity_persists_and_fingerprint_matches(tmp_path: Path) -> None:
    home = str(tmp_path / "alice")
    async with running_relay() as relay:
        for _ in range(2):
            code, out, err = await run_cli(
                "connect", "--nick", "alice", "--port", str(relay.port), "--home", home
            )
            assert code == 0, err
    code, printed, _ = await run_cli("fingerprint", "--home", home)
    assert code == 0
    shown = re.findall(r"your key fingerprint: ([0-9a-f ]+)", out)
    assert shown == [printed.strip()]
    assert "created a new identity" not in out  # the second run reused it


async def test_cli_passphrase_from_environment(tmp_path: Path) -> None:
    home = str(tmp_path / "alice")
    env = {**os.environ, "E2ECHAT_PASSPHRASE": "s3cret words"}
    async with running_relay() as relay:
        args = ("connect", "--nick", "alice", "--port", str(relay.port), "--home", home)
        code, _, err = await run_cli(*args, env=env)
        assert code == 0, err
        code, _, err = await run_cli(*args, env={**env, "E2ECHAT_PASSPHRASE": "wrong words"})
        assert (code, err.strip()) == (
            1,
            f"e2echat: wrong passphrase for the identity key in {home}/identity.key",
        )
        code, _, err = await run_cli(*args, env={k: v for k, v in env.items() if k != "E2ECHAT_PASSPHRASE"})
        assert code == 1 and "protected by a passphrase" in err and "Traceback" not in err


# -- trust on first use ------------------------------------------------------------------------


async def test_first_contact_pins_and_a_restart_keeps_the_pin(tmp_path: Path) -> None:
    store = PinFile(tmp_path / KNOWN_PEERS_FILE)
    bob_identity = PrivateKey.generate()
    async with running_relay() as relay:
        alice = await connect(relay, "alice", known_peers=store.load(), pin_file=store)
        bob = await connect(relay, "bob", bob_identity)
        bob.connection.send_private("alice", "hi, it's bob")  # the first message pins bob's key
        assert (await alice.next(KeyPinned)).nick == "bob"
        await bob.connection.close()
        await alice.connection.close()
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    restarted = PinFile(store.path).load()
    assert restarted.state("bob", bob_identity.public_key) is Trust.UNVERIFIED
    assert restarted.state("bob", PrivateKey.generate().public_key) is Trust.CHANGED


async def test_changed_key_is_flagged_and_blocks_sending_until_trusted() -> None:
    """bob comes back with another identity key (reinstall, or an impersonator)."""
    known = KnownPeers()
    async with running_relay() as relay, peers(relay, "carol"):
        alice = await connect(relay, "alice", known_peers=known)
        old_bob = await connect(relay, "bob")
        await meet(alice, old_bob)
        await old_bob.connection.close()

        new_bob = await connect(relay, "bob", PrivateKey.generate())
        changed = await alice.next(KeyChanged)
        assert changed.nick == "bob" and changed.pinned_fingerprint != changed.new_fingerprint
        lines: list[str] = []
        chat = Chat(alice.connection, text_into(lines))
        chat.show(changed)
        assert "CHANGED" in lines[0] and "/trust bob" in "".join(lines)

        # Nothing goes to bob: no private message, and room messages leave bob out.
        with pytest.raises(CommandError, match="key changed"):
            alice.connection.send_private("bob", "are you really bob?")
        alice.connection.send_room("#lobby", "hello room")
        report = await alice.next(SendReport)
        assert report.delivered == ("carol",)
        chat.handle_line("/who")
        assert "bob (key changed)" in lines[-1]

        # bob's messages are shown, marked.
        new_bob.connection.send_private("alice", "it's me, new laptop")
        got = await alice.next(MessageReceived)
        assert got.trust is Trust.CHANGED
        chat.show(got)
        assert "<bob KEY CHANGED>" in lines[-1]

        # After /trust bob the new key is pinned, unverified, and sending works again.
        chat.handle_line("/trust bob")
        assert alice.connection.core.trust("bob") is Trust.UNVERIFIED
        alice.connection.send_private("bob", "welcome back")
        assert (await new_bob.next(MessageReceived)).text == "welcome back"
        await new_bob.connection.close()
        await alice.connection.close()


async def test_accepting_a_new_key_clears_verification() -> None:
    known = KnownPeers()
    async with running_relay() as relay:
        alice = await connect(relay, "alice", known_peers=known)
        bob = await connect(relay, "bob")
        await meet(alice, bob)
        chat = Chat(alice.connection, text_into([]))
        chat.handle_line("/verify bob")  # compared, out loud
        chat.handle_line("/trust bob")
        assert alice.connection.core.trust("bob") is Trust.VERIFIED
        await bob.connection.close()
        await connect(relay, "bob")  # a new identity
        chat.show(await alice.next(KeyChanged))
        chat.handle_line("/trust bob")
        assert alice.connection.core.trust("bob") is Trust.UNVERIFIED
        await alice.connection.close()


# -- a hostile relay substitutes keys --------------------------------------------------------


async def test_relay_substituting_an_identity_key_is_caught_and_gets_nothing() -> None:
    known = KnownPeers()
    bob_identity = PrivateKey.generate()
    async with running_relay() as honest:  # alice meets the real bob first
        alice = await connect(honest, "alice", known_peers=known)
        bob = await connect(honest, "bob", bob_identity)
        await meet(alice, bob)
        for peer in (alice, bob):
            await peer.connection.close()

    mallory_identity, mallory_session = PrivateKey.generate(), PrivateKey.generate()
    hostile = HostileRelay(
        substitute_keys(
            "alice", "bob", identity_key=mallory_identity.public_key, session_key=mallory_session.public_key
        )
    )
    async with running(hostile) as relay, peers(relay, "bob", "carol") as (bob, carol):
        alice = await connect(relay, "alice", known_peers=known)
        assert (await alice.next(KeyChanged)).nick == "bob"
        with pytest.raises(CommandError, match="key changed"):
            alice.connection.send_private("bob", "the launch code is 1234")
        alice.connection.send_room("#lobby", "room news")
        assert (await carol.next(MessageReceived)).text == "room news"
        await alice.next(SendReport)
        # The attack fails: not one envelope from alice was addressed to bob.
        assert all(e.to != "bob" for send in relay.sends_from("alice") for e in send.items)
        assert not any(isinstance(e, MessageReceived) for e in bob.seen)
        await alice.connection.close()


async def test_relay_substituting_only_a_session_key_gains_nothing() -> None:
    """Sessions come from identity keys and prekeys (X3DH); a connection's session key
    only proves its registration. A relay that shows alice another session key for bob
    gains nothing by it: they talk as before, and the relay, with the session key it
    substituted and every public key and bundle it handed out, reads nothing. (No view of
    a room holds session keys: they say nothing of who can read what is said there.)"""
    mallory_session = PrivateKey.generate()
    hostile = HostileRelay(substitute_keys("alice", "bob", session_key=mallory_session.public_key))
    async with running(hostile) as relay, peers(relay, "alice", "bob") as (alice, bob):
        assert alice.connection.core.directory["bob"].session_key == mallory_session.public_key
        assert alice.connection.core.trust("bob") is Trust.UNVERIFIED  # nothing looks changed
        alice.connection.send_private("bob", "hi bob")
        assert await bob.next_delivery() == MessageReceived("alice", "hi bob", private=True)
        bob.connection.send_private("alice", "hi alice")
        assert await alice.next_delivery() == MessageReceived("bob", "hi alice", private=True)
        alice.connection.send_room("#lobby", "hi room")
        assert await bob.next_delivery() == MessageReceived("alice", "hi room", private=False)
        warned = SecurityWarning | KeyChanged | SplitView
        assert not [e for e in alice.seen + bob.seen if isinstance(e, warned)]

        # Posing as bob with its own keys (it has no private key of bob's), the relay
        # cannot open alice's first message to him.
        body = next(e.body for send in relay.sends_from("alice") for e in send.items if e.to == "bob")
        mallory = Keyring.fresh("bob", PrivateKey.generate(), time.time())
        alice_identity = alice.connection.core.keyring.identity.public_key
        with pytest.raises(DecryptionError):
            mallory.peer("alice", alice_identity).decrypt(body)


# -- verification -------------------------------------------------------------------------------


async def test_verify_match_marks_verified_and_persists(tmp_path: Path) -> None:
    store = PinFile(tmp_path / KNOWN_PEERS_FILE)
    async with running_relay() as relay:
        alice = await connect(relay, "alice", known_peers=store.load(), pin_file=store)
        bob = await connect(relay, "bob")
        await alice.next(PeerJoined, lambda e: e.nick == "bob")
        alice_lines: list[str] = []
        bob_lines: list[str] = []
        Chat(alice.connection, text_into(alice_lines)).handle_line("/verify bob")
        Chat(bob.connection, text_into(bob_lines)).handle_line("/verify alice")
        number_alice_sees = re.findall(r"safety number with bob: ([\d ]+)$", alice_lines[0])[0]
        number_bob_reads = re.findall(r"safety number with alice: ([\d ]+)$", bob_lines[0])[0]
        assert number_alice_sees == number_bob_reads
        assert len(number_bob_reads.split()) == 12
        assert "in person or on a call" in alice_lines[1]

        Chat(alice.connection, text_into(alice_lines)).handle_line(f"/verify bob {number_bob_reads}")
        assert alice_lines[-1].endswith("the safety numbers match: bob is now verified")
        bob.connection.send_room("#lobby", "verified hello")
        assert (await alice.next(MessageReceived)).trust is Trust.VERIFIED
        bob_key = alice.connection.core.directory["bob"].identity_key
        for peer in (alice, bob):
            await peer.connection.close()
    assert PinFile(store.path).load().state("bob", bob_key) is Trust.VERIFIED  # survives a restart


async def test_verify_mismatch_warns_and_changes_nothing() -> None:
    async with running_relay() as relay, peers(relay, "alice", "bob") as (alice, _):
        lines: list[str] = []
        chat = Chat(alice.connection, text_into(lines))
        chat.handle_line("/verify bob " + "12345 " * 12)
        assert "does NOT match" in lines[-1]
        assert alice.connection.core.trust("bob") is Trust.UNVERIFIED
        chat.handle_line("/verify bob 123")
        assert "has 60 digits" in lines[-1]


async def test_untrust_clears_the_mark() -> None:
    async with running_relay() as relay, peers(relay, "alice", "bob") as (alice, _):
        chat = Chat(alice.connection, text_into([]))
        chat.handle_line("/verify bob")
        chat.handle_line("/trust bob")
        assert alice.connection.core.trust("bob") is Trust.VERIFIED
        chat.handle_line("/untrust bob")
        assert alice.connection.core.trust("bob") is Trust.UNVERIFIED


def test_damaged_known_peers_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / KNOWN_PEERS_FILE
    path.write_text("{not json")
    with pytest.raises(KeyFileError, match="known-peers file is damaged"):
        PinFile(path).load()


async def test_verify_with_non_ascii_digits_is_a_clear_error() -> None:
    async with running_relay() as relay, peers(relay, "alice", "bob") as (alice, _):
        lines: list[str] = []
        Chat(alice.connection, text_into(lines)).handle_line("/verify bob " + "１" * 60)  # fullwidth
        assert "has 60 digits" in lines[-1]


async def test_room_message_says_who_was_left_out() -> None:
    known = KnownPeers()
    async with running_relay() as relay, peers(relay, "carol"):
        alice = await connect(relay, "alice", known_peers=known)
        old_bob = await connect(relay, "bob")
        await meet(alice, old_bob)
        await old_bob.connection.close()
        new_bob = await connect(relay, "bob")
        await alice.next(KeyChanged)
        lines: list[str] = []
        chat = Chat(alice.connection, text_into(lines))
        chat.handle_line("hello everyone")
        assert lines and "not sent to bob" in lines[-1]
        assert chat.undelivered  # line mode exits 4: not everyone got it
        for peer in (new_bob, alice):
            await peer.connection.close()


async def test_many_new_contacts_are_pinned_in_few_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Many people writing to us at once must not make the client rewrite its known-peers
    file once per new contact (quadratic work, and a disk write each time)."""
    writes: list[Path] = []

    def counting_write(path: Path, data: bytes) -> None:
        writes.append(path)
        write_private_file(path, data)

    monkeypatch.setattr(pins, "write_private_file", counting_write)
    hostile = HostileRelay()
    store = PinFile(tmp_path / KNOWN_PEERS_FILE)
    async with running(hostile) as relay:
        alice = await connect(relay, "alice", known_peers=store.load(), pin_file=store)
        fakes = made_up_peers(relay, "alice", 300)
        relay.inject_many("alice", [fake.entered() for fake in fakes])
        relay.inject_many("alice", [fake.deliver("hi") for fake in fakes])
        for _ in fakes:
            await alice.next(MessageReceived)
        await alice.connection.close()  # waits for the last write
    assert 1 <= len(writes) <= 10
    assert len(json.loads(store.path.read_text())["peers"]) == 300
