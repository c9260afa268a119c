"""Known peers: trust on first use, key changes, and verification. Pure: the pins live in
memory here; store/pins.py reads and writes them as a file beside the identity.

A nick's identity key is pinned when we first exchange a message with them (send to or
receive from them), not when the directory first shows them: a relay, or a crowd of
strangers coming and going, cannot fill the file with people we never talked to. A
different key for a pinned nick later is a *change*, which blocks sending to that nick
until the user accepts it. A pin is *verified* once the user has compared safety numbers.
Someone we never exchanged a message with has no pin, and their key counts as unverified.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from nacl.public import PublicKey

_FORMAT = "e2echat-known-peers-v1"


class Trust(StrEnum):
    UNVERIFIED = "unverified"
    VERIFIED = "verified"
    CHANGED = "key changed"


@dataclass(frozen=True)
class Pin:
    identity_key: PublicKey
    verified: bool
    first_seen: float
    #: when we last exchanged a message with them (to the day): the least recently used
    #: unverified pin goes first when there are too many
    last_used: float = 0.0


# Pins kept: more people than anyone talks to, and a file of about 1.6 MiB, written in a
# worker thread. A relay that makes up people to write to us (it can: it hands out their
# keys) cannot grow the file past this; verified pins are never dropped, and only the
# user makes those.
MAX_PINS = 10_000
# How stale a pin's last use may get before an exchange records it again (and the file is
# written again): a day, so that a busy chat does not rewrite the file for every message.
TOUCH_AFTER = 24 * 3600.0


class HasIdentityKey(Protocol):
    """Anything that names an identity key (a directory entry)."""

    @property
    def identity_key(self) -> PublicKey: ...


class DamagedPins(ValueError):
    """The pin document cannot be read; the caller says which file it came from."""


class KnownPeers:
    """nick -> pinned identity key, in memory, least recently used first. Whoever keeps
    them on disk watches ``generation`` to know when there is something new to write."""

    def __init__(
        self,
        pins: dict[str, Pin] | None = None,
        *,
        max_pins: int = MAX_PINS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        # Least recently used first (the order given, for ``pins``).
        self._pins: dict[str, Pin] = dict(pins) if pins else {}
        self.max_pins = max_pins
        self._clock = clock
        #: goes up with every change to a pin: lets a client cache trust states, and a
        #: shell save only when something changed
        self.generation = 0

    def __len__(self) -> int:
        return len(self._pins)

    def get(self, nick: str) -> Pin | None:
        return self._pins.get(nick)

    def state(self, nick: str, key: PublicKey) -> Trust:
        """How far ``key`` is trusted as ``nick``'s, without changing anything."""
        pin = self._pins.get(nick)
        if pin is None or pin.identity_key != key:
            return Trust.CHANGED if pin is not None else Trust.UNVERIFIED
        return Trust.VERIFIED if pin.verified else Trust.UNVERIFIED

    def see(self, nick: str, key: PublicKey) -> tuple[Trust, bool]:
        """Pin ``key`` for ``nick`` if nothing is pinned yet (before the user verifies a key
        they never exchanged a message under). Returns (trust, whether it was pinned now)."""
        if nick not in self._pins:
            self._pin(nick, key)
            return Trust.UNVERIFIED, True
        return self.state(nick, key), False

    def exchanged(self, nick: str, key: PublicKey) -> bool:
        """We send ``nick`` a message, or received one, under ``key`` (never a key that
        changed: nothing goes to those, and what comes from them pins nothing). Pins it on
        first contact, and says whether this was first contact. Cheap when pinned."""
        pin = self._pins.get(nick)
        if pin is None:
            self._pin(nick, key)
            return True
        now = self._clock()
        if now - pin.last_used >= TOUCH_AFTER:
            self._touch(nick, pin, now)
        return False

    def exchanged_all(self, nicks: Iterable[str], keys: Mapping[str, HasIdentityKey]) -> list[str]:
        """``exchanged`` for each of ``nicks`` under its key in ``keys`` (a room message's
        recipients), with the clock read once: the nicks pinned now, on first contact."""
        pins, now, pinned = self._pins, self._clock(), []
        for nick in nicks:
            pin = pins.get(nick)
            if pin is None:
                self._pin(nick, keys[nick].identity_key)
                pinned.append(nick)
            elif now - pin.last_used >= TOUCH_AFTER:
                self._touch(nick, pin, now)
        return pinned

    def _touch(self, nick: str, pin: Pin, now: float) -> None:
        """A message exchanged under ``pin`` a day or more after its last use: it moves to
        the end (most recently used), with the use recorded."""
        del self._pins[nick]
        self._pins[nick] = Pin(pin.identity_key, pin.verified, pin.first_seen, now)
        self.generation += 1

    def accept(self, nick: str, key: PublicKey) -> None:
        """Pin ``key`` for ``nick`` (a changed key the user accepts). Unverified."""
        self._pins.pop(nick, None)
        self._pin(nick, key)

    def set_verified(self, nick: str, key: PublicKey, verified: bool) -> None:
        """Mark the pin verified (or not). Only the pinned key itself can be verified."""
        pin = self._pins.get(nick)
        if pin is None or pin.identity_key != key:
            raise ValueError(f"{nick}'s pinned key is not the key given")
        self._pins[nick] = Pin(pin.identity_key, verified, pin.first_seen, pin.last_used)
        self.generation += 1

    def copy(self) -> KnownPeers:
        """A copy to encode elsewhere (a worker thread) while this one goes on changing."""
        return KnownPeers(self._pins, max_pins=self.max_pins, clock=self._clock)

    def _pin(self, nick: str, key: PublicKey) -> None:
        """A new pin, unverified, the most recently used."""
        now = self._clock()
        self._pins[nick] = Pin(key, False, first_seen=now, last_used=now)
        self.generation += 1
        if len(self._pins) > self.max_pins:
            self._drop_least_recently_used(keep=nick)

    def _drop_least_recently_used(self, *, keep: str) -> None:
        """Drop the least recently used unverified pins (never ``keep``, the newest) until
        there are at most ``max_pins``. Verified pins met on the way go to the end: their
        place in the order matters only for dropping, which they never are, and this way
        each is passed over once, not at every new pin."""
        pins = self._pins
        passed = 0
        while len(pins) > self.max_pins and passed < len(pins):
            nick, pin = next(iter(pins.items()))
            del pins[nick]
            if pin.verified or nick == keep:
                pins[nick] = pin
                passed += 1
        # Whatever is left over the bound is verified: the user verified each, keep them all.

    def encode(self) -> bytes:
        """The pins as the known-peers document (JSON, sorted by nick)."""
        document = {
            "format": _FORMAT,
            "peers": {
                nick: {
                    "identity_key": base64.b64encode(bytes(pin.identity_key)).decode("ascii"),
                    "verified": pin.verified,
                    "first_seen": pin.first_seen,
                    "last_used": pin.last_used,
                }
                for nick, pin in sorted(self._pins.items())
            },
        }
        return (json.dumps(document, indent=2) + "\n").encode("utf-8")

    @classmethod
    def decode(cls, data: bytes) -> KnownPeers:
        """The pins in a known-peers document. Raises ``DamagedPins`` for anything else."""
        try:
            document = json.loads(data.decode("utf-8"))
        except ValueError:
            raise DamagedPins("not JSON") from None
        if not isinstance(document, dict) or document.get("format") != _FORMAT:
            raise DamagedPins("not a known-peers document")
        pins: dict[str, Pin] = {}
        try:
            for nick, entry in document["peers"].items():
                raw = base64.b64decode(entry["identity_key"], validate=True)
                if len(raw) != PublicKey.SIZE or not isinstance(entry["verified"], bool):
                    raise ValueError(nick)
                first_seen = float(entry.get("first_seen", 0.0))
                last_used = float(entry.get("last_used", first_seen))  # files before last_used
                pins[nick] = Pin(PublicKey(raw), entry["verified"], first_seen, last_used)
        except (KeyError, TypeError, AttributeError, ValueError, binascii.Error):
            raise DamagedPins("a pin is malformed") from None
        # Least recently used first; a file with too many (from before MAX_PINS, or made
        # by hand) loses its least recently used unverified pins at the next new pin.
        return cls(dict(sorted(pins.items(), key=lambda item: item[1].last_used)))
