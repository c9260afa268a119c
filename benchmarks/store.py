"""Section 8: the relay's SQLite store (relay/sqlite_store.py) on its own.

In-process, no relay: mail for many mailboxes is enqueued in batches of ``Enqueue`` ops,
one ``apply`` (one transaction) per batch, as the relay's shell applies what its core
decided in one turn; then drained by acknowledgements of one item each (``Dequeue``), in
batches of the same size.
Figures are items committed per second of wall time, the disk included. The issue wants
20,000 queued deliveries a second from the relay with ``--store``, end to end: the store
alone must do well above that.

Also timed for comparison, with no target: the same enqueue with ``synchronous=FULL``
(an fsync per commit) instead of the store's NORMAL, and ``load`` of a full store (the
relay's start-up).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import nacl.utils

from benchmarks.plan import Context
from benchmarks.report import Figure, Section, judge
from e2echat.relay.sqlite_store import SqliteStore
from e2echat.relay.store import MAIL, Dequeue, Enqueue, MailItem

TARGET = 20_000  # queued messages a second, the figure for the whole relay
#: a 100-byte chat line as a sealed ratchet message: header, tag and padding on top
BODY_SIZE = 256
MAILBOXES = 100
#: the target is judged on batches of at least this many ops: a relay at 20,000 messages a
#: second applies many at once, and a quiet one applying them one by one needs no more
JUDGED_FROM = 100


def _batches(count: int, size: int, body: bytes) -> list[list[Enqueue]]:
    """``count`` mail items in batches of ``size``, spread over the mailboxes in turn."""
    items = [
        Enqueue(MailItem(f"m{n % MAILBOXES:03}", n // MAILBOXES, MAIL, "sender", n, time.time(), body))
        for n in range(count)
    ]
    return [items[start : start + size] for start in range(0, count, size)]


def _acks(count: int, size: int) -> list[list[Dequeue]]:
    """Acknowledgements of the items ``_batches`` made, one item each (the most
    transactions an owner's acks can cost), in batches of ``size``."""
    acks = [Dequeue(f"m{n % MAILBOXES:03}", upto=n // MAILBOXES) for n in range(count)]
    return [acks[start : start + size] for start in range(0, count, size)]


def _rate(store: SqliteStore, batches: list[list[Enqueue]] | list[list[Dequeue]], items: int) -> float:
    started = time.perf_counter()
    for batch in batches:
        store.apply(batch)
    return items / (time.perf_counter() - started)


def store(context: Context) -> Section:
    plan = context.plan
    section = Section("store", f"8. relay store (SQLite, WAL, synchronous=NORMAL), {BODY_SIZE}-byte bodies")
    body = nacl.utils.random(BODY_SIZE)
    with tempfile.TemporaryDirectory(prefix="e2echat-store-") as directory:
        for size in plan.store_batches:
            # One op a transaction (a quiet relay) is slow by nature: fewer items, no target.
            count = plan.store_items if size >= JUDGED_FROM else plan.store_items // 10
            path = Path(directory) / f"relay-{size}.sqlite"
            relay_store = SqliteStore(path)
            try:
                enqueued = _rate(relay_store, _batches(count, size, body), count)
                started = time.perf_counter()
                loaded = len(relay_store.load().mail)
                load_seconds = time.perf_counter() - started
                dequeued = _rate(relay_store, _acks(count, size), count)
                left = len(relay_store.load().mail)
            finally:
                relay_store.close()
            if loaded != count or left:
                raise AssertionError(f"the store held {loaded} of {count} items, then {left} after the acks")
            section.add(
                Figure(
                    f"enqueue_per_s_b{size}",
                    f"enqueue, {size} a transaction",
                    enqueued,
                    "items/s",
                    f"≥ {TARGET:,}" if size >= JUDGED_FROM else "",
                    judge(enqueued, lambda v: v >= TARGET, not plan.smoke and size >= JUDGED_FROM),
                )
            )
            section.add(
                Figure(
                    f"dequeue_per_s_b{size}",
                    f"dequeue (acks of one item), {size} a transaction",
                    dequeued,
                    "items/s",
                )
            )
            section.add(
                Figure(f"load_ms_b{size}", f"load {count:,} items at start-up", 1e3 * load_seconds, "ms")
            )

            path = Path(directory) / f"relay-full-{size}.sqlite"
            relay_store = SqliteStore(path)
            try:
                # Reaching in on purpose: FULL is no option of the store, only the
                # measurement that says why it is not the default.
                assert relay_store._connection is not None
                relay_store._connection.execute("PRAGMA synchronous=FULL")
                full = _rate(relay_store, _batches(count, size, body), count)
            finally:
                relay_store.close()
            section.add(
                Figure(
                    f"enqueue_full_per_s_b{size}",
                    f"enqueue, {size} a transaction, synchronous=FULL",
                    full,
                    "items/s",
                    note="for comparison",
                )
            )
    section.details["items"] = plan.store_items
    section.details["mailboxes"] = MAILBOXES
    return section
