"""The mail that relays gone queued, in the cluster's JetStream mail bucket: found, and
taken by the relay its owner is online on (relay/cluster/jetstream_store.py keeps the rest).

A relay notes which items are orphans: once, when it has heard every live relay after it
started (``survey_async``: every key whose relay it does not hear), and when it takes a
relay for dead (``gone_async``: that relay's keys). Each is a stream's subjects under a
filter, a request per 100,000 keys: a register costs no request to find its mail. A relay
heard again has its items back (``revived``). The relay its owner is online on reads them
(``orphans_async``), keeps the ones queued for the owner's identity key, and removes them
from the bucket (``drop_async``) once kept.

A key's messages are removed from the stream outright (``MailBucket.purge``), not marked
deleted as the key-value API does: nobody watches the mail bucket for deletes, and a marker
would stay for the bucket's time to live, to be listed.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Sequence

import nats.js.errors
from nats.js.client import JetStreamContext
from nats.js.kv import KeyValue

from e2echat.errors import RemoteProtocolError
from e2echat.relay.cluster.records import decode_item, nick_of_key, node_of_key
from e2echat.relay.store import MailItem

log = logging.getLogger("e2echat.relay.cluster.orphans")

_MISSING = (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError)


class MailBucket:
    """The mail bucket ``name``, and the stream under it."""

    def __init__(self, js: JetStreamContext, bucket: KeyValue, name: str) -> None:
        self.js = js
        self.kv = bucket
        self.stream = f"KV_{name}"
        self.subjects = f"$KV.{name}."

    async def keys(self, pattern: str) -> list[str]:
        """The keys that match ``pattern`` (a subject filter), a page a request until the
        server's total: nats-server lists at most 100,000 subjects in one answer, and
        nats-py asks for the first page only. A key written or removed meanwhile may
        shift another from page to page: listed twice (hence the set), or not at all
        (as a key written after the list is)."""
        # ``stream_info``'s request, with an offset.
        api = f"{self.js._prefix}.STREAM.INFO.{self.stream}"
        keys: set[str] = set()
        listed = 0
        while True:
            request = json.dumps({"subjects_filter": self.subjects + pattern, "offset": listed})
            answer = await self.js._api_request(api, request.encode(), timeout=self.js._timeout)
            page = answer.get("state", {}).get("subjects") or {}
            keys.update(subject[len(self.subjects) :] for subject in page)
            listed += len(page)
            if not page or listed >= answer.get("total", 0):
                return sorted(keys)

    async def purge(self, key: str, revision: int = 0) -> None:
        """Remove ``key`` (with ``revision``: only its messages up to that one)."""
        upto = revision + 1 if revision else None
        await self.js.purge_stream(self.stream, subject=self.subjects + key, seq=upto)


class Orphans:
    """The items of relays gone, as relay ``node`` has noted them."""

    def __init__(self, bucket: MailBucket, node: str) -> None:
        self.bucket = bucket
        self.node = node
        #: nick -> the keys of its items queued by relays gone
        self._keys: dict[str, set[str]] = {}

    async def survey_async(self, alive: Callable[[str], bool]) -> list[str]:
        """Note every item queued by a relay not ``alive`` (a relay started knows no more
        than the bucket says). The nicks that have some."""
        return self._note(await self.bucket.keys("*.*.*"), alive)

    async def gone_async(self, node: str) -> list[str]:
        """Relay ``node`` is taken for dead: note its items. The nicks that have some."""
        return self._note(await self.bucket.keys(f"*.{node}.*"), lambda other: other != node)

    def revived(self, node: str) -> None:
        """``node`` is heard again: its items are its own to hand over."""
        for keys in self._keys.values():
            keys.difference_update([key for key in keys if node_of_key(key) == node])

    def _note(self, keys: list[str], alive: Callable[[str], bool]) -> list[str]:
        nicks: set[str] = set()
        for key in keys:
            try:
                nick, node = nick_of_key(key), node_of_key(key)
            except RemoteProtocolError:
                continue
            if node != self.node and not alive(node):
                self._keys.setdefault(nick, set()).add(key)
                nicks.add(nick)
        return sorted(nicks)

    async def orphans_async(self, nick: str, identity_key: bytes) -> list[tuple[str, int, MailItem]]:
        """The items noted for ``nick`` that were queued for ``identity_key``: (key,
        revision, item), oldest first."""
        found: list[tuple[str, int, MailItem]] = []
        for key in list(self._keys.get(nick, ())):
            try:
                entry = await self.bucket.kv.get(key)
                assert entry.value is not None and entry.revision is not None
                for_key, item = decode_item(nick, entry.value)
            except _MISSING:
                self._forget(nick, key)
                continue
            except RemoteProtocolError as exc:  # read once: it expires with the bucket's bound
                log.warning("a mailbox item in the cluster's mail bucket does not decode: %s", exc)
                self._forget(nick, key)
                continue
            if for_key == identity_key:  # public keys: nothing to time
                found.append((key, entry.revision, item))
        found.sort(key=lambda each: (each[2].queued_at, each[2].seq))
        return found

    async def drop_async(self, nick: str, taken: Sequence[tuple[str, int]]) -> None:
        """``nick``'s items under these keys are kept by this relay now: gone from the
        bucket (each only as it was read: up to its revision)."""
        await asyncio.gather(*(self.bucket.purge(key, revision) for key, revision in taken))
        for key, _ in taken:
            self._forget(nick, key)

    def _forget(self, nick: str, key: str) -> None:
        keys = self._keys.get(nick)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._keys[nick]
