"""Length-prefixed frames: a 4-byte unsigned big-endian length, then that many bytes.

Pure (no I/O). ``FrameDecoder`` accepts the byte stream in any split and yields whole
frames; a length above the limit is refused as soon as the 4-byte prefix is seen,
before any of the body is buffered, so a hostile peer cannot make us allocate it.
"""

from __future__ import annotations

import struct

from e2echat.errors import FrameTooLarge, LocalProtocolError, RemoteProtocolError

# 1 MiB, as websockets and NATS: room for a room message to a few hundred people in one
# frame, small enough that a flood of maximal frames cannot exhaust the relay's memory.
MAX_FRAME = 1024 * 1024

_PREFIX = struct.Struct(">I")
PREFIX_SIZE = _PREFIX.size


def encode_frame(payload: bytes, *, max_frame: int = MAX_FRAME) -> bytes:
    """Prefix ``payload`` with its length. Refuses what the other side would refuse."""
    if not payload:
        raise LocalProtocolError(detail="refusing to send an empty frame")
    if len(payload) > max_frame:
        raise LocalProtocolError(
            detail=f"frame of {len(payload)} bytes exceeds the limit of {max_frame} bytes"
        )
    return _PREFIX.pack(len(payload)) + payload


def frame_head(size: int, *, max_frame: int = MAX_FRAME) -> bytes:
    """What ``encode_frame`` puts before a payload of ``size`` bytes, for a frame written
    in pieces. Refuses the sizes ``encode_frame`` refuses."""
    if size <= 0:
        raise LocalProtocolError(detail="refusing to send an empty frame")
    if size > max_frame:
        raise LocalProtocolError(detail=f"frame of {size} bytes exceeds the limit of {max_frame} bytes")
    return _PREFIX.pack(size)


class FrameDecoder:
    """Incremental decoder: ``receive_data(chunk)`` then ``next_frames()``.

    After a ``RemoteProtocolError`` the stream is unusable: there is no way to find the
    next frame boundary, so the caller must close the connection.
    """

    def __init__(self, *, max_frame: int = MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buffer = bytearray()
        self._broken = False

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as a frame."""
        return len(self._buffer)

    def receive_data(self, data: bytes) -> list[bytes]:
        """Feed bytes from the stream; return every frame they complete, in order."""
        if self._broken:
            raise LocalProtocolError(detail="decoder used after a protocol error")
        if not self._buffer and len(data) > PREFIX_SIZE:
            # The usual read: exactly one whole frame, nothing buffered. Taken as it is,
            # without the copies into and out of the buffer; anything else goes the long way.
            (length,) = _PREFIX.unpack_from(data)
            if length == len(data) - PREFIX_SIZE and length <= self.max_frame:
                return [bytes(data[PREFIX_SIZE:])]
        buffer = self._buffer
        buffer += data
        frames: list[bytes] = []
        start, size = 0, len(buffer)
        # Cut every complete frame, then drop them from the buffer in one go: a read full
        # of small frames costs one pass, not one shift of the rest per frame.
        with memoryview(buffer) as view:
            while size - start >= PREFIX_SIZE:
                (length,) = _PREFIX.unpack_from(view, start)
                if length == 0:
                    self._broken = True
                    raise RemoteProtocolError(detail="zero-length frame")
                if length > self.max_frame:
                    self._broken = True
                    raise FrameTooLarge(size=length, limit=self.max_frame)
                end = start + PREFIX_SIZE + length
                if size < end:
                    break
                frames.append(bytes(view[start + PREFIX_SIZE : end]))
                start = end
        del buffer[:start]
        return frames
