"""Connections that read into one shared buffer each get their own bytes, whole and in order."""

from __future__ import annotations

import asyncio
import os
import ssl
from pathlib import Path

from e2echat.client import connection as client
from e2echat.relay import server as relay
from e2echat.streams import BufferedLink, read_buffer

# A self-signed certificate and key made for this test only (e2echat itself uses no TLS).
VECTORS = Path(__file__).parent / "vectors"

CLIENTS = 3
CHUNKS = 40
CHUNK = 100


class Collector(BufferedLink):
    def __init__(self, buffer: memoryview, received: list[list[bytes]], progress: asyncio.Event) -> None:
        super().__init__(buffer)
        self.chunks: list[bytes] = []
        received.append(self.chunks)
        self.progress = progress

    def data_received(self, data: bytes) -> None:
        self.chunks.append(data)
        self.progress.set()


async def test_connections_sharing_a_read_buffer_each_get_their_own_bytes() -> None:
    # Smaller than any write: every write takes several reads, and each turn of the event
    # loop reads each ready connection once, so the connections' reads alternate.
    shared = memoryview(bytearray(7))
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
        for index in range(CHUNKS):
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


async def test_a_shared_buffer_read_through_tls_gets_every_record() -> None:
    # asyncio's TLS transport fills the second and later records of a read through a slice
    # of the buffer; what is left over from an earlier read must never show instead.
    shared = read_buffer()
    shared[:] = b"X" * len(shared)  # another connection's stale bytes
    size = 40_000  # several TLS records (at most 16 KiB each)
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(VECTORS / "test-tls-cert.pem", VECTORS / "test-tls-key.pem")
    client_context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_context.load_verify_locations(VECTORS / "test-tls-cert.pem")

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"A" * size)
        await writer.drain()
        writer.close()

    received: list[list[bytes]] = []
    progress = asyncio.Event()
    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server_context)
    port = server.sockets[0].getsockname()[1]
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_connection(
        lambda: Collector(shared, received, progress),
        "127.0.0.1",
        port,
        ssl=client_context,
        server_hostname="localhost",
    )
    try:

        async def arrived() -> None:
            while sum(map(len, received[0])) < size:
                progress.clear()
                await progress.wait()

        await asyncio.wait_for(arrived(), 10)
        assert b"".join(received[0]) == b"A" * size
    finally:
        transport.close()
        server.close()
        await server.wait_closed()


async def test_the_relay_s_connections_share_one_buffer() -> None:
    server = relay.Relay("127.0.0.1", 0)
    await server.start()
    try:
        links = [relay._Link(server), relay._Link(server)]
        assert links[0].get_buffer(-1) is links[1].get_buffer(-1) is server._read_buffer
    finally:
        await server.stop()
    assert issubclass(client._Link, BufferedLink)
