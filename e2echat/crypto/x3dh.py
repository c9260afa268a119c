"""X3DH: the first key agreement with someone who may be offline (Signal's "The X3DH Key
Agreement Protocol", revision 1), over X25519 with XEdDSA-signed prekeys.

Pure (no I/O). Bob publishes, through the relay, a ``PrekeyBundle``: his identity key
IK_B, a signed prekey SPK_B with its id and XEdDSA signature by IK_B, and perhaps a
one-time prekey OPK_B with its id. Alice, holding IK_A, checks the signature, makes an
ephemeral key EK_A and computes

    DH1 = DH(IK_A, SPK_B)   DH2 = DH(EK_A, IK_B)   DH3 = DH(EK_A, SPK_B)
    DH4 = DH(EK_A, OPK_B)   (only if the bundle had a one-time prekey)
    SK  = kdf_x3dh(DH1 || DH2 || DH3 [|| DH4])     (BLAKE2b over F || ..., see kdf)

and sends IK_A, EK_A and the prekey ids with her first Double Ratchet message. Bob
(``respond``) computes the same DHs from the other ends. DH1 and DH2 authenticate both
parties (mutual, deniable); DH3 and DH4 give forward secrecy.

The signature check is a callable passed in (XEdDSA lives in its own module); a relay
that substitutes the signed prekey cannot sign its own, so ``initiate`` raises
``BadPrekeySignature`` and nothing is sent. A relay that substitutes the whole identity
key is caught by the TOFU pin and the safety number, not here.

AD (associated data, authenticated by every ratchet message) binds both identity keys and
both nicks, initiator first; see ``associated_data``. Exact layouts: docs/RATCHET.md.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import nacl.bindings
import nacl.exceptions
from nacl.public import PrivateKey, PublicKey

from e2echat.crypto.kdf import kdf_x3dh
from e2echat.errors import BadPrekeyBundle, BadPrekeySignature, DecryptionError, LocalProtocolError

#: ``verify(public, message, signature) -> bool``: XEdDSA verification, injected.
Verify = Callable[[PublicKey, bytes, bytes], bool]

SIGNED_PREKEY_LABEL = b"e2echat signed prekey v1"
ASSOCIATED_LABEL = b"e2echat x3dh ad v1"
SIGNATURE_SIZE = 64  # XEdDSA, like Ed25519
# How Signal serializes a Curve25519 public key (Encode(PK) in the X3DH spec).
_DJB_TYPE = b"\x05"
# Prekey ids are 32-bit, as in Signal: a client makes a few hundred prekeys a year.
MAX_PREKEY_ID = 2**32 - 1
# A nick goes into AD behind a one-byte length; the wire allows far shorter nicks anyway.
MAX_NICK_BYTES = 255
_ID = struct.Struct(">I")


def _check_id(value: object, what: str) -> None:
    if type(value) is not int or not 0 <= value <= MAX_PREKEY_ID:
        raise LocalProtocolError(detail=f"{what} must be an integer in 0..{MAX_PREKEY_ID}")


@dataclass(frozen=True)
class PrekeyBundle:
    """What the relay hands out for one person: the keys to start a session with them."""

    identity_key: PublicKey
    signed_prekey: PublicKey
    signed_prekey_id: int
    signed_prekey_signature: bytes
    one_time_prekey: PublicKey | None = None
    one_time_prekey_id: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.identity_key, PublicKey) or not isinstance(self.signed_prekey, PublicKey):
            raise LocalProtocolError(detail="bundle keys must be PublicKey objects")
        _check_id(self.signed_prekey_id, "signed prekey id")
        if (
            type(self.signed_prekey_signature) is not bytes
            or len(self.signed_prekey_signature) != SIGNATURE_SIZE
        ):
            raise LocalProtocolError(detail=f"a prekey signature is {SIGNATURE_SIZE} bytes")
        if (self.one_time_prekey is None) != (self.one_time_prekey_id is None):
            raise LocalProtocolError(detail="a one-time prekey comes with its id, or neither")
        if self.one_time_prekey is not None:
            if not isinstance(self.one_time_prekey, PublicKey):
                raise LocalProtocolError(detail="bundle keys must be PublicKey objects")
            _check_id(self.one_time_prekey_id, "one-time prekey id")


class Initiation(NamedTuple):
    """What ``initiate`` gives Alice: the session's secrets and what Bob needs to know."""

    shared_key: bytes
    ephemeral_key: PublicKey
    associated_data: bytes
    signed_prekey_id: int
    one_time_prekey_id: int | None


def signed_prekey_message(prekey_id: int, signed_prekey: PublicKey) -> bytes:
    """The bytes the identity key signs for a signed prekey: label || id || Encode(SPK).

    The label keeps these signatures from meaning anything else the identity key may
    sign; the id is signed so the relay cannot relabel one prekey as another."""
    _check_id(prekey_id, "signed prekey id")
    return SIGNED_PREKEY_LABEL + _ID.pack(prekey_id) + _DJB_TYPE + bytes(signed_prekey)


def _nick_field(nick: str) -> bytes:
    encoded = nick.encode("utf-8")
    if not encoded or len(encoded) > MAX_NICK_BYTES:
        raise LocalProtocolError(detail=f"a nick is 1..{MAX_NICK_BYTES} bytes of UTF-8")
    return bytes([len(encoded)]) + encoded


def associated_data(
    initiator_identity: PublicKey, responder_identity: PublicKey, initiator_nick: str, responder_nick: str
) -> bytes:
    """label || Encode(IK_A) || Encode(IK_B) || len || nick_A || len || nick_B."""
    return (
        ASSOCIATED_LABEL
        + _DJB_TYPE
        + bytes(initiator_identity)
        + _DJB_TYPE
        + bytes(responder_identity)
        + _nick_field(initiator_nick)
        + _nick_field(responder_nick)
    )


def _dh(private: PrivateKey, public: PublicKey) -> bytes:
    # libsodium refuses a low-order point (an all-zero shared secret) with an error.
    return nacl.bindings.crypto_scalarmult(bytes(private), bytes(public))


def initiate(
    our_identity: PrivateKey,
    bundle: PrekeyBundle,
    verify: Verify,
    *,
    our_nick: str,
    their_nick: str,
    ephemeral: PrivateKey | None = None,
) -> Initiation:
    """Alice's side: check ``bundle`` (Bob's, as the relay gave it) and agree a key.

    ``ephemeral`` is for known-answer tests only; by default a fresh key is made and its
    private half is forgotten when this returns (forward secrecy). Raises
    ``BadPrekeySignature`` if ``verify`` rejects the signed prekey's signature, and
    ``BadPrekeyBundle`` if a key is unusable (a low-order point)."""
    message = signed_prekey_message(bundle.signed_prekey_id, bundle.signed_prekey)
    if not verify(bundle.identity_key, message, bundle.signed_prekey_signature):
        raise BadPrekeySignature(nick=their_nick, prekey_id=bundle.signed_prekey_id)
    ad = associated_data(our_identity.public_key, bundle.identity_key, our_nick, their_nick)
    ephemeral = PrivateKey.generate() if ephemeral is None else ephemeral
    try:
        material = (
            _dh(our_identity, bundle.signed_prekey)
            + _dh(ephemeral, bundle.identity_key)
            + _dh(ephemeral, bundle.signed_prekey)
        )
        if bundle.one_time_prekey is not None:
            material += _dh(ephemeral, bundle.one_time_prekey)
    except nacl.exceptions.CryptoError:
        raise BadPrekeyBundle(nick=their_nick, detail="a key is not a valid curve point") from None
    return Initiation(
        kdf_x3dh(material),
        ephemeral.public_key,
        ad,
        bundle.signed_prekey_id,
        bundle.one_time_prekey_id,
    )


def respond(
    our_identity: PrivateKey,
    our_signed_prekey: PrivateKey,
    our_one_time_prekey: PrivateKey | None,
    *,
    their_identity: PublicKey,
    their_ephemeral: PublicKey,
    our_nick: str,
    their_nick: str,
) -> tuple[bytes, bytes]:
    """Bob's side: (shared key, associated data) from Alice's first message.

    The caller looks the prekeys up by the ids Alice sent, passes the one-time prekey if
    she used one, and deletes that one-time prekey afterwards (it is what makes a replay
    of her first message unable to start a second session). Raises ``DecryptionError``
    if her keys are unusable."""
    ad = associated_data(their_identity, our_identity.public_key, their_nick, our_nick)
    try:
        material = (
            _dh(our_signed_prekey, their_identity)
            + _dh(our_identity, their_ephemeral)
            + _dh(our_signed_prekey, their_ephemeral)
        )
        if our_one_time_prekey is not None:
            material += _dh(our_one_time_prekey, their_ephemeral)
    except nacl.exceptions.CryptoError:
        raise DecryptionError(peer=their_nick, detail="their keys are not valid curve points") from None
    return kdf_x3dh(material), ad
