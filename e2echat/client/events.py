"""What the client tells the UI: one frozen dataclass per kind of event (but one, see
``MessageReceived``). Pure.

``Event`` is what the core says; ``ClientEvent`` adds what the connection and reconnect
shells say about the link itself. All of them travel to the UI on one queue.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import NamedTuple

from e2echat.client.fileevents import FileOffered, TransferChanged, TransferDone, TransferProgress

# What became of a message we sent: re-exported, as part of the UI's vocabulary.
from e2echat.client.receipts import DeliveryReport as DeliveryReport
from e2echat.client.receipts import MessageQueued as MessageQueued
from e2echat.client.receipts import SendReport as SendReport

# A peer away or back (/away): defined beside the status it comes from.
from e2echat.client.status import Away as Away
from e2echat.client.trust import Trust


@dataclass(frozen=True)
class Registered:
    nick: str
    peers: tuple[str, ...]


@dataclass(frozen=True)
class RegistrationFailed:
    code: str
    text: str


@dataclass(frozen=True)
class RelayKeyRefused:
    """The relay's key is not the one expected for it, so the client sent it nothing (no
    registration, no password). Keys are given by their fingerprints."""

    offered: str
    expected: str
    #: ``expected`` is the fingerprint the user said to trust, not the pinned key's
    given: bool = False


@dataclass(frozen=True)
class PeerJoined:
    nick: str


@dataclass(frozen=True)
class PeerLeft:
    nick: str


class _Received(NamedTuple):
    sender: str
    text: str
    private: bool
    #: the sender's trust state when it arrived
    trust: Trust = Trust.UNVERIFIED
    #: it fills an earlier gap: it was held back on the way
    late: bool = False
    #: when its sender encrypted it, by the sender's clock (Unix time; inside the
    #: encryption, so the relay cannot change it); None from clients that do not say.
    #: Not compared: two copies of one message are the same event whenever they came.
    sent_at: float | None = None
    #: a room message's room, as its sender named it inside the encryption (and checked:
    #: a room we are in, and the sender a member of it); "" for a private message. Not
    #: compared either (as ``sent_at``): a test that cares reads it.
    room: str = ""


class MessageReceived(_Received):
    """A message from ``sender``, decrypted.

    The one event made per message received, in a busy room thousands a second: a named
    tuple, not a dataclass, as it is made in half the time (``received`` in a third: the
    client's own fast way). Just as frozen; equal to another only of its own kind and
    whatever ``sent_at`` and ``room`` say."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self[:5] == other[:5]

    def __ne__(self, other: object) -> bool:
        return not self == other

    def __hash__(self) -> int:
        return hash(self[:5])


received = functools.partial(tuple.__new__, MessageReceived)
"""``received((sender, text, private, trust, late, sent_at, room))``: ``MessageReceived``
of those fields, all given (the named tuple's own constructor, without its call)."""


class MailReceived(MessageReceived):
    """A message kept in our mailbox while we were away, shown with when it was sent."""

    __slots__ = ()


class MailFromPastMember(MailReceived):
    """A room message kept in our mailbox whose sender is no member of its room now, as
    the relay lists it: they left after writing it ("bye all", then /part). Shown marked
    so; the same message delivered live, from a non-member, is dropped and warned about."""

    __slots__ = ()


@dataclass(frozen=True)
class MailboxRead:
    """Every mailbox item up to ``seq`` was handled by the core (shown as the events
    before this one): once they are stored, ``acknowledge_mail(seq)`` lets the relay
    forget them. Only with ``hold_acks``; nothing to show."""

    seq: int


@dataclass(frozen=True)
class SplitView:
    """``sender`` sees different members of ``room`` (nicks and keys) than we do: the
    relay may have added a reader for one of us, or hidden one."""

    sender: str
    room: str = ""


@dataclass(frozen=True)
class RoomListed:
    """The relay listed the members of ``room``, one of ours: after we registered, or
    joined it."""

    room: str
    #: members online, and away (their copies wait in their mailboxes), without us
    online: tuple[str, ...]
    away: tuple[str, ...]


@dataclass(frozen=True)
class RoomEntered:
    """``nick`` joined ``room``."""

    room: str
    nick: str


@dataclass(frozen=True)
class RoomParted:
    """``nick`` left ``room``."""

    room: str
    nick: str


@dataclass(frozen=True)
class RoomChanged:
    """The safety number of ``room`` changed: who is in it, or a key, is not what it was
    (``why``: "carol joined", "bob's key changed")."""

    room: str
    why: str


@dataclass(frozen=True)
class KeyPinned:
    """First contact: ``nick``'s identity key is now pinned (trust on first use)."""

    nick: str


@dataclass(frozen=True)
class KeyChanged:
    """The directory shows a different identity key for a pinned nick."""

    nick: str
    pinned_fingerprint: str
    new_fingerprint: str


@dataclass(frozen=True)
class MessagesMissing:
    """``count`` messages from ``sender`` were skipped: held back or dropped on the way."""

    sender: str
    count: int


@dataclass(frozen=True)
class SecurityWarning:
    """Something arrived that did not authenticate; it was dropped, not shown."""

    text: str


@dataclass(frozen=True)
class RelayError:
    code: str
    text: str


@dataclass(frozen=True)
class RelayClosing:
    reason: str


@dataclass(frozen=True)
class RoomRefused:
    """The relay refused to let us into ``room`` (``code``: "too_many_rooms", or
    "rate_limited"; its ``RelayError`` says why): we are not in it on this connection. The
    profile keeps it, and the next run asks for it again."""

    room: str
    code: str


Event = (
    Registered
    | RegistrationFailed
    | RelayKeyRefused
    | PeerJoined
    | PeerLeft
    | KeyPinned
    | KeyChanged
    | MessageReceived
    | MailReceived
    | MailFromPastMember
    | MailboxRead
    | MessagesMissing
    | SplitView
    | RoomListed
    | RoomEntered
    | RoomParted
    | RoomChanged
    | SendReport
    | MessageQueued
    | DeliveryReport
    | SecurityWarning
    | RelayError
    | RelayClosing
    | RoomRefused
    | Away
    | FileOffered
    | TransferProgress
    | TransferChanged
    | TransferDone
)


# -- the link itself: told by the connection and reconnect shells -------------------------


@dataclass(frozen=True)
class Disconnected:
    """The last event: the chat is over, and why."""

    detail: str


@dataclass(frozen=True)
class ConnectionLost:
    """The relay went away; ``Client`` is about to reconnect."""

    detail: str


@dataclass(frozen=True)
class Reconnecting:
    """The next attempt to reach the relay is in ``delay`` seconds."""

    delay: float
    attempt: int
    why: str


@dataclass(frozen=True)
class Queued:
    """Typed while disconnected: it will be sent after the reconnect. Its report comes
    under ``message_id``."""

    preview: str
    message_id: int = 0


@dataclass(frozen=True)
class NotSent:
    """A line typed while disconnected, and never sent: the connection did not come back.
    Its report was to come under ``message_id`` (as its ``Queued`` said)."""

    #: the start of the line (one: a tuple, as ``--json`` has always written it)
    previews: tuple[str, ...]
    message_id: int = 0


ClientEvent = Event | Disconnected | ConnectionLost | Reconnecting | Queued | NotSent
