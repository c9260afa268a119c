"""XEdDSA (Signal's spec, revision 1): known answers, round trips, and a negative twin
for every byte of signature, key and message."""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
from pathlib import Path
from typing import Any

import nacl.bindings as sodium
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.public import PrivateKey, PublicKey

from e2echat.crypto import xeddsa
from e2echat.crypto.xeddsa import calculate_key_pair, montgomery_to_edwards, xeddsa_sign, xeddsa_verify
from e2echat.errors import LocalProtocolError

VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).parent / "vectors" / "xeddsa.json").read_text(encoding="utf-8")
)
P = 2**255 - 19
Q = 2**252 + 27742317777372353535851937790883648493

keys = st.binary(min_size=32, max_size=32).map(PrivateKey)
randoms = st.binary(min_size=64, max_size=64)


# -- an independent reference: the spec's pseudocode on Python ints (RFC 8032 section 6
# arithmetic), sharing nothing with the module but SHA-512. Test-only and slow.

_D = -121665 * pow(121666, P - 2, P) % P
_Point = tuple[int, int, int, int]  # extended coordinates (X, Y, Z, T)


def _add(p1: _Point, p2: _Point) -> _Point:
    a = (p1[1] - p1[0]) * (p2[1] - p2[0]) % P
    b = (p1[1] + p1[0]) * (p2[1] + p2[0]) % P
    c = 2 * p1[3] * p2[3] * _D % P
    d = 2 * p1[2] * p2[2] % P
    e, f, g, h = b - a, d - c, d + c, b + a
    return e * f % P, g * h % P, f * g % P, e * h % P


def _times(scalar: int, point: _Point) -> _Point:
    result: _Point = (0, 1, 1, 0)
    while scalar:
        if scalar & 1:
            result = _add(result, point)
        point, scalar = _add(point, point), scalar >> 1
    return result


def _encode(point: _Point) -> bytes:
    z_inverse = pow(point[2], P - 2, P)
    x, y = point[0] * z_inverse % P, point[1] * z_inverse % P
    return (y | (x & 1) << 255).to_bytes(32, "little")


_BY = 4 * pow(5, P - 2, P) % P
_BX = 15112221349535400772501151409588531511454012693041857206046113283949847762202
_BASE: _Point = (_BX, _BY, 1, _BX * _BY % P)


def reference_sign(private: bytes, message: bytes, z: bytes) -> bytes:
    k = int.from_bytes(private, "little") & ~7 & ((1 << 254) - 1) | (1 << 254)
    a = -k % Q if _encode(_times(k, _BASE))[31] & 0x80 else k % Q
    big_a = _encode(_times(a, _BASE))
    prefix = (2**256 - 2).to_bytes(32, "little")
    r = int.from_bytes(hashlib.sha512(prefix + a.to_bytes(32, "little") + message + z).digest(), "little")
    big_r = _encode(_times(r % Q, _BASE))
    h = int.from_bytes(hashlib.sha512(big_r + big_a + message).digest(), "little") % Q
    return big_r + ((r + h * a) % Q).to_bytes(32, "little")


# -- known answers


@pytest.mark.parametrize("vector", VECTORS["sign"], ids=[v["name"] for v in VECTORS["sign"]])
def test_signing_gives_the_known_answer(vector: dict[str, str]) -> None:
    private = PrivateKey(bytes.fromhex(vector["private"]))
    message, z = bytes.fromhex(vector["message"]), bytes.fromhex(vector["random"])
    assert private.public_key.encode().hex() == vector["public"]
    signature = xeddsa_sign(private, message, z)
    assert signature.hex() == vector["signature"]
    assert xeddsa_verify(private.public_key, message, signature)


@pytest.mark.parametrize("vector", VECTORS["sign"], ids=[v["name"] for v in VECTORS["sign"]])
def test_the_reference_gives_the_known_answers_too(vector: dict[str, str]) -> None:
    signature = reference_sign(*(bytes.fromhex(vector[k]) for k in ("private", "message", "random")))
    assert signature.hex() == vector["signature"]


@pytest.mark.parametrize("vector", VECTORS["not_xeddsa"], ids=[v["name"] for v in VECTORS["not_xeddsa"]])
def test_curvesigs_with_the_sign_bit_in_s_are_refused(vector: dict[str, str]) -> None:
    public = bytes.fromhex(vector["public"])
    message, signature = bytes.fromhex(vector["message"]), bytes.fromhex(vector["signature"])
    assert not xeddsa_verify(PublicKey(public), message, signature)
    # The bytes are transcribed right: as the older scheme reads them (sign bit moved
    # from s to A, then plain Ed25519), they verify.
    edwards = bytearray(montgomery_to_edwards(int.from_bytes(public, "little")))
    edwards[31] |= signature[63] & 0x80
    unsigned = signature[:63] + bytes([signature[63] & 0x7F])
    assert sodium.crypto_sign_open(unsigned + message, bytes(edwards)) == message


# -- round trips


@settings(max_examples=50, deadline=None)
@given(keys, st.binary(max_size=300), randoms)
def test_signatures_verify_and_match_the_reference(private: PrivateKey, message: bytes, z: bytes) -> None:
    signature = xeddsa_sign(private, message, z)
    assert signature == reference_sign(private.encode(), message, z)
    assert xeddsa_verify(private.public_key, message, signature)


@settings(max_examples=50)
@given(keys, st.binary(max_size=300))
def test_a_signature_is_plain_ed25519_under_the_rebuilt_key(private: PrivateKey, message: bytes) -> None:
    # So libsodium's own Ed25519 (and verifiers that read the sign bit from s, here 0)
    # accept it too.
    signature = xeddsa_sign(private, message)
    assert signature[63] & 0x80 == 0
    edwards = montgomery_to_edwards(int.from_bytes(private.public_key.encode(), "little"))
    assert sodium.crypto_sign_open(signature + message, edwards) == message


@pytest.mark.parametrize("message", [b"", b"x", bytes(range(256)) * 4096], ids=["empty", "1", "1MiB"])
def test_round_trip_with_fresh_randomness(message: bytes) -> None:
    private = PrivateKey.generate()
    signature = xeddsa_sign(private, message)
    assert len(signature) == xeddsa.SIGNATURE_SIZE
    assert xeddsa_verify(private.public_key, message, signature)


def test_signing_is_deterministic_given_z_and_randomised_without() -> None:
    private, z = PrivateKey.generate(), bytes(range(64))
    assert xeddsa_sign(private, b"m", z) == xeddsa_sign(private, b"m", z)
    one, two = xeddsa_sign(private, b"m", z), xeddsa_sign(private, b"m", bytes(64))
    fresh = {xeddsa_sign(private, b"m") for _ in range(3)}
    assert len({one, two, *fresh}) == 5
    assert all(xeddsa_verify(private.public_key, b"m", sig) for sig in {one, two, *fresh})


@pytest.mark.parametrize("size", [0, 63, 65])
def test_z_of_the_wrong_size_is_a_local_error(size: int) -> None:
    with pytest.raises(LocalProtocolError):
        xeddsa_sign(PrivateKey.generate(), b"m", bytes(size))


# -- the key conversions, held to libsodium


@settings(max_examples=50)
@given(st.binary(min_size=32, max_size=32))
def test_montgomery_to_edwards_inverts_libsodiums_edwards_to_montgomery(seed: bytes) -> None:
    edwards, _ = sodium.crypto_sign_seed_keypair(seed)
    u = sodium.crypto_sign_ed25519_pk_to_curve25519(edwards)
    assert montgomery_to_edwards(int.from_bytes(u, "little")) == edwards[:31] + bytes([edwards[31] & 0x7F])


@settings(max_examples=50)
@given(keys)
def test_calculate_key_pair_is_the_x25519_key_with_sign_bit_zero(private: PrivateKey) -> None:
    public_point, a = calculate_key_pair(private)
    k = bytearray(private.encode())
    k[0], k[31] = k[0] & 248, k[31] & 127 | 64
    edwards = sodium.crypto_scalarmult_ed25519_base_noclamp(bytes(k))
    assert public_point == edwards[:31] + bytes([edwards[31] & 0x7F])
    assert public_point[31] & 0x80 == 0
    assert sodium.crypto_scalarmult_ed25519_base_noclamp(a) == public_point
    assert public_point == montgomery_to_edwards(int.from_bytes(private.public_key.encode(), "little"))


# -- negative twins

ALICE = PrivateKey(bytes([1]) * 32)
MESSAGE = bytes(range(64))
SIGNATURE = xeddsa_sign(ALICE, MESSAGE, bytes(64))


def _flip(data: bytes, index: int, bit: int) -> bytes:
    return data[:index] + bytes([data[index] ^ (1 << bit)]) + data[index + 1 :]


def test_the_twins_start_from_a_valid_signature() -> None:
    assert xeddsa_verify(ALICE.public_key, MESSAGE, SIGNATURE)


@pytest.mark.parametrize("index", range(64))
def test_every_bit_of_the_signature_matters(index: int) -> None:
    for bit in range(8):
        assert not xeddsa_verify(ALICE.public_key, MESSAGE, _flip(SIGNATURE, index, bit))


@pytest.mark.parametrize("index", range(32))
def test_every_bit_of_the_public_key_matters(index: int) -> None:
    for bit in range(8):
        public = PublicKey(_flip(ALICE.public_key.encode(), index, bit))
        assert not xeddsa_verify(public, MESSAGE, SIGNATURE)


@pytest.mark.parametrize("index", range(len(MESSAGE)))
def test_every_bit_of_the_message_matters(index: int) -> None:
    for bit in range(8):
        assert not xeddsa_verify(ALICE.public_key, _flip(MESSAGE, index, bit), SIGNATURE)


def test_another_key_does_not_verify() -> None:
    assert not xeddsa_verify(PrivateKey(bytes([2]) * 32).public_key, MESSAGE, SIGNATURE)


@pytest.mark.parametrize(
    "signature",
    [b"", SIGNATURE[:63], SIGNATURE[:32], SIGNATURE + b"\x00", SIGNATURE + SIGNATURE],
    ids=["empty", "63", "32", "65", "128"],
)
def test_a_signature_of_the_wrong_length_is_false(signature: bytes) -> None:
    assert not xeddsa_verify(ALICE.public_key, MESSAGE, signature)


def test_s_plus_q_is_refused_though_the_spec_would_take_it() -> None:
    # s + q < 2**253 passes the spec's own range check and gives the same sB: without
    # the s < q check this second signature of the same message would verify.
    s = int.from_bytes(SIGNATURE[32:], "little")
    assert s + Q < 2**253
    assert not xeddsa_verify(ALICE.public_key, MESSAGE, SIGNATURE[:32] + (s + Q).to_bytes(32, "little"))


@pytest.mark.parametrize("s", [Q, Q + 1, 2**253 - 1, 2**256 - 1, 0], ids=["q", "q+1", "2^253-1", "max", "0"])
def test_s_out_of_range_or_zero_is_false(s: int) -> None:
    assert not xeddsa_verify(ALICE.public_key, MESSAGE, SIGNATURE[:32] + s.to_bytes(32, "little"))


def test_u_at_or_above_p_is_refused_though_it_is_the_same_u_mod_p() -> None:
    # u + p names the same Montgomery point; the spec says to refuse the non-canonical
    # encoding, and without the u < p check this one would verify.
    u = int.from_bytes(ALICE.public_key.encode(), "little")
    assert not xeddsa_verify(PublicKey((u + P).to_bytes(32, "little")), MESSAGE, SIGNATURE)


@pytest.mark.parametrize("u", [0, 1, P - 1, P, 2**256 - 1, 9, 2], ids=["0", "1", "p-1", "p", "max", "9", "2"])
def test_small_order_off_curve_and_out_of_range_keys_are_false(u: int) -> None:
    # 0, 1 and p - 1 are of small order (or map to no valid point); 2 is on the twist;
    # 9 is the base point, a valid key that did not make this signature.
    assert not xeddsa_verify(PublicKey(u.to_bytes(32, "little")), MESSAGE, SIGNATURE)


@pytest.mark.parametrize(
    "big_r",
    [bytes([1]) + bytes(31), bytes(32), bytes([0xEC]) + b"\xff" * 30 + b"\x7f", b"\xff" * 32],
    ids=["identity", "order-4", "y=p-1", "y>=p"],
)
def test_small_order_and_non_canonical_r_are_false(big_r: bytes) -> None:
    assert not xeddsa_verify(ALICE.public_key, MESSAGE, big_r + SIGNATURE[32:])


def test_the_key_holders_r_equals_identity_signature_is_refused() -> None:
    # r = 0 makes R the identity; s = h·a then satisfies sB - hA = R. Only the key
    # holder can make it, and only the R validity check refuses it, as libsodium does.
    public_point, a = calculate_key_pair(ALICE)
    big_r = bytes([1]) + bytes(31)
    h = sodium.crypto_core_ed25519_scalar_reduce(sodium.crypto_hash_sha512(big_r + public_point + MESSAGE))
    s = sodium.crypto_core_ed25519_scalar_mul(h, a)
    assert not xeddsa_verify(ALICE.public_key, MESSAGE, big_r + s)


@settings(max_examples=200)
@given(st.binary(min_size=32, max_size=32), st.binary(max_size=100), st.binary(max_size=80))
def test_verify_never_raises_on_junk(public: bytes, message: bytes, signature: bytes) -> None:
    assert xeddsa_verify(PublicKey(public), message, signature) in (True, False)


@settings(max_examples=100)
@given(st.binary(min_size=32, max_size=32), st.binary(min_size=32, max_size=32))
def test_verify_never_raises_on_junk_of_the_right_length(big_r: bytes, s: bytes) -> None:
    assert not xeddsa_verify(ALICE.public_key, MESSAGE, big_r + s)


def test_the_module_is_pure() -> None:
    spec = importlib.util.find_spec("e2echat.crypto.xeddsa")
    assert spec is not None and spec.origin is not None
    tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert imported <= {"__future__", "hmac", "nacl", "e2echat"}
    assert not any(isinstance(node, ast.Name) and node.id == "open" for node in ast.walk(tree))
