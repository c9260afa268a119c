"""``MessageReceived`` writes its own ``__init__`` (one is made per message received):
it must behave as the one dataclass would generate."""

from __future__ import annotations

import dataclasses

import pytest

from e2echat.client.events import MessageReceived
from e2echat.client.trust import Trust


@dataclasses.dataclass(frozen=True)
class Generated:
    """MessageReceived's fields, with the __init__ dataclass writes."""

    sender: str
    text: str
    private: bool
    trust: Trust = Trust.UNVERIFIED
    late: bool = False
    sent_at: float | None = dataclasses.field(default=None, compare=False)


@pytest.mark.parametrize(
    "args",
    [
        ("alice", "hi", False),
        ("bob", "", True, Trust.VERIFIED),
        ("carol", "x", False, Trust.CHANGED, True, 1.5),
    ],
)
def test_message_received_is_built_as_the_generated_init_builds(args: tuple[object, ...]) -> None:
    ours, generated = MessageReceived(*args), Generated(*args)  # type: ignore[arg-type]
    assert dataclasses.asdict(ours) == dataclasses.asdict(generated)
    assert [f.name for f in dataclasses.fields(ours)] == [f.name for f in dataclasses.fields(generated)]
    assert repr(ours) == repr(generated).replace("Generated", "MessageReceived")
    assert ours == MessageReceived(*args) and hash(ours) == hash(MessageReceived(*args))  # type: ignore[arg-type]


def test_message_received_stays_frozen_and_compares_without_its_send_time() -> None:
    event = MessageReceived("alice", "hi", False, sent_at=1.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.text = "changed"  # type: ignore[misc]
    assert event == MessageReceived("alice", "hi", False, sent_at=2.0)
    assert event != MessageReceived("alice", "hi", True, sent_at=1.0)
    assert dataclasses.replace(event, text="other") == MessageReceived("alice", "other", False)
    assert MessageReceived(sender="a", text="b", private=True).private
