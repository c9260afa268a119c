"""Our prekeys: the signed prekey and the one-time prekeys we publish through the relay
so that others can start a session with us (X3DH), and their private halves. Pure.

* The signed prekey is signed with the identity key (XEdDSA over
  ``x3dh.signed_prekey_message``) and replaced every ``SIGNED_PREKEY_LIFETIME``. The old
  one is kept ``SIGNED_PREKEY_GRACE`` longer, for first messages already on their way
  under it, then forgotten: a first message under it can then no longer be read, by us
  or by anyone who later steals our keys (forward secrecy for the prekey itself).
* One-time prekeys go out ``ONE_TIME_BATCH`` at a time, more whenever the relay says it
  holds fewer than ``ONE_TIME_LOW`` (never more often than ``PUBLISH_INTERVAL``, and not
  on its answer to a publish). Each private half is deleted when a first message
  uses it, so a replay of that message cannot start a second session. We keep at most
  ``MAX_ONE_TIME`` unused ones (the oldest go first): a relay that never hands them out
  cannot make us hoard keys.

``to_bytes`` is the whole secret state; the caller seals it before it touches the disk.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from itertools import pairwise
from typing import NamedTuple

import nacl.utils
from nacl.public import PrivateKey, PublicKey

from e2echat.crypto.x3dh import MAX_PREKEY_ID, signed_prekey_message
from e2echat.crypto.xeddsa import xeddsa_sign
from e2echat.errors import BadRatchetState

DAY = 24 * 3600.0
SIGNED_PREKEY_LIFETIME = 7 * DAY
SIGNED_PREKEY_GRACE = 14 * DAY
ONE_TIME_BATCH = 25
ONE_TIME_LOW = 10
MAX_ONE_TIME = 200
# Seconds between publishes, at least: a relay that says it holds none, again and again
# (a hostile one), would have us make batch after batch, and past MAX_ONE_TIME drop the
# private halves of keys it may just have handed out. 8 batches fill MAX_ONE_TIME: 16 s.
PUBLISH_INTERVAL = 2.0

_FORMAT = 2
_HEAD = struct.Struct(">BIIHI")  # format, next id, current signed id, signed count, base keys
_SEEN = struct.Struct(">32sI")  # a base key, the signed prekey its first message used
# Base keys of first messages read, for as long as their signed prekey is kept: a replay
# of one must not start its session again, even once the peer's sessions (and what they
# remember) were dropped. A relay that makes up people can push old ones out only by
# getting this many real first messages read.
MAX_SEEN = 20_000
_SIGNED = struct.Struct(">Id")  # id, created (Unix time)
_ID = struct.Struct(">I")
_KEY = 32
_SIGNATURE = 64


class SignedPrekey(NamedTuple):
    prekey_id: int
    private: PrivateKey
    created: float
    signature: bytes


class OurPrekeys:
    """Our prekeys' private halves. Make one with ``fresh`` or ``from_bytes``.

    ``changed`` is set whenever something worth saving changed; the owner clears it."""

    def __init__(self, next_id: int) -> None:
        self._next_id = next_id
        self._signed: dict[int, SignedPrekey] = {}
        self._current = 0
        self._one_time: OrderedDict[int, PrivateKey] = OrderedDict()
        #: base key -> the id of the signed prekey its first message used, oldest first
        self._seen: OrderedDict[bytes, int] = OrderedDict()
        self.changed = False

    @classmethod
    def fresh(cls, identity: PrivateKey, now: float, *, first_id: int | None = None) -> OurPrekeys:
        """New prekeys, their ids counting from ``first_id``: by default a random point, so
        that they do not collide with those of a profile lost since (sessions.db moved
        away). The relay still holds its one-time prekeys, and ignores a publish of ids it
        holds."""
        if first_id is None:
            first_id = int.from_bytes(nacl.utils.random(_ID.size), "big") % MAX_PREKEY_ID + 1
        prekeys = cls(first_id)
        prekeys._new_signed(identity, now)
        return prekeys

    def _take_id(self) -> int:
        prekey_id = self._next_id
        # Ids wrap round after four billion; one still in use is skipped.
        self._next_id = prekey_id % MAX_PREKEY_ID + 1
        if prekey_id in self._signed or prekey_id in self._one_time:
            return self._take_id()
        return prekey_id

    def _new_signed(self, identity: PrivateKey, now: float) -> None:
        prekey_id = self._take_id()
        private = PrivateKey.generate()
        signature = xeddsa_sign(identity, signed_prekey_message(prekey_id, private.public_key))
        self._signed[prekey_id] = SignedPrekey(prekey_id, private, now, signature)
        self._current = prekey_id
        self.changed = True

    @property
    def current(self) -> SignedPrekey:
        """The signed prekey to publish."""
        return self._signed[self._current]

    def rotate_if_due(self, identity: PrivateKey, now: float) -> bool:
        """Replace the signed prekey if it is older than its lifetime, and forget old ones
        past their grace. True if the signed prekey to publish changed."""
        # The grace runs from when the next one replaced it (made just after it: they are
        # kept in the order made), not from its own making: a client away for weeks
        # replaces it late, and first messages sent under it meanwhile are on their way.
        for signed, successor in pairwise(list(self._signed.values())):
            if signed.prekey_id != self._current and now - successor.created > SIGNED_PREKEY_GRACE:
                del self._signed[signed.prekey_id]
                # No first message under it can be read any more: its replays need no memory.
                for base_key in [key for key, used in self._seen.items() if used == signed.prekey_id]:
                    del self._seen[base_key]
                self.changed = True
        if now - self.current.created <= SIGNED_PREKEY_LIFETIME and self.current.created <= now + DAY:
            return False
        self._new_signed(identity, now)
        return True

    def seen(self, base_key: bytes) -> bool:
        """True if a first message with this base key was read already (a replay)."""
        return base_key in self._seen

    def remember(self, base_key: bytes, signed_prekey_id: int) -> None:
        """A first message with ``base_key`` under ``signed_prekey_id`` was read."""
        self._seen[base_key] = signed_prekey_id
        while len(self._seen) > MAX_SEEN:
            self._seen.popitem(last=False)
        self.changed = True

    def signed(self, prekey_id: int) -> PrivateKey | None:
        kept = self._signed.get(prekey_id)
        return None if kept is None else kept.private

    def new_one_time(self, count: int) -> list[tuple[int, PublicKey]]:
        """``count`` new one-time prekeys to publish: (id, public key) each."""
        made = []
        for _ in range(count):
            prekey_id = self._take_id()
            private = PrivateKey.generate()
            self._one_time[prekey_id] = private
            made.append((prekey_id, private.public_key))
        while len(self._one_time) > MAX_ONE_TIME:
            self._one_time.popitem(last=False)
        self.changed = self.changed or bool(made)
        return made

    def one_time(self, prekey_id: int) -> PrivateKey | None:
        """The private half of an unused one-time prekey, or None (used, or never ours)."""
        return self._one_time.get(prekey_id)

    def use_one_time(self, prekey_id: int) -> None:
        """A first message used it: forget it, so that it can never be used again."""
        if self._one_time.pop(prekey_id, None) is not None:
            self.changed = True

    @property
    def unused(self) -> int:
        return len(self._one_time)

    # -- persistence --------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """format (1) || next id (4) || current signed id (4) || signed count (2) || base
        key count (4) || signed prekeys (id, created, private key, signature each) || base
        keys (key, signed prekey id each) || one-time prekeys (id, private key each), oldest
        first. Secret: seal before storing."""
        head = _HEAD.pack(_FORMAT, self._next_id, self._current, len(self._signed), len(self._seen))
        parts = [head]
        for signed in self._signed.values():
            parts.append(
                _SIGNED.pack(signed.prekey_id, signed.created) + bytes(signed.private) + signed.signature
            )
        parts.extend(_SEEN.pack(key, used) for key, used in self._seen.items())
        parts.extend(_ID.pack(prekey_id) + bytes(private) for prekey_id, private in self._one_time.items())
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, data: bytes) -> OurPrekeys:
        def bad(detail: str) -> BadRatchetState:
            return BadRatchetState(peer="(our prekeys)", detail=detail)

        if len(data) < _HEAD.size:
            raise bad("too short")
        version, next_id, current, count, seen = _HEAD.unpack_from(data)
        if version != _FORMAT:
            raise bad(f"unknown format {version}")
        signed_size = _SIGNED.size + _KEY + _SIGNATURE
        seen_at = _HEAD.size + count * signed_size
        at = seen_at + seen * _SEEN.size
        one_time_size = _ID.size + _KEY
        if len(data) < at or (len(data) - at) % one_time_size:
            raise bad("wrong length")
        prekeys = cls(next_id)
        for start in range(_HEAD.size, seen_at, signed_size):
            prekey_id, created = _SIGNED.unpack_from(data, start)
            key_at = start + _SIGNED.size
            private = PrivateKey(data[key_at : key_at + _KEY])
            signature = data[key_at + _KEY : key_at + _KEY + _SIGNATURE]
            prekeys._signed[prekey_id] = SignedPrekey(prekey_id, private, created, signature)
        for start in range(seen_at, at, _SEEN.size):
            base_key, used = _SEEN.unpack_from(data, start)
            prekeys._seen[base_key] = used
        for start in range(at, len(data), one_time_size):
            (prekey_id,) = _ID.unpack_from(data, start)
            prekeys._one_time[prekey_id] = PrivateKey(data[start + _ID.size : start + one_time_size])
        if current not in prekeys._signed:
            raise bad("no current signed prekey")
        prekeys._current = current
        return prekeys
