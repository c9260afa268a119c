"""The per-address limits across a cluster: each relay tells the others what it has from
each address, and counts what they said with its own. Pure (no I/O).

Two limits must hold across the cluster, or an address spread over N relays gets N times
each: the connections it has open (``connections_per_address``) and the rate at which it
opens new ones (``connect_rate``, ``connect_burst``), which is also what bounds its
registrations (a connection registers once). So every relay sends, on the cluster's
``addresses`` subject, a report (``encode_report``) naming, each by its ``pseudonym``
(keyed BLAKE2b under a key derived from the relays' shared key: NATS learns no client's
address, only how many connections some unnamed address has):

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

from nacl.bindings import crypto_generichash_blake2b_salt_personal as blake2b
from nacl.public import PrivateKey

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
#: addresses in one report, 20 bytes each: 320 KiB, well under NATS's default bound on a
#: message (1 MiB); what does not fit waits for the next one
MAX_ENTRIES = 16_384
#: other relays whose reports are kept: a relay hears of more only through a bug (and
#: then keeps at most this many reports of ``MAX_ENTRIES``)
MAX_NODES = 256
#: an address in a report: 128 bits of keyed BLAKE2b (see ``pseudonym``)
PSEUDONYM_SIZE = 16
SECRET_SIZE = 32
LABEL_SECRET = b"e2echat addrs".ljust(16, b"\0")
LABEL_ADDRESS = b"e2echat address".ljust(16, b"\0")
#: a count on the wire (connections open, or let in since the last report)
MAX_COUNT = 0xFFFF

_HEAD = struct.Struct(">H")
_ENTRY = struct.Struct(f">{PSEUDONYM_SIZE}sHH")

#: one address in a report: (its pseudonym in hex, connections open, new connections since)
Entry = tuple[str, int, int]


def subject(names: Names) -> str:
    """Where the relays of the cluster ``names`` send their reports."""
    return f"e2echat.{names.name}.addresses"


def threshold(limits: Limits) -> int:
    """The connections an address must have open on a relay to be named in its report."""
    return max(1, limits.connections_per_address // REPORT_SHARE)


def cluster_secret(relay_key: PrivateKey) -> bytes:
    """The key the relays of a cluster name addresses under: from the key they share."""
    return blake2b(b"", digest_size=SECRET_SIZE, key=bytes(relay_key), person=LABEL_SECRET)


def pseudonym(secret: bytes, address: str) -> str:
    """``address`` (as ``address_key`` gives it) as the cluster's reports name it: keyed
    BLAKE2b, so NATS, and anyone on it without the relays' key, learns no client's address
    (a keyed hash of 2^32 IPv4 addresses cannot be tried through without the key)."""
    raw = address.encode("utf-8", "surrogateescape")
    return blake2b(raw, digest_size=PSEUDONYM_SIZE, key=secret, person=LABEL_ADDRESS).hex()


def encode_report(node: str, entries: Sequence[Entry]) -> bytes:
    """Relay ``node``'s report: its node id, then each entry (counts capped at
    ``MAX_COUNT``). At most ``MAX_ENTRIES`` entries: the caller cuts."""
    assert len(entries) <= MAX_ENTRIES
    parts = [node.encode("ascii"), _HEAD.pack(len(entries))]
    for name, open_, opened in entries:
        parts.append(_ENTRY.pack(bytes.fromhex(name), min(open_, MAX_COUNT), min(opened, MAX_COUNT)))
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
    if len(payload) != at + count * _ENTRY.size:
        raise RemoteProtocolError(detail="an address report is not as long as it says")
    entries: list[Entry] = []
    for index in range(count):
        name, open_, opened = _ENTRY.unpack_from(payload, at + index * _ENTRY.size)
        entries.append((name.hex(), open_, opened))
    if len({name for name, _, _ in entries}) != count:
        raise RemoteProtocolError(detail="an address report names an address twice")
    return node, entries


class SharedSources(Sources):
    """``Sources`` for a relay of a cluster: what each address has open here and on the
    other relays (as their reports say), and new connections let in anywhere charged to
    its bucket here. An address is known here by its ``pseudonym`` alone, as the reports
    name it. Time is passed in, as to ``Sources``."""

    def __init__(self, limits: Limits, node: str, secret: bytes) -> None:
        super().__init__()
        self.limits = limits
        self.node = node
        self._secret = secret
        self._threshold = threshold(limits)
        #: node -> (when its last report came, pseudonym -> connections open there)
        self._tables: dict[str, tuple[float, dict[str, int]]] = {}
        #: pseudonym -> connections open on the other relays, the sum of their tables
        self._elsewhere: dict[str, int] = {}
        #: pseudonyms with at least ``threshold`` open here: what the next report names
        self._many: set[str] = set()
        #: pseudonym -> new connections let in here since the last report
        self._opened: dict[str, int] = {}
        #: whether ``_many`` or a count in it changed since the last report
        self._changed = False
        self._sent_at = -math.inf
        self._sent_nothing = True

    def pseudonym(self, address: str) -> str:
        return pseudonym(self._secret, address)

    def elsewhere(self, address: str) -> int:
        """The connections the address with this pseudonym has open on the other relays."""
        return self._elsewhere.get(address, 0)

    def open(self, limits: Limits, address: str, now: float) -> str | None:
        name = self.pseudonym(address)
        refused = super().open(limits, name, now)
        if refused is not None:
            return refused
        opened = self._opened
        if name in opened or len(opened) < MAX_ENTRIES:
            # Bounded: while NATS is out of reach nothing is reported, and new addresses
            # past a report's worth go untold (slack, not memory).
            opened[name] = opened.get(name, 0) + 1
        if self.open_from(name) >= self._threshold:
            self._many.add(name)
            self._changed = True
        return None

    def close(self, address: str) -> None:
        name = self.pseudonym(address)
        super().close(name)
        if name in self._many:
            self._changed = True
            if self.open_from(name) < self._threshold:
                self._many.discard(name)

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
        self._replace(node, {name: open_ for name, open_, _ in entries if open_}, now)
        for name, _, opened in entries:
            if opened:
                self.charge(self.limits, name, opened, now)

    def report(self, now: float) -> bytes | None:
        """This relay's report, if one is due (something changed, or what the last one
        named must be renewed before the others drop it); None if not."""
        renew = not self._sent_nothing and now - self._sent_at >= HEARTBEAT
        if not (self._changed or self._opened or renew):
            return None
        opened, many = self._opened, self._many
        entries: list[Entry] = [(name, self.open_from(name), opened.get(name, 0)) for name in many]
        entries += [(name, 0, count) for name, count in opened.items() if name not in many]
        # What does not fit goes in the next one (and the counts missed cost only slack).
        entries = entries[:MAX_ENTRIES]
        for name, _, _ in entries:
            opened.pop(name, None)
        self._changed = len(many) > MAX_ENTRIES
        self._sent_at, self._sent_nothing = now, not entries
        return encode_report(self.node, entries)

    def goodbye(self) -> bytes:
        """The report of a relay that stops: it has nothing (the others drop its counts)."""
        return encode_report(self.node, [])

    def _replace(self, node: str, table: dict[str, int], now: float = 0.0) -> None:
        old = self._tables.pop(node, (0.0, {}))[1]
        elsewhere = self._elsewhere
        for name, count in old.items():
            left = elsewhere[name] - count
            if left:
                elsewhere[name] = left
            else:
                del elsewhere[name]
        if table:
            self._tables[node] = (now, table)
            for name, count in table.items():
                elsewhere[name] = elsewhere.get(name, 0) + count
