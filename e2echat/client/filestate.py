"""A file transfer's state, and what its shell is asked to do on the disk. Pure.

``Transfer`` is one file on its way, either way (``Transfers`` in client/files.py keeps
them all); the effects (``Land``, ``Write``, ``Finish``, ``Discard``) are what the shell
(client/filepump.py) carries out and reports back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

from e2echat.client.trust import Trust


class Direction(StrEnum):
    OUT = "out"
    IN = "in"


class State(StrEnum):
    OFFERED = "offered"  # waiting for the receiver's answer
    LANDING = "landing"  # accepted; the partial file is being opened
    ACTIVE = "active"  # chunks on their way
    PAUSED = "paused"  # the peer or the relay is away: resumes when both are back
    CHECKING = "checking"  # every byte is there; the hash is being checked
    DONE = "done"
    FAILED = "failed"
    REJECTED = "rejected"
    CANCELLED = "cancelled"


FINAL = frozenset({State.DONE, State.FAILED, State.REJECTED, State.CANCELLED})


@dataclass
class Transfer:
    """One file on its way, either way."""

    number: int  # ours: what /accept and /cancel name
    direction: Direction
    peer: str
    transfer_id: bytes  # the sender's
    #: as it will land (safe_name): never the name as the peer sent it
    name: str
    size: int
    chunk_size: int
    digest: bytes
    state: State = State.OFFERED
    #: out: the file sent (the shell reads it); in: where it landed, once named
    path: str = ""
    #: out: the next byte to send, and every byte before ``acked`` is written at the peer;
    #: in: the next byte expected, and every byte before ``acked`` is written here
    sent: int = 0
    acked: int = 0
    #: out: the furthest we have sent (an acknowledgement beyond it is a lie)
    furthest: int = 0
    reason: str = ""
    trust: Trust = Trust.UNVERIFIED
    heard_at: float = 0.0  # the last sign of progress
    started_at: float = 0.0
    started_from: int = 0
    told_at: float = -math.inf  # the last progress told
    told_tenth: int = -1
    #: out: probes sent since the receiver last said anything of it
    probes: int = 0
    #: in: the parts of it we have sent its sender (each acknowledgement says how many,
    #: so that acknowledgements lost are told from other messages: client/files.py)
    parts_sent: int = 0
    #: out: the room it was offered in (``/send #ROOM``), for the history; in: "" (an
    #: offer does not say)
    room: str = ""

    @property
    def key(self) -> tuple[Direction, str, bytes]:
        return self.direction, self.peer, self.transfer_id

    @property
    def final(self) -> bool:
        return self.state in FINAL

    def rate(self, now: float) -> float:
        """Bytes a second since it (re)started."""
        elapsed = now - self.started_at
        return (self.acked - self.started_from) / elapsed if elapsed > 0 else 0.0


@dataclass(frozen=True)
class FileGap:
    """Where a part of a file came in the order its sender sent it: ``skipped`` of their
    messages before it never came (the session counts them); ``late``: it is one of
    those, come now; ``after_file``: the message before the gap (the last that came in
    order, in the same session) was a part of a file too. The transfers tell from it
    whether every message skipped was a chunk of the file (client/files.py)."""

    skipped: int = 0
    late: bool = False
    after_file: bool = False


#: a part that came right after the one before it
NO_GAP = FileGap()

# -- what the shell does for us ------------------------------------------------------------


@dataclass(frozen=True)
class Land:
    """Open the partial file of ``transfer`` (or find the one kept from before), then
    ``landed`` with how much of it is there."""

    transfer: Transfer


@dataclass(frozen=True)
class Write:
    transfer: Transfer
    offset: int
    data: bytes


@dataclass(frozen=True)
class Finish:
    """Every byte is written: check the hash, and name the file; then ``finished``."""

    transfer: Transfer


@dataclass(frozen=True)
class Discard:
    """Delete the partial file: the transfer ended without it."""

    transfer: Transfer


Effect = Land | Write | Finish | Discard
