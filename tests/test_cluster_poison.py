"""A mailbox item from NATS that breaks the client wire grammar (written by a bug, an
older relay, or anyone with the cluster's NATS credentials), on a real NATS server: in the
mail bucket, and in another relay's answer to a ``MAILBOX`` ask. It is dropped; the
nick's other items still come, and the relay keeps serving."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator

import nats
import pytest
from nats.aio.msg import Msg
from test_cluster_store import DRAIN_WAIT, away, bucket, keys_under, within

from e2echat.client.core import MessageReceived
from e2echat.client.events import MessageQueued
from e2echat.relay.cluster.records import decode_item, encode_item, nick_prefix
from e2echat.relay.cluster.wire import (
    DEFAULT_NAME,
    HEARTBEAT,
    MAIL_TAKEN,
    MAILBOX,
    Names,
    decode_mailbox_ask,
    decode_taken,
    encode_mail,
    new_node_id,
)
from e2echat.relay.store import EXPIRED, MAIL, MailItem

from nats_support import NatsServer, cluster
from support import WAIT, connect


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_a_bad_item_in_the_mail_bucket_holds_back_none_of_the_others(nats_server: NatsServer) -> None:
    async with cluster(nats_server, 1) as (first,):
        _, again = await away(first, "dave")
        alice = await connect(first, "alice")
        for text in ("first", "second"):
            alice.connection.send_private("dave", text)
            await alice.next(MessageQueued)
        await alice.connection.close()
    async with bucket(nats_server, "mail") as mail:  # its relay gone: orphans
        keys = sorted(await keys_under(mail, nick_prefix("dave")), key=lambda key: int(key.rsplit(".")[-1]))
        assert len(keys) == 2
        key, item = decode_item("dave", (await mail.get(keys[0])).value or b"")
        await mail.put(
            keys[0], encode_item(key, dataclasses.replace(item, kind=EXPIRED, body=b"", reason="bogus"))
        )
    async with cluster(nats_server, 1) as (anew,):
        back = await connect(anew, "dave", **again)
        try:
            await within(back, MessageReceived, lambda event: event.text == "second", DRAIN_WAIT)
            anew.core.tick(asyncio.get_running_loop().time())  # raised while the bad item was kept
            assert [item.reason for item in anew.core.kept.mailboxes.items("dave")] == []
        finally:
            await back.connection.close()


@contextlib.asynccontextmanager
async def _relay_that_answers(server: NatsServer, items: list[MailItem]) -> AsyncIterator[asyncio.Queue[int]]:
    """A relay of the cluster, by hand: it beats, answers every ``MAILBOX`` ask with
    ``items``, and puts the ``upto`` of each ``MAIL_TAKEN`` it is sent in the queue."""
    names, node = Names(DEFAULT_NAME), new_node_id()
    client = await nats.connect(server.url, connect_timeout=WAIT, allow_reconnect=False)
    taken: asyncio.Queue[int] = asyncio.Queue()

    async def answer(msg: Msg) -> None:
        if msg.data[:1] == MAILBOX:
            decode_mailbox_ask(msg.data)
            await msg.respond(encode_mail(items, False))
        elif msg.data[:1] == MAIL_TAKEN:
            taken.put_nowait(decode_taken(msg.data)[1])

    async def beat() -> None:
        while True:
            await client.publish(names.alive, node.encode("ascii"))
            await asyncio.sleep(HEARTBEAT / 2)

    await client.subscribe(names.node(node), cb=answer)
    beating = asyncio.create_task(beat())
    try:
        yield taken
    finally:
        beating.cancel()
        await asyncio.wait_for(client.close(), WAIT)


@pytest.mark.timeout(60)
async def test_a_bad_item_in_a_mailbox_handed_over_holds_back_none_of_the_others(
    nats_server: NatsServer,
) -> None:
    items = [
        MailItem("dave", 1, MAIL, "alice", 11, 10.0, b"ciphertext"),
        MailItem("dave", 2, EXPIRED, "bob", 12, 11.0, reason="bogus"),  # no reason a client knows
        MailItem("dave", 3, EXPIRED, "bob", 13, 12.0, reason="expired"),
    ]
    async with cluster(nats_server, 1) as (relay,), _relay_that_answers(nats_server, items) as taken:
        # Without the check, the bad item is kept, and framing it raises: in ``take_over``
        # (nothing is said taken), and at every tick after.
        for _ in range(5):  # asked only once the relay has heard the one by hand
            dave = await connect(relay, "dave")
            try:
                with contextlib.suppress(TimeoutError):
                    assert await asyncio.wait_for(taken.get(), 4 * HEARTBEAT) == 3
                    break
            finally:
                await dave.connection.close()
        else:
            raise AssertionError("dave's mailbox was never said taken")
        relay.core.tick(asyncio.get_running_loop().time())
