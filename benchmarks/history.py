"""Section 9: a client's start-up with a long history, to the prompt.

A profile's history.db is filled with ``history_rows`` sealed rows (100,000 in the full
run) over ``history_conversations`` conversations, written through ``HistoryStore`` as the
chat writes them. Then the timed part, in this process against a relay on loopback: open
the history, connect and register, show the earlier lines of the recent conversations in a
real prompt_toolkit prompt (pipe input, no terminal), until the prompt runs. The same is
timed with an empty history, to tell the history's share from the connection's. The
fastest of ``ROUNDS`` runs is reported, as ``timeit`` does.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

from nacl.public import PrivateKey
from prompt_toolkit import PromptSession
from prompt_toolkit.application import create_app_session
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput

from benchmarks.plan import Context
from benchmarks.report import Figure, Section, judge
from e2echat.client.reconnect import Client
from e2echat.relay.server import Relay
from e2echat.store.history import HISTORY_FILE, HistoryStore
from e2echat.ui.chat import Chat
from e2echat.ui.repl import input_history, make_session, run_repl
from e2echat.ui.transcript import Entry, State
from e2echat.wire.grammar import DEFAULT_ROOM

TARGET_SECONDS = 0.5  # issue 18: "client start-up with 100,000 history rows under 0.5 s"
ROUNDS = 5
LOOPBACK = "127.0.0.1"


def fill(path: Path, identity: PrivateKey, rows: int, conversations: int) -> float:
    """Write ``rows`` history rows, as a chat would; returns the seconds it took."""
    started = time.perf_counter()
    store = HistoryStore.open(path, identity, limit=max(rows, 1))
    try:
        for number in range(rows):
            where = number % conversations
            conversation = DEFAULT_ROOM if where == 0 else f"peer{where}"
            at = 1_700_000_000.0 + number
            text = f"line {number} of the benchmark's history, about as long as a chat line is"
            if number % 3:
                store.record(Entry(conversation, True, "peer1" if where == 0 else conversation, text, at, at))
            else:
                store.record(
                    Entry(conversation, False, "me", text, at, at, number, State.DELIVERED, "delivered")
                )
            if number % 5000 == 4999:
                store.write_now()
        store.write_now()
    finally:
        store.close()
    return time.perf_counter() - started


async def start_up(port: int, path: Path | None, identity: PrivateKey) -> tuple[float, int]:
    """Seconds from opening the history to a running prompt, and the lines shown."""
    lines: list[str] = []
    with create_pipe_input() as pipe, create_app_session(input=pipe, output=DummyOutput()):
        started = time.perf_counter()
        store = HistoryStore.open(path, identity)
        client = Client(LOOPBACK, port, "me", identity)
        try:
            await client.open()
            chat = Chat(client, lambda style, text: lines.append(text), echo=True, history=store)
            session: PromptSession[str] = make_session(
                chat, input_history(store), input=pipe, output=DummyOutput()
            )
            repl = asyncio.create_task(run_repl(chat, session, patch=False))
            while not session.app.is_running:
                await asyncio.sleep(0.001)
            elapsed = time.perf_counter() - started
            pipe.send_text("/quit\r")
            await asyncio.wait_for(repl, 10)
        finally:
            await client.close()
            store.close()
    return elapsed, len(lines)


async def _timed(path: Path, identity: PrivateKey) -> tuple[float, float, int]:
    relay = Relay(LOOPBACK, 0)
    await relay.start()
    try:
        with_history = []
        empty = []
        shown = 0
        for _ in range(ROUNDS):
            seconds, shown = await start_up(relay.port, path, identity)
            with_history.append(seconds)
            empty.append((await start_up(relay.port, None, identity))[0])
        return min(with_history), min(empty), shown
    finally:
        await relay.stop()


def history(context: Context) -> Section:
    plan = context.plan
    section = Section("history", f"9. client start-up with {plan.history_rows:,} history rows")
    identity = PrivateKey.generate()
    with tempfile.TemporaryDirectory(prefix="e2echat-bench-history-") as directory:
        path = Path(directory) / HISTORY_FILE
        filling = fill(path, identity, plan.history_rows, plan.history_conversations)
        size = path.stat().st_size
        seconds, baseline, shown = asyncio.run(_timed(path, identity))
    judged = not plan.smoke
    section.add(
        Figure(
            "start_up_s",
            f"start-up to the prompt, {plan.history_rows:,} rows",
            seconds,
            "s",
            f"< {TARGET_SECONDS:g}",
            judge(seconds, lambda value: value < TARGET_SECONDS, judged),
            f"{shown} lines shown; fastest of {ROUNDS}",
        )
    )
    section.add(Figure("start_up_empty_s", "the same with no history (--no-log)", baseline, "s"))
    section.add(Figure("history_share_ms", "the history's share", (seconds - baseline) * 1000, "ms"))
    section.add(
        Figure("fill_rows_per_s", "rows written (sealed, batched)", plan.history_rows / filling, "/s")
    )
    section.add(Figure("bytes_per_row", "history.db bytes per row", size / plan.history_rows, "B"))
    return section
