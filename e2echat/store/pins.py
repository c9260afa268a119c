"""The known-peers file beside the identity: the pins of client/trust.py, on disk.

The client's core changes pins in memory as messages are first exchanged and the user
accepts or verifies keys; the shell calls ``save_soon`` after each batch of work, and the
file is rewritten only if a pin changed since the last write. The pins are copied on the
event loop (the only place they change), then encoded, written and fsynced in a worker
thread: neither a slow disk nor a file of thousands of pins (tens of milliseconds to
encode) holds up messages. Writes go one at a time; when several are due, only the newest
is written.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from e2echat.client.trust import DamagedPins, KnownPeers
from e2echat.errors import KeyFileError
from e2echat.store.files import write_private_file

KNOWN_PEERS_FILE = "known_peers.json"

log = logging.getLogger("e2echat.store.pins")


class PinFile:
    """One known-peers file. ``load`` and ``flush`` are for the start and the end of a
    session; ``save_soon`` is for the event loop in between."""

    def __init__(self, path: Path) -> None:
        self.path = path
        #: the pins and their generation as last written (or read): nothing new to write
        self._written: tuple[KnownPeers, int] | None = None
        self._latest: KnownPeers | None = None  # a copy, waiting for the writer
        self._writer: asyncio.Task[None] | None = None
        self._error: KeyFileError | None = None  # the last write failed

    def load(self) -> KnownPeers:
        """The pins in the file; none if there is no file yet. Raises ``KeyFileError``."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            known = KnownPeers()
        except OSError as exc:
            raise KeyFileError(path=self.path, detail=exc.strerror or str(exc)) from None
        else:
            try:
                known = KnownPeers.decode(data)
            except DamagedPins:
                raise KeyFileError(
                    path=self.path, detail="the known-peers file is damaged; move it away to start afresh"
                ) from None
        self._written = (known, known.generation)
        return known

    def save_soon(self, known: KnownPeers) -> None:
        """Write ``known`` in the background if a pin changed since the last write. Call on
        the event loop; cheap when nothing changed."""
        written = self._written
        if written is not None and written[0] is known and written[1] == known.generation:
            return
        self._written = (known, known.generation)
        self._latest = known.copy()  # a dict copy: cheap, unlike the encoding
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._write_latest())

    async def flush(self, known: KnownPeers) -> None:
        """Write whatever is not written yet, and wait until it is on disk. Raises
        ``KeyFileError`` if the last write failed: the user must know the pins are lost."""
        self.save_soon(known)
        if self._writer is not None:
            # Shielded: a caller cancelled while waiting must not cut a write short.
            await asyncio.shield(self._writer)
        if self._error is not None:
            raise self._error

    async def _write_latest(self) -> None:
        while self._latest is not None:
            pins, self._latest = self._latest, None
            try:
                await asyncio.to_thread(_encode_and_write, self.path, pins)
            except KeyFileError as exc:
                # Not fatal to the chat: the pins stay in memory, the next change writes
                # them all again, and flush() reports it if that never succeeds.
                self._error = exc
                log.warning("%s", exc)
            else:
                self._error = None


def _encode_and_write(path: Path, pins: KnownPeers) -> None:
    write_private_file(path, pins.encode())
