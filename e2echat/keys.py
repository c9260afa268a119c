"""Identity keys, the profile directory that holds them, and fingerprints.

Pure apart from reading and writing the key file: no network, no asyncio.
The identity key (IK) is a long-term X25519 key pair per profile; the session key (EK)
is made fresh for every connection by ``new_session_key`` and never touches the disk.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import nacl.exceptions
import nacl.pwhash
import nacl.utils
from nacl.public import PrivateKey, PublicKey
from nacl.secret import SecretBox

from e2echat.errors import KeyFileError, PassphraseRequired, WrongPassphrase

IDENTITY_FILE = "identity.key"
_KEY_FILE_FORMAT = "e2echat-identity-v1"


@dataclass(frozen=True)
class KdfCost:
    """Argon2id work factors. MODERATE (3 passes over 256 MiB, about half a second here)
    is libsodium's advice for secrets a user types rarely; tests use less."""

    opslimit: int = nacl.pwhash.argon2id.OPSLIMIT_MODERATE
    memlimit: int = nacl.pwhash.argon2id.MEMLIMIT_MODERATE


DEFAULT_COST = KdfCost()


def profile_dir(nick: str, home: str | None = None, environ: Mapping[str, str] | None = None) -> Path:
    """Where a profile lives: ``--home``, else ``$E2ECHAT_HOME``, else the XDG data dir."""
    env = os.environ if environ is None else environ
    if home:
        return Path(home).expanduser()
    if env.get("E2ECHAT_HOME"):
        return Path(env["E2ECHAT_HOME"]).expanduser()
    data_home = env.get("XDG_DATA_HOME") or str(Path("~/.local/share").expanduser())
    return Path(data_home) / "e2echat" / nick


def new_session_key() -> PrivateKey:
    """A fresh per-connection key pair; libsodium's randomness."""
    return PrivateKey.generate()


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


def _read_document(path: Path) -> dict[str, object]:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise KeyFileError(path=path, detail=exc.strerror or str(exc)) from None
    except ValueError:
        raise KeyFileError(path=path, detail="not an e2echat identity file") from None
    if not isinstance(document, dict) or document.get("format") != _KEY_FILE_FORMAT:
        raise KeyFileError(path=path, detail="not an e2echat identity file")
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


def write_private_file(path: Path, data: bytes) -> None:
    """Replace ``path`` atomically with ``data``, readable by the owner alone."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        temporary = path.with_name(path.name + ".tmp")
        temporary.unlink(missing_ok=True)
        # O_EXCL + 0600 at creation: the secret is never readable by others, not even
        # for the moment between open() and a chmod().
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except OSError as exc:
        raise KeyFileError(path=path, detail=exc.strerror or str(exc)) from None


def fingerprint(key: PublicKey) -> str:
    """A short, readable digest of a public key: 8 groups of 4 hex digits of SHA-256."""
    digest = hashlib.sha256(b"e2echat fingerprint v1" + bytes(key)).hexdigest()[:32]
    return " ".join(digest[i : i + 4] for i in range(0, 32, 4))


# -- safety numbers -----------------------------------------------------------------------

SAFETY_ITERATIONS = 5200
_FINGERPRINT_VERSION = b"\x00\x00"
_DJB_TYPE = b"\x05"  # how Signal serializes a Curve25519 public key


def _safety_half(key: PublicKey, nick: str) -> str:
    serialized = _DJB_TYPE + bytes(key)
    digest = _FINGERPRINT_VERSION + serialized + nick.encode("utf-8")
    for _ in range(SAFETY_ITERATIONS):
        digest = hashlib.sha512(digest + serialized).digest()
    # Six chunks of 5 bytes, each a big-endian number mod 100000: 30 digits.
    return "".join(f"{int.from_bytes(digest[i : i + 5], 'big') % 100000:05d}" for i in range(0, 30, 5))


def safety_number(our_key: PublicKey, our_nick: str, their_key: PublicKey, their_nick: str) -> str:
    """The 60-digit safety number for a pair, exactly as Signal's numeric fingerprint
    (version 0, 5200 iterations of SHA-512, the nick as stable identifier): both sides
    compute the same number because the smaller half comes first."""
    ours = _safety_half(our_key, our_nick)
    theirs = _safety_half(their_key, their_nick)
    return ours + theirs if ours <= theirs else theirs + ours


def format_safety_number(number: str) -> str:
    """12 groups of 5 digits, easy to read aloud."""
    return " ".join(number[i : i + 5] for i in range(0, len(number), 5))
