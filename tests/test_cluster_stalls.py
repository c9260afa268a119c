"""Relays of a cluster that stand still for a while: stopped, or their loop stalled."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Callable

import nats
import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from test_cluster import relay_process

from e2echat.relay.cluster import relay as cluster_relay
from e2echat.relay.cluster.relay import FORWARD_TIMEOUT, MAIL_TRIES, ClusterRelay
from e2echat.relay.cluster.rooms import encode_ordered
from e2echat.relay.cluster.wire import (
    DEAD_AFTER,
    HEARTBEAT,
    MAIL_TAKEN,
    decode_mailbox_ask,
    decode_taken,
    encode_fetch,
    encode_forward,
    encode_mail,
    new_node_id,
)
from e2echat.relay.store import MAIL, MailItem
from e2echat.wire import messages as m

from nats_support import NatsServer, cluster
from support import WAIT, RawClient, connect


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
            (node,) = other._heard
            process.send_signal(signal.SIGSTOP)
            # Long enough for each relay to be past DEAD_AFTER in the other's eyes.
            await asyncio.sleep(DEAD_AFTER + 2.5 * HEARTBEAT)
            assert not other._heard  # taken for dead here, as it should be
            process.send_signal(signal.SIGCONT)
            await _until(lambda: bool(other._heard))  # it beats again: it has judged by now
            await asyncio.sleep(2 * HEARTBEAT)  # time for any delete of its to come through
            assert "carol" in other.core.online
            assert other._claims  # carol's key is still this relay's
            # Taken for dead once, heard since: a claim on a nick of its waits for it again.
            assert await asyncio.wait_for(other._alive(node), DEAD_AFTER + 2 * HEARTBEAT)
        finally:
            await carol.connection.close()
            await alice.connection.close()


# A forward waits up to ROOMS_WAIT for this relay to read the rooms bucket as far as its
# sender's relay wrote it (roomlink.py): one after a revision never written waits it all.
NEVER = 2**62


async def test_a_forward_waiting_for_the_rooms_bucket_holds_up_no_other_request(
    nats_server: NatsServer,
) -> None:
    """Requests were handled one at a time: a forward waiting for the rooms watch made
    every request after it late, past its asker's timeout (its copies reported not
    delivered, yet delivered later)."""
    async with cluster(nats_server, 1) as (here,), _nats(nats_server) as client:
        carol = await RawClient.open(here)
        try:
            await carol.register("carol")
            subject = here.names.node(here.node)
            answered: list[str] = []

            async def ask(name: str, payload: bytes) -> None:
                await client.request(subject, payload, timeout=3 * WAIT)
                answered.append(name)

            waiting = encode_ordered(NEVER, 1, encode_forward("alice", [("carol", b"late")]))
            asked = [asyncio.create_task(ask("waiting", waiting))]
            await asyncio.sleep(0)  # sent (buffered)
            await client.flush()  # and there first
            asked.append(asyncio.create_task(ask("fetch", encode_fetch("bob", ["carol"]))))
            other_sender = encode_ordered(0, 2, encode_forward("dave", [("carol", b"now")]))
            asked.append(asyncio.create_task(ask("other sender", other_sender)))
            await asyncio.wait_for(asyncio.gather(*asked), 3 * WAIT)
            assert answered[-1] == "waiting", answered
            first = await asyncio.wait_for(carol.receive_kind(m.Deliver), WAIT)
            assert (first.sender, first.body) == ("dave", b"now")
        finally:
            carol.close()


async def test_one_senders_forwards_are_delivered_in_the_order_sent(nats_server: NatsServer) -> None:
    async with cluster(nats_server, 1) as (here,), _nats(nats_server) as client:
        carol = await RawClient.open(here)
        try:
            await carol.register("carol")
            subject = here.names.node(here.node)
            first = encode_ordered(NEVER, 1, encode_forward("alice", [("carol", b"first")]))
            second = encode_ordered(0, 2, encode_forward("alice", [("carol", b"second")]))
            asked = [asyncio.create_task(client.request(subject, first, timeout=3 * WAIT))]
            await asyncio.sleep(0)  # sent (buffered)
            await client.flush()  # and there first
            asked.append(asyncio.create_task(client.request(subject, second, timeout=3 * WAIT)))
            await asyncio.wait_for(asyncio.gather(*asked), 3 * WAIT)
            for body in (b"first", b"second"):
                delivered = await asyncio.wait_for(carol.receive_kind(m.Deliver), WAIT)
                assert (delivered.sender, delivered.body) == ("alice", body)
        finally:
            carol.close()


@contextlib.asynccontextmanager
async def _nats(server: NatsServer) -> AsyncIterator[NatsClient]:
    """A client of the cluster's NATS server, as another relay is."""
    client = await nats.connect(server.url, connect_timeout=WAIT, allow_reconnect=False)
    try:
        yield client
    finally:
        await asyncio.wait_for(client.close(), WAIT)


async def test_one_senders_forwards_waiting_together_are_all_answered_in_time(
    nats_server: NatsServer,
) -> None:
    """Each waits for the rooms bucket from when it came, not after the one before it:
    else a sender's fourth forward would wait four times ROOMS_WAIT."""
    async with cluster(nats_server, 1) as (here,), _nats(nats_server) as client:
        carol = await RawClient.open(here)
        try:
            await carol.register("carol")
            subject = here.names.node(here.node)
            forwards = [
                encode_ordered(NEVER, number, encode_forward("alice", [("carol", b"%d" % number)]))
                for number in range(4)
            ]
            asked = [client.request(subject, forward, timeout=FORWARD_TIMEOUT) for forward in forwards]
            await asyncio.gather(*asked)  # not one timed out
            for number in range(4):
                delivered = await asyncio.wait_for(carol.receive_kind(m.Deliver), WAIT)
                assert delivered.body == b"%d" % number
        finally:
            carol.close()


async def test_requests_in_hand_are_bounded(nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past ``REQUESTS_AT_ONCE`` in hand, the next request waits its turn: another relay
    (or anyone on NATS) cannot make this one hold any number of them at once."""
    monkeypatch.setattr(cluster_relay, "REQUESTS_AT_ONCE", 2)
    async with cluster(nats_server, 1) as (here,), _nats(nats_server) as client:
        carol = await RawClient.open(here)
        try:
            await carol.register("carol")
            subject = here.names.node(here.node)
            answered: list[str] = []

            async def ask(name: str, payload: bytes) -> None:
                await client.request(subject, payload, timeout=3 * WAIT)
                answered.append(name)

            asked = []
            for sender in ("alice", "dave"):
                waiting = encode_ordered(NEVER, 1, encode_forward(sender, [("carol", b"late")]))
                asked.append(asyncio.create_task(ask("waiting", waiting)))
                await asyncio.sleep(0)  # sent (buffered)
            await client.flush()  # and there first
            asked.append(asyncio.create_task(ask("fetch", encode_fetch("bob", ["carol"]))))
            await asyncio.wait_for(asyncio.gather(*asked), 3 * WAIT)
            assert answered[-1] == "fetch", answered
        finally:
            carol.close()


class _SlowRelay:
    """Another relay of the cluster, by hand: it beats, keeps one item of mail for carol,
    and leaves the first ``unanswered`` asks for it unanswered (busy, or stalled)."""

    def __init__(self, here: ClusterRelay, client: NatsClient, unanswered: int) -> None:
        self.here, self.client, self.unanswered = here, client, unanswered
        self.node = new_node_id()
        self.asks = 0
        self.taken: asyncio.Queue[tuple[str, int]] = asyncio.Queue()

    async def start(self) -> None:
        await self.client.subscribe(self.here.names.node(self.node), cb=self._on_request)
        self._beating = asyncio.create_task(self._beat())
        await _until(lambda: self.node in self.here._heard)

    async def _beat(self) -> None:
        while True:
            await self.client.publish(self.here.names.alive, self.node.encode("ascii"))
            await asyncio.sleep(HEARTBEAT / 2)

    async def _on_request(self, msg: Msg) -> None:
        if msg.data[:1] == MAIL_TAKEN:
            self.taken.put_nowait(decode_taken(msg.data))
            return
        assert decode_mailbox_ask(msg.data)[0] == "carol"
        self.asks += 1
        if self.asks > self.unanswered:
            item = MailItem("carol", 7, MAIL, "alice", 1, 1.0, b"kept while away")
            await msg.respond(encode_mail([item], False))

    async def close(self) -> None:
        self._beating.cancel()


@pytest.mark.slow
async def test_mail_kept_by_a_relay_slow_to_answer_is_asked_for_again(nats_server: NatsServer) -> None:
    async with cluster(nats_server, 1) as (here,), _nats(nats_server) as client:
        slow = _SlowRelay(here, client, unanswered=1)
        await slow.start()
        carol = await RawClient.open(here)
        try:
            await carol.register("carol")
            taken = await asyncio.wait_for(slow.taken.get(), FORWARD_TIMEOUT + 2 * WAIT)
            assert taken == ("carol", 7) and slow.asks == 2
        finally:
            carol.close()
            await slow.close()


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_a_relay_that_never_answers_is_asked_for_mail_a_bounded_number_of_times(
    nats_server: NatsServer,
) -> None:
    async with cluster(nats_server, 1) as (here,), _nats(nats_server) as client:
        slow = _SlowRelay(here, client, unanswered=1000)
        await slow.start()
        carol = await RawClient.open(here)
        try:
            await carol.register("carol")
            every_try = FORWARD_TIMEOUT + HEARTBEAT
            await _until(lambda: slow.asks == MAIL_TRIES, MAIL_TRIES * every_try + WAIT)
            await asyncio.sleep(every_try + 1)  # and no more
            assert slow.asks == MAIL_TRIES
        finally:
            carol.close()
            await slow.close()
