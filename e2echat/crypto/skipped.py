"""Skipped message keys: the keys of messages that have not arrived yet, under a budget
shared by every ratchet session of one client.

Pure (no I/O). When a message arrives after a gap, the Double Ratchet derives the keys of
the messages it skipped and keeps them until those arrive late. Each kept key is memory
an attacker (or a lossy relay) can make us spend, so there are two limits, and the oldest
key goes first when either is reached (a late message that old is the least likely to
come at all):

* ``per_session`` (2000, libsignal's MAX_MESSAGE_KEYS): one peer's gaps cannot push out
  the keys another peer's late messages need;
* ``total`` (50,000): the whole client stays within about 27 MB for skipped keys even
  with hundreds of sessions, each with gaps (a key costs about 460 bytes of Python
  objects, and up to 540 with the slack that keys churning through the dicts leave,
  measured with tracemalloc; tests/test_sessions_ratchet.py holds it to that).

The limit on keys derived for ONE message (``ratchet.MAX_SKIP``) lives in the ratchet;
that one bounds CPU, these bound memory.
"""

from __future__ import annotations

from collections import OrderedDict

MAX_SKIPPED_PER_SESSION = 2000
MAX_SKIPPED_TOTAL = 50_000

#: (ratchet public key, message number) -> (header key of that chain, message key)
Entry = tuple[bytes, int, bytes, bytes]


class SkippedKeys:
    """The keys skipped by all sessions of one client, oldest first.

    A session registers once (``register``) and uses the token it gets back; the budget
    never looks inside the keys. Not thread-safe: owned by the client core's one loop."""

    __slots__ = ("_order", "_owned", "_tokens", "per_session", "total")

    def __init__(self, *, per_session: int = MAX_SKIPPED_PER_SESSION, total: int = MAX_SKIPPED_TOTAL) -> None:
        if per_session < 1 or total < 1:
            raise ValueError("skipped-key limits must be positive")
        self.per_session = per_session
        self.total = total
        # Global age order (for the total limit) and one dict per session (for the
        # per-session limit and lookups); both ordered oldest first, both O(1) per key.
        self._order: OrderedDict[tuple[int, bytes, int], None] = OrderedDict()
        self._owned: dict[int, OrderedDict[tuple[bytes, int], tuple[bytes, bytes]]] = {}
        self._tokens = 0

    def register(self) -> int:
        """A token for a new session's keys."""
        self._tokens += 1
        self._owned[self._tokens] = OrderedDict()
        return self._tokens

    def release(self, owner: int) -> None:
        """Forget every key of a session that is closed or replaced."""
        for ratchet_key, number in self._owned.pop(owner, {}):
            del self._order[owner, ratchet_key, number]

    def get(self, owner: int, ratchet_key: bytes, number: int) -> tuple[bytes, bytes] | None:
        """(header key, message key) kept for that message, or None."""
        return self._owned[owner].get((ratchet_key, number))

    def discard(self, owner: int, ratchet_key: bytes, number: int) -> None:
        """Forget one key: its message arrived (each key opens one message, once)."""
        owned = self._owned[owner]
        if owned.pop((ratchet_key, number), None) is not None:
            del self._order[owner, ratchet_key, number]
            if not owned:
                self._owned[owner] = OrderedDict()  # see add

    def add(self, owner: int, entries: list[Entry]) -> None:
        """Keep ``entries`` (oldest first), then evict the oldest beyond either limit."""
        owned, order = self._owned[owner], self._order
        for ratchet_key, number, header_key, message_key in entries:
            owned[ratchet_key, number] = (header_key, message_key)
            order[owner, ratchet_key, number] = None
        while len(owned) > self.per_session:
            (ratchet_key, number), _ = owned.popitem(last=False)
            del order[owner, ratchet_key, number]
        while len(order) > self.total:
            (evicted, ratchet_key, number), _ = order.popitem(last=False)
            keys = self._owned[evicted]
            del keys[ratchet_key, number]
            if not keys:
                # An emptied dict keeps the table it grew to (about 100 KB for a session's
                # 2000 keys): a new one frees it, or the sessions whose keys the total
                # pushed out would cost more memory than the keys it keeps.
                self._owned[evicted] = OrderedDict()

    def entries(self, owner: int) -> list[Entry]:
        """A session's keys, oldest first (what its state serializes)."""
        return [(key, number, hk, mk) for (key, number), (hk, mk) in self._owned[owner].items()]

    def count(self, owner: int) -> int:
        return len(self._owned[owner])

    def __len__(self) -> int:
        return len(self._order)
