"""What the relay keeps beyond its connections, and the one interface for keeping it.

Pure (no I/O). The relay core holds all of its state in memory and decides everything
there; a store is its journal. The core describes each change as an ``Op`` and hands a
batch of them to the shell in a ``Persist`` action (relay/core.py); the shell has the
store ``apply`` the batch (in a worker thread: one transaction per batch) and only then
writes the frames that depend on it: a sender is told ``queued`` only once its message
is on disk. At start-up the shell reads the store's ``Snapshot`` and builds the core
from it.

Implementations: ``MemoryStore`` here (keeps nothing: the default, embedded relay),
``SqliteStore`` (``e2echat relay --store FILE``), and later one on NATS JetStream for a
cluster. A new store needs only ``load``, ``apply`` and ``close``.

What is kept, all of it public keys, ciphertext the relay cannot open, and metadata:
known identities (nick, identity key, last seen), prekey bundles, room memberships and
mailboxes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

# -- what is kept -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Identity:
    """A nick the relay has known: the identity key it last registered with, when it
    was last online (Unix seconds, the relay's clock), and when it last registered, as a
    count of registrations (the order in which bundles are dropped over the bound)."""

    nick: str
    identity_key: bytes
    last_seen: float
    registered: int = 0


@dataclass(frozen=True, slots=True)
class StoredBundle:
    """A nick's prekey bundle as ``relay.prekeys`` packs it: the signed prekey (id, key,
    signature) and the one-time prekeys (id, key each), oldest first."""

    nick: str
    signed: bytes
    one_time: bytes


@dataclass(frozen=True, slots=True)
class Member:
    """``nick`` was in ``room`` at ``last_seen`` (Unix seconds)."""

    room: str
    nick: str
    last_seen: float


#: a mailbox item's kinds: a ciphertext (sent to the owner as ``mail``), or a notice that
#: one of the owner's own messages was dropped unread (sent as ``expired``)
MAIL = "mail"
EXPIRED = "expired"


@dataclass(frozen=True, slots=True)
class MailItem:
    """One item in ``to``'s mailbox, number ``seq`` (higher than every item before it in that mailbox).

    For ``MAIL``: ``sender`` sent ``body`` in its send number ``message_id``, queued at
    ``queued_at``; ``reason`` is empty. For ``EXPIRED``: ``to``'s own message ``message_id``
    to ``sender`` was dropped for ``reason`` (``wire.grammar.EXPIRED_REASONS``); ``body``
    is empty.
    """

    to: str
    seq: int
    kind: str
    sender: str
    message_id: int
    queued_at: float
    body: bytes = b""
    reason: str = ""


# -- changes ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SaveIdentity:
    identity: Identity


@dataclass(frozen=True, slots=True)
class ForgetIdentity:
    """The nick is forgotten, with its bundle, memberships and mailbox."""

    nick: str


@dataclass(frozen=True, slots=True)
class SaveBundle:
    """Replaces the nick's whole bundle."""

    bundle: StoredBundle


@dataclass(frozen=True, slots=True)
class SaveMember:
    member: Member


@dataclass(frozen=True, slots=True)
class ForgetMember:
    room: str
    nick: str


@dataclass(frozen=True, slots=True)
class Enqueue:
    item: MailItem


@dataclass(frozen=True, slots=True)
class Dequeue:
    """Items of ``to``'s mailbox are gone: every one up to and including ``upto`` (the
    owner acknowledged them), and the ones numbered in ``seqs`` (expired)."""

    to: str
    upto: int = -1
    seqs: tuple[int, ...] = ()


Op = SaveIdentity | ForgetIdentity | SaveBundle | SaveMember | ForgetMember | Enqueue | Dequeue


@dataclass(slots=True)
class Snapshot:
    """Everything a store holds, to build a core from at start-up. ``mail`` is in ``to``,
    then ``seq`` order. ``next_seq``: above every seq ever enqueued (a store keeps it
    from its ``Enqueue`` ops), so that a seq is not used again once its item is gone, by
    a relay restarted on a clock that went back."""

    identities: list[Identity] = field(default_factory=list)
    bundles: list[StoredBundle] = field(default_factory=list)
    members: list[Member] = field(default_factory=list)
    mail: list[MailItem] = field(default_factory=list)
    next_seq: int = 0
    #: names the mailboxes kept here in each welcome (empty: the relay draws one); not
    #: what is kept but whose, so two snapshots of the same things compare equal
    relay_id: bytes = field(default=b"", compare=False)


class RelayStore(Protocol):
    #: False if nothing outlives the process: the shell need not wait for ``apply``
    durable: bool

    def load(self) -> Snapshot:
        """Everything kept, read once at start-up."""
        ...

    def apply(self, ops: Sequence[Op]) -> None:
        """Make every change in ``ops``, in order, all or none (one transaction). Called from
        one worker thread at a time; it returns once the changes would survive ``kill -9``."""
        ...

    def close(self) -> None: ...


class MemoryStore:
    """Keeps nothing: the relay's state lives and dies with its process."""

    durable = False

    def load(self) -> Snapshot:
        return Snapshot()

    def apply(self, ops: Sequence[Op]) -> None:
        pass

    def close(self) -> None:
        pass
