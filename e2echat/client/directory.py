"""Who else is online among the people we share a room with (our contacts), as the relay
says, and how far we trust what it says. Pure.

``Directory`` holds the relay's list of contacts online and their keys, and pins each
identity key when we first exchange a message with its owner (trust on first use,
through ``KnownPeers``). Who is in which room, and our views of each, are ``Rooms``'.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Mapping

from nacl.public import PublicKey

from e2echat.client.events import Event, KeyChanged, KeyPinned
from e2echat.client.trust import KnownPeers, Trust
from e2echat.crypto.identity import fingerprint, same_fingerprint
from e2echat.errors import CommandError, RemoteProtocolError
from e2echat.wire.objects import PeerInfo

# The most people online a client believes a relay has: twice what one relay holds
# (Limits.max_connections), room for relays that grow. A relay announcing more is hostile
# or broken, and would otherwise fill our memory with entries (issue 16: an endless
# directory stream).
MAX_PEERS = 20_000
# Session keys of people who left, kept so that the relay cannot announce one again (and
# replay that session's messages): only keys we had a session with (a key we never
# exchanged a message under has nothing to replay), the last 8 of each nick (8 reconnects
# within one of our connections), and 10,000 in all (about 1.5 MiB). Beyond that a relay
# that made someone reconnect 8 times could replay their oldest session's messages to us;
# each shows its send time, so one older than a minute says how old it is.
RETIRED_PER_NICK = 8
RETIRED_TOTAL = 10_000


class Directory:
    def __init__(self, known_peers: KnownPeers) -> None:
        #: nick -> the keys the relay says they have, for every contact online
        self.peers: dict[str, PeerInfo] = {}
        self.known_peers = known_peers
        # Retired session keys, oldest first (-> whose), and each nick's, oldest first.
        self._retired: OrderedDict[bytes, str] = OrderedDict()
        self._retired_of: dict[str, deque[bytes]] = {}
        # Trust states, cached: a room message to hundreds must not compare hundreds of
        # keys. A nick's is dropped when their entry changes, all when a pin changes (a
        # join must not make the next message compare every key again: issue 19).
        self._trust_cache: dict[str, Trust] = {}
        self._cached_for: tuple[KnownPeers, int] | None = None
        #: goes up with every entry added or removed: lets a room message keep what it
        #: found of its recipients until someone comes or goes (Outbox.send_room)
        self.version = 0

    def nicks(self) -> list[str]:
        """Every contact online, sorted."""
        return sorted(self.peers)

    def peer(self, nick: str) -> PeerInfo:
        peer = self.peers.get(nick)
        if peer is None:
            raise CommandError(detail=f"{nick} is not online (see /who)")
        return peer

    # -- joins and leaves ---------------------------------------------------------------------

    def reuses_a_session_key(self, peer: PeerInfo) -> bool:
        """A real client makes a fresh session key for every connection: the same key again
        is an old announcement played back. (Sessions do not depend on it, and the ratchet
        refuses replayed messages anyway; this keeps the directory honest.)"""
        return bytes(peer.session_key) in self._retired

    def add(self, peer: PeerInfo) -> list[Event]:
        """``peer`` is online (any earlier entry for the nick was removed first). Says if
        their identity key is not the one pinned. Pins nothing: see ``exchanged``.
        Raises ``RemoteProtocolError`` beyond MAX_PEERS."""
        if len(self.peers) >= MAX_PEERS:  # (an entry replaced was removed first)
            raise RemoteProtocolError(
                detail=f"the relay announced more than {MAX_PEERS:,} people online, more than a "
                "relay holds (a hostile or broken relay); disconnected"
            )
        self.peers[peer.nick] = peer
        self.version += 1
        self._trust_cache.pop(peer.nick, None)
        pin = self.known_peers.get(peer.nick)
        if pin is not None and pin.identity_key != peer.identity_key:
            return [KeyChanged(peer.nick, fingerprint(pin.identity_key), fingerprint(peer.identity_key))]
        return []

    def exchanged(self, nicks: list[str]) -> list[Event]:
        """We send to, or received a message from, each of ``nicks`` (online, and not with
        a changed key): pins the key of each on first contact, and says so."""
        return [KeyPinned(nick) for nick in self.known_peers.exchanged_all(nicks, self.peers)]

    def remove(self, nick: str, *, had_session: bool) -> PeerInfo:
        """``nick`` left (or came back with other keys); their session key is retired if
        we ``had_session`` with it (see RETIRED_PER_NICK)."""
        peer = self.peers.pop(nick)
        self.version += 1
        self._trust_cache.pop(nick, None)
        if had_session:
            self._retire(nick, bytes(peer.session_key))
        return peer

    def _retire(self, nick: str, key: bytes) -> None:
        retired = self._retired
        retired[key] = nick
        keys = self._retired_of.setdefault(nick, deque())
        keys.append(key)
        if len(keys) > RETIRED_PER_NICK:
            del retired[keys.popleft()]
        while len(retired) > RETIRED_TOTAL:
            _, owner = retired.popitem(last=False)
            owned = self._retired_of[owner]
            owned.popleft()  # the owner's oldest is the oldest of all
            if not owned:
                del self._retired_of[owner]

    # -- trust ----------------------------------------------------------------------------------

    def trust(self, nick: str) -> Trust:
        """How far the key the directory shows for ``nick`` is trusted."""
        # Asked once per message received: _check_caches, without the call.
        peers, cached_for = self.known_peers, self._cached_for
        if cached_for is None or cached_for[0] is not peers or cached_for[1] != peers.generation:
            self._check_caches()
        trust = self._trust_cache.get(nick)
        if trust is None:
            trust = self.known_peers.state(nick, self.peer(nick).identity_key)
            self._trust_cache[nick] = trust
        return trust

    def withheld_among(self, nicks: list[str], keys: Mapping[str, PublicKey]) -> list[str]:
        """Those of ``nicks`` (each online) whose key changed and is not accepted, or whom
        the directory shows under another identity key than ``keys`` (a room's) says: what
        a room message does not go to. ``trust`` and the key compared for each, in one
        call: a room message asks it of every recipient."""
        self._check_caches()
        peers, cached, changed = self.peers, self._trust_cache, Trust.CHANGED
        withheld = []
        for nick in nicks:
            trust = cached.get(nick)
            if trust is None:
                trust = self.trust(nick)
            shown, key = peers[nick].identity_key, keys[nick]
            if trust is changed or (shown is not key and bytes(shown) != bytes(key)):
                withheld.append(nick)
        return withheld

    def withheld(self) -> list[str]:
        """Peers online whose identity key changed: nothing is sent to them until accepted."""
        return [nick for nick in self.nicks() if self.trust(nick) is Trust.CHANGED]

    def fingerprint(self, nick: str) -> str:
        """The fingerprint of the identity key the directory shows for ``nick`` now."""
        return fingerprint(self.peer(nick).identity_key)

    def key_changed(self, nick: str) -> KeyChanged | None:
        """The warning for ``nick``'s key now, if it is not the one pinned."""
        peer, pin = self.peer(nick), self.known_peers.get(nick)
        if pin is None or pin.identity_key == peer.identity_key:
            return None
        return KeyChanged(nick, fingerprint(pin.identity_key), fingerprint(peer.identity_key))

    def accept(self, nick: str, key_fingerprint: str) -> None:
        """Pin the key the directory shows for ``nick`` (clears verification), if it is the
        key with ``key_fingerprint``: the one the user was shown and accepts. The relay may
        have announced another since; that one is not accepted."""
        peer = self._shown(nick, key_fingerprint)
        self.known_peers.accept(nick, peer.identity_key)

    def set_verified(self, nick: str, verified: bool, *, key_fingerprint: str | None = None) -> None:
        """Mark ``nick``'s key verified (or not); if ``key_fingerprint`` is given, only if
        the directory still shows that key (the one the user compared)."""
        peer = self.peer(nick) if key_fingerprint is None else self._shown(nick, key_fingerprint)
        if self.trust(nick) is Trust.CHANGED:
            raise CommandError(detail=f"{nick}'s key changed: accept it first with /trust {nick}")
        self.known_peers.see(nick, peer.identity_key)  # verifying pins, as exchanging does
        self.known_peers.set_verified(nick, peer.identity_key, verified)

    def _shown(self, nick: str, key_fingerprint: str) -> PeerInfo:
        peer = self.peer(nick)
        if not same_fingerprint(fingerprint(peer.identity_key), key_fingerprint):
            raise CommandError(
                detail=f"{nick}'s key is not the one with fingerprint {key_fingerprint} (it changed "
                "again?); nothing was accepted"
            )
        return peer

    def forget_caches(self) -> None:
        self._trust_cache.clear()

    def _check_caches(self) -> None:
        """Drop the cached trust states if any pin changed since."""
        peers, generation = self.known_peers, self.known_peers.generation
        cached_for = self._cached_for
        if cached_for is None or cached_for[0] is not peers or cached_for[1] != generation:
            self.forget_caches()
            self._cached_for = (peers, generation)
