"""X3DH: both sides agree, with and without a one-time prekey; a substituted prekey is
caught; AD binds keys and nicks."""

from __future__ import annotations

import pytest
from nacl.public import PrivateKey, PublicKey
from nacl.signing import SigningKey, VerifyKey

from e2echat.crypto import x3dh
from e2echat.crypto.kdf import kdf_x3dh
from e2echat.errors import BadPrekeyBundle, BadPrekeySignature, DecryptionError, LocalProtocolError


class FakeXEdDSA:
    """Stands in for XEdDSA (written elsewhere): an Ed25519 key per X25519 identity key.
    A real signature scheme, so a forged or reused signature really fails."""

    def __init__(self) -> None:
        self._keys: dict[bytes, SigningKey] = {}

    def sign(self, identity: PrivateKey, message: bytes) -> bytes:
        key = self._keys.setdefault(bytes(identity.public_key), SigningKey.generate())
        return key.sign(message).signature

    def verify(self, public: PublicKey, message: bytes, signature: bytes) -> bool:
        key = self._keys.get(bytes(public))
        if key is None:
            return False
        try:
            VerifyKey(bytes(key.verify_key)).verify(message, signature)
        except Exception:
            return False
        return True


class Bob:
    def __init__(self, signer: FakeXEdDSA, *, one_time: bool) -> None:
        self.identity = PrivateKey.generate()
        self.signed_prekey = PrivateKey.generate()
        self.one_time_prekey = PrivateKey.generate() if one_time else None
        message = x3dh.signed_prekey_message(42, self.signed_prekey.public_key)
        self.bundle = x3dh.PrekeyBundle(
            self.identity.public_key,
            self.signed_prekey.public_key,
            42,
            signer.sign(self.identity, message),
            None if self.one_time_prekey is None else self.one_time_prekey.public_key,
            None if self.one_time_prekey is None else 7,
        )

    def respond(self, alice: PrivateKey, initiation: x3dh.Initiation) -> tuple[bytes, bytes]:
        return x3dh.respond(
            self.identity,
            self.signed_prekey,
            self.one_time_prekey,
            their_identity=alice.public_key,
            their_ephemeral=initiation.ephemeral_key,
            our_nick="bob",
            their_nick="alice",
        )


@pytest.fixture
def signer() -> FakeXEdDSA:
    return FakeXEdDSA()


@pytest.mark.parametrize("one_time", [True, False], ids=["with-opk", "without-opk"])
def test_both_sides_agree(signer: FakeXEdDSA, one_time: bool) -> None:
    alice, bob = PrivateKey.generate(), Bob(signer, one_time=one_time)
    initiation = x3dh.initiate(alice, bob.bundle, signer.verify, our_nick="alice", their_nick="bob")
    assert initiation.signed_prekey_id == 42
    assert initiation.one_time_prekey_id == (7 if one_time else None)
    shared_key, ad = bob.respond(alice, initiation)
    assert shared_key == initiation.shared_key and len(shared_key) == 32
    assert ad == initiation.associated_data


def test_the_shared_key_is_the_spec_construction(signer: FakeXEdDSA) -> None:
    alice, bob, ephemeral = PrivateKey.generate(), Bob(signer, one_time=True), PrivateKey.generate()
    initiation = x3dh.initiate(
        alice, bob.bundle, signer.verify, our_nick="alice", their_nick="bob", ephemeral=ephemeral
    )
    assert bob.one_time_prekey is not None
    dh = [
        x3dh._dh(alice, bob.signed_prekey.public_key),
        x3dh._dh(ephemeral, bob.identity.public_key),
        x3dh._dh(ephemeral, bob.signed_prekey.public_key),
        x3dh._dh(ephemeral, bob.one_time_prekey.public_key),
    ]
    assert initiation.shared_key == kdf_x3dh(b"".join(dh))
    assert initiation.ephemeral_key == ephemeral.public_key


def test_without_the_one_time_prekey_bob_gets_another_key(signer: FakeXEdDSA) -> None:
    """Negative twin: DH4 is really in the key (so deleting OPK_B protects the session)."""
    alice, bob = PrivateKey.generate(), Bob(signer, one_time=True)
    initiation = x3dh.initiate(alice, bob.bundle, signer.verify, our_nick="alice", their_nick="bob")
    bob.one_time_prekey = None
    assert bob.respond(alice, initiation)[0] != initiation.shared_key


def test_a_substituted_signed_prekey_is_refused(signer: FakeXEdDSA) -> None:
    alice, bob = PrivateKey.generate(), Bob(signer, one_time=True)
    relay_key = PrivateKey.generate()
    forged = x3dh.PrekeyBundle(
        bob.bundle.identity_key, relay_key.public_key, 42, bob.bundle.signed_prekey_signature, None, None
    )
    with pytest.raises(BadPrekeySignature) as caught:
        x3dh.initiate(alice, forged, signer.verify, our_nick="alice", their_nick="bob")
    assert caught.value.nick == "bob" and caught.value.prekey_id == 42
    assert "relay" in str(caught.value)


def test_a_relabelled_prekey_id_is_refused(signer: FakeXEdDSA) -> None:
    alice, bob = PrivateKey.generate(), Bob(signer, one_time=False)
    bundle = bob.bundle
    relabelled = x3dh.PrekeyBundle(
        bundle.identity_key, bundle.signed_prekey, 43, bundle.signed_prekey_signature
    )
    with pytest.raises(BadPrekeySignature):
        x3dh.initiate(alice, relabelled, signer.verify, our_nick="alice", their_nick="bob")


def test_a_signature_by_another_identity_is_refused(signer: FakeXEdDSA) -> None:
    alice, bob, mallory = PrivateKey.generate(), Bob(signer, one_time=False), Bob(signer, one_time=False)
    bundle = x3dh.PrekeyBundle(
        bob.bundle.identity_key,
        mallory.bundle.signed_prekey,
        42,
        mallory.bundle.signed_prekey_signature,
    )
    with pytest.raises(BadPrekeySignature):
        x3dh.initiate(alice, bundle, signer.verify, our_nick="alice", their_nick="bob")


def test_a_low_order_prekey_is_refused(signer: FakeXEdDSA) -> None:
    alice, bob = PrivateKey.generate(), Bob(signer, one_time=False)
    zero = PublicKey(bytes(32))
    bundle = x3dh.PrekeyBundle(bob.bundle.identity_key, zero, 1, bytes(64))
    with pytest.raises(BadPrekeyBundle):
        x3dh.initiate(alice, bundle, lambda *_: True, our_nick="alice", their_nick="bob")
    with pytest.raises(DecryptionError):
        x3dh.respond(
            bob.identity,
            bob.signed_prekey,
            None,
            their_identity=alice.public_key,
            their_ephemeral=zero,
            our_nick="bob",
            their_nick="alice",
        )


@pytest.mark.parametrize(
    ("initiator_nick", "responder_nick", "swap_identity"),
    [("mallory", "bob", False), ("alice", "bobby", False), ("alice", "bob", True)],
)
def test_ad_binds_both_nicks_and_identity_keys(
    signer: FakeXEdDSA, initiator_nick: str, responder_nick: str, swap_identity: bool
) -> None:
    alice, bob = PrivateKey.generate(), Bob(signer, one_time=False)
    initiation = x3dh.initiate(alice, bob.bundle, signer.verify, our_nick="alice", their_nick="bob")
    their_identity = PrivateKey.generate().public_key if swap_identity else alice.public_key
    _, ad = x3dh.respond(
        bob.identity,
        bob.signed_prekey,
        None,
        their_identity=their_identity,
        their_ephemeral=initiation.ephemeral_key,
        our_nick=responder_nick,
        their_nick=initiator_nick,
    )
    assert ad != initiation.associated_data


def test_ad_layout() -> None:
    a, b = PublicKey(bytes(range(32))), PublicKey(bytes(range(32, 64)))
    ad = x3dh.associated_data(a, b, "al", "bo")
    assert ad == b"e2echat x3dh ad v1\x05" + bytes(a) + b"\x05" + bytes(b) + b"\x02al\x02bo"
    # Length prefixes keep ("al", "bo") and ("a", "lbo") apart.
    assert ad != x3dh.associated_data(a, b, "a", "lbo")


@pytest.mark.parametrize(
    "change",
    [
        {"signed_prekey_id": -1},
        {"signed_prekey_id": 2**32},
        {"signed_prekey_signature": bytes(63)},
        {"one_time_prekey_id": 3},
        {"one_time_prekey": PrivateKey.generate().public_key},
        {"identity_key": bytes(32)},
    ],
)
def test_malformed_bundles_are_refused_when_built(change: dict[str, object]) -> None:
    fields: dict[str, object] = {
        "identity_key": PrivateKey.generate().public_key,
        "signed_prekey": PrivateKey.generate().public_key,
        "signed_prekey_id": 1,
        "signed_prekey_signature": bytes(64),
    }
    fields.update(change)
    with pytest.raises(LocalProtocolError):
        # Wrong types on purpose: the bundle must refuse them at run time too.
        x3dh.PrekeyBundle(**fields)  # type: ignore[arg-type]


def test_nicks_too_long_for_ad_are_refused() -> None:
    key = PrivateKey.generate().public_key
    with pytest.raises(LocalProtocolError):
        x3dh.associated_data(key, key, "a" * 256, "bob")
    with pytest.raises(LocalProtocolError):
        x3dh.associated_data(key, key, "", "bob")
