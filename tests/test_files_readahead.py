"""What the sender of files reads ahead stays within one bound, however many transfers
(``/send #ROOM`` makes one per member) and whatever they wait for."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from e2echat.client.fileevents import FileOffered, TransferChanged, TransferDone, TransferProgress
from e2echat.client.filepump import MAX_READ_AHEAD, FilePump
from e2echat.client.files import Transfers
from e2echat.relay.limits import Limits
from e2echat.relay.server import Relay

from support import (
    FAST,
    LOOPBACK,
    FilePeer,
    connect,
    file_peers,
    make_file,
    next_event,
    running,
    running_relay,
)

pytestmark = pytest.mark.timeout(90)


def ahead(pump: FilePump) -> int:
    return sum(len(data) for _, data in pump._ahead.values())


async def test_many_transfers_of_one_file_read_ahead_within_the_bound(tmp_path: Path) -> None:
    """Twelve transfers of a 4 MiB file, a window each, would hold 11 MiB read ahead:
    they hold at most MAX_READ_AHEAD, and every file arrives whole."""
    source = tmp_path / "big.bin"
    data = make_file(source, 4 * 1024 * 1024)
    async with running_relay(**FAST) as relay, file_peers(relay, tmp_path, "alice", "bob") as (alice, bob):
        most = 0
        read = alice.pump._read

        async def watched(due: list[tuple[Any, int, int]]) -> list[bytes]:
            nonlocal most
            chunks = await read(due)
            most = max(most, ahead(alice.pump))
            return chunks

        alice.pump._read = watched  # type: ignore[method-assign]
        count = 12
        assert count * alice.transfers.window > 2 * MAX_READ_AHEAD
        for _ in range(count):
            await alice.pump.send("bob", source)
        for _ in range(count):
            bob.transfers.accept((await next_event(bob, FileOffered)).number)
        for _ in range(count):
            done = await next_event(bob, TransferDone)
            assert done.ok and Path(done.path).read_bytes() == data, done
        assert 0 < most <= MAX_READ_AHEAD, most  # (read ahead still, within the bound)
        for _ in range(count):
            assert (await next_event(alice, TransferDone)).ok


async def test_a_paused_transfer_holds_nothing_read_ahead(tmp_path: Path) -> None:
    """bob goes mid-transfer: alice's transfer pauses, and lets go of what it read ahead."""
    source = tmp_path / "big.bin"
    make_file(source, 4 * 1024 * 1024)
    slow = Limits(byte_rate=1024 * 1024, byte_burst=1024 * 1024, rate=5000, burst=5000)  # about 4 s in all
    async with (
        running(Relay(LOOPBACK, 0, limits=slow)) as relay,
        file_peers(relay, tmp_path, "alice") as (alice,),
    ):
        transfers = Transfers()
        peer = await connect(relay, "bob", files=transfers)
        pump = FilePump(peer.connection, transfers, tmp_path / "bob")
        pump.start()
        bob = FilePeer(peer, transfers, pump)
        await alice.pump.send("bob", source)
        bob.transfers.accept((await next_event(bob, FileOffered)).number)
        while (await next_event(bob, TransferProgress)).done < 256 * 1024:
            pass
        assert ahead(alice.pump) > 0
        await bob.pump.close()
        await bob.peer.connection.close()
        await next_event(alice, TransferChanged, lambda e: e.state == "paused")
        async with asyncio.timeout(10):
            while ahead(alice.pump):
                await asyncio.sleep(0.05)
