"""The simulated clients: worker-process programs started by ``pool.Pool``.

``replay_relay``: real ``ClientCore`` clients register with the relay and encrypt their
  room messages *before* the clock starts (real sessions, real ciphertext); when told to
  go they send them as fast as the relay answers (a window of unanswered frames each),
  keep every byte that arrives, and decrypt and check it all *after* the clock stops.
  Python clients encrypting live on a 2-core machine would be the bottleneck long
  before the relay; this way the relay is.
``replay_forwarder``: the same workload (same clients, messages, body sizes and window)
  against the baseline forwarder, whose protocol has no crypto.
``live``: real ``e2echat.client.connection.Connection`` clients that encrypt as they send and
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

from benchmarks.ledger import TEXT_SIZE, Inbox, message_text
from benchmarks.pool import Channel
from benchmarks.wire import (
    BenchmarkError,
    FrameTally,
    Link,
    connect_link,
    count_receipts,
    new_core,
    register,
)
from e2echat.client.connection import Connection
from e2echat.client.core import (
    ClientCore,
    DeliveryReport,
    MessageReceived,
    MessagesMissing,
    SecurityWarning,
    SendReport,
    SplitView,
)
from e2echat.client.events import ClientEvent, Disconnected, Event
from e2echat.wire.binary import DELIVER_TAG, SEND_TAG
from e2echat.wire.framing import FrameDecoder
from e2echat.wire.grammar import PROTOCOL_VERSION

_PREFIX = struct.Struct(">I")
OTHER, DELIVERY, ANSWER = 0, 1, 2
SETUP_TIMEOUT = 120.0
RECEIPT_WAIT = 5.0


async def sleep_until(moment: float) -> None:
    await asyncio.sleep(max(0.0, moment - time.monotonic()))


_DELIVER_START = bytes((DELIVER_TAG, PROTOCOL_VERSION))
_ROUTED_START = b'{"v":%d,"type":"routed"' % PROTOCOL_VERSION


def _classify_relay(payload: bytes) -> int:
    # A deliver is binary; the relay writes the rest as compact JSON, "v" then "type"
    # first; anything else is neither.
    if payload.startswith(_DELIVER_START):
        return DELIVERY
    if payload.startswith(_ROUTED_START):
        return ANSWER
    return OTHER


class _Blaster:
    """Sends prepared batches as fast as answers come back, and keeps what arrives."""

    def __init__(self, link: Link, tally: FrameTally) -> None:
        self.link = link
        self.tally = tally
        self.batches: list[tuple[bytes, int]] = []  # (bytes, frames that each get an answer)
        self.captured: list[tuple[float, bytes]] = []  # (arrival, bytes)
        self.expected_deliveries = 0
        self.last = 0.0
        self.opened = asyncio.Event()  # an answer came: the window may have room
        self.finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @property
    def answers_due(self) -> int:
        return sum(frames for _, frames in self.batches)

    def complete(self) -> bool:
        counts = self.tally.counts
        return counts[DELIVERY] >= self.expected_deliveries and counts[ANSWER] >= self.answers_due

    def arm(self) -> None:
        """Keep everything that arrives from now on. Called before reporting "ready":
        another process's clients may start a moment before this one's do."""
        self.link.handler = self._receive

    def _receive(self, data: bytes) -> None:
        if data:
            self.last = time.monotonic()
            self.captured.append((self.last, data))
            self.tally.feed(data)
            self.opened.set()
        if (not data or self.complete()) and not self.finished.done():
            self.finished.set_result(None)

    async def run(self, window: int, pause: float, timeout: float) -> bool:
        """Send with at most ``window`` frames unanswered; True if everything expected
        arrived within ``timeout``."""

        async def send() -> None:
            written = 0
            for batch, frames in self.batches:
                while written - self.tally.counts[ANSWER] >= window:
                    self.opened.clear()
                    await self.opened.wait()
                self.link.write(batch)
                written += frames

        self.link.pause = pause
        try:
            await asyncio.wait_for(asyncio.gather(send(), asyncio.shield(self.finished)), timeout)
        except TimeoutError:
            return False
        finally:
            self.link.pause = 0.0
        return self.complete()

    async def paced(self, go: float, offset: float, rate: float, timeout: float) -> array[float]:
        """Write batch k at go + offset + k/rate; return when each was actually written
        (the timer fires up to a millisecond late)."""
        written = array("d")
        for k, (batch, _) in enumerate(self.batches):
            await sleep_until(go + offset + k / rate)
            written.append(time.monotonic())
            self.link.write(batch)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.finished), timeout)
        return written


_SEND_START = bytes((SEND_TAG, PROTOCOL_VERSION))


async def first_contact(core: ClientCore, link: Link, heard: set[str], timeout: float) -> None:
    """Start a session with everyone in ``core``'s directory through the relay, as a real
    client's first room message does (a fetch, their bundles, the message) and as their
    first messages to us do the other way, then wait until nothing of it is on its way:
    our message confirmed by all of them, theirs received from each, and the relay's
    answer in for every frame we sent (receipts too). The timed messages then go in
    sessions established both ways, as in a conversation under way, and nothing of this
    is counted with them. Every client of a run must do it at the same time; ``heard``
    names those whose first message has come already (while we registered)."""
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    others = set(core.directory)
    answers = FrameTally(_classify_relay, 3)
    sends = 0

    def write() -> None:
        nonlocal sends
        core.flush_receipts()  # no tick here to send them later
        data = core.data_to_send()
        sends += sum(1 for frame in _frames(data) if frame.startswith(_SEND_START))
        link.write(data)

    def handle(data: bytes) -> None:
        if not data:
            if not done.done():
                done.set_exception(BenchmarkError(f"{core.nick}: the relay closed the connection"))
            return
        answers.feed(data)
        events = core.receive_data(data)
        heard.update(event.sender for event in events if isinstance(event, MessageReceived))
        write()
        if heard >= others and core.settled and answers.counts[ANSWER] >= sends and not done.done():
            done.set_result(None)

    link.handler = handle
    core.send_room("#lobby", f"{core.nick} starts its sessions")
    write()
    await asyncio.wait_for(done, timeout)


def _frames(data: bytes) -> list[bytes]:
    """The payloads of the whole frames in ``data``."""
    payloads, position = [], 0
    while position < len(data):
        (length,) = _PREFIX.unpack_from(data, position)
        payloads.append(data[position + 4 : position + 4 + length])
        position += 4 + length
    return payloads


class RelayReplayClient:
    def __init__(self, nick: str) -> None:
        self.nick = nick
        self.core: ClientCore = new_core(nick)
        self.blaster: _Blaster | None = None
        self.sent = 0
        self.written = array("d")  # when each message was written (paced runs)

    async def connect(self, host: str, port: int, others: int) -> None:
        link = await connect_link(host, port)
        heard: set[str] = set()
        await register(self.core, link, lambda core: len(core.directory) >= others, SETUP_TIMEOUT, heard)
        await first_contact(self.core, link, heard, SETUP_TIMEOUT)
        self.blaster = _Blaster(link, FrameTally(_classify_relay, 3))

    def prepare(self, texts: list[str], others: int) -> None:
        """Encrypt every message now, for real, with the sessions the protocol makes."""
        assert self.blaster is not None
        for text in texts:
            self.core.send_room("#lobby", text)
            batch = self.core.data_to_send()
            self.blaster.batches.append((batch, _count_frames(batch)))
        self.sent = len(texts)
        self.blaster.expected_deliveries = len(texts) * others
        self.blaster.arm()

    def verify(self, go: float = 0.0) -> tuple[Inbox, int, array[float]]:
        """Decrypt everything that arrived. Returns the inbox, the receipts it made (never
        sent), and for stamped messages the latency in ms from due (go + stamp) to arrival."""
        assert self.blaster is not None
        inbox = Inbox()
        receipts = 0
        latencies = array("d")
        for arrival, chunk in self.blaster.captured:
            for event in self.core.receive_data(chunk):
                stamp = _check(event, inbox)
                if stamp:
                    latencies.append(1e3 * (arrival - go) - (stamp - 1) / 1e6)
            receipts += count_receipts(self.core.data_to_send())
        return inbox, receipts, latencies

    def verify_arrivals(
        self, everyone: list[str], senders: array[int], seqs: array[int], arrivals: array[float]
    ) -> Inbox:
        """Decrypt everything that arrived, noting (sender, sequence number, arrival) of each
        delivery: the conductor pairs them with the senders' write times."""
        assert self.blaster is not None
        index = {nick: position for position, nick in enumerate(everyone)}
        inbox = Inbox()
        for arrival, chunk in self.blaster.captured:
            for event in self.core.receive_data(chunk):
                if not isinstance(event, MessageReceived):
                    _check(event, inbox)
                elif inbox.record(event.sender, event.text) is not None:  # intact, first copy
                    senders.append(index[event.sender])
                    seqs.append(int(event.text.split("|", 2)[1]))
                    arrivals.append(arrival)
            self.core.data_to_send()
        return inbox

    def close(self) -> None:
        if self.blaster is not None:
            self.blaster.link.close()


def _check(event: ClientEvent, inbox: Inbox) -> int | None:
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
        await asyncio.gather(*(c.connect(config["host"], port_of(config, c.nick), others) for c in clients))
        started = time.process_time()
        for client in clients:
            texts = [
                message_text(client.nick, seq, 0, config["text_size"]) for seq in range(config["messages"])
            ]
            client.prepare(texts, others)
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
        inbox, made, _ = client.verify()
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
        self.blaster.arm()

    def verify(self) -> tuple[Inbox, int, array[float]]:
        assert self.blaster is not None
        inbox = Inbox()
        decoder = FrameDecoder()
        for _, chunk in self.blaster.captured:
            for frame in decoder.receive_data(chunk):
                source = int.from_bytes(frame[:2], "big") - 1
                if frame[:2] == self.ident:
                    continue
                if not 0 <= source < len(self.everyone):
                    inbox.corrupted += 1
                    continue
                inbox.record(self.everyone[source], frame[2:].decode("utf-8", "replace"))
        return inbox, 0, array("d")

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
    """One real ``Connection``. During a run it only notes what arrives, and when: each
    delivery is checked (sender, sequence number, text) and its latency computed
    afterwards, in ``settle``, so the benchmark's own bookkeeping does not load the
    clients it measures. With ``check_now`` each is checked as it arrives instead (for
    runs that time nothing and would otherwise hold every text until the end)."""

    def __init__(
        self, nick: str, host: str, port: int, text_size: int = TEXT_SIZE, *, check_now: bool = False
    ) -> None:
        self.nick = nick
        self.text_size = text_size
        self.check_now = check_now
        self.connection = Connection(host, port, nick, PrivateKey.generate())
        self.inbox = Inbox()
        #: milliseconds from each message's due time to its decryption here
        self.latencies = array("d")
        #: … and to the moment the event queue handed it over (what a UI would see)
        self.handed_over = array("d")
        #: per sender, messages received so far (unchecked: ``settle`` checks them)
        self.received: dict[str, int] = {}
        #: (sender, text, decrypted at, handed over at): what ``settle`` has yet to check
        self._arrivals: list[tuple[str, str, int, int]] = []
        self._decrypted_at: dict[int, int] = {}  # id(event) -> monotonic_ns()
        #: deliveries that reached the consumer without a decryption stamp (a harness bug)
        self.unstamped = 0
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
        self._stamp_decryptions()

    def _count_receipts(self) -> None:
        # Receipts are written by the core itself; count them on their way out.
        core = self.connection.core
        take = core.data_to_send

        def counting() -> bytes:
            data = take()
            self.receipts += count_receipts(data)
            return data

        core.data_to_send = counting  # type: ignore[method-assign]  # instrumented on purpose

    def _stamp_decryptions(self) -> None:
        # The core decrypts in the read callback; the event reaches the consumer task later
        # (after the other callbacks of that turn of the loop). Both moments are kept.
        core = self.connection.core
        receive = core.receive_data
        stamps = self._decrypted_at

        def stamped(data: bytes) -> list[Event]:
            events = receive(data)
            now = time.monotonic_ns()
            for event in events:
                if type(event) is MessageReceived:
                    stamps[id(event)] = now  # popped when the event is consumed
            return events

        core.receive_data = stamped  # type: ignore[method-assign]  # instrumented on purpose

    async def open(self, others: int) -> None:
        await self.connection.open(timeout=SETUP_TIMEOUT)
        self._consumer = asyncio.create_task(self._consume())
        deadline = time.monotonic() + SETUP_TIMEOUT
        while len(self.connection.core.directory) < others:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.nick} saw {len(self.connection.core.directory)} of {others} peers")
            await asyncio.sleep(0.01)

    async def _consume(self) -> None:
        received, arrivals, stamps = self.received, self._arrivals, self._decrypted_at
        while True:
            event = await self.connection.events.get()
            if type(event) is MessageReceived:
                now = time.monotonic_ns()
                sender = event.sender
                received[sender] = received.get(sender, 0) + 1
                decrypted = stamps.pop(id(event), 0)
                if not decrypted:
                    self.unstamped += 1
                arrivals.append((sender, event.text, decrypted or now, now))
                self.last_delivery = now / 1e9
                if self.check_now:
                    self.settle()
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

    def settle(self) -> None:
        """Check what arrived since the last call, and compute its latencies."""
        for sender, text, decrypted, handed_over in self._arrivals:
            stamp = self.inbox.record(sender, text)
            if stamp:  # intact and the first copy; 0 for the untimed warm-up
                self.latencies.append((decrypted - stamp) / 1e6)
                self.handed_over.append((handed_over - stamp) / 1e6)
        self._arrivals.clear()

    def send(self, stamp: int) -> None:
        self.connection.send_room("#lobby", message_text(self.nick, self.sent, stamp, self.text_size))
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
    clients = [LiveClient(nick, config["host"], port_of(config, nick)) for nick in config["mine"]]
    try:
        await asyncio.gather(*(c.open(others) for c in clients))
        channel.report("connected")
        await channel.expect("warm", SETUP_TIMEOUT)
        # First contact makes each pair's session (three X25519 each): not what we time.
        for client in clients:
            client.send(0)
        channel.report("warmed", {c.nick: c.sent for c in clients})
        await _arrived(clients, await channel.expect("totals", SETUP_TIMEOUT), config["drain"])
        for client in clients:
            client.settle()
        channel.report("ready")
        go = await channel.expect("go", SETUP_TIMEOUT)
        await sleep_until(go)
        cpu = time.process_time()
        if config["mode"] == "paced":
            await asyncio.gather(*(c.paced(go, config["rate"], config["seconds"]) for c in clients))
        else:
            await asyncio.gather(*(c.windowed(go, config["window"], config["seconds"]) for c in clients))
        channel.report("sent", {c.nick: c.sent for c in clients})
        arrived = await _arrived(clients, await channel.expect("totals", SETUP_TIMEOUT), config["drain"])
        channel.report(
            "drained",
            {
                "arrived": arrived,
                "last": max(c.last_delivery for c in clients),
                "cpu": time.process_time() - cpu,
            },
        )
        # Receipts trail the messages by up to a second (they are coalesced); let them land.
        await asyncio.gather(*(c.connection.wait_settled(RECEIPT_WAIT) for c in clients))
        for client in clients:
            client.settle()
        return {
            "sent": {c.nick: c.sent for c in clients},
            "inboxes": {c.nick: c.inbox.summary() for c in clients},
            "latencies": b"".join(c.latencies.tobytes() for c in clients),
            "handed_over": b"".join(c.handed_over.tobytes() for c in clients),
            "receipts": sum(c.receipts for c in clients),
            "unconfirmed": sum(c.unconfirmed for c in clients),
            "missing": sum(c.missing for c in clients),
            "disconnected": [c.nick for c in clients if c.disconnected],
            "unstamped": sum(c.unstamped for c in clients),
        }
    finally:
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)


async def _arrived(clients: list[LiveClient], sent: dict[str, int], timeout: float) -> bool:
    """Wait until every client has as many messages from each of the others as they sent
    (bounded). ``settle`` then checks them: lost, duplicated or corrupted."""
    deadline = time.monotonic() + timeout

    def short(client: LiveClient, *, checked: bool) -> bool:
        seen, received = client.inbox.seen, client.received
        for nick, count in sent.items():
            got = len(seen.get(nick, ())) if checked else received.get(nick, 0)
            if nick != client.nick and got < count:
                return True
        return False

    def missing() -> bool:
        waiting = [c for c in clients if not c.disconnected]
        if any(short(c, checked=False) for c in waiting):
            return True
        # Enough copies arrived. Checking them now costs nothing that is timed (nothing
        # more is due), and a duplicate or a corrupted copy must not pass for a message.
        for client in waiting:
            client.settle()
        return any(short(c, checked=True) for c in waiting)

    while missing():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


def port_of(config: dict[str, Any], nick: str) -> int:
    """The relay port ``nick`` uses: its own in ``ports`` (clients spread over a
    cluster's relays), else the one relay's."""
    ports: dict[str, int] = config.get("ports") or {}
    port: int = ports.get(nick, config["port"])
    return port


# -- paced, pre-encrypted senders: the relay's share of the latency ------------------------


async def paced_replay(channel: Channel, config: dict[str, Any]) -> dict[str, Any]:
    """As ``replay_relay``, but each client sends message k at go + offset + k/rate and
    notes when it actually wrote it; recipients note when each delivery arrived and
    decrypt afterwards. Write to arrival is the latency of the relay path alone."""
    others = len(config["everyone"]) - 1
    rate, count = config["rate"], int(config["rate"] * config["seconds"])
    clients = [RelayReplayClient(nick) for nick in config["mine"]]
    offsets = [random.random() / rate for _ in clients]
    try:
        await asyncio.gather(*(c.connect(config["host"], port_of(config, c.nick), others) for c in clients))
        for client in clients:
            client.prepare([message_text(client.nick, k) for k in range(count)], others)
        channel.report("ready")
        go = await channel.expect("go", SETUP_TIMEOUT)
        await sleep_until(go)
        cpu = time.process_time()
        writes = await asyncio.gather(
            *(
                c.blaster.paced(go, offset, rate, config["timeout"])
                for c, offset in zip(clients, offsets, strict=True)
                if c.blaster is not None
            )
        )
        for client, written in zip(clients, writes, strict=True):
            client.written = written
        outcomes = [c.blaster.complete() for c in clients if c.blaster is not None]
        blasters = [c.blaster for c in clients if c.blaster is not None]
        channel.report(
            "blasted",
            {
                "complete": all(outcomes),
                "last": max(b.last for b in blasters),
                "cpu": time.process_time() - cpu,
            },
        )
        everyone: list[str] = config["everyone"]
        inboxes, senders, seqs, arrivals = {}, array("I"), array("I"), array("d")
        recipients = array("I")
        for client in clients:
            inbox = client.verify_arrivals(everyone, senders, seqs, arrivals)
            inboxes[client.nick] = inbox.summary()
            recipients.extend([everyone.index(client.nick)] * (len(senders) - len(recipients)))
        return {
            "sent": {c.nick: c.sent for c in clients},
            "inboxes": inboxes,
            "written": {c.nick: c.written.tobytes() for c in clients},
            "arrivals": (senders.tobytes(), seqs.tobytes(), arrivals.tobytes(), recipients.tobytes()),
        }
    finally:
        for client in clients:
            client.close()
