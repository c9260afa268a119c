"""Known relays: each relay address's long-term key, pinned on first contact, as ssh's
known_hosts pins host keys. Pure: the pins live in memory here; store/relays.py reads
and writes them as a file in the profile.

Before a client answers a relay's challenge (which holds the relay password, if any),
it checks the relay's key against ``RelayTrust``: the key pinned for that address, or
the fingerprint the user gave to accept. A key that does not match gets nothing.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass

from nacl.public import PublicKey

from e2echat.crypto.identity import fingerprint

_FORMAT = "e2echat-known-relays-v1"


def relay_address(host: str, port: int) -> str:
    """The name a relay is pinned under: ``host:port`` as the user gave the host (like
    ssh, another name for the same machine is another pin), ``[host]:port`` for IPv6."""
    host = host.lower()
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_relays(text: str, default_port: int) -> list[tuple[str, int]]:
    """The relays ``--host`` names, in the order to try them: ``A[:PORT],B[:PORT],...``
    (``[IPv6]:PORT`` with brackets; a host without a port has ``default_port``).
    ``ValueError`` for anything else."""
    relays: list[tuple[str, int]] = []
    for item in text.split(","):
        item = item.strip()
        host, port = item, default_port
        if item.startswith("["):
            host, _, rest = item[1:].partition("]")
            if rest:
                if not rest.startswith(":"):
                    raise ValueError(f"{item!r} is not HOST[:PORT]")
                port = _relay_port(rest[1:], item)
        elif item.count(":") == 1:
            host, _, given = item.partition(":")
            port = _relay_port(given, item)
        if not host or any(char.isspace() for char in host):
            raise ValueError(f"{item!r} is not HOST[:PORT]")
        if (host, port) not in relays:
            relays.append((host, port))
    return relays


def _relay_port(text: str, item: str) -> int:
    if not (text.isascii() and text.isdigit() and len(text) <= 5 and 1 <= int(text) <= 65535):
        raise ValueError(f"{item!r}: the port must be 1-65535")
    return int(text)


@dataclass(frozen=True)
class RelayTrust:
    """Which key a client accepts from a relay before it sends the relay anything.

    ``fingerprint`` (the user's explicit choice, ``--trust-relay-key``) accepts that key
    and no other, whatever is pinned; else ``pinned`` accepts itself alone; with neither,
    this is first contact and any key is accepted (and then pinned).
    """

    pinned: PublicKey | None = None
    fingerprint: str | None = None

    def accepts(self, key: PublicKey) -> bool:
        if self.fingerprint is not None:
            return fingerprint(key) == self.fingerprint
        return self.pinned is None or self.pinned == key


def _b64(key: PublicKey) -> str:
    return base64.b64encode(bytes(key)).decode("ascii")


class DamagedRelayPins(ValueError):
    """The known-relays document cannot be read; the caller says which file it was."""


class KnownRelays:
    """relay address -> pinned key, in memory."""

    def __init__(self, pins: dict[str, PublicKey] | None = None) -> None:
        self._pins: dict[str, PublicKey] = dict(pins) if pins else {}

    def get(self, address: str) -> PublicKey | None:
        return self._pins.get(address)

    def pin(self, address: str, key: PublicKey) -> bool:
        """Pin ``key`` for ``address`` (first contact, or a new key the user accepted).
        Returns whether anything changed."""
        if self._pins.get(address) == key:
            return False
        self._pins[address] = key
        return True

    def encode(self) -> bytes:
        """The pins as the known-relays document (JSON, sorted by address)."""
        relays = {address: _b64(key) for address, key in sorted(self._pins.items())}
        return (json.dumps({"format": _FORMAT, "relays": relays}, indent=2) + "\n").encode("utf-8")

    @classmethod
    def decode(cls, data: bytes) -> KnownRelays:
        """The pins in a known-relays document. Raises ``DamagedRelayPins`` for anything
        else."""
        try:
            document = json.loads(data.decode("utf-8"))
        except ValueError:
            raise DamagedRelayPins("not JSON") from None
        if not isinstance(document, dict) or document.get("format") != _FORMAT:
            raise DamagedRelayPins("not a known-relays document")
        pins: dict[str, PublicKey] = {}
        try:
            for address, encoded in document["relays"].items():
                raw = base64.b64decode(encoded, validate=True)
                if not isinstance(address, str) or len(raw) != PublicKey.SIZE:
                    raise ValueError(address)
                pins[address] = PublicKey(raw)
        except (KeyError, TypeError, AttributeError, ValueError, binascii.Error):
            raise DamagedRelayPins("a pin is malformed") from None
        return cls(pins)
