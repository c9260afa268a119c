"""Chaos: steady traffic (room and private) between reconnecting clients while the relay
is restarted and killed, clients are stopped and continued, and connections are cut. A
ledger checks that every message ended, for each person it was meant for, delivered
(receipt, and shown exactly once) or reported NOT delivered to its sender.

The schedule is drawn from a seed (printed on failure; set E2ECHAT_CHAOS_SEED to replay
it, as far as timing allows)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import secrets
from dataclasses import dataclass, field

import pytest
from ledger import Ledger
from nacl.public import PrivateKey

from e2echat.client.events import DeliveryReport, MessageReceived
from e2echat.client.reconnect import Backoff, Client
from e2echat.client.trust import KnownPeers
from e2echat.errors import CommandError
from e2echat.relay.server import Relay

from support import LOOPBACK, WAIT

NICKS = ("alice", "bob", "carol", "dave")
CHAOS_SECONDS = 20.0
# Short enough that the end of the test comes soon after the chaos does.
RECEIPT_TIMEOUT = 4.0
GRACE = 2.0


# -- the ledger itself ----------------------------------------------------------------------------


def _report(message_id: int, delivered: tuple[str, ...], *failed: tuple[str, str]) -> DeliveryReport:
    return DeliveryReport(message_id, False, delivered, failed, "hi")


def test_the_ledger_accepts_delivered_and_reported_and_nothing_else() -> None:
    ledger = Ledger()
    ledger.sent("alice", 1, "hi", {"bob", "carol"}, private=False)
    ledger.record("bob", MessageReceived("alice", "hi", False))
    ledger.record("alice", _report(1, ("bob",), ("carol", "offline")))
    assert ledger.problems() == []

    lost = Ledger()  # carol is in nobody's report: the outage bug of issue 16
    lost.sent("alice", 1, "hi", {"bob", "carol"}, private=False)
    lost.record("bob", MessageReceived("alice", "hi", False))
    lost.record("alice", _report(1, ("bob",)))
    assert lost.problems() == [
        "alice's 'hi' (id 1): SILENTLY LOST for carol (shown 0 times, not in the report)"
    ]

    twice = Ledger()
    twice.sent("alice", 1, "hi", {"bob"}, private=False)
    for _ in range(2):
        twice.record("bob", MessageReceived("alice", "hi", False))
    twice.record("alice", _report(1, ("bob",)))
    assert len(twice.problems()) == 2  # shown twice; and "delivered" is not "shown once"

    unreported = Ledger()
    unreported.sent("alice", 1, "hi", {"bob"}, private=False)
    unreported.record("bob", MessageReceived("alice", "hi", False))
    assert unreported.problems() == ["alice's 'hi' (id 1): 0 reports and 0 NotSent, not exactly one"]

    claimed = Ledger()  # the report says delivered, but bob was never shown it
    claimed.sent("alice", 1, "hi", {"bob"}, private=False)
    claimed.record("alice", _report(1, ("bob",)))
    forged = Ledger()
    forged.record("bob", MessageReceived("alice", "never sent", False))
    assert len(claimed.problems()) == len(forged.problems()) == 1


def test_the_ledger_follows_copies_queued_in_a_mailbox_to_their_own_reports() -> None:
    def queued(message_id: int, delivered: tuple[str, ...], *waiting: str) -> DeliveryReport:
        return DeliveryReport(message_id, False, delivered, (), "hi", waiting)

    later = Ledger()  # carol was away: her copy waited, and her receipt came later
    later.sent("alice", 1, "hi", {"bob", "carol"}, private=False)
    later.record("bob", MessageReceived("alice", "hi", False))
    later.record("alice", queued(1, ("bob",), "carol"))
    assert later.problems() == []  # still waiting (not silent: alice was told)
    later.record("carol", MessageReceived("alice", "hi", False))
    later.record("alice", _report(1, ("carol",)))
    assert later.problems() == []
    later.record("alice", _report(1, (), ("carol", "expired")))
    assert later.problems() == ["alice's 'hi' (id 1): reported 2 times for carol"]


# -- the chaos ------------------------------------------------------------------------------------


@dataclass
class World:
    """The relay (replaced when it restarts), the clients, and what happens to them."""

    port: int
    relay: Relay
    rng: random.Random
    ledger: Ledger
    clients: dict[str, Client] = field(default_factory=dict)
    stopped: set[str] = field(default_factory=set)  # clients "stopped" (SIGSTOP-like)
    stops: list[asyncio.Task[None]] = field(default_factory=list)
    log: list[str] = field(default_factory=list)
    counter: int = 0

    async def restart(self, *, kill: bool) -> None:
        """The relay goes (says goodbye, or is killed without a word), and a new one takes
        its port after a moment."""
        if kill:
            await _kill(self.relay)
        else:
            await self.relay.stop("restarting")
        await asyncio.sleep(self.rng.uniform(0.0, 1.0))  # the outage: a time, not a wait
        self.relay = Relay(LOOPBACK, self.port, key=self.relay.core.key)  # the same relay
        await self.relay.start()
        self.log.append("relay killed" if kill else "relay restarted")

    def cut(self) -> None:
        """One client's connection breaks (from the relay's end or the client's)."""
        nick = self.rng.choice(NICKS)
        conn = self.relay.core.online.get(nick)
        transport = self.relay.transport(conn) if conn is not None else None
        if self.rng.random() < 0.5:
            transport = self.clients[nick].connection._transport
        if transport is not None and not transport.is_closing():
            transport.abort()
            self.log.append(f"cut {nick}")

    async def stop_and_continue(self) -> None:
        """One client stops (reads nothing, types nothing, and the relay reads nothing from
        it), then goes on."""
        going = [nick for nick in NICKS if nick not in self.stopped]
        if len(going) < 2:
            return  # someone must be left to talk
        nick = self.rng.choice(going)
        conn = self.relay.core.online.get(nick)
        transports = [self.clients[nick].connection._transport]
        transports.append(self.relay.transport(conn) if conn is not None else None)
        for transport in transports:
            if transport is not None:
                transport.pause_reading()
        self.stopped.add(nick)
        self.log.append(f"stopped {nick}")
        await asyncio.sleep(self.rng.uniform(0.3, 2.0))  # how long it is stopped
        for transport in transports:
            if transport is not None:
                transport.resume_reading()  # a no-op on one closed meanwhile
        self.stopped.discard(nick)

    def type_something(self) -> None:
        """A client that is not stopped types a room line or a private message."""
        sender = self.rng.choice([nick for nick in NICKS if nick not in self.stopped])
        client = self.clients[sender]
        self.counter += 1
        text = f"{sender} #{self.counter}"
        to = self.rng.choice([nick for nick in NICKS if nick != sender]) if self.rng.random() < 0.3 else None
        # Whom it is meant for: the room as the sender sees it (its last view, if the relay
        # is away), or the one person.
        intended = {to} if to is not None else set(client.connection.core.peers)
        try:
            message_id = client.send_room("#lobby", text) if to is None else client.send_private(to, text)
        except CommandError as exc:  # told at once: "nobody else is online", "bob is not online"
            self.ledger.refuse(sender, text, str(exc))
            return
        self.ledger.sent(sender, message_id, text, intended, private=to is not None)


async def _kill(relay: Relay) -> None:
    """As SIGKILL would: every socket gone at once, no goodbye."""
    assert relay._server is not None and relay._sweeper is not None
    relay._server.close()
    relay._sweeper.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await relay._sweeper
    for link in [*relay._links.values(), *relay._closing.values()]:
        if link.transport is not None:
            link.transport.abort()
    relay._server = None


async def _traffic(world: World, until: float) -> None:
    loop = asyncio.get_running_loop()
    while loop.time() < until:
        world.type_something()
        await asyncio.sleep(world.rng.uniform(0.02, 0.12))  # the pace of typing


async def _chaos(world: World, until: float) -> None:
    loop = asyncio.get_running_loop()
    while loop.time() < until:
        await asyncio.sleep(world.rng.uniform(0.5, 2.5))  # the time between mishaps
        choice = world.rng.random()
        if choice < 0.2:
            await world.restart(kill=False)
        elif choice < 0.4:
            await world.restart(kill=True)
        elif choice < 0.7:
            world.cut()
        else:
            world.stops.append(asyncio.create_task(world.stop_and_continue()))


async def _show(world: World, nick: str) -> None:
    client = world.clients[nick]
    while True:
        world.ledger.record(nick, await client.events.get())


@pytest.mark.slow
@pytest.mark.timeout(150)
async def test_nothing_is_silently_lost_whatever_happens_to_the_relay_and_the_clients() -> None:
    seed = int(os.environ.get("E2ECHAT_CHAOS_SEED") or secrets.randbelow(2**32))
    world = World(0, Relay(LOOPBACK, 0), random.Random(seed), Ledger())
    await world.relay.start()
    world.port = world.relay.port
    shows: list[asyncio.Task[None]] = []
    try:
        for nick in NICKS:
            client = Client(
                LOOPBACK,
                world.port,
                nick,
                PrivateKey.generate(),
                KnownPeers(),  # pins outlive connections, as a profile's do
                # Each on its own backoff: after a restart they are back one by one.
                backoff=Backoff(first=world.rng.uniform(0.05, 1.0), cap=1.5),
                grace=GRACE,
                receipt_timeout=RECEIPT_TIMEOUT,
            )
            await client.open(timeout=WAIT)
            world.clients[nick] = client
            shows.append(asyncio.create_task(_show(world, nick)))
        loop = asyncio.get_running_loop()
        until = loop.time() + CHAOS_SECONDS
        await asyncio.gather(_traffic(world, until), _chaos(world, until))
        await asyncio.gather(*world.stops)  # every stopped client goes on
        # The end, as a user quitting would: wait (bounded) for everything to be accounted
        # for; whatever is not by then is reported.
        bound = GRACE + RECEIPT_TIMEOUT + 5.0
        await asyncio.gather(*(client.wait_settled(bound) for client in world.clients.values()))
        for client in world.clients.values():
            client.give_up("the test is over")
    finally:
        for client in world.clients.values():
            await client.close()
        await world.relay.stop()
        for task in shows:
            task.cancel()
        await asyncio.gather(*shows, return_exceptions=True)
    for nick, client in world.clients.items():
        while not client.events.empty():
            world.ledger.record(nick, client.events.get_nowait())

    problems = world.ledger.problems()
    story = f"seed {seed}: {world.ledger.summary()}; {', '.join(world.log)}"
    assert not problems, f"{story}\n" + "\n".join(problems[:40])
    # The chaos happened, and most messages got through it.
    assert len(world.log) >= 4, story
    assert sum(len(m.intended) for m in world.ledger.messages.values()) > 200, story
    print(story)
