"""The cluster's pure parts: what relays say to each other (relay/cluster/wire.py) and what
a relay makes of the others' answers (relay/cluster/core.py), without NATS."""

from __future__ import annotations

import dataclasses
import math

import pytest
from nacl.public import PublicKey
from test_cores import UNLIMITED, FakeWire

from e2echat.errors import RemoteProtocolError
from e2echat.relay.actions import Action, Write
from e2echat.relay.cluster.core import ClusterCore, FetchElsewhere, Forward
from e2echat.relay.cluster.wire import (
    check_item,
    decode_claim,
    decode_fetch,
    decode_forward,
    decode_mail,
    decode_mailbox_ask,
    decode_outcome,
    decode_taken,
    encode_claim,
    encode_fetch,
    encode_forward,
    encode_mail,
    encode_mailbox_ask,
    encode_outcome,
    encode_taken,
    new_node_id,
    nick_key,
)
from e2echat.relay.mailboxes import item_frame
from e2echat.relay.routing import Copies
from e2echat.relay.store import EXPIRED, MAIL, MailItem
from e2echat.wire.codec import decode_message
from e2echat.wire.grammar import MAX_BODY, MAX_ID
from e2echat.wire.messages import Bundles, Routed
from e2echat.wire.objects import Bundle, PeerInfo, SignedPrekey

KEY_A = PublicKey(bytes(range(32)))
KEY_B = PublicKey(bytes(range(32, 64)))
SIGNED = SignedPrekey(7, KEY_A, bytes(64))
NODE = "0123456789abcdef"
OTHER = "fedcba9876543210"


def _written(actions: list[Action]) -> object:
    """The one message a ``Write`` of one frame holds, decoded."""
    (action,) = actions
    assert isinstance(action, Write)
    ((conn, frame),) = action.frames
    assert conn == 7
    return decode_message(frame[4:])


def test_a_claim_goes_both_ways_and_names_its_relay() -> None:
    peer = PeerInfo("alice", KEY_A, KEY_B)
    assert decode_claim(encode_claim(NODE, peer)) == (NODE, peer)
    assert len(new_node_id()) == 16 and new_node_id() != new_node_id()


@pytest.mark.parametrize("cut", [0, 5, 16, 17, 20, 60])
def test_a_claim_cut_short_is_refused(cut: int) -> None:
    claim = encode_claim(NODE, PeerInfo("alice", KEY_A, KEY_B))
    with pytest.raises(RemoteProtocolError):
        decode_claim(claim[:cut])
    with pytest.raises(RemoteProtocolError):
        decode_claim(claim + b"x")


def test_nicks_that_look_alike_share_one_key() -> None:
    assert nick_key("Bob") == nick_key("bob")
    assert nick_key("alice") != nick_key("bob")
    assert nick_key(".x").isalnum()  # a key may not start with '.'


def test_forwards_fetches_and_outcomes_go_both_ways() -> None:
    items = [("bob", b"\x00ciphertext"), ("carol", b"")]
    assert decode_forward(encode_forward("alice", items)) == ("alice", items)
    assert decode_fetch(encode_fetch("alice", ["bob", "carol"])) == ("alice", ["bob", "carol"])
    outcome = (["bob"], ["carol"], ["dave"], ["erin"], ["frank"])
    assert decode_outcome(encode_outcome(*outcome)) == outcome


@pytest.mark.parametrize(
    "payload",
    [
        encode_forward("alice", [("bob", b"body")])[:-1],  # cut short
        encode_forward("alice", [("bob", b"body")]) + b"x",  # left over
        encode_fetch("alice", ["bob"]),  # another kind
        b"s\x03a b\x00\x00",  # not a nick
    ],
)
def test_a_forward_that_is_not_one_is_refused(payload: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        decode_forward(payload)


def test_a_relay_answering_for_nicks_it_was_not_asked_about_is_ignored() -> None:
    forward = Forward(7, "alice", 42, Copies(delivered=["dave"]), {OTHER: [("bob", b"b"), ("carol", b"c")]})
    # It claims mallory (not asked) delivered, says nothing of carol.
    routed = _written(forward.routed({OTHER: (["bob", "mallory"], [], [], [], [])}))
    assert isinstance(routed, Routed) and routed.id == 42
    assert sorted(routed.delivered) == ["bob", "dave"]
    assert routed.refused == ("carol",)  # not known to be delivered: not claimed so
    assert "mallory" not in routed.missing + routed.queued + routed.full


def test_copies_for_a_relay_that_did_not_answer_are_reported_not_delivered() -> None:
    forward = Forward(7, "alice", 1, Copies(), {OTHER: [("bob", b"b")], NODE: [("carol", b"c")]})
    routed = _written(forward.routed({OTHER: None, NODE: ([], [], ["carol"], [], [])}))
    assert isinstance(routed, Routed)
    assert routed.delivered == () and routed.refused == ("bob",) and routed.missing == ("carol",)


def test_bundles_from_another_relay_only_for_the_nicks_asked_of_it_once_each() -> None:
    asked = FetchElsewhere(7, "alice", Bundles((), ("zed",)), [], {OTHER: ["bob", "carol"]})
    bob = Bundle("bob", KEY_A, SIGNED, ())
    mallory = Bundle("mallory", KEY_B, SIGNED, ())
    forged = Bundle("bob", KEY_B, SIGNED, ())  # a second bundle for bob
    answer = _written(asked.answered({OTHER: Bundles((bob, mallory, forged), ())}))
    assert isinstance(answer, Bundles)
    assert answer.bundles == (bob,)
    assert sorted(answer.missing) == ["carol", "zed"]
    silent = _written(asked.answered({OTHER: None}))
    assert isinstance(silent, Bundles) and sorted(silent.missing) == ["bob", "carol", "zed"]


def test_a_mailbox_handed_over_goes_both_ways() -> None:
    items = [
        MailItem("dave", 5, MAIL, "alice", 42, 1.5, b"\x00ciphertext"),
        MailItem("dave", 6, EXPIRED, "bob", 7, 2.5, reason="expired"),
    ]
    assert decode_mail(encode_mail(items, True), "dave") == (items, True)
    assert decode_mailbox_ask(encode_mailbox_ask("dave", bytes(KEY_A))) == ("dave", bytes(KEY_A))
    assert decode_taken(encode_taken("dave", 6)) == ("dave", 6)
    with pytest.raises(RemoteProtocolError):
        decode_mail(encode_mail(items, False)[:-1], "dave")
    with pytest.raises(RemoteProtocolError):
        decode_taken(encode_mailbox_ask("dave", bytes(KEY_A)))


_GOOD = MailItem("dave", 5, MAIL, "alice", 42, 1.5, b"ciphertext")
_NOTICE = MailItem("dave", 6, EXPIRED, "bob", 7, 2.5, reason="expired")


@pytest.mark.parametrize(
    "bad",
    [
        dataclasses.replace(_NOTICE, reason="bogus"),
        dataclasses.replace(_NOTICE, body=b"x"),
        dataclasses.replace(_GOOD, reason="expired"),
        dataclasses.replace(_GOOD, body=bytes(MAX_BODY + 1)),
        dataclasses.replace(_GOOD, queued_at=math.nan),
        dataclasses.replace(_GOOD, queued_at=math.inf),
        dataclasses.replace(_GOOD, queued_at=-1.0),
        dataclasses.replace(_GOOD, queued_at=2.0**40),
        dataclasses.replace(_GOOD, message_id=MAX_ID + 1),
        dataclasses.replace(_GOOD, seq=MAX_ID + 1),
    ],
)
def test_a_mailbox_item_outside_the_client_grammar_is_left_out_and_the_rest_kept(bad: MailItem) -> None:
    # Each would make ``item_frame`` raise in the mailbox it reached, at every tick.
    with pytest.raises(RemoteProtocolError):
        check_item(bad)
    assert decode_mail(encode_mail([_GOOD, bad, _NOTICE], True), "dave") == ([_GOOD, _NOTICE], True)
    assert item_frame(_GOOD) and item_frame(_NOTICE)  # the ones kept can be framed


@pytest.mark.parametrize(
    "bad",
    [
        dataclasses.replace(_GOOD, sender="no one"),
        dataclasses.replace(_GOOD, to=""),
        dataclasses.replace(_GOOD, kind="other"),
    ],
)
def test_an_item_no_decode_makes_is_refused_too(bad: MailItem) -> None:
    # ``decode_mail`` refuses these as framing; ``take_over``'s guard must too.
    with pytest.raises(RemoteProtocolError):
        check_item(bad)


def test_a_bad_item_taken_over_is_dropped_and_the_relay_keeps_ticking() -> None:
    # As if it came by another way than ``decode_mail``: the core's guard alone.
    core = ClusterCore(UNLIMITED, node=new_node_id())
    wire = FakeWire(relay=core)
    conn = wire.connect("dave")
    wire.apply(core.claimed(conn, None, wire.now))
    wire.pump()
    bad = dataclasses.replace(_NOTICE, seq=7, reason="bogus")
    actions, upto = core.take_over("dave", [_GOOD, bad, dataclasses.replace(_NOTICE, seq=8)])
    wire.apply(actions)
    assert upto == 8
    kept = core.kept.mailboxes.items("dave")
    assert [(item.kind, item.reason) for item in kept] == [(MAIL, ""), (EXPIRED, "expired")]
    for later in (1.0, 100.0, 10_000.0):
        core.tick(wire.now + later)  # raised at every tick while the bad item was kept
