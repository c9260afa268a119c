"""Relays in a cluster on a real NATS server (``e2echat relay --cluster``)."""

from __future__ import annotations

import asyncio

import nats

from nats_support import NatsServer


async def test_the_nats_fixture_serves_jetstream(nats_server: NatsServer) -> None:
    client = await nats.connect(nats_server.url, connect_timeout=5, allow_reconnect=False)
    try:
        kv = await client.jetstream().create_key_value(bucket="probe")
        await kv.put("k", b"v")
        assert (await kv.get("k")).value == b"v"
    finally:
        await asyncio.wait_for(client.close(), 5)
