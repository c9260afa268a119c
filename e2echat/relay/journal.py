"""The relay shell's half of ``Persist``: have a durable store keep the core's changes, off
the event loop, and hold back the frames that wait for them.

One worker thread applies one batch at a time, each in one transaction (group commit):
every change that comes while a batch is being written goes in the next one, so a busy
relay makes few, large transactions rather than one per message. Once a batch is kept,
its frames are written, in order.

Frames for a connection must not overtake one another: once a frame for a connection
waits for a batch, everything after it for that connection (a ``Write``, a ``Close``)
waits behind it too. Connections with nothing waiting are written to at once, as
without a store.

If the store fails, nothing more is written for any batch from then on: a sender is
never told ``queued`` for a message that was not kept. The relay then stops
(``on_failure``).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from e2echat.relay.core import Action, Close, ConnId, Write
from e2echat.relay.store import Op, RelayStore

log = logging.getLogger("e2echat.relay.journal")


class _Batch:
    __slots__ = ("actions", "conns", "number", "ops")

    def __init__(self, number: int) -> None:
        self.number = number
        self.ops: list[Op] = []
        #: what to write once ``ops`` are kept, in order
        self.actions: list[Action] = []
        self.conns: set[ConnId] = set()


class Journal:
    def __init__(
        self,
        store: RelayStore,
        loop: asyncio.AbstractEventLoop,
        release: Callable[[list[Action]], None],
        on_failure: Callable[[BaseException], None],
    ) -> None:
        self.store = store
        self._loop = loop
        self._release = release
        self._on_failure = on_failure
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="e2echat-store")
        self._gathering = _Batch(0)
        self._writing: _Batch | None = None
        #: connection -> the number of the last batch that holds something for it
        self.held: dict[ConnId, int] = {}
        self._idle = asyncio.Event()
        self._idle.set()
        #: what the store raised, once it has failed
        self.failure: BaseException | None = None
        #: the number of the last batch kept and released (batches end in order)
        self._kept_through = -1
        #: (batch number, future) for each ``settle`` waiting
        self._settling: list[tuple[int, asyncio.Future[None]]] = []

    def persist(self, ops: Sequence[Op], frames: list[tuple[ConnId, bytes]]) -> None:
        """Keep ``ops``, then write ``frames``."""
        batch = self._gathering
        batch.ops += ops
        if frames:
            self._hold(batch, Write(frames), [conn for conn, _ in frames])
        self._start()

    def hold(self, action: Write | Close) -> None:
        """Write ``action`` behind what waits already (for a connection that ``held`` names)."""
        conns = [action.conn] if isinstance(action, Close) else [conn for conn, _ in action.frames]
        self._hold(self._gathering, action, conns)
        self._start()

    def _hold(self, batch: _Batch, action: Action, conns: list[ConnId]) -> None:
        batch.actions.append(action)
        batch.conns.update(conns)
        for conn in conns:
            self.held[conn] = batch.number

    def _start(self) -> None:
        """Send the gathered batch to the worker, unless one is being written already."""
        while self._writing is None and self.failure is None:
            batch = self._gathering
            if not batch.ops and not batch.actions:
                self._idle.set()
                return
            self._idle.clear()
            self._gathering = _Batch(batch.number + 1)
            if not batch.ops:  # only frames held behind an earlier batch: nothing to keep
                self._done(batch)
                continue
            self._writing = batch
            future = self._executor.submit(self.store.apply, batch.ops)
            future.add_done_callback(functools.partial(self._hand_back, batch))

    def _hand_back(self, batch: _Batch, done: Future[None]) -> None:
        """In the worker: tell the event loop that ``batch`` is written (or failed)."""
        self._loop.call_soon_threadsafe(self._written, batch, done)

    def _written(self, batch: _Batch, done: Future[None]) -> None:
        self._writing = None
        failure = done.exception()
        if failure is not None:
            if self.failure is None:
                self.failure = failure
                log.error(
                    "the relay's store failed: %s; the relay stops (what it did not keep was not confirmed)",
                    failure,
                )
                self._idle.set()
                self._wake(lambda number: True)
                self._on_failure(failure)
            return
        self._done(batch)
        self._start()

    def _done(self, batch: _Batch) -> None:
        held = self.held
        for conn in batch.conns:
            if held.get(conn) == batch.number:
                del held[conn]
        self._release(batch.actions)
        self._kept_through = batch.number
        self._wake(lambda number: number <= batch.number)

    def _wake(self, due: Callable[[int], bool]) -> None:
        waiting = []
        for number, future in self._settling:
            if due(number):
                if not future.done():
                    future.set_result(None)
            else:
                waiting.append((number, future))
        self._settling = waiting

    async def settle(self) -> None:
        """Until every batch given so far is kept and its frames released (or the store
        has failed), whatever is given after: unlike ``drain``, a busy relay does not
        keep it waiting."""
        gathering = self._gathering
        # The last batch given anything: the one gathering, or (if it is empty) the one before.
        number = gathering.number if gathering.ops or gathering.actions else gathering.number - 1
        if self.failure is not None or number <= self._kept_through:
            return
        future = self._loop.create_future()
        self._settling.append((number, future))
        await future

    async def drain(self) -> None:
        """Until every batch given so far is kept and its frames released (or the store
        has failed)."""
        await self._idle.wait()

    async def close(self) -> None:
        """Once drained: close the store, in the worker (it may flush)."""
        await self.drain()
        try:
            await self._loop.run_in_executor(self._executor, self.store.close)
        except Exception:
            if self.failure is None:
                raise
            log.debug("closing the failed store failed too", exc_info=True)  # said once already
        finally:
            self._executor.shutdown(wait=False)
