"""How fast the client sends: no faster than the relay said it may. Pure; time is passed in.

The relay holds each connection to two token buckets, frames and bytes (its welcome says
their rates and bursts), and refuses a frame either cannot pay for. ``Pacer`` keeps
buckets of its own, a little smaller, and holds frames back until both can pay for the
next one: a message typed or piped faster than the relay allows goes out late instead of
being refused. Frames leave in the order they were written, receipts and pings included
(they count against the relay's rates too, and a receipt must not overtake a message to
the same person: both take the next counter of one session).
"""

from __future__ import annotations

import math
import struct
from collections import deque

# We pace at this share of the relay's rates, with this share of its bursts: the relay
# times frames by when it reads them, and the network can bunch frames that left evenly
# spaced. Half of each of the relay's buckets stays in hand for that (about 2 s of it at
# the default rates).
RATE_SHARE = 0.9
BURST_SHARE = 0.5
# A relay that advertised a rate below this would have us hold everything back almost
# for ever; slower than this, its refusals (reported, message by message) are better.
MIN_RATE = 1.0
MIN_BYTE_RATE = 1024.0
# Float sums of token refills can land a hair short of what a frame costs: this much
# short (relative) is paid.
_EPSILON = 1e-9
_PREFIX = struct.Struct(">I")


class _Bucket:
    """Tokens that refill at ``rate`` a second, up to ``capacity``. A frame is charged as
    the relay charges it (its size, but no more than the relay's whole bucket,
    ``charge_cap``), and may go once the bucket holds that, or is full: a frame larger
    than our bucket leaves it in debt, which the relay's larger one covers."""

    __slots__ = ("capacity", "charge_cap", "rate", "tokens", "updated")

    def __init__(self, rate: float, capacity: float, charge_cap: float, tokens: float, now: float) -> None:
        self.rate, self.capacity, self.charge_cap = rate, capacity, charge_cap
        self.tokens, self.updated = tokens, now

    def refill(self, now: float) -> None:
        self.tokens = min(self.capacity, self.tokens + max(0.0, now - self.updated) * self.rate)
        self.updated = max(now, self.updated)

    def cost(self, amount: float) -> float:
        return min(amount, self.charge_cap)

    def can_pay(self, cost: float) -> bool:
        """Whether a frame costing ``cost`` may go (the bucket refilled to now)."""
        need = min(cost, self.capacity)
        return self.tokens + _EPSILON * max(1.0, need) >= need

    def wait(self, cost: float) -> float:
        """Seconds until a frame costing ``cost`` may go (the bucket refilled to now)."""
        return 0.0 if self.can_pay(cost) else (min(cost, self.capacity) - self.tokens) / self.rate

    def eta(self, total: float) -> float:
        """Seconds until ``total`` tokens will have been paid out, at the rate."""
        return max(0.0, (total - self.tokens) / self.rate)


class Pacer:
    """Frames on their way out, each released when the relay's rates allow it. Until
    ``limit`` is called (before the relay's welcome) nothing is held back."""

    def __init__(self) -> None:
        self._queued = bytearray()
        self._sizes: deque[int] = deque()  # of each frame queued, as the relay counts it
        #: frames the relay charges more than their size (a fetch): position -> charge
        self._charges: dict[int, int] = {}
        self._taken = 0  # frames taken so far: the position of the first in _sizes
        self._queued_bytes = 0
        self._frames: _Bucket | None = None  # None: no limit yet
        self._bytes: _Bucket | None = None
        #: the bytes a second the relay takes from us, as its welcome said (inf: none yet)
        self.relay_byte_rate = math.inf

    @property
    def queued(self) -> int:
        """Frames written and not yet taken."""
        return len(self._sizes)

    def limit(self, rate: float, burst: float, byte_rate: float, byte_burst: float, now: float) -> None:
        """Pace to the relay's rates and bursts (from its welcome), from ``now``. The
        relay starts a connection with a full bucket of frames and a second's worth of
        bytes; we start with half of each."""
        self.relay_byte_rate = byte_rate
        capacity = max(1.0, math.floor(burst * BURST_SHARE))
        self._frames = _Bucket(max(MIN_RATE, rate * RATE_SHARE), capacity, burst, capacity, now)
        start = min(byte_rate, byte_burst) * BURST_SHARE
        byte_capacity = byte_burst * BURST_SHARE
        self._bytes = _Bucket(
            max(MIN_BYTE_RATE, byte_rate * RATE_SHARE), byte_capacity, byte_burst, start, now
        )

    def write(self, frames: bytes, now: float, charge: int = 0) -> float:
        """Queue ``frames`` (whole frames, back to back); the relay charges the last one
        ``charge`` bytes beyond its size (see grammar.FETCH_CHARGE). Returns when the last
        of them will have left, about, if taken as soon as it may be."""
        self._queued += frames
        offset = 0
        while offset < len(frames):
            (size,) = _PREFIX.unpack_from(frames, offset)  # the relay counts the payload
            self._sizes.append(size)
            self._queued_bytes += size
            offset += _PREFIX.size + size
        if charge and self._sizes:
            self._charges[self._taken + len(self._sizes) - 1] = charge
            self._queued_bytes += charge
        if self._frames is None or self._bytes is None:
            return now
        self._refill(now)
        # As if the frames and bytes flowed: the later of the two buckets' times.
        return now + max(self._frames.eta(len(self._sizes)), self._bytes.eta(self._queued_bytes))

    def take(self, now: float) -> bytes:
        """The frames that may go ``now``, oldest first."""
        if not self._sizes:
            return b""
        if self._frames is None or self._bytes is None:
            self._taken += len(self._sizes)
            self._sizes.clear()
            self._charges.clear()
            self._queued_bytes = 0
            end = len(self._queued)
        else:
            self._refill(now)
            frames, byte_bucket = self._frames, self._bytes
            end = 0
            charges = self._charges
            while self._sizes:
                size = self._sizes[0]
                extra = charges.get(self._taken, 0) if charges else 0
                cost = byte_bucket.cost(size + extra)
                if not (frames.can_pay(1) and byte_bucket.can_pay(cost)):
                    break
                frames.tokens -= 1
                byte_bucket.tokens -= cost
                self._sizes.popleft()
                if extra:
                    del charges[self._taken]
                self._taken += 1
                self._queued_bytes -= size + extra
                end += _PREFIX.size + size
            if not end:
                return b""
        if end == len(self._queued):
            data = bytes(self._queued)
            self._queued.clear()
        else:
            data = bytes(self._queued[:end])
            del self._queued[:end]
        return data

    def spare(self, now: float, reserve_bytes: float, reserve_frames: float) -> float:
        """Bytes that may go now and leave ``reserve_bytes`` and ``reserve_frames`` in hand:
        what bulk data (a file's chunks) may take without making what is typed next wait.
        Nothing while anything is queued (it goes first); unbounded before the welcome."""
        if self._sizes:
            return 0.0
        if self._frames is None or self._bytes is None:
            return math.inf
        self._refill(now)
        if self._frames.tokens < reserve_frames + 1:
            return 0.0
        return max(0.0, self._bytes.tokens - reserve_bytes)

    def delay(self, now: float) -> float | None:
        """Seconds until the next frame held back may go; None if none is held back."""
        if not self._sizes:
            return None
        if self._frames is None or self._bytes is None:
            return 0.0
        self._refill(now)
        first = self._sizes[0] + self._charges.get(self._taken, 0)
        return max(self._frames.wait(1), self._bytes.wait(self._bytes.cost(first)))

    def _refill(self, now: float) -> None:
        assert self._frames is not None and self._bytes is not None
        self._frames.refill(now)
        self._bytes.refill(now)
