"""Helpers for tests that use a real relay over real loopback sockets."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

from nacl.public import PrivateKey

from e2echat.client.connection import Connection
from e2echat.client.core import (
    ClientCore,
    Event,
    MessageReceived,
    MessagesMissing,
    Registered,
    SecurityWarning,
    SplitView,
)
from e2echat.client.events import ClientEvent, Disconnected
from e2echat.client.filepump import FilePump
from e2echat.client.files import Transfers
from e2echat.client.reconnect import Backoff, Client
from e2echat.client.trust import KnownPeers
from e2echat.crypto.identity import new_session_key
from e2echat.relay.server import Relay
from e2echat.wire import messages as m
from e2echat.wire.codec import decode_message, encode_message
from e2echat.wire.framing import FrameDecoder, encode_frame
from e2echat.wire.grammar import DEFAULT_ROOM

LOOPBACK = "127.0.0.1"
WAIT = 5.0  # every wait in the tests is bounded by this
REPO = Path(__file__).resolve().parent.parent

E = TypeVar("E")


@contextlib.asynccontextmanager
async def running_relay(**options: Any) -> AsyncIterator[Relay]:
    async with running(Relay(LOOPBACK, 0, **options)) as relay:
        yield relay


R = TypeVar("R", bound=Relay)


@contextlib.asynccontextmanager
async def running(relay: R) -> AsyncIterator[R]:
    await relay.start()
    try:
        yield relay
    finally:
        await relay.stop()


class Peer:
    """A real client ``Connection`` plus a record of every event it has seen."""

    def __init__(self, connection: Connection | Client) -> None:
        self.connection = connection
        self.seen: list[Any] = []

    @property
    def nick(self) -> str:
        return self.connection.nick

    async def next(self, kind: type[E], where: Callable[[E], bool] = lambda e: True) -> E:
        """The next event of ``kind`` satisfying ``where``; others are skipped (and kept in
        ``seen``). Fails after WAIT seconds."""

        async def find() -> E:
            while True:
                event = await self.connection.events.get()
                self.seen.append(event)
                if isinstance(event, kind) and where(event):
                    return event

        return await asyncio.wait_for(find(), WAIT)

    async def next_any_event(self) -> ClientEvent:
        event = await asyncio.wait_for(self.connection.events.get(), WAIT)
        self.seen.append(event)
        return event

    async def next_delivery(self) -> Event:
        """The next event that a delivered frame produces: a message, or a warning that
        something did not authenticate. Presence and trust notices are skipped."""

        async def find() -> Event:
            while True:
                event = await self.connection.events.get()
                self.seen.append(event)
                if isinstance(event, Disconnected):
                    raise AssertionError("disconnected while waiting for a delivery")
                if isinstance(event, MessageReceived | SecurityWarning | MessagesMissing | SplitView):
                    return event

        return await asyncio.wait_for(find(), WAIT)


def text_into(lines: list[str]) -> Callable[[str, str], None]:
    """A ``Chat`` writer for tests that read only the text of each line it shows."""

    def write(style: str, text: str) -> None:
        lines.append(text)

    return write


class Listening(Protocol):
    """All ``connect`` needs of a relay: its port (the relay may run in another process)."""

    @property
    def port(self) -> int: ...


async def connect(
    relay: Listening,
    nick: str,
    identity: PrivateKey | None = None,
    known_peers: KnownPeers | None = None,
    **options: Any,
) -> Peer:
    """A registered ``Connection`` (or, with ``reconnecting=True``, a ``Client`` that
    reconnects quickly) wrapped in a ``Peer``."""
    key = identity or PrivateKey.generate()
    connection: Connection | Client
    if options.pop("reconnecting", False):
        options.setdefault("backoff", Backoff(first=0.05, cap=0.2))
        connection = Client(LOOPBACK, relay.port, nick, key, known_peers, **options)
    else:
        connection = Connection(LOOPBACK, relay.port, nick, key, known_peers, **options)
    await connection.open(timeout=WAIT)
    peer = Peer(connection)
    await peer.next(Registered)
    return peer


@contextlib.asynccontextmanager
async def peers(relay: Relay, *nicks: str, **options: Any) -> AsyncIterator[list[Peer]]:
    """Connect ``nicks`` in order and wait until every one has seen all the others."""
    connected: list[Peer] = []
    try:
        for nick in nicks:
            connected.append(await connect(relay, nick, **options))
        for peer in connected:
            others = {p.nick for p in connected} - {peer.nick}
            lobby = "rooms" not in options  # all in #lobby: in each one's list of it too
            await asyncio.wait_for(_until(functools.partial(_sees_all, peer, others, lobby), peer), WAIT)
        yield connected
    finally:
        for peer in connected:
            await peer.connection.close()


def _sees_all(peer: Peer, others: set[str], lobby: bool = False) -> bool:
    core = peer.connection.core
    room = core.room(DEFAULT_ROOM) if lobby else None
    return set(core.peers) >= others and (room is None or set(room.others) >= others)


async def meet(first: Peer, second: Peer) -> None:
    """``first`` and ``second`` exchange a private message each way, so that each pins
    the other's identity key (first contact is the first message exchanged)."""
    for one, other in ((first, second), (second, first)):
        await asyncio.wait_for(_until(functools.partial(_sees_all, one, {other.nick}), one), WAIT)
    first.connection.send_private(second.nick, "hello")
    await second.next(MessageReceived, lambda e: e.sender == first.nick)
    second.connection.send_private(first.nick, "hello to you")
    await first.next(MessageReceived, lambda e: e.sender == second.nick)


async def _until(condition: Callable[[], bool], peer: Peer) -> None:
    while not condition():
        peer.seen.append(await peer.connection.events.get())


class RawClient:
    """Speaks the wire protocol by hand over a real socket, for tests that must send what a
    well-behaved client never would. Registers with a real ClientCore, then steps aside."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.decoder = FrameDecoder()
        self.frames: list[bytes] = []

    @classmethod
    async def open(cls, relay: Relay) -> RawClient:
        reader, writer = await asyncio.open_connection(LOOPBACK, relay.port)
        return cls(reader, writer)

    async def register(self, nick: str, identity: PrivateKey | None = None) -> Registered:
        """Register as ``nick``; the frames after the directory (``away``, mailbox items)
        are left for ``receive``."""
        core = ClientCore(nick, identity or PrivateKey.generate(), new_session_key())
        registered: Registered | None = None
        while registered is None:
            data = await asyncio.wait_for(self.reader.read(65536), WAIT)
            assert data, "relay closed the connection during registration"
            for frame in self.decoder.receive_data(data):
                if registered is not None:
                    self.frames.append(frame)
                    continue
                for event in core.receive_data(encode_frame(frame)):
                    if isinstance(event, Registered):
                        registered = event
            if registered is None:
                self.writer.write(core.data_to_send())
        return registered

    def send(self, message: m.Message) -> None:
        self.writer.write(encode_frame(encode_message(message)))

    def send_bytes(self, data: bytes) -> None:
        self.writer.write(data)

    async def receive(self) -> m.Message | None:
        """The next message from the relay, or None once it has closed the connection."""

        async def read() -> m.Message | None:
            while not self.frames:
                data = await self.reader.read(65536)
                if not data:
                    return None
                self.frames.extend(self.decoder.receive_data(data))
            return decode_message(self.frames.pop(0))

        return await asyncio.wait_for(read(), WAIT)

    async def receive_kind(self, kind: type[E]) -> E:
        while True:
            message = await self.receive()
            assert message is not None, f"relay closed before sending {kind.__name__}"
            if isinstance(message, kind):
                return message

    async def closed(self) -> bool:
        """True once the relay has hung up on us (reading to EOF, bounded)."""
        while True:
            message = await self.receive()
            if message is None:
                return True

    def close(self) -> None:
        self.writer.close()


async def run_cli(*args: str, stdin: bytes = b"", env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run ``python -m e2echat ARGS`` to completion (bounded); return (code, out, err)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "e2echat",
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=REPO,
        env=env,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(stdin), 3 * WAIT)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


class CliProcess:
    """A running ``python -m e2echat ...`` with pipes, for line-mode tests."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        assert process.stdin and process.stdout and process.stderr
        self.stdin, self.stdout, self.stderr = process.stdin, process.stdout, process.stderr

    async def line_with(self, text: str) -> str:
        """The next line of its output that contains ``text`` (bounded)."""
        while True:
            raw = await asyncio.wait_for(self.stdout.readline(), WAIT)
            assert raw, f"it exited before printing {text!r}"
            if text in raw.decode():
                return raw.decode()

    async def exit_code(self) -> int:
        return await asyncio.wait_for(self.process.wait(), WAIT)


@contextlib.asynccontextmanager
async def spawn_cli(*args: str, env: dict[str, str] | None = None) -> AsyncIterator[CliProcess]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "e2echat",
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=REPO,
        env=env,
    )
    try:
        yield CliProcess(process)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def start_relay_process(*args: str) -> tuple[asyncio.subprocess.Process, int, list[str]]:
    """``e2echat relay ARGS`` (default: ``--port 0``) until its banner is out: (process,
    port, banner)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "e2echat",
        "relay",
        "--host",
        LOOPBACK,
        *(args or ("--port", "0")),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert process.stdout
    banner: list[str] = []
    while not banner or "Ctrl+C" not in banner[-1]:
        raw = await asyncio.wait_for(process.stdout.readline(), WAIT)
        assert raw, "relay exited during start-up"
        banner.append(raw.decode().rstrip())
    port = int(banner[0].rsplit(":", 1)[1])
    return process, port, banner


# -- file transfers -------------------------------------------------------------------------

#: the relay's rates for transfers in these tests: far above the defaults, so that a
#: transfer is quick (the defaults are for chat: 1 MiB/s)
FAST = {"byte_rate": 64 * 1024 * 1024, "byte_burst": 64 * 1024 * 1024, "rate": 5000, "burst": 5000}

#: a transfer of 20 MiB on a loaded machine: bounded, but generously
TRANSFER_WAIT = 60.0


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
    relay: Listening, tmp_path: Path, *nicks: str, transfers: dict[str, Any] | None = None, **options: Any
) -> AsyncIterator[list[FilePeer]]:
    """``nicks`` connected, each with its transfers (made with the options ``transfers``)
    and a pump that lands files in ``tmp_path``/NICK; each has seen the others."""
    made: list[FilePeer] = []
    try:
        for nick in nicks:
            transfers_of = Transfers(**(transfers or {}))
            peer = await connect(relay, nick, files=transfers_of, **options)
            pump = FilePump(peer.connection, transfers_of, tmp_path / nick)
            pump.start()
            made.append(FilePeer(peer, transfers_of, pump))
        for one in made:
            others = {other.nick for other in made} - {one.nick}
            while not set(one.peer.connection.core.peers) >= others:
                one.peer.seen.append(await one.peer.next_any_event())
        yield made
    finally:
        for one in made:
            await one.pump.close()
            await one.peer.connection.close()


async def next_event(
    peer: FilePeer, kind: type[E], where: Callable[[E], bool] = lambda e: True, wait: float = TRANSFER_WAIT
) -> E:
    """The next event of ``kind`` satisfying ``where`` that ``peer`` sees, within ``wait``
    seconds (a transfer takes longer than a message)."""

    async def find() -> E:
        while True:
            event = await peer.peer.connection.events.get()
            peer.peer.seen.append(event)
            if isinstance(event, kind) and where(event):
                return event

    return await asyncio.wait_for(find(), wait)


def make_file(path: Path, size: int) -> bytes:
    data = os.urandom(size)  # test data only: no secret
    path.write_bytes(data)
    return data
