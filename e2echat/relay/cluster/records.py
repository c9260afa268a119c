"""What a cluster keeps in JetStream, as bytes, and the changes made to it under
compare-and-set. Pure (no I/O): relay/cluster/jetstream_store.py does the reading and writing.

- A nick's record (the ``ids`` bucket, one key per nick): its identity (identity key,
  last seen, registrations), its prekey bundle as ``relay.prekeys`` packs it, and the
  relay it is online on (``owner``, empty while away). One key, so that one revision
  orders every change to the nick: a one-time prekey is taken out of it by a
  compare-and-set on the revision read, and so is handed out once across the cluster
  (but see docs/PROTOCOL.md section 17 for a stalled relay answering from memory).
- A mailbox item (the ``mail`` bucket, one key per item, ``<nick>.<node>.<seq>``): the
  identity key it was queued for, then the item as ``encode_mail`` hands it over.

Everything here is public keys, nicks, metadata and ciphertext the relays cannot open.
A value is checked when read: one written by a bug, an older relay, or anyone with the
cluster's NATS credentials must not crash a relay (and clients check every key and
ciphertext end to end in any case).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, replace

from nacl.public import PublicKey

from e2echat.errors import RemoteProtocolError
from e2echat.relay.cluster.wire import check_node, decode_mail, encode_mail
from e2echat.relay.store import Identity, MailItem, StoredBundle
from e2echat.wire.grammar import KEY_SIZE, is_valid_nick
from e2echat.wire.objects import Bundle, OneTimePrekey, SignedPrekey

_VERSION = 1
_HEAD = struct.Struct(">B32sdQB")  # version, identity key, last seen, registered, owner's length
_SIGNED = struct.Struct(">I32s64s")  # as relay/prekeys.py packs it
_ONE_TIME = struct.Struct(">I32s")
_SIGNED_LENGTH = struct.Struct(">H")


@dataclass(frozen=True, slots=True)
class Record:
    """A nick's record. ``signed`` is empty until its owner first registered with a bundle;
    ``one_time`` holds the one-time prekeys, oldest first, packed."""

    identity: Identity
    signed: bytes = b""
    one_time: bytes = b""
    owner: str = ""

    @property
    def bundle(self) -> StoredBundle | None:
        return StoredBundle(self.identity.nick, self.signed, self.one_time) if self.signed else None


def encode_record(record: Record) -> bytes:
    identity = record.identity
    owner = record.owner.encode("ascii")
    head = _HEAD.pack(_VERSION, identity.identity_key, identity.last_seen, identity.registered, len(owner))
    return b"".join((head, owner, _SIGNED_LENGTH.pack(len(record.signed)), record.signed, record.one_time))


def decode_record(nick: str, value: bytes) -> Record:
    """``nick``'s record from its value; ``RemoteProtocolError`` if it is not one."""
    if len(value) < _HEAD.size:
        raise RemoteProtocolError(detail="a nick's record is cut short")
    version, key, last_seen, registered, owner_length = _HEAD.unpack_from(value)
    if version != _VERSION:
        raise RemoteProtocolError(detail=f"a nick's record of format {version}")
    at = _HEAD.size
    owner = check_node(value[at : at + owner_length]) if owner_length else ""
    at += owner_length
    if len(value) < at + _SIGNED_LENGTH.size:
        raise RemoteProtocolError(detail="a nick's record is cut short")
    (signed_length,) = _SIGNED_LENGTH.unpack_from(value, at)
    at += _SIGNED_LENGTH.size
    signed, one_time = value[at : at + signed_length], value[at + signed_length :]
    if signed_length not in (0, _SIGNED.size) or len(signed) != signed_length:
        raise RemoteProtocolError(detail="a nick's record holds no valid signed prekey")
    if len(one_time) % _ONE_TIME.size or (one_time and not signed):
        raise RemoteProtocolError(detail="a nick's record holds no valid one-time prekeys")
    return Record(Identity(nick, key, last_seen, registered), signed, one_time, owner)


def _ids(one_time: bytes) -> list[bytes]:
    size = _ONE_TIME.size
    return [one_time[start : start + 4] for start in range(0, len(one_time), size)]


def merged(ours: bytes, base: bytes, theirs: bytes) -> bytes:
    """The one-time prekeys once two writers changed ``base``: ``ours`` (what this relay
    holds now) less every one ``theirs`` (the record as it is now) no longer holds, as it
    was handed out meanwhile. A prekey this relay added since ``base`` (a publish) stays.
    A prekey handed out by either is never held again."""
    before, now = set(_ids(base)), set(_ids(theirs))
    size = _ONE_TIME.size
    kept = [
        ours[start : start + size]
        for start in range(0, len(ours), size)
        if ours[start : start + 4] in now or ours[start : start + 4] not in before
    ]
    return b"".join(kept)


def popped(record: Record, owner_alive: Callable[[str], bool]) -> tuple[Bundle | None, Record | None]:
    """A bundle of ``record``'s nick for someone who wants to write to it while it is away,
    and the record to write in its place (compare-and-set) if a one-time prekey was taken:
    None to write nothing. No bundle without a signed prekey. While the record names a
    live owner, that relay hands the one-time prekeys out: here, the signed prekey only
    (the nick came online there, and this relay has not seen it yet)."""
    if not record.signed:
        return None, None
    ident, key, signature = _SIGNED.unpack(record.signed)
    signed = SignedPrekey(ident, PublicKey(key), signature)
    identity_key = PublicKey(record.identity.identity_key)
    nick = record.identity.nick
    if not record.one_time or (record.owner and owner_alive(record.owner)):
        return Bundle(nick, identity_key, signed, ()), None
    one_id, one_key = _ONE_TIME.unpack_from(record.one_time)
    bundle = Bundle(nick, identity_key, signed, (OneTimePrekey(one_id, PublicKey(one_key)),))
    return bundle, replace(record, one_time=record.one_time[_ONE_TIME.size :], owner="")


# -- mailbox items ------------------------------------------------------------------------------


def mail_key(nick: str, node: str, seq: int) -> str:
    """The ``mail`` bucket's key of ``nick``'s item ``seq`` queued by relay ``node``."""
    return f"{nick_prefix(nick)}.{node}.{seq}"


def nick_prefix(nick: str) -> str:
    """The first token of the keys of ``nick``'s items: the nick in hex (a nick may hold
    '.', and a key is a subject). The nick itself, not its skeleton: mail is for one nick."""
    return nick.encode("ascii").hex()


def node_of_key(key: str) -> str:
    """The relay that queued the item under ``key``; ``RemoteProtocolError`` if none."""
    parts = key.split(".")
    if len(parts) != 3:
        raise RemoteProtocolError(detail="a mailbox key of another shape")
    return check_node(parts[1].encode("ascii"))


def nick_of_key(key: str) -> str:
    """The nick whose item is under ``key``; ``RemoteProtocolError`` if none."""
    try:
        nick = bytes.fromhex(key.split(".")[0]).decode("ascii")
    except ValueError:
        nick = ""
    if not is_valid_nick(nick):
        raise RemoteProtocolError(detail="a mailbox key names no valid nick")
    return nick


def encode_item(identity_key: bytes, item: MailItem) -> bytes:
    return identity_key + encode_mail([item], False)


def decode_item(to: str, value: bytes) -> tuple[bytes, MailItem]:
    """The identity key the item was queued for, and the item; ``RemoteProtocolError`` if
    the value is not one."""
    identity_key, rest = value[:KEY_SIZE], value[KEY_SIZE:]
    if len(identity_key) != KEY_SIZE:
        raise RemoteProtocolError(detail="a mailbox item is cut short")
    items, more = decode_mail(rest, to)
    if len(items) != 1 or more:
        raise RemoteProtocolError(detail="a mailbox value holds other than one item")
    return identity_key, items[0]
