"""The sessions file beside the identity: the client's ``Keyring`` (prekeys and every
session) and its ``PendingDeliveries`` (our messages waiting in mailboxes, and the message
numbering), as rows of a ``SealedStore`` sealed under a key derived from the identity key.

The core changes the keyring in memory as messages come and go; the shell calls
``save_soon`` after each batch of work, and only the rows that changed are written, in
one transaction, in a worker thread (sealed.py). ``flush`` at the end of a session.
"""

from __future__ import annotations

import time
from pathlib import Path

from nacl.public import PrivateKey

from e2echat.client.memberships import LastMembers
from e2echat.client.pending import PendingDeliveries
from e2echat.crypto.kdf import store_key
from e2echat.crypto.keyring import Keyring
from e2echat.errors import BadRatchetState, KeyFileError
from e2echat.store.sealed import SealedStore

SESSIONS_FILE = "sessions.db"


class SessionFile:
    """One profile's sessions file."""

    def __init__(self, path: Path, store: SealedStore) -> None:
        self.path = path
        self._store = store

    @classmethod
    def open(cls, path: Path, identity: PrivateKey) -> SessionFile:
        """Raises ``KeyFileError``."""
        return cls(path, SealedStore.open(path, store_key(bytes(identity))))

    def load(self, nick: str, identity: PrivateKey, now: float | None = None) -> Keyring:
        """The keyring in the file (a fresh one if it is new). Raises ``KeyFileError``."""
        rows = self._store.load()
        try:
            keyring = Keyring.from_rows(nick, identity, rows, time.time() if now is None else now)
        except BadRatchetState as exc:
            raise KeyFileError(path=self.path, detail=f"{exc}; move it away to start afresh") from None
        if not rows:
            for name, value in keyring.rows().items():
                self._store.put(name, value)
            keyring.changes()  # all written
            self._store.write_now()
        return keyring

    def deliveries(self) -> PendingDeliveries:
        """Our messages waiting in mailboxes, and the numbering, as the file keeps them.
        Raises ``KeyFileError``."""
        return PendingDeliveries.from_rows(self._store.load())

    def last_members(self) -> LastMembers:
        """Each room's members as the file keeps them (as last seen). Raises ``KeyFileError``."""
        return LastMembers.from_rows(self._store.load())

    def save_soon(
        self,
        keyring: Keyring,
        deliveries: PendingDeliveries | None = None,
        last_members: LastMembers | None = None,
    ) -> None:
        """Write what changed in ``keyring`` (and ``deliveries``, ``last_members``) in the
        background. Cheap when nothing did."""
        changed = False
        for rows in (keyring, deliveries, last_members):
            if rows is None or not rows.changed:
                continue
            changed = True
            for name, value in rows.changes().items():
                if value is None:
                    self._store.delete(name)
                else:
                    self._store.put(name, value)
        if changed:
            self._store.save_soon()

    async def flush(
        self,
        keyring: Keyring,
        deliveries: PendingDeliveries | None = None,
        last_members: LastMembers | None = None,
    ) -> None:
        """Write everything not written yet and wait until it is on disk. Raises
        ``KeyFileError`` if that failed."""
        self.save_soon(keyring, deliveries, last_members)
        await self._store.flush()

    def close(self) -> None:
        self._store.close()
