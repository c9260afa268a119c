"""A session with each peer: made on first use, ended when they leave or change keys.

``Sessions`` is the client's end-to-end side, where ``ClientCore`` is its side of the
conversation with the relay: peers announced (in the directory, or as they join) and
gone, a ``PeerSession`` with each, and what they send decrypted into events. What is
owed a receipt collects in ``acks_due``, which the ``Outbox`` sends.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from nacl.public import PrivateKey

from e2echat.client.directory import Directory
from e2echat.client.events import (
    Event,
    KeyPinned,
    MessageReceived,
    MessagesMissing,
    PeerJoined,
    PeerLeft,
    SecurityWarning,
    SplitView,
)
from e2echat.client.receipts import DeliveryTracker
from e2echat.client.trust import Trust
from e2echat.crypto.chains import KeyBudget
from e2echat.crypto.session import Kind, Party, PeerSession
from e2echat.errors import DecryptionError, RemoteProtocolError
from e2echat.wire import messages as m

__all__ = ["Sessions"]

log = logging.getLogger("e2echat.client.sessions")


class Sessions:
    """The sessions with the peers the ``directory`` holds, made while ``online()``.

    Warnings found while making a session for sending go to ``notices``, handed out with
    the next events; ``tracker`` hears of receipts and of peers gone."""

    def __init__(
        self,
        our_nick: str,
        identity: PrivateKey,
        session_key: PrivateKey,
        directory: Directory,
        tracker: DeliveryTracker,
        *,
        online: Callable[[], bool],
        notices: list[Event],
    ) -> None:
        self._our_nick = our_nick
        self._identity = identity
        self._session_key = session_key
        self._directory = directory
        self._tracker = tracker
        self._online = online
        self._notices = notices
        #: nick -> the session with them, once made
        self.by_nick: dict[str, PeerSession] = {}
        # One budget for the receiving keys every session keeps (chains.py): what a flood of
        # garbage or gaps can make us hold is bounded across all peers, not per peer.
        self.budget = KeyBudget()
        self._unusable: set[str] = set()  # peers whose keys cannot make a session
        #: sender -> the counters of their messages we owe a receipt for (in this session)
        self.acks_due: dict[str, list[int]] = {}

    def session_with(self, nick: str) -> PeerSession | None:
        """The session with ``nick``, made on first use; None if there can be none."""
        session = self.by_nick.get(nick)
        if session is not None or not self._online():
            return session
        peer = self._directory.peers.get(nick)
        if peer is None or nick in self._unusable:
            return None
        party = Party(peer.nick, peer.identity_key, peer.session_key)
        try:
            session = PeerSession(
                self._our_nick, self._identity, self._session_key, party, budget=self.budget
            )
        except DecryptionError as exc:
            self._unusable.add(nick)
            self._directory.forget_caches()
            self._notices.append(SecurityWarning(f"cannot talk to {nick} securely: {exc}"))
            return None
        self.by_nick[nick] = session
        return session

    def close_all(self) -> None:
        """Drop every session and with them all chain keys."""
        for session in self.by_nick.values():
            session.close()
        self.by_nick.clear()

    # -- peers come and go ------------------------------------------------------------------

    def add(self, peer: m.PeerInfo, *, refresh: bool = True) -> list[Event]:
        """A peer the relay announced (in the directory or as joined)."""
        if peer.nick == self._our_nick:
            raise RemoteProtocolError(detail="relay listed our own nick as a peer")
        known = self._directory.peers.get(peer.nick)
        if known == peer:
            return []  # announced again with the same keys: keep the session and its counters
        if self._directory.reuses_a_session_key(peer):
            return [
                SecurityWarning(
                    f"the relay announced {peer.nick} again with a session key already used; "
                    "ignored (a replay attempt?)"
                )
            ]
        events: list[Event] = self.retire(peer.nick) if known is not None else []
        self._unusable.discard(peer.nick)
        # The session itself (three X25519 operations) is made when first needed: a newcomer
        # to a relay with thousands online must not pay for every pair up front.
        return events + self._directory.add(peer, refresh=refresh)

    def joined(self, peer: m.PeerInfo) -> list[Event]:
        if self._directory.peers.get(peer.nick) == peer:
            return []  # the same person, announced again: nothing new
        events = self.add(peer)
        if peer.nick not in self._directory.peers:
            return events  # refused (see add)
        return [PeerJoined(peer.nick), *events]

    def left(self, nick: str) -> list[Event]:
        if nick not in self._directory.peers:
            return []
        return [PeerLeft(nick), *self.retire(nick)]

    def retire(self, nick: str) -> list[Event]:
        """``nick``'s session ends (they left, or came back with other keys)."""
        # Dropping the session forgets its chain keys: forward secrecy for this pair.
        session = self.by_nick.pop(nick, None)
        if session is not None:
            session.close()
        self._directory.remove(nick, had_session=session is not None)
        # Acknowledgements owed in the old session must not be sent in a new one (counters
        # restart there), and no receipt from a new session may confirm an old copy.
        self.acks_due.pop(nick, None)
        return list(self._tracker.peer_left(nick))

    # -- what arrives -----------------------------------------------------------------------

    def deliver(self, sender: str, body: bytes) -> list[Event]:
        """What ``sender`` sent (as the relay passed it on), decrypted into events."""
        session = self.by_nick.get(sender) or self.session_with(sender)
        if session is None:
            return [
                SecurityWarning(f"dropped a message claiming to be from {sender}, who has no session with us")
            ]
        try:
            plaintext = session.decrypt(body)
        except DecryptionError as exc:
            log.info("dropped a message that did not authenticate")
            return [SecurityWarning(f"{exc}; it was dropped")]
        events: list[Event] = []
        if plaintext.skipped:
            events.append(MessagesMissing(plaintext.sender, plaintext.skipped))
        directory = self._directory
        if plaintext.kind is Kind.RECEIPT:
            # A receipt from a key we do not accept confirms nothing. (Belt and braces: a
            # changed key gets no copies and a replaced session's copies fail in retire,
            # so no receipt from one can match today; this keeps it so if that changes.)
            if directory.trust(plaintext.sender) is not Trust.CHANGED:
                events.extend(self._tracker.acknowledged(plaintext.sender, list(plaintext.acks)))
            return events
        trust = directory.trust(plaintext.sender)
        if trust is not Trust.CHANGED:  # nothing is owed to a key we do not accept, even later
            self.acks_due.setdefault(plaintext.sender, []).append(plaintext.counter)
            # First contact pins the key (a call per message: kept cheap when pinned).
            if directory.known_peers.exchanged(plaintext.sender, session.theirs.identity_key):
                events.append(KeyPinned(plaintext.sender))
        if plaintext.directory_hash != directory.view and directory.is_split_view(
            plaintext.sender, plaintext.directory_hash
        ):
            events.append(SplitView(plaintext.sender))
        private = plaintext.kind is Kind.PRIVATE
        events.append(
            MessageReceived(plaintext.sender, plaintext.text, private, trust, plaintext.late, plaintext.sent)
        )
        return events
