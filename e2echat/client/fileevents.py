"""What the UI hears of file transfers (client/files.py): one frozen dataclass each,
part of the client's events (client/events.py). Pure.

Names in them are the names files land under (``files.safe_name``), never the names
as a peer sent them.
"""

from __future__ import annotations

from dataclasses import dataclass

from e2echat.client.trust import Trust


@dataclass(frozen=True)
class FileOffered:
    """``sender`` offers a file: ``/accept number`` takes it."""

    number: int
    sender: str
    name: str
    size: int
    trust: Trust


@dataclass(frozen=True)
class TransferProgress:
    number: int
    direction: str
    peer: str
    name: str
    done: int
    size: int
    #: bytes a second
    rate: float


@dataclass(frozen=True)
class TransferChanged:
    """A transfer went on to ``state`` (accepted, paused, resumed, checking)."""

    number: int
    direction: str
    peer: str
    name: str
    state: str
    detail: str = ""


@dataclass(frozen=True)
class TransferDone:
    """The end of a transfer: ``ok`` (the file is there, hash-checked), or why not."""

    number: int
    direction: str
    peer: str
    name: str
    size: int
    ok: bool
    state: str
    detail: str = ""
    #: in, when ok: where the file is
    path: str = ""
    #: out: the room it was offered in (``/send #ROOM``); "": to ``peer`` alone
    room: str = ""


TransferEvent = FileOffered | TransferProgress | TransferChanged | TransferDone
