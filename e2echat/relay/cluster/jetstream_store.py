"""The store of a relay of a cluster, in JetStream: identities, prekey bundles and
mailboxes shared by every relay of the cluster, and kept when any of them dies.

Two key-value buckets (relay/cluster/records.py says what their values hold):

- ``<name>_ids``: one record per nick (identity, bundle, and the relay it is online on).
  Every write is a compare-and-set on the revision this relay last read or wrote: a
  one-time prekey handed out by another relay meanwhile is not written back (``merged``).
  A relay hands out the bundle of someone away (``pop``) by taking the first one-time
  prekey out with a compare-and-set: of two relays racing on one bundle, each hands out
  another prekey, or the loser retries and finds none left. While the nick is online on a
  live relay (``adopt`` wrote its node into the record, under compare-and-set too), only
  that relay hands its one-time prekeys out; another gives the signed prekey alone.
  Records expire ``identity_ttl`` after their last write, as a relay forgets identities.
- ``<name>_mail``: one key per mailbox item, ``<nick>.<node>.<seq>``, written by the relay
  that queued it and removed once it is acknowledged or handed over. When its owner comes
  online on another relay, the relays alive hand their items over as before
  (relay/cluster/relay.py); the items of a relay that died are read from here, kept by
  the relay the owner is on, then removed (relay/cluster/orphans.py). Items expire twice
  ``mailbox_ttl`` after they were written: the relay keeping them drops (and reports)
  them at ``mailbox_ttl``; the bucket's own bound is for items of a relay that died, for
  a nick that never came back.

Durability: ``apply`` returns once JetStream acknowledged every write (a stream's
acknowledgement comes once the write is stored on its replicas, ``--cluster-replicas``):
only then does the relay say ``queued``. While NATS is out of reach it tries again, for up
to ``PATIENCE`` seconds (the relay holds back what waits for it); then the store fails,
and the relay stops, as with a disk that fails.

``apply`` and ``load`` run in the relay's worker thread, and run their work on the relay's
event loop, which owns the NATS connection; the rest is called on the loop. All of the
state here is touched from the loop only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import replace
from typing import Any, TypeVar

import nats.errors
import nats.js.errors
from nats.js.api import KeyValueConfig, StorageType
from nats.js.client import JetStreamContext
from nats.js.kv import KeyValue

from e2echat.errors import RemoteProtocolError, StoreError
from e2echat.relay.cluster.orphans import MailBucket, Orphans
from e2echat.relay.cluster.records import (
    Record,
    decode_record,
    encode_item,
    encode_record,
    mail_key,
    merged,
    nick_prefix,
    popped,
)
from e2echat.relay.cluster.wire import Names
from e2echat.relay.limits import Limits
from e2echat.relay.store import (
    Dequeue,
    Enqueue,
    ForgetIdentity,
    ForgetMember,
    Identity,
    Op,
    SaveBundle,
    SaveIdentity,
    SaveMember,
    Snapshot,
    StoredBundle,
)
from e2echat.wire.grammar import is_valid_nick
from e2echat.wire.objects import Bundle

log = logging.getLogger("e2echat.relay.cluster.jetstream_store")

T = TypeVar("T")

#: how long ``apply`` keeps trying while NATS is out of reach: a NATS server restarting
#: takes a few seconds; past this the relay stops, and its clients fail over
PATIENCE = 20.0
#: each round of writes
WRITE_TIMEOUT = 5.0
#: rounds of read and compare-and-set for one record before giving up on it
CAS_TRIES = 8
_MISSING = (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError)


class JetStreamStore:
    """A ``RelayStore`` in the cluster's JetStream, for relay ``node``. ``open_async``
    (on the relay's loop, once connected to NATS) before ``load``."""

    durable = True

    def __init__(self, names: Names, node: str, limits: Limits, *, replicas: int = 1) -> None:
        self.names = names
        self.node = node
        self.limits = limits
        self.replicas = replicas
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ids: KeyValue | None = None
        self._mail: KeyValue | None = None
        #: nick -> its record as this relay last read or wrote it, and that revision: the
        #: base of its next compare-and-set
        self._records: dict[str, tuple[Record, int]] = {}
        #: nick -> the seqs of the items this relay queued for it and still has
        self._queued: dict[str, set[int]] = {}
        #: nick -> its record and revision as the watch last saw them (not a base for
        #: merges: this relay's memory may not have seen that record)
        self._latest: dict[str, tuple[Record, int]] = {}
        #: the mail of relays gone (``open_async`` makes it)
        self.orphans: Orphans | None = None
        self._closed = False
        self._watcher: KeyValue.KeyWatcher | None = None

    @property
    def where(self) -> str:
        return f"JetStream buckets {self.names.name}_ids and {self.names.name}_mail"

    async def open_async(self, js: JetStreamContext) -> None:
        """Make (or find) the buckets."""
        self._loop = asyncio.get_running_loop()
        self._ids = await open_bucket(js, f"{self.names.name}_ids", self.limits.identity_ttl, self.replicas)
        mail = f"{self.names.name}_mail"
        self._mail = await open_bucket(js, mail, 2 * self.limits.mailbox_ttl, self.replicas)
        self.orphans = Orphans(MailBucket(js, self._mail, mail), self.node)

    # -- RelayStore, in the worker thread ------------------------------------------------------

    def load(self) -> Snapshot:
        return self._on_loop(self._load())

    def apply(self, ops: Sequence[Op]) -> None:
        if ops:
            self._on_loop(self._patiently(list(ops)))

    def close(self) -> None:
        self._closed = True  # the relay closes its NATS connection

    def _on_loop(self, work: Coroutine[Any, Any, T]) -> T:
        if self._loop is None or self._closed:
            work.close()
            raise StoreError(path=self.where, detail="the store is not open")
        return asyncio.run_coroutine_threadsafe(work, self._loop).result()

    # -- loading -------------------------------------------------------------------------------

    async def _load(self) -> Snapshot:
        """Every nick's identity and bundle; no mail (this relay, a new node, queued none:
        the items of relays gone are taken as their owners come online)."""
        ids = self._bucket(self._ids)
        try:
            keys = await ids.keys()
        except nats.js.errors.NoKeysError:
            keys = []
        except Exception as exc:
            raise StoreError(path=self.where, detail=_reason(exc)) from None
        snapshot = Snapshot()
        for key in keys:
            found = await self._read(key)
            if found is None:
                continue
            record, _ = found
            snapshot.identities.append(record.identity)
            if record.bundle is not None:
                snapshot.bundles.append(record.bundle)
        snapshot.identities.sort(key=lambda identity: identity.nick)
        snapshot.bundles.sort(key=lambda bundle: bundle.nick)
        return snapshot

    async def _read(self, key: str) -> tuple[Record, int] | None:
        """A record as it is now (and remembered as the base of the next write), or None."""
        ids = self._bucket(self._ids)
        try:
            nick = _nick_of(key)
            entry = await ids.get(key)
            assert entry.value is not None and entry.revision is not None
            found = decode_record(nick, entry.value), entry.revision
        except _MISSING:
            self._records.pop(nick, None)
            return None
        except RemoteProtocolError as exc:
            log.warning("a record in the cluster's ids bucket does not decode: %s", exc)
            return None
        self._records[nick] = found
        return found

    # -- writing -------------------------------------------------------------------------------

    async def _patiently(self, ops: list[Op]) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        while True:
            try:
                await asyncio.wait_for(self._write(ops), WRITE_TIMEOUT)
                return
            except StoreError:
                raise
            except Exception as exc:  # NATS out of reach, or too slow: the writes repeat safely
                if loop.time() - start > PATIENCE:
                    raise StoreError(path=self.where, detail=_reason(exc)) from None
                log.info("the cluster's store did not answer (%s); trying again", _reason(exc))
                await asyncio.sleep(0.5)

    async def _write(self, ops: list[Op]) -> None:
        """Every op of the batch, in order: what each key ends up holding, then every key
        written at once (each key once: the batch's order within a key is kept)."""
        records: dict[str, Record] = {}
        puts: dict[str, bytes] = {}
        deletes: set[str] = set()
        for op in ops:
            if isinstance(op, SaveIdentity):
                records[op.identity.nick] = self._with_identity(records, op.identity)
            elif isinstance(op, SaveBundle):
                records[op.bundle.nick] = self._with_bundle(records, op.bundle)
            elif isinstance(op, Enqueue):
                item = op.item
                key = mail_key(item.to, self.node, item.seq)
                puts[key] = encode_item(self._identity_key(records, item.to), item)
                deletes.discard(key)
                self._queued.setdefault(item.to, set()).add(item.seq)
            elif isinstance(op, Dequeue):
                self._dequeue(op, puts, deletes)
            elif isinstance(op, ForgetIdentity):
                # Only what this relay queued goes: the record is the cluster's, and
                # expires on its own once nobody writes it (another relay may know it).
                self._dequeue(Dequeue(op.nick, upto=2**63 - 1), puts, deletes)
                records.pop(op.nick, None)
            elif isinstance(op, SaveMember | ForgetMember):
                pass  # room memberships are kept by the rooms of the cluster, not here
        mail = self._bucket(self._mail)
        writes: list[Coroutine[Any, Any, Any]] = [self._save(record) for record in records.values()]
        writes += [mail.put(key, value) for key, value in puts.items()]
        writes += [self._mail_bucket().purge(key) for key in deletes]
        await asyncio.gather(*writes)

    def _dequeue(self, op: Dequeue, puts: dict[str, bytes], deletes: set[str]) -> None:
        queued = self._queued.get(op.to, set())
        gone = {seq for seq in queued if seq <= op.upto} | (queued & set(op.seqs))
        for seq in gone:
            key = mail_key(op.to, self.node, seq)
            puts.pop(key, None)
            deletes.add(key)
        queued -= gone
        if not queued:
            self._queued.pop(op.to, None)

    def _current(self, records: dict[str, Record], nick: str) -> Record | None:
        if nick in records:
            return records[nick]
        known = self._records.get(nick)
        return known[0] if known is not None else None

    def _with_identity(self, records: dict[str, Record], identity: Identity) -> Record:
        record = self._current(records, identity.nick)
        if record is None:
            return Record(identity)
        if record.identity.identity_key != identity.identity_key:  # public keys: nothing to time
            return Record(identity, owner=record.owner)  # the old key's bundle is no one's now
        return replace(record, identity=identity)

    def _with_bundle(self, records: dict[str, Record], bundle: StoredBundle) -> Record:
        record = self._current(records, bundle.nick)
        assert record is not None, "a bundle saved before its identity"
        return replace(record, signed=bundle.signed, one_time=bundle.one_time)

    def _identity_key(self, records: dict[str, Record], nick: str) -> bytes:
        # This batch's own change first, then the newest the watch saw (what the relay
        # learned the nick by), then what this relay last read or wrote.
        latest = self._latest.get(nick)
        record = records.get(nick) or (latest[0] if latest is not None else self._current(records, nick))
        # Every nick given mail is known to the relay, so here too; an item whose key is
        # unknown (zeros) is handed to no one, and expires.
        return record.identity.identity_key if record is not None else bytes(32)

    async def _save(self, ours: Record) -> None:
        """Write ``ours`` under compare-and-set; if the record moved on meanwhile, merge:
        what another relay handed out stays handed out. A record another live relay owns
        now (its nick is online there) is left to it."""
        ids, key = self._bucket(self._ids), nick_prefix(ours.identity.nick)
        record = ours
        for _ in range(CAS_TRIES):
            known = self._records.get(ours.identity.nick)
            try:
                if known is None:
                    revision = await ids.create(key, encode_record(record))
                else:
                    revision = await ids.update(key, encode_record(record), last=known[1])
                self._records[ours.identity.nick] = (record, revision)
                return
            except nats.js.errors.KeyWrongLastSequenceError:
                pass
            base = known[0] if known is not None else None
            theirs = await self._read(key)
            if theirs is None:
                continue  # gone (expired, or never there): created next round
            now = theirs[0]
            if now.owner and now.owner != self.node:
                log.info("%s: its record is another relay's now; not written", ours.identity.nick)
                return
            if now.identity.identity_key != ours.identity.identity_key:  # public keys
                continue  # re-keyed: ours replaces it, bundle and all
            if not ours.signed:  # we never had its bundle: theirs stands
                record = replace(ours, signed=now.signed, one_time=now.one_time)
            else:
                base_one_time = base.one_time if base is not None else b""
                record = replace(ours, one_time=merged(ours.one_time, base_one_time, now.one_time))
        raise StoreError(path=self.where, detail=f"{ours.identity.nick}'s record kept changing")

    # -- what the relay asks of the cluster's records, on the loop -----------------------------

    async def adopt_async(self, nick: str, identity_key: bytes) -> StoredBundle | None:
        """``nick`` is now online here with ``identity_key``: take its record (this relay
        hands its one-time prekeys out from now on) and return its bundle, if it has one
        for that key."""
        ids, key = self._bucket(self._ids), nick_prefix(nick)
        for attempt in range(CAS_TRIES):
            # First as the watch last saw it (one round trip, not two, at each register:
            # the compare-and-set says whether that is still so); then read.
            found = self._latest.get(nick) if attempt == 0 else await self._read(key)
            try:
                if found is None:  # new to the cluster: ours from the start
                    owned = Record(Identity(nick, identity_key, 0.0), owner=self.node)
                    self._records[nick] = (owned, await ids.create(key, encode_record(owned)))
                    return None
                record, revision = found
                if record.identity.identity_key != identity_key:  # public keys: nothing to time
                    # Another key's: its bundle is no one's now; this register's replaces it.
                    owned = Record(replace(record.identity, identity_key=identity_key), owner=self.node)
                else:
                    owned = replace(record, owner=self.node)
                self._records[nick] = (owned, await ids.update(key, encode_record(owned), last=revision))
            except nats.js.errors.KeyWrongLastSequenceError:
                continue
            return owned.bundle
        return None

    async def disown_async(self, nick: str) -> None:
        """``nick`` left this relay: its one-time prekeys are anyone's to hand out."""
        ids, key = self._bucket(self._ids), nick_prefix(nick)
        for _ in range(CAS_TRIES):
            found = await self._read(key)
            if found is None or found[0].owner != self.node:
                return
            record, revision = found
            free = replace(record, owner="")
            try:
                self._records[nick] = (free, await ids.update(key, encode_record(free), last=revision))
                return
            except nats.js.errors.KeyWrongLastSequenceError:
                continue

    async def pop_async(self, nick: str, owner_alive: Callable[[str], bool]) -> Bundle | None:
        """A bundle of ``nick`` (away, as far as this relay knows), with a one-time prekey
        taken out of its record under compare-and-set; None if it has none."""
        ids, key = self._bucket(self._ids), nick_prefix(nick)
        for _ in range(CAS_TRIES):
            found = await self._read(key)
            if found is None:
                return None
            record, revision = found
            bundle, after = popped(record, owner_alive)
            if after is None:
                return bundle
            try:
                self._records[nick] = (after, await ids.update(key, encode_record(after), last=revision))
            except nats.js.errors.KeyWrongLastSequenceError:
                continue  # another relay took one meanwhile: take the next
            return bundle
        # Lost every race: the signed prekey alone is still a bundle (X3DH without a one-time prekey).
        found = await self._read(key)
        return popped(replace(found[0], one_time=b""), owner_alive)[0] if found else None

    async def watch_async(self, learn: Callable[[Identity], None]) -> None:
        """Every record written, by any relay, from the bucket's contents on: its identity
        to ``learn``. Watched anew whenever a watch ends (``rewatch``, after a reconnect:
        a watch does not survive a restart of the server)."""
        ids = self._bucket(self._ids)
        while True:
            try:
                self._watcher = watcher = await ids.watchall()
                async for entry in watcher:
                    if entry is None:
                        continue
                    if entry.operation is not None or not entry.value:  # deleted or purged
                        with contextlib.suppress(RemoteProtocolError):
                            self._latest.pop(_nick_of(entry.key), None)
                        continue
                    try:
                        record = decode_record(_nick_of(entry.key), entry.value)
                        self._latest[record.identity.nick] = (record, entry.revision)
                        learn(record.identity)
                    except RemoteProtocolError as exc:
                        log.warning("a record in the cluster's ids bucket does not decode: %s", exc)
            except Exception as exc:  # NATS out of reach: watched again once back
                log.info("watching the cluster's ids bucket: %s", _reason(exc))
            await asyncio.sleep(1.0)

    async def rewatch(self) -> None:
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            with contextlib.suppress(Exception):
                await watcher.stop()  # type: ignore[no-untyped-call]  # and ``watch_async`` reads anew

    def open_orphans(self) -> Orphans:
        """The mail of relays gone (relay/cluster/orphans.py)."""
        if self.orphans is None:
            raise StoreError(path=self.where, detail="the store is not open")
        return self.orphans

    def _mail_bucket(self) -> MailBucket:
        return self.open_orphans().bucket

    def _bucket(self, bucket: KeyValue | None) -> KeyValue:
        if bucket is None:
            raise StoreError(path=self.where, detail="the store is not open")
        return bucket


async def open_bucket(js: JetStreamContext, name: str, ttl: float | None, replicas: int) -> KeyValue:
    """The cluster's bucket ``name``, made if it is not there yet: one value a key, on
    disk, on ``replicas`` servers, each value kept ``ttl`` seconds (None: until removed)."""
    config = KeyValueConfig(bucket=name, history=1, ttl=ttl, storage=StorageType.FILE, replicas=replicas)
    try:
        return await js.create_key_value(config)
    except nats.js.errors.BadRequestError:
        # Made by a relay with other limits (another time to live): use it as it is.
        return await js.key_value(name)


async def watch_again(kv: KeyValue, what: str) -> KeyValue.KeyWatcher:
    """A new watch of every key of ``kv`` (the ``what`` bucket), tried each second until
    NATS takes it: a watch does not survive a restart of the server, and the next reconnect
    stops a wait that never ends."""
    while True:
        try:
            return await kv.watchall()
        except Exception as exc:  # not back yet
            log.info("watching the %s bucket again: %s", what, exc or type(exc).__name__)
            await asyncio.sleep(1.0)


def _nick_of(key: str) -> str:
    """The nick whose record is under ``key``; ``RemoteProtocolError`` if none."""
    try:
        nick = bytes.fromhex(key).decode("ascii")
    except ValueError:
        nick = ""
    if not is_valid_nick(nick):
        raise RemoteProtocolError(detail="a record's key names no valid nick")
    return nick


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return text or type(exc).__name__
