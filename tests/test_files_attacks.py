"""File transfers through a relay that lies: it drops, reorders, repeats, cuts or flips
bits in chunks, or swaps the chunks of two transfers. The receiver never keeps a wrong
file (each chunk is sealed in the pair's session, the whole file is checked against the
hash in the offer), says what it saw, and the transfer goes on from the last chunk it
wrote."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from e2echat.client import fileparts as fp
from e2echat.client.core import MessagesMissing, SecurityWarning
from e2echat.client.events import MessageReceived, PeerJoined
from e2echat.client.fileevents import FileOffered, TransferChanged, TransferDone
from e2echat.wire import messages as m

from hostile import HostileRelay, deliveries, flip_bit
from relay_frames import Outgoing
from support import FAST, WAIT, FilePeer, Peer, connect, file_peers, make_file, next_event, running

#: a transfer takes longer than a message, the more so on a loaded machine
pytestmark = pytest.mark.timeout(90)

#: bodies this large are chunks: a chat line is at most 16 KiB
CHUNK_BODY = 60_000
#: the transfers in these tests resend soon: a lost chunk costs half a second, not four
QUICK = {"resend_after": 0.5, "remind_after": 1.0}
CHUNK = fp.CHUNK_SIZE
#: sixteen chunks, enough for every attack to strike more than once
SIZE = 16 * fp.CHUNK_SIZE

Attack = Callable[[HostileRelay, Outgoing, m.Deliver], list[Outgoing]]


@contextlib.asynccontextmanager
async def through(attack: Attack, tmp_path: Path) -> AsyncIterator[tuple[FilePeer, FilePeer]]:
    """alice and bob, each with transfers, through a relay that makes ``attack`` on every
    delivery to bob."""

    def tamper(relay: HostileRelay, action: Outgoing, deliver: m.Deliver) -> list[Outgoing]:
        if relay.nick(action.conn) != "bob" or len(deliver.body) < CHUNK_BODY:
            return [action]
        return attack(relay, action, deliver)

    async with (
        running(HostileRelay(deliveries(tamper), **FAST)) as relay,
        file_peers(relay, tmp_path, "alice", "bob", transfers=QUICK) as (alice, bob),
    ):
        yield alice, bob


def every(nth: int, attack: Attack, *, times: int = 4) -> Attack:
    """``attack`` on every ``nth`` chunk body, ``times`` times in all; the rest pass."""
    count = [0, 0]

    def each(relay: HostileRelay, action: Outgoing, deliver: m.Deliver) -> list[Outgoing]:
        count[0] += 1
        if count[0] % nth or count[1] >= times:
            return [action]
        count[1] += 1
        return attack(relay, action, deliver)

    return each


def _dropped(relay: HostileRelay, action: Outgoing, deliver: m.Deliver) -> list[Outgoing]:
    return []


def _repeated(relay: HostileRelay, action: Outgoing, deliver: m.Deliver) -> list[Outgoing]:
    return [action, action]


def _cut(relay: HostileRelay, action: Outgoing, deliver: m.Deliver) -> list[Outgoing]:
    return [Outgoing(action.conn, m.Deliver(deliver.sender, deliver.body[:-100]))]


def _flipped(relay: HostileRelay, action: Outgoing, deliver: m.Deliver) -> list[Outgoing]:
    return [Outgoing(action.conn, m.Deliver(deliver.sender, flip_bit(deliver.body, 8 * 30_000 + 3)))]


def reordered() -> Attack:
    """Holds a chunk back and lets it go after the next one, a few times."""
    held: list[Outgoing] = []
    count = [0]

    def attack(relay: HostileRelay, action: Outgoing, deliver: m.Deliver) -> list[Outgoing]:
        count[0] += 1
        if held:
            return [action, held.pop()]
        if count[0] % 3 == 0 and count[0] < 40:
            held.append(action)
            return []
        return [action]

    return attack


def tail_dropped() -> Attack:
    """Drops the last three chunks of the file the first time they go: nothing comes
    after them until the sender, hearing no acknowledgement, goes back."""
    count = [0]
    chunks = SIZE // fp.CHUNK_SIZE

    def attack(relay: HostileRelay, action: Outgoing, deliver: m.Deliver) -> list[Outgoing]:
        count[0] += 1
        return [] if chunks - 3 < count[0] <= chunks else [action]

    return attack


ATTACKS: dict[str, tuple[Callable[[], Attack], type | None]] = {
    # what the relay does, and what bob is told of it (the AEAD catches the rest)
    # (not "messages missing": every message skipped was a chunk, and is sent again)
    "dropped": (lambda: every(3, _dropped), None),
    "dropped-at-the-end": (tail_dropped, None),
    "reordered": (reordered, None),
    "repeated": (lambda: every(2, _repeated), SecurityWarning),
    "cut": (lambda: every(3, _cut), SecurityWarning),
    "bit-flipped": (lambda: every(3, _flipped), SecurityWarning),
}


@pytest.mark.parametrize("attack", ATTACKS, ids=ATTACKS)
async def test_a_hostile_relay_never_makes_the_receiver_keep_a_wrong_file(
    attack: str, tmp_path: Path
) -> None:
    make, told = ATTACKS[attack]
    source = tmp_path / "data.bin"
    data = make_file(source, SIZE)
    async with through(make(), tmp_path) as (alice, bob):
        await alice.pump.send("bob", source)
        bob.transfers.accept((await next_event(bob, FileOffered)).number)
        done = await next_event(bob, TransferDone)
        assert done.ok, done
        assert Path(done.path).read_bytes() == data
        assert (await next_event(alice, TransferDone)).ok
        if told is not None:  # bob said what he saw
            assert any(isinstance(event, told) for event in bob.peer.seen), attack
        if attack.startswith("dropped"):
            assert not any(isinstance(event, MessagesMissing) for event in bob.peer.seen)
    assert [p.name for p in (tmp_path / "bob").iterdir()] == ["data.bin"]  # no partial file left


async def test_chunks_swapped_between_two_transfers_go_to_neither(tmp_path: Path) -> None:
    """Two files on their way at once: the relay delivers each chunk of one in the place
    of one of the other. Each chunk names its transfer inside the encryption, so both
    files arrive whole."""
    held: list[Outgoing] = []
    swaps = [0]

    def swap(relay: HostileRelay, action: Outgoing, deliver: m.Deliver) -> list[Outgoing]:
        if swaps[0] >= 10:
            return [action]
        if not held:
            held.append(action)
            return []
        swaps[0] += 1
        return [action, held.pop()]  # the later one first

    first, second = tmp_path / "first.bin", tmp_path / "second.bin"
    data = {"first.bin": make_file(first, SIZE), "second.bin": make_file(second, SIZE // 2 + 7)}
    async with through(swap, tmp_path) as (alice, bob):
        for path in (first, second):
            await alice.pump.send("bob", path)
        for _ in range(2):
            bob.transfers.accept((await next_event(bob, FileOffered)).number)
        landed = {}
        for _ in range(2):
            done = await next_event(bob, TransferDone)
            assert done.ok, done
            landed[done.name] = Path(done.path).read_bytes()
    assert {name: hashlib.sha256(content).digest() for name, content in landed.items()} == {
        name: hashlib.sha256(content).digest() for name, content in data.items()
    }
    assert swaps[0] == 10


# -- a chat message lost between file parts (the session's note of what came last) ---------


@contextlib.asynccontextmanager
async def dropping(
    tmp_path: Path, bare: str = "alice", other: str = "bob"
) -> AsyncIterator[tuple[Peer, FilePeer, Callable[[bool], Awaitable[None]]]]:
    """``bare`` (a bare client: it writes each part by hand) and ``other`` (with
    transfers), through a relay that drops the deliveries to ``other`` it is told to:
    ``passed(drop)`` waits for the next delivery from ``bare`` to ``other``, dropped if
    ``drop``."""
    plan: list[bool] = []
    went: asyncio.Queue[bool] = asyncio.Queue()

    def tamper(relay: HostileRelay, action: Outgoing, deliver: m.Deliver) -> list[Outgoing]:
        if relay.nick(action.conn) != other or deliver.sender != bare or not plan:
            return [action]
        drop = plan.pop(0)
        went.put_nowait(drop)
        return [] if drop else [action]

    async def passed(drop: bool) -> None:
        plan.append(drop)
        await asyncio.wait_for(went.get(), WAIT)

    async with running(HostileRelay(deliveries(tamper), **FAST)) as relay:
        writer = await connect(relay, bare)
        try:
            async with file_peers(relay, tmp_path, other) as (reader,):
                await writer.next(PeerJoined, lambda e: e.nick == other)
                writer.connection.send_private(other, "hello")  # (the session starts)
                await passed(False)
                await reader.peer.next(MessageReceived, lambda e: e.text == "hello")
                yield writer, reader, passed
        finally:
            await writer.connection.close()


@pytest.mark.parametrize("lost", [True, False], ids=["lost", "kept"])
async def test_a_chat_message_lost_after_a_chat_message_between_file_parts_is_missing(
    lost: bool, tmp_path: Path
) -> None:
    """alice sends chunk 0, chunk 1 (lost), a chat line (bob hears one message is
    missing: chunk 1, for all he knows), a second chat line (lost, or not), chunk 2. The
    message skipped before chunk 2 is as many as the chunks between 0 and 2, but it was
    the chat line: the session noted that the message before the gap was not a part of a
    file, so it is missing. (Without that note a relay could hide a chat line there.)"""
    data = make_file(tmp_path / "f.bin", 4 * fp.CHUNK_SIZE)
    transfer = bytes(range(16))
    digest = hashlib.blake2b(data, digest_size=fp.DIGEST_SIZE).digest()
    async with dropping(tmp_path) as (alice, bob, passed):

        async def send(part: fp.Part, *, drop: bool = False) -> None:
            assert alice.connection.send_file_part("bob", fp.encode(part))
            await passed(drop)

        async def say(text: str, *, drop: bool = False) -> None:
            alice.connection.send_private("bob", text)
            await passed(drop)

        def chunk(index: int) -> fp.Chunk:
            start = index * fp.CHUNK_SIZE
            return fp.Chunk(transfer, start, data[start : start + fp.CHUNK_SIZE])

        await send(fp.Offer(transfer, "f.bin", len(data), fp.CHUNK_SIZE, digest))
        bob.transfers.accept((await next_event(bob, FileOffered)).number)
        await next_event(bob, TransferChanged, lambda e: e.state == "accepted")
        await send(chunk(0))
        await send(chunk(1), drop=True)
        await say("between the parts")
        assert (await bob.peer.next(MessagesMissing)).count == 1  # chunk 1, as far as bob can tell
        await say("lost, or not", drop=lost)
        await send(chunk(2))
        await say("after the parts")
        await bob.peer.next(MessageReceived, lambda e: e.text == "after the parts")
    missing = [event.count for event in bob.peer.seen if isinstance(event, MessagesMissing)]
    assert missing == ([1, 1] if lost else [1])


async def test_file_parts_lost_between_file_parts_are_not_missing(tmp_path: Path) -> None:
    """The twin: chunk 1 lost between chunks 0 and 2 (a relay that drops it, or
    restarted) is sent again by the transfer; the chat does not say a message is missing."""
    data = make_file(tmp_path / "f.bin", 4 * fp.CHUNK_SIZE)
    transfer = bytes(range(16))
    digest = hashlib.blake2b(data, digest_size=fp.DIGEST_SIZE).digest()
    async with dropping(tmp_path) as (alice, bob, passed):
        offer = fp.Offer(transfer, "f.bin", len(data), CHUNK, digest)
        assert alice.connection.send_file_part("bob", fp.encode(offer))
        await passed(False)
        bob.transfers.accept((await next_event(bob, FileOffered)).number)
        await next_event(bob, TransferChanged, lambda e: e.state == "accepted")
        for index in range(3):
            part = fp.Chunk(transfer, index * CHUNK, data[index * CHUNK : (index + 1) * CHUNK])
            assert alice.connection.send_file_part("bob", fp.encode(part))
            await passed(index == 1)
        alice.connection.send_private("bob", "after the parts")
        await passed(False)
        await bob.peer.next(MessageReceived, lambda e: e.text == "after the parts")
    assert not any(isinstance(event, MessagesMissing) for event in bob.peer.seen)


@pytest.mark.parametrize("lost", [True, False], ids=["lost", "kept"])
async def test_a_chat_message_lost_among_acknowledgements_is_missing(lost: bool, tmp_path: Path) -> None:
    """bob (who receives alice's file, and writes each part by hand) sends Accept, Ack,
    Ack (lost), a chat line (lost, or not), Ack (lost), Ack. Each Ack counts the parts
    of the transfer bob sent. Kept, the chat line's gap is held until the last Ack: two
    parts between the Acks that came, two messages skipped: acknowledgements lost, not
    missing. Lost, three messages are skipped where two parts went: one is missing."""
    source = tmp_path / "f.bin"
    make_file(source, 8 * CHUNK)
    async with dropping(tmp_path, bare="bob", other="alice") as (bob, alice, passed):
        await alice.pump.send("bob", source)
        (sending,) = alice.transfers.listing()
        transfer = sending.transfer_id

        async def send(part: fp.Part, *, drop: bool = False) -> None:
            assert bob.connection.send_file_part("alice", fp.encode(part))
            await passed(drop)

        await send(fp.Accept(transfer, 0))
        await next_event(alice, TransferChanged, lambda e: e.state == "accepted")
        await send(fp.Ack(transfer, CHUNK, 2))
        await send(fp.Ack(transfer, 2 * CHUNK, 3), drop=True)
        bob.connection.send_private("alice", "among the acknowledgements")
        await passed(lost)
        await send(fp.Ack(transfer, 3 * CHUNK, 4), drop=True)
        await send(fp.Ack(transfer, 4 * CHUNK, 5))
        bob.connection.send_private("alice", "after the parts")
        await passed(False)
        await next_event(alice, MessageReceived, lambda e: e.text == "after the parts")
        missing = [event.count for event in alice.peer.seen if isinstance(event, MessagesMissing)]
        assert missing == ([3] if lost else [])


async def test_acknowledgements_lost_on_the_way_back_are_not_missing(tmp_path: Path) -> None:
    """The relay drops bob's 3rd and 5th messages to alice (acknowledgements: 64 chunks
    are at least 8 of them, one a window): the file arrives, and alice, whose next
    acknowledgement counts the parts bob sent, is not told messages are missing."""
    dropped: list[int] = []
    count = [0]

    def tamper(relay: HostileRelay, action: Outgoing, deliver: m.Deliver) -> list[Outgoing]:
        if relay.nick(action.conn) != "alice" or deliver.sender != "bob":
            return [action]
        count[0] += 1
        if count[0] in (3, 5):
            dropped.append(count[0])
            return []
        return [action]

    source = tmp_path / "data.bin"
    data = make_file(source, 64 * CHUNK)
    async with (
        running(HostileRelay(deliveries(tamper), **FAST)) as relay,
        # (not QUICK: a resend, on a loaded machine, would have bob answer alice's probe
        # with an accept, which does not count the parts before it)
        file_peers(relay, tmp_path, "alice", "bob") as (alice, bob),
    ):
        await alice.pump.send("bob", source)
        bob.transfers.accept((await next_event(bob, FileOffered)).number)
        done = await next_event(bob, TransferDone)
        assert done.ok and Path(done.path).read_bytes() == data
        assert (await next_event(alice, TransferDone)).ok
    assert dropped == [3, 5]
    assert not any(isinstance(event, MessagesMissing) for event in alice.peer.seen)
