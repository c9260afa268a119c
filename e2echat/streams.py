"""How the relay and the client read their sockets: into a buffer that is kept.

For a plain ``asyncio.Protocol``, asyncio's socket transport reads with
``recv(256 KiB)``: every read allocates 256 KiB and shrinks it to what arrived. glibc
serves an allocation that large with ``mmap`` and gives it back with ``munmap``, so on
loopback reading one small frame cost about 16 µs, against 4 µs for the same read into
a buffer that already exists (README, Benchmarks). A ``BufferedProtocol`` is read with
``recv_into`` a buffer the protocol hands out, which is what ``BufferedLink`` does.

Connections may share one buffer. Every asyncio transport (selector, proactor, SSL) and
uvloop asks for the buffer, reads into it and reports the bytes in one go, for one
connection at a time, and ``buffer_updated`` copies them out before it returns. So a
relay with 10,000 connections needs one buffer, not 10,000.
"""

from __future__ import annotations

import asyncio

#: as much as asyncio's own transports read at once
READ_SIZE = 256 * 1024


def read_buffer() -> bytearray:
    return bytearray(READ_SIZE)


class BufferedLink(asyncio.BufferedProtocol):
    """A stream protocol that reads into ``buffer`` and passes each read, as bytes of its
    own, to ``data_received``."""

    __slots__ = ("_buffer", "_view")

    def __init__(self, buffer: bytearray) -> None:
        self._buffer = buffer
        self._view = memoryview(buffer)  # also keeps anyone from resizing it

    def get_buffer(self, sizehint: int) -> bytearray:
        return self._buffer

    def buffer_updated(self, nbytes: int) -> None:
        # A copy: the buffer is overwritten by the next read, perhaps another connection's.
        self.data_received(bytes(self._view[:nbytes]))

    def data_received(self, data: bytes) -> None:
        raise NotImplementedError
