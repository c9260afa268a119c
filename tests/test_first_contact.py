"""First contact over a real relay: the copy waits, a ``fetch`` asks for the recipient's
prekey bundle, X3DH starts the session, the copy goes. And what a relay that lies about
bundles gets: each attack is mounted through the hostile relay (tests/hostile.py) and
fails the test if it works; where an attack could fail for a reason the test does not
mean, a control shows the same steps succeed with the relay honest.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest
from nacl.public import PrivateKey

from e2echat.client.core import (
    DeliveryReport,
    MessageReceived,
    PeerJoined,
    Registered,
    SecurityWarning,
    SendReport,
)
from e2echat.client.events import ConnectionLost, Disconnected
from e2echat.client.outbox import BAD_BUNDLE, NO_PREKEYS
from e2echat.client.receipts import TIMED_OUT
from e2echat.crypto.prekeys import ONE_TIME_BATCH
from e2echat.crypto.session import PREKEY_MESSAGE
from e2echat.crypto.x3dh import signed_prekey_message
from e2echat.crypto.xeddsa import xeddsa_sign
from e2echat.wire import messages as m
from e2echat.wire.objects import Bundle, OneTimePrekey, SignedPrekey

from hostile import BundleTamper, HostileRelay, same_one_time_prekey
from relay_frames import Outgoing
from support import Peer, connect, peers, running

# Where a first message says whether it used a one-time prekey: type (1), identity key
# (32), base key (32), signed prekey id (4).
HAS_ONE_TIME_AT = 1 + 32 + 32 + 4
# Copies the relay lets die get no receipt: reported this soon, not after 15 s.
SHORT = 1.0


def sent_to(relay: HostileRelay, sender: str, recipient: str) -> list[bytes]:
    """Every body ``sender`` has sent ``recipient`` through the relay, in order."""
    return [e.body for send in relay.sends_from(sender) for e in send.items if e.to == recipient]


def fetches(relay: HostileRelay) -> list[m.Fetch]:
    return [message for _, message in relay.received if isinstance(message, m.Fetch)]


def warnings(peer: Peer) -> list[SecurityWarning]:
    return [e for e in peer.seen if isinstance(e, SecurityWarning)]


# -- first contact, online --------------------------------------------------------------------


@pytest.mark.parametrize("private", [False, True], ids=["room", "msg"])
async def test_first_contact_right_after_a_join_is_delivered_and_receipted(private: bool) -> None:
    """alice writes bob the moment she hears he joined: her copy waits for his bundle,
    which he published with his registration, and reaches him; his receipt comes back."""
    async with running(HostileRelay()) as relay, peers(relay, "alice") as (alice,):
        bob = await connect(relay, "bob")
        await alice.next(PeerJoined, lambda e: e.nick == "bob")
        if private:
            message_id = alice.connection.send_private("bob", "hello bob")
        else:
            message_id = alice.connection.send_room("#lobby", "hello bob")
        got = await bob.next(MessageReceived)
        assert (got.sender, got.text, got.private) == ("alice", "hello bob", private)
        report = await alice.next(DeliveryReport)
        assert (report.message_id, report.delivered, report.failed) == (message_id, ("bob",), ())
        assert [f.nicks for f in fetches(relay)] == [("bob",)]
        (body,) = sent_to(relay, "alice", "bob")
        assert body[0] == PREKEY_MESSAGE and body[HAS_ONE_TIME_AT] == 1  # X3DH with a one-time prekey
        assert not warnings(alice) and not warnings(bob)
        await bob.connection.close()


async def test_a_message_after_one_waiting_for_a_bundle_waits_behind_it() -> None:
    """alice's first message to bob waits for his bundle; meanwhile bob starts a session
    with her, so she could send in it at once. Her second message still waits behind the
    first: bob reads them in the order she wrote them (not "second" first, unflagged)."""
    held: list[m.Message] = []

    def hold_alices_bundles(relay: HostileRelay, action: Outgoing) -> list[Outgoing]:
        if isinstance(action.message, m.Bundles) and relay.nick(action.conn) == "alice" and not held:
            held.append(action.message)  # a slow answer, as a busy relay may give
            return []
        return [action]

    async with (
        running(HostileRelay(hold_alices_bundles)) as relay,
        peers(relay, "alice", "bob") as (alice, bob),
    ):
        alice.connection.send_private("bob", "first")
        bob.connection.send_private("alice", "hello alice")  # his session with her: X3DH
        await alice.next(MessageReceived, lambda e: e.sender == "bob")
        assert held  # her fetch was answered before his message reached her
        alice.connection.send_private("bob", "second")
        relay.inject_many("alice", held)
        assert [(await bob.next(MessageReceived)).text for _ in range(2)] == ["first", "second"]
        assert not warnings(alice) and not warnings(bob)


# -- the relay substitutes what a bundle holds ----------------------------------------------------


def _rewrite_bobs(rewrite: Callable[[Bundle], Bundle]) -> BundleTamper:
    def tamper(answer: m.Bundles) -> m.Bundles:
        bundles = tuple(rewrite(b) if b.nick == "bob" else b for b in answer.bundles)
        return dataclasses.replace(answer, bundles=bundles)

    return tamper


def _signed_by(identity: PrivateKey, prekey_id: int) -> SignedPrekey:
    """A signed prekey the holder of ``identity`` made and signed."""
    key = PrivateKey.generate().public_key
    return SignedPrekey(prekey_id, key, xeddsa_sign(identity, signed_prekey_message(prekey_id, key)))


MALLORY = PrivateKey.generate()  # the relay's own identity
SUBSTITUTIONS: dict[str, Callable[[Bundle], Bundle]] = {
    # A signed prekey of its own under bob's signature, and under its own (with bob's id).
    "signed-prekey": lambda b: dataclasses.replace(
        b, signed_prekey=dataclasses.replace(b.signed_prekey, key=PrivateKey.generate().public_key)
    ),
    "signed-prekey-signed-by-the-relay": lambda b: dataclasses.replace(
        b, signed_prekey=_signed_by(MALLORY, b.signed_prekey.id)
    ),
    # A whole bundle of its own: another identity key, its signed prekey, its one-time one.
    "whole-bundle": lambda b: dataclasses.replace(
        b,
        identity_key=MALLORY.public_key,
        signed_prekey=_signed_by(MALLORY, b.signed_prekey.id),
        one_time=(OneTimePrekey(1, PrivateKey.generate().public_key),),
    ),
}


@pytest.mark.parametrize("attack", ["honest", *SUBSTITUTIONS])
async def test_a_substituted_bundle_is_refused_loudly_and_nothing_goes_under_it(attack: str) -> None:
    """alice writes the room (bob and carol), whom she has no session with; the relay
    rewrites bob's bundle. alice is warned, the relay named by its address; nothing is
    sent to bob, whose copy is reported NOT delivered; carol's copy, from an honest
    bundle, is delivered. Control ("honest"): both are delivered."""
    hostile = HostileRelay()
    if attack != "honest":
        hostile.bundle_tamper = _rewrite_bobs(SUBSTITUTIONS[attack])
    async with running(hostile) as relay, peers(relay, "alice", "bob", "carol") as (alice, bob, carol):
        message_id = alice.connection.send_room("#lobby", "for the room")
        assert (await carol.next(MessageReceived)).text == "for the room"
        report = await alice.next(DeliveryReport)
        assert report.message_id == message_id
        if attack == "honest":
            assert sorted(report.delivered) == ["bob", "carol"] and report.failed == ()
            assert (await bob.next(MessageReceived)).text == "for the room"
            assert not warnings(alice)
            return
        assert report.delivered == ("carol",) and report.failed == (("bob", BAD_BUNDLE),)
        (warning,) = warnings(alice)
        assert warning.text.startswith(
            f"the relay 127.0.0.1:{relay.port} gave keys for bob that are not theirs"
        )
        assert "nothing was sent to bob" in warning.text
        assert sent_to(relay, "alice", "bob") == []
        assert sent_to(relay, "alice", "carol") != []
        assert not [e for e in bob.seen if isinstance(e, MessageReceived)]
        assert not alice.connection.core.keyring.peers["bob"].can_send  # nothing half made


async def test_a_substituted_one_time_prekey_is_read_by_no_one_and_the_next_message_starts_afresh() -> None:
    """One-time prekeys are not signed (X3DH's design), so alice cannot tell that the
    relay gave her one of its own for bob: her first message goes. bob cannot read it and
    says so; the relay, holding the prekey's private half but none of bob's keys, cannot
    either (the session key needs bob's signed prekey). alice hears no receipt: the copy
    is reported NOT delivered, and her next message starts a new session, delivered."""
    relay_prekey = PrivateKey.generate()
    substitute = _rewrite_bobs(
        lambda b: dataclasses.replace(b, one_time=(OneTimePrekey(b.one_time[0].id, relay_prekey.public_key),))
    )
    async with running(HostileRelay()) as relay:
        relay.bundle_tamper = substitute
        bob = await connect(relay, "bob")
        alice = await connect(relay, "alice", receipt_timeout=SHORT)
        alice.connection.send_private("bob", "under a prekey the relay made")
        warning = await bob.next_delivery()
        assert isinstance(warning, SecurityWarning) and "alice" in warning.text
        report = await alice.next(DeliveryReport)
        assert report.failed == (("bob", TIMED_OUT),)
        relay.bundle_tamper = None
        alice.connection.send_private("bob", "a new session")
        assert await bob.next_delivery() == MessageReceived("alice", "a new session", private=True)
        assert (await alice.next(DeliveryReport)).delivered == ("bob",)
        first, second = sent_to(relay, "alice", "bob")
        assert first[1 + 32 : 1 + 64] != second[1 + 32 : 1 + 64]  # another base key: a new X3DH
        assert len(fetches(relay)) == 2
        await bob.connection.close()
        await alice.connection.close()


# -- one-time prekeys handed out twice, or not at all -------------------------------------------


def _again_once(owner: str) -> BundleTamper:
    """``same_one_time_prekey``, but only for the next bundle: then the relay is honest."""
    repeat = same_one_time_prekey(owner)
    handed: list[int] = []

    def tamper(answer: m.Bundles) -> m.Bundles:
        if len(handed) >= 2 or not any(b.nick == owner for b in answer.bundles):
            return answer
        handed.append(1)
        return repeat(answer)

    return tamper


async def test_a_one_time_prekey_handed_out_twice_serves_the_first_then_a_new_session() -> None:
    """The relay gives alice and then carol the same one-time prekey of bob's. alice's
    first message is read; carol's cannot be (bob deleted that prekey at first use), so
    no receipt comes: her copy is reported NOT delivered after a short timeout, and her
    next message starts a new session, which bob reads."""
    async with running(HostileRelay()) as relay:
        relay.bundle_tamper = _again_once("bob")
        bob = await connect(relay, "bob")
        alice = await connect(relay, "alice")
        carol = await connect(relay, "carol", receipt_timeout=SHORT)
        alice.connection.send_private("bob", "first to use it")
        assert await bob.next_delivery() == MessageReceived("alice", "first to use it", private=True)
        assert (await alice.next(DeliveryReport)).delivered == ("bob",)

        carol.connection.send_private("bob", "second to use it")
        refused = await bob.next_delivery()
        assert isinstance(refused, SecurityWarning) and "used already" in refused.text
        report = await carol.next(DeliveryReport)
        assert (report.delivered, report.failed) == ((), (("bob", TIMED_OUT),))

        carol.connection.send_private("bob", "in a new session")
        assert await bob.next_delivery() == MessageReceived("carol", "in a new session", private=True)
        assert (await carol.next(DeliveryReport)).delivered == ("bob",)
        for peer in (bob, alice, carol):
            await peer.connection.close()


async def test_no_one_time_prekey_falls_back_to_the_signed_prekey_and_replays_are_refused() -> None:
    """The relay hands out bob's bundle without a one-time prekey (it has none left, or
    keeps them back): X3DH runs on the signed prekey alone, the message is read, and a
    replay of that first message, which no deleted one-time prekey guards, is refused
    all the same."""
    strip = _rewrite_bobs(lambda b: dataclasses.replace(b, one_time=()))
    async with running(HostileRelay()) as relay:
        relay.bundle_tamper = strip
        async with peers(relay, "alice", "bob") as (alice, bob):
            alice.connection.send_private("bob", "signed prekey only")
            assert await bob.next_delivery() == MessageReceived("alice", "signed prekey only", private=True)
            assert (await alice.next(DeliveryReport)).delivered == ("bob",)
            (first,) = sent_to(relay, "alice", "bob")
            assert first[0] == PREKEY_MESSAGE and first[HAS_ONE_TIME_AT] == 0
            relay.inject("bob", m.Deliver("alice", first))
            replayed = await bob.next_delivery()
            assert isinstance(replayed, SecurityWarning) and "replay" in replayed.text
            alice.connection.send_private("bob", "and on")
            assert await bob.next_delivery() == MessageReceived("alice", "and on", private=True)


# -- an answer to a question not asked --------------------------------------------------------------


def _carols_bundle(carol: Peer) -> Bundle:
    keyring = carol.connection.core.keyring
    signed = keyring.prekeys.current
    key = SignedPrekey(signed.prekey_id, signed.private.public_key, signed.signature)
    return Bundle("carol", keyring.identity.public_key, key, ())


UNASKED: dict[str, tuple[Callable[[m.Bundles, Peer], m.Bundles], str]] = {
    "a-bundle-not-asked-for": (
        lambda answer, carol: dataclasses.replace(answer, bundles=(*answer.bundles, _carols_bundle(carol))),
        "relay answered for carol, whom we did not ask about",
    ),
    "one-nick-answered-twice": (
        lambda answer, carol: dataclasses.replace(answer, bundles=answer.bundles * 2),
        "relay answered for bob, whom we did not ask about",
    ),
    "a-nick-not-asked-about-missing": (
        lambda answer, carol: dataclasses.replace(answer, missing=(*answer.missing, "carol")),
        "relay answered for carol, whom we did not ask about",
    ),
}


@pytest.mark.parametrize("unasked", UNASKED)
async def test_an_answer_to_a_fetch_not_made_is_a_protocol_error_reported_and_survived(unasked: str) -> None:
    """The relay answers alice's fetch for bob with more than she asked: a bundle for
    carol too, bob's twice, or carol said to have none. That is a protocol error: alice's
    client hangs up, says why, reports the message it was sending as not confirmed,
    reconnects, and goes on; nothing crashes, and the others are not disturbed."""
    rewrite, why = UNASKED[unasked]
    async with running(HostileRelay()) as relay, peers(relay, "bob", "carol") as (bob, carol):
        alice = await connect(relay, "alice", reconnecting=True)
        relay.bundle_tamper = lambda answer: rewrite(answer, carol)
        message_id = alice.connection.send_private("bob", "are you there?")
        report = await alice.next(DeliveryReport)  # reported as the connection ends
        assert (report.message_id, report.delivered, [nick for nick, _ in report.failed]) == (
            message_id,
            (),
            ["bob"],
        )
        lost = await alice.next(ConnectionLost)
        assert lost.detail == f"it broke the protocol (protocol error: {why})"
        relay.bundle_tamper = None
        await alice.next(Registered)  # back
        alice.connection.send_private("bob", "back again")
        assert (await bob.next(MessageReceived)).text == "back again"
        assert not [e for e in bob.seen + carol.seen if isinstance(e, SecurityWarning)]
        await alice.connection.close()


# -- a protocol error later in the same read ------------------------------------------------------


async def test_a_report_settled_in_a_read_a_later_frame_breaks_still_comes() -> None:
    """The relay answers alice's fetch for bob with "bob has no prekeys" and, in the same
    write, answers for bob again, which she did not ask. The second frame breaks the
    protocol and ends the connection, but the first has settled her message: it is
    reported NOT delivered (no prekeys) before the connection is said to be gone, or it
    would be reported neither way (the tracker has nothing left to abandon)."""
    no_prekeys = m.Bundles((), ("bob",))

    # Both go in one write (the relay writes what it has for a connection once per turn
    # of its loop), so alice's client reads them in one batch.
    def answer_twice(relay: HostileRelay, action: Outgoing) -> list[Outgoing]:
        if isinstance(action.message, m.Bundles) and relay.nick(action.conn) == "alice":
            return [Outgoing(action.conn, no_prekeys), Outgoing(action.conn, no_prekeys)]
        return [action]

    async with running(HostileRelay(answer_twice)) as relay, peers(relay, "alice", "bob") as (alice, _):
        message_id = alice.connection.send_private("bob", "are you there?")
        lost = await alice.next(Disconnected)
        assert (
            lost.detail
            == "it broke the protocol (protocol error: relay answered for bob, whom we did not ask about)"
        )
        reports = [e for e in alice.seen if isinstance(e, SendReport | DeliveryReport)]
        assert reports == [
            SendReport(message_id, True, (), ("bob",)),
            DeliveryReport(message_id, True, (), (("bob", NO_PREKEYS),), "are you there?"),
        ]


async def test_a_message_read_before_a_later_frame_breaks_the_protocol_is_shown() -> None:
    """bob's message reaches alice in the same write as an answer she never asked for.
    Her client decrypts the message (its session moves on, and is saved so) before the
    second frame ends the connection: the message must be shown, or it is lost for good
    (it cannot be decrypted a second time)."""

    def and_then_unasked(relay: HostileRelay, action: Outgoing) -> list[Outgoing]:
        if isinstance(action.message, m.Deliver) and relay.nick(action.conn) == "alice":
            return [action, Outgoing(action.conn, m.Bundles((), ("carol",)))]
        return [action]

    async with running(HostileRelay(and_then_unasked)) as relay, peers(relay, "alice", "bob") as (alice, bob):
        bob.connection.send_private("alice", "read me before you go")
        lost = await alice.next(Disconnected)
        assert "relay answered for carol" in lost.detail
        received = [e for e in alice.seen if isinstance(e, MessageReceived)]
        assert received == [MessageReceived("bob", "read me before you go", private=True)]


# -- replenishment -------------------------------------------------------------------------------


async def test_thirty_first_contacts_leave_bob_with_one_time_prekeys_all_along() -> None:
    """30 people write bob for the first time, one after another: each bundle the relay
    hands out has a one-time prekey of bob's, because bob publishes a new batch each time
    the relay says he runs low; the relay never runs out."""
    handed: list[Bundle] = []

    def record(answer: m.Bundles) -> m.Bundles:
        handed.extend(answer.bundles)
        return answer

    many = HostileRelay(connect_rate=1e6, connect_burst=1e6)  # 31 connections from one address
    async with running(many) as relay, peers(relay, "bob") as (bob,):
        relay.bundle_tamper = record
        held = [relay.core.prekeys.count("bob")]
        for index in range(30):
            writer = await connect(relay, f"writer{index}")
            writer.connection.send_private("bob", f"hello from writer {index}")
            assert (await writer.next(SendReport)).delivered == ("bob",)  # bob's receipt may wait a second
            await writer.connection.close()
            held.append(relay.core.prekeys.count("bob"))
        assert [b.nick for b in handed] == ["bob"] * 30
        assert all(len(b.one_time) == 1 for b in handed)
        assert len({b.one_time[0].id for b in handed}) == 30  # each handed out once
        assert min(held) > 0 and held[0] == ONE_TIME_BATCH
        publishes = [
            msg for conn, msg in relay.received if isinstance(msg, m.Publish) and relay.nick(conn) == "bob"
        ]
        assert len(publishes) >= 2  # the first batch, then at least one more
        texts = {e.text for e in bob.seen if isinstance(e, MessageReceived)}
        while len(texts) < 30:
            texts.add((await bob.next(MessageReceived)).text)
        assert not warnings(bob)


async def test_a_crowd_writing_a_newcomer_at_once_is_read_in_full() -> None:
    """48 people write bob for the first time at the same moment: the relay hands out
    his one-time prekeys faster than his publishes of new ones arrive. Every first
    message is read, with no warning. (Before, the relay told bob he ran low after every
    prekey it handed out below the mark; he published a batch for each notice, went over
    the number of one-time keys he keeps, and threw away the oldest: the very ones the
    relay had just handed out, so those first messages could not be read.)"""
    many = HostileRelay(connect_rate=1e6, connect_burst=1e6)  # 49 connections from one address
    async with running(many) as relay, peers(relay, "bob") as (bob,):
        writers = [await connect(relay, f"w{index}") for index in range(48)]
        for writer in writers:
            writer.connection.send_private("bob", f"hello from {writer.nick}")
        texts: set[str] = set()
        while len(texts) < len(writers):
            event = await bob.next_delivery()
            assert isinstance(event, MessageReceived), event
            texts.add(event.text)
        assert not warnings(bob)
        for writer in writers:
            await writer.connection.close()
