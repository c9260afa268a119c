"""How the relay and the client read their sockets: into a buffer that is kept.

For a plain ``asyncio.Protocol``, asyncio's socket transport reads with
``recv(256 KiB)``: every read allocates 256 KiB and shrinks it to what arrived. glibc
serves an allocation that large with ``mmap`` and gives it back with ``munmap``, so on
loopback reading one small frame cost about 16 µs, against 4 µs for the same read into
a buffer that already exists (benchmarks/README.md). A ``BufferedProtocol`` is read with
``recv_into`` a buffer the protocol hands out, which is what ``BufferedLink`` does.

Connections may share one buffer. Every asyncio transport (selector, proactor, SSL) and
uvloop asks for the buffer, fills it and reports the bytes in one go, for one connection
at a time (the proactor reads into a buffer of its own and copies into ours then), and
``buffer_updated`` copies them out before it returns. So a relay with 10,000
connections needs one buffer, not 10,000.

The buffer is handed out as a ``memoryview``, not the ``bytearray`` itself: asyncio's SSL
transport on 3.11 fills every TLS record after the first through ``buf[offset:]``, which
for a bytearray is a copy, so those bytes would be lost and the buffer's old contents
(perhaps another connection's) reported in their place (python/cpython#156275). A slice
of a memoryview writes through.
"""

from __future__ import annotations

import asyncio

#: as much as asyncio's own transports read at once
READ_SIZE = 256 * 1024


def read_buffer() -> memoryview:
    """A buffer for ``BufferedLink``s to share (a view of it also keeps anyone from
    resizing the memory under it)."""
    return memoryview(bytearray(READ_SIZE))


class BufferedLink(asyncio.BufferedProtocol):
    """A stream protocol that reads into ``buffer`` and passes each read, as bytes of its
    own, to ``data_received``."""

    __slots__ = ("_buffer",)

    def __init__(self, buffer: memoryview) -> None:
        self._buffer = buffer

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._buffer

    def buffer_updated(self, nbytes: int) -> None:
        # A copy: the buffer is overwritten by the next read, perhaps another connection's.
        self.data_received(bytes(self._buffer[:nbytes]))

    def data_received(self, data: bytes) -> None:
        raise NotImplementedError
