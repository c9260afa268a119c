"""Everything secret a client keeps between connections and restarts, besides its
identity key: our prekeys and our sessions with each peer. Pure.

A ``Keyring`` lives as long as the client (across every connection) and is saved as
named rows, each sealed by the store: ``prekeys``, and ``peer:<nick>`` for each peer.
``changes`` hands out the rows that changed since it was last called (a deleted peer as
None), so the shell writes only those, in the background, after each batch of work.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Mapping
from typing import Protocol

from nacl.public import PrivateKey, PublicKey

from e2echat.crypto.prekeys import OurPrekeys
from e2echat.crypto.session import PeerSession
from e2echat.crypto.skipped import SkippedKeys
from e2echat.errors import BadRatchetState

PREKEYS_ROW = "prekeys"
# Numbers remembered of peers forgotten (see ``Keyring._floors``): an int each, so many.
MAX_FLOORS = 100_000
PEER_ROW = "peer:"
#: our nick when the sessions were made: every session binds it (in X3DH's AD)
NICK_ROW = "nick"
# Peers whose sessions are kept, as many as pins (client.trust.MAX_PINS): a relay can make
# up people who write to us, and each first message starts a session we would otherwise
# keep, and save, for ever. Beyond it, the peer used least recently is forgotten: their
# next message to us cannot be read, and ours to them starts a new session. (How recently
# is not saved: after a restart, those read first from the file count as the oldest.)
MAX_PEERS = 10_000

log = logging.getLogger("e2echat.crypto.keyring")


class ShowsKey(Protocol):
    """A directory entry, as far as the keyring is concerned."""

    @property
    def identity_key(self) -> PublicKey: ...


class Keyring:
    """Our prekeys and every ``PeerSession``, by nick."""

    def __init__(self, nick: str, identity: PrivateKey, prekeys: OurPrekeys) -> None:
        self.nick = nick
        self.identity = identity
        self.prekeys = prekeys
        # One budget for the skipped keys of every session: what gaps (or an attacker) can
        # make us hold is bounded across all peers, not per peer (skipped.py).
        self.budget = SkippedKeys()
        #: nick -> our sessions with them, least recently used first
        self.peers: OrderedDict[str, PeerSession] = OrderedDict()
        self.max_peers = MAX_PEERS
        #: nick -> the number the next message to them would have carried, for peers
        #: forgotten while this keyring lives: a new PeerSession with them counts on from
        #: it, so that a receipt for an old copy cannot confirm a new one (the numbers
        #: receipts acknowledge are per nick)
        self._floors: OrderedDict[str, int] = OrderedDict()
        #: nick -> sessions started with us under a key the user has not accepted: read
        #: (their messages are shown, flagged), not kept in ``peers`` until accepted
        self.pending: dict[str, PeerSession] = {}
        self._dirty: set[str] = set()
        self._deleted: set[str] = set()
        self._nick_saved = False

    @classmethod
    def fresh(cls, nick: str, identity: PrivateKey, now: float) -> Keyring:
        return cls(nick, identity, OurPrekeys.fresh(identity, now))

    def get(self, nick: str, identity_key: PublicKey) -> PeerSession | None:
        """Our sessions with ``nick`` under ``identity_key``; None if we have none (or only
        under another key: they cannot serve)."""
        peer = self.peers.get(nick)
        if peer is None:
            return None
        # (The same object, usually: a session is made with the directory's key.)
        if peer.identity_key is not identity_key and bytes(peer.identity_key) != bytes(identity_key):
            return None
        self.peers.move_to_end(nick)
        return peer

    def senders(self, nicks: list[str], shown: Mapping[str, ShowsKey]) -> list[PeerSession | None]:
        """For each of ``nicks``, ``get(nick, shown[nick].identity_key)`` if it can send;
        None if it cannot, or if ``shown`` (the directory) has no such nick. One call for
        a room message's recipients: ``get``'s check, inline."""
        peers, used = self.peers, self.peers.move_to_end
        found: list[PeerSession | None] = []
        for nick in nicks:
            peer, entry = peers.get(nick), shown.get(nick)
            if peer is None or entry is None:
                found.append(None)
                continue
            identity_key = entry.identity_key
            if peer.identity_key is not identity_key and bytes(peer.identity_key) != bytes(identity_key):
                found.append(None)  # (as in get: sessions under another key cannot serve)
                continue
            used(nick)
            found.append(peer if peer._sessions and not peer._restart else None)  # (can_send, inline)
        return found

    def peer(self, nick: str, identity_key: PublicKey) -> PeerSession:
        """Our sessions with ``nick`` under ``identity_key``, made empty if there are none.
        Sessions with them under another key are dropped: whoever holds the new key must
        not read what was meant for the old one (the user is warned of the change
        elsewhere)."""
        peer = self.get(nick, identity_key)
        if peer is None:
            peer = self.unaccepted(nick, identity_key) or self.candidate(nick, identity_key)
            self.pending.pop(nick, None)
            self.adopt(peer)
        return peer

    def unaccepted(self, nick: str, identity_key: PublicKey) -> PeerSession | None:
        """The sessions ``nick`` started with us under ``identity_key`` while it was not
        accepted (``pending``), if any."""
        peer = self.pending.get(nick)
        if peer is None or bytes(peer.identity_key) != bytes(identity_key):
            return None
        return peer

    def hold(self, peer: PeerSession) -> None:
        """Keep ``peer`` (a candidate whose first message opened, under a key the user has
        not accepted) apart from ``peers``: it replaces nothing there."""
        previous = self.pending.pop(peer.peer, None)
        if previous is not None and previous is not peer:
            previous.close()
        self.pending[peer.peer] = peer

    def candidate(self, nick: str, identity_key: PublicKey) -> PeerSession:
        """An empty ``PeerSession`` with ``nick``, not kept: for a first message from them
        that has yet to authenticate. Only ``adopt`` keeps it, so a forged first message
        can neither take a place among the peers kept nor drop anyone's sessions."""
        peer = PeerSession(
            self.nick,
            self.identity,
            nick,
            identity_key,
            budget=self.budget,
            prekeys=self.prekeys,
            dirty=self._dirty,
        )
        peer.next_counter = self._floors.get(nick, 0)
        return peer

    def adopt(self, peer: PeerSession) -> None:
        """Keep ``peer`` (from ``candidate``), in place of any sessions with that nick."""
        nick = peer.peer
        self.forget(nick)
        peer.next_counter = max(peer.next_counter, self._floors.get(nick, 0))
        # The row of the sessions forgotten is replaced by this peer's (or deleted, if it
        # never has anything to save): the old key's sessions must not outlive it on disk.
        if peer.can_send:
            self._dirty.add(nick)
        self.peers[nick] = peer
        while len(self.peers) > self.max_peers:
            self.forget(next(iter(self.peers)))

    def forget(self, nick: str) -> None:
        """Drop every session with ``nick`` (and its saved row)."""
        peer = self.peers.pop(nick, None)
        if peer is not None:
            peer.close()
            self._dirty.discard(nick)
            self._deleted.add(nick)
            self._floors[nick] = max(peer.next_counter, self._floors.pop(nick, 0))
            while len(self._floors) > MAX_FLOORS:
                self._floors.popitem(last=False)

    # -- persistence --------------------------------------------------------------------

    @property
    def changed(self) -> bool:
        return bool(self._dirty or self._deleted or self.prekeys.changed or not self._nick_saved)

    def changes(self) -> dict[str, bytes | None]:
        """Rows changed since the last call: name -> state, or None for a row to delete."""
        rows: dict[str, bytes | None] = {PEER_ROW + nick: None for nick in self._deleted}
        for nick in self._dirty:
            peer = self.peers.get(nick)
            if peer is not None:
                rows[PEER_ROW + nick] = peer.to_bytes()
        if self.prekeys.changed:
            rows[PREKEYS_ROW] = self.prekeys.to_bytes()
            self.prekeys.changed = False
        if not self._nick_saved:
            rows[NICK_ROW] = self.nick.encode("utf-8")
            self._nick_saved = True
        self._dirty.clear()
        self._deleted.clear()
        return rows

    def rows(self) -> dict[str, bytes]:
        """Every row (for a first save)."""
        rows = {PEER_ROW + nick: peer.to_bytes() for nick, peer in self.peers.items()}
        rows[PREKEYS_ROW] = self.prekeys.to_bytes()
        rows[NICK_ROW] = self.nick.encode("utf-8")
        return rows

    @classmethod
    def from_rows(cls, nick: str, identity: PrivateKey, rows: dict[str, bytes], now: float) -> Keyring:
        """The keyring saved as ``rows``; a fresh one if there are none. A peer's row that
        cannot be read is dropped (logged): the next message starts a new session with
        them, which costs a warning-free re-key, not the profile. Sessions made under
        another nick of ours are dropped too: they bind that nick."""
        saved = rows.get(PREKEYS_ROW)
        if saved is None:
            keyring = cls.fresh(nick, identity, now)
        else:
            keyring = cls(nick, identity, OurPrekeys.from_bytes(saved))
        same_nick = rows.get(NICK_ROW) == nick.encode("utf-8")
        keyring._nick_saved = same_nick
        for name, state in rows.items():
            if not name.startswith(PEER_ROW):
                continue
            their_nick = name[len(PEER_ROW) :]
            if not same_nick:
                keyring._deleted.add(their_nick)
                continue
            try:
                keyring.peers[their_nick] = PeerSession.from_bytes(
                    state,
                    our_nick=nick,
                    our_identity=identity,
                    their_nick=their_nick,
                    budget=keyring.budget,
                    prekeys=keyring.prekeys,
                    dirty=keyring._dirty,
                )
            except BadRatchetState as exc:
                log.warning("%s; it was dropped", exc)
                keyring._deleted.add(their_nick)
        return keyring
