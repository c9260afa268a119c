"""Connections that read into one shared buffer each get their own bytes, whole and in order."""

from __future__ import annotations

import asyncio
import os

from e2echat import client, relay
from e2echat.streams import BufferedLink

CLIENTS = 3
CHUNKS = 40
CHUNK = 100


class Collector(BufferedLink):
    def __init__(self, buffer: bytearray, received: list[list[bytes]], progress: asyncio.Event) -> None:
        super().__init__(buffer)
        self.chunks: list[bytes] = []
        received.append(self.chunks)
        self.progress = progress

    def data_received(self, data: bytes) -> None:
        self.chunks.append(data)
        self.progress.set()


async def test_connections_sharing_a_read_buffer_each_get_their_own_bytes() -> None:
    shared = bytearray(7)  # smaller than any write: every write takes several reads
    received: list[list[bytes]] = []
    progress = asyncio.Event()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Collector(shared, received, progress), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    payloads = [[os.urandom(CHUNK) for _ in range(CHUNKS)] for _ in range(CLIENTS)]
    writers = []
    try:
        for _ in range(CLIENTS):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writers.append(writer)
        for index in range(CHUNKS):  # the connections' writes interleave
            for writer, chunks in zip(writers, payloads, strict=True):
                writer.write(chunks[index])
                await writer.drain()
        expected = sorted(b"".join(chunks) for chunks in payloads)

        def got() -> list[bytes]:
            return sorted(b"".join(chunks) for chunks in received)

        async def arrived() -> None:
            while len(received) < CLIENTS or sum(map(len, got())) < CLIENTS * CHUNKS * CHUNK:
                progress.clear()
                await progress.wait()

        await asyncio.wait_for(arrived(), 10)
        assert got() == expected
        # Each read is handed over as bytes of its own, not a view of the shared buffer.
        assert all(type(chunk) is bytes for chunks in received for chunk in chunks)
        assert sum(len(chunks) for chunks in received) >= CLIENTS * CHUNKS * CHUNK / len(shared)
    finally:
        for writer in writers:
            writer.close()
        server.close()
        await server.wait_closed()


def test_the_relay_and_the_client_read_through_buffered_links() -> None:
    assert issubclass(relay._Link, BufferedLink)
    assert issubclass(client._Link, BufferedLink)
