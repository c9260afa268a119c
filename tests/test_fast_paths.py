"""The fast encoders and decoders for the hot messages agree with the general ones: the
same bytes out, and the fast decoder accepts nothing the strict one refuses."""

from __future__ import annotations

import json
import string

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from e2echat.errors import LocalProtocolError, RemoteProtocolError
from e2echat.wire import fastpath
from e2echat.wire import messages as m
from e2echat.wire.binary import BODY_LENGTH, SEND_HEAD, SEND_TAG
from e2echat.wire.codec import decode_message, encode_message
from e2echat.wire.fastpath import decode_deliver, decode_deliver_frame, encode_send
from e2echat.wire.framing import MAX_FRAME, FrameDecoder, encode_frame
from e2echat.wire.grammar import MAX_BODY, MAX_ID, MAX_ITEMS, is_valid_nick
from e2echat.wire.objects import Envelope

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
    envelopes = tuple(Envelope(to, body) for to, body in items)
    assert encode_send(message_id, items) == encode_message(m.Send(message_id, envelopes))
    decoded = decode_message(encode_send(message_id, items))
    assert decoded == m.Send(message_id, envelopes)


def test_encode_send_of_the_largest_body_and_id() -> None:
    items = [("a" * 32, b"\xff" * MAX_BODY)]
    envelopes = (Envelope("a" * 32, b"\xff" * MAX_BODY),)
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
        m.Send(message_id, tuple(Envelope(to, body) for to, body in items))  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError):
        encode_send(message_id, items)  # type: ignore[arg-type]


def _pieces(items: list[tuple[str, bytes]]) -> list[bytes]:
    """The pieces of ``items`` as the outbox writes them while it seals."""
    pieces = [b"head"]  # (a placeholder)
    for to, body in items:
        pieces += (fastpath.envelope_head(to), BODY_LENGTH.pack(len(body)), body)
    return pieces


@settings(max_examples=200)
@given(
    message_id=st.integers(min_value=0, max_value=MAX_ID),
    items=st.lists(st.tuples(nicks, bodies), min_size=1, max_size=20),
)
def test_send_frame_gives_the_frame_encode_send_gives(
    message_id: int, items: list[tuple[str, bytes]]
) -> None:
    frame = fastpath.send_frame(message_id, len(items), _pieces(items))
    assert frame == encode_frame(encode_send(message_id, items))


@pytest.mark.parametrize(
    ("message_id", "count", "items"),
    [
        (-1, 1, [("bob", b"x")]),
        (MAX_ID + 1, 1, [("bob", b"x")]),
        (1, 0, []),
        (1, MAX_ITEMS + 1, [("bob", b"x")] * (MAX_ITEMS + 1)),
        (1, 2, [("bob", b"x")]),
        (1, 1, [("bob", b"x"), ("carol", b"y")]),
        (1, 1, [("bob", b"x" * MAX_FRAME)]),
    ],
    ids=["negative-id", "id-too-big", "no-items", "too-many-items", "fewer-pieces", "more-pieces", "too-big"],
)
def test_send_frame_refuses_a_bad_id_count_or_size(
    message_id: int, count: int, items: list[tuple[str, bytes]]
) -> None:
    with pytest.raises(LocalProtocolError):
        fastpath.send_frame(message_id, count, _pieces(items))


def test_an_envelope_head_checks_its_nick() -> None:
    for nick in ("", 'bo"b', "b" * 33, "böb"):
        with pytest.raises(LocalProtocolError):
            fastpath.envelope_head(nick)


# -- deliver -------------------------------------------------------------------------------


@settings(max_examples=200)
@given(sender=nicks, body=bodies)
def test_decode_deliver_reads_what_encode_message_writes(sender: str, body: bytes) -> None:
    payload = encode_message(m.Deliver(sender, body))
    assert decode_deliver(payload) == (sender, body) == _strict(payload)


def _canonical(sender: bytes = b"alice", body: bytes = b"\x00cipher\xff") -> bytes:
    return b"\x02\x02%b%b%b" % (bytes((len(sender),)), sender, body)


MALFORMED = {
    "empty-body": _canonical(body=b""),
    "body-too-big": _canonical(body=b"x" * (MAX_BODY + 1)),
    "empty-sender": _canonical(sender=b""),
    "long-sender": _canonical(sender=b"a" * 33),
    "bad-sender": _canonical(sender=b"al ice"),
    "non-ascii-sender": _canonical(sender="alicé".encode()),
    "quote-in-sender": _canonical(sender=b'al"ice'),
    "sender-past-the-end": b"\x02\x02\x20alice",
    "other-version": b"\x02\x01" + _canonical()[2:],
    "version-3": b"\x02\x03" + _canonical()[2:],
    "a-send-tag": b"\x01" + _canonical()[1:],
    "tag-only": b"\x02",
    "tag-and-version": b"\x02\x02",
    "json": json.dumps({"v": 2, "type": "deliver", "from": "alice", "body": "QUJD"}).encode(),
}


@pytest.mark.parametrize("payload", MALFORMED.values(), ids=MALFORMED.keys())
def test_decode_deliver_refuses_what_decode_message_refuses(payload: bytes) -> None:
    assert _strict(payload) is None  # else the case tests nothing
    assert decode_deliver(payload) is None


def test_decode_deliver_takes_the_canonical_form() -> None:
    assert decode_deliver(_canonical()) == ("alice", b"\x00cipher\xff") == _strict(_canonical())
    longest = _canonical(b"a" * 32, b"\x02" * MAX_BODY)
    assert decode_deliver(longest) == ("a" * 32, b"\x02" * MAX_BODY) == _strict(longest)


def test_every_single_byte_change_to_a_deliver_is_judged_as_strict_judges_it() -> None:
    payload = encode_message(m.Deliver("al.ice-9_", b"\x00\x01\xfe\xff body"))
    replacements = sorted(set(b'{}[]":,\\ =+/-_.0129AZaz\x00\x01\x02\x03\x08\x09\x0a\n\x7f\xff'))
    for index in range(len(payload)):
        _agree(payload[:index] + payload[index + 1 :])  # deleted
        for byte in replacements:
            _agree(payload[:index] + bytes([byte]) + payload[index + 1 :])  # replaced
            _agree(payload[:index] + bytes([byte]) + payload[index:])  # inserted


@settings(max_examples=500)
@given(payload=st.binary(max_size=120))
@example(payload=b"\x02\x02\x01aA")
def test_decode_deliver_agrees_with_decode_message_on_any_bytes(payload: bytes) -> None:
    _agree(payload)


def _framed_agree(data: bytes) -> None:
    """``decode_deliver_frame`` reads ``data`` only if it is one whole frame, and then
    as the frame decoder and ``decode_deliver`` would."""
    fast = decode_deliver_frame(data)
    if fast is not None:
        frames = FrameDecoder().receive_data(data)
        assert len(frames) == 1 and fast == decode_deliver(frames[0]) == _strict(frames[0]), data


@settings(max_examples=200)
@given(sender=nicks, body=bodies, tail=st.binary(min_size=1, max_size=8), cut=st.integers(1, 8))
def test_decode_deliver_frame_reads_exactly_one_whole_frame(
    sender: str, body: bytes, tail: bytes, cut: int
) -> None:
    frame = encode_frame(encode_message(m.Deliver(sender, body)))
    assert decode_deliver_frame(frame) == (sender, body)
    assert decode_deliver_frame(frame + tail) is None  # more than one frame (or a part)
    assert decode_deliver_frame(frame[:-cut]) is None  # a frame not yet whole
    assert decode_deliver_frame(bytearray(frame)) is None  # type: ignore[arg-type]  # not bytes: the long way


@pytest.mark.parametrize("payload", MALFORMED.values(), ids=MALFORMED.keys())
def test_decode_deliver_frame_refuses_what_decode_message_refuses(payload: bytes) -> None:
    assert decode_deliver_frame(encode_frame(payload)) is None


@settings(max_examples=500)
@given(data=st.binary(max_size=120))
@example(data=b"\x00\x00\x00\x05\x02\x02\x01aA")
@example(data=b"\x00\x00\x00\x06\x02\x02\x01aA")
def test_decode_deliver_frame_agrees_with_the_frame_decoder_on_any_bytes(data: bytes) -> None:
    _framed_agree(data)


def test_every_single_byte_change_to_a_deliver_frame_is_judged_as_strict_judges_it() -> None:
    data = encode_frame(encode_message(m.Deliver("al.ice-9_", b"\x00\x01\xfe\xff body")))
    for index in range(len(data)):
        _framed_agree(data[:index] + data[index + 1 :])  # deleted
        for byte in (0, 1, 2, 3, 0x20, 0x7F, 0xFF):
            _framed_agree(data[:index] + bytes([byte]) + data[index + 1 :])  # replaced
            _framed_agree(data[:index] + bytes([byte]) + data[index:])  # inserted


@settings(max_examples=300)
@given(sender=st.binary(max_size=40), body=st.binary(max_size=40), length=st.integers(0, 255))
def test_decode_deliver_agrees_on_near_canonical_payloads(sender: bytes, body: bytes, length: int) -> None:
    _agree(_canonical(sender[:255], body))
    _agree(b"\x02\x02" + bytes((length,)) + sender + body)


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


# -- the recipients of a refused send ------------------------------------------------------


@settings(max_examples=300)
@given(
    items=st.lists(st.tuples(st.binary(max_size=34), st.binary(max_size=6)), min_size=1, max_size=4),
    cut=st.integers(min_value=0, max_value=3),
)
def test_send_recipients_names_what_the_fast_path_reads_and_only_nicks(
    items: list[tuple[bytes, bytes]], cut: int
) -> None:
    """Read from the lengths alone, a send gives the recipients the fast path gives; and
    whatever it reads, it names only valid nicks (a ``routed`` answer is built of them)."""
    parts = [SEND_HEAD.pack(SEND_TAG, 2, 5)]
    for to, body in items:
        parts += (bytes((len(to),)), to, BODY_LENGTH.pack(len(body)), body)
    payload = b"".join(parts)
    payload = payload[: len(payload) - cut]
    read = fastpath.send_recipients(payload)
    routes = fastpath.fast_routes(payload)
    if routes is not None:
        assert read == (5, tuple(to for to, _ in routes.items))
    if read is not None:
        assert all(is_valid_nick(to) for to in read[1])


def test_a_send_of_too_many_items_is_refused_before_they_are_built() -> None:
    item = b"\x01b" + BODY_LENGTH.pack(1) + b"x"
    payload = SEND_HEAD.pack(SEND_TAG, 2, 1) + item * (MAX_ITEMS + 1)
    assert fastpath.fast_routes(payload) is None
    assert fastpath.send_recipients(payload) is None
    with pytest.raises(RemoteProtocolError, match=f"'send' message has more than {MAX_ITEMS} items"):
        decode_message(payload)


# -- routed --------------------------------------------------------------------------------

_groups = st.lists(nicks, max_size=5, unique=True)


@settings(max_examples=200)
@given(
    message_id=st.integers(min_value=0, max_value=MAX_ID),
    groups=st.tuples(_groups, _groups, _groups, _groups, _groups),
)
def test_encode_routed_gives_the_bytes_encode_message_gives(
    message_id: int, groups: tuple[list[str], ...]
) -> None:
    expected = encode_message(m.Routed(message_id, *(tuple(group) for group in groups)))
    assert fastpath.encode_routed(message_id, *groups) == expected


def test_deliver_head_refuses_a_bad_sender_every_time() -> None:
    """It is made once per sender (cached): a refusal is not cached as an answer."""
    for _ in range(2):
        with pytest.raises(LocalProtocolError):
            fastpath.deliver_head('bo"b')
