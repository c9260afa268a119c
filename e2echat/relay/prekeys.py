"""The relay's prekey directory: for each nick, its owner's bundle (identity key, signed
prekey, one-time prekeys), handed out to whoever asks, each one-time prekey once. Pure
(no I/O); kept in memory.

A bundle exists from its owner's register on, which carries the signed prekey: whoever
hears someone join can fetch their bundle at once, before their first publish. Until
then it has no one-time prekey.

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
from e2echat.relay.store import StoredBundle
from e2echat.wire.messages import Bundles
from e2echat.wire.objects import Bundle, OneTimePrekey, SignedPrekey

# One one-time prekey as stored: its id (4 bytes, big-endian) then its key. Held in one
# bytearray per identity, oldest first: a bytes object or a dataclass per key would cost
# two to five times as much.
_ONE_TIME = struct.Struct(">I32s")
# The signed prekey: id, key, signature.
_SIGNED = struct.Struct(">I32s64s")
_ID_SIZE = 4


def _pack_signed(signed: SignedPrekey) -> bytes:
    return _SIGNED.pack(signed.id, bytes(signed.key), signed.signature)


class _Stored:
    """One nick's bundle: ``signed`` is the packed signed prekey, ``one_time`` the packed
    one-time prekeys, oldest first."""

    # Slots: the relay may hold tens of thousands.
    __slots__ = ("identity_key", "one_time", "signed")

    def __init__(self, identity_key: bytes, signed: bytes) -> None:
        self.identity_key = identity_key
        self.signed = signed
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
    """Nick -> its owner's bundle. The core tells it who registers (with a signed prekey),
    publishes and leaves; a nick's bundle belongs to one identity key, and is replaced
    when the nick is registered with another."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        #: nick -> its bundle, in the order their owners last registered, least recent
        #: first: the first to go when there are too many
        self._stored: dict[str, _Stored] = {}
        #: the nicks online, whose bundles are never dropped
        self._online: set[str] = set()
        #: nicks whose bundles were dropped over the bound, for the core to forget them
        #: (see ``take_evicted``)
        self._evicted: list[str] = []

    def __len__(self) -> int:
        """How many bundles it holds: what ``limits.bundles`` bounds."""
        return len(self._stored)

    def count(self, nick: str) -> int:
        """One-time prekeys held for ``nick``."""
        stored = self._stored.get(nick)
        return stored.count if stored is not None else 0

    def register(self, nick: str, identity_key: PublicKey, signed: SignedPrekey) -> int:
        """``nick`` came online with ``identity_key`` and ``signed``, which replaces its
        signed prekey: the one-time prekeys held for that nick and key. A bundle of the
        nick under another key is dropped, one-time prekeys and all: the nick has changed
        hands (or its owner its key), and whoever has it now publishes their own."""
        key, packed = bytes(identity_key), _pack_signed(signed)
        stored = self._stored.pop(nick, None)
        if stored is None or stored.identity_key != key:  # public keys: no secret to time
            stored = _Stored(key, packed)
        else:
            stored.signed = packed
        self._stored[nick] = stored  # last: registered most recently
        self._online.add(nick)
        self._evict()
        return stored.count

    def restore(self, nick: str, identity_key: bytes, bundle: StoredBundle) -> None:
        """A bundle as a store kept it, at start-up (least recently registered first)."""
        stored = _Stored(identity_key, bundle.signed)
        stored.one_time += bundle.one_time
        self._stored[nick] = stored

    def saved(self, nick: str) -> StoredBundle:
        """``nick``'s bundle as a store keeps it (``SaveBundle``)."""
        stored = self._stored[nick]
        return StoredBundle(nick, stored.signed, bytes(stored.one_time))

    def forget(self, nick: str) -> None:
        """Drop ``nick``'s bundle: its owner is forgotten."""
        self._stored.pop(nick, None)

    def take_evicted(self) -> list[str]:
        """The nicks whose bundles went over the bound since the last call."""
        evicted, self._evicted = self._evicted, []
        return evicted

    def leave(self, nick: str, *, evict: bool = True) -> None:
        """``nick`` went offline: its bundle stays, for those who want to write to it.
        ``evict=False``: the relay is stopping, and everyone goes at once; that is no
        reason to drop bundles that everyone online kept over the bound."""
        self._online.discard(nick)
        if evict:
            self._evict()  # those online may have kept it over the bound

    def publish(
        self, nick: str, signed: SignedPrekey, one_time: Sequence[OneTimePrekey], *, replace: bool = False
    ) -> int:
        """``nick`` (registered, online) publishes: ``signed`` replaces its signed prekey,
        and the ``one_time`` prekeys whose ids it does not hold already join the others,
        the oldest going beyond ``limits.one_time_prekeys``; with ``replace``, they take
        the place of all it held (its owner lost their private halves). How many it now
        holds."""
        stored = self._stored[nick]
        stored.signed = _pack_signed(signed)
        held, size = stored.one_time, _ONE_TIME.size
        if replace:
            held.clear()
        ids = {bytes(held[start : start + _ID_SIZE]) for start in range(0, len(held), size)}
        for prekey in one_time:
            record = _ONE_TIME.pack(prekey.id, bytes(prekey.key))
            if record[:_ID_SIZE] not in ids:
                ids.add(record[:_ID_SIZE])
                held += record
        excess = len(held) - self.limits.one_time_prekeys * size
        if excess > 0:
            del held[:excess]  # the oldest; a bytearray drops its front without copying
        return stored.count  # a publish adds to a bundle, never another one: nothing to evict

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
            if stored is None or nick == requester:
                missing.append(nick)
                continue
            one_time: tuple[OneTimePrekey, ...] = ()
            if stored.one_time:
                ident, key = _ONE_TIME.unpack_from(stored.one_time)
                del stored.one_time[:size]  # handed out once, ever
                one_time = (OneTimePrekey(ident, PublicKey(key)),)
                left = stored.count
                # Told as the count crosses the mark, and again at none: not after every
                # prekey handed out, which had the owner publish a batch for each while
                # its first publish was on the way, and throw away the oldest keys it
                # kept (still held here) to stay within its own bound.
                if left in (self.limits.prekeys_low - 1, 0) and nick in self._online:
                    low[nick] = left
            ident, key, signature = _SIGNED.unpack(stored.signed)
            signed = SignedPrekey(ident, PublicKey(key), signature)
            bundles.append(Bundle(nick, PublicKey(stored.identity_key), signed, one_time))
        return Handed(Bundles(tuple(bundles), tuple(missing)), low)

    def _evict(self) -> None:
        """Over ``limits.bundles``: drop the bundles of the owners offline who registered
        least recently. Never one online: if there are more of those than the bound, it
        waits for them to leave (there are at most ``max_connections`` of them)."""
        excess = len(self._stored) - self.limits.bundles
        if excess <= 0:
            return
        offline = (nick for nick in self._stored if nick not in self._online)
        for nick in list(itertools.islice(offline, excess)):
            del self._stored[nick]
            self._evicted.append(nick)
