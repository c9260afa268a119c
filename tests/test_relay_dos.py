"""Denial of service at the relay: one client must not get another dropped, saturate the
relay's CPU, park its memory, or churn registrations; and no nick may pass for another.

The core is tested with time passed in; the shell over real loopback sockets.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from test_relay_core import _error, _join, _send

import e2echat.relay.intake as intake
from e2echat.relay.core import Close, ConnId, RelayCore
from e2echat.relay.limits import Limits
from e2echat.wire import codec, fastpath
from e2echat.wire import messages as m
from e2echat.wire.framing import encode_frame
from e2echat.wire.grammar import MAX_BODY

from relay_frames import Outgoing, spelled_out

BIG_BODY = MAX_BODY  # 128 KiB, the largest a client may send one recipient

#: long after everyone joined: every token bucket is full
FULL = 1e7


def _big_send(message_id: int, to: str, body: bytes = bytes(BIG_BODY)) -> bytes:
    return encode_frame(codec.encode_message(m.Send(message_id, (m.Envelope(to, body),))))


def _routed(actions: list[Outgoing | Close], conn: ConnId) -> m.Routed:
    (routed,) = [a.message for a in actions if isinstance(a, Outgoing) and a.conn == conn]
    assert isinstance(routed, m.Routed)
    return routed


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


def test_bytes_beyond_the_byte_rate_are_never_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    frame = _big_send(0, "victim")
    relay = _three(Limits(rate=1e9, burst=1e9, byte_rate=1000, byte_burst=3 * len(frame)))
    calls = _count_decoding(monkeypatch)
    actions = spelled_out(relay.receive_data(1, b"".join(_big_send(i, "victim") for i in range(5)), FULL))
    assert calls == {"fast": 3, "strict": 0}
    to_mallory = [a.message for a in actions if isinstance(a, Outgoing) and a.conn == 1]
    assert [e.code for e in to_mallory if isinstance(e, m.Error)] == ["rate_limited"]  # told once
    assert [r.id for r in to_mallory if isinstance(r, m.Routed) and r.refused == ("victim",)] == [3, 4]
    later = spelled_out(relay.receive_data(1, frame, FULL + 1000))  # the bucket filled again
    assert _routed(later, 1).delivered == ("victim",) and calls["fast"] == 4


def test_a_send_only_the_strict_decoder_reads_is_charged_more(monkeypatch: pytest.MonkeyPatch) -> None:
    """A send in another layout (spaces, here) costs the strict decoder several times what
    the fast path costs; it is charged ``strict_weight`` times its size (at most a full
    bucket) before it is decoded, so spelling sends oddly buys no more decoding."""
    canonical = _big_send(0, "victim")
    spaced = codec.encode_message(m.Send(1, (m.Envelope("victim", bytes(BIG_BODY)),)))
    spaced = encode_frame(json.dumps(json.loads(spaced), indent=1).encode())

    def relay(burst: int) -> RelayCore:
        return _three(Limits(rate=1e9, burst=1e9, byte_rate=1, byte_burst=burst, strict_weight=8.0))

    four = relay(4 * len(spaced))
    calls = _count_decoding(monkeypatch)
    assert _routed(spelled_out(four.receive_data(1, canonical, FULL)), 1).delivered == ("victim",)
    refused = spelled_out(four.receive_data(1, spaced, FULL))  # needs all four, has three
    assert calls == {"fast": 2, "strict": 0}  # read as not canonical, and never decoded
    assert not any(isinstance(a, Outgoing) and a.conn == 2 for a in refused)
    passed = spelled_out(four.receive_data(1, canonical, FULL))  # the usual layout still fits
    assert _routed(passed, 1).delivered == ("victim",)

    for burst in (4 * len(spaced), 9 * len(spaced)):  # a full bucket pays for it
        calls = _count_decoding(monkeypatch)
        assert _routed(spelled_out(relay(burst).receive_data(1, spaced, FULL)), 1).delivered == ("victim",)
        assert calls == {"fast": 1, "strict": 1}


def test_a_new_connection_starts_with_a_seconds_worth_of_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not with a full bucket: joining again and again must not buy a burst each time,
    nor a frame that needs most of the bucket (a costly one for the strict decoder)."""
    spaced = codec.encode_message(m.Send(1, (m.Envelope("victim", bytes(BIG_BODY)),)))
    spaced = encode_frame(json.dumps(json.loads(spaced), indent=1).encode())
    relay = _three(Limits(rate=1e9, burst=1e9, byte_rate=len(spaced), byte_burst=4 * len(spaced)))
    calls = _count_decoding(monkeypatch)
    assert not any(isinstance(a, Outgoing) and a.conn == 2 for a in relay.receive_data(1, spaced, 0.0))
    assert calls["strict"] == 0  # a second's worth: not enough for it
    assert _routed(spelled_out(relay.receive_data(1, spaced, 4.0)), 1).delivered == ("victim",)
    assert calls["strict"] == 1  # once the bucket has filled


def test_refusing_a_burst_of_bytes_in_a_row_disconnects() -> None:
    """Each refused byte was still read: a sender that goes on sending big frames after
    being refused is disconnected once it has been refused more than ``byte_burst``."""
    frame = _big_send(0, "victim")
    relay = _three(Limits(rate=1e9, burst=1e9, byte_rate=1, byte_burst=2 * len(frame)))
    flood = b"".join(_big_send(i, "victim") for i in range(10))
    actions = spelled_out(relay.receive_data(1, flood, FULL))  # 2 pass, 2 refused, then over
    hung_up = actions.index(Close(1, "rate_limited: disconnected: too many messages"))
    assert _error(1, actions[hung_up - 1 :]).text == "disconnected: too many messages"
    to_mallory = [a.message for a in actions if isinstance(a, Outgoing) and a.conn == 1]
    assert sum(1 for r in to_mallory if isinstance(r, m.Routed) and r.refused) == 2
    assert relay.nick_of(1) is None and relay.nick_of(2) == "victim"
