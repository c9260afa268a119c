"""Denial of service at the relay: one client must not get another dropped, saturate the
relay's CPU, park its memory, or churn registrations; and no nick may pass for another.

The core is tested with time passed in; the shell over real loopback sockets.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from test_relay_core import _join, _send

import e2echat.relay.intake as intake
from e2echat.relay.core import RelayCore
from e2echat.relay.limits import Limits
from e2echat.wire import codec, fastpath
from e2echat.wire import messages as m
from e2echat.wire.framing import encode_frame

from relay_frames import Outgoing, spelled_out


def _three(limits: Limits) -> RelayCore:
    """mallory (1), victim (2) and alice (3), registered."""
    relay = RelayCore(limits)
    for conn, nick in ((1, "mallory"), (2, "victim"), (3, "alice")):
        _join(relay, conn, nick)
    return relay


# -- charged before decoding -----------------------------------------------------------------------


def _count_decoding(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Count the relay's calls of both decoders (a hook in the test, not in the relay)."""
    calls = {"fast": 0, "strict": 0}

    def counted(name: str, decode: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
        def wrapper(frame: bytes) -> Any:
            calls[name] += 1
            return decode(frame)

        return wrapper

    monkeypatch.setattr(intake, "fast_routes", counted("fast", fastpath.fast_routes))
    monkeypatch.setattr(intake, "decode_message", counted("strict", codec.decode_message))
    return calls


def test_frames_beyond_the_rate_are_never_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    relay = _three(Limits(rate=1.0, burst=10.0))  # disconnected after 10 refusals in a row
    calls = _count_decoding(monkeypatch)
    flood = b"".join(_send(i, "victim") for i in range(18))
    actions = spelled_out(relay.receive_data(1, flood, 0.0))
    assert calls == {"fast": 10, "strict": 0}  # only the ten within the burst
    answers = [a.message for a in actions if isinstance(a, Outgoing) and isinstance(a.message, m.Routed)]
    assert [routed.id for routed in answers if routed.refused == ("victim",)] == list(range(10, 18))


@pytest.mark.parametrize(
    "frame",
    [
        b'{"v":1,"type":"send","id":9999999999999999999,"items":[{"to":"victim","body":"AAAA"}]}',
        b'{"v":1,"type":"send","id":1,"items":['
        + b",".join([b'{"to":"victim","body":"AAAA"}'] * 10_001)
        + b"]}",
        b'{"v":1,"type":"send","id":1,"items":[]}',
    ],
    ids=["id-too-big", "too-many-items", "no-items"],
)
def test_a_refused_frame_that_is_no_valid_send_gets_no_answer(frame: bytes) -> None:
    """Read without decoding, a refused frame may say anything: what cannot be a valid
    ``routed`` answer is not given (and does not break the relay)."""
    relay = _three(Limits(rate=1.0, burst=1.0))
    relay.receive_data(1, _send(0, "victim"), 0.0)  # the one token
    actions = spelled_out(relay.receive_data(1, encode_frame(frame), 0.0))
    assert [type(a.message) for a in actions if isinstance(a, Outgoing)] == [m.Error]  # the warning
    assert relay.nick_of(1) == "mallory"
