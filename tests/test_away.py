"""/away: the STATUS a peer sends (client/status.py), what a receiver believes of it, and
the chat's side (ui/away.py): pure checks first, then through a real relay, an honest
one and one that lies, in line mode and at the prompt."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from nacl.public import PrivateKey
from test_offline import _two_who_met, _written
from test_repl_features import repl, toolbar_of, until

from e2echat.client.events import (
    Away,
    ConnectionLost,
    DeliveryReport,
    MessageReceived,
    PeerJoined,
    PeerLeft,
    Registered,
    SecurityWarning,
)
from e2echat.client.status import (
    MAX_AWAY,
    MAX_STATUS_AGE,
    Refused,
    TheirStatuses,
    checked_away,
    decode_status,
    encode_status,
    is_away_message,
)
from e2echat.client.trust import KnownPeers, Trust
from e2echat.crypto.session import Kind
from e2echat.errors import CommandError
from e2echat.relay.server import Relay
from e2echat.ui import commands
from e2echat.ui.chat import Chat
from e2echat.ui.render import json_lines, who_entry
from e2echat.wire import messages as m

from hostile import HostileRelay, flip_bit, made_up_peers
from relay_frames import Outgoing
from support import LOOPBACK, WAIT, Peer, connect, meet, peers, running, spawn_cli, text_into

KEY = PrivateKey.generate().public_key
OTHER_KEY = PrivateKey.generate().public_key
NOW = 1_800_000_000  # when a status in a pure test is sent, and read
OUR_KEY = PrivateKey.generate().public_key  # the recipient's


# -- the status's text, pure --------------------------------------------------------------------


def test_a_status_names_the_connection_and_carries_the_message() -> None:
    text = encode_status(KEY, OUR_KEY, "at lunch")
    assert text == bytes(KEY).hex() + bytes(OUR_KEY).hex() + "at lunch"
    assert decode_status(text) == (bytes(KEY), bytes(OUR_KEY), "at lunch")
    assert decode_status(encode_status(KEY, OUR_KEY, "")) == (bytes(KEY), bytes(OUR_KEY), "")  # back


@pytest.mark.parametrize(
    "message",
    [
        pytest.param("x" * (MAX_AWAY + 1), id="too-long"),
        pytest.param("a\x1b[2Jb", id="escape"),
        pytest.param("a\nb", id="newline"),
        pytest.param("a\tb", id="tab"),
        pytest.param("evil\u202eright-to-left", id="bidi-override"),
        pytest.param("zero\u200bwidth", id="zero-width"),
        pytest.param(" padded", id="leading-space"),
        pytest.param("padded ", id="trailing-space"),
        pytest.param("\ud800", id="lone-surrogate"),
        pytest.param("lunch”), mallory (verified", id="close-quote"),
        pytest.param("“quoted", id="open-quote"),
    ],
)
def test_an_away_message_is_one_short_printable_line(message: str) -> None:
    assert not is_away_message(message)
    with pytest.raises(ValueError):
        encode_status(KEY, OUR_KEY, message)
    with pytest.raises(ValueError):
        decode_status(bytes(KEY).hex() + bytes(OUR_KEY).hex() + message)
    if message == message.strip(" "):  # (typed, spaces around it are trimmed)
        with pytest.raises(CommandError):
            checked_away(message)


def test_the_longest_away_message_and_unicode_are_fine() -> None:
    for message in ("x" * MAX_AWAY, "déjeuner 🍜", "a b"):
        assert is_away_message(message)
        assert decode_status(encode_status(KEY, OUR_KEY, message))[2] == message
    assert checked_away("  lunch  ") == "lunch"  # as typed: trimmed
    with pytest.raises(CommandError, match=f"at most {MAX_AWAY} characters"):
        checked_away("x" * (MAX_AWAY + 1))


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("", id="empty"),
        pytest.param("ab" * 31, id="key-cut-short"),
        pytest.param("ab" * 32 + "lunch", id="one-key-only"),
        pytest.param("ab" * 32 + "cd" * 31, id="second-key-cut-short"),
        pytest.param("AB" * 32 + "cd" * 32 + "lunch", id="key-in-capitals"),
        pytest.param("ab" * 32 + "zz" * 32 + "lunch", id="second-key-not-hex"),
        pytest.param("lunch", id="no-key"),
    ],
)
def test_a_malformed_status_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        decode_status(text)


# -- what a receiver believes, pure ---------------------------------------------------------------


def test_a_status_sets_and_clears_a_peers_away_message() -> None:
    statuses = TheirStatuses()
    assert statuses.receive("bob", 3, encode_status(KEY, OUR_KEY, "lunch"), KEY, OUR_KEY, NOW, NOW) == Away(
        "bob", "lunch"
    )
    assert statuses.message("bob") == "lunch"
    assert (
        statuses.receive("bob", 4, encode_status(KEY, OUR_KEY, "lunch"), KEY, OUR_KEY, NOW, NOW) is None
    )  # no change
    assert statuses.receive("bob", 5, encode_status(KEY, OUR_KEY, ""), KEY, OUR_KEY, NOW, NOW) == Away(
        "bob", ""
    )
    assert statuses.message("bob") == ""
    assert (
        statuses.receive("bob", 6, encode_status(KEY, OUR_KEY, ""), KEY, OUR_KEY, NOW, NOW) is None
    )  # back already


def test_a_status_older_than_one_taken_is_ignored() -> None:
    statuses = TheirStatuses()
    statuses.receive("bob", 5, encode_status(KEY, OUR_KEY, ""), KEY, OUR_KEY, NOW, NOW)
    # An "away" sent before that "back", delivered after it (held back on the way).
    assert statuses.receive("bob", 4, encode_status(KEY, OUR_KEY, "lunch"), KEY, OUR_KEY, NOW, NOW) is None
    assert statuses.receive("bob", 5, encode_status(KEY, OUR_KEY, "lunch"), KEY, OUR_KEY, NOW, NOW) is None
    assert statuses.message("bob") == ""
    assert statuses.receive("bob", 9, encode_status(KEY, OUR_KEY, "lunch"), KEY, OUR_KEY, NOW, NOW) == Away(
        "bob", "lunch"
    )


def test_a_line_from_a_peer_away_says_they_are_back() -> None:
    statuses = TheirStatuses()
    statuses.receive("bob", 5, encode_status(KEY, OUR_KEY, "lunch"), KEY, OUR_KEY, NOW, NOW)
    assert statuses.spoke("bob", 4) is None  # sent before he went away
    assert statuses.message("bob") == "lunch"
    assert statuses.spoke("bob", 7) == Away("bob", "")  # his "back" (6) was lost
    assert statuses.message("bob") == ""
    assert statuses.spoke("bob", 8) is None  # back already
    # The "away" sent before that line, delivered after it: older than his last word.
    assert statuses.receive("bob", 6, encode_status(KEY, OUR_KEY, "lunch"), KEY, OUR_KEY, NOW, NOW) is None
    assert statuses.message("bob") == ""


def test_a_status_of_another_connection_is_refused_with_one_warning() -> None:
    statuses = TheirStatuses()
    refused = statuses.receive("bob", 1, encode_status(OTHER_KEY, OUR_KEY, "lunch"), KEY, OUR_KEY, NOW, NOW)
    assert isinstance(refused, Refused)
    assert "bob sent an away message naming a session key" in refused.text
    assert bytes(OTHER_KEY).hex()[:16] in refused.text
    # The same key again: ignored, not said again; another key: said.
    assert (
        statuses.receive("bob", 2, encode_status(OTHER_KEY, OUR_KEY, "lunch"), KEY, OUR_KEY, NOW, NOW) is None
    )
    third_key = PrivateKey.generate().public_key
    assert isinstance(
        statuses.receive("bob", 3, encode_status(third_key, OUR_KEY, "x"), KEY, OUR_KEY, NOW, NOW), Refused
    )
    assert statuses.message("bob") == ""


def test_a_status_to_another_connection_of_ours_is_ignored() -> None:
    statuses = TheirStatuses()
    assert statuses.receive("bob", 1, encode_status(KEY, OTHER_KEY, "lunch"), KEY, OUR_KEY, NOW, NOW) is None
    assert statuses.message("bob") == ""


def test_a_status_sent_too_long_ago_is_ignored() -> None:
    statuses = TheirStatuses()
    old = encode_status(KEY, OUR_KEY, "lunch")
    assert statuses.receive("bob", 1, old, KEY, OUR_KEY, NOW - int(MAX_STATUS_AGE) - 1, NOW) is None
    assert statuses.receive("bob", 2, old, KEY, OUR_KEY, None, NOW) is None  # not saying when
    assert statuses.message("bob") == ""
    assert statuses.receive("bob", 3, old, KEY, OUR_KEY, NOW - int(MAX_STATUS_AGE), NOW) == Away(
        "bob", "lunch"
    )
    assert statuses.since("bob") == NOW - MAX_STATUS_AGE


def test_away_since_is_when_it_was_sent_but_not_later_than_now() -> None:
    statuses = TheirStatuses()
    statuses.receive("bob", 1, encode_status(KEY, OUR_KEY, "lunch"), KEY, OUR_KEY, NOW + 3600, NOW)
    assert statuses.since("bob") == NOW  # their clock is fast
    statuses.spoke("bob", 2)
    assert statuses.since("bob") is None


def test_a_peer_gone_is_forgotten() -> None:
    statuses = TheirStatuses()
    statuses.receive("bob", 7, encode_status(KEY, OUR_KEY, "lunch"), KEY, OUR_KEY, NOW, NOW)
    statuses.forget("bob")
    assert statuses.message("bob") == ""
    # Their next connection counts anew (its statuses name its own key).
    assert statuses.receive(
        "bob", 1, encode_status(OTHER_KEY, OUR_KEY, "gone"), OTHER_KEY, OUR_KEY, NOW, NOW
    ) == Away("bob", "gone")


# -- the command, its help, how it looks ------------------------------------------------------------


def test_away_parses_with_or_without_a_message() -> None:
    assert commands.parse("/away  gone fishing ") == commands.SetAway("gone fishing")
    assert commands.parse("/away") == commands.SetAway("")
    assert commands.parse("/AWAY lunch") == commands.SetAway("lunch")
    with pytest.raises(CommandError, match="at most"):
        commands.parse("/away " + "x" * (MAX_AWAY + 1))
    usage, *_, example = commands.help_text("away")
    assert usage == "usage: /away [MESSAGE]" and example.startswith("example: /away ")


def test_who_shows_a_peer_away_and_json_says_away() -> None:
    assert who_entry("bob", Trust.VERIFIED, "at lunch") == "bob (verified, away: “at lunch”)"
    assert who_entry("bob", Trust.VERIFIED) == "bob (verified)"
    at = time.mktime((2026, 12, 7, 12, 58, 30, 0, 0, -1))  # local time
    assert who_entry("bob", Trust.VERIFIED, "at lunch", at) == "bob (verified, away since 12:58: “at lunch”)"
    assert who_entry("bob", Trust.UNVERIFIED, "\u0301x") == "bob (unverified, away: “\\u0301x”)"
    [line] = json_lines(Away("bob", "at lunch"))
    record = json.loads(line)
    assert (record["type"], record["nick"], record["message"], record["ours"]) == (
        "away",
        "bob",
        "at lunch",
        False,
    )


def test_an_away_message_cannot_pass_for_another_entry_in_who() -> None:
    forged = "lunch), mallory (verified"
    entry = who_entry("bob", Trust.UNVERIFIED, forged)
    assert entry == "bob (unverified, away: “lunch), mallory (verified”)"
    # What is between the quotes is the peer's; outside them, only one entry and one mark.
    outside = entry.replace("“" + forged + "”", "")
    assert outside == "bob (unverified, away: )"
    with pytest.raises(CommandError, match="cannot hold"):
        checked_away("lunch”), mallory (verified")


# -- through a real relay -----------------------------------------------------------------------------


async def test_away_reaches_those_online_and_a_line_typed_brings_you_back() -> None:
    async with running(HostileRelay()) as relay, peers(relay, "alice", "bob", "carol") as (alice, bob, carol):
        await meet(alice, bob)  # carol never talked with alice: no session, no status
        lines: list[str] = []
        chat = Chat(alice.connection, text_into(lines))
        chat.handle_line("/away at lunch")
        assert lines[-1].endswith("-- you are away: “at lunch”")
        assert await bob.next(Away) == Away("alice", "at lunch")
        assert bob.connection.core.their_away("alice") == "at lunch"
        seen: list[str] = []
        Chat(bob.connection, text_into(seen)).handle_line("/who")
        since = bob.connection.core.their_away_since("alice")
        assert since is not None and abs(time.time() - since) < WAIT
        at = time.strftime("%H:%M", time.localtime(since))
        assert f"alice (unverified, away since {at}: “at lunch”), carol (unverified)" in seen[-1]
        # Only to bob: carol has no session with alice, and a status starts none.
        [status] = relay.sends_from("alice")[-1:]
        assert [envelope.to for envelope in status.items] == ["bob"] and status.id == 0

        chat.handle_line("/msg bob back now")
        assert lines[-1].endswith("-- you are back")
        assert await bob.next(Away) == Away("alice", "")
        got = await bob.next(MessageReceived)
        assert got.text == "back now"  # the status first: bob sees alice back, then her line
        assert bob.connection.core.their_away("alice") == ""
        assert not any(isinstance(event, Away) for event in carol.seen)


async def test_someone_who_comes_back_online_hears_you_are_away() -> None:
    async with running(HostileRelay()) as relay:
        alice = await connect(relay, "alice")
        bob = await connect(relay, "bob", reconnecting=True)
        await meet(alice, bob)
        alice.connection.set_away("on holiday")
        assert await bob.next(Away) == Away("alice", "on holiday")
        relay.hang_up("bob")
        await alice.next(PeerLeft, lambda e: e.nick == "bob")
        # Back with a new connection: alice's status comes again, for it.
        await alice.next(PeerJoined, lambda e: e.nick == "bob")
        assert await bob.next(Away) == Away("alice", "on holiday")
        await bob.connection.close()
        await alice.connection.close()


async def test_someone_who_enters_a_room_of_yours_hears_you_are_away() -> None:
    """A contact that comes by a room (``entered``), not by coming online, hears it too."""

    def as_entered(relay: HostileRelay, action: Outgoing) -> list[Outgoing]:
        message = action.message
        if isinstance(message, m.PeerJoined) and relay.nick(action.conn) == "alice":
            return [Outgoing(action.conn, m.Entered("#lobby", message.peer))]
        return [action]

    async with running(HostileRelay()) as relay:
        alice = await connect(relay, "alice")
        bob = await connect(relay, "bob", reconnecting=True)
        await meet(alice, bob)
        alice.connection.set_away("on holiday")
        assert await bob.next(Away) == Away("alice", "on holiday")
        relay.tamper = as_entered
        relay.hang_up("bob")
        await alice.next(PeerLeft, lambda e: e.nick == "bob")
        await bob.next(Registered)
        assert await bob.next(Away) == Away("alice", "on holiday")
        await bob.connection.close()
        await alice.connection.close()


async def test_away_outlives_an_automatic_reconnect() -> None:
    """A dropped connection (Wi-Fi, say) does not make alice "here": her client says her
    away message again, under the new connection's keys, once registered."""
    async with running(HostileRelay()) as relay:
        alice = await connect(relay, "alice", reconnecting=True)
        bob = await connect(relay, "bob")
        await meet(alice, bob)
        lines: list[str] = []
        chat = Chat(alice.connection, text_into(lines))
        chat.handle_line("/away lunch")
        assert await bob.next(Away) == Away("alice", "lunch")
        old_key = alice.connection.core.session_key
        relay.hang_up("alice")
        chat.show(await alice.next(ConnectionLost))
        await bob.next(PeerLeft, lambda e: e.nick == "alice")
        assert bob.connection.core.their_away("alice") == ""  # gone, and their status with them
        await alice.next(Registered)
        assert alice.connection.core.session_key != old_key
        assert alice.connection.core.our_away == "lunch"
        assert await bob.next(Away) == Away("alice", "lunch")  # said again, and believed
        assert not any(isinstance(event, SecurityWarning) for event in bob.seen)
        chat.handle_line("/msg bob back now")  # and a line typed still says she is back
        assert await bob.next(Away) == Away("alice", "")
        assert alice.connection.core.our_away == ""
        relay.hang_up("alice")
        await alice.next(Registered)
        await bob.next(PeerJoined, lambda e: e.nick == "alice")
        alice.connection.send_private("bob", "ping")
        await _settle(bob)
        assert [e for e in bob.seen if isinstance(e, Away)] == [Away("alice", "lunch")] * 2 + [
            Away("alice", "")
        ]
        await alice.connection.close()
        await bob.connection.close()


async def test_a_line_typed_while_the_relay_is_away_ends_the_away() -> None:
    async with running(HostileRelay()) as relay:
        alice = await connect(relay, "alice", reconnecting=True)
        bob = await connect(relay, "bob")
        await meet(alice, bob)
        alice.connection.set_away("lunch")
        assert await bob.next(Away) == Away("alice", "lunch")
        relay.hang_up("alice")
        await alice.next(ConnectionLost)
        assert not alice.connection.online
        alice.connection.send_private("bob", "back now")  # held for the next connection
        await alice.next(Registered)
        await bob.next(MessageReceived, lambda e: e.text == "back now")
        assert alice.connection.core.our_away == ""  # not said again: she is back
        assert [e for e in bob.seen if isinstance(e, Away)] == [Away("alice", "lunch")]
        await alice.connection.close()
        await bob.connection.close()


async def test_a_hidden_reconnect_cannot_keep_a_stale_away() -> None:
    """The relay hides from bob that alice's connection ended and a new one began: he
    keeps her old entry and her away message. Her client says it again under her new
    key (which bob's directory does not show: a warning), and her next line clears it."""
    hide = {"on": False}

    def tamper(relay: HostileRelay, action: Outgoing) -> list[Outgoing]:
        message = action.message
        if hide["on"] and relay.nick(action.conn) == "bob":
            if isinstance(message, m.PeerLeft) and message.nick == "alice":
                return []
            if isinstance(message, m.PeerJoined) and message.peer.nick == "alice":
                return []
        return [action]

    async with running(HostileRelay(tamper)) as relay:
        alice = await connect(relay, "alice", reconnecting=True)
        bob = await connect(relay, "bob")
        await meet(alice, bob)
        chat = Chat(alice.connection, text_into([]))
        chat.handle_line("/away lunch")
        assert await bob.next(Away) == Away("alice", "lunch")
        hide["on"] = True
        relay.hang_up("alice")
        await alice.next(Registered)
        assert "naming a session key the directory does not show" in (await bob.next(SecurityWarning)).text
        chat.handle_line("/msg bob hi, I am here")
        assert await bob.next(Away) == Away("alice", "")
        await bob.next(MessageReceived, lambda e: e.text == "hi, I am here")
        assert bob.connection.core.their_away("alice") == ""
        await alice.connection.close()
        await bob.connection.close()


# -- the cores over a fake wire: no receipt, no mailbox --------------------------------------------


def test_a_status_asks_no_receipt_and_a_copy_kept_in_a_mailbox_is_not_shown() -> None:
    wire, _, bob, alice_conn, bob_conn = _two_who_met()
    alice = wire.clients[alice_conn]
    assert alice.set_away("lunch") == ["bob"]
    wire.pump()
    assert wire.take(bob_conn) == [Away("alice", "lunch")]
    assert not _written(wire.clients[bob_conn])  # nothing owed for it: no receipt
    assert alice.settled  # and nothing waits for one
    # bob leaves as alice says she is away for longer: the relay keeps that copy in his
    # mailbox. Then she is back, which nobody online hears (and no mailbox keeps).
    assert alice.set_away("gone home") == ["bob"]
    wire.hang_up(bob_conn)
    wire.pump()
    assert alice.set_away("") == []
    assert not _written(alice)
    bob_conn = bob.connect(wire)
    events = wire.take(bob_conn)
    assert not [e for e in events if isinstance(e, Away | MessageReceived | SecurityWarning)]
    assert wire.clients[bob_conn].their_away("alice") == ""
    assert any(isinstance(message, m.Ack) for message in wire.sent[bob_conn])  # read, and let go


# -- a relay that lies cannot make bob see alice away ------------------------------------------------


class Holder:
    """A tamper that holds back the next deliver from ``sender`` to ``victim`` while
    ``holding`` is set, and keeps every one it passes on (to replay)."""

    def __init__(self, sender: str, victim: str) -> None:
        self.sender, self.victim = sender, victim
        self.holding = False
        self.held: list[m.Deliver] = []
        self.passed: list[m.Deliver] = []

    def __call__(self, relay: HostileRelay, action: Outgoing) -> list[Outgoing]:
        message = action.message
        if not (
            isinstance(message, m.Deliver)
            and message.sender == self.sender
            and relay.nick(action.conn) == self.victim
        ):
            return [action]
        if self.holding:
            self.holding = False
            self.held.append(message)
            return []
        self.passed.append(message)
        return [action]


async def _settle(bob: Peer) -> None:
    """Let what was written reach bob: a message after it, from alice, arrives."""
    await bob.next(MessageReceived, lambda e: e.text == "ping")


async def test_a_replayed_status_is_refused() -> None:
    holder = Holder("alice", "bob")
    async with running(HostileRelay(holder)) as relay, peers(relay, "alice", "bob") as (alice, bob):
        await meet(alice, bob)
        alice.connection.set_away("lunch")
        assert await bob.next(Away) == Away("alice", "lunch")
        old_away = holder.passed[-1]
        alice.connection.set_away("")
        assert await bob.next(Away) == Away("alice", "")
        relay.inject("bob", old_away)  # the old "away", again
        warning = await bob.next(SecurityWarning)
        assert "dropped" in warning.text
        alice.connection.send_private("bob", "ping")
        await _settle(bob)
        assert bob.connection.core.their_away("alice") == ""
        shown = [event for event in bob.seen if isinstance(event, Away)]
        assert shown == [Away("alice", "lunch"), Away("alice", "")]  # the replay: not again


async def test_a_status_held_back_and_delivered_late_is_ignored() -> None:
    holder = Holder("alice", "bob")
    async with running(HostileRelay(holder)) as relay, peers(relay, "alice", "bob") as (alice, bob):
        await meet(alice, bob)
        holder.holding = True
        alice.connection.set_away("lunch")  # held
        alice.connection.set_away("")  # passed: back (no change for bob: he never saw the away)
        alice.connection.send_private("bob", "ping")
        await _settle(bob)
        relay.inject("bob", holder.held[0])  # the "away", late
        alice.connection.send_private("bob", "ping")
        await _settle(bob)
        assert bob.connection.core.their_away("alice") == ""
        assert not any(isinstance(event, Away) for event in bob.seen)


async def test_a_back_held_behind_a_receipt_still_counts() -> None:
    """The relay swaps alice's "back" and the receipt after it: the "back" fills a gap
    when it comes, yet it is newer than every status bob took, and he must believe it."""
    holder = Holder("alice", "bob")
    async with running(HostileRelay(holder)) as relay, peers(relay, "alice", "bob") as (alice, bob):
        await meet(alice, bob)
        alice.connection.set_away("lunch")
        assert await bob.next(Away) == Away("alice", "lunch")
        holder.holding = True
        alice.connection.set_away("")  # held
        bob.connection.send_private("alice", "are you there?")
        await bob.next(DeliveryReport)  # her receipt: after the "back" in her numbering
        relay.inject("bob", holder.held[0])  # the "back", after the receipt
        assert await bob.next(Away) == Away("alice", "")
        assert bob.connection.core.their_away("alice") == ""


async def test_a_line_typed_brings_a_peer_back_even_if_the_back_is_dropped() -> None:
    holder = Holder("alice", "bob")
    async with running(HostileRelay(holder)) as relay, peers(relay, "alice", "bob") as (alice, bob):
        await meet(alice, bob)
        chat = Chat(alice.connection, text_into([]))
        chat.handle_line("/away lunch")
        assert await bob.next(Away) == Away("alice", "lunch")
        holder.holding = True  # the "back" the line sends first: dropped
        chat.handle_line("/msg bob I am back")
        assert await bob.next(Away) == Away("alice", "")
        await bob.next(MessageReceived, lambda e: e.text == "I am back")
        assert holder.held  # (it was the "back" that was dropped)
        chat.handle_line("a line to the room, later")  # says nothing new
        await bob.next(MessageReceived, lambda e: e.text == "a line to the room, later")
        assert [e for e in bob.seen if isinstance(e, Away)] == [Away("alice", "lunch"), Away("alice", "")]


async def test_a_status_held_past_the_senders_reconnect_is_ignored() -> None:
    holder = Holder("alice", "bob")
    async with running(HostileRelay(holder)) as relay:
        alice = await connect(relay, "alice", reconnecting=True)
        bob = await connect(relay, "bob")
        await meet(alice, bob)
        holder.holding = True
        alice.connection.set_away("lunch")  # held, while alice's connection ends
        await asyncio.wait_for(_held(holder), WAIT)
        alice.connection.set_away("")  # (else her next connection says it again, rightly)
        relay.hang_up("alice")
        await bob.next(PeerLeft, lambda e: e.nick == "alice")
        await bob.next(PeerJoined, lambda e: e.nick == "alice")
        await alice.next(Registered)
        relay.inject("bob", holder.held[0])  # in order in the ratchet: but for the old connection
        warning = await bob.next(SecurityWarning)
        assert "alice sent an away message naming a session key the directory does not show" in warning.text
        alice.connection.send_private("bob", "ping")
        await _settle(bob)
        assert bob.connection.core.their_away("alice") == ""
        assert not any(isinstance(event, Away) for event in bob.seen)
        await alice.connection.close()
        await bob.connection.close()


async def test_a_status_held_past_the_recipients_reconnect_is_ignored() -> None:
    """alice goes away and comes back, both withheld from bob; bob reconnects, and the
    relay hands his new connection the old "away": it names his old connection."""
    holder = Holder("alice", "bob")
    async with running(HostileRelay(holder)) as relay:
        alice = await connect(relay, "alice")
        bob = await connect(relay, "bob", reconnecting=True)
        await meet(alice, bob)
        holder.holding = True
        alice.connection.set_away("lunch")  # held
        await asyncio.wait_for(_held(holder), WAIT)
        holder.holding = True
        alice.connection.set_away("")  # dropped
        await asyncio.wait_for(_held(holder, 2), WAIT)
        relay.hang_up("bob")
        await alice.next(PeerJoined, lambda e: e.nick == "bob")
        await bob.next(Registered)
        relay.inject("bob", holder.held[0])  # the old "away", to bob's new connection
        alice.connection.send_private("bob", "ping")
        await _settle(bob)
        assert bob.connection.core.their_away("alice") == ""
        assert not any(isinstance(event, Away) for event in bob.seen)
        await bob.connection.close()
        await alice.connection.close()


async def _held(holder: Holder, count: int = 1) -> None:
    while len(holder.held) < count:
        await asyncio.sleep(0.01)


async def test_a_tampered_status_is_refused() -> None:
    def flip(relay: HostileRelay, action: Outgoing) -> list[Outgoing]:
        message = action.message
        if isinstance(message, m.Deliver) and message.sender == "alice" and flips:
            flips.pop()
            body = flip_bit(message.body, 8 * len(message.body) - 9)
            return [Outgoing(action.conn, m.Deliver("alice", body))]
        return [action]

    flips: list[int] = []
    async with running(HostileRelay(flip)) as relay, peers(relay, "alice", "bob") as (alice, bob):
        await meet(alice, bob)
        flips.append(1)
        alice.connection.set_away("lunch")
        assert "dropped" in (await bob.next(SecurityWarning)).text
        assert bob.connection.core.their_away("alice") == ""


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        pytest.param("lunch\x1b[2J", False, id="control-character"),
        pytest.param("brb”), alice (verified", False, id="close-quote"),
        pytest.param("x" * (MAX_AWAY + 1), False, id="too-long"),
        pytest.param("lunch", True, id="well-formed"),
    ],
)
async def test_a_malformed_status_from_a_peer_is_not_shown(text: str, shown: bool) -> None:
    """A status that authenticates (from someone the relay made up: it holds the keys)
    but breaks the rules is refused all the same, and said to be."""
    async with running(HostileRelay()) as relay, peers(relay, "bob") as (bob,):
        [fake] = made_up_peers(relay, "bob", 1)
        relay.inject("bob", m.PeerJoined(fake.info))
        await bob.next(PeerJoined)
        body = fake.session.encrypt(
            bytes(fake.info.session_key).hex() + bytes(bob.connection.core.session_key).hex() + text,
            Kind.STATUS,
            sent=int(time.time()),
        )
        relay.inject("bob", m.Deliver(fake.nick, body))
        if shown:
            assert await bob.next(Away) == Away(fake.nick, "lunch")
        else:
            assert "malformed away message" in (await bob.next(SecurityWarning)).text
            assert bob.connection.core.their_away(fake.nick) == ""


async def test_away_text_cannot_forge_an_entry_in_who() -> None:
    """The relay makes up a peer (unverified: it holds the keys) whose away message
    reads like a verified entry for alice: /who shows it quoted, as the peer's words."""
    async with running(HostileRelay()) as relay, peers(relay, "alice", "bob") as (_alice, bob):
        [fake] = made_up_peers(relay, "bob", 1)
        relay.inject("bob", m.PeerJoined(fake.info))
        await bob.next(PeerJoined, lambda e: e.nick == fake.nick)
        forged = "brb), alice (verified"
        status = bytes(fake.info.session_key).hex() + bytes(bob.connection.core.session_key).hex() + forged
        relay.inject(
            "bob", m.Deliver(fake.nick, fake.session.encrypt(status, Kind.STATUS, sent=int(time.time())))
        )
        assert await bob.next(Away) == Away(fake.nick, forged)
        seen: list[str] = []
        Chat(bob.connection, text_into(seen)).handle_line("/who")
        at = time.strftime("%H:%M", time.localtime(bob.connection.core.their_away_since(fake.nick)))
        assert f"{fake.nick} (unverified, away since {at}: “brb), alice (verified”)" in seen[-1]
        assert "alice (verified)" not in seen[-1]
        assert seen[-1].endswith(f"alice (unverified), {fake.nick} (unverified, away since {at}: “{forged}”)")


async def test_a_status_under_a_key_not_accepted_is_not_believed() -> None:
    """The relay announces someone under another key than the one pinned (and holds that
    key): what they send is flagged, and their status is not shown at all, since /who has
    no mark to flag it with."""
    known = KnownPeers()
    known.exchanged("fake0", OTHER_KEY)
    async with running(HostileRelay()) as relay:
        bob = await connect(relay, "bob", known_peers=known)
        [fake] = made_up_peers(relay, "bob", 1)
        relay.inject_many("bob", [m.PeerJoined(fake.info), fake.entered()])  # online, in #lobby
        await bob.next(PeerJoined)
        assert bob.connection.core.trust("fake0") is Trust.CHANGED
        status = bytes(fake.info.session_key).hex() + bytes(bob.connection.core.session_key).hex() + "lunch"
        body = fake.session.encrypt(status, Kind.STATUS, sent=int(time.time()))
        relay.inject_many("bob", [m.Deliver("fake0", body), fake.deliver("ping")])
        assert (await bob.next(MessageReceived)).text == "ping"
        assert not any(isinstance(event, Away) for event in bob.seen)
        assert bob.connection.core.their_away("fake0") == ""
        await bob.connection.close()


# -- line mode and the prompt -------------------------------------------------------------------


async def test_line_mode_shows_a_peer_away_in_who_until_they_type() -> None:
    async with running(Relay(LOOPBACK, 0)) as relay, peers(relay, "alice") as (alice,):
        async with spawn_cli(
            "connect", "--nick", "bob", "--host", LOOPBACK, "--port", str(relay.port)
        ) as bob:
            await alice.next(PeerJoined, lambda e: e.nick == "bob")
            bob.stdin.write(b"hello alice\n")
            await alice.next(MessageReceived, lambda e: e.text == "hello alice")
            lines: list[str] = []
            chat = Chat(alice.connection, text_into(lines))
            chat.handle_line("/away at lunch, back at 2")
            assert "-- alice is away: “at lunch, back at 2”" in await bob.line_with("is away")
            bob.stdin.write(b"/who\n")
            assert ": “at lunch, back at 2”)" in await bob.line_with("you are bob")
            chat.handle_line("I am back")
            assert "-- alice is back" in await bob.line_with("alice is")
            assert "<alice ?> I am back" in await bob.line_with("I am back")
            bob.stdin.write(b"/who\n")
            line = await bob.line_with("you are bob")
            assert "alice (unverified)" in line and "away" not in line
            bob.stdin.close()
            assert await bob.exit_code() == 0


async def test_the_prompt_completes_away_and_shows_it_on_the_toolbar() -> None:
    async with running(Relay(LOOPBACK, 0)) as relay, peers(relay, "alice", "bob") as (alice, bob):
        await meet(alice, bob)
        async with repl(alice) as (pipe, screen, _):
            buffer = screen.session.default_buffer
            pipe.send_text("/awa\t")
            await until(lambda: buffer.text == "/away")
            pipe.send_text(" gone fishing\r")
            await screen.wait_for("-- you are away: “gone fishing”")
            assert await bob.next(Away) == Away("alice", "gone fishing")
            await until(lambda: "away" in toolbar_of(screen))
            pipe.send_text("/me is back\r")
            await screen.wait_for("-- you are back")
            assert await bob.next(Away) == Away("alice", "")
            assert "away" not in toolbar_of(screen)
            pipe.send_text("/away\r")  # not away: nothing to say to anyone
            await screen.wait_for("you are not away")
