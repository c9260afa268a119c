"""What file transfers look like: their events as lines, /files, and the progress bar the
REPL's toolbar shows. Pure: no I/O, no prompt_toolkit.

A file's name comes from a peer: it is the name it lands under (``files.safe_name``,
without controls), and is neutralised here all the same, as everything a peer sent.
"""

from __future__ import annotations

import math
from typing import Literal

from e2echat.client.fileevents import FileOffered, TransferChanged, TransferDone, TransferProgress
from e2echat.client.filenames import size_text
from e2echat.client.filestate import Direction, State, Transfer
from e2echat.ui.cells import neutralize

__all__ = ["bar", "describe", "listing", "neutralize", "progress_text", "toolbar_text"]

#: cells of the toolbar's progress bar
BAR = 20
#: the most transfers the toolbar shows (the rest: /files)
TOOLBAR_TRANSFERS = 2

TransferEvent = FileOffered | TransferProgress | TransferChanged | TransferDone


def describe(event: TransferEvent, stamp: str, trust_mark: str) -> tuple[Literal["notice", "warning"], str]:
    """``event``'s style and text (``trust_mark``: the sender's mark, for an offer)."""
    name = neutralize(event.name)
    if isinstance(event, FileOffered):
        return "notice", (
            f"{stamp} -- {neutralize(event.sender)} {trust_mark} offers {name} ({size_text(event.size)}): "
            f"/accept {event.number} or /reject {event.number}"
        )
    what = _what(event.number, event.direction, event.peer, name)
    if isinstance(event, TransferProgress):
        return "notice", f"{stamp} -- {what}: {progress_text(event.done, event.size, event.rate)}"
    if isinstance(event, TransferChanged):
        detail = f" ({neutralize(event.detail)})" if event.detail else ""
        return "notice", f"{stamp} -- {what}: {event.state}{detail}"
    if event.ok:
        where = f": saved as {neutralize(event.path)}" if event.path else ""
        checked = (
            "received and hash-checked" if event.direction == Direction.IN else "sent; they checked its hash"
        )
        return "notice", f"{stamp} -- {what}: {checked} ({size_text(event.size)}){where}"
    detail = f": {neutralize(event.detail)}" if event.detail else ""
    return "warning", f"{stamp} !! {what}: {event.state.upper()}{detail}"


def _what(number: int, direction: str, peer: str, name: str) -> str:
    peer = neutralize(peer)  # a nick, unless a record on the disk said otherwise
    arrow = f"to {peer}" if direction == Direction.OUT else f"from {peer}"
    return f"file {number} {name} {arrow}"


def progress_text(done: int, size: int, rate: float) -> str:
    """``42% of 1.2 GB, 31.0 MB/s, 0:25 left``."""
    percent = 100 if not size else done * 100 // size
    text = f"{percent}% of {size_text(size)}"
    if rate > 0:
        text += f", {size_text(rate)}/s, {_eta(size - done, rate)} left"
    return text


def _eta(remaining: int, rate: float) -> str:
    seconds = math.ceil(remaining / rate) if rate > 0 else 0
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02}:{seconds:02}" if hours else f"{minutes}:{seconds:02}"


def bar(done: int, size: int, width: int = BAR) -> str:
    """``[#######-------------]``: the share of ``size`` that is ``done``."""
    filled = width if not size else min(width, done * width // size)
    return "[" + "#" * filled + "-" * (width - filled) + "]"


def toolbar_text(transfers: list[Transfer], now: float) -> str:
    """The toolbar's line for the transfers on their way: a bar each, the newest first."""
    moving = [t for t in transfers if t.state in (State.ACTIVE, State.PAUSED, State.CHECKING)]
    parts = []
    for transfer in sorted(moving, key=lambda t: -t.number)[:TOOLBAR_TRANSFERS]:
        arrow = "↑" if transfer.direction is Direction.OUT else "↓"
        state = " paused" if transfer.state is State.PAUSED else ""
        shown = progress_text(transfer.acked, transfer.size, transfer.rate(now) if not state else 0)
        name = neutralize(transfer.name)[:24]
        parts.append(f"{arrow}{transfer.number} {name} {bar(transfer.acked, transfer.size)} {shown}{state}")
    more = len(moving) - len(parts)
    return " | ".join(parts) + (f" (+{more}: /files)" if more > 0 else "")


def listing(transfers: list[Transfer], now: float) -> list[str]:
    """/files: a line per transfer, the oldest first."""
    if not transfers:
        return ["no file transfers yet (/send NICK PATH offers one)"]
    lines = ["file transfers (/cancel ID stops one):"]
    for transfer in transfers:
        what = _what(transfer.number, transfer.direction, transfer.peer, neutralize(transfer.name))
        if transfer.state in (State.ACTIVE, State.CHECKING):
            state = f"{transfer.state}, {progress_text(transfer.acked, transfer.size, transfer.rate(now))}"
        elif transfer.state is State.PAUSED:
            state = f"paused at {progress_text(transfer.acked, transfer.size, 0)}"
        else:
            state = f"{transfer.state}, {size_text(transfer.size)}"
            if transfer.reason and transfer.state is not State.DONE:
                state += f": {neutralize(transfer.reason)}"
            elif transfer.path and transfer.direction is Direction.IN:
                state += f": {neutralize(transfer.path)}"
        lines.append(f"  {what}: {state}")
    return lines
