"""One tracker follows each message we send from the send to its two reports: the relay's
word (``SendReport``) and the recipients' (``DeliveryReport``). Pure, time passed in."""

from __future__ import annotations

from e2echat.client.receipts import (
    LEFT,
    NOT_KNOWN,
    REFUSED,
    TIMED_OUT,
    UNNUMBERED,
    DeliveryReport,
    DeliveryTracker,
    SendReport,
)


def _tracker_with_one_message() -> DeliveryTracker:
    tracker = DeliveryTracker(timeout=10.0)
    tracker.sent(7, False, {"bob": 3, "carol": 5}, now=100.0, preview="hello")
    assert not tracker.settled and tracker.unconfirmed == 1 and set(tracker.awaiting_relay) == {7}
    return tracker


def test_a_message_ends_with_one_report_of_each_kind() -> None:
    tracker = _tracker_with_one_message()
    assert tracker.routed(7, ("bob",), (), ()) == []  # the relay answers in parts (split frames)
    assert tracker.routed(7, ("carol",), (), ()) == [SendReport(7, False, ("bob", "carol"), ())]
    assert tracker.awaiting_relay == {} and not tracker.settled
    assert tracker.acknowledged("bob", [3]) == []
    assert tracker.acknowledged("carol", [5]) == [DeliveryReport(7, False, ("bob", "carol"), (), "hello")]
    assert tracker.settled
    assert tracker.acknowledged("carol", [5]) == []  # a receipt cannot confirm twice
    assert tracker.routed(7, ("bob", "carol"), (), ()) == []  # nor the relay answer twice


def test_receipts_before_the_relays_answer_leave_the_message_open_for_it() -> None:
    tracker = _tracker_with_one_message()
    assert tracker.acknowledged("bob", [3, 99]) == []  # 99: nothing of ours
    assert len(tracker.acknowledged("carol", [5])) == 1
    assert tracker.unconfirmed == 0 and not tracker.settled  # the relay has yet to answer
    assert tracker.routed(7, ("bob", "carol"), (), ()) == [SendReport(7, False, ("bob", "carol"), ())]
    assert tracker.settled


def test_the_relays_refusals_end_both_strands_in_order() -> None:
    tracker = _tracker_with_one_message()
    assert tracker.routed(7, (), ("bob",), ("carol",)) == [
        SendReport(7, False, (), ("bob", "carol")),
        DeliveryReport(7, False, (), (("bob", NOT_KNOWN), ("carol", REFUSED)), "hello"),
    ]
    assert tracker.settled


def test_departures_and_timeouts_settle_copies_but_not_the_relays_answer() -> None:
    tracker = _tracker_with_one_message()
    assert tracker.peer_left("bob") == []
    assert tracker.expire(now=109.0) == []
    assert tracker.expire(now=110.0) == [
        DeliveryReport(7, False, (), (("bob", LEFT), ("carol", TIMED_OUT)), "hello")
    ]
    assert not tracker.settled and set(tracker.awaiting_relay) == {7}
    assert tracker.routed(7, ("bob", "carol"), (), ()) == [SendReport(7, False, ("bob", "carol"), ())]
    assert tracker.settled


def test_a_lost_connection_fails_every_open_copy_and_expects_no_answer() -> None:
    tracker = _tracker_with_one_message()
    tracker.sent(8, True, {"bob": 4}, now=101.0)
    tracker.acknowledged("bob", [3])
    assert tracker.abandon("gone") == [
        DeliveryReport(7, False, ("bob",), (("carol", "gone"),), "hello"),
        DeliveryReport(8, True, (), (("bob", "gone"),), ""),
    ]
    assert tracker.settled


def test_a_copy_sent_unnumbered_is_matched_by_the_number_it_gets() -> None:
    tracker = DeliveryTracker(timeout=10.0)
    tracker.sent(7, False, {"bob": 3, "away": UNNUMBERED}, now=100.0)
    tracker.sent(8, False, {"away": UNNUMBERED}, now=100.0)
    assert ("away", UNNUMBERED) not in tracker._by_copy  # nothing is ever acknowledged by it
    tracker.numbered(8, "away", 0)
    tracker.numbered(7, "away", 1)
    assert tracker.acknowledged("away", [1]) == [] and tracker._by_copy == {("bob", 3): 7, ("away", 0): 8}
