"""Mailboxes through real relays: `e2echat relay --store` across restarts and ``kill -9``,
and the mailbox options on its command line."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path

import pytest
from nacl.public import PrivateKey
from test_cli import _Listening, _one_clear_line

from e2echat.relay.server import Relay
from e2echat.relay.sqlite_store import SqliteStore
from e2echat.wire import messages as m
from e2echat.wire.objects import Envelope

from support import WAIT, RawClient, run_cli, running, start_relay_process

FAST = ("--rate", "100000", "--burst", "100000", "--byte-rate", "1000000000", "--byte-burst", "1000000000")


async def test_a_relay_restarted_on_its_sqlite_store_finds_everything_again(tmp_path: Path) -> None:
    path, key, bob = tmp_path / "relay.db", PrivateKey.generate(), PrivateKey.generate()
    async with running(Relay("127.0.0.1", 0, store=SqliteStore(path), key=key)) as relay:
        away = await RawClient.open(relay)
        await away.register("bob", bob)
        away.close()
        async with asyncio.timeout(WAIT):
            while "bob" in relay.core.online:
                await asyncio.sleep(0.01)
        alice = await RawClient.open(relay)
        await alice.register("alice")
        for number in range(3):
            alice.send(m.Send(number, (Envelope("bob", bytes([number + 1]) * 41),)))
            assert (await alice.receive_kind(m.Routed)).queued == ("bob",)
        alice.close()
    async with running(Relay("127.0.0.1", 0, store=SqliteStore(path), key=key)) as again:
        carol = await RawClient.open(again)
        await carol.register("carol")
        members = await carol.receive_kind(m.Members)
        assert sorted(member.nick for member in members.away) == ["alice", "bob"]
        carol.send(m.Fetch(("bob",)))
        (bundle,) = (await carol.receive_kind(m.Bundles)).bundles
        assert bundle.identity_key == bob.public_key
        back = await RawClient.open(again)
        await back.register("bob", bob)
        mail = [await back.receive_kind(m.Mail) for _ in range(3)]
        assert [item.body[0] for item in mail] == [1, 2, 3]
        for client in (carol, back):
            client.close()


@pytest.mark.timeout(60)
async def test_kill_9_loses_no_message_a_sender_was_told_is_queued(tmp_path: Path) -> None:
    """Steady traffic to someone away, the relay killed mid-stream: after a restart on the
    same store, every message whose sender heard ``queued`` is in the mailbox."""
    store, key = tmp_path / "relay.db", tmp_path / "relay.key"
    args = ("--port", "0", "--store", str(store), "--key", str(key), *FAST)
    bob = PrivateKey.generate()
    process, port, _ = await start_relay_process(*args)
    confirmed: set[int] = set()
    try:
        alice = await RawClient.open(_Listening(port))  # type: ignore[arg-type]
        await alice.register("alice")
        away = await RawClient.open(_Listening(port))  # type: ignore[arg-type]
        await away.register("bob", bob)
        away.close()
        await alice.receive_kind(m.PeerLeft)

        async def send() -> None:
            for number in range(1_000_000):
                alice.send(m.Send(number, (Envelope("bob", number.to_bytes(8, "big") + bytes(33)),)))
                await alice.writer.drain()
                if number % 20 == 0:
                    await asyncio.sleep(0.001)

        async def read() -> None:
            while (message := await alice.receive()) is not None:
                if isinstance(message, m.Routed) and message.queued == ("bob",):
                    confirmed.add(message.id)

        sending, reading = asyncio.create_task(send()), asyncio.create_task(read())
        async with asyncio.timeout(WAIT):
            while len(confirmed) < 600:  # under the 1,000 a mailbox holds
                await asyncio.sleep(0.01)
                assert not reading.done(), (reading, len(confirmed))
        process.kill()  # SIGKILL: no goodbye, no flush
        await process.wait()
        for task in (sending, reading):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError, OSError):
                await task
        alice.close()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == -signal.SIGKILL
    process, port, _ = await start_relay_process(*args)
    try:
        back = await RawClient.open(_Listening(port))  # type: ignore[arg-type]
        await back.register("bob", bob)
        received: set[int] = set()
        async with asyncio.timeout(3 * WAIT):
            while not confirmed <= received:
                item = await back.receive_kind(m.Mail)
                received.add(int.from_bytes(item.body[:8], "big"))
                back.send(m.Ack(item.seq))
        back.close()
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), WAIT)


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--mailbox-ttl", "7x"),
        ("--mailbox-ttl", "0"),
        ("--mailbox-bytes", "16 furlongs"),
        ("--mailbox-total", "1.5GiB"),
        ("--mailbox-messages", "many"),
    ],
)
async def test_a_bad_mailbox_limit_is_one_line_and_a_non_zero_exit(option: str, value: str) -> None:
    code, _, err = await run_cli("relay", "--port", "0", option, value)
    assert code == 2
    line = _one_clear_line(err)
    assert option in line and value in line


async def test_the_mailbox_options_say_their_units() -> None:
    code, out, _ = await run_cli("relay", "--help")
    assert code == 0
    for text in (
        "--store FILE",
        "--mailbox-messages N",
        "(default: 16MiB)",
        "(default: 7d)",
        "(default: 1GiB)",
    ):
        assert text in out
