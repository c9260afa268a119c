"""A line typed while the relay is away reaches everyone it was meant for, or its sender
is told, by name, who did not get it. Real relays (stopped, and started again on the same
port), real clients."""

from __future__ import annotations

import time
from collections.abc import Collection
from typing import Any

from ledger import Ledger
from nacl.public import PrivateKey

from e2echat.client.core import MessageReceived, Registered, RelayClosing
from e2echat.client.events import ClientEvent, ConnectionLost, Queued
from e2echat.client.held import KEY_CHANGED, HeldLines
from e2echat.client.receipts import DeliveryReport, DeliveryTracker, MessageQueued, SendReport
from e2echat.client.reconnect import Client
from e2echat.client.trust import KnownPeers
from e2echat.crypto.keyring import Keyring
from e2echat.errors import LocalProtocolError
from e2echat.relay.server import Relay
from e2echat.wire import messages as m

from hostile import HostileRelay, deliveries
from relay_frames import Outgoing
from support import LOOPBACK, Peer, connect, peers, running

#: nick -> what their profile keeps (identity and sessions), as ``connect`` takes it
Profiles = dict[str, dict[str, Any]]


async def _alice_bob_and_carol_then_an_outage(**alice_options: object) -> tuple[Peer, Relay, Profiles]:
    """alice (who reconnects), bob and carol online together; then the relay goes away
    and alice types a room line. Returns alice, the relay as it will be again (on its
    port, with its key), and bob's and carol's profiles, to come back with."""
    profiles: Profiles = {}
    for nick in ("bob", "carol"):
        identity = PrivateKey.generate()
        profiles[nick] = {"identity": identity, "keyring": Keyring.fresh(nick, identity, time.time())}
    first = Relay(LOOPBACK, 0)
    async with running(first):
        port = first.port
        # alice's pins outlive her connections, as her profile's do.
        alice = await connect(first, "alice", None, KnownPeers(), reconnecting=True, **alice_options)
        others = [await connect(first, nick, **profiles[nick]) for nick in ("bob", "carol")]
        while set(alice.connection.core.peers) != {"bob", "carol"}:
            await alice.next_any_event()
        alice.connection.send_room("#lobby", "hello both")  # a first exchange pins their keys
        assert set((await alice.next(DeliveryReport)).delivered) == {"bob", "carol"}
    for other in others:
        await other.connection.close()
    await alice.next(ConnectionLost)
    alice.connection.send_room("#lobby", "typed in the outage")
    await alice.next(Queued)
    return alice, Relay(LOOPBACK, port, key=first.core.key), profiles


async def test_a_line_typed_in_an_outage_reaches_a_member_back_later_than_its_sender() -> None:
    """alice is back first and her line goes to bob; carol is back a moment later and gets
    it too. alice hears once, for both."""
    alice, again, profiles = await _alice_bob_and_carol_then_an_outage(grace=0.5)
    async with running(again) as second:
        await alice.next(Registered)
        bob = await connect(second, "bob", **profiles["bob"])
        assert (await bob.next(MessageReceived)).text == "typed in the outage"
        carol = await connect(second, "carol", **profiles["carol"])
        assert (await carol.next(MessageReceived)).text == "typed in the outage"
        report = await alice.next(DeliveryReport)
        assert sorted(report.delivered) == ["bob", "carol"] and report.failed == ()
        assert report.preview == "typed in the outage"
        for peer in (alice, bob, carol):
            await peer.connection.close()


async def test_a_member_not_back_within_the_grace_period_is_reported_by_name() -> None:
    alice, again, profiles = await _alice_bob_and_carol_then_an_outage(grace=0.5)
    async with running(again) as second:
        await alice.next(Registered)
        bob = await connect(second, "bob", **profiles["bob"])
        assert (await bob.next(MessageReceived)).text == "typed in the outage"
        report = await alice.next(DeliveryReport)  # carol never comes back
        assert report.delivered == ("bob",)
        assert [nick for nick, _ in report.failed] == ["carol"]
        assert "not back" in report.failed[0][1]
        for peer in (alice, bob):
            await peer.connection.close()


async def test_a_member_back_with_a_changed_key_is_reported_not_sent_the_line() -> None:
    """Nothing goes to a changed key until it is accepted: not a held line either, and
    its sender is told so."""
    alice, again, profiles = await _alice_bob_and_carol_then_an_outage(grace=0.5)
    async with running(again) as second:
        await alice.next(Registered)
        bob = await connect(second, "bob", **profiles["bob"])
        impostor = await connect(second, "carol")  # another identity key under carol's name
        assert (await bob.next(MessageReceived)).text == "typed in the outage"
        report = await alice.next(DeliveryReport)
        assert report.delivered == ("bob",) and report.failed == (("carol", KEY_CHANGED),)
        for peer in (alice, bob, impostor):
            await peer.connection.close()


async def test_a_line_typed_after_the_relays_goodbye_is_held_not_refused() -> None:
    """Between the relay's goodbye and the end of the connection, what is typed waits for
    the next connection, as it would a moment later."""
    async with running(HostileRelay()) as relay, peers(relay, "bob"):
        alice = await connect(relay, "alice", reconnecting=True)
        relay.inject("alice", m.Bye("restarting"))  # ... and it does not hang up yet
        await alice.next(RelayClosing)
        alice.connection.send_room("#lobby", "typed after the goodbye")
        assert (await alice.next(Queued)).preview == "typed after the goodbye"
        await alice.connection.close()


async def test_after_the_relays_goodbye_what_is_unconfirmed_is_waited_for_then_reported() -> None:
    """The relay has said goodbye but not hung up: a message still unconfirmed is not
    taken as settled; giving up reports it NOT delivered, by name."""

    def drop(relay: HostileRelay, action: Outgoing, deliver: m.Deliver) -> list[Outgoing]:
        return []  # bob never gets it, so no receipt ever comes

    async with running(HostileRelay(deliveries(drop))) as relay, peers(relay, "bob"):
        alice = await connect(relay, "alice", reconnecting=True)
        alice.connection.send_room("#lobby", "are you there?")
        await alice.next(SendReport)  # the relay answered for it
        relay.inject("alice", m.Bye("restarting"))  # ... and it does not hang up yet
        await alice.next(RelayClosing)
        assert not await alice.connection.wait_settled(0.3)
        alice.connection.give_up("we left")
        report = await alice.next(DeliveryReport)
        assert report.failed and [nick for nick, _ in report.failed] == ["bob"]
        await alice.connection.close()


async def test_pins_outlive_a_reconnect_when_none_were_given() -> None:
    """A Client made without pins keeps one set for all its connections: a key pinned
    before an outage is still pinned after it, so a change across it is caught."""
    client = Client(LOOPBACK, 1, "alice", PrivateKey.generate())
    assert client._make().core.known_peers is client._make().core.known_peers


class _BrokenSender:
    """A link whose sending fails with an error other than a refusal (a bug, say)."""

    def __init__(self) -> None:
        self.left_out: list[str] = []

    def send_room(
        self, room: str, text: str, only: Collection[str] | None = None, *, report_as: int = 0
    ) -> int:
        raise LocalProtocolError(detail="something broke")

    def send_private(self, nick: str, text: str, *, report_as: int = 0) -> int:
        raise LocalProtocolError(detail="something broke")


def test_a_held_line_that_fails_to_send_for_any_reason_is_reported() -> None:
    held = HeldLines()
    held.hold(1, None, "hello", ["bob"])
    events = held.release(_BrokenSender(), ["bob"], final=True)
    reports = [event for event in events if isinstance(event, DeliveryReport)]
    assert [report.failed for report in reports] == [(("bob", "internal error: something broke"),)]
    assert not held.waiting


class _Sender:
    """A link that sends everything, each part under the next id, and notes what went."""

    def __init__(self) -> None:
        self.left_out: list[str] = []
        self.sent: list[tuple[str | None, frozenset[str] | None, int]] = []
        #: the id each part's copies kept in mailboxes are to be reported under
        self.report_as: list[int] = []
        self._ids = iter(range(100, 200))

    def send_room(
        self, room: str, text: str, only: Collection[str] | None = None, *, report_as: int = 0
    ) -> int:
        self.sent.append((None, None if only is None else frozenset(only), part := next(self._ids)))
        self.report_as.append(report_as)
        return part

    def send_private(self, nick: str, text: str, *, report_as: int = 0) -> int:
        self.sent.append((nick, frozenset({nick}), part := next(self._ids)))
        self.report_as.append(report_as)
        return part


def test_a_held_private_line_to_someone_away_goes_to_their_mailbox_at_once() -> None:
    """After the reconnect, a held /msg to a member away is sent as any /msg to them is
    (the relay keeps it in their mailbox), not reported NOT back; its reports, the late
    one too, come under the line's id."""
    held, sender = HeldLines(), _Sender()
    held.hold(7, "bob", "see you", [])
    assert held.release(sender, [], final=False, away=["bob"]) == []
    assert sender.sent == [("bob", frozenset({"bob"}), 100)]
    assert held.settle(MessageQueued(100, True, ("bob",), "see you")) == [
        MessageQueued(7, True, ("bob",), "see you")
    ]
    assert held.settle(DeliveryReport(100, True, (), (), "see you", ("bob",))) == [
        DeliveryReport(7, True, (), (), "see you", ("bob",))
    ]
    assert not held.waiting
    # Days later (after restarts, perhaps), bob's receipt: the copy kept went with the
    # line's id to report under, so its report is under that id already, passed on as is.
    assert sender.report_as == [7]
    assert held.settle(DeliveryReport(7, True, ("bob",), (), "see you")) is None


def test_a_held_room_line_goes_to_members_away_as_a_fresh_one_does() -> None:
    """Meant for the room as last seen, members away included; sent to whoever is online
    or away once the relay is back; whoever is neither is reported when the grace ends."""
    held, sender = HeldLines(), _Sender()
    held.hold(8, None, "hi all", ["bob", "dave"], ["carol"])
    assert held.release(sender, ["bob"], final=False, away=["carol"]) == []
    assert sender.sent == [(None, frozenset({"bob", "carol"}), 100)]
    held.settle(MessageQueued(100, False, ("carol",)))
    assert held.settle(DeliveryReport(100, False, ("bob",), (), "hi all", ("carol",))) == []
    (report,) = held.release(sender, ["bob"], final=True, away=["carol"])
    assert isinstance(report, DeliveryReport)
    assert (report.message_id, report.delivered, report.queued) == (8, ("bob",), ("carol",))
    assert [nick for nick, _ in report.failed] == ["dave"]


def test_a_mailbox_receipt_overtaking_a_held_parts_own_report_is_told_once() -> None:
    """bob reads his copy of a held line's part from his mailbox before alice confirms
    hers: his late report comes before the part's own. It is bob's alone, not the part's:
    alice is not reported NOT delivered ("no secure session") and then delivered too
    (chaos seed 651660273)."""
    held, sender, tracker = HeldLines(), _Sender(), DeliveryTracker()
    held.hold(7, None, "hi all", ["alice"], ["bob"])
    assert held.release(sender, ["alice"], final=False, away=["bob"]) == []
    ((_, _, part),) = sender.sent
    tracker.sent(part, False, {"alice": 1, "bob": 1}, 0.0, "hi all", report_as=sender.report_as[0])
    events: list[ClientEvent] = []
    for report in [
        *tracker.routed(part, ("alice",), (), (), ("bob",)),
        *tracker.acknowledged("bob", [1]),  # first: his late report
        *tracker.acknowledged("alice", [1]),  # then the part's own
    ]:
        settled = held.settle(report)
        events += [report] if settled is None else settled  # None: the caller passes it on
    assert events == [
        MessageQueued(7, False, ("bob",), "hi all"),
        DeliveryReport(7, False, ("bob",), (), "hi all"),
        DeliveryReport(7, False, ("alice",), (), "hi all", ("bob",)),
    ]
    assert not held.waiting
    ledger = Ledger()
    ledger.sent("carol", 7, "hi all", {"alice", "bob"}, private=False)
    for nick in ("alice", "bob"):
        ledger.record(nick, MessageReceived("carol", "hi all", False))
    for event in events:
        ledger.record("carol", event)
    assert ledger.problems() == []
