"""A cluster relay's link to the ``rooms`` key-value bucket: the memberships it keeps,
put there (and deleted) in the order they change, and every other relay's, watched.

The relays see a membership through the bucket and a send's copies through a request
(relay/cluster/relay.py): two paths, which NATS does not order against each other. So a
forward carries the revision of the bucket that the sender's relay last wrote
(``encode_ordered``), and the relay it goes to waits (at most ``ROOMS_WAIT``) until it has read
the bucket that far before it delivers: a client never sees a room message from someone
whose join it has not been told of yet, as on one relay. nats-py's exceptions are
translated here and nowhere else (but for the relay's own).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from e2echat.errors import RemoteProtocolError
from e2echat.relay.cluster.jetstream_store import open_bucket, watch_again
from e2echat.relay.cluster.rooms import (
    DropMembership,
    SaveMembership,
    decode_membership,
    encode_membership,
    member_key,
    parse_member_key,
)

if TYPE_CHECKING:
    from e2echat.relay.cluster.relay import ClusterRelay

log = logging.getLogger("e2echat.relay.cluster.roomlink")

#: how long a forward waits for the bucket to be read that far (its copies are late by
#: that, not lost) and a forward for this relay's writes to be made
ROOMS_WAIT = 1.0
#: each key-value operation
NATS_TIMEOUT = 5.0


def rooms_bucket(cluster: str) -> str:
    return f"{cluster}_rooms"


class RoomsLink:
    def __init__(self, relay: ClusterRelay) -> None:
        self.relay = relay
        self._kv: KeyValue | None = None
        self._watcher: KeyValue.KeyWatcher | None = None
        #: key -> the revision this relay last put it at: the memberships it keeps
        self._mine: dict[str, int] = {}
        #: the other relays' keys as last seen (key -> node)
        self._theirs: dict[str, str] = {}
        #: what to write, in order
        self._writes: asyncio.Queue[SaveMembership | DropMembership] = asyncio.Queue()
        #: the highest revision this relay wrote, and the highest it has read
        self.written = 0
        self._read = 0
        self._news = asyncio.Event()
        #: set while nothing waits to be written
        self._idle = asyncio.Event()
        self._idle.set()
        #: set once the bucket has been read through (the first time)
        self.ready = asyncio.Event()

    async def start(self, js: JetStreamContext) -> None:
        bucket = rooms_bucket(self.relay.names.name)
        self._kv = await open_bucket(js, bucket, None, self.relay.replicas)
        watcher = await self._kv.watchall()
        self.relay._spawn(self._watch(watcher))
        self.relay._spawn(self._write_all())

    def request(self, request: SaveMembership | DropMembership) -> None:
        self._writes.put_nowait(request)
        self._idle.clear()

    async def stop_watching(self) -> None:
        """NATS is back after an outage: the watch is read anew (``_watch``). What was
        written before may not be there (a server without its store): forwards wait for
        this relay's writes from now on only."""
        self.written = 0
        if self._watcher is not None:
            with contextlib.suppress(Exception):
                await self._watcher.stop()  # type: ignore[no-untyped-call]

    # -- writing ---------------------------------------------------------------------------

    async def written_so_far(self) -> int:
        """The revision this relay's writes asked for so far reach, once made (or after
        ``ROOMS_WAIT``: a forward is not held longer for them)."""
        if not self._idle.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), ROOMS_WAIT)
        return self.written

    async def _write_all(self) -> None:
        while True:
            request = await self._writes.get()
            try:
                await self._write(request)
            except Exception as exc:  # NATS out of reach: the key is put anew at the next register
                log.info("the rooms bucket: %s", exc or type(exc).__name__)
            finally:
                if self._writes.empty():
                    self._idle.set()

    async def _write(self, request: SaveMembership | DropMembership) -> None:
        assert self._kv is not None
        if isinstance(request, SaveMembership):
            membership = request.membership
            key = member_key(membership.room, membership.nick)
            revision = await asyncio.wait_for(self._kv.put(key, encode_membership(membership)), NATS_TIMEOUT)
            self._mine[key] = revision
            self.written = revision  # (writes are made one at a time, in order)
            return
        key = member_key(request.room, request.nick)
        revision = self._mine.pop(key, 0)
        if not revision:
            return  # another relay's now (its member moved there), or never put
        # Only if unchanged since: a put by another relay meanwhile is the member's move.
        await asyncio.wait_for(self._kv.delete(key, last=revision), NATS_TIMEOUT)
        # A delete's revision is not returned: it is at least the one after the put's.
        self.written = revision + 1

    # -- reading ---------------------------------------------------------------------------

    async def read_to(self, revision: int) -> None:
        """Wait until the bucket is read up to ``revision`` (at most ``ROOMS_WAIT``)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ROOMS_WAIT
        while self._read < revision:
            left = deadline - loop.time()
            if left <= 0:
                log.info("the rooms bucket not read to %d in %gs: delivering", revision, ROOMS_WAIT)
                return
            self._news.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._news.wait(), left)

    async def _watch(self, watcher: KeyValue.KeyWatcher) -> None:
        assert self._kv is not None
        while True:
            self._watcher = watcher
            await self._read_through(watcher)
            watcher = await watch_again(self._kv, "rooms")

    async def _read_through(self, watcher: KeyValue.KeyWatcher) -> None:
        listed: set[str] | None = set()
        async for entry in watcher:
            if entry is None:  # read through: what follows is news
                if listed is not None:
                    self._reconcile(listed)
                    listed = None
                if not self.ready.is_set():
                    self.ready.set()
                    self._put_ours()
                continue
            if listed is not None:
                listed.add(entry.key)
            try:
                self._changed(entry.key, entry.revision or 0, entry.operation, entry.value)
            except Exception:  # a bug: say so, and keep watching
                log.exception("error handling a change to the rooms bucket")

    def _put_ours(self) -> None:
        """The bucket read through at start-up: every membership kept here is put under
        this relay (a restarted relay is a new node)."""
        for request in self.relay.cluster_core.memberships():
            self.request(request)

    def _reconcile(self, listed: set[str]) -> None:
        """Read through anew: the other relays' keys deleted while out of touch are gone."""
        for key in [key for key in self._theirs if key not in listed]:
            self._changed(key, 0, "DEL", None)

    def _changed(self, key: str, revision: int, operation: str | None, value: bytes | None) -> None:
        relay, core = self.relay, self.relay.cluster_core
        loop = asyncio.get_running_loop()
        if revision > self._read:
            self._read = revision
            self._news.set()
        try:
            room, nick = parse_member_key(key)
        except RemoteProtocolError as exc:
            log.warning("%s", exc)
            return
        mine = self._mine.get(key)
        if mine is not None and 0 < revision <= mine:
            return  # our own put, or older news
        if operation is not None or not value:  # deleted or purged
            self._theirs.pop(key, None)
            if mine is not None:
                del self._mine[key]
            relay._apply(core.remote_member_gone(room, nick))
            return
        try:
            membership = decode_membership(key, value)
        except RemoteProtocolError as exc:
            log.warning("a membership in the rooms bucket does not decode: %s", exc)
            return
        if membership.node == relay.node:
            return  # an old put of ours, dropped since
        if mine is not None:  # its member registered on that relay: kept there now
            del self._mine[key]
        self._theirs[key] = membership.node
        starting = not self.ready.is_set()
        relay._apply(core.remote_member(membership, loop.time(), starting=starting))
