"""A cluster under steady traffic while something breaks: a relay killed (``kill -9``), the
NATS server restarted, a relay stopped (SIGSTOP) past the time the others wait for it and
then continued. Every client can use every relay (``--host A,B,C``). A ledger checks that
every message ended, for each person it was meant for, delivered (receipt, and shown
exactly once) or reported NOT delivered to its sender: none silently lost, none shown
twice."""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from ledger import Ledger
from nacl.public import PrivateKey

from e2echat.client.core import MessageReceived
from e2echat.client.reconnect import Backoff, Client
from e2echat.client.trust import KnownPeers
from e2echat.errors import CommandError
from e2echat.relay.cluster.wire import DEAD_AFTER

from nats_support import NatsServer
from support import LOOPBACK, WAIT, start_relay_process

NICKS = ("alice", "bob", "carol", "dave", "erin", "frank")
RELAYS = 3
TRAFFIC_SECONDS = 12.0
# When the mishap comes: the clients have been chatting a while.
MISHAP_AT = 3.0
RECEIPT_TIMEOUT = 4.0
GRACE = 2.0


@dataclass
class World:
    server: NatsServer
    key_path: Path
    processes: list[asyncio.subprocess.Process] = field(default_factory=list)
    ports: list[int] = field(default_factory=list)
    clients: dict[str, Client] = field(default_factory=dict)
    ledger: Ledger = field(default_factory=Ledger)
    rng: random.Random = field(default_factory=lambda: random.Random(21))
    counter: int = 0

    async def start_relays(self) -> None:
        for _ in range(RELAYS):
            args = ("--port", "0", "--no-announce", "--log-level", "warning", "--cluster", self.server.url)
            process, port, _ = await start_relay_process(*args, "--key", str(self.key_path))
            self.processes.append(process)
            self.ports.append(port)

    async def start_clients(self) -> None:
        for number, nick in enumerate(NICKS):
            # Spread over the relays; each client knows all of them, its own first.
            first = number % RELAYS
            order = [self.ports[(first + step) % RELAYS] for step in range(RELAYS)]
            client = Client(
                LOOPBACK,
                order[0],
                nick,
                PrivateKey.generate(),
                KnownPeers(),
                backoff=Backoff(first=self.rng.uniform(0.1, 0.5), cap=1.0),
                grace=GRACE,
                receipt_timeout=RECEIPT_TIMEOUT,
                fallbacks=[(LOOPBACK, port) for port in order[1:]],
            )
            await client.open(timeout=WAIT)
            self.clients[nick] = client

    def type_something(self) -> None:
        sender = self.rng.choice(NICKS)
        client = self.clients[sender]
        self.counter += 1
        text = f"{sender} #{self.counter}"
        # Room lines (the room's members are on every relay) and private messages.
        to = self.rng.choice([nick for nick in NICKS if nick != sender]) if self.rng.random() < 0.3 else None
        # Whom it is meant for: the room as the sender sees it, or the one person.
        intended = {to} if to is not None else set(client.connection.core.peers)
        try:
            message_id = client.send_room("#lobby", text) if to is None else client.send_private(to, text)
        except CommandError as exc:  # told at once: "nobody else is online", "bob is not online"
            self.ledger.refuse(sender, text, str(exc))
            return
        self.ledger.sent(sender, message_id, text, intended, private=to is not None)

    def on(self, port: int) -> list[str]:
        return [nick for nick, client in self.clients.items() if client.port == port]


@contextlib.asynccontextmanager
async def world(server: NatsServer, tmp_path: Path) -> AsyncIterator[World]:
    here = World(server, tmp_path / "relay.key")
    shows: list[asyncio.Task[None]] = []
    try:
        await here.start_relays()
        await here.start_clients()
        shows += [asyncio.create_task(_show(here, nick)) for nick in NICKS]
        await asyncio.wait_for(_everyone_sees_everyone(here), 2 * WAIT)
        yield here
    finally:
        for client in here.clients.values():
            await client.close()
        for process in here.processes:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGCONT)
                    process.kill()
            await process.wait()
        for task in shows:
            task.cancel()
        await asyncio.gather(*shows, return_exceptions=True)


async def _show(here: World, nick: str) -> None:
    client = here.clients[nick]
    while True:
        here.ledger.record(nick, await client.events.get())


async def _everyone_sees_everyone(here: World) -> None:
    while not all(set(c.connection.core.peers) >= set(NICKS) - {n} for n, c in here.clients.items()):
        await asyncio.sleep(0.05)


async def _run(here: World, mishap: Callable[[], Awaitable[None]]) -> str:
    """Traffic for ``TRAFFIC_SECONDS`` with ``mishap`` at ``MISHAP_AT``; then everything
    accounted for (bounded), and the ledger checked. Returns its summary."""
    loop = asyncio.get_running_loop()
    start = loop.time()

    async def traffic() -> None:
        while loop.time() - start < TRAFFIC_SECONDS:
            here.type_something()
            await asyncio.sleep(here.rng.uniform(0.03, 0.1))

    async def later() -> None:
        await asyncio.sleep(MISHAP_AT)
        await mishap()

    await asyncio.gather(traffic(), later())
    bound = GRACE + RECEIPT_TIMEOUT + 2 * WAIT
    await asyncio.gather(*(client.wait_settled(bound) for client in here.clients.values()))
    for client in here.clients.values():
        client.give_up("the test is over")
    for nick, client in here.clients.items():
        while not client.events.empty():
            here.ledger.record(nick, client.events.get_nowait())
    problems = here.ledger.problems()
    story = here.ledger.summary()
    assert not problems, f"{story}\n" + "\n".join(problems[:40])
    assert sum(len(m.intended) for m in here.ledger.messages.values()) > 100, story
    return story


async def _all_chat_again(here: World) -> None:
    """Every client is online again and a line from each reaches everyone else."""
    await asyncio.wait_for(_until_online(here), 3 * WAIT)
    try:
        await asyncio.wait_for(_everyone_sees_everyone(here), 3 * WAIT)
    except TimeoutError:
        raise AssertionError(
            [(n, c.port, c.online, sorted(c.connection.core.peers)) for n, c in here.clients.items()]
        ) from None


async def _until_online(here: World) -> None:
    while not all(client.online for client in here.clients.values()):
        await asyncio.sleep(0.05)


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_a_relay_killed_under_traffic_loses_nothing_silently(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    async with world(nats_server, tmp_path) as here:
        doomed = here.ports[0]
        moved = here.on(doomed)
        assert moved

        async def kill() -> None:
            here.processes[0].kill()

        print(await _run(here, kill))
        await _all_chat_again(here)
        assert not here.on(doomed)  # its clients are on the other relays
        assert await _a_line_gets_through(here, moved[0])
        await asyncio.wait_for(_one_room_everywhere(here), 3 * WAIT)


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_a_nats_restart_under_traffic_loses_nothing_silently(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    async with world(nats_server, tmp_path) as here:

        async def restart() -> None:
            await asyncio.to_thread(nats_server.restart)

        print(await _run(here, restart))
        await _all_chat_again(here)
        for nick in NICKS[:RELAYS]:  # one on each relay: across the cluster again
            assert await _a_line_gets_through(here, nick)
        # The relays still hear of each other's newcomers (their watch of the bucket
        # outlived the restart).
        newcomer = Client(LOOPBACK, here.ports[0], "zed", PrivateKey.generate(), KnownPeers())
        await newcomer.open(timeout=WAIT)
        try:
            elsewhere = here.clients[here.on(here.ports[1])[0]]
            await asyncio.wait_for(_until(lambda: "zed" in elsewhere.connection.core.peers), WAIT)
        finally:
            await newcomer.close()


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_a_relay_stopped_and_continued_under_traffic_loses_nothing_silently(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    async with world(nats_server, tmp_path) as here:
        stopped = here.processes[1]

        async def stop_and_continue() -> None:
            stopped.send_signal(signal.SIGSTOP)
            await asyncio.sleep(DEAD_AFTER + 2)  # taken for dead by the others meanwhile
            stopped.send_signal(signal.SIGCONT)

        print(await _run(here, stop_and_continue))
        await _all_chat_again(here)
        for nick in NICKS[:RELAYS]:
            assert await _a_line_gets_through(here, nick)


async def _a_line_gets_through(here: World, sender: str) -> bool:
    """A line from ``sender`` to each of the others is shown to them (the ledger is
    done: its shows are not counted)."""
    text = f"after it all, from {sender}"
    for nick in NICKS:
        if nick != sender:
            here.clients[sender].send_private(nick, text)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 3 * WAIT
    missing = set(NICKS) - {sender}
    while missing and loop.time() < deadline:
        missing = {
            nick
            for nick in missing
            if (nick, sender, text, True) not in here.ledger.shown
            and not _shown_now(here.clients[nick], sender, text)
        }
        await asyncio.sleep(0.05)
    return not missing


async def _one_room_everywhere(here: World) -> None:
    """Every client sees the same members of #lobby (all of them: the killed relay's
    clients kept their memberships) and so the same safety number."""

    def agreed() -> bool:
        rooms = [(nick, client.connection.core.room("#lobby")) for nick, client in here.clients.items()]
        if not all(room is not None and set(room.others) == set(NICKS) - {nick} for nick, room in rooms):
            return False
        numbers = {client.connection.core.room_safety_number("#lobby") for client in here.clients.values()}
        return len(numbers) == 1

    await _until(agreed)


def _shown_now(client: Client, sender: str, text: str) -> bool:
    while not client.events.empty():
        event = client.events.get_nowait()
        if isinstance(event, MessageReceived) and event.sender == sender and event.text == text:
            return True
    return False


async def _until(condition: Callable[[], bool]) -> None:
    while not condition():
        await asyncio.sleep(0.05)
