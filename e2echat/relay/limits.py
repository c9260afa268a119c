"""What one connection may do, and what happens when it does more: the relay's policy.

Pure (no I/O): ``RelayCore`` applies these limits from the time it is given, and the
shell takes from them the thresholds it needs for its own I/O (write buffers, how often
to call ``tick``). Every limit here is configurable (``e2echat relay --help``) or tuned in
tests, and carries the reason for its default.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from enum import Enum

from e2echat.wire.framing import MAX_FRAME

MiB = 1024 * 1024
GiB = 1024 * MiB
DAY = 24 * 3600.0


@dataclass(frozen=True)
class Limits:
    """What one connection may do. Each limit a client hits is logged in one line."""

    #: 1 MiB, as websockets and NATS; checked on the length prefix, before the body.
    max_frame: int = MAX_FRAME
    #: a small machine's open-files limit is the real ceiling; 10,000 idle clients cost
    #: the relay a few tens of MiB.
    max_connections: int = 10_000
    #: a client that never answers the challenge must not hold a slot for ever (slowloris)
    handshake_timeout: float = 10.0
    #: clients ping after 20 s of silence, so 60 s of nothing means the peer is gone
    idle_timeout: float = 60.0
    #: messages a second per connection, sustained, and the burst allowed above that:
    #: far beyond anyone typing, well below a flood. A sender refused more than ``burst``
    #: times in one episode (see ``flood_episode``) kept going after being told, and is
    #: disconnected.
    rate: float = 50.0
    burst: float = 200.0
    #: bytes a second per connection, sustained, and the burst allowed above that (a frame
    #: larger than the burst needs a full bucket). Charged when a frame is complete, before
    #: it is decoded: a line to a room of 200 is about 200 KiB, so this is a few lines a
    #: second to a big room and a pasted screenful at once, while one connection cannot
    #: make the relay read and decode more than a MiB a second. A sender refused more than
    #: ``byte_burst`` bytes in one episode is disconnected, as for ``burst`` frames: each
    #: refused byte still had to be read.
    byte_rate: int = 1 * MiB
    byte_burst: int = 4 * MiB
    #: a send not in the layout clients write goes to the strict decoder, which costs about
    #: eight times the fast path per byte (a MiB of small items: ~35 ms against ~4): its
    #: bytes are charged this many times over, so odd layouts cannot buy more decoding.
    strict_weight: float = 8.0
    #: a client that stops reading is dropped once this much is queued for it, so the
    #: relay's memory cannot grow with a stalled reader: four maximal frames. Above a
    #: quarter of it (``write_buffer_soft``) deliveries to it are refused and their
    #: senders told, so a flood at one recipient costs the flooder, not the recipient.
    write_buffer: int = 4 * MAX_FRAME
    #: a client whose queue stays above the soft mark this long takes nothing at all:
    #: messages to it are being refused, so it is hung up on. Its own pings keep it from
    #: the idle timeout, and a slow link drains a megabyte well within this.
    stall_timeout: float = 30.0
    #: bytes held in unfinished frames across all connections. Each may hold a frame of up
    #: to ``max_frame`` in flight, so without this a few hundred slow senders park that
    #: much each; over it, the connection whose unfinished frame is the oldest is closed
    #: (a frame on a LAN arrives in milliseconds: an old one is being trickled).
    partial_frames: int = 64 * MiB
    #: open connections from one address (an IPv6 /64 counts as one): without it one
    #: machine could take every slot. 256 leaves room for a lab or office behind one NAT.
    connections_per_address: int = 256
    #: new connections a second from one address, and the burst allowed above that. Each
    #: registration costs two proofs to check, a directory to the newcomer and a presence
    #: frame to everyone online, so churn is bounded; 20 at once covers a room behind one
    #: NAT coming back after the relay restarts, and clients retry with backoff.
    connect_rate: float = 5.0
    connect_burst: float = 20.0
    #: the largest frame before registration: a ``register`` with the longest password is
    #: about 1 KiB, and a stranger must not make the relay buffer a megabyte each.
    handshake_frame: int = 4096
    #: after we hang up, how long a connection's last bytes (an error, a goodbye) may take
    #: to drain before the socket is aborted: a peer that stopped reading must not keep it.
    close_grace: float = 5.0
    #: this long without a refused frame, and a sender's count of refusals starts again:
    #: a client that briefly ran over the rate is not disconnected for it minutes later.
    flood_episode: float = 5.0
    #: a sender over the rate is told so at most this often (once a second): the warning
    #: must not itself become a flood of error frames.
    warn_interval: float = 1.0
    #: one-time prekeys kept per identity (a publish beyond it drops the oldest): as many
    #: first contacts as a client is likely to get while it is away, at 36 bytes each, so
    #: that a full identity costs the relay about 4 KiB and no client can make it more.
    one_time_prekeys: int = 100
    #: identities whose bundles are kept, online or not (beyond it, the bundle of the one
    #: offline that registered least recently goes; never one online). Five times
    #: ``max_connections``: people who are away must stay reachable, and an attacker who
    #: registers new identities to push them out must make tens of thousands. At most
    #: about 200 MiB, if every one is full; about 65 MiB at 25 one-time prekeys each.
    bundles: int = 50_000
    #: when the one-time prekeys left fall below this (and again when none is left), an
    #: owner online is told so (``prekeys``) and publishes more: room for a burst of first
    #: contacts while its publish is on the way.
    prekeys_low: int = 10
    #: messages kept for one nick while it is away: a few days of a busy conversation, and
    #: with ``mailbox_bytes`` the most one sender can make the relay keep for one victim
    mailbox_messages: int = 1000
    #: bytes kept for one nick while it is away: 128 maximal messages, or thousands of lines
    mailbox_bytes: int = 16 * MiB
    #: how long a message waits in a mailbox: a week away covers a holiday; the relay is
    #: a post office, not an archive, so its sender is then told it was not delivered
    mailbox_ttl: float = 7 * DAY
    #: bytes kept in all mailboxes together: what the relay's memory (and disk) can spare;
    #: past it, messages to anyone away are refused (``full``) until mailboxes drain
    mailbox_total: int = 1 * GiB
    #: how long an identity (its bundle, its empty mailbox) is kept after it was last
    #: online: long enough for a month away, short enough that abandoned nicks go
    identity_ttl: float = 30 * DAY
    #: mailbox items sent to their owner ahead of its acknowledgements: enough to keep a
    #: link busy, few enough that a reconnect repeats little (and at most
    #: ``mail_window_bytes`` of them)
    mail_window: int = 500
    #: rooms on the relay at once: each costs a few hundred bytes and its members' rows;
    #: 10,000 is one for every client of a full relay, and bounds what a client making
    #: rooms by the thousand can make the relay keep (a join beyond is refused).
    max_rooms: int = 10_000
    #: rooms made from one address (an IPv6 /64 counts as one) that still exist: a room
    #: costs its maker nothing and outlives it by a month, so without this a few
    #: throwaway nicks fill ``max_rooms`` for everyone. 256, one for each connection an
    #: address may have (``connections_per_address``): filling the relay's bound then
    #: takes 40 addresses, as filling ``max_connections`` does.
    rooms_per_address: int = 256

    @property
    def write_buffer_soft(self) -> int:
        """Above this much queued for a connection, deliveries to it are refused."""
        return self.write_buffer // 4

    @property
    def mail_window_bytes(self) -> int:
        """Bytes of mailbox frames sent to their owner ahead of its acknowledgements: the
        soft mark, so that a mailbox of big messages (16 MiB of them) is handed over a
        window at a time without its owner ever being over ``write_buffer``."""
        return self.write_buffer_soft

    @property
    def write_buffer_turn(self) -> int:
        """The most the relay queues for one connection in one turn of its event loop,
        whatever is queued already: the soft mark is only seen after a write, and many
        senders may be read in one turn. Soft mark + this + one frame stays below
        ``write_buffer``, so a flood alone never gets a reader dropped."""
        return self.write_buffer // 2

    @property
    def tick_interval(self) -> float:
        """How often the shell should call ``RelayCore.tick``: a quarter of the shortest
        timeout, so none fires more than a quarter late; at most once a second (a sweep
        over 10,000 connections costs about a millisecond); at least 10 ms apart."""
        timeouts = (self.handshake_timeout, self.idle_timeout, self.stall_timeout)
        return max(0.01, min(1.0, *(timeout / 4 for timeout in timeouts)))

    @property
    def sweep_interval(self) -> float:
        """How often what is kept is swept for what has outlived its time to live: every
        5 s (a sweep looks at the front of each mailbox), sooner for a short time to live."""
        return min(5.0, self.mailbox_ttl / 4)


class Verdict(Enum):
    """What to do with one frame from a registered sender."""

    #: within the rate: handle it
    PASS = "pass"
    #: over the rate: do not forward it, and say which recipients did not get it
    REFUSE = "refuse"
    #: as REFUSE, and also tell the sender it is over the rate (not more than once a second)
    WARN = "warn"
    #: it kept flooding after being told: hang up
    DISCONNECT = "disconnect"


class Flow:
    """One registered connection's rate: two token buckets, ``rate`` frames and
    ``byte_rate`` bytes a second with bursts of ``burst`` and ``byte_burst``, and how often
    it has been over them lately. Time is passed in, so it is tested without sleeping."""

    # One per registered connection: slots keep 10,000 idle clients small.
    __slots__ = ("byte_tokens", "last_refused", "refused", "refused_bytes", "tokens", "updated", "warned_at")

    def __init__(self, limits: Limits, now: float) -> None:
        self.tokens = limits.burst
        # A second's worth of bytes to start with, not the whole burst: joining again must
        # not buy a fresh burst (nor a costly frame for the strict decoder, which needs
        # nearly a full bucket), so churning connections gains a sender nothing.
        self.byte_tokens: float = min(limits.byte_rate, limits.byte_burst)
        self.updated = now
        self.refused = self.refused_bytes = 0
        self.last_refused = self.warned_at = -1e9

    def admit(
        self, limits: Limits, now: float, size: int = 0, frames: int = 1, *, whole: bool = False
    ) -> Verdict:
        """Charge ``frames`` frames and ``size`` bytes, if both buckets hold them; a
        refused frame is charged nothing (it is not handled). More than the burst needs
        a full bucket, and costs that much. ``whole``: a charge for what the relay will
        write, paid in full; more than half the burst needs half a bucket (the frame
        that asked for it is paid first, so a full one is never there), and what the
        bucket does not hold is owed (see ``owe``)."""
        tokens, byte_tokens = self._refilled(limits, now)
        cost = min(size, limits.byte_burst // 2 if whole else limits.byte_burst)
        if tokens >= frames and byte_tokens >= cost:
            self.tokens, self.byte_tokens = tokens - frames, byte_tokens - (size if whole else cost)
            return Verdict.PASS
        self.tokens, self.byte_tokens = tokens, byte_tokens
        if now - self.last_refused > limits.flood_episode:
            self.refused = self.refused_bytes = 0  # a new episode
        self.refused += 1
        self.refused_bytes += cost
        self.last_refused = now
        if self.refused > limits.burst or self.refused_bytes > limits.byte_burst:
            return Verdict.DISCONNECT
        if now - self.warned_at >= limits.warn_interval:
            self.warned_at = now
            return Verdict.WARN
        return Verdict.REFUSE

    def owe(self, limits: Limits, now: float, size: int) -> None:
        """Charge ``size`` bytes for what was done already (a part's ``parted`` to the
        room): the bucket may go below empty, and the sender's next frames wait until
        it has refilled. Never a refusal: it counts nothing toward a flood."""
        self.tokens, byte_tokens = self._refilled(limits, now)
        self.byte_tokens = byte_tokens - size

    def _refilled(self, limits: Limits, now: float) -> tuple[float, float]:
        """Both buckets as they stand at ``now`` (the caller stores them)."""
        elapsed = now - self.updated
        self.updated = now
        tokens = min(limits.burst, self.tokens + elapsed * limits.rate)
        return tokens, min(limits.byte_burst, self.byte_tokens + elapsed * limits.byte_rate)


class Backlog:
    """What waits to be written to each connection, as far as the core can tell: whose
    write buffers are past the soft mark (the shell says so, and since when), and what
    the core has queued for each since the shell last wrote."""

    def __init__(self) -> None:
        #: connection -> since when its write buffer has been past the soft mark
        self.stalled: dict[int, float] = {}
        #: connection -> bytes of deliveries queued for it since the shell last wrote
        self.unflushed: dict[int, int] = {}

    def overdue(self, limits: Limits, now: float) -> list[int]:
        """The connections stalled for longer than ``stall_timeout``."""
        return [conn for conn, since in self.stalled.items() if now - since > limits.stall_timeout]

    def forget(self, conn: int) -> None:
        self.stalled.pop(conn, None)
        self.unflushed.pop(conn, None)


class Unfinished:
    """The bytes each connection holds in an unfinished frame, and their total, in the
    order the frames were started: a connection that finishes a frame goes to the back."""

    def __init__(self) -> None:
        self._held: dict[int, int] = {}
        self.total = 0

    def __contains__(self, conn: int) -> bool:
        return conn in self._held

    def hold(self, conn: int, held: int, *, restart: bool) -> None:
        """``conn`` now holds ``held`` bytes (``restart``: it finished a frame since)."""
        before = self._held.pop(conn, 0) if restart or not held else self._held.get(conn, 0)
        self.total += held - before
        if held:
            self._held[conn] = held  # a new entry goes last: the youngest

    def oldest_over(self, budget: int) -> int | None:
        """If more than ``budget`` is held, the connection whose frame is oldest."""
        return next(iter(self._held)) if self.total > budget and self._held else None

    def forget(self, conn: int) -> None:
        self.total -= self._held.pop(conn, 0)


def address_key(host: str) -> str:
    """The address ``host`` counts as for the per-address limits: itself for IPv4, its
    /64 for IPv6 (one host is usually given a whole /64, and can pick any address in it),
    and an IPv4 address however it is written (``::ffff:10.0.0.1`` is ``10.0.0.1``)."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host  # not an IP address (a Unix socket, a test): itself
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class _Source:
    """One address: its open connections, and a token bucket of new connections."""

    __slots__ = ("connections", "tokens", "updated")

    def __init__(self, limits: Limits, now: float) -> None:
        self.connections = 0
        self.tokens = limits.connect_burst
        self.updated = now

    def refill(self, limits: Limits, now: float) -> float:
        self.tokens = min(limits.connect_burst, self.tokens + (now - self.updated) * limits.connect_rate)
        self.updated = now
        return self.tokens


class Sources:
    """What each address has open and how fast it opens more (``connections_per_address``,
    ``connect_rate``, ``connect_burst``). An address is remembered while it has a
    connection open or its bucket is not yet full again, so the table stays as small as
    the relay's connections plus the last few seconds' visitors."""

    def __init__(self) -> None:
        self._sources: dict[str, _Source] = {}

    def __len__(self) -> int:
        return len(self._sources)

    def open(self, limits: Limits, address: str, now: float) -> str | None:
        """Count a new connection from ``address``; or, if it may not have one, why not
        (the connection is then not counted)."""
        source = self._sources.get(address)
        if source is None:
            source = self._sources[address] = _Source(limits, now)
        if source.connections + self.elsewhere(address) >= limits.connections_per_address:
            return f"too many connections from your address (at most {limits.connections_per_address})"
        if source.refill(limits, now) < 1:
            return f"too many new connections from your address (at most {limits.connect_rate:g} a second)"
        source.tokens -= 1
        source.connections += 1
        return None

    def close(self, address: str) -> None:
        source = self._sources.get(address)
        if source is not None and source.connections > 0:
            source.connections -= 1

    def open_from(self, address: str) -> int:
        """The connections ``address`` has open here."""
        source = self._sources.get(address)
        return source.connections if source is not None else 0

    def elsewhere(self, address: str) -> int:
        """The connections ``address`` has open on the other relays of a cluster, as far
        as this relay knows (relay/cluster/addresses.py); none for a single relay."""
        return 0

    def charge(self, limits: Limits, address: str, count: int, now: float) -> None:
        """``count`` new connections from ``address`` that another relay of a cluster let
        in: taken from its bucket here too, down to a burst below empty (what relays let
        in before they heard of each other's is owed, but a wrong count cannot shut an
        address out for longer than a burst takes to refill)."""
        source = self._sources.get(address)
        if source is None:
            source = self._sources[address] = _Source(limits, now)
        source.tokens = max(-limits.connect_burst, source.refill(limits, now) - count)

    def sweep(self, limits: Limits, now: float) -> None:
        """Forget the addresses with nothing open whose buckets are full again."""
        idle = [
            address
            for address, source in self._sources.items()
            if not source.connections and source.refill(limits, now) >= limits.connect_burst
        ]
        for address in idle:
            del self._sources[address]
