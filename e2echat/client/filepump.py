"""The asyncio shell around ``Transfers`` (client/files.py): parts out through the link,
chunks read and written off the event loop (store/downloads.py), and the events of
transfers into the one queue the UI reads.

One task does it all, woken when the transfers have work, and a few times a second for
their clocks. Chunks go only as fast as the link's ``file_budget`` allows, which keeps
what is typed ahead of them.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, Protocol

from e2echat.client import fileparts as fp
from e2echat.client.core import ClientCore
from e2echat.client.events import ClientEvent, Event
from e2echat.client.filenames import size_text
from e2echat.client.files import Transfers
from e2echat.client.filestate import Direction, Finish, Land, State, Transfer, Write
from e2echat.client.trust import Trust
from e2echat.crypto.kdf import store_key
from e2echat.errors import CommandError, E2EChatError
from e2echat.store.downloads import (
    Landing,
    Record,
    RecordSeal,
    Source,
    forget_sending,
    keep_sending,
    kept_landings,
    kept_sending,
)

log = logging.getLogger("e2echat.client.filepump")

#: how often the transfers' clocks are looked at (pauses, resends)
TICK = 0.25
#: a file that would take longer than this at the relay's byte rate gets a line that says
#: so, and what raises it: on a LAN the relay, not the network, is then what is slow
SLOW_AFTER = 30.0
#: control parts waiting for their peer (online again, or a session started), at most:
#: a peer that never comes back must not make the list grow for ever
MAX_WAITING_PARTS = 1000
#: what is read ahead of the files being sent, across all of them, at most: a window each
#: (about 1 MiB) for a few; the others read only their chunks due. ``/send #ROOM`` makes
#: one transfer per member, and a window each held 187.5 MiB for 200 (issue 20).
MAX_READ_AHEAD = 4 * 1024 * 1024


class FileLink(Protocol):
    """What transfers need from the way to the relay (a ``Client`` or a ``Connection``)."""

    @property
    def core(self) -> ClientCore: ...
    @property
    def online(self) -> bool: ...
    @property
    def events(self) -> asyncio.Queue[ClientEvent]: ...

    def send_file_part(self, nick: str, part: bytes, *, to_mailbox: bool = False) -> bool: ...
    def file_budget(self) -> int: ...


class FilePump:
    """Moves the files of ``transfers`` over ``link``; files received land in ``downloads``.
    ``sending``: where what is being sent is noted (in the profile), so that a later run
    goes on with it; without it, a file being sent is not kept across restarts."""

    def __init__(
        self,
        link: FileLink,
        transfers: Transfers,
        downloads: Path,
        *,
        sending: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.link = link
        self.transfers = transfers
        self.downloads = downloads
        self.sending = sending
        self._clock = clock
        #: the records kept for a later run are sealed under the profile's store key
        self._seal = RecordSeal(store_key(bytes(link.core.keyring.identity)))
        self._wake = asyncio.Event()
        transfers.wake = self._wake.set
        self._sources: dict[int, Source] = {}
        #: what was read ahead of each file being sent: (its offset, the bytes)
        self._ahead: dict[int, tuple[int, bytes]] = {}
        self._landings: dict[int, Landing] = {}
        #: what waits for each transfer's writer (chunks, then the check), by number
        self._jobs: dict[int, list[Write | Finish]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        #: transfers sent whose pace at the relay's byte rate was told
        self._told_limit: set[int] = set()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="e2echat-files")

    async def resume_kept(self) -> None:
        """Take up the transfers an earlier run left unfinished: each file received (in
        ``downloads``) resumes from what it wrote when its sender is online; each sent
        (noted in ``sending``), from where its receiver says. Until it is done, a peer asking
        of a transfer not yet taken up is not told there is none (``Transfers.resuming``)."""
        try:
            await self._resume_kept()
        finally:
            self.transfers.resuming = False

    async def _resume_kept(self) -> None:
        for record, landing in await asyncio.to_thread(kept_landings, self.downloads, self._seal):
            try:
                written = await asyncio.to_thread(landing.reopen, record.chunk_size)
            except E2EChatError as exc:
                log.info("a partial file kept from before could not be opened: %s", exc)
                continue
            transfer = self.transfers.kept(
                Direction.IN,
                record.peer,
                record.transfer_id,
                record.name,
                record.size,
                record.chunk_size,
                record.digest,
                self._clock(),
                written=written,
            )
            if transfer is None:
                landing.keep()
                continue
            self._landings[transfer.number] = landing
            detail = f"kept from before; it goes on when {record.peer} is online"
            self._publish([self.transfers.changed_event(transfer, "paused", detail)])
        if self.sending is None:
            return
        for record in await asyncio.to_thread(kept_sending, self.sending, self._seal):
            try:
                source = await asyncio.to_thread(Source, Path(record.path))
            except E2EChatError as exc:
                log.info("a file being sent before could not be opened: %s", exc)
                continue
            transfer = self.transfers.kept(
                Direction.OUT,
                record.peer,
                record.transfer_id,
                record.name,
                record.size,
                record.chunk_size,
                record.digest,
                self._clock(),
                path=record.path,
                room=record.room,
            )
            if transfer is None:
                source.close()
                continue
            self._sources[transfer.number] = source
            try:
                # Hashed again, through the very file sent: the same size is not the same
                # file (it was edited, or a link now names another).
                size, digest = await asyncio.to_thread(source.digest)
            except E2EChatError as exc:
                size, digest = -1, b""
                log.info("a file being sent before could not be read: %s", exc)
            if size != record.size or not hmac.compare_digest(digest, record.digest):
                reason = "the file changed since it was offered; offer it again with /send"
                self._publish(self.transfers.cancel(transfer.number, reason))
                continue
            detail = f"kept from before; it goes on when {record.peer} is online"
            self._publish([self.transfers.changed_event(transfer, "paused", detail)])

    async def close(self) -> None:
        self._closing = True
        for task in (self._task, *self._tasks):
            if task is not None:
                task.cancel()
        await asyncio.gather(
            *(t for t in (self._task, *self._tasks) if t is not None), return_exceptions=True
        )
        for source in self._sources.values():
            source.close()
        if self.sending is not None:  # (what the loop had no turn left to forget)
            ended = [
                t.transfer_id for t in self.transfers.listing() if t.direction is Direction.OUT and t.final
            ]
            for transfer_id in ended:
                await asyncio.to_thread(forget_sending, self.sending, transfer_id)
        for number, landing in self._landings.items():
            transfer = self.transfers.get(number)
            if transfer is not None and not transfer.final:
                landing.keep()  # resumed by the next run (resume_kept)
            else:
                await asyncio.to_thread(landing.discard)
        self._sources.clear()
        self._ahead.clear()
        self._landings.clear()

    # -- what the user does -------------------------------------------------------------------

    async def send(self, nick: str, path: Path, name: str | None = None, *, room: str = "") -> Transfer:
        """Offer the file at ``path`` to ``nick`` under ``name`` (the file's own by
        default). ``nick`` is online, or away and someone we talked with: the offer then
        waits in their mailbox, and the file goes once both are online. ``room``: the
        room it is offered in (``/send #ROOM``), where the history keeps how it went."""
        core = self.link.core
        if nick == core.nick:
            raise CommandError(detail="that is you; /send sends to someone else")
        if not self.link.online:
            raise CommandError(detail="not connected to the relay; the file was not offered")
        if nick not in core.directory and not core.reachable_away(nick):
            # Someone away gets the offer in their mailbox, if a session is kept with them
            # (we talked before); the file itself goes once both are online.
            raise CommandError(
                detail=f"{nick} is not online, and not someone away you have talked with: "
                "the file was not offered"
            )
        if nick in core.directory and core.trust(nick) is Trust.CHANGED:
            raise CommandError(
                detail=f"not sent: {nick}'s key changed; nothing is sent to {nick} until "
                f"you accept the new key with /trust {nick}"
            )
        try:
            source = await asyncio.to_thread(Source, path)
        except E2EChatError as exc:
            raise CommandError(detail=str(exc)) from None
        try:
            size, digest = await asyncio.to_thread(source.digest)
        except E2EChatError as exc:
            source.close()
            raise CommandError(detail=str(exc)) from None
        offered = path.name if name is None else name
        transfer = self.transfers.offer(nick, offered, size, digest, str(path), self._clock(), room=room)
        self._sources[transfer.number] = source
        if self.sending is not None:
            record = Record(
                nick, transfer.transfer_id, offered, size, transfer.chunk_size, digest, str(source.path), room
            )
            try:
                await asyncio.to_thread(keep_sending, self.sending, record, self._seal)
            except E2EChatError as exc:  # it goes all the same; a restart ends it
                log.info("a file being sent could not be noted for a later run: %s", exc)
        return transfer

    async def wait_done(self, quiet: float) -> bool:
        """Wait until no transfer is left that can move on by itself (one paused, its peer
        gone, cannot); False once none has moved for ``quiet`` seconds."""
        moved = self._clock()
        last = self._moved()
        while self.transfers.moving:
            await asyncio.sleep(TICK)  # (polled: a transfer's progress is many small steps)
            now, seen = self._clock(), self._moved()
            if seen != last:
                moved, last = now, seen
            elif now - moved >= quiet:
                return False
        return True

    def _moved(self) -> tuple[tuple[int, str, int], ...]:
        return tuple((t.number, t.state.value, t.acked) for t in self.transfers.listing())

    # -- the loop -----------------------------------------------------------------------------

    async def _run(self) -> None:
        waiting: list[tuple[str, bytes]] = []  # control parts that could not go yet
        loop = asyncio.get_running_loop()
        while not self._closing:
            if not self._wake.is_set():
                # (Not wait_for: on Python 3.11 it can lose a cancellation that comes as
                # the event is set, and close would wait for ever.)
                timer = loop.call_later(TICK, self._wake.set)
                try:
                    await self._wake.wait()
                finally:
                    timer.cancel()
            self._wake.clear()
            try:
                online = self.link.core.peers if self.link.online else []
                self._publish(self.transfers.tick(self._clock(), online))
                self._effects()
                waiting = self._send_parts(waiting + self.transfers.messages)
                self.transfers.messages.clear()
                await self._send_chunks()
                self._close_ended()
            except E2EChatError as exc:  # a broken link: the next turn finds it away
                log.info("file transfers: %s", exc)

    def _send_parts(self, parts: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
        """Send what can go; return what waits (its peer away, or a session starting)."""
        waiting = []
        for nick, part in parts:
            # An offer may wait in the mailbox of someone away; nothing else of a transfer.
            if not self.link.send_file_part(nick, part, to_mailbox=fp.is_offer(part)):
                waiting.append((nick, part))
        return waiting[-MAX_WAITING_PARTS:]

    def _tell_limit(self, due: list[tuple[Transfer, int, int]]) -> None:
        """Say, once per transfer, if the relay's byte rate makes it slow."""
        rate = self.link.core.relay_byte_rate
        for transfer, _, _ in due:
            if transfer.number in self._told_limit:
                continue
            self._told_limit.add(transfer.number)
            seconds = (transfer.size - transfer.acked) / rate
            if seconds > SLOW_AFTER:
                detail = (
                    f"the relay takes at most {size_text(rate)} a second from each connection, so "
                    f"this takes about {math.ceil(seconds / 60)} min; its operator can raise that "
                    "with --byte-rate"
                )
                self._publish([self.transfers.changed_event(transfer, "limited", detail)])

    async def _send_chunks(self) -> None:
        budget = self.link.file_budget()
        due = self.transfers.chunks_due(budget) if budget > 0 else []
        self._tell_limit(due)
        if not due:
            return
        try:
            chunks = await self._read(due)
        except E2EChatError as exc:
            for transfer, _, _ in due:
                if not transfer.final:
                    self._publish(
                        self.transfers.cancel(transfer.number, f"the file could not be read: {exc}")
                    )
            return
        for (transfer, offset, _), data in zip(due, chunks, strict=True):
            if transfer.state is State.ACTIVE:
                self.link.send_file_part(
                    transfer.peer, fp.encode(fp.Chunk(transfer.transfer_id, offset, data))
                )
        if len(due) and self.link.file_budget() > 0:
            self._wake.set()  # more may go: the next turn, after whatever else is waiting

    async def _read(self, due: list[tuple[Transfer, int, int]]) -> list[bytes]:
        """The chunks ``due``. A file whose chunks due were not read ahead is read from the
        first of them on, up to a window's worth in one read, kept for the chunks that
        follow, while all that is kept stays within MAX_READ_AHEAD; beyond it, only its
        chunks due are read. A thread hop costs ten times a read of a chunk, and chunks go
        a few at a time, as their acknowledgements come."""
        spans: dict[int, tuple[Transfer, int, int]] = {}  # each transfer's bytes due
        for transfer, offset, length in due:
            first = spans[transfer.number][1] if transfer.number in spans else offset
            spans[transfer.number] = (transfer, first, offset + length)
        # One not read ahead: all due are read again in the same hop (their windows then
        # run out together, not each at its own turn).
        reading = [] if all(self._holds(*span) for span in spans.values()) else list(spans.values())
        for transfer, _, _ in reading:
            self._ahead.pop(transfer.number, None)
        held: dict[int, tuple[int, bytes]] = dict(self._ahead)
        if reading:
            room = MAX_READ_AHEAD - sum(len(data) for _, data in self._ahead.values())
            reads = []
            for transfer, first, end in reading:
                size = max(end - first, min(self.transfers.window, transfer.size - first))
                if size > end - first and size <= room:
                    room -= size
                else:
                    size = end - first
                reads.append((self._sources[transfer.number], first, size))
            read = await asyncio.to_thread(_read_all, reads)
            for (transfer, first, end), data in zip(reading, read, strict=True):
                held[transfer.number] = (first, data)
                if len(data) > end - first:
                    self._ahead[transfer.number] = (first, data)
        chunks = []
        for transfer, offset, length in due:
            start, data = held[transfer.number]
            chunks.append(data[offset - start : offset - start + length])
        return chunks

    def _holds(self, transfer: Transfer, first: int, end: int) -> bool:
        """Whether the bytes from ``first`` to ``end`` of ``transfer`` were read ahead."""
        ahead = self._ahead.get(transfer.number)
        return ahead is not None and ahead[0] <= first <= end <= ahead[0] + len(ahead[1])

    # -- the disk -------------------------------------------------------------------------------

    def _effects(self) -> None:
        effects, self.transfers.effects = self.transfers.effects, []
        for effect in effects:
            number = effect.transfer.number
            if isinstance(effect, Write | Finish):
                # In order, by one writer per transfer: the check comes after the last chunk.
                jobs = self._jobs.get(number)
                if jobs is None:
                    self._jobs[number] = [effect]
                    self._spawn(self._write(effect.transfer))
                else:
                    jobs.append(effect)
            elif isinstance(effect, Land):
                self._spawn(self._land(effect.transfer))
            else:
                self._spawn(self._discard(effect.transfer))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _land(self, transfer: Transfer) -> None:
        record = Record(
            transfer.peer,
            transfer.transfer_id,
            transfer.name,
            transfer.size,
            transfer.chunk_size,
            transfer.digest,
        )
        landing = Landing(self.downloads, transfer.name, record.part_name)
        problem = ""
        try:
            offset = await asyncio.to_thread(landing.open, record, self._seal)
        except E2EChatError as exc:
            offset, problem = 0, str(exc)
        else:
            self._landings[transfer.number] = landing
        self._publish(self.transfers.landed(transfer, offset, self._clock(), problem))
        if transfer.state is State.CANCELLED:
            await self._discard(transfer)

    async def _write(self, transfer: Transfer) -> None:
        """The writer of one transfer: its chunks in order, a batch per thread call, then
        the check of the whole file."""
        number = transfer.number
        try:
            while jobs := self._jobs.get(number):
                writes = [job for job in jobs if isinstance(job, Write)]
                finish = len(writes) < len(jobs)
                self._jobs[number] = []
                landing = self._landings.get(number)
                if landing is None or transfer.final:
                    return
                if writes:
                    try:
                        await asyncio.to_thread(_write_all, landing, writes)
                    except (E2EChatError, ValueError) as exc:
                        self._publish(self.transfers.cancel(number, f"the file could not be written: {exc}"))
                        await self._discard(transfer)
                        return
                    self._publish(self.transfers.written(transfer, landing.written, self._clock()))
                if finish:
                    await self._finish(transfer, landing)
        finally:
            self._jobs.pop(number, None)

    async def _finish(self, transfer: Transfer, landing: Landing) -> None:
        self._landings.pop(transfer.number, None)
        try:
            final = await asyncio.to_thread(landing.finish, transfer.digest)
        except E2EChatError as exc:
            await asyncio.to_thread(landing.discard)
            self._publish(self.transfers.finished(transfer, False, detail=f"it could not be kept: {exc}"))
            return
        if final is None:
            detail = "the file did not match the hash in its offer: it was deleted"
            self._publish(self.transfers.finished(transfer, False, detail=detail))
        else:
            self._publish(self.transfers.finished(transfer, True, path=str(final)))

    async def _discard(self, transfer: Transfer) -> None:
        landing = self._landings.pop(transfer.number, None)
        if landing is not None:
            await asyncio.to_thread(landing.discard)

    def _close_ended(self) -> None:
        for number in list(self._ahead):  # (one paused, or stopped, may not go on for long)
            transfer = self.transfers.get(number)
            if transfer is None or transfer.state is not State.ACTIVE:
                del self._ahead[number]
        for number in list(self._sources):
            transfer = self.transfers.get(number)
            if transfer is None or transfer.final:
                self._sources.pop(number).close()
                if transfer is not None and self.sending is not None:
                    self._spawn(asyncio.to_thread(forget_sending, self.sending, transfer.transfer_id))

    def _publish(self, events: Sequence[Event]) -> None:
        for event in events:
            self.link.events.put_nowait(event)


def _read_all(reads: list[tuple[Source, int, int]]) -> list[bytes]:
    return [source.read(offset, size) for source, offset, size in reads]


def _write_all(landing: Landing, batch: list[Write]) -> None:
    for write in batch:
        landing.write(write.offset, write.data)
