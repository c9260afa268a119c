"""The link from a relay to its NATS server: a ``tls://`` link cannot be talked down to
the clear."""

from __future__ import annotations

import asyncio

import pytest

from e2echat.errors import ClusterUnreachable
from e2echat.relay.cluster.relay import ClusterRelay

from nats_support import LOOPBACK
from support import WAIT

#: what a NATS server says first, in the clear, when it does not ask for TLS
PLAIN_INFO = b'INFO {"server_id":"x","version":"2.11.0","max_payload":1048576,"auth_required":true}\r\n'


async def test_a_tls_link_sends_nothing_in_the_clear_to_a_server_that_asks_for_no_tls() -> None:
    # Whoever is on the path answers as a NATS server that does not ask for TLS: the relay
    # must not go on without it (its password, then everything, would cross in the clear).
    received = bytearray()
    done = asyncio.Event()

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(PLAIN_INFO)
        await writer.drain()
        try:
            while data := await asyncio.wait_for(reader.read(65536), WAIT):
                received.extend(data)
        except (TimeoutError, ConnectionError):
            pass
        writer.close()
        done.set()

    server = await asyncio.start_server(answer, LOOPBACK, 0)
    port = server.sockets[0].getsockname()[1]
    try:
        relay = ClusterRelay(LOOPBACK, 0, cluster=f"tls://relay:hunter2secret@{LOOPBACK}:{port}")
        with pytest.raises(ClusterUnreachable):
            await asyncio.wait_for(relay.start(), 3 * WAIT)
        await asyncio.wait_for(done.wait(), 2 * WAIT)
    finally:
        server.close()
        await server.wait_closed()
    assert received[:1] == b"\x16"  # a TLS handshake record, first
    assert b"CONNECT" not in received and b"hunter2secret" not in received
