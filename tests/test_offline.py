"""Offline delivery, the client's side, with the relay's mailbox frames made by hand: what
is sent to someone away, what the relay's answers become, and the mail read on return.
(The same through a real relay with a mailbox is in test_mailbox_e2e.py.)"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from nacl.public import PrivateKey
from test_cores import UNLIMITED, FakeWire

from e2echat.client.core import ClientCore, KeyPinned, MessagesMissing, SecurityWarning
from e2echat.client.events import (
    DeliveryReport,
    MailboxRead,
    MailReceived,
    MessageQueued,
    PeerJoined,
    PeerLeft,
)
from e2echat.client.outbox import NOT_PINNED_KEY
from e2echat.client.pending import PendingDeliveries, lifetime
from e2echat.client.publishing import signed_prekey
from e2echat.client.receipts import (
    EXPIRED_REASONS,
    MAILBOX_FULL,
    NO_WORD,
    RELAY_RESTARTED,
    TOO_MANY_WAITING,
)
from e2echat.client.rooms import MAX_MEMBERS
from e2echat.client.trust import KnownPeers, Trust
from e2echat.crypto.keyring import Keyring
from e2echat.crypto.session import Kind
from e2echat.crypto.x3dh import PrekeyBundle
from e2echat.errors import CommandError, RemoteProtocolError
from e2echat.relay.core import ConnId, RelayCore
from e2echat.wire import grammar
from e2echat.wire import messages as m
from e2echat.wire.codec import decode_message, encode_message
from e2echat.wire.framing import FrameDecoder, encode_frame
from e2echat.wire.objects import Bundle, Member, PeerInfo

NOW = 1_700_000_000.0


def _frame(message: m.Message) -> bytes:
    return encode_frame(encode_message(message))


_SOME_KEY = PrivateKey.generate().public_key


def _away(*nicks: str, more: bool = False, online: tuple[PeerInfo, ...] = ()) -> m.Members:
    """#lobby's members away (and ``online``): the whole list, as the relay gives it."""
    return m.Members("#lobby", online, tuple(Member(nick, _SOME_KEY) for nick in nicks), more)


def _written(core: ClientCore) -> list[m.Message]:
    """What ``core`` would write to the relay now, decoded (and so not written)."""
    return [decode_message(frame) for frame in FrameDecoder().receive_data(core.data_to_send())]


def _envelope(written: list[m.Message], to: str) -> tuple[int, bytes]:
    (found,) = [(s.id, e.body) for s in written if isinstance(s, m.Send) for e in s.items if e.to == to]
    return found


class Profile:
    """What a client keeps between runs: identity, pins, sessions, waiting copies."""

    def __init__(self, nick: str) -> None:
        self.nick = nick
        self.identity = PrivateKey.generate()
        self.known_peers = KnownPeers()
        self.keyring = Keyring.fresh(nick, self.identity, NOW)
        self.pending = PendingDeliveries()
        #: the sessions file's rows, as last saved
        self.saved: dict[str, bytes] = self.keyring.rows()
        self.keyring.changes()

    def connect(self, wire: FakeWire, **options: Any) -> ConnId:
        """A run of the client: everything comes back from the rows saved by the last."""
        for source in (self.keyring, self.pending):
            for name, value in source.changes().items():
                if value is None:
                    self.saved.pop(name, None)
                else:
                    self.saved[name] = value
        self.keyring = Keyring.from_rows(self.nick, self.identity, self.saved, NOW)
        self.pending = PendingDeliveries.from_rows(self.saved)
        return wire.connect(
            self.nick,
            self.identity,
            known_peers=self.known_peers,
            keyring=self.keyring,
            pending=self.pending,
            **options,
        )


def _two_who_met(wire: FakeWire | None = None) -> tuple[FakeWire, Profile, Profile, ConnId, ConnId]:
    wire = wire or FakeWire()
    alice, bob = Profile("alice"), Profile("bob")
    alice_conn, bob_conn = alice.connect(wire), bob.connect(wire)
    wire.meet(alice_conn, bob_conn)
    wire.take_all()
    return wire, alice, bob, alice_conn, bob_conn


def _mail(seq: int, sender: str, body: bytes) -> bytes:
    return _frame(m.Mail(seq, sender, NOW, body))


def test_a_message_to_someone_away_is_queued_then_delivered_after_both_restarted() -> None:
    wire, alice, bob, alice_conn, bob_conn = _two_who_met()
    wire.hang_up(bob_conn)
    core = wire.clients[alice_conn]
    message_id = core.send_private("bob", "see you tomorrow")
    _, body = _envelope(_written(core), "bob")  # in the session kept with bob: no fetch
    wire.deliver(alice_conn, _frame(m.Routed(message_id, (), queued=("bob",))))
    events = wire.take(alice_conn, receipts=True)
    assert MessageQueued(message_id, True, ("bob",), "see you tomorrow") in events
    assert not [e for e in events if isinstance(e, DeliveryReport) and (e.delivered or e.failed)]
    assert core.settled  # nothing for the connection to wait for: no receipt timeout
    # Both restart; bob reads his mail.
    wire.hang_up(alice_conn)
    alice_conn, bob_conn = alice.connect(wire), bob.connect(wire)
    wire.take_all()
    wire.deliver(bob_conn, _mail(7, "alice", body))
    (shown,) = [e for e in wire.take(bob_conn) if isinstance(e, MailReceived)]
    assert (shown.sender, shown.text, shown.private) == ("alice", "see you tomorrow", True)
    assert shown.sent_at is not None and shown.trust is Trust.UNVERIFIED
    written = _written(wire.clients[bob_conn])
    assert m.Ack(7) in written
    # The receipt reaches the restarted alice, who reports the message delivered.
    wire.to_relay(bob_conn, b"".join(_frame(msg) for msg in written if not isinstance(msg, m.Ack)))
    reports = [e for e in wire.take(alice_conn, receipts=True) if isinstance(e, DeliveryReport)]
    assert reports == [DeliveryReport(message_id, True, ("bob",), (), "see you tomorrow")]
    assert not alice.pending


def test_mail_again_is_shown_once_quietly_and_gaps_and_late_ones_as_ever() -> None:
    wire, _, bob, alice_conn, bob_conn = _two_who_met()
    wire.hang_up(bob_conn)
    core = wire.clients[alice_conn]
    bodies = []
    for text in ("one", "two", "three"):
        core.send_private("bob", text)
        bodies.append(_envelope(_written(core), "bob")[1])
    bob_conn = bob.connect(wire)
    wire.take_all()
    one, two, three = bodies
    # All in one read: the relay sends "one" twice, then "three", then "two".
    items = [(1, one), (2, one), (3, three), (4, two)]
    wire.deliver(bob_conn, b"".join(_mail(seq, "alice", body) for seq, body in items))
    events = wire.take(bob_conn)
    assert not [e for e in events if isinstance(e, SecurityWarning)]
    shown = [(e.text, e.late) for e in events if isinstance(e, MailReceived)]
    assert shown == [("one", False), ("three", False), ("two", True)]
    assert MessagesMissing("alice", 1) in events
    acks = [msg for msg in _written(wire.clients[bob_conn]) if isinstance(msg, m.Ack)]
    assert acks == [m.Ack(4)]  # one for the read, not one an item
    # Sent again after a reconnect (not acknowledged in time): nothing shown twice.
    wire.deliver(bob_conn, _mail(1, "alice", one))
    assert not [e for e in wire.take(bob_conn) if isinstance(e, MailReceived | SecurityWarning)]


def _bundle(profile: Profile) -> Bundle:
    return Bundle(profile.nick, profile.identity.public_key, signed_prekey(profile.keyring.prekeys), ())


def test_first_contact_with_someone_away_goes_through_their_bundle_both_ways() -> None:
    """carol never met dave, who is away: her message waits for his bundle (the relay
    keeps it while he is away), pins his key, and is queued; dave, back, reads it from
    carol, away in her turn, pins her key and owes her a receipt, sent to her mailbox."""
    wire = FakeWire()
    carol, dave = Profile("carol"), Profile("dave")
    carol_conn = carol.connect(wire)
    wire.take_all()
    core = wire.clients[carol_conn]
    message_id = core.send_private("dave", "hello stranger")
    written = _written(core)
    assert m.Fetch(("dave",)) in written and not [msg for msg in written if isinstance(msg, m.Send)]
    wire.deliver(carol_conn, _frame(m.Bundles((_bundle(dave),), ())))
    assert KeyPinned("dave") in wire.take(carol_conn, pins=True)
    assert carol.known_peers.get("dave") is not None
    sent_id, body = _envelope(_written(core), "dave")
    assert sent_id == message_id
    wire.deliver(carol_conn, _frame(m.Routed(message_id, (), queued=("dave",))))
    assert len(carol.pending) == 1
    wire.hang_up(carol_conn)
    dave_conn = dave.connect(wire)
    wire.take_all()
    wire.deliver(dave_conn, _mail(1, "carol", body))
    events = wire.take(dave_conn, pins=True)
    assert KeyPinned("carol") in events
    (shown,) = [e for e in events if isinstance(e, MailReceived)]
    assert shown.text == "hello stranger"
    receipts = [msg for msg in _written(wire.clients[dave_conn]) if isinstance(msg, m.Send)]
    assert [envelope.to for send in receipts for envelope in send.items] == ["carol"]


def test_a_bundle_for_someone_away_under_another_key_than_pinned_is_not_used() -> None:
    wire, alice, _, alice_conn, bob_conn = _two_who_met()
    wire.hang_up(bob_conn)
    alice.keyring.forget("bob")  # no session kept: the bundle is needed, the pin stays
    core = wire.clients[alice_conn]
    message_id = core.send_private("bob", "is it you?")
    impostor = Profile("bob")
    wire.deliver(alice_conn, _frame(m.Bundles((_bundle(impostor),), ())))
    reports = [e for e in wire.take(alice_conn, receipts=True) if isinstance(e, DeliveryReport)]
    assert reports == [DeliveryReport(message_id, True, (), (("bob", NOT_PINNED_KEY),), "is it you?")]
    assert not [msg for msg in _written(core) if isinstance(msg, m.Send)]


def test_mail_under_another_key_than_pinned_is_shown_flagged_and_confirms_nothing() -> None:
    wire, _, bob, alice_conn, bob_conn = _two_who_met()
    wire.hang_up(bob_conn)
    wire.hang_up(alice_conn)
    # Someone else, as "alice", makes first contact with bob through his bundle.
    impostor = Keyring.fresh("alice", PrivateKey.generate(), NOW)
    session = impostor.peer("bob", bob.identity.public_key)
    bundle = _bundle(bob)
    session.start(
        PrekeyBundle(
            bundle.identity_key,
            bundle.signed_prekey.key,
            bundle.signed_prekey.id,
            bundle.signed_prekey.signature,
        )
    )
    body = session.encrypt("it's me, alice", Kind.PRIVATE)
    bob_conn = bob.connect(wire)
    wire.take_all()
    wire.deliver(bob_conn, _mail(1, "alice", body))
    events = wire.take(bob_conn, pins=True)
    (shown,) = [e for e in events if isinstance(e, MailReceived)]
    assert shown.trust is Trust.CHANGED and not [e for e in events if isinstance(e, KeyPinned)]
    assert not [msg for msg in _written(wire.clients[bob_conn]) if isinstance(msg, m.Send)]


def test_full_mailbox_and_expired_and_evicted_are_each_reported_not_delivered() -> None:
    wire, alice, _, alice_conn, bob_conn = _two_who_met()
    wire.hang_up(bob_conn)
    core = wire.clients[alice_conn]
    full_id = core.send_private("bob", "no room")
    later_id = core.send_private("bob", "too late")
    gone_id = core.send_private("bob", "wrong key")
    forgotten_id = core.send_private("bob", "forgotten")
    core.data_to_send()
    wire.deliver(alice_conn, _frame(m.Routed(full_id, (), full=("bob",))))
    for message_id in (later_id, gone_id, forgotten_id):
        wire.deliver(alice_conn, _frame(m.Routed(message_id, (), queued=("bob",))))
    reports = [e for e in wire.take(alice_conn, receipts=True) if isinstance(e, DeliveryReport)]
    assert DeliveryReport(full_id, True, (), (("bob", MAILBOX_FULL),), "no room") in reports
    # A restart later, the relay says what became of the other two; and of one it never had.
    wire.hang_up(alice_conn)
    alice_conn = alice.connect(wire)
    wire.take_all()
    notices = [
        m.Expired(3, later_id, "bob", "expired"),
        m.Expired(4, gone_id, "bob", "key_changed"),
        m.Expired(5, forgotten_id, "bob", "evicted"),
        m.Expired(6, 999, "bob", "expired"),
    ]
    wire.deliver(alice_conn, b"".join(_frame(n) for n in notices))
    reports = [e for e in wire.take(alice_conn, receipts=True) if isinstance(e, DeliveryReport)]
    assert reports == [
        DeliveryReport(later_id, True, (), (("bob", EXPIRED_REASONS["expired"]),), "too late"),
        DeliveryReport(gone_id, True, (), (("bob", EXPIRED_REASONS["key_changed"]),), "wrong key"),
        DeliveryReport(forgotten_id, True, (), (("bob", EXPIRED_REASONS["evicted"]),), "forgotten"),
    ]
    assert EXPIRED_REASONS["evicted"] == "the relay forgot them before they read it"
    assert set(EXPIRED_REASONS) == set(grammar.EXPIRED_REASONS)  # each told in words
    assert [msg for msg in _written(wire.clients[alice_conn]) if isinstance(msg, m.Ack)] == [m.Ack(6)]
    assert not alice.pending


def test_a_room_message_goes_to_members_away_too() -> None:
    wire, _, _, alice_conn, bob_conn = _two_who_met()
    carol_conn = wire.connect("carol")
    wire.take_all()
    wire.hang_up(bob_conn)
    core = wire.clients[alice_conn]
    # (bob under his own key: a copy goes only to the key the room lists.)
    bob = Member("bob", core.keyring.peers["bob"].identity_key)
    members = _away("erin", online=(core.directory["carol"],))
    wire.deliver(alice_conn, _frame(dataclasses.replace(members, away=(bob, *members.away))))
    message_id = core.send_room("#lobby", "hello all")
    written = _written(core)
    # bob in the session kept with him; carol (online) and erin (away), never met: their
    # bundles first.
    assert {e.to for s in written if isinstance(s, m.Send) for e in s.items} == {"bob"}
    assert m.Fetch(("carol", "erin")) in written
    wire.deliver(alice_conn, _frame(m.Routed(message_id, ("carol",), queued=("bob",))))
    events = wire.take(alice_conn, receipts=True)
    assert MessageQueued(message_id, False, ("bob",), "hello all") in events
    del carol_conn


def test_ids_go_on_from_where_they_were_after_a_restart() -> None:
    wire, alice, _, alice_conn, _ = _two_who_met()
    first = wire.clients[alice_conn].send_private("bob", "before")
    wire.hang_up(alice_conn)
    alice_conn = alice.connect(wire)
    assert wire.clients[alice_conn].send_private("bob", "after") > first


def test_nothing_goes_to_someone_away_in_a_session_under_a_key_no_longer_pinned() -> None:
    """alice accepted a new key for bob (he came back with one, then left again): the
    session kept with him is under the old key, and nothing goes in it, neither a private
    message nor a room message's copy."""
    wire, alice, _, alice_conn, bob_conn = _two_who_met()
    wire.hang_up(bob_conn)
    alice.known_peers.accept("bob", PrivateKey.generate().public_key)
    core = wire.clients[alice_conn]
    with pytest.raises(CommandError, match="not under the key pinned"):
        core.send_private("bob", "secret")
    wire.connect("carol")
    wire.take_all()
    core.send_room("#lobby", "hello all")
    assert core.left_out == ["bob"]
    assert "bob" not in {e.to for s in _written(core) if isinstance(s, m.Send) for e in s.items}


def test_with_held_acknowledgements_mail_is_acknowledged_only_when_the_ui_says_so() -> None:
    wire, _, bob, alice_conn, bob_conn = _two_who_met()
    wire.hang_up(bob_conn)
    core = wire.clients[alice_conn]
    core.send_private("bob", "keep me")
    _, body = _envelope(_written(core), "bob")
    bob_conn = wire.connect(
        "bob",
        bob.identity,
        known_peers=bob.known_peers,
        keyring=bob.keyring,
        pending=bob.pending,
        hold_acks=True,
    )
    wire.take_all()
    wire.deliver(bob_conn, _mail(9, "alice", body))
    events = wire.take(bob_conn)
    assert isinstance(events[-2], MailReceived) and events[-1] == MailboxRead(9)  # after what it covers
    bob_core = wire.clients[bob_conn]
    assert not [msg for msg in _written(bob_core) if isinstance(msg, m.Ack)]
    bob_core.acknowledge(10)  # more than was read: not for this connection to say
    bob_core.acknowledge(9)
    bob_core.acknowledge(9)  # once is enough
    assert [msg for msg in _written(bob_core) if isinstance(msg, m.Ack)] == [m.Ack(9)]


def test_an_endless_away_list_is_a_protocol_error() -> None:
    wire = FakeWire()
    alice = wire.connect("alice")
    wire.take_all()
    with pytest.raises(RemoteProtocolError, match="members of #lobby"):
        for part in range(MAX_MEMBERS // 10_000 + 1):
            nicks = tuple(f"n{part}x{number}" for number in range(10_000))
            wire.clients[alice].receive_data(_frame(_away(*nicks, more=True)))


def test_a_relay_that_says_it_keeps_copies_not_yet_sent_is_not_believed() -> None:
    """Two room messages to erin (away, never met) wait for her bundle, unnumbered; a lying
    relay answers ``queued`` for both at once, then expires both: nothing is kept for
    copies never sent, and the notices find nothing to crash on."""
    wire, alice, _, alice_conn, bob_conn = _two_who_met()
    wire.hang_up(bob_conn)
    wire.take_all()
    core = wire.clients[alice_conn]
    bob = Member("bob", core.keyring.peers["bob"].identity_key)  # (a copy goes to the room's key only)
    members = _away("erin")
    wire.deliver(alice_conn, _frame(dataclasses.replace(members, away=(bob, *members.away))))
    first, second = core.send_room("#lobby", "first to erin"), core.send_room("#lobby", "second to erin")
    core.data_to_send()
    for message_id in (first, second):
        wire.deliver(alice_conn, _frame(m.Routed(message_id, (), queued=("bob", "erin"))))
    assert {(copy.message_id, copy.nick) for copy in alice.pending} == {(first, "bob"), (second, "bob")}
    expired = [m.Expired(1, first, "erin", "expired"), m.Expired(2, second, "erin", "expired")]
    wire.deliver(alice_conn, b"".join(_frame(notice) for notice in expired))
    assert not [e for e in wire.take(alice_conn, receipts=True) if isinstance(e, DeliveryReport) and e.failed]


def test_a_copy_forgotten_beyond_the_limit_is_reported_not_delivered() -> None:
    wire, alice, _, alice_conn, bob_conn = _two_who_met()
    wire.hang_up(bob_conn)
    core = wire.clients[alice_conn]
    alice.pending.limit = 1  # stands for MAX_PENDING
    ids = []
    for text in ("important one", "second"):
        ids.append(core.send_private("bob", text))
        core.data_to_send()
        wire.deliver(alice_conn, _frame(m.Routed(ids[-1], (), queued=("bob",))))
    reports = [e for e in wire.take(alice_conn, receipts=True) if isinstance(e, DeliveryReport) and e.failed]
    assert reports == [DeliveryReport(ids[0], True, (), (("bob", TOO_MANY_WAITING),), "important one")]
    assert [copy.message_id for copy in alice.pending] == [ids[1]]


def test_a_copy_no_word_of_comes_within_the_relays_time_to_live_is_reported_not_delivered() -> None:
    """The relay (its welcome says it keeps mail 100 s) dropped the copy, and its notice
    was lost (expired too, or the relay restarted): after the copy's lifetime, alice is
    told, not left with 'queued' for good."""
    relay = RelayCore(dataclasses.replace(UNLIMITED, mailbox_ttl=100.0))
    wire, alice, _, alice_conn, bob_conn = _two_who_met(FakeWire(relay=relay))
    wire.hang_up(bob_conn)
    wire.hang_up(alice_conn)
    clock = [NOW]
    alice_conn = alice.connect(wire, wall_clock=lambda: clock[0])
    wire.take_all()
    core = wire.clients[alice_conn]
    message_id = core.send_private("bob", "will expire unseen")
    wire.pump()
    assert [e for e in wire.take(alice_conn, receipts=True) if isinstance(e, MessageQueued)]
    assert lifetime(100.0) == 300.0
    clock[0] += 250.0
    assert not [e for e in core.tick() if isinstance(e, DeliveryReport)]
    clock[0] += 60.0  # past the lifetime, and a minute after the last look
    reports = [e for e in core.tick() if isinstance(e, DeliveryReport)]
    assert reports == [DeliveryReport(message_id, True, (), (("bob", NO_WORD),), "will expire unseen")]
    assert not alice.pending


def test_copies_kept_by_a_relay_that_restarted_without_them_are_reported_not_delivered() -> None:
    wire, alice, _, alice_conn, bob_conn = _two_who_met()
    wire.hang_up(bob_conn)
    core = wire.clients[alice_conn]
    message_id = core.send_private("bob", "lost with the relay")
    wire.pump()
    assert [copy.message_id for copy in alice.pending] == [message_id]
    wire.hang_up(alice_conn)
    alice_conn = alice.connect(wire)  # the same relay, the same mailboxes: still waiting
    assert not [e for e in wire.take(alice_conn, receipts=True) if isinstance(e, DeliveryReport)]
    wire.hang_up(alice_conn)
    restarted = FakeWire()  # at the same address, kept in memory: its mailboxes are new
    alice_conn = alice.connect(restarted)
    reports = [e for e in restarted.take(alice_conn, receipts=True) if isinstance(e, DeliveryReport)]
    assert reports == [
        DeliveryReport(message_id, True, (), (("bob", RELAY_RESTARTED),), "lost with the relay")
    ]
    assert not alice.pending


def test_the_receipts_owed_go_before_the_ack_that_lets_the_relay_forget_the_mail() -> None:
    wire, _, bob, alice_conn, bob_conn = _two_who_met()
    wire.hang_up(bob_conn)
    core = wire.clients[alice_conn]
    bodies = []
    for text in ("w1", "w2"):
        core.send_private("bob", text)
        bodies.append(_envelope(_written(core), "bob")[1])
    bob_conn = bob.connect(wire, hold_acks=True)
    wire.take_all()
    bob_core = wire.clients[bob_conn]
    for seq, body in enumerate(bodies, 1):  # two reads, within a receipt interval
        (read,) = [e for e in bob_core.receive_data(_mail(seq, "alice", body)) if isinstance(e, MailboxRead)]
        bob_core.acknowledge(read.seq)
        written = _written(bob_core)
        assert isinstance(written[-1], m.Ack) and isinstance(written[-2], m.Send), written


def test_a_copy_sent_for_a_line_typed_earlier_is_reported_under_its_id_after_a_restart() -> None:
    """A line typed in an outage (id 5) goes out later as another message: the copy kept
    in bob's mailbox says which id to report under, in the profile, across the restart."""
    wire, alice, bob, alice_conn, bob_conn = _two_who_met()
    wire.hang_up(bob_conn)
    core = wire.clients[alice_conn]
    part = core.send_private("bob", "typed offline", report_as=5)
    _, body = _envelope(_written(core), "bob")
    wire.deliver(alice_conn, _frame(m.Routed(part, (), queued=("bob",))))
    wire.hang_up(alice_conn)
    alice_conn, bob_conn = alice.connect(wire), bob.connect(wire)
    wire.take_all()
    wire.deliver(bob_conn, _mail(1, "alice", body))
    written = _written(wire.clients[bob_conn])
    wire.to_relay(bob_conn, b"".join(_frame(msg) for msg in written if not isinstance(msg, m.Ack)))
    reports = [e for e in wire.take(alice_conn, receipts=True) if isinstance(e, DeliveryReport)]
    assert reports == [DeliveryReport(5, True, ("bob",), (), "typed offline")]


def test_a_members_list_or_an_entered_adds_the_contacts_it_names_and_a_parted_drops_them() -> None:
    wire = FakeWire()
    alice_conn = wire.connect("alice")
    wire.take_all()
    core = wire.clients[alice_conn]
    bob = PeerInfo("bob", PrivateKey.generate().public_key, PrivateKey.generate().public_key)
    carol = PeerInfo("carol", PrivateKey.generate().public_key, PrivateKey.generate().public_key)
    wire.deliver(alice_conn, _frame(m.Members("#lobby", (bob,), (Member("erin", _SOME_KEY),))))
    assert core.peers == ["bob"] and core.away == ["erin"]
    wire.deliver(alice_conn, _frame(m.Entered("#lobby", carol)))
    wire.deliver(alice_conn, _frame(m.Entered("#lobby", carol)))  # once is enough
    assert core.peers == ["bob", "carol"]
    wire.deliver(alice_conn, _frame(m.Parted("#lobby", "carol")))
    assert core.peers == ["bob"]  # no room shared any more: no contact
    # A contact, not someone who came online; nor one who went offline.
    assert not [event for event in wire.take(alice_conn) if isinstance(event, PeerJoined | PeerLeft)]
    # A room we are not in: nothing of it is taken.
    wire.deliver(alice_conn, _frame(m.Members("#ops", (carol,), ())))
    assert core.peers == ["bob"]
