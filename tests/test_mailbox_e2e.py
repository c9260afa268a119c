"""Offline delivery end to end, through a real relay with mailboxes: what is sent to
someone away reaches them when they are back, in order, with its send time, across
restarts of the sender, the recipient and the relay (with its store); the sender hears
of it then, or is told it was NOT delivered. And a relay that replays, reorders, drops or
repeats mailbox items gets each message shown once, and its gaps reported."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from nacl.public import PrivateKey

from e2echat.client.events import (
    ConnectionLost,
    DeliveryReport,
    MailReceived,
    MessageQueued,
    MessageReceived,
    MessagesMissing,
    PeerJoined,
    Queued,
    SecurityWarning,
)
from e2echat.client.pending import PendingDeliveries
from e2echat.client.receipts import EXPIRED_REASONS, MAILBOX_FULL, NOT_KNOWN
from e2echat.client.trust import KnownPeers
from e2echat.crypto.keyring import Keyring
from e2echat.relay.server import Relay
from e2echat.relay.sqlite_store import SqliteStore
from e2echat.store.history import HistoryStore
from e2echat.store.sessions import SESSIONS_FILE, SessionFile
from e2echat.ui.chat import Chat
from e2echat.wire import messages as m

from hostile import HostileRelay
from relay_frames import Outgoing
from support import LOOPBACK, Peer, connect, meet, running, text_into


class Profile:
    """One user's profile on disk: each ``run`` is the client started afresh from it."""

    def __init__(self, nick: str, home: Path) -> None:
        self.nick = nick
        self.identity = PrivateKey.generate()
        self.known_peers = KnownPeers()  # (pins.json: another file, kept in memory here)
        self.path = home / nick / SESSIONS_FILE

    @contextlib.asynccontextmanager
    async def run(self, relay: Relay, **options: Any) -> AsyncIterator[Peer]:
        sessions = SessionFile.open(self.path, self.identity)
        try:
            keyring: Keyring = sessions.load(self.nick, self.identity)
            pending: PendingDeliveries = sessions.deliveries()
            peer = await connect(
                relay,
                self.nick,
                self.identity,
                self.known_peers,
                keyring=keyring,
                pending=pending,
                last_members=sessions.last_members(),
                session_file=sessions,
                **options,
            )
            try:
                yield peer
            finally:
                await peer.connection.close()  # writes the sessions file
        finally:
            sessions.close()


def _relay(tmp_path: Path, key: PrivateKey, port: int = 0, **limits: Any) -> Relay:
    return Relay(LOOPBACK, port, store=SqliteStore(tmp_path / "relay.db"), key=key, **limits)


async def test_a_private_message_waits_for_its_recipient_across_every_restart(tmp_path: Path) -> None:
    key = PrivateKey.generate()
    alice, bob = Profile("alice", tmp_path), Profile("bob", tmp_path)
    async with running(_relay(tmp_path, key)) as relay:
        async with alice.run(relay) as a, bob.run(relay) as b:
            await meet(a, b)
        async with alice.run(relay) as a:
            sent_at = time.time()
            message_id = a.connection.send_private("bob", "see you tomorrow")
            queued = await a.next(MessageQueued)
            assert (queued.message_id, queued.nicks) == (message_id, ("bob",))
    port = relay.port
    async with running(_relay(tmp_path, key, port)) as relay:  # the relay restarted
        async with bob.run(relay) as b:
            shown = await b.next(MailReceived)
            assert (shown.sender, shown.text, shown.private) == ("alice", "see you tomorrow", True)
            assert shown.sent_at is not None and abs(shown.sent_at - sent_at) < 2
            # his receipt waits in alice's mailbox: she is away
    async with running(_relay(tmp_path, key, port)) as relay:
        async with alice.run(relay) as a:
            report = await a.next(DeliveryReport, lambda r: r.message_id == message_id)
            assert report.delivered == ("bob",) and not report.failed
            assert report.preview == "see you tomorrow"


async def test_room_messages_reach_a_member_away_in_order(tmp_path: Path) -> None:
    alice, bob, carol = (Profile(nick, tmp_path) for nick in ("alice", "bob", "carol"))
    async with running(_relay(tmp_path, PrivateKey.generate())) as relay:
        async with carol.run(relay):
            pass  # carol has been in the room
        async with alice.run(relay) as a, bob.run(relay) as b:
            # A room message goes to whoever its sender sees: bob, once she has heard he joined.
            await a.next(PeerJoined, lambda e: e.nick == "bob")
            texts = [f"room line {n}" for n in range(5)]
            for text in texts:
                a.connection.send_room("#lobby", text)
                queued = await a.next(MessageQueued)
                assert queued.nicks == ("carol",) and queued.preview == text  # first: through her bundle
            for text in texts:
                assert (await b.next(MessageReceived)).text == text
            async with carol.run(relay) as c:
                shown = [(await c.next(MailReceived)).text for _ in texts]
                assert shown == texts
                for _ in texts:
                    report = await a.next(DeliveryReport, lambda r: "carol" in r.delivered)
                    assert report.preview.startswith("room line")


async def test_a_nick_the_relay_never_knew_is_reported_and_nothing_kept(tmp_path: Path) -> None:
    alice = Profile("alice", tmp_path)
    async with running(_relay(tmp_path, PrivateKey.generate())) as relay, alice.run(relay) as a:
        message_id = a.connection.send_private("ghost", "hello?")
        report = await a.next(DeliveryReport, lambda r: r.message_id == message_id)
        assert report.failed == (("ghost", NOT_KNOWN),)
        assert not a.connection.core.deliveries.pending


async def test_a_full_mailbox_and_an_expired_message_are_reported_to_the_sender(tmp_path: Path) -> None:
    alice, bob = Profile("alice", tmp_path), Profile("bob", tmp_path)
    relay = _relay(tmp_path, PrivateKey.generate(), mailbox_messages=1, mailbox_ttl=1.0)
    async with running(relay):
        async with alice.run(relay) as a, bob.run(relay) as b:
            await meet(a, b)
        async with alice.run(relay) as a:
            kept = a.connection.send_private("bob", "this one waits")
            await a.next(MessageQueued)
            refused = a.connection.send_private("bob", "no room for this")
            report = await a.next(DeliveryReport, lambda r: r.message_id == refused)
            assert report.failed == (("bob", MAILBOX_FULL),)
            report = await a.next(DeliveryReport, lambda r: r.message_id == kept)
            assert report.failed == (("bob", EXPIRED_REASONS["expired"]),)
            assert report.preview == "this one waits"


def _replay_mailbox() -> Any:
    """A tamper for bob's mail: each item sent twice, the second held back until after the
    third, the fourth dropped."""
    held: list[Outgoing] = []
    count = 0

    def tamper(relay: HostileRelay, action: Outgoing) -> list[Outgoing]:
        nonlocal count
        if not isinstance(action.message, m.Mail) or relay.nick(action.conn) != "bob":
            return [action]
        index, count = count, count + 1
        if index == 3:
            return []
        if index == 1:
            held.append(action)
            return []
        out = [action, action, *held, *held]
        held.clear()
        return out

    return tamper


async def test_a_relay_replaying_reordering_and_dropping_mail_shows_each_once_with_gaps(
    tmp_path: Path,
) -> None:
    alice, bob = Profile("alice", tmp_path), Profile("bob", tmp_path)
    hostile = HostileRelay(_replay_mailbox())
    async with running(hostile) as relay:
        async with alice.run(relay) as a, bob.run(relay) as b:
            await meet(a, b)
        async with alice.run(relay) as a:
            for n in range(5):
                a.connection.send_private("bob", f"line {n}")
                await a.next(MessageQueued)
        async with bob.run(relay) as b:
            shown: list[str] = []
            missing = 0
            while len(shown) < 4:
                event = await b.next_delivery()
                assert not isinstance(event, SecurityWarning), event
                if isinstance(event, MessagesMissing):
                    missing += event.count
                elif isinstance(event, MailReceived):
                    shown.append(event.text)
            assert sorted(shown) == ["line 0", "line 1", "line 2", "line 4"]
            assert missing >= 1  # the one dropped is reported missing


async def test_mail_replayed_on_a_later_connection_is_shown_once_quietly(tmp_path: Path) -> None:
    """The relay keeps a copy of bob's mail after he acknowledged it, and plays it to him
    again before the next item on his next connection (as after a restart that lost his
    acknowledgement): nothing is shown twice, and no warning for an exact repeat."""
    alice, bob = Profile("alice", tmp_path), Profile("bob", tmp_path)
    seen: dict[int, Outgoing] = {}

    def replay(relay: HostileRelay, action: Outgoing) -> list[Outgoing]:
        message = action.message
        if not isinstance(message, m.Mail) or relay.nick(action.conn) != "bob":
            return [action]
        if message.seq in seen:
            return [action]
        replayed = [Outgoing(action.conn, old.message) for old in seen.values()]
        seen[message.seq] = action
        return [*replayed, action]

    async with running(HostileRelay(replay)) as relay:
        async with alice.run(relay) as a, bob.run(relay) as b:
            await meet(a, b)
        async with alice.run(relay) as a:
            a.connection.send_private("bob", "only once")
            await a.next(MessageQueued)
        async with bob.run(relay) as b:
            assert (await b.next(MailReceived)).text == "only once"
        async with alice.run(relay) as a:
            a.connection.send_private("bob", "and then this")
            await a.next(MessageQueued)
        async with bob.run(relay) as b:
            assert (await b.next(MailReceived)).text == "and then this"
            assert not [e for e in b.seen if isinstance(e, SecurityWarning)]
            assert [e.text for e in b.seen if isinstance(e, MessageReceived)] == ["and then this"]


class HeldHistory(HistoryStore):
    """A history whose writes finish only when the test says (``written``)."""

    written: asyncio.Event

    async def flush(self) -> None:
        await self.written.wait()
        await super().flush()


def _acks(relay: HostileRelay, conn: int) -> list[m.Ack]:
    """What connection ``conn`` acknowledged."""
    return [msg for c, msg in relay.received if c == conn and isinstance(msg, m.Ack)]


async def test_the_chat_acknowledges_mail_once_its_history_has_it(tmp_path: Path) -> None:
    """As ``e2echat connect`` runs: the client holds its acknowledgements, and the chat
    gives each once the history has stored what it covers; until then the relay keeps
    the mail (a client that never says so gets it again, shown once)."""
    alice, bob = Profile("alice", tmp_path), Profile("bob", tmp_path)
    hostile = HostileRelay()  # honest; it records what clients send
    async with running(hostile) as relay:
        async with alice.run(relay) as a, bob.run(relay) as b:
            await meet(a, b)
        async with alice.run(relay) as a:
            a.connection.send_private("bob", "keep this")
            await a.next(MessageQueued)
        async with bob.run(relay, hold_acks=True) as b:  # no chat: nobody acknowledges
            assert (await b.next(MailReceived)).text == "keep this"
            first = hostile.conn("bob")
        assert not _acks(hostile, first)
        async with alice.run(relay) as a:
            a.connection.send_private("bob", "and this")
            await a.next(MessageQueued)
        async with bob.run(relay, hold_acks=True) as b:
            conn = hostile.conn("bob")
            history = HeldHistory.open(None, bob.identity)
            assert isinstance(history, HeldHistory)
            history.written = asyncio.Event()
            lines: list[str] = []
            chat = Chat(b.connection, text_into(lines), history=history)
            shown = asyncio.create_task(chat.run_events())
            try:
                while not [line for line in lines if "and this" in line]:
                    await asyncio.sleep(0.01)  # bounded by the test's timeout
                await b.connection.wait_sendable()
                assert not _acks(hostile, conn)  # shown, not yet stored: not acknowledged
                history.written.set()
                while not _acks(hostile, conn):
                    await asyncio.sleep(0.01)
                assert [entry.text for entry in history.recent("alice", 10).entries] == ["and this"]
                assert [line for line in lines if "keep this" in line] == []  # the repeat: quiet
            finally:
                shown.cancel()
                history.close()


async def test_a_line_typed_in_an_outage_to_someone_away_waits_in_their_mailbox(tmp_path: Path) -> None:
    """The relay (with its store) restarts; bob does not come back with it. alice's /msg
    typed meanwhile goes to his mailbox once she is back, as any /msg to him would, and
    is reported delivered under its own id when he reads it: not NOT back in time."""
    key = PrivateKey.generate()
    alice, bob = Profile("alice", tmp_path), Profile("bob", tmp_path)
    async with running(_relay(tmp_path, key)) as relay:
        port = relay.port
        async with alice.run(relay, reconnecting=True, grace=0.3) as a:
            async with bob.run(relay) as b:
                await meet(a, b)
            await relay.stop()
            await a.next(ConnectionLost)
            message_id = a.connection.send_private("bob", "typed in the outage")
            assert (await a.next(Queued)).message_id == message_id
            async with running(_relay(tmp_path, key, port)) as again:
                queued = await a.next(MessageQueued)
                assert (queued.message_id, queued.nicks) == (message_id, ("bob",))
                async with bob.run(again) as b:
                    assert (await b.next(MailReceived)).text == "typed in the outage"
                report = await a.next(DeliveryReport, lambda r: bool(r.delivered))
                assert (report.message_id, report.delivered) == (message_id, ("bob",))
                assert not [r for r in a.seen if isinstance(r, DeliveryReport) and r.failed]


async def test_quiet_deliveries_still_tell_of_mail_delivered_later(tmp_path: Path) -> None:
    """At the prompt a delivery goes without a line (the toolbar shows the last message),
    but not the delivery of a copy kept for someone away: that comes later, and is news,
    in the same run or after a restart."""
    alice, bob, carol = (Profile(nick, tmp_path) for nick in ("alice", "bob", "carol"))
    async with running(_relay(tmp_path, PrivateKey.generate())) as relay:
        async with carol.run(relay), bob.run(relay):
            pass  # both have been in the room
        async with alice.run(relay) as a, bob.run(relay) as b:
            await a.next(PeerJoined, lambda e: e.nick == "bob")
            lines: list[str] = []
            chat = Chat(a.connection, text_into(lines))
            chat.status_line = True  # as the REPL: deliveries quiet
            chat.handle_line("to the room")
            assert (await b.next(MessageReceived)).text == "to the room"
            chat.show(await a.next(MessageQueued))
            to_bob = await a.next(DeliveryReport, lambda r: r.delivered == ("bob",))
            chat.show(to_bob)
            assert not any("delivered to bob" in line for line in lines)  # quiet: the toolbar
            assert any('"to the room" queued for carol (offline)' in line for line in lines)
            async with carol.run(relay):  # back while alice is still here
                to_carol = await a.next(DeliveryReport, lambda r: "carol" in r.delivered)
                chat.show(to_carol)
            assert any('"to the room" delivered to carol' in line for line in lines), lines
            chat.handle_line("/msg carol for tomorrow")
            chat.show(await a.next(MessageQueued))
        async with carol.run(relay), alice.run(relay) as a:  # both back, alice in a new run
            lines.clear()
            chat = Chat(a.connection, text_into(lines))
            chat.status_line = True
            later = await a.next(DeliveryReport, lambda r: "carol" in r.delivered)
            chat.show(later)
            assert any('"for tomorrow" delivered to carol' in line for line in lines), lines
