"""The per-address limits across a cluster: each relay tells the others what it has from
each address, and counts what they said with its own. Pure (no I/O).

Two limits must hold across the cluster, or an address spread over N relays gets N times
each: the connections it has open (``connections_per_address``) and the rate at which it
opens new ones (``connect_rate``, ``connect_burst``), which is also what bounds its
registrations (a connection registers once). So every relay sends, on the cluster's
``addresses`` subject, a report (``encode_report``) naming:

- each address with at least a share of the limit open on it (``threshold``: 1/32 of
  it, 8 at the default 256), and how many; an address with fewer is not named. A report
  lists at most ``max_connections`` / ``threshold`` addresses (1,250 at the defaults),
  and is usually empty: most addresses have one or two connections. Naming every address
  would not do: reading a report of 10,000 takes about 9 ms, so with ten full relays
  whose connections churn (a report each a quarter second) each would spend a third of
  a core reading the others'.
- each address it let a new connection in from since its last report, and how many:
  each relay takes them from that address's bucket too (``Sources.charge``), so the
  rate holds across the cluster.

A relay lets a connection in only if what it has from the address, and what the others
last said they have, is under the limit. What is not named costs slack, not safety: an
address may have up to ``threshold`` - 1 unseen on each other relay, so a cluster of N
relays lets one have at most the limit + (N - 1) × (threshold - 1) (256 + 7 a relay at the
defaults; exact with a limit under 64). And what crosses NATS takes a moment: within
one report's interval (``REPORT_INTERVAL``) each relay may let in a burst before it hears
of the others'; what they let in is owed afterwards (buckets go below empty).

A report replaces the last one from its relay. A changed one goes out within
``REPORT_INTERVAL``; an unchanged one that names anything, every ``HEARTBEAT``; one not
renewed within ``DEAD_AFTER`` is dropped, so a dead relay's counts are freed within
seconds, and a relay that stops sends an empty one (its counts go at once).

Rates and byte rates are per connection, so they hold wherever it is; the other bounds
are each relay's own resources (its connections, bundles, mailboxes and rooms), and a
cluster of N relays holds N times them (README, "A cluster of relays").
"""

from __future__ import annotations

import logging
import math
import struct
from collections.abc import Sequence

from e2echat.errors import RemoteProtocolError
from e2echat.relay.cluster.wire import DEAD_AFTER, HEARTBEAT, NODE_ID_SIZE, Names, check_node
from e2echat.relay.limits import Limits, Sources

log = logging.getLogger("e2echat.relay.cluster.addresses")

#: an address is named in a report once it has this fraction of ``connections_per_address``
#: open on a relay (see the module's docstring for what that costs and saves)
REPORT_SHARE = 32
#: how often a changed report goes out (s): new connections on one relay are counted on
#: the others within this (and the time NATS takes)
REPORT_INTERVAL = 0.25
#: addresses in one report: 16,384 of the longest (an IPv6 /64, 43 characters) make under
#: 1 MiB, NATS's default bound on a message; what does not fit waits for the next one
MAX_ENTRIES = 16_384
#: other relays whose reports are kept: a relay hears of more only through a bug
MAX_NODES = 1024
#: the longest address a report may name (an IPv6 /64 written out is 43 characters)
MAX_ADDRESS = 64
#: a count on the wire (connections open, or let in since the last report)
MAX_COUNT = 0xFFFF

_HEAD = struct.Struct(">H")
_COUNTS = struct.Struct(">HH")

#: one address in a report: (address, connections open, new connections since the last)
Entry = tuple[str, int, int]


def subject(names: Names) -> str:
    """Where the relays of the cluster ``names`` send their reports."""
    return f"e2echat.{names.name}.addresses"


def threshold(limits: Limits) -> int:
    """The connections an address must have open on a relay to be named in its report."""
    return max(1, limits.connections_per_address // REPORT_SHARE)


def encode_report(node: str, entries: Sequence[Entry]) -> bytes:
    """Relay ``node``'s report: its node id, then each entry (counts capped at
    ``MAX_COUNT``). At most ``MAX_ENTRIES`` entries: the caller cuts."""
    assert len(entries) <= MAX_ENTRIES
    parts = [node.encode("ascii"), _HEAD.pack(len(entries))]
    for address, open_, opened in entries:
        raw = address.encode("ascii")
        parts += (bytes((len(raw),)), raw, _COUNTS.pack(min(open_, MAX_COUNT), min(opened, MAX_COUNT)))
    return b"".join(parts)


def decode_report(payload: bytes) -> tuple[str, list[Entry]]:
    """(node id, entries) from ``encode_report``; ``RemoteProtocolError`` if it is not one
    (a bug or a stale relay must not make the others count nonsense)."""
    at = 2 * NODE_ID_SIZE
    node = check_node(payload[:at])
    if len(payload) < at + _HEAD.size:
        raise RemoteProtocolError(detail="an address report is cut short")
    (count,) = _HEAD.unpack_from(payload, at)
    at += _HEAD.size
    if count > MAX_ENTRIES:
        raise RemoteProtocolError(detail="an address report names too many addresses")
    entries: list[Entry] = []
    seen: set[str] = set()
    for _ in range(count):
        if at >= len(payload):
            raise RemoteProtocolError(detail="an address report is cut short")
        size = payload[at]
        raw = payload[at + 1 : at + 1 + size]
        at += 1 + size
        if not 0 < size <= MAX_ADDRESS or len(raw) != size or not all(0x21 <= byte < 0x7F for byte in raw):
            raise RemoteProtocolError(detail="an address report names an address that is not one")
        if len(payload) < at + _COUNTS.size:
            raise RemoteProtocolError(detail="an address report is cut short")
        open_, opened = _COUNTS.unpack_from(payload, at)
        at += _COUNTS.size
        address = raw.decode("ascii")
        if address in seen:
            raise RemoteProtocolError(detail="an address report names an address twice")
        seen.add(address)
        entries.append((address, open_, opened))
    if at != len(payload):
        raise RemoteProtocolError(detail="an address report has bytes left over")
    return node, entries


class SharedSources(Sources):
    """``Sources`` for a relay of a cluster: what each address has open here and on the
    other relays (as their reports say), and new connections let in anywhere charged to
    its bucket here. Time is passed in, as to ``Sources``."""

    def __init__(self, limits: Limits, node: str) -> None:
        super().__init__()
        self.limits = limits
        self.node = node
        self._threshold = threshold(limits)
        #: node -> (when its last report came, address -> connections open there)
        self._tables: dict[str, tuple[float, dict[str, int]]] = {}
        #: address -> connections open on the other relays, the sum of their tables
        self._elsewhere: dict[str, int] = {}
        #: addresses with at least ``threshold`` open here: what the next report names
        self._many: set[str] = set()
        #: address -> new connections let in here since the last report
        self._opened: dict[str, int] = {}
        #: whether ``_many`` or a count in it changed since the last report
        self._changed = False
        self._sent_at = -math.inf
        self._sent_nothing = True

    def elsewhere(self, address: str) -> int:
        return self._elsewhere.get(address, 0)

    def open(self, limits: Limits, address: str, now: float) -> str | None:
        refused = super().open(limits, address, now)
        if refused is None:
            self._opened[address] = self._opened.get(address, 0) + 1
            if self.open_from(address) >= self._threshold:
                self._many.add(address)
                self._changed = True
        return refused

    def close(self, address: str) -> None:
        super().close(address)
        if address in self._many:
            self._changed = True
            if self.open_from(address) < self._threshold:
                self._many.discard(address)

    def sweep(self, limits: Limits, now: float) -> None:
        """As ``Sources.sweep``; and the tables of relays not heard within ``DEAD_AFTER``
        are dropped: a dead relay's connections no longer count."""
        for node in [node for node, (heard, _) in self._tables.items() if now - heard > DEAD_AFTER]:
            log.info("relay %s sent no address report for %gs: its counts are dropped", node, DEAD_AFTER)
            self._replace(node, {})
        super().sweep(limits, now)

    def heard(self, payload: bytes, now: float) -> None:
        """Another relay's report: its table replaces the last, and its new connections
        are charged here. ``RemoteProtocolError`` if it is not one (nothing changes)."""
        node, entries = decode_report(payload)
        if node == self.node:
            return  # our own, as NATS hands it back
        if node not in self._tables and len(self._tables) >= MAX_NODES:
            log.warning("an address report from one relay too many (%d kept): ignored", MAX_NODES)
            return
        self._replace(node, {address: open_ for address, open_, _ in entries if open_}, now)
        for address, _, opened in entries:
            if opened:
                self.charge(self.limits, address, opened, now)

    def report(self, now: float) -> bytes | None:
        """This relay's report, if one is due (something changed, or what the last one
        named must be renewed before the others drop it); None if not."""
        renew = not self._sent_nothing and now - self._sent_at >= HEARTBEAT
        if not (self._changed or self._opened or renew):
            return None
        opened = self._opened
        many = self._many
        entries: list[Entry] = [(each, self.open_from(each), opened.get(each, 0)) for each in many]
        entries += [(address, 0, count) for address, count in opened.items() if address not in many]
        # What does not fit goes in the next one (and the counts missed cost only slack).
        entries = entries[:MAX_ENTRIES]
        for address, _, _ in entries:
            opened.pop(address, None)
        self._changed = len(many) > MAX_ENTRIES
        self._sent_at, self._sent_nothing = now, not entries
        return encode_report(self.node, entries)

    def goodbye(self) -> bytes:
        """The report of a relay that stops: it has nothing (the others drop its counts)."""
        return encode_report(self.node, [])

    def _replace(self, node: str, table: dict[str, int], now: float = 0.0) -> None:
        old = self._tables.pop(node, (0.0, {}))[1]
        elsewhere = self._elsewhere
        for address, count in old.items():
            left = elsewhere[address] - count
            if left:
                elsewhere[address] = left
            else:
                del elsewhere[address]
        if table:
            self._tables[node] = (now, table)
            for address, count in table.items():
                elsewhere[address] = elsewhere.get(address, 0) + count
