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
from dataclasses import dataclass
from enum import StrEnum

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


class DamagedPins(ValueError):
    """The pin document cannot be read; the caller says which file it came from."""


class KnownPeers:
    """nick -> pinned identity key, in memory. Whoever keeps them on disk watches
    ``generation`` to know when there is something new to write."""

    def __init__(self, pins: dict[str, Pin] | None = None) -> None:
        self._pins: dict[str, Pin] = dict(pins) if pins else {}
        #: goes up with every change to a pin: lets a client cache trust states, and a
        #: shell save only when something changed
        self.generation = 0

    def get(self, nick: str) -> Pin | None:
        return self._pins.get(nick)

    def state(self, nick: str, key: PublicKey) -> Trust:
        """How far ``key`` is trusted as ``nick``'s, without changing anything."""
        pin = self._pins.get(nick)
        if pin is None or pin.identity_key != key:
            return Trust.CHANGED if pin is not None else Trust.UNVERIFIED
        return Trust.VERIFIED if pin.verified else Trust.UNVERIFIED

    def see(self, nick: str, key: PublicKey) -> tuple[Trust, bool]:
        """Record that we exchange a message with ``nick`` under ``key`` (or verify it):
        pins it on first use. Returns (trust, whether this was first contact)."""
        if nick not in self._pins:
            self._pins[nick] = Pin(key, verified=False, first_seen=time.time())
            self.generation += 1
            return Trust.UNVERIFIED, True
        return self.state(nick, key), False

    def exchanged(self, nick: str, key: PublicKey) -> bool:
        """We send ``nick`` a message, or received one, under ``key`` (never a key that
        changed: nothing goes to those, and what comes from them pins nothing). Pins it on
        first contact, and says whether this was first contact. Cheap when pinned."""
        if nick in self._pins:
            return False
        self._pins[nick] = Pin(key, verified=False, first_seen=time.time())
        self.generation += 1
        return True

    def accept(self, nick: str, key: PublicKey) -> None:
        """Pin ``key`` for ``nick`` (a changed key the user accepts). Unverified."""
        self._pins[nick] = Pin(key, verified=False, first_seen=time.time())
        self.generation += 1

    def set_verified(self, nick: str, key: PublicKey, verified: bool) -> None:
        """Mark the pin verified (or not). Only the pinned key itself can be verified."""
        pin = self._pins.get(nick)
        if pin is None or pin.identity_key != key:
            raise ValueError(f"{nick}'s pinned key is not the key given")
        self._pins[nick] = Pin(pin.identity_key, verified, pin.first_seen)
        self.generation += 1

    def encode(self) -> bytes:
        """The pins as the known-peers document (JSON, sorted by nick)."""
        document = {
            "format": _FORMAT,
            "peers": {
                nick: {
                    "identity_key": base64.b64encode(bytes(pin.identity_key)).decode("ascii"),
                    "verified": pin.verified,
                    "first_seen": pin.first_seen,
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
                pins[nick] = Pin(PublicKey(raw), entry["verified"], float(entry.get("first_seen", 0.0)))
        except (KeyError, TypeError, AttributeError, ValueError, binascii.Error):
            raise DamagedPins("a pin is malformed") from None
        return cls(pins)
