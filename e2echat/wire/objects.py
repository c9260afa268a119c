"""The objects inside wire messages: one frozen dataclass per kind, each with its table of
wire fields, as messages.py has for the messages themselves.

Pure (no I/O). A directory entry (``PeerInfo``), a room's member away (``Member``), one
recipient's ciphertext (``Envelope``), the prekeys a person publishes (``OneTimePrekey``,
``SignedPrekey``) and the bundle the relay hands out for them (``Bundle``). Each validates itself when built;
``OBJECT_KINDS`` tells the codec (codec.py) which field kinds hold which of them.
"""

from __future__ import annotations

from dataclasses import dataclass

from nacl.public import PublicKey

from e2echat.wire.fields import (
    BINARY,
    BUNDLES,
    ENVELOPES,
    INT,
    KEY,
    MEMBERS,
    NICK,
    ONE_TIME_PREKEYS,
    PEER,
    PEERS,
    SIGNED_PREKEY,
    Holds,
    Kind,
    Record,
    check_items,
    check_key,
    check_tables,
    on_wire,
)
from e2echat.wire.grammar import (
    MAX_BODY,
    MAX_PREKEY_ID,
    SIGNATURE_SIZE,
    check_bytes,
    check_id,
    check_nick,
    require,
)


@dataclass(frozen=True)
class PeerInfo(Record):
    """One directory entry: who is online and the keys the relay says they have."""

    WIRE = (
        on_wire("nick", NICK),
        on_wire("identity_key", KEY),
        on_wire("session_key", KEY),
    )
    nick: str
    identity_key: PublicKey
    session_key: PublicKey

    def __post_init__(self) -> None:
        check_nick(self.nick)
        check_key(self.identity_key, "identity key")
        check_key(self.session_key, "session key")


@dataclass(frozen=True)
class Member(Record):
    """A room's member who is not online: the nick and the identity key the relay knows
    it by (a room message is for them too: its copy waits in their mailbox)."""

    WIRE = (on_wire("nick", NICK), on_wire("identity_key", KEY))
    nick: str
    identity_key: PublicKey

    def __post_init__(self) -> None:
        check_nick(self.nick)
        check_key(self.identity_key, "identity key")


@dataclass(frozen=True)
class Envelope(Record):
    """One recipient's ciphertext inside a ``Send``. The body is opaque to the relay."""

    WIRE = (on_wire("to", NICK), on_wire("body", BINARY))
    to: str
    body: bytes

    def __post_init__(self) -> None:
        check_nick(self.to, "recipient")
        check_bytes(self.body, "body", limit=MAX_BODY)


@dataclass(frozen=True)
class OneTimePrekey(Record):
    """A one-time prekey: an X25519 public key its owner publishes for the relay to hand
    out once, and the owner's number for it (so the owner finds the private half)."""

    WIRE = (on_wire("id", INT), on_wire("key", KEY))
    id: int
    key: PublicKey

    def __post_init__(self) -> None:
        check_id(self.id, "prekey id", MAX_PREKEY_ID)
        check_key(self.key, "one-time prekey")


@dataclass(frozen=True)
class SignedPrekey(Record):
    """A signed prekey: an X25519 public key, its owner's number for it, and the owner's
    XEdDSA signature over it with the identity key. The relay stores and hands it out
    without checking the signature; clients check it (crypto/x3dh.py)."""

    WIRE = (on_wire("id", INT), on_wire("key", KEY), on_wire("signature", BINARY))
    id: int
    key: PublicKey
    signature: bytes

    def __post_init__(self) -> None:
        check_id(self.id, "prekey id", MAX_PREKEY_ID)
        check_key(self.key, "signed prekey")
        check_bytes(self.signature, "prekey signature", size=SIGNATURE_SIZE)


@dataclass(frozen=True)
class Bundle(Record):
    """What the relay hands out for one person: what a first message to them needs. Each
    one-time prekey goes out once, so a bundle has one or, once they are used up, none."""

    WIRE = (
        on_wire("nick", NICK),
        on_wire("identity_key", KEY),
        on_wire("signed_prekey", SIGNED_PREKEY),
        on_wire("one_time", ONE_TIME_PREKEYS),
    )
    nick: str
    identity_key: PublicKey
    signed_prekey: SignedPrekey
    one_time: tuple[OneTimePrekey, ...]

    def __post_init__(self) -> None:
        check_nick(self.nick)
        check_key(self.identity_key, "identity key")
        require(isinstance(self.signed_prekey, SignedPrekey), "signed_prekey must be a SignedPrekey")
        check_items(self.one_time, OneTimePrekey, "a bundle's one-time prekeys", limit=1)


# The kinds of the objects inside others (a bundle holds prekeys) come first: the codec
# makes the writers in this order, each from the writers of what it holds.
OBJECT_KINDS: dict[Kind, Holds] = {
    PEER: Holds(PeerInfo, "peer", array=False),
    PEERS: Holds(PeerInfo, "peer", array=True),
    MEMBERS: Holds(Member, "member", array=True),
    ENVELOPES: Holds(Envelope, "envelope", array=True),
    SIGNED_PREKEY: Holds(SignedPrekey, "signed prekey", array=False),
    ONE_TIME_PREKEYS: Holds(OneTimePrekey, "one-time prekey", array=True),
    BUNDLES: Holds(Bundle, "bundle", array=True),
}


check_tables(*(holds.record for holds in OBJECT_KINDS.values()))
