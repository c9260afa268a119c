"""What the relay core answers the shell with: frames to write (``Write``), a connection
to hang up (``Close``), and changes to keep before frames are written (``Persist``).
Pure (no I/O)."""

from __future__ import annotations

from dataclasses import dataclass

from e2echat.relay.store import Op

ConnId = int


@dataclass(frozen=True, slots=True)
class Write:
    """Bytes for the shell to write: each pair is a connection and one whole frame for it,
    in the order they are to be written.

    A send's deliveries and its ``routed`` answer go in one ``Write``; a frame for many
    (presence, a goodbye) is the same bytes object in every pair, encoded once.
    """

    frames: list[tuple[ConnId, bytes]]


@dataclass(frozen=True, slots=True)
class Close:
    """Write what is queued for ``conn``, then hang up. The core has already forgotten the
    connection and told the others it left; ``reason`` is for the relay's log (never
    message content)."""

    conn: ConnId
    reason: str


@dataclass(frozen=True, slots=True)
class Persist:
    """Have the store keep ``ops`` (relay/store.py), in order; once it has, write ``frames``
    as ``Write`` would. The frames are the ones that must not be seen before the changes
    are safe: a sender's ``routed`` that says ``queued``, say."""

    ops: list[Op]
    frames: list[tuple[ConnId, bytes]]


Action = Write | Close | Persist


def keep(
    ops: list[Op], frames: list[tuple[ConnId, bytes]], now: list[tuple[ConnId, bytes]] | None = None
) -> list[Action]:
    """``frames`` once ``ops`` are kept (at once if there is nothing to keep), and ``now``
    at once, first: those that claim nothing about what is kept (presence, a welcome,
    mailbox items already kept) must not wait for a disk behind them."""
    actions: list[Action] = [Write(now)] if now else []
    if ops:
        actions.append(Persist(ops, frames))
    elif frames:
        actions.append(Write(frames))
    return actions
