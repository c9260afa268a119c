"""The ratchet KDFs: pinned vectors, pinned to PyNaCl's public BLAKE2b, labels kept apart."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import nacl.hash
import pytest
from hypothesis import given
from hypothesis import strategies as st
from nacl.encoding import RawEncoder

from e2echat.crypto import kdf

VECTORS = Path(__file__).parent / "vectors"
keys = st.binary(min_size=32, max_size=32)


def _vectors() -> list[Any]:
    document = json.loads((VECTORS / "kdf.json").read_text(encoding="utf-8"))
    return [pytest.param(vector, id=vector["name"]) for vector in document["vectors"]]


def _x(vector: dict[str, str], name: str) -> bytes:
    return bytes.fromhex(vector[name])


@pytest.mark.parametrize("vector", _vectors())
def test_known_answers(vector: dict[str, str]) -> None:
    function = vector["function"]
    if function == "kdf_chain":
        assert kdf.kdf_chain(_x(vector, "chain_key")) == (
            _x(vector, "next_chain_key"),
            _x(vector, "message_key"),
        )
    elif function == "kdf_root":
        assert kdf.kdf_root(_x(vector, "root_key"), _x(vector, "dh_output")) == (
            _x(vector, "next_root_key"),
            _x(vector, "chain_key"),
        )
    elif function == "kdf_header_key":
        assert kdf.kdf_header_key(_x(vector, "chain_key")) == _x(vector, "header_key")
    elif function == "kdf_x3dh":
        assert kdf.kdf_x3dh(_x(vector, "dh_outputs")) == _x(vector, "shared_key")
    elif function == "kdf_session":
        root_key = kdf.kdf_session(_x(vector, "shared_key"), _x(vector, "associated_data"))
        assert root_key == _x(vector, "root_key")
    elif function == "header_tag":
        assert kdf.header_tag(_x(vector, "header_key"), _x(vector, "header")) == _x(vector, "tag")
    else:
        pytest.fail(f"unknown function {function}")


def _public(data: bytes, size: int, key: bytes, label: bytes) -> bytes:
    digest: bytes = nacl.hash.blake2b(data, digest_size=size, key=key, person=label, encoder=RawEncoder)
    return digest


@given(keys)
def test_kdf_chain_is_the_public_blake2b_api(chain_key: bytes) -> None:
    both = _public(b"", 64, chain_key, b"e2echat ck")
    assert kdf.kdf_chain(chain_key) == (both[:32], both[32:])


@given(keys, keys)
def test_kdf_root_is_the_public_blake2b_api(root_key: bytes, dh_output: bytes) -> None:
    both = _public(dh_output, 64, root_key, b"e2echat rk")
    assert kdf.kdf_root(root_key, dh_output) == (both[:32], both[32:])


@given(st.binary(min_size=96, max_size=128))
def test_kdf_x3dh_is_blake2b_over_f_and_the_dh_outputs(material: bytes) -> None:
    expected = _public(b"\xff" * 32 + material, 32, b"", b"e2echat x3dh sk")
    assert kdf.kdf_x3dh(material) == expected
    # and the same as the stdlib's BLAKE2b: the construction is plain RFC 7693
    assert (
        expected
        == hashlib.blake2b(b"\xff" * 32 + material, digest_size=32, person=b"e2echat x3dh sk").digest()
    )


def test_the_direct_call_is_in_use_and_agrees() -> None:
    assert kdf.DIRECT_BLAKE2B
    args = (b"data", 32, bytes(32), kdf.LABEL_ROOT)
    assert kdf._direct_blake2b(*args) == kdf._public_blake2b(*args)


def test_the_direct_call_refuses_a_short_personalization() -> None:
    with pytest.raises(ValueError):
        kdf._direct_blake2b(b"", 32, bytes(32), b"short")


def test_every_label_is_distinct_and_16_bytes() -> None:
    labels = [value for name, value in vars(kdf).items() if name.startswith("LABEL_")]
    assert len(labels) == 9
    assert len(set(labels)) == len(labels)
    assert all(len(label) == 16 for label in labels)


@given(keys)
def test_outputs_of_one_key_are_unrelated(chain_key: bytes) -> None:
    """Negative twin: the two outputs differ, from each other and from the other KDFs."""
    next_chain, message = kdf.kdf_chain(chain_key)
    outputs = {next_chain, message, kdf.kdf_header_key(chain_key), *kdf.kdf_root(chain_key, b"")}
    assert len(outputs) == 5
    assert chain_key not in outputs


def test_one_flipped_input_bit_changes_every_output() -> None:
    key = bytes(range(32))
    flipped = bytes([key[0] ^ 1]) + key[1:]
    assert set(kdf.kdf_chain(key)).isdisjoint(kdf.kdf_chain(flipped))
    assert set(kdf.kdf_root(key, key)).isdisjoint(kdf.kdf_root(key, flipped))
    assert set(kdf.kdf_root(key, key)).isdisjoint(kdf.kdf_root(flipped, key))


def test_history_keys_are_independent_of_each_other_and_of_the_store_key() -> None:
    identity = bytes(range(32))
    seal, index = kdf.history_keys(identity)
    assert len({seal, index, kdf.store_key(identity)}) == 3
    assert seal + index == hashlib.blake2b(b"", key=identity, person=b"e2echat history").digest()
    other = kdf.history_keys(bytes(32))
    assert seal not in other and index not in other


def test_history_tags_depend_on_the_key_and_the_name() -> None:
    _, index = kdf.history_keys(bytes(range(32)))
    _, other = kdf.history_keys(bytes(32))
    tag = kdf.history_tag(index, b"c#lobby")
    assert len(tag) == kdf.HISTORY_TAG_SIZE
    assert tag == kdf.history_tag(index, b"c#lobby")
    assert tag != kdf.history_tag(index, b"cbob")
    assert tag != kdf.history_tag(other, b"c#lobby")
    with pytest.raises(ValueError):
        kdf.history_tag(b"short", b"c#lobby")


def test_the_public_fallback_gives_the_same_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    key = bytes(range(32))
    direct = kdf.kdf_chain(key), kdf.kdf_root(key, b"dh"), kdf.header_tag(key, b"header")
    monkeypatch.setattr(kdf, "_split", kdf._public_split)
    monkeypatch.setattr(kdf, "_blake2b", kdf._public_blake2b)
    assert (kdf.kdf_chain(key), kdf.kdf_root(key, b"dh"), kdf.header_tag(key, b"header")) == direct


@pytest.mark.parametrize("size", [0, 16, 31, 33, 64])
def test_a_key_of_the_wrong_size_is_refused(size: int) -> None:
    with pytest.raises(ValueError):
        kdf.kdf_chain(bytes(size))
    with pytest.raises(ValueError):
        kdf.kdf_root(bytes(size), bytes(32))
    with pytest.raises(ValueError):
        kdf.kdf_session(bytes(size), b"ad")
