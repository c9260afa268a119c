"""The known-relays file in the profile: the relay pins of client/relays.py, on disk.

Read once when the client starts and written when a pin is made or replaced, both at
connect time, before the chat begins; never on the event loop's hot path.
"""

from __future__ import annotations

from pathlib import Path

from e2echat.client.relays import DamagedRelayPins, KnownRelays
from e2echat.errors import KeyFileError
from e2echat.store.files import write_private_file

KNOWN_RELAYS_FILE = "known_relays.json"


class RelayPinFile:
    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> KnownRelays:
        """The pins in the file; none if there is no file yet. Raises ``KeyFileError``."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return KnownRelays()
        except OSError as exc:
            raise KeyFileError(path=self.path, detail=exc.strerror or str(exc)) from None
        try:
            return KnownRelays.decode(data)
        except DamagedRelayPins:
            raise KeyFileError(
                path=self.path,
                detail="the known-relays file is damaged; move it away to pin every relay afresh",
            ) from None

    def save(self, known: KnownRelays) -> None:
        """Write the pins atomically, mode 0600. Raises ``KeyFileError``."""
        write_private_file(self.path, known.encode())
