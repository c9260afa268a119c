"""The simulated clients: worker-process programs started by ``pool.Pool``.

``replay_relay``: real ``ClientCore`` clients register with the relay and encrypt their
  room messages *before* the clock starts (real sessions, real ciphertext); when told to
  go they send them as fast as the relay answers (a window of unanswered frames each),
  keep every byte that arrives, and decrypt and check it all *after* the clock stops.
  Python clients encrypting live on a 2-core machine would be the bottleneck long
  before the relay; this way the relay is.
``replay_forwarder``: the same workload (same clients, messages, body sizes and window)
  against the baseline forwarder, whose protocol has no crypto.
``live``: real ``e2echat.client.Connection`` clients that encrypt as they send and
  decrypt as they receive, sending receipts as the protocol does. Paced (for latency)
  or windowed (as fast as they can).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import struct
import time
from array import array
from typing import Any

from nacl.public import PrivateKey

from e2echat.client import Connection, Disconnected
from e2echat.client_core import (
    ClientCore,
    DeliveryReport,
    MessageReceived,
    MessagesMissing,
    SecurityWarning,
    SendReport,
    SplitView,
)
from e2echat.events import Event
from e2echat.framing import FrameDecoder

from benchmarks.ledger import Inbox, message_text
from benchmarks.pool import Channel
from benchmarks.wire import FrameTally, Link, connect_link, new_core, register

_PREFIX = struct.Struct(">I")
OTHER, DELIVERY, ANSWER = 0, 1, 2
SETUP_TIMEOUT = 120.0
_RECEIPT_MARK = b'"type":"send","id":0,'


async def sleep_until(moment: float) -> None:
    await asyncio.sleep(max(0.0, moment - time.monotonic()))


def _classify_relay(payload: bytes) -> int:
    # The relay writes compact JSON, "v" then "type" first; anything else is neither.
    if payload.startswith(b'{"v":1,"type":"deliver"'):
        return DELIVERY
    if payload.startswith(b'{"v":1,"type":"routed"'):
        return ANSWER
    return OTHER


class _Blaster:
    """Sends prepared batches as fast as answers come back, and keeps what arrives."""

    def __init__(self, link: Link, tally: FrameTally) -> None:
        self.link = link
        self.tally = tally
        self.batches: list[tuple[bytes, int]] = []  # (bytes, frames that each get an answer)
        self.captured: list[bytes] = []
        self.expected_deliveries = 0
        self.last = 0.0

    @property
    def answers_due(self) -> int:
        return sum(frames for _, frames in self.batches)

    def complete(self) -> bool:
        counts = self.tally.counts
        return counts[DELIVERY] >= self.expected_deliveries and counts[ANSWER] >= self.answers_due

    async def run(self, window: int, pause: float, timeout: float) -> bool:
        """True if everything expected arrived within ``timeout``."""
        loop = asyncio.get_running_loop()
        opened = asyncio.Event()
        finished: asyncio.Future[None] = loop.create_future()

        def receive(data: bytes) -> None:
            if data:
                self.captured.append(data)
                self.tally.feed(data)
                self.last = time.monotonic()
                opened.set()
            if (not data or self.complete()) and not finished.done():
                finished.set_result(None)

        async def send() -> None:
            written = 0
            for batch, frames in self.batches:
                while written - self.tally.counts[ANSWER] >= window:
                    opened.clear()
                    await opened.wait()
                self.link.write(batch)
                written += frames

        self.link.handler = receive
        self.link.pause = pause
        try:
            await asyncio.wait_for(asyncio.gather(send(), finished), timeout)
        except TimeoutError:
            return False
        finally:
            self.link.pause = 0.0
        return self.complete()


class RelayReplayClient:
    def __init__(self, nick: str) -> None:
        self.nick = nick
        self.core: ClientCore = new_core(nick)
        self.blaster: _Blaster | None = None
        self.sent = 0

    async def connect(self, host: str, port: int, others: int) -> None:
        link = await connect_link(host, port)
        await register(self.core, link, lambda core: len(core.directory) >= others, SETUP_TIMEOUT)
        self.blaster = _Blaster(link, FrameTally(_classify_relay, 3))

    def prepare(self, messages: int, others: int, text_size: int) -> None:
        """Encrypt every message now, for real, with the sessions the protocol makes."""
        assert self.blaster is not None
        self.blaster.link.handler = lambda data: None  # nothing should come until we send
        for seq in range(messages):
            self.core.send_room(message_text(self.nick, seq, 0, text_size))
            batch = self.core.data_to_send()
            self.blaster.batches.append((batch, _count_frames(batch)))
        self.sent = messages
        self.blaster.expected_deliveries = messages * others

    def verify(self) -> tuple[Inbox, int]:
        """Decrypt everything that arrived; return the inbox and the receipts it made."""
        assert self.blaster is not None
        inbox = Inbox()
        receipts = 0
        for chunk in self.blaster.captured:
            for event in self.core.receive_data(chunk):
                _check(event, inbox)
            receipts += self.core.data_to_send().count(_RECEIPT_MARK)  # made, never sent
        return inbox, receipts

    def close(self) -> None:
        if self.blaster is not None:
            self.blaster.link.close()


def _check(event: Event | Disconnected, inbox: Inbox) -> int | None:
    """Record a delivery; anything that failed to authenticate is a corrupted one."""
    if isinstance(event, MessageReceived):
        return inbox.record(event.sender, event.text)
    if isinstance(event, SecurityWarning | SplitView):
        inbox.corrupted += 1
    return None


def _count_frames(data: bytes) -> int:
    count, position = 0, 0
    while position < len(data):
        (length,) = _PREFIX.unpack_from(data, position)
        position += 4 + length
        count += 1
    return count


async def replay_relay(channel: Channel, config: dict[str, Any]) -> dict[str, Any]:
    others = len(config["everyone"]) - 1
    clients = [RelayReplayClient(nick) for nick in config["mine"]]
    try:
        await asyncio.gather(*(c.connect(config["host"], config["port"], others) for c in clients))
        started = time.process_time()
        for client in clients:
            client.prepare(config["messages"], others, config["text_size"])
        channel.report("ready", {"prepare_cpu": time.process_time() - started})
        return await _blast_and_verify(channel, config, clients)
    finally:
        for client in clients:
            client.close()


async def _blast_and_verify(
    channel: Channel, config: dict[str, Any], clients: list[RelayReplayClient] | list[ForwarderReplayClient]
) -> dict[str, Any]:
    go = await channel.expect("go", SETUP_TIMEOUT)
    await sleep_until(go)
    cpu = time.process_time()
    outcomes = await asyncio.gather(
        *(
            c.blaster.run(config["window"], config["pause"], config["timeout"])
            for c in clients
            if c.blaster is not None
        )
    )
    blasters = [c.blaster for c in clients if c.blaster is not None]
    channel.report(
        "blasted",
        {
            "complete": all(outcomes),
            "last": max(b.last for b in blasters),
            "cpu": time.process_time() - cpu,
        },
    )
    inboxes, receipts = {}, 0
    for client in clients:
        inbox, made = client.verify()
        inboxes[client.nick] = inbox.summary()
        receipts += made
    return {"sent": {c.nick: c.sent for c in clients}, "inboxes": inboxes, "receipts_made": receipts}


# -- the same workload against the baseline forwarder ------------------------------------


def forwarder_id(index: int) -> bytes:
    return (index + 1).to_bytes(2, "big")


class ForwarderReplayClient:
    def __init__(self, nick: str, index: int, everyone: list[str]) -> None:
        self.nick = nick
        self.ident = forwarder_id(index)
        self.everyone = everyone
        self.blaster: _Blaster | None = None
        self.sent = 0

    def _classify(self, payload: bytes) -> int:
        return ANSWER if payload[:2] == self.ident else DELIVERY

    async def connect(self, host: str, port: int) -> None:
        link = await connect_link(host, port)
        answered: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        received = bytearray()

        def hello(data: bytes) -> None:
            received.extend(data)
            if (len(received) >= 6 or not data) and not answered.done():
                answered.set_result(bytes(received))

        link.handler = hello
        link.write(_PREFIX.pack(2) + self.ident)
        answer = await asyncio.wait_for(answered, SETUP_TIMEOUT)
        if answer != _PREFIX.pack(2) + self.ident:
            raise RuntimeError(f"forwarder answered {answer!r}")
        self.blaster = _Blaster(link, FrameTally(self._classify, 3))

    def prepare(self, messages: int, body_size: int) -> None:
        """The relay workload's shape: per message one body of the size the relay's
        ciphertext has, to each other client, then a marker addressed to ourselves (the
        counterpart of the relay's "routed")."""
        assert self.blaster is not None
        targets = [forwarder_id(i) for i, nick in enumerate(self.everyone) if nick != self.nick]
        for seq in range(messages):
            body = message_text(self.nick, seq, 0, body_size).encode()
            frame_size = _PREFIX.pack(2 + len(body))
            parts = [frame_size + target + body for target in targets]
            parts.append(_PREFIX.pack(3) + self.ident + b".")
            self.blaster.batches.append((b"".join(parts), 1))
        self.sent = messages
        self.blaster.expected_deliveries = messages * len(targets)

    def verify(self) -> tuple[Inbox, int]:
        assert self.blaster is not None
        inbox = Inbox()
        decoder = FrameDecoder()
        for chunk in self.blaster.captured:
            for frame in decoder.receive_data(chunk):
                source = int.from_bytes(frame[:2], "big") - 1
                if frame[:2] == self.ident:
                    continue
                if not 0 <= source < len(self.everyone):
                    inbox.corrupted += 1
                    continue
                inbox.record(self.everyone[source], frame[2:].decode("utf-8", "replace"))
        return inbox, 0

    def close(self) -> None:
        if self.blaster is not None:
            self.blaster.link.close()


async def replay_forwarder(channel: Channel, config: dict[str, Any]) -> dict[str, Any]:
    everyone: list[str] = config["everyone"]
    clients = [ForwarderReplayClient(nick, everyone.index(nick), everyone) for nick in config["mine"]]
    try:
        await asyncio.gather(*(c.connect(config["host"], config["port"]) for c in clients))
        for client in clients:
            client.prepare(config["messages"], config["body_size"])
        channel.report("ready", {"prepare_cpu": 0.0})
        return await _blast_and_verify(channel, config, clients)
    finally:
        for client in clients:
            client.close()


# -- live clients: the real client shell, encrypting and decrypting in real time ----------


class LiveClient:
    def __init__(self, nick: str, host: str, port: int) -> None:
        self.nick = nick
        self.connection = Connection(host, port, nick, PrivateKey.generate())
        self.inbox = Inbox()
        self.latencies = array("d")
        self.sent = 0
        self.answered = 0
        self.receipts = 0
        self.unconfirmed = 0
        self.missing = 0
        self.disconnected = ""
        self.last_delivery = 0.0
        self.answer = asyncio.Event()
        self._consumer: asyncio.Task[None] | None = None
        self._count_receipts()

    def _count_receipts(self) -> None:
        # Receipts are written by the core itself; count them on their way out.
        core = self.connection.core
        take = core.data_to_send

        def counting() -> bytes:
            data = take()
            self.receipts += data.count(_RECEIPT_MARK)
            return data

        core.data_to_send = counting  # type: ignore[method-assign]

    async def open(self, others: int) -> None:
        await self.connection.open(timeout=SETUP_TIMEOUT)
        self._consumer = asyncio.create_task(self._consume())
        deadline = time.monotonic() + SETUP_TIMEOUT
        while len(self.connection.core.directory) < others:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.nick} saw {len(self.connection.core.directory)} of {others} peers")
            await asyncio.sleep(0.01)

    async def _consume(self) -> None:
        while True:
            event = await self.connection.events.get()
            if isinstance(event, MessageReceived):
                now = time.monotonic_ns()
                stamp = self.inbox.record(event.sender, event.text)
                if stamp:
                    self.latencies.append((now - stamp) / 1e6)
                self.last_delivery = time.monotonic()
            elif isinstance(event, SendReport):
                self.answered += 1
                self.answer.set()
            elif isinstance(event, DeliveryReport):
                self.unconfirmed += len(event.failed)
            elif isinstance(event, MessagesMissing):
                self.missing += event.count
            elif isinstance(event, Disconnected):
                self.disconnected = event.detail
                return
            else:
                _check(event, self.inbox)

    def send(self, stamp: int) -> None:
        self.connection.send_room(message_text(self.nick, self.sent, stamp))
        self.sent += 1

    async def paced(self, go: float, rate: float, seconds: float) -> None:
        """Open loop: message k is due at go + offset + k/rate and carries that due time
        as its stamp, so a client that falls behind shows it as latency (no coordinated
        omission)."""
        offset = random.random() / rate
        for k in range(int(rate * seconds)):
            due = go + offset + k / rate
            await sleep_until(due)
            self.send(int(due * 1e9))  # monotonic() and monotonic_ns() are one clock

    async def windowed(self, go: float, window: int, seconds: float) -> None:
        """Closed loop: at most ``window`` messages the relay has not answered yet."""
        end = go + seconds
        while time.monotonic() < end:
            while self.sent - self.answered >= window:
                self.answer.clear()
                await asyncio.wait_for(self.answer.wait(), 30)
            self.send(time.monotonic_ns())
            await asyncio.sleep(0)  # let the read loop in between sends

    async def close(self) -> None:
        await self.connection.close()
        if self._consumer is not None:
            self._consumer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._consumer


async def live(channel: Channel, config: dict[str, Any]) -> dict[str, Any]:
    others = len(config["everyone"]) - 1
    clients = [LiveClient(nick, config["host"], config["port"]) for nick in config["mine"]]
    try:
        await asyncio.gather(*(c.open(others) for c in clients))
        channel.report("connected")
        await channel.expect("warm", SETUP_TIMEOUT)
        # First contact makes each pair's session (three X25519 each): not what we time.
        for client in clients:
            client.send(0)
        await _settle(clients, config["drain"])
        channel.report("ready")
        go = await channel.expect("go", SETUP_TIMEOUT)
        await sleep_until(go)
        cpu = time.process_time()
        if config["mode"] == "paced":
            await asyncio.gather(*(c.paced(go, config["rate"], config["seconds"]) for c in clients))
        else:
            await asyncio.gather(*(c.windowed(go, config["window"], config["seconds"]) for c in clients))
        settled = await _settle(clients, config["drain"])
        channel.report(
            "drained",
            {
                "settled": settled,
                "last": max(c.last_delivery for c in clients),
                "cpu": time.process_time() - cpu,
            },
        )
        return {
            "sent": {c.nick: c.sent for c in clients},
            "inboxes": {c.nick: c.inbox.summary() for c in clients},
            "latencies": b"".join(c.latencies.tobytes() for c in clients),
            "receipts": sum(c.receipts for c in clients),
            "unconfirmed": sum(c.unconfirmed for c in clients),
            "missing": sum(c.missing for c in clients),
            "disconnected": [c.nick for c in clients if c.disconnected],
        }
    finally:
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)


async def _settle(clients: list[LiveClient], timeout: float) -> bool:
    """Wait until every message is confirmed by receipts from all its recipients (which
    means each was decrypted), and every event handed out has been looked at."""
    results = await asyncio.gather(*(c.connection.wait_settled(timeout) for c in clients))
    deadline = time.monotonic() + timeout
    while any(not c.connection.events.empty() for c in clients) and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    return all(results)
