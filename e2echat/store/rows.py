"""The history's rows, without the file: how each is sealed, found and opened.

A row is ``number INTEGER PRIMARY KEY, conversation BLOB, message BLOB, sealed BLOB``:
``sealed`` is a SecretBox (XSalsa20-Poly1305, random nonce) of the entry (ui/transcript.py)
under the history's seal key; ``conversation`` and ``message`` are keyed hashes
(``kdf.history_tag``) of the conversation's name and of an own message's id, under the
index key, so that the last lines of one conversation and the row of one message are found
without opening every row, and without a name or a word in the clear. Both keys come from
the identity key (``kdf.history_keys``). The entry inside the seal names its row number,
and its conversation and id are checked against the row's hashes, so a row moved, or given
another's hashes, does not open.

No I/O here: history.py keeps the rows in SQLite, in its worker thread (which alone uses
a ``HistoryRows``: its cache of tags is not locked).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import nacl.bindings
import nacl.exceptions
from nacl.public import PrivateKey
from nacl.secret import SecretBox

from e2echat.crypto.kdf import history_keys, history_tag
from e2echat.ui.transcript import Change, Entry, StateChange, decode_entry, encode_entry

#: a row as stored: its number, the conversation's and the message's keyed hashes, the seal
Row = tuple[int, bytes, bytes | None, bytes]

_NONCE = SecretBox.NONCE_SIZE
# Conversations whose tags are kept computed: more than anyone talks in; past it, the
# cache starts again (a tag costs a keyed hash: a few microseconds a row otherwise).
_TAGS_CACHED = 4096


@dataclass
class Writes:
    """Changes recorded, sorted for writing: new rows by number (a state change for one of
    them already made), and state changes for rows written before, by message id, in the
    order they came (each merges into the last)."""

    rows: dict[int, Entry] = field(default_factory=dict)
    changes: dict[int, list[StateChange]] = field(default_factory=dict)
    #: the number the next new row gets after these
    next: int = 1


def writes_for(batch: list[Change], next_number: int) -> Writes:
    """``batch`` as rows to insert, numbered on from ``next_number``, and changes to make."""
    writes = Writes(next=next_number)
    numbered: dict[int, int] = {}  # message id -> its new row's number
    for change in batch:
        if isinstance(change, Entry):
            writes.rows[writes.next] = change
            if change.message_id is not None:
                numbered[change.message_id] = writes.next
            writes.next += 1
        elif change.message_id in numbered:
            row = numbered[change.message_id]
            writes.rows[row] = change.apply(writes.rows[row])
        else:
            writes.changes.setdefault(change.message_id, []).append(change)
    return writes


class HistoryRows:
    """The history's two keys, from the identity key, and what is done with them."""

    def __init__(self, identity: PrivateKey) -> None:
        seal_key, self._index_key = history_keys(bytes(identity))
        self._box = SecretBox(seal_key)
        self._seal_key = seal_key  # for sealing many rows at once (``seal_all``)
        self._conversation_tags: dict[str, bytes] = {}

    def _tag(self, prefix: bytes, name: str | int) -> bytes:
        return history_tag(self._index_key, prefix + str(name).encode("utf-8"))

    def conversation_tag(self, conversation: str) -> bytes:
        tag = self._conversation_tags.get(conversation)
        if tag is None:
            if len(self._conversation_tags) >= _TAGS_CACHED:
                self._conversation_tags.clear()
            tag = self._conversation_tags[conversation] = self._tag(b"c", conversation)
        return tag

    def message_tag(self, message_id: int | None) -> bytes | None:
        return None if message_id is None else self._tag(b"m", message_id)

    def seal(self, plaintext: bytes) -> bytes:
        return bytes(self._box.encrypt(plaintext))

    def open(self, sealed: object) -> bytes | None:
        """What ``sealed`` holds; None if it is not a seal made with our key."""
        if not isinstance(sealed, bytes):
            return None
        try:
            return self._box.decrypt(sealed)
        except (nacl.exceptions.CryptoError, ValueError):
            return None  # too short to hold a nonce, or it does not authenticate

    def rows(self, entries: dict[int, Entry]) -> list[Row]:
        """The rows to insert for ``entries`` (by number), each sealed."""
        sealed = self.seal_all([encode_entry(number, entry) for number, entry in entries.items()])
        tag, message_tag = self.conversation_tag, self.message_tag
        return [
            (number, tag(entry.conversation), message_tag(entry.message_id), seal)
            for (number, entry), seal in zip(entries.items(), sealed, strict=True)
        ]

    def seal_all(self, plaintexts: list[bytes]) -> list[bytes]:
        """Each of ``plaintexts`` sealed as ``SecretBox.encrypt`` seals it (nonce, then
        the box), under a random nonce of its own: the nonces drawn in one call, and the
        boxes made without an object each, for a drain of thousands of rows."""
        nonces = nacl.bindings.randombytes(_NONCE * len(plaintexts))
        seal, key = nacl.bindings.crypto_secretbox_easy, self._seal_key
        return [
            nonces[at : at + _NONCE] + seal(plaintext, nonces[at : at + _NONCE], key)
            for at, plaintext in zip(range(0, len(nonces), _NONCE), plaintexts, strict=True)
        ]

    def entry(self, number: int, conversation: bytes, message: bytes | None, sealed: bytes) -> Entry | None:
        """The row's entry; None if it does not open or is not this row's."""
        opened = self.open(sealed)
        if opened is None:
            return None
        try:
            entry = decode_entry(number, opened)
        except ValueError:
            return None
        if self.conversation_tag(entry.conversation) != conversation:
            return None
        if self.message_tag(entry.message_id) != message:
            return None
        return entry
