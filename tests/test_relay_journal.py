"""The relay's shell with a durable store (relay/journal.py), over real sockets: changes
kept before the frames that depend on them, group commit, order per connection, a store
that fails, a restart that finds everything again. The store is tests/fake_store.py:
durable as far as the relay can tell, and it can be held up or made to fail."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from nacl.public import PrivateKey

from e2echat.errors import StoreError
from e2echat.relay.actions import Action
from e2echat.relay.journal import Journal
from e2echat.relay.server import Relay
from e2echat.relay.store import Enqueue, ForgetIdentity, Op, SaveBundle
from e2echat.wire import messages as m
from e2echat.wire.objects import Envelope

from fake_store import FakeStore
from support import LOOPBACK, WAIT, RawClient, running

BODY = b"\x01" + bytes(40)


async def _away(relay: Relay, nick: str, identity: PrivateKey) -> None:
    """``nick`` registers and leaves: known to the relay, and away."""
    client = await RawClient.open(relay)
    await client.register(nick, identity)
    client.close()
    async with asyncio.timeout(WAIT):
        while nick in relay.core.online:
            await asyncio.sleep(0.01)


async def _registration_kept(store: FakeStore, nick: str) -> None:
    """Until the store has written the batch with ``nick``'s registration (their bundle
    among it): the relay welcomes them before that, as the welcome claims nothing kept. One
    worker writes the batches in turn, so none before it is still being written either;
    a test that holds the store up next holds up its own batch, not this one."""
    async with asyncio.timeout(WAIT):
        while not any(
            isinstance(op, SaveBundle) and op.bundle.nick == nick for batch in store.batches for op in batch
        ):
            await asyncio.sleep(0.01)


async def _nothing_yet(client: RawClient) -> bool:
    """True if the relay has written nothing to ``client`` within a moment."""
    try:
        await asyncio.wait_for(client.receive(), 0.2)
    except TimeoutError:
        return True
    return False


async def test_queued_is_said_only_once_the_store_has_kept_the_message() -> None:
    store = FakeStore()
    async with running(Relay(LOOPBACK, 0, store=store)) as relay:
        await _away(relay, "bob", PrivateKey.generate())
        alice, carol = await RawClient.open(relay), await RawClient.open(relay)
        await alice.register("alice")
        await carol.register("carol")
        await alice.receive_kind(m.PeerJoined)
        await alice.receive_kind(m.Entered)  # carol is new in #lobby too
        await _registration_kept(store, "carol")
        store.gate.clear()
        store.applying.clear()
        alice.send(m.Send(1, (Envelope("bob", BODY),)))
        alice.send(m.Ping())  # its pong waits behind the routed
        await asyncio.to_thread(store.applying.wait, WAIT)
        carol.send(m.Ping())  # carol waits for nothing: answered at once
        assert await carol.receive_kind(m.Pong) == m.Pong()
        assert await _nothing_yet(alice)
        store.gate.set()
        routed = await alice.receive()
        assert isinstance(routed, m.Routed) and routed.queued == ("bob",)
        assert await alice.receive() == m.Pong()
        assert any(isinstance(op, Enqueue) and op.item.to == "bob" for batch in store.batches for op in batch)
        for client in (alice, carol):
            client.close()


async def test_changes_that_come_while_a_batch_is_written_go_in_the_next_one() -> None:
    store = FakeStore()
    async with running(Relay(LOOPBACK, 0, store=store, rate=1e6, burst=1e6)) as relay:
        await _away(relay, "bob", PrivateKey.generate())
        alice = await RawClient.open(relay)
        await alice.register("alice")
        await alice.receive_kind(m.Members)
        await _registration_kept(store, "alice")
        store.gate.clear()
        store.applying.clear()
        before = len(store.batches)
        alice.send(m.Send(0, (Envelope("bob", BODY),)))
        await asyncio.to_thread(store.applying.wait, WAIT)
        for number in range(1, 50):
            alice.send(m.Send(number, (Envelope("bob", BODY),)))
        alice.send(m.Ping())
        async with asyncio.timeout(WAIT):  # every send read, the pong held behind them
            while relay.core.kept.mailboxes.count("bob") < 50:
                await asyncio.sleep(0.01)
        store.gate.set()
        answers = [await alice.receive() for _ in range(51)]
        assert [a.id for a in answers if isinstance(a, m.Routed) and a.queued == ("bob",)] == list(range(50))
        assert answers[-1] == m.Pong()
        assert [len(batch) for batch in store.batches[before:]] == [1, 49]  # two transactions
        alice.close()


async def test_a_store_that_fails_stops_the_relay_and_confirms_nothing_more() -> None:
    store = FakeStore()
    relay = Relay(LOOPBACK, 0, store=store)
    async with running(relay):
        await _away(relay, "bob", PrivateKey.generate())
        alice = await RawClient.open(relay)
        await alice.register("alice")
        store.fail = StoreError(path="relay.db", detail="disk full")
        alice.send(m.Send(1, (Envelope("bob", BODY),)))
        assert await alice.closed()  # the connection is lost: no routed, no bye
        await asyncio.wait_for(relay.halted.wait(), WAIT)
        assert isinstance(relay.failure, StoreError)
        assert not any(isinstance(op, Enqueue) for batch in store.batches for op in batch)
    assert store.closed


async def test_stopping_finishes_what_the_store_was_given_then_closes_it() -> None:
    store = FakeStore()
    relay = Relay(LOOPBACK, 0, store=store)
    await relay.start()
    try:
        await _away(relay, "bob", PrivateKey.generate())
        alice = await RawClient.open(relay)
        await alice.register("alice")
        await _registration_kept(store, "alice")
        store.gate.clear()
        store.applying.clear()
        alice.send(m.Send(1, (Envelope("bob", BODY),)))
        await asyncio.to_thread(store.applying.wait, WAIT)
        stopping = asyncio.create_task(relay.stop("maintenance"))
        await asyncio.sleep(0.05)
        assert not store.closed
        store.gate.set()
        routed = await alice.receive_kind(m.Routed)
        assert routed.queued == ("bob",)
        assert await alice.receive_kind(m.Bye) == m.Bye("maintenance")
        await asyncio.wait_for(stopping, WAIT)
        assert store.closed
        alice.close()
    finally:
        await relay.stop()


async def test_a_restarted_relay_finds_identities_bundles_members_and_mailboxes() -> None:
    store, key = FakeStore(), PrivateKey.generate()
    bob = PrivateKey.generate()
    async with running(Relay(LOOPBACK, 0, store=store, key=key)) as relay:
        await _away(relay, "bob", bob)
        alice = await RawClient.open(relay)
        await alice.register("alice")
        for number in range(3):
            alice.send(m.Send(number, (Envelope("bob", bytes([number]) + BODY),)))
            assert (await alice.receive_kind(m.Routed)).queued == ("bob",)
        alice.close()
    async with running(Relay(LOOPBACK, 0, store=store, key=key)) as again:
        carol = await RawClient.open(again)
        await carol.register("carol")
        away = (await carol.receive_kind(m.Members)).away
        assert sorted(member.nick for member in away) == ["alice", "bob"]
        carol.send(m.Fetch(("bob", "nobody")))
        bundles = await carol.receive_kind(m.Bundles)
        assert [(b.nick, b.identity_key) for b in bundles.bundles] == [("bob", bob.public_key)]
        assert bundles.missing == ("nobody",)
        back = await RawClient.open(again)
        await back.register("bob", bob)
        assert [member.nick for member in (await back.receive_kind(m.Members)).away] == ["alice"]
        mail = [await back.receive_kind(m.Mail) for _ in range(3)]
        assert [item.body[0] for item in mail] == [0, 1, 2] and {item.sender for item in mail} == {"alice"}
        back.send(m.Ack(mail[-1].seq))
        async with asyncio.timeout(WAIT):
            while any(item.to == "bob" for item in store.kept.mail):
                await asyncio.sleep(0.01)
        for client in (carol, back):
            client.close()


class _SlowStore(FakeStore):
    """Each batch takes a while: a relay given changes faster than that is never idle."""

    def apply(self, ops: Sequence[Op]) -> None:
        time.sleep(0.01)
        super().apply(ops)


async def test_settle_waits_for_what_was_given_not_for_what_keeps_coming() -> None:
    """A busy relay never drains (there is always a batch being written); ``settle``
    waits only for the batches given before it was called."""
    store = _SlowStore()
    loop = asyncio.get_running_loop()
    released: list[Action] = []
    journal = Journal(store, loop, released.extend, lambda failure: None)
    try:
        await journal.settle()  # nothing given: at once
        store.gate.clear()
        journal.persist([ForgetIdentity("first")], [])
        journal.persist([ForgetIdentity("second")], [])  # gathered behind the first
        settled = asyncio.ensure_future(journal.settle())
        await asyncio.sleep(0.05)
        assert not settled.done()  # held up with the store
        store.gate.set()

        async def busy() -> None:  # more keeps coming: ``drain`` would never return
            number = 0
            while not settled.done():
                number += 1
                journal.persist([ForgetIdentity(f"more{number}")], [])
                await asyncio.sleep(0.001)

        await asyncio.wait_for(busy(), WAIT)
        kept = [op.nick for batch in store.batches for op in batch if isinstance(op, ForgetIdentity)]
        assert kept[:2] == ["first", "second"]
    finally:
        store.gate.set()
        await journal.close()


async def test_settle_returns_once_the_store_has_failed() -> None:
    store = FakeStore()
    journal = Journal(store, asyncio.get_running_loop(), lambda actions: None, lambda failure: None)
    store.gate.clear()
    journal.persist([ForgetIdentity("doomed")], [])
    settled = asyncio.ensure_future(journal.settle())
    store.fail = StoreError(path="fake", detail="broken")
    store.gate.set()
    await asyncio.wait_for(settled, WAIT)
    assert journal.failure is not None
    await journal.close()
