"""``MessageReceived`` is a named tuple, not a dataclass (one is made per message
received), made through ``received`` in the client's own path: it must behave as the
frozen dataclass it replaced would."""

from __future__ import annotations

import dataclasses
import json

import pytest

from e2echat.client.events import MailReceived, MessageReceived, received
from e2echat.client.trust import Trust
from e2echat.ui.render import event_record


@dataclasses.dataclass(frozen=True)
class Generated:
    """MessageReceived's fields, as the dataclass it was."""

    sender: str
    text: str
    private: bool
    trust: Trust = Trust.UNVERIFIED
    late: bool = False
    sent_at: float | None = dataclasses.field(default=None, compare=False)
    room: str = dataclasses.field(default="", compare=False)


CASES = [
    ("alice", "hi", False),
    ("bob", "", True, Trust.VERIFIED),
    ("carol", "x", False, Trust.CHANGED, True, 1.5),
]


@pytest.mark.parametrize("args", CASES)
def test_message_received_has_the_fields_the_dataclass_had(args: tuple[object, ...]) -> None:
    ours, generated = MessageReceived(*args), Generated(*args)  # type: ignore[arg-type]
    assert ours._asdict() == dataclasses.asdict(generated)
    assert repr(ours) == repr(generated).replace("Generated", "MessageReceived")
    assert ours == MessageReceived(*args) and hash(ours) == hash(MessageReceived(*args))  # type: ignore[arg-type]


@pytest.mark.parametrize("args", CASES)
def test_received_builds_what_the_constructor_builds(args: tuple[object, ...]) -> None:
    full = MessageReceived(*args)  # type: ignore[arg-type]
    made = received(tuple(full))
    assert type(made) is MessageReceived
    assert made == full and made.sent_at == full.sent_at and repr(made) == repr(full)


def test_message_received_stays_frozen_and_compares_without_its_send_time() -> None:
    event = MessageReceived("alice", "hi", False, sent_at=1.0)
    with pytest.raises(AttributeError):
        event.text = "changed"  # type: ignore[misc]
    assert event == MessageReceived("alice", "hi", False, sent_at=2.0)
    assert hash(event) == hash(MessageReceived("alice", "hi", False, sent_at=2.0))
    assert event != MessageReceived("alice", "hi", True, sent_at=1.0)
    assert event._replace(text="other") == MessageReceived("alice", "other", False)
    assert MessageReceived(sender="a", text="b", private=True).private


def test_an_event_equals_only_one_of_its_own_kind() -> None:
    fields = ("alice", "hi", False, Trust.UNVERIFIED, False, 1.0)
    assert MessageReceived(*fields) != MailReceived(*fields)
    assert (MessageReceived(*fields) == MailReceived(*fields)) is False
    assert MessageReceived(*fields) != fields  # not a plain tuple either
    assert MailReceived(*fields) == MailReceived(*fields[:5], sent_at=2.0)


def test_json_records_name_every_field() -> None:
    record = event_record(MessageReceived("alice", "hi", True, Trust.VERIFIED, sent_at=1.5))
    assert record["type"] == "message_received"
    assert {key: record[key] for key in ("sender", "text", "private", "trust", "late", "sent_at")} == {
        "sender": "alice",
        "text": "hi",
        "private": True,
        "trust": Trust.VERIFIED.value,
        "late": False,
        "sent_at": 1.5,
    }
    assert event_record(MailReceived("bob", "x", False))["type"] == "mail_received"


def test_json_records_of_rooms_carry_the_room() -> None:
    from e2echat.client.events import RoomChanged, RoomEntered, RoomParted, SplitView
    from e2echat.ui.render import json_lines

    said = json.loads(json_lines(MessageReceived("alice", "hi", False, room="#ops"))[0])
    assert (said["type"], said["room"]) == ("message_received", "#ops")
    for event in (RoomEntered("#ops", "bob"), RoomParted("#ops", "bob"), RoomChanged("#ops", "bob left")):
        assert json.loads(json_lines(event)[0])["room"] == "#ops"
    assert json.loads(json_lines(SplitView("bob", "#ops"))[0]) | {"time": ""} == {
        "type": "split_view",
        "time": "",
        "sender": "bob",
        "room": "#ops",
    }
