"""What the relays of a cluster say to one another over NATS, and the names they use there.
Pure (no I/O).

- The ``nicks`` key-value bucket: one key per nick skeleton (so "Bob" and "bob" are one
  key: a nick is unique across the cluster as it is on one relay); its value names the
  relay the nick is on and its directory entry (``encode_claim``).
- ``alive``: each relay's heartbeat, its node id, every ``HEARTBEAT`` seconds.
- ``node.<id>``: a send's copies for the clients on that relay, all in one request
  (``encode_forward``), answered with which were delivered (``encode_outcome``).

Everything here is public keys, nicks and ciphertext the relays cannot open: NATS learns
what a relay learns, no more. The relays trust each other (they are one relay run on
several machines), but a value is still checked when read, as a frame from a client is:
a bug or a stale relay must not crash the others.
"""

from __future__ import annotations

import logging
import math
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import nacl.utils
from nacl.public import PublicKey

from e2echat.errors import RemoteProtocolError
from e2echat.relay.store import EXPIRED, MAIL, MailItem
from e2echat.wire.grammar import (
    EXPIRED_REASONS,
    KEY_SIZE,
    MAX_BODY,
    MAX_ID,
    MAX_ITEMS,
    is_valid_nick,
    skeleton,
)
from e2echat.wire.objects import PeerInfo

log = logging.getLogger("e2echat.relay.cluster.wire")

#: a cluster's name: it prefixes every subject and bucket, so two clusters can share a server
NAME_MAX = 32  # a bucket's name is the cluster's and a suffix: well within NATS's bounds
NAME_PATTERN = re.compile(rf"[a-z0-9_-]{{1,{NAME_MAX}}}\Z")
NAME_RULE = f"1-{NAME_MAX} lowercase letters, digits, '_' or '-'"
DEFAULT_NAME = "e2echat"
#: copies of each bucket a NATS cluster keeps (``--cluster-replicas``): JetStream's bound
MAX_REPLICAS = 5

#: a relay's node id: 8 random bytes, as 16 hex digits (fresh for each process: a restarted
#: relay is a new node, whose clients came back through a register)
NODE_ID_SIZE = 8
_NODE_PATTERN = re.compile(rb"[0-9a-f]{16}\Z")

#: seconds between heartbeats; a relay not heard for ``DEAD_AFTER`` is taken for dead, and
#: its clients for gone (its nicks may be claimed again). Three beats: one lost or late
#: beat on a loaded machine is not a death.
HEARTBEAT = 1.0
DEAD_AFTER = 3.5

_LENGTH = struct.Struct(">I")
_COUNT = struct.Struct(">H")


def check_name(name: str) -> str:
    if NAME_PATTERN.match(name) is None:
        raise ValueError(f"invalid cluster name {name!r}: {NAME_RULE}")
    return name


def new_node_id() -> str:
    return nacl.utils.random(NODE_ID_SIZE).hex()


@dataclass(frozen=True, slots=True)
class Names:
    """The subjects and buckets of the cluster ``name``."""

    name: str

    @property
    def nicks_bucket(self) -> str:
        return f"{self.name}_nicks"

    @property
    def alive(self) -> str:
        return f"e2echat.{self.name}.alive"

    def node(self, node: str) -> str:
        return f"e2echat.{self.name}.node.{node}"


def nick_key(nick: str) -> str:
    """The ``nicks`` bucket's key for ``nick``: its skeleton, in hex (a nick may hold '.',
    which a key may not start with, and a bucket key is a subject)."""
    return skeleton(nick).encode("ascii").hex()


def check_node(raw: bytes) -> str:
    if _NODE_PATTERN.match(raw) is None:
        raise RemoteProtocolError(detail="a cluster message names no valid relay")
    return raw.decode("ascii")


# -- a nick's claim ---------------------------------------------------------------------------


def encode_claim(node: str, peer: PeerInfo) -> bytes:
    """The ``nicks`` bucket's value: the node id, then the directory entry."""
    nick = peer.nick.encode("ascii")
    return b"".join(
        (node.encode("ascii"), bytes((len(nick),)), nick, bytes(peer.identity_key), bytes(peer.session_key))
    )


def decode_claim(value: bytes) -> tuple[str, PeerInfo]:
    """(node id, directory entry) from ``encode_claim``; ``RemoteProtocolError`` if it is
    not one."""
    at = 2 * NODE_ID_SIZE
    node = check_node(value[:at])
    if len(value) < at + 1:
        raise RemoteProtocolError(detail="a nick's claim is cut short")
    size = value[at]
    raw_nick = value[at + 1 : at + 1 + size]
    keys = value[at + 1 + size :]
    nick = raw_nick.decode("ascii", errors="replace")
    if len(raw_nick) != size or not is_valid_nick(nick) or len(keys) != 2 * KEY_SIZE:
        raise RemoteProtocolError(detail="a nick's claim is malformed")
    return node, PeerInfo(nick, PublicKey(keys[:KEY_SIZE]), PublicKey(keys[KEY_SIZE:]))


# -- a send's copies for another relay --------------------------------------------------------


#: the first byte of a request on a relay's ``node`` subject: what it asks
SEND = b"s"
FETCH = b"f"
MAILBOX = b"m"
MAIL_TAKEN = b"t"
#: a mailbox handed over in parts of about this many bytes: NATS's default bound on a
#: message is 1 MiB
MAILBOX_PART = 512 * 1024
_MAIL_HEAD = struct.Struct(">BQdI")  # kind, message id, queued at, body length
_SEQ = struct.Struct(">Q")
_KINDS = (MAIL, EXPIRED)


def encode_forward(sender: str, items: Sequence[tuple[str, bytes]]) -> bytes:
    """``sender``'s copies (recipient, ciphertext body) for one relay's clients."""
    parts = [SEND, _nick(sender), _COUNT.pack(len(items))]
    for to, body in items:
        parts += (_nick(to), _LENGTH.pack(len(body)), body)
    return b"".join(parts)


def decode_forward(payload: bytes) -> tuple[str, list[tuple[str, bytes]]]:
    reader = _Reader(payload)
    reader.tag(SEND)
    sender = reader.nick()
    count = reader.count()
    items = []
    for _ in range(count):
        to = reader.nick()
        items.append((to, reader.take(_LENGTH.unpack(reader.take(_LENGTH.size))[0])))
    reader.end()
    return sender, items


def encode_fetch(requester: str, nicks: Sequence[str]) -> bytes:
    """``requester`` asks for the prekey bundles of ``nicks``, this relay's clients. The
    answer is a ``bundles`` message, as a client is sent (``encode_message``)."""
    return b"".join([FETCH, _nick(requester), _COUNT.pack(len(nicks)), *(_nick(nick) for nick in nicks)])


def decode_fetch(payload: bytes) -> tuple[str, list[str]]:
    reader = _Reader(payload)
    reader.tag(FETCH)
    requester = reader.nick()
    nicks = [reader.nick() for _ in range(reader.count())]
    reader.end()
    return requester, nicks


def encode_mailbox_ask(nick: str, identity_key: bytes) -> bytes:
    """``nick``, registered on the asking relay with ``identity_key``, is online there:
    what waits for it here, please (only if it is for that key)."""
    return MAILBOX + _nick(nick) + identity_key


def decode_mailbox_ask(payload: bytes) -> tuple[str, bytes]:
    reader = _Reader(payload)
    reader.tag(MAILBOX)
    nick = reader.nick()
    key = reader.take(KEY_SIZE)
    reader.end()
    return nick, key


def encode_mail(items: Sequence[MailItem], more: bool) -> bytes:
    """A part of a mailbox handed over: its items, oldest first, and whether more follow."""
    parts = [bytes((more,)), _LENGTH.pack(len(items))]
    for item in items:
        kind = _KINDS.index(item.kind)
        parts += (_nick(item.sender), _MAIL_HEAD.pack(kind, item.message_id, item.queued_at, len(item.body)))
        parts += (item.body, _SEQ.pack(item.seq), _nick(item.reason) if item.reason else b"\0")
    return b"".join(parts)


def decode_mail(payload: bytes, to: str) -> tuple[list[MailItem], bool]:
    """A part of a mailbox handed over (``encode_mail``): its items and whether more
    follow; ``RemoteProtocolError`` if it is not one. An item that is framed well but
    breaks the client wire grammar (``check_item``) is left out, with a log line: one
    bad item must not hold back the others, nor reach a client's mailbox, where it could
    not be framed."""
    reader = _Reader(payload)
    more = reader.take(1) != b"\0"
    count: int = _LENGTH.unpack(reader.take(_LENGTH.size))[0]
    if count > MAX_ITEMS:
        raise RemoteProtocolError(detail="a mailbox handed over holds too many items")
    items = []
    for _ in range(count):
        sender = reader.nick()
        kind, message_id, queued_at, size = _MAIL_HEAD.unpack(reader.take(_MAIL_HEAD.size))
        if kind >= len(_KINDS):
            raise RemoteProtocolError(detail="a mailbox item of no known kind")
        body = reader.take(size)
        seq: int = _SEQ.unpack(reader.take(_SEQ.size))[0]
        reason = reader.take(reader.take(1)[0]).decode("ascii", errors="replace")
        item = MailItem(to, seq, _KINDS[kind], sender, message_id, queued_at, body, reason)
        try:
            items.append(check_item(item))
        except RemoteProtocolError as exc:
            log.warning("a mailbox item for %s handed over in the cluster is left out: %s", to, exc)
    reader.end()
    return items, more


def check_item(item: MailItem) -> MailItem:
    """``item`` if every field of it is within the client wire grammar's bounds (what
    ``relay.mailboxes.item_frame`` will build a ``mail`` or ``expired`` from);
    ``RemoteProtocolError`` if not."""
    if not is_valid_nick(item.to) or not is_valid_nick(item.sender):
        raise RemoteProtocolError(detail="a mailbox item names an invalid nick")
    if not 0 <= item.seq <= MAX_ID or not 0 <= item.message_id <= MAX_ID:
        raise RemoteProtocolError(detail="a mailbox item's seq or message id is out of bounds")
    if not math.isfinite(item.queued_at) or not 0 <= item.queued_at < 2**40:  # as grammar.check_time
        raise RemoteProtocolError(detail="a mailbox item's time is out of bounds")
    if item.kind == MAIL and (len(item.body) > MAX_BODY or item.reason):
        raise RemoteProtocolError(detail="a mailbox item's body is too long, or it has a reason")
    if item.kind == EXPIRED and (item.reason not in EXPIRED_REASONS or item.body):
        raise RemoteProtocolError(detail="a notice in a mailbox gives no known reason, or has a body")
    if item.kind not in _KINDS:
        raise RemoteProtocolError(detail="a mailbox item of no known kind")
    return item


def encode_taken(nick: str, upto: int) -> bytes:
    """The asking relay keeps ``nick``'s items up to ``upto`` now: drop them here."""
    return MAIL_TAKEN + _nick(nick) + _SEQ.pack(upto)


def decode_taken(payload: bytes) -> tuple[str, int]:
    reader = _Reader(payload)
    reader.tag(MAIL_TAKEN)
    nick = reader.nick()
    upto: int = _SEQ.unpack(reader.take(_SEQ.size))[0]
    reader.end()
    return nick, upto


def encode_outcome(
    delivered: Sequence[str],
    refused: Sequence[str],
    missing: Sequence[str],
    queued: Sequence[str] = (),
    full: Sequence[str] = (),
) -> bytes:
    """The answer to a forward: which recipients were sent their copy, which were owed
    too much already, which are not on that relay (any more), and of those away whom it
    keeps (a room's members), whose mailbox took the copy and whose was full."""
    parts = []
    for nicks in (delivered, refused, missing, queued, full):
        parts.append(_COUNT.pack(len(nicks)))
        parts += [_nick(nick) for nick in nicks]
    return b"".join(parts)


def decode_outcome(payload: bytes) -> tuple[list[str], list[str], list[str], list[str], list[str]]:
    reader = _Reader(payload)
    lists = [[reader.nick() for _ in range(reader.count())] for _ in range(5)]
    reader.end()
    return lists[0], lists[1], lists[2], lists[3], lists[4]


def _nick(nick: str) -> bytes:
    raw = nick.encode("ascii")
    return bytes((len(raw),)) + raw


class _Reader:
    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.at = 0

    def take(self, size: int) -> bytes:
        end = self.at + size
        if end > len(self.payload):
            raise RemoteProtocolError(detail="a cluster message is cut short")
        chunk, self.at = self.payload[self.at : end], end
        return chunk

    def tag(self, expected: bytes) -> None:
        if self.take(1) != expected:
            raise RemoteProtocolError(detail="a cluster message of another kind")

    def nick(self) -> str:
        raw = self.take(self.take(1)[0])
        nick = raw.decode("ascii", errors="replace")
        if not is_valid_nick(nick):
            raise RemoteProtocolError(detail="a cluster message names an invalid nick")
        return nick

    def count(self) -> int:
        count: int = _COUNT.unpack(self.take(_COUNT.size))[0]
        if count > MAX_ITEMS:
            raise RemoteProtocolError(detail="a cluster message holds too many items")
        return count

    def end(self) -> None:
        if self.at != len(self.payload):
            raise RemoteProtocolError(detail="a cluster message has bytes left over")
