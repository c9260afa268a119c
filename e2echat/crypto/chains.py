"""KDF chains for ``PeerSession``: the chain step, and the receiving side's keys, under a
budget shared by every session of one client. Pure (no I/O).

A body's counter travels in the clear, and the key that opens it is known only after
stepping the receiving chain up to that counter. So anyone who can put a frame in front
of us under a peer's name (the peer, or the relay) picks how many steps we take, and a
garbage body costs them 73 bytes. Three things bound what it costs us:

* **The lookahead.** Chain keys and message keys derived while checking a counter ahead
  of the next one expected are kept, uncommitted, for counters up to MAX_SKIP ahead: a
  garbage body sent again, or another under any counter in that window, costs one lookup
  and one failed Poly1305 check, never a second derivation. Between two messages that
  authenticate, one session derives at most MAX_SKIP + 1 steps however many bodies arrive.
  A body that authenticates commits what it needs (see ``ReceivingChain.commit``); one
  that fails changes nothing that counts: the lookahead is a cache.
* **Skipped keys** (keys of messages skipped by one that authenticated: those may still
  arrive late) are kept at most MAX_SKIP per session, as libsignal keeps them, and at
  most SKIPPED_TOTAL across all sessions of a client; beyond either, the oldest go first
  (a late message that old is the least likely to come at all).
* **All lookaheads together** hold at most LOOKAHEAD_TOTAL entries; beyond it, the
  lookahead extended least recently is dropped (it is only a cache). An attacker then
  needs more than LOOKAHEAD_TOTAL / (MAX_SKIP + 1) = 32 sessions with us, one nick each,
  before dropped lookaheads make us derive a window a second time.

Memory, at most, for one client (measured with tracemalloc; tests/test_chains.py checks
it): skipped keys about 350 bytes each (3.4 MiB for SKIPPED_TOTAL), lookahead entries 64
bytes each in one ``bytearray`` per session (3.9 MiB for LOOKAHEAD_TOTAL): 7.3 MiB.
"""

from __future__ import annotations

from collections import OrderedDict

from e2echat.crypto.primitives import hmac_sha256
from e2echat.errors import DecryptionError, ReplayError

# Skipped message keys kept per peer for late (reordered) messages. libsignal keeps at
# most 2000; a relay that holds back more than that has made those messages unreadable.
# It also bounds the lookahead: a counter further ahead is refused before any derivation.
MAX_SKIP = 2000
# Skipped keys kept across every session of a client: five peers' full gaps, 3.4 MiB.
# Gaps come from messages held back or lost; a working relay leaves few, so this is ample.
SKIPPED_TOTAL = 10_000
# Lookahead entries across every session: 32 full windows, 3.9 MiB (64 bytes an entry).
LOOKAHEAD_TOTAL = 32 * (MAX_SKIP + 1)

_KEY = 32
_COUNTER_BITS = 2**64 - 1  # counters are 8 bytes on the wire
# A lookahead entry: the message key for one counter, then the chain key after it.
_ENTRY = 2 * _KEY


def chain_step(chain_key: bytes) -> tuple[bytes, bytes]:
    """(next chain key, message key), as in Signal's KDF_CK: HMAC-SHA256(chain_key, 0x02)
    and HMAC-SHA256(chain_key, 0x01)."""
    return hmac_sha256(chain_key, b"\x02"), hmac_sha256(chain_key, b"\x01")


class KeyBudget:
    """What the receiving chains of one client's sessions keep, and its limits. Owned by
    the client core's one loop (not thread-safe); a chain registers once and keeps the
    token it gets."""

    __slots__ = (
        "_ahead",
        "_ahead_entries",
        "_order",
        "_owners",
        "_skipped",
        "lookahead_total",
        "skipped_total",
    )

    def __init__(self, *, skipped_total: int = SKIPPED_TOTAL, lookahead_total: int = LOOKAHEAD_TOTAL) -> None:
        if skipped_total < 1 or lookahead_total < MAX_SKIP + 1:
            raise ValueError("the budget must hold a key, and one session's full lookahead")
        self.skipped_total = skipped_total
        self.lookahead_total = lookahead_total
        # Skipped keys: every one in global age order (for the total), and per owner (for
        # lookups and the per-session limit), both oldest first.
        # (A key in the global order is ``owner << 64 | counter``: one int, not a tuple.)
        self._order: OrderedDict[int, None] = OrderedDict()
        self._skipped: dict[int, OrderedDict[int, bytes]] = {}
        # Lookaheads, least recently extended first; their sizes summed, in entries.
        self._ahead: OrderedDict[int, bytearray] = OrderedDict()
        self._ahead_entries = 0
        self._owners = 0

    def register(self) -> int:
        self._owners += 1
        self._skipped[self._owners] = OrderedDict()
        self._ahead[self._owners] = bytearray()
        return self._owners

    def release(self, owner: int) -> None:
        """Forget everything of a session that is over."""
        for counter in self._skipped.pop(owner, {}):
            del self._order[owner << 64 | counter]
        ahead = self._ahead.pop(owner, None)
        if ahead is not None:
            self._ahead_entries -= len(ahead) // _ENTRY

    @property
    def skipped(self) -> int:
        """Skipped keys kept, across all sessions."""
        return len(self._order)

    @property
    def lookahead(self) -> int:
        """Lookahead entries kept, across all sessions."""
        return self._ahead_entries

    # -- skipped keys ----------------------------------------------------------------------

    def skipped_key(self, owner: int, counter: int) -> bytes | None:
        return self._skipped[owner].get(counter)

    def skipped_count(self, owner: int) -> int:
        return len(self._skipped[owner])

    def discard_skipped(self, owner: int, counter: int) -> None:
        """The message under this key arrived: each key opens one message, once."""
        if self._skipped[owner].pop(counter, None) is not None:
            del self._order[owner << 64 | counter]

    def keep_skipped(self, owner: int, first: int, keys: bytes) -> None:
        """Keep the message keys of counters ``first``, ``first + 1``, ... (``keys`` is
        them end to end), then evict the oldest beyond either limit."""
        owned, order, base = self._skipped[owner], self._order, owner << 64
        for index in range(len(keys) // _KEY):
            counter = first + index
            owned[counter] = keys[index * _KEY : (index + 1) * _KEY]
            order[base | counter] = None
        while len(owned) > MAX_SKIP:
            counter, _ = owned.popitem(last=False)
            del order[base | counter]
        while len(order) > self.skipped_total:
            evicted, _ = order.popitem(last=False)
            del self._skipped[evicted >> 64][evicted & _COUNTER_BITS]

    # -- lookaheads ------------------------------------------------------------------------

    def ahead(self, owner: int) -> bytearray:
        """The owner's lookahead: entries of (message key, next chain key), from the next
        counter expected on. Changed in place by its chain, which reports with ``grew``."""
        return self._ahead[owner]

    def grew(self, owner: int, entries: int) -> None:
        """``owner``'s lookahead grew (or, negative, shrank) by ``entries``. When it grew,
        it is now the most recently extended, and others are dropped beyond the total."""
        self._ahead_entries += entries
        if entries <= 0:
            return
        self._ahead.move_to_end(owner)
        while self._ahead_entries > self.lookahead_total:
            # Never ``owner`` itself: one lookahead (MAX_SKIP + 1) fits in the total.
            victim, ahead = next(iter(self._ahead.items()))
            self._ahead_entries -= len(ahead) // _ENTRY
            ahead.clear()
            self._ahead.move_to_end(victim)


class ReceivingChain:
    """The receiving half of one session: the chain, the next counter expected, and the
    keys kept for skipped messages and for counters ahead (in ``budget``)."""

    __slots__ = ("_ahead", "_budget", "_chain", "_expected", "_owner", "next_counter", "peer")

    def __init__(self, peer: str, chain_key: bytes, budget: KeyBudget) -> None:
        self.peer = peer
        self._chain = chain_key
        #: the counter of the next message expected (everything before it arrived or was skipped)
        self.next_counter = 0
        self._budget = budget
        self._owner = budget.register()
        self._ahead = budget.ahead(self._owner)  # the budget may empty it, never replace it
        # The usual case, a message under the next counter with nothing ahead derived, skips
        # the lookahead's bookkeeping: (message key, chain after it) for the next counter,
        # once derived. (One entry per session, outside the budget; never set while the
        # lookahead holds anything, which then starts with that entry.)
        self._expected: tuple[bytes, bytes] | None = None

    @property
    def missing(self) -> int:
        """Messages skipped over whose keys are still kept."""
        return self._budget.skipped_count(self._owner)

    def message_key(self, counter: int) -> tuple[bytes, bool]:
        """(the key for ``counter``, whether it is late: it fills an earlier gap). Commits
        nothing. Raises ``ReplayError`` for a counter already used (or whose key was
        dropped), ``DecryptionError`` for one more than MAX_SKIP ahead."""
        if counter < self.next_counter:
            key = self._budget.skipped_key(self._owner, counter)
            if key is None:
                raise ReplayError(peer=self.peer, counter=counter)
            return key, True
        gap = counter - self.next_counter
        ahead = self._ahead
        if not gap and not ahead:
            expected = self._expected
            if expected is None:
                chain, key = chain_step(self._chain)
                self._expected = expected = (key, chain)
            return expected[0], False
        if gap > MAX_SKIP:
            raise DecryptionError(
                peer=self.peer, detail=f"{gap} messages skipped, more than the {MAX_SKIP} allowed"
            )
        have = len(ahead) // _ENTRY
        if have <= gap:
            self._extend(gap + 1 - have)
        start = gap * _ENTRY
        return bytes(ahead[start : start + _KEY]), False

    def _extend(self, count: int) -> None:
        """Derive ``count`` more lookahead entries."""
        ahead, expected = self._ahead, self._expected
        derived = bytearray()
        if ahead:
            chain = bytes(ahead[-_KEY:])
        elif expected is not None:  # the lookahead starts with the entry already derived
            derived += expected[0]
            derived += expected[1]
            chain = expected[1]
            self._expected = None
            count -= 1
        else:
            chain = self._chain
        for _ in range(count):
            chain, key = chain_step(chain)
            derived += key
            derived += chain
        ahead += derived
        self._budget.grew(self._owner, len(derived) // _ENTRY)

    def commit(self, counter: int) -> None:
        """The message under ``counter`` authenticated (``message_key`` gave its key just
        now): forget that key; after a jump, keep the skipped keys and move the chain on."""
        if counter < self.next_counter:
            self._budget.discard_skipped(self._owner, counter)
            return
        ahead = self._ahead
        if not ahead:  # the usual case (see message_key)
            assert self._expected is not None and counter == self.next_counter
            self._chain = self._expected[1]
            self._expected = None
            self.next_counter = counter + 1
            return
        gap = counter - self.next_counter
        end = (gap + 1) * _ENTRY
        if gap:
            skipped = bytearray()
            for index in range(gap):
                skipped += ahead[index * _ENTRY : index * _ENTRY + _KEY]
            self._budget.keep_skipped(self._owner, self.next_counter, bytes(skipped))
        self._chain = bytes(ahead[end - _KEY : end])
        del ahead[:end]
        self._budget.grew(self._owner, -(gap + 1))
        self.next_counter = counter + 1

    def close(self) -> None:
        """Forget every key (the session is over)."""
        self._expected = None
        self._budget.release(self._owner)
