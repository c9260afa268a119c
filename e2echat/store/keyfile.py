"""The identity key file: a long-term X25519 key pair per profile, optionally sealed
under a passphrase (Argon2id + SecretBox); and the relay's key file, the same without a
passphrase (a relay starts unattended). Disk I/O: used by the CLI, never by a core."""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from pathlib import Path

import nacl.exceptions
import nacl.pwhash
import nacl.utils
from nacl.public import PrivateKey, PublicKey
from nacl.secret import SecretBox

from e2echat.errors import KeyFileError, PassphraseRequired, WrongPassphrase
from e2echat.store.files import write_private_file

IDENTITY_FILE = "identity.key"
_KEY_FILE_FORMAT = "e2echat-identity-v1"
_RELAY_KEY_FORMAT = "e2echat-relay-key-v1"


@dataclass(frozen=True)
class KdfCost:
    """Argon2id work factors. MODERATE (3 passes over 256 MiB, about half a second here)
    is libsodium's advice for secrets a user types rarely; tests use less."""

    opslimit: int = nacl.pwhash.argon2id.OPSLIMIT_MODERATE
    memlimit: int = nacl.pwhash.argon2id.MEMLIMIT_MODERATE


DEFAULT_COST = KdfCost()


def load_or_create_identity(
    directory: Path, passphrase: str | None = None, *, cost: KdfCost = DEFAULT_COST
) -> tuple[PrivateKey, bool]:
    """The profile's identity key, made on first use. Returns (key, created).

    With a ``passphrase``, a new key is stored protected by it, and an existing
    unprotected key is re-saved protected by it.
    """
    path = directory / IDENTITY_FILE
    if path.exists():
        key, protected = load_identity(path, passphrase)
        if passphrase and not protected:
            save_identity(path, key, passphrase, cost=cost)
        return key, False
    key = PrivateKey.generate()
    save_identity(path, key, passphrase, cost=cost)
    return key, True


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(document: dict[str, object], name: str, path: Path) -> bytes:
    try:
        value = document[name]
        if not isinstance(value, str):
            raise TypeError(name)
        return base64.b64decode(value, validate=True)
    except (KeyError, TypeError, binascii.Error, ValueError):
        raise KeyFileError(path=path, detail=f"the {name.replace('_', ' ')} is missing or damaged") from None


def _read_document(path: Path, kind: str = _KEY_FILE_FORMAT) -> dict[str, object]:
    what = "an e2echat identity file" if kind == _KEY_FILE_FORMAT else "an e2echat relay key file"
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise KeyFileError(path=path, detail=exc.strerror or str(exc)) from None
    except ValueError:
        raise KeyFileError(path=path, detail=f"not {what}") from None
    if not isinstance(document, dict) or document.get("format") != kind:
        raise KeyFileError(path=path, detail=f"not {what}")
    return document


def is_protected(path: Path) -> bool:
    """Whether the identity file at ``path`` needs a passphrase."""
    return "protection" in _read_document(path)


def stored_public_key(path: Path) -> PublicKey:
    """The public half, readable without the passphrase."""
    raw = _unb64(_read_document(path), "public_key", path)
    if len(raw) != PublicKey.SIZE:
        raise KeyFileError(path=path, detail="the public key is missing or damaged")
    return PublicKey(raw)


def load_identity(path: Path, passphrase: str | None = None) -> tuple[PrivateKey, bool]:
    """Read an identity file. Returns (key, whether it was passphrase-protected)."""
    document = _read_document(path)
    protection = document.get("protection")
    if protection is None:
        raw = _unb64(document, "private_key", path)
    else:
        if not passphrase:
            raise PassphraseRequired(path=path)
        if not isinstance(protection, dict) or protection.get("kdf") != "argon2id":
            raise KeyFileError(path=path, detail="unknown passphrase protection")
        try:
            cost = KdfCost(int(protection["opslimit"]), int(protection["memlimit"]))
        except (KeyError, TypeError, ValueError):
            raise KeyFileError(path=path, detail="the passphrase parameters are damaged") from None
        salt = _unb64(protection, "salt", path)
        sealed = _unb64(document, "sealed_private_key", path)
        try:
            raw = SecretBox(_derive(passphrase, salt, cost)).decrypt(sealed)
        except nacl.exceptions.CryptoError:
            raise WrongPassphrase(path=path) from None
    if len(raw) != PrivateKey.SIZE:
        raise KeyFileError(path=path, detail="the private key is missing or damaged")
    key = PrivateKey(raw)
    if "public_key" in document and _unb64(document, "public_key", path) != bytes(key.public_key):
        raise KeyFileError(path=path, detail="the public key does not match the private key")
    return key, protection is not None


def _derive(passphrase: str, salt: bytes, cost: KdfCost) -> bytes:
    try:
        return nacl.pwhash.argon2id.kdf(
            SecretBox.KEY_SIZE,
            passphrase.encode("utf-8"),
            salt,
            opslimit=cost.opslimit,
            memlimit=cost.memlimit,
        )
    except (nacl.exceptions.CryptoError, ValueError):
        raise KeyFileError(path="(passphrase)", detail="the passphrase parameters are out of range") from None


def save_identity(
    path: Path, key: PrivateKey, passphrase: str | None = None, *, cost: KdfCost = DEFAULT_COST
) -> None:
    """Write the key file atomically, mode 0600, in a directory of mode 0700.

    With a passphrase, the private key is sealed with SecretBox under a key derived by
    Argon2id from the passphrase and a random salt; the public key stays readable.
    """
    document: dict[str, object] = {"format": _KEY_FILE_FORMAT, "public_key": _b64(bytes(key.public_key))}
    if passphrase:
        salt = nacl.utils.random(nacl.pwhash.argon2id.SALTBYTES)
        document["protection"] = {
            "kdf": "argon2id",
            "opslimit": cost.opslimit,
            "memlimit": cost.memlimit,
            "salt": _b64(salt),
        }
        document["sealed_private_key"] = _b64(
            bytes(SecretBox(_derive(passphrase, salt, cost)).encrypt(bytes(key)))
        )
    else:
        document["private_key"] = _b64(bytes(key))
    write_private_file(path, (json.dumps(document, indent=2) + "\n").encode("utf-8"))


def load_or_create_relay_key(path: Path) -> tuple[PrivateKey, bool]:
    """The relay's long-term key in ``path``, made on first use (mode 0600, in a
    directory of mode 0700). Returns (key, created).

    Clients pin its public half: a relay that loses this file looks like an impostor to
    every client that met it before.
    """
    if not path.exists():
        key = PrivateKey.generate()
        new = {
            "format": _RELAY_KEY_FORMAT,
            "public_key": _b64(bytes(key.public_key)),
            "private_key": _b64(bytes(key)),
        }
        write_private_file(path, (json.dumps(new, indent=2) + "\n").encode("utf-8"))
        return key, True
    document = _read_document(path, _RELAY_KEY_FORMAT)
    raw = _unb64(document, "private_key", path)
    if len(raw) != PrivateKey.SIZE:
        raise KeyFileError(path=path, detail="the private key is missing or damaged")
    key = PrivateKey(raw)
    if _unb64(document, "public_key", path) != bytes(key.public_key):
        raise KeyFileError(path=path, detail="the public key does not match the private key")
    return key, False
