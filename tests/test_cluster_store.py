"""The cluster's store in JetStream (relay/cluster/jetstream_store.py), on a real NATS
server: bundles of people away handed out by any relay, each one-time prekey once across
the cluster; mail kept when the relay that queued it is killed, and drained through
another; a relay started anew recovering what it needs; and what anyone who can write
the buckets changes there caught by the clients."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import struct
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import nats
import nats.js.errors
import pytest
from nacl.public import PrivateKey
from nats.js.kv import KeyValue

from e2echat.client.core import MessageReceived, SecurityWarning
from e2echat.client.events import MessageQueued
from e2echat.client.outbox import BAD_BUNDLE
from e2echat.client.receipts import DeliveryReport
from e2echat.relay.cluster.jetstream_store import JetStreamStore
from e2echat.relay.cluster.records import decode_record, encode_record, nick_prefix
from e2echat.relay.cluster.relay import ClusterRelay
from e2echat.relay.cluster.wire import DEAD_AFTER, DEFAULT_NAME, Names, new_node_id
from e2echat.relay.limits import Limits
from e2echat.relay.store import Identity, SaveBundle, SaveIdentity, StoredBundle
from e2echat.store.keyfile import load_or_create_relay_key

from nats_support import NatsServer, cluster
from support import LOOPBACK, WAIT, Peer, connect, start_relay_process

E = TypeVar("E")

# Long enough for a relay to be taken for dead, and the mail it queued to be taken.
DRAIN_WAIT = 2 * DEAD_AFTER + 3 * WAIT


@contextlib.asynccontextmanager
async def bucket(server: NatsServer, name: str) -> AsyncIterator[KeyValue]:
    """The cluster's bucket ``name`` (``ids`` or ``mail``), as anyone with its NATS
    credentials can read and write it."""
    client = await nats.connect(server.url, connect_timeout=WAIT, allow_reconnect=False)
    try:
        yield await client.jetstream().key_value(f"e2echat_{name}")
    finally:
        await asyncio.wait_for(client.close(), WAIT)


async def within(peer: Peer, kind: type[E], where: Callable[[E], bool], seconds: float) -> E:
    """As ``Peer.next``, but waiting up to ``seconds`` (a dead relay's mail comes once it
    is taken for dead)."""

    async def find() -> E:
        while True:
            event = await peer.connection.events.get()
            peer.seen.append(event)
            if isinstance(event, kind) and where(event):
                return event

    return await asyncio.wait_for(find(), seconds)


async def keys_under(bucket: KeyValue, prefix: str) -> list[str]:
    """The keys of ``bucket`` under the token ``prefix`` (nats-py's ``keys(filters=...)``
    matches substrings)."""
    watcher = await bucket.watch(f"{prefix}.>", ignore_deletes=True, meta_only=True)
    keys: list[str] = []
    try:
        async for entry in watcher:
            if entry is None:  # read through
                break
            keys.append(entry.key)
    finally:
        await watcher.stop()  # type: ignore[no-untyped-call]
    return keys


async def _until(condition: Callable[[], bool]) -> None:
    while not condition():
        await asyncio.sleep(0.02)


async def away(relay: ClusterRelay, nick: str) -> tuple[Peer, dict[str, Any]]:
    """``nick`` registers on ``relay``, publishes its one-time prekeys, and leaves. Its
    peer, and what it needs to come back as itself (key, keyring, pins)."""
    identity = PrivateKey.generate()
    peer = await connect(relay, nick, identity=identity)
    await stored(relay.url, nick)
    core = peer.connection.core
    again = {"identity": identity, "keyring": core.keyring, "known_peers": core.known_peers}
    await peer.connection.close()
    await asyncio.wait_for(_until(lambda: nick not in relay.core.online), WAIT)
    return peer, again


async def stored(url: str, nick: str) -> None:
    """Until ``nick``'s record in JetStream holds one-time prekeys (its publish is kept)."""
    client = await nats.connect(url, connect_timeout=WAIT, allow_reconnect=False)
    try:
        ids = await client.jetstream().key_value("e2echat_ids")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT
        while loop.time() < deadline:
            with contextlib.suppress(nats.js.errors.KeyNotFoundError):
                if decode_record(nick, (await ids.get(nick_prefix(nick))).value or b"").one_time:
                    return
            await asyncio.sleep(0.05)
        raise AssertionError(f"{nick}'s one-time prekeys were not kept in JetStream")
    finally:
        await asyncio.wait_for(client.close(), WAIT)


async def one_time_ids(server: NatsServer, nick: str) -> list[int]:
    async with bucket(server, "ids") as ids:
        record = decode_record(nick, (await ids.get(nick_prefix(nick))).value or b"")
    size = 36
    return [
        int.from_bytes(record.one_time[at : at + 4], "big") for at in range(0, len(record.one_time), size)
    ]


async def test_the_bundle_of_someone_away_is_handed_out_by_another_relay(nats_server: NatsServer) -> None:
    """dave registered on one relay only, and left; carol, on the other, writes to him
    first: her relay hands out his bundle from the cluster's record (a one-time prekey
    taken out of it), and the message waits for him."""
    async with cluster(nats_server, 2) as (one, other):
        _, again = await away(one, "dave")
        before = await one_time_ids(nats_server, "dave")
        assert before
        await asyncio.wait_for(_until(lambda: other.core.kept.knows("dave")), WAIT)
        carol = await connect(other, "carol")
        try:
            carol.connection.send_private("dave", "first contact while you were away")
            await carol.next(MessageQueued)
            assert await one_time_ids(nats_server, "dave") == before[1:]  # the oldest, taken once
            back = await connect(one, "dave", **again)
            try:
                got = await back.next(MessageReceived, lambda e: e.sender == "carol")
                assert got.text == "first contact while you were away"
                assert not [e for e in back.seen if isinstance(e, SecurityWarning)]
            finally:
                await back.connection.close()
        finally:
            await carol.connection.close()


async def test_two_relays_racing_on_a_bundle_never_hand_out_a_one_time_prekey_twice(
    nats_server: NatsServer,
) -> None:
    async with cluster(nats_server, 2) as (one, other):
        await away(one, "dave")
        held = await one_time_ids(nats_server, "dave")
        stores = [relay.store for relay in (one, other)]
        assert all(isinstance(store, JetStreamStore) for store in stores)
        asks = [
            store.pop_async("dave", lambda node: False)
            for _ in range(len(held))
            for store in stores
            if isinstance(store, JetStreamStore)
        ]
        bundles = await asyncio.gather(*asks)  # twice as many asks as prekeys, all at once
        handed = [p.id for bundle in bundles if bundle is not None for p in bundle.one_time]
        assert all(bundle is not None for bundle in bundles)  # the rest get the signed prekey
        assert len(handed) == len(set(handed))  # none twice
        left = await one_time_ids(nats_server, "dave")
        assert sorted(handed + left) == sorted(held)  # and none lost: each handed out or held


async def test_a_one_time_prekey_stays_with_the_relay_its_owner_is_online_on(nats_server: NatsServer) -> None:
    """dave is online on one relay: another relay that has not heard so (a race with his
    register) hands out his signed prekey alone, never one of his one-time prekeys."""
    async with cluster(nats_server, 2) as (one, other):
        dave = await connect(one, "dave")
        try:
            await stored(nats_server.url, "dave")
            assert isinstance(other.store, JetStreamStore)
            bundle = await other.store.pop_async("dave", lambda node: node == one.node)
            assert bundle is not None and bundle.one_time == ()
        finally:
            await dave.connection.close()


@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_mail_queued_via_a_relay_killed_meanwhile_is_drained_via_another(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    """alice, on relay A (a process), writes to dave, away; A is killed (kill -9). alice
    fails over to B; dave comes back on B and reads every message once; alice gets a
    receipt for each: nothing silently lost, nothing shown twice."""
    texts = [f"while you were away #{n}" for n in range(5)]
    key_path = tmp_path / "relay.key"  # one key for the cluster: alice fails over to B
    key, _ = load_or_create_relay_key(key_path)
    async with cluster(nats_server, 1, key=key) as (survivor,):
        process, port, _ = await start_relay_process(
            "--port", "0", "--no-announce", "--cluster", nats_server.url, "--key", str(key_path)
        )
        try:
            # dave registers after A started: A knows him from the cluster's watch only.
            _, again = await away(survivor, "dave")
            doomed = _Port(port)
            alice = await connect(doomed, "alice", reconnecting=True, fallbacks=[(LOOPBACK, survivor.port)])
            try:
                sent = [alice.connection.send_private("dave", text) for text in texts]
                for _ in texts:
                    await alice.next(MessageQueued)  # said only once JetStream has it
                process.kill()
                await process.wait()
                back = await connect(survivor, "dave", **again)
                try:
                    for text in texts:
                        await within(back, MessageReceived, _text_is(text), DRAIN_WAIT)
                    reports: set[int] = set()
                    while reports < set(sent):
                        report = await within(alice, DeliveryReport, lambda e: not e.queued, DRAIN_WAIT)
                        assert report.delivered == ("dave",), report
                        reports.add(report.message_id)
                    shown = [e.text for e in back.seen if isinstance(e, MessageReceived)]
                    assert sorted(shown) == sorted(texts)  # each once
                finally:
                    await back.connection.close()
            finally:
                await alice.connection.close()
        finally:
            if process.returncode is None:
                process.kill()
            await process.wait()
        # Taken by the survivor, and gone from the dead relay's keys.
        async with bucket(nats_server, "mail") as mail:
            assert await keys_under(mail, nick_prefix("dave")) == []


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_a_relay_started_anew_recovers_identities_bundles_and_mail(nats_server: NatsServer) -> None:
    async with cluster(nats_server, 1) as (first,):
        _, again = await away(first, "dave")
        alice = await connect(first, "alice")
        alice.connection.send_private("dave", "kept across the restart")
        await alice.next(MessageQueued)
        await alice.connection.close()
    async with cluster(nats_server, 1) as (anew,):
        assert anew.core.kept.knows("dave") and anew.core.kept.knows("alice")
        back = await connect(anew, "dave", **again)
        try:
            got = await within(back, MessageReceived, lambda e: True, DRAIN_WAIT)
            assert (got.sender, got.text) == ("alice", "kept across the restart")
        finally:
            await back.connection.close()


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_a_stored_body_changed_in_jetstream_is_not_shown(nats_server: NatsServer) -> None:
    """Anyone who can write the mail bucket (a hostile relay of the cluster) flips a bit
    of a stored message: dave is warned, and is not shown it; the next one reads."""
    async with cluster(nats_server, 1) as (first,):
        _, again = await away(first, "dave")
        alice = await connect(first, "alice")
        for text in ("changed where it was kept", "untouched"):
            alice.connection.send_private("dave", text)
            await alice.next(MessageQueued)
        await alice.connection.close()
    async with bucket(nats_server, "mail") as mail:
        keys = sorted(await keys_under(mail, nick_prefix("dave")), key=lambda k: int(k.rsplit(".")[-1]))
        value = bytearray((await mail.get(keys[0])).value or b"")
        value[-10] ^= 1  # in the body: its last bytes are the seq and reason
        await mail.put(keys[0], bytes(value))
    async with cluster(nats_server, 1) as (anew,):
        back = await connect(anew, "dave", **again)
        try:
            await within(back, MessageReceived, lambda e: e.text == "untouched", DRAIN_WAIT)
            assert any(isinstance(e, SecurityWarning) for e in back.seen)
            assert not [
                e for e in back.seen if isinstance(e, MessageReceived) and e.text.startswith("changed")
            ]
        finally:
            await back.connection.close()


async def test_a_bundle_changed_in_jetstream_is_refused_and_nothing_goes(nats_server: NatsServer) -> None:
    """Anyone who can write the ids bucket puts a signed prekey of its own in dave's
    record: carol, writing to him first, is warned; nothing is sent to him."""
    async with cluster(nats_server, 2) as (one, other):
        await away(one, "dave")
        async with bucket(nats_server, "ids") as ids:
            entry = await ids.get(nick_prefix("dave"))
            record = decode_record("dave", entry.value or b"")
            forged = bytearray(record.signed)
            forged[4:36] = bytes(PrivateKey.generate().public_key)
            await ids.put(
                nick_prefix("dave"), encode_record(dataclasses.replace(record, signed=bytes(forged)))
            )
        carol = await connect(other, "carol")
        try:
            carol.connection.send_private("dave", "under a forged prekey")
            report = await carol.next(DeliveryReport)
            assert report.failed == (("dave", BAD_BUNDLE),)
            assert any(isinstance(e, SecurityWarning) and "dave" in e.text for e in carol.seen)
        finally:
            await carol.connection.close()


def _text_is(text: str) -> Callable[[MessageReceived], bool]:
    return lambda event: event.text == text


def _ids(packed: bytes) -> list[int]:
    return [int.from_bytes(packed[at : at + 4], "big") for at in range(0, len(packed), 36)]


class _Port:
    def __init__(self, port: int) -> None:
        self.port = port


@contextlib.asynccontextmanager
async def two_stores(server: NatsServer) -> AsyncIterator[tuple[JetStreamStore, JetStreamStore]]:
    """The stores of two relays of one cluster, without their relays."""
    client = await nats.connect(server.url, connect_timeout=WAIT, allow_reconnect=False)
    try:
        stores = []
        for _ in range(2):
            store = JetStreamStore(Names(DEFAULT_NAME), new_node_id(), Limits())
            await store.open_async(client.jetstream())
            stores.append(store)
        yield stores[0], stores[1]
    finally:
        await asyncio.wait_for(client.close(), WAIT)


def _bundle(*ids: int) -> StoredBundle:
    signed = struct.pack(">I32s64s", 1, bytes(PrivateKey.generate().public_key), bytes(64))
    one_time = b"".join(struct.pack(">I32s", i, bytes(PrivateKey.generate().public_key)) for i in ids)
    return StoredBundle("dave", signed, one_time)


async def test_a_stale_write_does_not_bring_back_a_prekey_handed_out_elsewhere(
    nats_server: NatsServer,
) -> None:
    """Relay A last saw dave's bundle with prekeys 1-3; relay B hands out 1 meanwhile (A
    taken for dead). A then writes what it holds (1-3, and 4 dave just published): the
    record keeps 2-4, never 1 again."""
    async with two_stores(nats_server) as (a, b):
        key = bytes(PrivateKey.generate().public_key)
        await a._write([SaveIdentity(Identity("dave", key, 1.0)), SaveBundle(_bundle(1, 2, 3))])
        handed = await b.pop_async("dave", lambda node: False)
        assert handed is not None and [p.id for p in handed.one_time] == [1]
        await a._write([SaveBundle(_bundle(1, 2, 3, 4))])
        assert await one_time_ids(nats_server, "dave") == [2, 3, 4]


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_mail_of_a_relay_gone_is_not_handed_to_another_key_of_the_nick(nats_server: NatsServer) -> None:
    """dave (one key) has mail kept by a relay that is gone; someone registering "dave"
    with another key on another relay gets none of it."""
    async with cluster(nats_server, 1) as (first,):
        await away(first, "dave")
        alice = await connect(first, "alice")
        alice.connection.send_private("dave", "for the real dave")
        await alice.next(MessageQueued)
        await alice.connection.close()
    async with cluster(nats_server, 1) as (anew,):
        impostor = await connect(anew, "dave")
        try:
            with contextlib.suppress(TimeoutError):
                await within(impostor, MessageReceived, lambda e: True, DEAD_AFTER + 2 * WAIT)
            assert not anew.core.kept.mailboxes.items("dave")
            assert not [e for e in impostor.seen if isinstance(e, MessageReceived | SecurityWarning)]
            async with bucket(nats_server, "mail") as mail:
                assert len(await keys_under(mail, nick_prefix("dave"))) == 1  # still there, for him
        finally:
            await impostor.connection.close()


async def test_a_nick_back_on_its_relay_does_not_get_back_a_prekey_handed_out_meanwhile(
    nats_server: NatsServer,
) -> None:
    """dave leaves relay one; relay two hands out his oldest one-time prekey; dave comes
    back on one, which remembered that prekey: one takes his bundle as the cluster keeps
    it, and neither it nor the record holds that prekey again."""
    async with cluster(nats_server, 2) as (one, other):
        _, again = await away(one, "dave")
        assert isinstance(other.store, JetStreamStore)
        handed = await other.store.pop_async("dave", lambda node: False)
        assert handed is not None and handed.one_time
        taken = handed.one_time[0].id
        back = await connect(one, "dave", **again)
        try:
            assert taken not in _ids(one.core.kept.prekeys.saved("dave").one_time)
            if one._journal is not None:
                await one._journal.settle()  # its register's changes are kept
            assert taken not in await one_time_ids(nats_server, "dave")
        finally:
            await back.connection.close()
