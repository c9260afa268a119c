"""The relay's prekey directory: for each nick, the bundle its owner published (identity
key, signed prekey, one-time prekeys), handed out to whoever asks, each one-time prekey
once. Pure (no I/O); kept in memory.

The relay never checks a signed prekey's signature: it has nothing to check it against
that a client should trust, and each client checks every bundle it is given against the
identity key it has pinned (crypto/x3dh.py). A relay that stored garbage, or lies, only
gets its bundles refused.

Bundles outlive their owners' connections: they are what lets someone start a session
with a person who is away. So memory is bounded per identity (``one_time_prekeys``) and
in all (``bundles``), and one identity costs about 1.4 KiB with 25 one-time prekeys.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Sequence
from typing import NamedTuple

from nacl.public import PublicKey

from e2echat.relay.limits import Limits
from e2echat.wire.messages import Bundle, Bundles, OneTimePrekey, SignedPrekey

# One one-time prekey as stored: its id (4 bytes, big-endian) then its key. Held in one
# bytearray per identity, oldest first: a bytes object or a dataclass per key would cost
# two to five times as much.
_ONE_TIME = struct.Struct(">I32s")
# The signed prekey: id, key, signature.
_SIGNED = struct.Struct(">I32s64s")
_ID_SIZE = 4


class _Stored:
    """One nick's bundle. ``signed`` is empty from its owner's registration until its first
    publish; such an entry is dropped when the owner leaves (there is nothing to hand out)."""

    # Slots: the relay may hold tens of thousands.
    __slots__ = ("identity_key", "one_time", "signed")

    def __init__(self, identity_key: bytes) -> None:
        self.identity_key = identity_key
        self.signed = b""
        self.one_time = bytearray()

    @property
    def count(self) -> int:
        return len(self.one_time) // _ONE_TIME.size


class Handed(NamedTuple):
    """What a fetch gave out: the answer, and the owners online now holding fewer than
    ``prekeys_low`` one-time prekeys because of it (nick -> how many they have left)."""

    answer: Bundles
    low: dict[str, int]


class PrekeyDirectory:
    """Nick -> the bundle its owner published. The core tells it who registers and who
    leaves; a nick's bundle belongs to one identity key, and is dropped when the nick is
    registered with another."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        #: nick -> its bundle, in the order their owners last registered, least recent
        #: first: the first to go when there are too many
        self._stored: dict[str, _Stored] = {}
        #: the nicks online, whose bundles are never dropped
        self._online: set[str] = set()
        #: stored bundles with a signed prekey: what ``limits.bundles`` bounds
        self._published = 0

    def __len__(self) -> int:
        """How many bundles it holds (identities that have published)."""
        return self._published

    def count(self, nick: str) -> int:
        """One-time prekeys held for ``nick``."""
        stored = self._stored.get(nick)
        return stored.count if stored is not None else 0

    def register(self, nick: str, identity_key: PublicKey) -> int:
        """``nick`` came online with ``identity_key``: the one-time prekeys held for that
        nick and key. A bundle of the nick under another key is dropped: the nick has
        changed hands (or its owner its key), and whoever has it now publishes their own."""
        key = bytes(identity_key)
        stored = self._stored.pop(nick, None)
        if stored is not None and stored.identity_key != key:  # public keys: no secret to time
            if stored.signed:
                self._published -= 1
            stored = None
        if stored is None:
            stored = _Stored(key)
        self._stored[nick] = stored  # last: registered most recently
        self._online.add(nick)
        return stored.count

    def leave(self, nick: str) -> None:
        """``nick`` went offline: its bundle stays, for those who want to write to it."""
        self._online.discard(nick)
        stored = self._stored.get(nick)
        if stored is not None and not stored.signed:
            del self._stored[nick]  # never published: nothing to keep
        self._evict()  # those online may have kept it over the bound

    def publish(self, nick: str, signed: SignedPrekey, one_time: Sequence[OneTimePrekey]) -> int:
        """``nick`` (registered, online) publishes: ``signed`` replaces its signed prekey,
        and the ``one_time`` prekeys whose ids it does not hold already join the others,
        the oldest going beyond ``limits.one_time_prekeys``. How many it now holds."""
        stored = self._stored[nick]
        if not stored.signed:
            self._published += 1
        stored.signed = _SIGNED.pack(signed.id, bytes(signed.key), signed.signature)
        held, size = stored.one_time, _ONE_TIME.size
        ids = {bytes(held[start : start + _ID_SIZE]) for start in range(0, len(held), size)}
        for prekey in one_time:
            record = _ONE_TIME.pack(prekey.id, bytes(prekey.key))
            if record[:_ID_SIZE] not in ids:
                ids.add(record[:_ID_SIZE])
                held += record
        excess = len(held) - self.limits.one_time_prekeys * size
        if excess > 0:
            del held[:excess]  # the oldest; a bytearray drops its front without copying
        self._evict()
        return stored.count

    def fetch(self, requester: str, nicks: Sequence[str]) -> Handed:
        """A bundle for each of ``nicks`` that has one (not the ``requester``'s own), each
        with the oldest one-time prekey held, which is then gone; or with none, if none
        is left. The rest are missing."""
        bundles: list[Bundle] = []
        missing: list[str] = []
        low: dict[str, int] = {}
        size = _ONE_TIME.size
        for nick in nicks:
            stored = self._stored.get(nick)
            if stored is None or not stored.signed or nick == requester:
                missing.append(nick)
                continue
            one_time: tuple[OneTimePrekey, ...] = ()
            if stored.one_time:
                ident, key = _ONE_TIME.unpack_from(stored.one_time)
                del stored.one_time[:size]  # handed out once, ever
                one_time = (OneTimePrekey(ident, PublicKey(key)),)
                left = stored.count
                if left < self.limits.prekeys_low and nick in self._online:
                    low[nick] = left
            ident, key, signature = _SIGNED.unpack(stored.signed)
            signed = SignedPrekey(ident, PublicKey(key), signature)
            bundles.append(Bundle(nick, PublicKey(stored.identity_key), signed, one_time))
        return Handed(Bundles(tuple(bundles), tuple(missing)), low)

    def _evict(self) -> None:
        """Over ``limits.bundles``: drop the bundles of the owners offline who registered
        least recently. Never one online: if too many of those have published, the bound
        waits for them to leave (there are at most ``max_connections`` of them)."""
        excess = self._published - self.limits.bundles
        if excess <= 0:
            return
        offline = (nick for nick in self._stored if nick not in self._online)
        for nick in list(itertools.islice(offline, excess)):
            # Offline entries all have a signed prekey (``leave`` drops the others).
            del self._stored[nick]
            self._published -= 1
