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
from pathlib import Path

from nacl.public import PrivateKey, PublicKey

from e2echat.errors import KeyFileError

IDENTITY_FILE = "identity.key"
_KEY_FILE_FORMAT = "e2echat-identity-v1"


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


def load_or_create_identity(directory: Path) -> tuple[PrivateKey, bool]:
    """The profile's identity key, made on first use. Returns (key, created)."""
    path = directory / IDENTITY_FILE
    if path.exists():
        return load_identity(path), False
    key = PrivateKey.generate()
    save_identity(path, key)
    return key, True


def load_identity(path: Path) -> PrivateKey:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise KeyFileError(path=path, detail=exc.strerror or str(exc)) from None
    except ValueError:
        raise KeyFileError(path=path, detail="not an e2echat identity file") from None
    if not isinstance(document, dict) or document.get("format") != _KEY_FILE_FORMAT:
        raise KeyFileError(path=path, detail="not an e2echat identity file")
    try:
        raw = base64.b64decode(document["private_key"], validate=True)
    except (KeyError, TypeError, binascii.Error, ValueError):
        raise KeyFileError(path=path, detail="the private key is missing or damaged") from None
    if len(raw) != PrivateKey.SIZE:
        raise KeyFileError(path=path, detail="the private key is missing or damaged")
    return PrivateKey(raw)


def save_identity(path: Path, key: PrivateKey) -> None:
    """Write the key file atomically, mode 0600, in a directory of mode 0700."""
    document = {
        "format": _KEY_FILE_FORMAT,
        "private_key": base64.b64encode(bytes(key)).decode("ascii"),
        "public_key": base64.b64encode(bytes(key.public_key)).decode("ascii"),
    }
    data = (json.dumps(document, indent=2) + "\n").encode("utf-8")
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
