"""File transfers end to end: a real relay, real clients, files on a real disk."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from e2echat.client.fileevents import FileOffered, TransferDone
from e2echat.client.filepump import FilePump
from e2echat.client.files import Transfers
from e2echat.relay.server import Relay

from support import Peer, connect, running_relay

#: a transfer of 20 MiB on a loaded machine: bounded, but generously
TRANSFER_WAIT = 60.0

E = TypeVar("E")


class FilePeer:
    """A connected client with its transfers, its pump and its downloads directory."""

    def __init__(self, peer: Peer, transfers: Transfers, pump: FilePump) -> None:
        self.peer = peer
        self.transfers = transfers
        self.pump = pump

    @property
    def nick(self) -> str:
        return self.peer.nick


@contextlib.asynccontextmanager
async def file_peers(
    relay: Relay, tmp_path: Path, *nicks: str, **options: Any
) -> AsyncIterator[list[FilePeer]]:
    made: list[FilePeer] = []
    try:
        for nick in nicks:
            transfers = Transfers()
            peer = await connect(relay, nick, files=transfers, **options)
            pump = FilePump(peer.connection, transfers, tmp_path / nick)
            pump.start()
            made.append(FilePeer(peer, transfers, pump))
        for one in made:
            others = {other.nick for other in made} - {one.nick}
            while not set(one.peer.connection.core.peers) >= others:
                one.peer.seen.append(await one.peer.next_any_event())
        yield made
    finally:
        for one in made:
            await one.pump.close()
            await one.peer.connection.close()


async def next_event(peer: FilePeer, kind: type[E], wait: float = TRANSFER_WAIT) -> E:
    """The next event of ``kind`` ``peer`` sees, within ``wait`` seconds (a transfer takes
    longer than a message)."""

    async def find() -> E:
        while True:
            event = await peer.peer.connection.events.get()
            peer.peer.seen.append(event)
            if isinstance(event, kind):
                return event

    return await asyncio.wait_for(find(), wait)


def make_file(path: Path, size: int) -> bytes:
    data = os.urandom(size)  # test data only: no secret
    path.write_bytes(data)
    return data


@pytest.mark.parametrize(
    "size",
    [0, 1, 64 * 1024, 64 * 1024 + 1, 20 * 1024 * 1024],
    ids=["empty", "one-byte", "one-chunk", "chunk-and-a-byte", "20MiB"],
)
async def test_a_file_arrives_whole(tmp_path: Path, size: int) -> None:
    source = tmp_path / "report.pdf"
    data = make_file(source, size)
    async with (
        running_relay(
            byte_rate=64 * 1024 * 1024, byte_burst=64 * 1024 * 1024, rate=5000, burst=5000
        ) as relay,
        file_peers(relay, tmp_path, "alice", "bob") as (alice, bob),
    ):
        await alice.pump.send("bob", source)
        offer = await bob.peer.next(FileOffered)
        assert (offer.sender, offer.name, offer.size) == ("alice", "report.pdf", size)
        bob.transfers.accept(offer.number)
        done = await next_event(bob, TransferDone)
        assert done.ok, done
        landed = Path(done.path)
        assert landed == tmp_path / "bob" / "report.pdf"
        assert hashlib.sha256(landed.read_bytes()).digest() == hashlib.sha256(data).digest()
        assert landed.stat().st_mode & 0o777 == 0o600
        sent = await next_event(alice, TransferDone)
        assert sent.ok and sent.state == "done"
        assert [p.name for p in (tmp_path / "bob").iterdir()] == ["report.pdf"]
