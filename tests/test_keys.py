"""Identity key files, profile directories, fingerprints and safety numbers."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import stat
from pathlib import Path

import nacl.pwhash
import pytest
from nacl.public import PrivateKey, PublicKey

from e2echat.crypto.identity import fingerprint
from e2echat.errors import KeyFileError, PassphraseRequired, WrongPassphrase
from e2echat.store.keyfile import (
    IDENTITY_FILE,
    KdfCost,
    is_protected,
    load_identity,
    load_or_create_identity,
    load_or_create_relay_key,
    save_identity,
    stored_public_key,
)
from e2echat.store.profiles import profile_dir

# The cheapest Argon2id libsodium allows: these tests check the file format, not the KDF.
CHEAP = KdfCost(nacl.pwhash.argon2id.OPSLIMIT_MIN, nacl.pwhash.argon2id.MEMLIMIT_MIN)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# -- creating and loading -----------------------------------------------------------------


def test_first_use_creates_a_private_key_file(tmp_path: Path) -> None:
    directory = tmp_path / "profile"
    key, created = load_or_create_identity(directory)
    assert created is True
    path = directory / IDENTITY_FILE
    assert _mode(path) == 0o600
    assert _mode(directory) == 0o700
    assert sorted(p.name for p in directory.iterdir()) == [IDENTITY_FILE]  # no temporary left behind
    document = json.loads(path.read_text(encoding="utf-8"))
    assert document["public_key"] == _b64(bytes(key.public_key))


def test_the_relay_key_is_made_once_privately_and_loaded_after(tmp_path: Path) -> None:
    path = tmp_path / "relay" / "relay.key"
    key, created = load_or_create_relay_key(path)
    assert created and _mode(path) == 0o600 and _mode(path.parent) == 0o700
    again, created = load_or_create_relay_key(path)
    assert not created and bytes(again) == bytes(key)


def test_a_damaged_relay_key_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "relay.key"
    path.write_text("{}")
    with pytest.raises(KeyFileError, match="not an e2echat relay key file"):
        load_or_create_relay_key(path)
    load_or_create_identity(tmp_path / "alice")  # an identity is not a relay key
    with pytest.raises(KeyFileError, match="not an e2echat relay key file"):
        load_or_create_relay_key(tmp_path / "alice" / IDENTITY_FILE)
    load_or_create_relay_key(path.with_name("good.key"))
    document = json.loads(path.with_name("good.key").read_text())
    document["public_key"] = document["private_key"]
    path.write_text(json.dumps(document))
    with pytest.raises(KeyFileError, match="does not match"):
        load_or_create_relay_key(path)


def test_second_use_loads_the_same_key(tmp_path: Path) -> None:
    first, created_first = load_or_create_identity(tmp_path / "p")
    second, created_second = load_or_create_identity(tmp_path / "p")
    assert (created_first, created_second) == (True, False)
    assert bytes(second) == bytes(first)
    assert _mode(tmp_path / "p" / IDENTITY_FILE) == 0o600


def test_each_profile_gets_its_own_key(tmp_path: Path) -> None:
    alice, _ = load_or_create_identity(tmp_path / "alice")
    bob, _ = load_or_create_identity(tmp_path / "bob")
    assert bytes(alice) != bytes(bob)


def test_save_replaces_an_existing_file_and_keeps_it_private(tmp_path: Path) -> None:
    path = tmp_path / "p" / IDENTITY_FILE
    save_identity(path, PrivateKey.generate())
    path.chmod(0o644)  # someone loosened it
    key = PrivateKey.generate()
    save_identity(path, key)
    assert _mode(path) == 0o600
    assert bytes(load_identity(path)[0]) == bytes(key)


_VALID = PrivateKey.generate()
_CORRUPT: dict[str, bytes] = {
    "empty": b"",
    "garbage": b"\x00\xff\xfe garbage \x80",
    "not-json": b"private_key = abc",
    "json-list": b"[]",
    "wrong-format": json.dumps({"format": "ssh-ed25519", "private_key": _b64(bytes(_VALID))}).encode(),
    "no-format": json.dumps({"private_key": _b64(bytes(_VALID))}).encode(),
    "missing-key": json.dumps({"format": "e2echat-identity-v1"}).encode(),
    "bad-base64": json.dumps({"format": "e2echat-identity-v1", "private_key": "not*base64!"}).encode(),
    "key-not-string": json.dumps({"format": "e2echat-identity-v1", "private_key": 12345}).encode(),
    "key-31-bytes": json.dumps({"format": "e2echat-identity-v1", "private_key": _b64(b"k" * 31)}).encode(),
    "key-33-bytes": json.dumps({"format": "e2echat-identity-v1", "private_key": _b64(b"k" * 33)}).encode(),
    "public-key-mismatch": json.dumps(
        {
            "format": "e2echat-identity-v1",
            "private_key": _b64(bytes(_VALID)),
            "public_key": _b64(bytes(PrivateKey.generate().public_key)),
        }
    ).encode(),
}


@pytest.mark.parametrize("content", _CORRUPT.values(), ids=_CORRUPT.keys())
def test_corrupted_key_file_raises_key_file_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / IDENTITY_FILE
    path.write_bytes(content)
    with pytest.raises(KeyFileError) as caught:
        load_or_create_identity(tmp_path)
    assert str(path) in str(caught.value)
    # A damaged key file is never silently replaced by a new identity.
    assert path.read_bytes() == content


def test_key_file_that_is_a_directory_raises_key_file_error(tmp_path: Path) -> None:
    (tmp_path / IDENTITY_FILE).mkdir()
    with pytest.raises(KeyFileError):
        load_or_create_identity(tmp_path)


def test_uncreatable_profile_directory_raises_key_file_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(KeyFileError):
        load_or_create_identity(blocker / "profile")


# -- passphrase protection ----------------------------------------------------------------


# Round trips, wrong and missing passphrases are in test_trust.py; these add what it does not.


def test_protected_file_keeps_only_the_public_key_readable(tmp_path: Path) -> None:
    key, created = load_or_create_identity(tmp_path, "correct horse", cost=CHEAP)
    assert created
    path = tmp_path / IDENTITY_FILE
    assert is_protected(path)
    assert _b64(bytes(key)) not in path.read_text(encoding="utf-8")
    assert stored_public_key(path) == key.public_key
    assert _mode(path) == 0o600
    with pytest.raises(PassphraseRequired):
        load_or_create_identity(tmp_path)  # and it is not replaced by a fresh key
    assert bytes(load_or_create_identity(tmp_path, "correct horse", cost=CHEAP)[0]) == bytes(key)


def test_wrong_passphrase_does_not_replace_the_key(tmp_path: Path) -> None:
    load_or_create_identity(tmp_path, "correct horse", cost=CHEAP)
    before = (tmp_path / IDENTITY_FILE).read_bytes()
    with pytest.raises(WrongPassphrase):
        load_or_create_identity(tmp_path, "battery staple", cost=CHEAP)
    assert (tmp_path / IDENTITY_FILE).read_bytes() == before


def test_tampered_sealed_key_is_refused(tmp_path: Path) -> None:
    load_or_create_identity(tmp_path, "pw", cost=CHEAP)
    path = tmp_path / IDENTITY_FILE
    document = json.loads(path.read_text(encoding="utf-8"))
    sealed = bytearray(base64.b64decode(document["sealed_private_key"]))
    sealed[-1] ^= 0x01
    document["sealed_private_key"] = _b64(bytes(sealed))
    path.write_text(json.dumps(document), encoding="utf-8")
    with pytest.raises(WrongPassphrase):  # indistinguishable from a wrong passphrase, by design
        load_identity(path, "pw")


# -- where profiles live ------------------------------------------------------------------


def test_profile_dir_prefers_home_argument() -> None:
    environ = {"E2ECHAT_HOME": "/env/home", "XDG_DATA_HOME": "/xdg"}
    assert profile_dir("alice", "/explicit", environ) == Path("/explicit")


def test_profile_dir_then_e2echat_home() -> None:
    environ = {"E2ECHAT_HOME": "/env/home", "XDG_DATA_HOME": "/xdg"}
    assert profile_dir("alice", None, environ) == Path("/env/home")


def test_profile_dir_then_xdg_data_home_per_nick() -> None:
    environ = {"XDG_DATA_HOME": "/xdg"}
    assert profile_dir("alice", None, environ) == Path("/xdg/e2echat/alice")
    assert profile_dir("bob", None, environ) == Path("/xdg/e2echat/bob")


def test_profile_dir_empty_values_fall_through() -> None:
    environ = {"E2ECHAT_HOME": "", "XDG_DATA_HOME": "/xdg"}
    assert profile_dir("alice", "", environ) == Path("/xdg/e2echat/alice")


def test_profile_dir_default_is_under_local_share(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert profile_dir("alice", None, {}) == tmp_path / ".local/share/e2echat/alice"


def test_profile_dir_expands_tilde(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert profile_dir("alice", "~/chat", {}) == tmp_path / "chat"
    assert profile_dir("alice", None, {"E2ECHAT_HOME": "~/env"}) == tmp_path / "env"


def test_profile_dir_ignores_the_real_environment_when_given_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("E2ECHAT_HOME", "/from/os/environ")
    assert profile_dir("alice", None, {"XDG_DATA_HOME": "/xdg"}) == Path("/xdg/e2echat/alice")


# -- fingerprints and safety numbers ------------------------------------------------------


def test_fingerprint_is_stable_and_readable() -> None:
    key = PrivateKey.generate().public_key
    shown = fingerprint(key)
    assert shown == fingerprint(PublicKey(bytes(key)))
    assert re.fullmatch(r"([0-9a-f]{4} ){7}[0-9a-f]{4}", shown)


def test_fingerprint_known_answer() -> None:
    """Pinned: fingerprints people wrote down must stay valid across versions."""
    key = PublicKey(bytes(range(32)))
    digest = hashlib.sha256(b"e2echat fingerprint v1" + bytes(range(32))).hexdigest()[:32]
    assert fingerprint(key) == " ".join(digest[i : i + 4] for i in range(0, 32, 4))


def test_fingerprints_of_different_keys_differ() -> None:
    keys = [PrivateKey.generate().public_key for _ in range(50)]
    assert len({fingerprint(k) for k in keys}) == 50
    one = bytes(range(32))
    assert fingerprint(PublicKey(one)) != fingerprint(PublicKey(one[:-1] + b"\x00"))
