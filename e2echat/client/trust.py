"""Known peers: trust on first use, key changes, and verification.

Pure apart from reading and writing the known-peers file beside the identity. The first
identity key seen for a nick is pinned; a different key later is a *change*, which blocks
sending to that nick until the user accepts it. A pin is *verified* once the user has
compared safety numbers.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from nacl.public import PublicKey

from e2echat.errors import KeyFileError
from e2echat.store.files import write_private_file

KNOWN_PEERS_FILE = "known_peers.json"
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


class KnownPeers:
    """nick -> pinned identity key. ``path=None`` keeps it in memory only."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._pins: dict[str, Pin] = {}
        self._dirty = False
        #: goes up with every change to a pin: lets a client cache trust states safely
        self.generation = 0
        if path is not None and path.exists():
            self._pins = _load(path)

    def get(self, nick: str) -> Pin | None:
        return self._pins.get(nick)

    def state(self, nick: str, key: PublicKey) -> Trust:
        """How far ``key`` is trusted as ``nick``'s, without changing anything."""
        pin = self._pins.get(nick)
        if pin is None or pin.identity_key != key:
            return Trust.CHANGED if pin is not None else Trust.UNVERIFIED
        return Trust.VERIFIED if pin.verified else Trust.UNVERIFIED

    def see(self, nick: str, key: PublicKey) -> tuple[Trust, bool]:
        """Record that the directory shows ``key`` for ``nick``: pins it on first use.
        Returns (trust, whether this was first contact)."""
        if nick not in self._pins:
            self._pins[nick] = Pin(key, verified=False, first_seen=time.time())
            self.generation += 1
            # Written by flush(), once per batch: a relay announcing thousands of nicks must
            # not make us rewrite the file thousands of times.
            self._dirty = True
            return Trust.UNVERIFIED, True
        return self.state(nick, key), False

    def accept(self, nick: str, key: PublicKey) -> None:
        """Pin ``key`` for ``nick`` (a changed key the user accepts). Unverified."""
        self._pins[nick] = Pin(key, verified=False, first_seen=time.time())
        self.generation += 1
        self._save()

    def set_verified(self, nick: str, key: PublicKey, verified: bool) -> None:
        """Mark the pin verified (or not). Only the pinned key itself can be verified."""
        pin = self._pins.get(nick)
        if pin is None or pin.identity_key != key:
            raise ValueError(f"{nick}'s pinned key is not the key given")
        self._pins[nick] = Pin(pin.identity_key, verified, pin.first_seen)
        self.generation += 1
        self._save()

    def flush(self) -> None:
        """Write pins made by ``see`` since the last write."""
        if self._dirty:
            self._save()

    def _save(self) -> None:
        self._dirty = False
        if self.path is None:
            return
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
        write_private_file(self.path, (json.dumps(document, indent=2) + "\n").encode("utf-8"))


def _load(path: Path) -> dict[str, Pin]:
    damaged = KeyFileError(path=path, detail="the known-peers file is damaged; move it away to start afresh")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise KeyFileError(path=path, detail=exc.strerror or str(exc)) from None
    except ValueError:
        raise damaged from None
    if not isinstance(document, dict) or document.get("format") != _FORMAT:
        raise damaged
    pins: dict[str, Pin] = {}
    try:
        for nick, entry in document["peers"].items():
            raw = base64.b64decode(entry["identity_key"], validate=True)
            if len(raw) != PublicKey.SIZE or not isinstance(entry["verified"], bool):
                raise ValueError(nick)
            pins[nick] = Pin(PublicKey(raw), entry["verified"], float(entry.get("first_seen", 0.0)))
    except (KeyError, TypeError, AttributeError, ValueError, binascii.Error):
        raise damaged from None
    return pins
