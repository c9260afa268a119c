"""Section 10: the relay with ``--store`` (SQLite), end to end.

- queued: recipients register and leave; senders then send to them as fast as the relay
  answers (a window of unanswered sends each), and every ``routed`` must say ``queued``:
  each message is on disk before its sender hears so. Messages per second of wall time,
  from the first send to the last answer.
- online: the throughput section's replay run (room messages between N clients, all
  online) against the relay with ``--store`` and without, back to back. Online
  deliveries keep nothing, so the two should match.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

from nacl.public import PrivateKey

from benchmarks import servers, throughput
from benchmarks.plan import Context
from benchmarks.report import Figure, Section, judge
from e2echat.client.core import ClientCore, Registered
from e2echat.crypto.identity import new_session_key
from e2echat.wire import messages as m
from e2echat.wire.codec import decode_message, encode_message
from e2echat.wire.fastpath import encode_send
from e2echat.wire.framing import FrameDecoder, encode_frame

QUEUED_TARGET = 20_000  # queued messages a second (the figure)
ONLINE_TARGET = 0.9  # online throughput with --store, as a share of the in-memory relay's
BODY_SIZE = 256  # a chat line as a sealed ratchet message
SENDERS = 10
WINDOW = 64  # unanswered sends per sender
#: lifted, so that the run measures speed, not the limits
ROOMY = ("--mailbox-messages", "10000000", "--mailbox-bytes", "100GiB", "--mailbox-total", "100GiB")


class _Raw:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer, self.decoder = reader, writer, FrameDecoder()

    @classmethod
    async def register(cls, port: int, nick: str) -> _Raw:
        reader, writer = await asyncio.open_connection(servers.LOOPBACK, port)
        raw = cls(reader, writer)
        core = ClientCore(nick, PrivateKey.generate(), new_session_key())
        while True:
            data = await asyncio.wait_for(reader.read(65536), 10)
            assert data, "the relay closed the connection during registration"
            registered = False
            for frame in raw.decoder.receive_data(data):
                if not registered:
                    registered = any(
                        isinstance(e, Registered) for e in core.receive_data(encode_frame(frame))
                    )
            if registered:
                return raw
            writer.write(core.data_to_send())

    async def answers(self) -> list[bytes]:
        """The payloads of the frames that came next."""
        data = await asyncio.wait_for(self.reader.read(1 << 20), 30)
        assert data, "the relay closed the connection"
        return self.decoder.receive_data(data)


async def _queued_run(port: int, recipients: int, count: int) -> tuple[float, int]:
    """(seconds, messages answered ``queued``) for ``count`` sends to ``recipients`` away."""
    away = [f"away{n:04}" for n in range(recipients)]
    for nick in away:
        (await _Raw.register(port, nick)).writer.close()
    senders = [await _Raw.register(port, f"sender{n:02}") for n in range(SENDERS)]
    await asyncio.sleep(0.5)  # the relay has seen the recipients leave
    body = bytes(BODY_SIZE)
    share = count // SENDERS

    async def blast(sender: _Raw) -> int:
        frames = [encode_frame(encode_send(n, [(away[n % recipients], body)])) for n in range(share)]
        # What each answer must be, made by the strict encoder before the clock starts:
        # decoding 100,000 answers strictly would cost this process more than the relay.
        expected = [encode_message(m.Routed(n, (), (away[n % recipients],))) for n in range(share)]
        sent = answered = queued = 0
        while answered < share:
            if sent < share and sent - answered < WINDOW:
                end = min(share, answered + WINDOW)
                sender.writer.write(b"".join(frames[sent:end]))
                sent = end
            for payload in await sender.answers():
                if payload == expected[answered]:  # in order: one connection's answers are
                    answered += 1
                    queued += 1
                    continue
                message = decode_message(payload)  # not queued, or not in order: counted as it says
                if isinstance(message, m.Routed):
                    answered += 1
                    queued += len(message.queued)
        return queued

    started = time.monotonic()
    queued = sum(await asyncio.gather(*(blast(sender) for sender in senders)))
    seconds = time.monotonic() - started
    for sender in senders:
        sender.writer.close()
    return seconds, queued


def mailboxes(context: Context) -> Section:
    plan = context.plan
    section = Section("mailbox", "10. relay with --store: queued (offline) and online deliveries")
    count = 2_000 if plan.smoke else 100_000
    with tempfile.TemporaryDirectory(prefix="bench-mailbox-") as directory:
        store = str(Path(directory) / "relay.db")
        with servers.relay(*servers.UNLIMITED, *ROOMY, "--store", store) as relay:
            seconds, queued = asyncio.run(_queued_run(relay.port, 100, count))
            cpu = relay.cpu()
        rate = queued / seconds
        section.add(
            Figure(
                "queued_per_s",
                "queued deliveries/s (--store, on disk before queued)",
                rate,
                "/s",
                target=f">= {QUEUED_TARGET:,}",
                ok=judge(rate, lambda value: value >= QUEUED_TARGET, not plan.smoke),
                note=f"{queued:,} messages, {SENDERS} senders, 100 mailboxes; relay CPU {cpu:.1f} s",
            )
        )
        size = plan.ratio_size
        runs = {}
        for name, options in (("memory", ()), ("store", ("--store", str(Path(directory) / "online.db")))):
            with servers.relay(*servers.UNLIMITED, *options) as server:
                runs[name] = throughput.replay(server, "relay", size, context)
                section.integrity = section.integrity.add(runs[name].integrity)
    for name, run in runs.items():
        section.add(Figure(f"online_{name}_per_s", f"online N={size}, {name}: deliveries/s", run.rate, "/s"))
    ratio = runs["store"].rate / runs["memory"].rate
    section.add(
        Figure(
            "online_store_ratio",
            "online with --store / in memory",
            ratio,
            "×",
            target=f">= {ONLINE_TARGET:g}",
            ok=judge(ratio, lambda value: value >= ONLINE_TARGET, not plan.smoke),
        )
    )
    section.details = {"queued": {"messages": queued, "seconds": round(seconds, 3)}}
    section.notes.append(
        "queued: every message is in a SQLite transaction (WAL) before its sender is told queued; "
        "the relay's journal groups what arrives while one is written into the next (group commit)."
    )
    return section
