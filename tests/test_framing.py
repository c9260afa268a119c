"""Length-prefixed framing: any split of the stream gives the same frames, and hostile
length prefixes are refused before their body is buffered."""

from __future__ import annotations

import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from e2echat.errors import FrameTooLarge, LocalProtocolError, RemoteProtocolError
from e2echat.wire import messages
from e2echat.wire.codec import decode_message
from e2echat.wire.framing import MAX_FRAME, PREFIX_SIZE, FrameDecoder, encode_frame, frame_head

PAYLOADS = [b"a", b"hello", bytes(range(256)), b"\x00\x00\x00\x00", b"x" * 1000, b"{}"]
STREAM = b"".join(encode_frame(p) for p in PAYLOADS)


def _prefix(length: int) -> bytes:
    return struct.pack(">I", length)


def _decode_in_chunks(stream: bytes, cuts: list[int]) -> tuple[list[bytes], FrameDecoder]:
    """Feed ``stream`` cut at the (sorted, possibly repeated) offsets in ``cuts``."""
    decoder = FrameDecoder()
    frames: list[bytes] = []
    start = 0
    for cut in [*sorted(cuts), len(stream)]:
        frames.extend(decoder.receive_data(stream[start:cut]))
        start = cut
    return frames, decoder


# -- encoding -----------------------------------------------------------------------------


def test_encode_frame_is_big_endian_length_then_payload() -> None:
    assert encode_frame(b"abc") == b"\x00\x00\x00\x03abc"
    assert encode_frame(b"x" * 258)[:4] == b"\x00\x00\x01\x02"


def test_encode_frame_refuses_empty_payload() -> None:
    with pytest.raises(LocalProtocolError):
        encode_frame(b"")


def test_encode_frame_refuses_oversize_payload() -> None:
    assert len(encode_frame(b"x" * MAX_FRAME)) == MAX_FRAME + PREFIX_SIZE
    with pytest.raises(LocalProtocolError):
        encode_frame(b"x" * (MAX_FRAME + 1))


def test_encode_frame_honours_a_smaller_limit() -> None:
    assert encode_frame(b"x" * 10, max_frame=10) == _prefix(10) + b"x" * 10
    with pytest.raises(LocalProtocolError):
        encode_frame(b"x" * 11, max_frame=10)


@pytest.mark.parametrize("size", [1, 3, 258, MAX_FRAME])
def test_a_frame_head_is_what_encode_frame_puts_first(size: int) -> None:
    assert frame_head(size) == encode_frame(b"x" * size)[:PREFIX_SIZE]


@pytest.mark.parametrize(
    ("size", "limit"), [(0, MAX_FRAME), (-1, MAX_FRAME), (MAX_FRAME + 1, MAX_FRAME), (11, 10)]
)
def test_a_frame_head_refuses_what_encode_frame_refuses(size: int, limit: int) -> None:
    with pytest.raises(LocalProtocolError):
        frame_head(size, max_frame=limit)


# -- decoding: every split gives the same frames ------------------------------------------


def test_whole_stream_decodes_to_every_frame() -> None:
    frames, decoder = _decode_in_chunks(STREAM, [])
    assert frames == PAYLOADS
    assert decoder.buffered == 0


def test_byte_by_byte_gives_the_same_frames() -> None:
    decoder = FrameDecoder()
    frames: list[bytes] = []
    for index in range(len(STREAM)):
        frames.extend(decoder.receive_data(STREAM[index : index + 1]))
    assert frames == PAYLOADS
    assert decoder.buffered == 0


def test_seeded_random_splits_give_the_same_frames() -> None:
    rng = random.Random(20240601)
    for _ in range(200):
        cuts = [rng.randrange(len(STREAM) + 1) for _ in range(rng.randrange(1, 12))]
        frames, decoder = _decode_in_chunks(STREAM, cuts)
        assert frames == PAYLOADS, cuts
        assert decoder.buffered == 0


@settings(max_examples=300)
@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=20))
def test_any_split_gives_the_same_frames(cuts: list[int]) -> None:
    frames, decoder = _decode_in_chunks(STREAM, cuts)
    assert frames == PAYLOADS
    assert decoder.buffered == 0


@settings(max_examples=200)
@given(
    st.lists(st.binary(min_size=1, max_size=300), min_size=1, max_size=8),
    st.lists(st.integers(min_value=0, max_value=10_000), max_size=10),
)
def test_any_frames_any_split_round_trip(payloads: list[bytes], raw_cuts: list[int]) -> None:
    stream = b"".join(encode_frame(p) for p in payloads)
    frames, _ = _decode_in_chunks(stream, [c % (len(stream) + 1) for c in raw_cuts])
    assert frames == payloads


def test_empty_chunks_are_harmless() -> None:
    decoder = FrameDecoder()
    assert decoder.receive_data(b"") == []
    assert decoder.receive_data(encode_frame(b"one")) == [b"one"]
    assert decoder.receive_data(b"") == []


def test_trailing_partial_frame_stays_buffered() -> None:
    partial = encode_frame(b"second frame")[:7]  # prefix and 3 bytes of the body
    decoder = FrameDecoder()
    assert decoder.receive_data(encode_frame(b"first") + partial) == [b"first"]
    assert decoder.buffered == len(partial)
    assert decoder.receive_data(b"ond frame") == [b"second frame"]
    assert decoder.buffered == 0


def test_trailing_partial_prefix_stays_buffered() -> None:
    decoder = FrameDecoder()
    assert decoder.receive_data(encode_frame(b"first") + b"\x00\x00") == [b"first"]
    assert decoder.buffered == 2
    assert decoder.receive_data(b"\x00\x01z") == [b"z"]


# -- hostile prefixes ---------------------------------------------------------------------


def test_oversize_prefix_is_refused_as_soon_as_the_prefix_arrives() -> None:
    decoder = FrameDecoder()
    prefix = _prefix(MAX_FRAME + 1)
    # Three bytes are not yet a length: nothing to refuse.
    for byte in prefix[:3]:
        assert decoder.receive_data(bytes([byte])) == []
    with pytest.raises(FrameTooLarge) as caught:
        decoder.receive_data(prefix[3:])  # the 4th byte, no body at all
    assert decoder.buffered <= PREFIX_SIZE
    assert (caught.value.size, caught.value.limit) == (MAX_FRAME + 1, MAX_FRAME)


def test_huge_prefix_refused_without_buffering_any_body() -> None:
    decoder = FrameDecoder()
    with pytest.raises(FrameTooLarge):
        decoder.receive_data(_prefix(0xFFFFFFFF) + b"x" * 100)
    # Whatever came along with the prefix, nothing grows after the refusal.
    with pytest.raises(LocalProtocolError):
        decoder.receive_data(b"x" * 1000)
    assert decoder.buffered <= PREFIX_SIZE + 100


def test_frame_of_exactly_the_limit_is_accepted() -> None:
    decoder = FrameDecoder(max_frame=16)
    assert decoder.receive_data(_prefix(16)) == []
    assert decoder.receive_data(b"y" * 16) == [b"y" * 16]
    with pytest.raises(FrameTooLarge):
        decoder.receive_data(_prefix(17))


def test_frame_too_large_is_a_remote_protocol_error() -> None:
    assert issubclass(FrameTooLarge, RemoteProtocolError)


def test_zero_length_frame_is_rejected() -> None:
    decoder = FrameDecoder()
    with pytest.raises(RemoteProtocolError) as caught:
        decoder.receive_data(encode_frame(b"ok") + _prefix(0))
    assert not isinstance(caught.value, FrameTooLarge)


@pytest.mark.parametrize("poison", [_prefix(0), _prefix(MAX_FRAME + 1)], ids=["zero", "oversize"])
def test_decoder_refuses_use_after_error(poison: bytes) -> None:
    decoder = FrameDecoder()
    with pytest.raises(RemoteProtocolError):
        decoder.receive_data(poison)
    with pytest.raises(LocalProtocolError):
        decoder.receive_data(encode_frame(b"valid"))
    with pytest.raises(LocalProtocolError):
        decoder.receive_data(b"")


# -- fuzz: the decoder and the message parser raise only RemoteProtocolError --------------


def _feed_everything(stream: bytes, cuts: list[int], max_frame: int = MAX_FRAME) -> None:
    decoder = FrameDecoder(max_frame=max_frame)
    start = 0
    try:
        for cut in [*sorted(c % (len(stream) + 1) for c in cuts), len(stream)]:
            for frame in decoder.receive_data(stream[start:cut]):
                try:
                    message = decode_message(frame)
                except RemoteProtocolError:
                    continue
                assert isinstance(message, messages.Message)
            start = cut
    except RemoteProtocolError:
        return


@settings(max_examples=400)
@given(st.binary(max_size=2000), st.lists(st.integers(min_value=0), max_size=6))
def test_fuzz_random_bytes_raise_only_remote_protocol_error(stream: bytes, cuts: list[int]) -> None:
    _feed_everything(stream, cuts)
    _feed_everything(stream, cuts, max_frame=64)


_json_like = st.sampled_from(
    [
        b'{"v":2,"type":"bye","reason":"x"}',
        b'{"v":2,"type":"left","nick":"bob"}',
        b'{"v":2,"type":"error","code":"oops","text":"t"}',
        b'{"v":2,"type":"routed","id":3,"delivered":["a"],"missing":[]}',
    ]
)


def _flip(data: bytes, position: int, mask: int) -> bytes:
    index = position % len(data)
    return data[:index] + bytes([data[index] ^ mask]) + data[index + 1 :]


@settings(max_examples=400)
@given(
    st.lists(
        st.one_of(
            st.binary(min_size=1, max_size=200),
            _json_like,
            st.builds(_flip, _json_like, st.integers(min_value=0), st.integers(1, 255)),
        ),
        max_size=10,
    ),
    st.binary(max_size=8),
    st.lists(st.integers(min_value=0), max_size=6),
)
def test_fuzz_well_framed_junk_raises_only_remote_protocol_error(
    payloads: list[bytes], tail: bytes, cuts: list[int]
) -> None:
    """Frames that pass the decoder, so the message parser sees the junk too."""
    stream = b"".join(encode_frame(p) for p in payloads) + tail
    _feed_everything(stream, cuts)
