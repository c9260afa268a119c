"""Relays of a cluster that stand still for a while: stopped, or their loop stalled."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable

import pytest
from test_cluster import cluster, relay_process

from e2echat.relay.cluster.wire import DEAD_AFTER, HEARTBEAT

from nats_support import NatsServer
from support import WAIT, connect


async def _until(condition: Callable[[], bool], timeout: float = WAIT) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "not in time"
        await asyncio.sleep(0.05)


@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_a_relay_stopped_and_continued_leaves_the_others_clients_alone(
    nats_server: NatsServer,
) -> None:
    """Continued, it finds the others' heartbeats of meanwhile still unread: taking them
    for dead then would delete their clients' keys, and every other relay hang up on
    its clients."""
    async with cluster(nats_server, 1) as (other,), relay_process(nats_server) as (process, stopped):
        carol = await connect(other, "carol")
        alice = await connect(stopped, "alice")
        try:
            await _until(lambda: "alice" in other.cluster_core.remote.peers)
            process.send_signal(signal.SIGSTOP)
            # Long enough for each relay to be past DEAD_AFTER in the other's eyes.
            await asyncio.sleep(DEAD_AFTER + 2.5 * HEARTBEAT)
            assert not other._heard  # taken for dead here, as it should be
            process.send_signal(signal.SIGCONT)
            await _until(lambda: bool(other._heard))  # it beats again: it has judged by now
            await asyncio.sleep(2 * HEARTBEAT)  # time for any delete of its to come through
            assert "carol" in other.core.online
            assert other._claims  # carol's key is still this relay's
        finally:
            await carol.connection.close()
            await alice.connection.close()
