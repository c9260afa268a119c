"""The parts of a file transfer, as bytes inside the encryption. Pure (no I/O).

Each part is the data of one ``Kind.FILE`` plaintext (crypto/session.py), sealed for one
peer in our session with them, so the relay sees a ciphertext like any other and the
sender is the session's peer. Layout, big-endian:

    type (1) || transfer id (16) || the rest, by type:
    offer   size (8) || chunk size (4) || BLAKE2b-256 of the whole file (32) || name (UTF-8)
    accept  offset (8): send from here (0, or where an interrupted transfer resumes)
    reject  reason (UTF-8)
    cancel  reason (UTF-8)
    chunk   offset (8) || the bytes of the file from there
    ack     offset (8): everything before it is written || parts (8): the parts of this
            transfer the receiver has sent its sender, this one included: a sender that
            never had some tells from the count whether the messages it skipped were
            those parts (client/files.py)
    done    ok (1) || reason (UTF-8): the file's hash was checked, and it was kept (or not)
    probe   nothing: the sender asks where the transfer is (its Done, or the receiver's
            Accept, may have been lost, or either side restarted); the receiver answers
            Accept, Done or Cancel
    rewind  offset (8): the sender got to this offset since it last went back, and goes
            back again, to the last byte acknowledged (chunks, or their acknowledgements,
            were lost): the receiver counts the chunks it never had among the messages
            skipped before this part, which are then not "missing" (client/files.py)

The transfer id is the sender's, drawn at random; the receiver knows a transfer by the
sender and that id. The hash is inside the offer, so inside the encryption: the relay can
neither read it nor change it, and the file is checked against it before it is named.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

from e2echat.errors import LocalProtocolError

ID_SIZE = 16
DIGEST_SIZE = 32
#: 120 KiB: as large as fits in one ciphertext (grammar.MAX_BODY, 128 KiB, less the
#: ratchet's header, the nonce, the tag and this part's head), so that the per-part costs
#: (a ratchet step, a frame, a turn of each event loop) are paid as rarely as they can be:
#: 64 KiB parts cost the sender and the receiver 30-40% more CPU per MiB (issue 20).
CHUNK_SIZE = 120 * 1024
#: a file name in an offer, in UTF-8 bytes: far beyond any file system's 255, so a long
#: name is cut by the receiver (store/downloads.py), not refused
MAX_NAME = 4096
#: why a transfer was refused or ended: a line
MAX_REASON = 512
#: chunk sizes an offer may name: a receiver must not be made to take parts of any size
MIN_CHUNK, MAX_CHUNK = 1024, CHUNK_SIZE
#: 2**63 - 1: any file a disk holds
MAX_SIZE = 2**63 - 1

_HEAD = struct.Struct(">B16s")
_OFFER = struct.Struct(">QI32s")
_OFFSET = struct.Struct(">Q")
_OK = struct.Struct(">B")
_ACK = struct.Struct(">QQ")


class PartType(IntEnum):
    OFFER = 1
    ACCEPT = 2
    REJECT = 3
    CANCEL = 4
    CHUNK = 5
    ACK = 6
    DONE = 7
    PROBE = 8
    REWIND = 9


@dataclass(frozen=True)
class Offer:
    transfer: bytes
    name: str
    size: int
    chunk_size: int
    digest: bytes

    def __post_init__(self) -> None:
        _check_id(self.transfer)
        _check(0 <= self.size <= MAX_SIZE, "a file's size is 0 to 2**63 - 1 bytes")
        _check(MIN_CHUNK <= self.chunk_size <= MAX_CHUNK, f"a chunk is {MIN_CHUNK} to {MAX_CHUNK} bytes")
        _check(len(self.digest) == DIGEST_SIZE, f"a file's hash is {DIGEST_SIZE} bytes")
        _check(0 < len(self.name.encode("utf-8")) <= MAX_NAME, f"a file name is 1 to {MAX_NAME} bytes")


@dataclass(frozen=True)
class Accept:
    transfer: bytes
    offset: int

    def __post_init__(self) -> None:
        _check_id(self.transfer)
        _check(0 <= self.offset <= MAX_SIZE, "an offset is 0 to 2**63 - 1")


@dataclass(frozen=True)
class Reject:
    transfer: bytes
    reason: str

    def __post_init__(self) -> None:
        _check_id(self.transfer)
        _check(len(self.reason.encode("utf-8")) <= MAX_REASON, f"a reason is at most {MAX_REASON} bytes")


@dataclass(frozen=True)
class Cancel:
    transfer: bytes
    reason: str

    def __post_init__(self) -> None:
        _check_id(self.transfer)
        _check(len(self.reason.encode("utf-8")) <= MAX_REASON, f"a reason is at most {MAX_REASON} bytes")


@dataclass(frozen=True)
class Chunk:
    transfer: bytes
    offset: int
    data: bytes

    def __post_init__(self) -> None:
        _check_id(self.transfer)
        _check(0 <= self.offset <= MAX_SIZE, "an offset is 0 to 2**63 - 1")
        _check(0 < len(self.data) <= MAX_CHUNK, f"a chunk holds 1 to {MAX_CHUNK} bytes")


@dataclass(frozen=True)
class Ack:
    transfer: bytes
    offset: int
    #: the parts of the transfer its receiver has sent, this one included
    parts: int = 0

    def __post_init__(self) -> None:
        _check_id(self.transfer)
        _check(0 <= self.offset <= MAX_SIZE, "an offset is 0 to 2**63 - 1")
        _check(0 <= self.parts <= MAX_SIZE, "a count of parts is 0 to 2**63 - 1")


@dataclass(frozen=True)
class Done:
    transfer: bytes
    ok: bool
    reason: str = ""

    def __post_init__(self) -> None:
        _check_id(self.transfer)
        _check(len(self.reason.encode("utf-8")) <= MAX_REASON, f"a reason is at most {MAX_REASON} bytes")


@dataclass(frozen=True)
class Probe:
    transfer: bytes

    def __post_init__(self) -> None:
        _check_id(self.transfer)


@dataclass(frozen=True)
class Rewind:
    transfer: bytes
    offset: int

    def __post_init__(self) -> None:
        _check_id(self.transfer)
        _check(0 <= self.offset <= MAX_SIZE, "an offset is 0 to 2**63 - 1")


Part = Offer | Accept | Reject | Cancel | Chunk | Ack | Done | Probe | Rewind


def _check(ok: bool, detail: str) -> None:
    if not ok:
        raise LocalProtocolError(detail=detail)


def _check_id(transfer: bytes) -> None:
    _check(isinstance(transfer, bytes) and len(transfer) == ID_SIZE, f"a transfer id is {ID_SIZE} bytes")


def encode(part: Part) -> bytes:
    if isinstance(part, Chunk):  # first: one per 120 KiB
        return _HEAD.pack(PartType.CHUNK, part.transfer) + _OFFSET.pack(part.offset) + part.data
    if isinstance(part, Ack):
        return _HEAD.pack(PartType.ACK, part.transfer) + _ACK.pack(part.offset, part.parts)
    if isinstance(part, Offer):
        rest = _OFFER.pack(part.size, part.chunk_size, part.digest) + part.name.encode("utf-8")
        return _HEAD.pack(PartType.OFFER, part.transfer) + rest
    if isinstance(part, Accept):
        return _HEAD.pack(PartType.ACCEPT, part.transfer) + _OFFSET.pack(part.offset)
    if isinstance(part, Reject):
        return _HEAD.pack(PartType.REJECT, part.transfer) + part.reason.encode("utf-8")
    if isinstance(part, Cancel):
        return _HEAD.pack(PartType.CANCEL, part.transfer) + part.reason.encode("utf-8")
    if isinstance(part, Probe):
        return _HEAD.pack(PartType.PROBE, part.transfer)
    if isinstance(part, Rewind):
        return _HEAD.pack(PartType.REWIND, part.transfer) + _OFFSET.pack(part.offset)
    return _HEAD.pack(PartType.DONE, part.transfer) + _OK.pack(part.ok) + part.reason.encode("utf-8")


def is_offer(data: bytes) -> bool:
    """``data`` is an offer (the one part that may wait in a mailbox)."""
    return data[:1] == bytes([PartType.OFFER])


def decode(data: bytes) -> Part | None:
    """The part ``data`` holds; None if it is malformed (an authentic peer's bug, or worse:
    the caller says so, and nothing changes)."""
    try:
        kind, transfer = _HEAD.unpack_from(data)
        if kind == PartType.CHUNK:  # (sliced once: a chunk is 120 KiB)
            (offset,) = _OFFSET.unpack_from(data, _HEAD.size)
            return Chunk(transfer, offset, data[_HEAD.size + _OFFSET.size :])
        rest = data[_HEAD.size :]
        if kind == PartType.ACK and len(rest) == _ACK.size:
            return Ack(transfer, *_ACK.unpack(rest))
        if kind == PartType.ACCEPT and len(rest) == _OFFSET.size:
            return Accept(transfer, _OFFSET.unpack(rest)[0])
        if kind == PartType.OFFER:
            size, chunk_size, digest = _OFFER.unpack_from(rest)
            return Offer(transfer, rest[_OFFER.size :].decode("utf-8"), size, chunk_size, digest)
        if kind == PartType.REJECT:
            return Reject(transfer, rest.decode("utf-8"))
        if kind == PartType.CANCEL:
            return Cancel(transfer, rest.decode("utf-8"))
        if kind == PartType.PROBE and not rest:
            return Probe(transfer)
        if kind == PartType.REWIND and len(rest) == _OFFSET.size:
            return Rewind(transfer, _OFFSET.unpack(rest)[0])
        if kind == PartType.DONE and rest[:1] in (b"\x00", b"\x01"):
            return Done(transfer, rest[0] == 1, rest[1:].decode("utf-8"))
    except (struct.error, ValueError, LocalProtocolError):  # UnicodeDecodeError is a ValueError
        return None
    return None
