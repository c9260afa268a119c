"""The fast encoders and decoders for the hot messages agree with the general ones: the
same bytes out, and the fast decoder accepts nothing the strict one refuses."""

from __future__ import annotations

import base64
import json
import string

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from e2echat.errors import LocalProtocolError, RemoteProtocolError
from e2echat.wire import messages as m
from e2echat.wire.codec import decode_message, encode_message
from e2echat.wire.fastpath import decode_deliver, encode_send
from e2echat.wire.grammar import MAX_BODY, MAX_ID, MAX_ITEMS

nicks = st.text(alphabet=string.ascii_letters + string.digits + "_.-", min_size=1, max_size=32)
bodies = st.binary(min_size=1, max_size=300)


def _strict(payload: bytes) -> tuple[str, bytes] | None:
    """What ``decode_message`` makes of ``payload`` as (sender, body); None if it refuses
    it or it is not a deliver."""
    try:
        message = decode_message(payload)
    except RemoteProtocolError:
        return None
    return (message.sender, message.body) if isinstance(message, m.Deliver) else None


def _agree(payload: bytes) -> None:
    fast = decode_deliver(payload)
    if fast is not None:
        assert fast == _strict(payload), payload


# -- send ----------------------------------------------------------------------------------


@settings(max_examples=200)
@given(
    message_id=st.integers(min_value=0, max_value=MAX_ID),
    items=st.lists(st.tuples(nicks, bodies), min_size=1, max_size=20),
)
def test_encode_send_gives_the_bytes_encode_message_gives(
    message_id: int, items: list[tuple[str, bytes]]
) -> None:
    envelopes = tuple(m.Envelope(to, body) for to, body in items)
    assert encode_send(message_id, items) == encode_message(m.Send(message_id, envelopes))
    decoded = decode_message(encode_send(message_id, items))
    assert decoded == m.Send(message_id, envelopes)


def test_encode_send_of_the_largest_body_and_id() -> None:
    items = [("a" * 32, b"\xff" * MAX_BODY)]
    envelopes = (m.Envelope("a" * 32, b"\xff" * MAX_BODY),)
    assert encode_send(MAX_ID, items) == encode_message(m.Send(MAX_ID, envelopes))


@pytest.mark.parametrize(
    ("message_id", "items"),
    [
        (-1, [("bob", b"x")]),
        (MAX_ID + 1, [("bob", b"x")]),
        (True, [("bob", b"x")]),
        (1, []),
        (1, [("bob", b"x")] * (MAX_ITEMS + 1)),
        (1, [("", b"x")]),
        (1, [('bo"b', b"x")]),
        (1, [("bob\n", b"x")]),
        (1, [("b" * 33, b"x")]),
        (1, [("böb", b"x")]),
        (1, [(b"bob", b"x")]),
        (1, [(["bob"], b"x")]),
        (1, [("bob", b"")]),
        (1, [("bob", b"x" * (MAX_BODY + 1))]),
        (1, [("bob", "text")]),
        (1, [("bob", bytearray(b"x"))]),
    ],
    ids=[
        "negative-id",
        "id-too-big",
        "bool-id",
        "no-items",
        "too-many-items",
        "empty-nick",
        "quote-in-nick",
        "newline-after-nick",
        "long-nick",
        "non-ascii-nick",
        "bytes-nick",
        "list-nick",
        "empty-body",
        "body-too-big",
        "str-body",
        "bytearray-body",
    ],
)
def test_encode_send_refuses_what_send_refuses(
    message_id: object, items: list[tuple[object, object]]
) -> None:
    # Wrong types on purpose (the ignores): both must refuse them at run time too.
    with pytest.raises(LocalProtocolError):
        m.Send(message_id, tuple(m.Envelope(to, body) for to, body in items))  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError):
        encode_send(message_id, items)  # type: ignore[arg-type]


# -- deliver -------------------------------------------------------------------------------


@settings(max_examples=200)
@given(sender=nicks, body=bodies)
def test_decode_deliver_reads_what_encode_message_writes(sender: str, body: bytes) -> None:
    payload = encode_message(m.Deliver(sender, body))
    assert decode_deliver(payload) == (sender, body) == _strict(payload)


def _canonical(sender: str = "alice", body: str = base64.b64encode(b"\x00cipher\xff").decode()) -> bytes:
    return f'{{"v":2,"type":"deliver","from":"{sender}","body":"{body}"}}'.encode()


MALFORMED = {
    "empty-body": _canonical(body=""),
    "body-too-big": _canonical(body=base64.b64encode(b"x" * (MAX_BODY + 1)).decode()),
    "missing-padding": _canonical(body="QUI"),
    "padding-inside": _canonical(body="QQ==QUJD"),
    "too-much-padding": _canonical(body="QQ==="),
    "only-padding": _canonical(body="=="),
    "non-base64": _canonical(body="QUJD!"),
    "urlsafe-base64": _canonical(body="-_-_"),
    "newline-in-body": _canonical(body="QUJD\\n"),
    "empty-sender": _canonical(sender=""),
    "long-sender": _canonical(sender="a" * 33),
    "bad-sender": _canonical(sender="al ice"),
    "non-ascii-sender": _canonical(sender="alicé"),
    "other-version": b'{"v":1,"type":"deliver","from":"alice","body":"QUJD"}',
    "other-type": b'{"v":2,"type":"delivers","from":"alice","body":"QUJD"}',
    "extra-field": b'{"v":2,"type":"deliver","from":"alice","body":"QUJD","x":1}',
    "duplicate-field": b'{"v":2,"type":"deliver","from":"alice","from":"bob","body":"QUJD"}',
    "missing-body": b'{"v":2,"type":"deliver","from":"alice"}',
    "trailing-garbage": _canonical() + b"x",
    "two-objects": _canonical() + _canonical(),
    "truncated": _canonical()[:-1],
    "head-then-brace": b'{"v":2,"type":"deliver","from":"alice","body":"}',
    "quote-in-body": _canonical(body='QU"JD'),
    "escaped-quote-in-body": _canonical(body='QU\\"JD'),
    "body-then-more": _canonical(body='QUJD"},"x":"QUJD'),
    "not-utf8": _canonical(sender="al\udcffice".encode("utf-8", "surrogateescape").decode("latin-1")),
}

# Valid, but not as encode_message writes it: the fast path leaves these to the strict one.
NON_CANONICAL = {
    "escaped-body": _canonical(body="QUJ\\u0044"),
    "escaped-sender": _canonical(sender="al\\u0069ce"),
    "trailing-newline": _canonical() + b"\n",
    "leading-space": b" " + _canonical(),
    "spaces": b'{"v": 2, "type": "deliver", "from": "alice", "body": "QUJD"}',
    "other-order": b'{"type":"deliver","v":2,"from":"alice","body":"QUJD"}',
}


@pytest.mark.parametrize("payload", MALFORMED.values(), ids=MALFORMED.keys())
def test_decode_deliver_refuses_what_decode_message_refuses(payload: bytes) -> None:
    assert _strict(payload) is None  # else the case tests nothing
    assert decode_deliver(payload) is None


@pytest.mark.parametrize("payload", NON_CANONICAL.values(), ids=NON_CANONICAL.keys())
def test_decode_deliver_leaves_other_valid_forms_to_the_strict_decoder(payload: bytes) -> None:
    assert _strict(payload) is not None
    assert decode_deliver(payload) is None


def test_decode_deliver_takes_the_canonical_form() -> None:
    assert decode_deliver(_canonical()) == ("alice", b"\x00cipher\xff") == _strict(_canonical())
    # Excess padding after a whole quantum: b64decode(validate=True) takes it, so both do.
    padded = _canonical(body="QUJD=")
    assert decode_deliver(padded) == ("alice", b"ABC") == _strict(padded)


def test_every_single_byte_change_to_a_deliver_is_judged_as_strict_judges_it() -> None:
    payload = encode_message(m.Deliver("al.ice-9_", b"\x00\x01\xfe\xff body"))
    replacements = sorted(set(b'{}[]":,\\ =+/-_.0129AZaz\x00\n\x7f\xff'))
    for index in range(len(payload)):
        _agree(payload[:index] + payload[index + 1 :])  # deleted
        for byte in replacements:
            _agree(payload[:index] + bytes([byte]) + payload[index + 1 :])  # replaced
            _agree(payload[:index] + bytes([byte]) + payload[index:])  # inserted


@settings(max_examples=500)
@given(payload=st.binary(max_size=120))
@example(payload=b'{"v":2,"type":"deliver","from":"a","body":"AA=="}')
def test_decode_deliver_agrees_with_decode_message_on_any_bytes(payload: bytes) -> None:
    _agree(payload)


@settings(max_examples=300)
@given(
    sender=st.text(max_size=40),
    body=st.text(alphabet=string.ascii_letters + string.digits + "+/=-_\\ ", max_size=40),
)
def test_decode_deliver_agrees_on_near_canonical_payloads(sender: str, body: str) -> None:
    _agree(_canonical(sender, body))
    _agree(json.dumps({"v": 2, "type": "deliver", "from": sender, "body": body}).encode())


# -- framing: one whole frame in one read is taken without buffering ------------------------


def test_a_read_of_exactly_one_frame_gives_that_frame_and_leaves_nothing_buffered() -> None:
    from e2echat.errors import FrameTooLarge
    from e2echat.wire.framing import FrameDecoder, encode_frame

    decoder = FrameDecoder(max_frame=100)
    assert decoder.receive_data(encode_frame(b"one")) == [b"one"]
    # Typed bytes, but a bytearray must work as well: the shortcut copies the frame out.
    assert decoder.receive_data(bytearray(encode_frame(b"two"))) == [b"two"]  # type: ignore[arg-type]
    assert decoder.buffered == 0
    # Not exactly one frame: the long way, as before.
    assert decoder.receive_data(encode_frame(b"a") + encode_frame(b"b")) == [b"a", b"b"]
    assert decoder.receive_data(encode_frame(b"half")[:5]) == []
    # Something buffered: even a read that is one whole frame is appended, not taken.
    assert decoder.receive_data(b"alf") == [b"half"]
    assert decoder.receive_data(b"\x00\x00\x00\x06") == []  # a prefix: 6 bytes to come
    assert decoder.receive_data(encode_frame(b"ab")) == [b"\x00\x00\x00\x02ab"]  # they are these
    assert decoder.buffered == 0
    # A whole frame over the limit is refused as before, not taken by the shortcut.
    with pytest.raises(FrameTooLarge):
        FrameDecoder(max_frame=100).receive_data(encode_frame(b"x" * 101, max_frame=200))
    with pytest.raises(RemoteProtocolError):
        FrameDecoder().receive_data(b"\x00\x00\x00\x00x")
