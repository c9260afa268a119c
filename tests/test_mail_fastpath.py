"""``decode_mail`` agrees with the strict decoder: it reads what ``encode_message`` writes,
and accepts nothing ``decode_message`` refuses (anything else it leaves to it)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_fast_paths import bodies, nicks

from e2echat.errors import RemoteProtocolError
from e2echat.wire import messages as m
from e2echat.wire.codec import decode_message, encode_message
from e2echat.wire.fastpath import decode_mail
from e2echat.wire.grammar import MAX_BODY, MAX_ID

Fields = tuple[int, str, float, bytes]


def _strict(payload: bytes) -> Fields | None:
    try:
        message = decode_message(payload)
    except RemoteProtocolError:
        return None
    if not isinstance(message, m.Mail):
        return None
    return message.seq, message.sender, message.queued_at, message.body


# A float, or a whole number of seconds (check_time takes an int too).
times = st.floats(min_value=0, max_value=2**40, exclude_max=True, allow_nan=False) | st.integers(0, 2**40 - 1)


@settings(max_examples=300)
@given(seq=st.integers(min_value=0, max_value=MAX_ID), sender=nicks, queued_at=times, body=bodies)
def test_decode_mail_reads_what_encode_message_writes(
    seq: int, sender: str, queued_at: float, body: bytes
) -> None:
    payload = encode_message(m.Mail(seq, sender, queued_at, body))
    assert decode_mail(payload) == (seq, sender, queued_at, body) == _strict(payload)


def _canonical(seq: str = "3", sender: str = "alice", at: str = "1700000000.25", body: str = "QUJD") -> bytes:
    return f'{{"v":2,"type":"mail","seq":{seq},"from":"{sender}","queued_at":{at},"body":"{body}"}}'.encode()


MALFORMED = {
    "negative-seq": _canonical(seq="-1"),
    "leading-zero-seq": _canonical(seq="03"),  # not JSON
    "seq-too-big": _canonical(seq=str(MAX_ID + 1)),
    "seq-fraction": _canonical(seq="1.5"),
    "negative-time": _canonical(at="-1.0"),
    "time-too-late": _canonical(at="1099511627776.0"),
    "time-infinite": _canonical(at="1e999"),
    "empty-body": _canonical(body=""),
    "body-too-big": _canonical(body="QUJD" * (MAX_BODY // 3 + 1)),
    "bad-base64": _canonical(body="QUJD!"),
    "bad-sender": _canonical(sender="al ice"),
    "extra-field": _canonical()[:-1] + b',"x":1}',
    "truncated": _canonical()[:-1],
}

NON_CANONICAL = {
    "spaces": b'{"v": 2, "type": "mail", "seq": 3, "from": "alice", "queued_at": 1.0, "body": "QUJD"}',
    "capital-exponent": _canonical(at="1E-7"),
    "escaped-sender": _canonical(sender="al\\u0069ce"),
}


@pytest.mark.parametrize("payload", MALFORMED.values(), ids=MALFORMED.keys())
def test_decode_mail_refuses_what_decode_message_refuses(payload: bytes) -> None:
    assert _strict(payload) is None  # else the case tests nothing
    assert decode_mail(payload) is None


@pytest.mark.parametrize("payload", NON_CANONICAL.values(), ids=NON_CANONICAL.keys())
def test_decode_mail_leaves_other_valid_forms_to_the_strict_decoder(payload: bytes) -> None:
    assert _strict(payload) is not None
    assert decode_mail(payload) is None


@settings(max_examples=300)
@given(st.binary(max_size=20), st.integers(min_value=0, max_value=120))
def test_decode_mail_never_accepts_what_the_strict_decoder_does_not(noise: bytes, at: int) -> None:
    payload = _canonical()
    mangled = payload[:at] + noise + payload[at + len(noise) :]
    fast = decode_mail(mangled)
    if fast is not None:
        assert fast == _strict(mangled), mangled
