"""Sessions outlive connections (issue 17): a conversation goes on across a reconnect, a
relay restart and a client restart (its keyring saved by ``SessionFile`` to a real
sessions.db, and read back), with no warning, no message lost and no new key agreement;
and what was read before cannot be replayed after any of them. Real relays on loopback,
real clients; the restarted client reads the profile's files from disk.
"""

from __future__ import annotations

import asyncio
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from nacl.public import PrivateKey

from e2echat.client.connection import Connection
from e2echat.client.core import (
    DeliveryReport,
    KeyPinned,
    MessageReceived,
    MessagesMissing,
    PeerLeft,
    Registered,
    SecurityWarning,
    SplitView,
)
from e2echat.client.events import ConnectionLost
from e2echat.crypto.keyring import Keyring
from e2echat.crypto.prekeys import ONE_TIME_BATCH
from e2echat.errors import KeyFileError
from e2echat.relay.server import Relay
from e2echat.store.pins import KNOWN_PEERS_FILE, PinFile
from e2echat.store.sessions import SESSIONS_FILE, SessionFile
from e2echat.wire import messages as m

from hostile import HostileRelay, deliveries
from relay_frames import Outgoing
from support import LOOPBACK, Peer, connect, peers, running

# -- helpers --------------------------------------------------------------------------------


def sessions(peer: Peer, nick: str) -> set[bytes]:
    """The sessions ``peer`` has with ``nick``, by the base key of the X3DH that began each."""
    return {session.base_key for session in peer.connection.core.keyring.peers[nick]._sessions}


def troubles(*people: Peer) -> list[object]:
    """Everything that would say something went wrong: warnings, gaps, split views."""
    return [e for p in people for e in p.seen if isinstance(e, SecurityWarning | MessagesMissing | SplitView)]


async def talk(one: Peer, other: Peer, tag: str) -> None:
    """A private message each way, each read and confirmed."""
    for sender, receiver in ((one, other), (other, one)):
        text = f"{tag}: {sender.nick} to {receiver.nick}"
        message_id = sender.connection.send_private(receiver.nick, text)
        assert await receiver.next_delivery() == MessageReceived(sender.nick, text, private=True)
        report = await sender.next(DeliveryReport)
        assert (report.message_id, report.delivered) == (message_id, (receiver.nick,))


def fetches(relay: HostileRelay) -> int:
    return sum(1 for _, message in relay.received if isinstance(message, m.Fetch))


class Recorder:
    """A ``deliveries`` tamper that keeps every deliver the relay passes on."""

    def __init__(self) -> None:
        self.delivered: list[tuple[str, m.Deliver]] = []  # (recipient, what it got)

    def __call__(self, relay: HostileRelay, action: Outgoing, deliver: m.Deliver) -> list[Outgoing]:
        self.delivered.append((relay.nick(action.conn) or "", deliver))
        return [action]

    def delivers(self, nick: str, sender: str) -> list[m.Deliver]:
        """What the relay passed on to ``nick`` from ``sender``, in order."""
        return [d for to, d in self.delivered if to == nick and d.sender == sender]


@dataclass
class Profile:
    """A client's profile on disk, as the CLI keeps it: pins in known_peers.json and the
    keyring in sessions.db, beside an identity key (kept in memory here)."""

    nick: str
    directory: Path
    identity: PrivateKey = field(default_factory=PrivateKey.generate)
    session_file: SessionFile | None = None

    async def start(self, relay: Relay, **options: Any) -> Peer:
        """A client run from this profile: reads both files, as a start of e2echat does."""
        pin_file = PinFile(self.directory / KNOWN_PEERS_FILE)
        self.session_file = SessionFile.open(self.directory / SESSIONS_FILE, self.identity)
        keyring = self.session_file.load(self.nick, self.identity)
        return await connect(
            relay,
            self.nick,
            self.identity,
            pin_file.load(),
            pin_file=pin_file,
            keyring=keyring,
            session_file=self.session_file,
            **options,
        )

    async def stop(self, peer: Peer) -> None:
        """The client quits: its connection closes and writes what is left; the file closes."""
        await peer.connection.close()
        assert self.session_file is not None
        self.session_file.close()

    def crash_copy(self, into: Path) -> Profile:
        """What the disk holds now, copied as a crash this moment would leave it (the
        journal with the file): the profile a client killed now starts from."""
        into.mkdir(mode=0o700)
        for name in (KNOWN_PEERS_FILE, SESSIONS_FILE, SESSIONS_FILE + "-journal"):
            if (self.directory / name).exists():
                shutil.copy2(self.directory / name, into / name)
        return Profile(self.nick, into, self.identity)

    def saved(self) -> Keyring:
        """The keyring in this profile's sessions.db, read as a start of e2echat reads it."""
        session_file = SessionFile.open(self.directory / SESSIONS_FILE, self.identity)
        try:
            return session_file.load(self.nick, self.identity)
        finally:
            session_file.close()


# -- a reconnect -------------------------------------------------------------------------------


async def test_a_conversation_goes_on_across_a_reconnect_and_a_replay_stays_refused() -> None:
    """The relay drops alice's connection; her client reconnects (a new session key, the
    same keyring). She and bob go on in the sessions they had: no new fetch or X3DH, no
    warning, no gap. A message bob sent before is replayed to her: refused."""
    recorder = Recorder()
    async with running(HostileRelay(deliveries(recorder))) as relay, peers(relay, "bob") as (bob,):
        alice = await connect(relay, "alice", reconnecting=True)
        await talk(alice, bob, "before")
        before = sessions(alice, "bob"), sessions(bob, "alice"), fetches(relay)
        relay.hang_up("alice")
        await alice.next(ConnectionLost)
        await alice.next(Registered)
        await talk(alice, bob, "after")
        assert (sessions(alice, "bob"), sessions(bob, "alice"), fetches(relay)) == before
        assert not troubles(alice, bob)

        old = recorder.delivers("alice", "bob")[0]
        relay.inject("alice", old)
        refused = await alice.next_delivery()
        assert isinstance(refused, SecurityWarning) and "replay" in refused.text
        await talk(alice, bob, "and on")
        await alice.connection.close()


# -- a relay restart -----------------------------------------------------------------------------


async def test_a_conversation_goes_on_across_a_relay_restart() -> None:
    """The relay stops and starts again (same port, same key, an empty memory): both
    clients reconnect, register and publish anew, and go on in their sessions. Nobody
    fetches a bundle from the new relay: bob's one-time prekeys there stay untouched."""
    first = Relay(LOOPBACK, 0)
    async with running(first):
        alice = await connect(first, "alice", reconnecting=True)
        bob = await connect(first, "bob", reconnecting=True)
        await talk(alice, bob, "before")
        before = sessions(alice, "bob"), sessions(bob, "alice")
    for peer in (alice, bob):
        await peer.next(ConnectionLost)
    async with running(Relay(LOOPBACK, first.port, key=first.core.key)) as again:
        for peer in (alice, bob):
            await peer.next(Registered)
        while set(alice.connection.core.peers) != {"bob"} or set(bob.connection.core.peers) != {"alice"}:
            await (alice if "bob" not in alice.connection.core.peers else bob).next_any_event()
        await talk(alice, bob, "after")
        assert (sessions(alice, "bob"), sessions(bob, "alice")) == before
        assert again.core.prekeys.count("bob") == again.core.prekeys.count("alice") == ONE_TIME_BATCH
        assert not troubles(alice, bob)
        for peer in (alice, bob):
            await peer.connection.close()


# -- a client restart ----------------------------------------------------------------------------


async def test_a_conversation_goes_on_across_a_client_restart(tmp_path: Path) -> None:
    """alice quits mid-conversation and starts again from her profile: the keyring comes
    back from sessions.db, and the conversation goes on in the same session, with no
    warning, no first-contact notice, no gap and no new key agreement. What bob sent
    before, replayed to the restarted alice, is refused."""
    recorder = Recorder()
    profile = Profile("alice", tmp_path / "alice")
    async with running(HostileRelay(deliveries(recorder))) as relay, peers(relay, "bob") as (bob,):
        alice = await profile.start(relay)
        await talk(alice, bob, "before")
        before = sessions(alice, "bob"), sessions(bob, "alice"), fetches(relay)
        await profile.stop(alice)
        await bob.next(PeerLeft)

        alice = await profile.start(relay)
        await talk(alice, bob, "after")
        assert (sessions(alice, "bob"), sessions(bob, "alice"), fetches(relay)) == before
        assert not troubles(alice, bob) and not [e for e in alice.seen if isinstance(e, KeyPinned)]

        relay.inject("alice", recorder.delivers("alice", "bob")[0])
        refused = await alice.next_delivery()
        assert isinstance(refused, SecurityWarning) and "replay" in refused.text
        await profile.stop(alice)


async def test_what_a_crash_leaves_on_disk_goes_on_without_a_replay(tmp_path: Path) -> None:
    """alice's client saves its keyring after each batch of work, not only when it quits.
    Killed mid-conversation (no goodbye, nothing flushed), it starts again from what the
    disk held: the conversation goes on with no warning and no new key agreement, and
    bob's last message, which it had read, is refused when the relay replays it."""
    recorder = Recorder()
    profile = Profile("alice", tmp_path / "alice")
    async with running(HostileRelay(deliveries(recorder))) as relay, peers(relay, "bob") as (bob,):
        alice = await profile.start(relay)
        await talk(alice, bob, "before")
        message_id = bob.connection.send_private("alice", "the last one read")
        assert (await alice.next(MessageReceived)).text == "the last one read"
        # alice's receipt is out, so the batch that sent it has asked for its keyring to be
        # written; nothing has changed the keyring since.
        await bob.next(DeliveryReport, lambda r: r.message_id == message_id)
        assert profile.session_file is not None
        await written(profile.session_file)
        crashed = profile.crash_copy(tmp_path / "after-the-crash")
        assert crashed.saved().rows() == alice.connection.core.keyring.rows()
        before = sessions(alice, "bob"), sessions(bob, "alice"), fetches(relay)
        assert isinstance(alice.connection, Connection) and alice.connection._transport is not None
        alice.connection._transport.abort()  # killed: nothing more is written or flushed
        await bob.next(PeerLeft)

        alice = await crashed.start(relay)
        await talk(alice, bob, "after")
        assert (sessions(alice, "bob"), sessions(bob, "alice"), fetches(relay)) == before
        assert not troubles(alice, bob)
        (last,) = [d for d in recorder.delivers("alice", "bob") if d.body == _body_of(relay, message_id)]
        relay.inject("alice", last)
        refused = await alice.next_delivery()
        assert isinstance(refused, SecurityWarning) and "replay" in refused.text
        await crashed.stop(alice)
    profile.session_file.close()


async def written(session_file: SessionFile) -> None:
    """Return once every write already asked of ``session_file`` is done: its one worker
    thread runs them in order, so a no-op queued behind them ends after them."""
    await asyncio.get_running_loop().run_in_executor(session_file._store._worker, lambda: None)


def _body_of(relay: HostileRelay, message_id: int) -> bytes:
    """The body of bob's message ``message_id`` to alice, as bob sent it."""
    (body,) = [e.body for send in relay.sends_from("bob") if send.id == message_id for e in send.items]
    return body


async def test_pins_that_cannot_be_written_do_not_keep_the_sessions_from_being_saved(
    tmp_path: Path,
) -> None:
    """A directory stands where alice's known_peers.json goes, so the pin her first
    contact with bob makes cannot be written. Quitting says so, but writes her sessions
    all the same: sessions.db holds her keyring as she left it, the receipt sent on the
    way out included (the CLI closes the file next, and what it had not written is lost)."""
    profile = Profile("alice", tmp_path / "alice")
    async with running(Relay(LOOPBACK, 0)) as relay, peers(relay, "bob") as (bob,):
        alice = await profile.start(relay)
        (profile.directory / KNOWN_PEERS_FILE).mkdir()
        for text in ("first", "second"):
            bob.connection.send_private("alice", text)
            assert (await alice.next(MessageReceived)).text == text
        # The receipt for the second is held back (receipts go about once a second), so
        # the keyring's last change is the one close() makes when it sends it.
        assert alice.connection.core._outbox.acks_due
        with pytest.raises(KeyFileError, match=KNOWN_PEERS_FILE):
            await alice.connection.close()
        assert profile.session_file is not None
        profile.session_file.close()
        assert profile.saved().rows() == alice.connection.core.keyring.rows()


# -- the file itself ---------------------------------------------------------------------------------


async def test_sessions_db_is_private_and_holds_no_key_in_the_clear(tmp_path: Path) -> None:
    """sessions.db is mode 0600, and none of the secrets alice's keyring holds (root,
    chain and header keys, ratchet private keys, prekey private keys) appears in it or
    its journal as they are in memory. Positive control: each is in the rows the store
    seals, and the file read back with the identity key gives them all."""
    profile = Profile("alice", tmp_path / "alice")
    async with running(HostileRelay()) as relay, peers(relay, "bob") as (bob,):
        alice = await profile.start(relay)
        await talk(alice, bob, "secrets")
        keyring = alice.connection.core.keyring
        secrets = _secrets(keyring)
        rows = b"".join(keyring.rows().values())
        await profile.stop(alice)
    path = profile.directory / SESSIONS_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    on_disk = b"".join(
        p.read_bytes() for p in profile.directory.iterdir() if p.name.startswith(SESSIONS_FILE)
    )
    assert len(secrets) >= 10 and all(secret in rows for secret in secrets)
    assert [secret.hex() for secret in secrets if secret in on_disk] == []
    reloaded = SessionFile.open(path, profile.identity)
    try:
        assert reloaded.load("alice", profile.identity).rows() == keyring.rows()
    finally:
        reloaded.close()


def _secrets(keyring: Keyring) -> list[bytes]:
    """Every secret key the keyring holds, as bytes."""
    found: list[bytes] = []
    for peer in keyring.peers.values():
        for session in peer._sessions:
            ratchet = session.ratchet
            for value in (ratchet._rk, ratchet._cks, ratchet._ckr, ratchet._hks, ratchet._hkr):
                if value is not None:
                    found.append(value)
            found.append(bytes(ratchet._dhs))
    prekeys = keyring.prekeys
    found.append(bytes(prekeys.current.private))
    found.extend(bytes(one_time) for one_time in prekeys._one_time.values())
    return found


# -- a client that lost its sessions --------------------------------------------------------------


async def test_a_peer_who_lost_its_sessions_is_reached_again(tmp_path: Path) -> None:
    """alice starts again from her identity alone (sessions.db lost): bob, who goes on in
    the session he had, is not read; he is told so (no receipt), and alice warns. Her
    client starts a new session with him at once, and bob's next message is read in it."""
    async with running(Relay(LOOPBACK, 0)) as relay:
        bob = await connect(relay, "bob", receipt_timeout=1.0)
        identity = PrivateKey.generate()
        alice = await connect(relay, "alice", identity)
        await talk(alice, bob, "before")
        await alice.connection.close()
        await bob.next(PeerLeft)

        alice = await connect(relay, "alice", identity, keyring=Keyring.fresh("alice", identity, 0.0))
        bob.connection.send_private("alice", "lost on the way")
        dropped = await alice.next_delivery()
        assert isinstance(dropped, SecurityWarning) and "no session with us" in dropped.text
        report = await bob.next(DeliveryReport)
        assert report.failed and not report.delivered  # reported, not lost silently
        # alice's client reached out: bob now has the session she started.
        while len(bob.connection.core.keyring.peers["alice"]._sessions) < 2:
            await bob.next_any_event()
        await talk(bob, alice, "after")
        for peer in (alice, bob):
            await peer.connection.close()


async def test_new_contacts_reach_a_peer_who_lost_her_one_time_prekeys() -> None:
    """alice starts again from her identity alone (sessions.db lost). The relay still
    holds the one-time prekeys she published before, enough that she need not publish
    more; but their private halves are gone. Her client has them replaced, and each new
    contact's first message to her is read."""
    async with running(Relay(LOOPBACK, 0)) as relay:
        identity = PrivateKey.generate()
        alice = await connect(relay, "alice", identity)
        await alice.connection.close()
        assert relay.core.prekeys.count("alice") == ONE_TIME_BATCH

        alice = await connect(relay, "alice", identity, keyring=Keyring.fresh("alice", identity, 0.0))
        for nick in ("carol", "dave"):
            contact = await connect(relay, nick)
            await talk(contact, alice, "first contact")
            await contact.connection.close()
        assert not troubles(alice)
        await alice.connection.close()
