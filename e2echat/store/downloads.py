"""Files on their way, on the disk: a file to send, read in chunks, and the landing of one
received. Every call here blocks: the shell (client/filepump.py) makes them in a thread.

A file received is written to a partial file (``NAME.ID.part``, 0600, created new, so
never anyone else's file) in the downloads directory, hashed as it is written, and
checked against the hash its offer carried before it gets its name. The name
(``files.safe_name``: no directory, no ``..``, no hidden file) is taken only if free:
``report.pdf``, else ``report (1).pdf``, and so on; an existing file is never replaced.
A partial file that fails the check is deleted.

What each transfer is (``Record``: peer, id, name, size, hash; for a file sent, its path)
is kept for a later run beside its partial file, and in the profile for a file being sent,
sealed (``RecordSeal``) under the profile's store key: only the partial file itself, the
user's download, is in plain text.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import nacl.exceptions
from nacl.secret import SecretBox

from e2echat.client.fileparts import DIGEST_SIZE
from e2echat.errors import LocalProtocolError, TransferFileError
from e2echat.store.files import write_private_file
from e2echat.store.sealed import named_payload, unpack_named

PART_SUFFIX = ".part"
#: beside each partial file, what it is part of (sealed), so that a transfer interrupted
#: by a restart resumes (``kept_landings``)
RECORD_SUFFIX = ".part.record"
#: in the profile's sending/, one (sealed) per file being sent
SENDING_SUFFIX = ".record"
#: a record is a few hundred bytes: a larger file under its name is not one
MAX_RECORD = 16 * 1024
#: what a seal names besides the file it is kept in: a record of a file received cannot
#: pass for one of a file sent, nor the other way round
_LANDING, _SENDING = "landing/", "sending/"
#: how many "NAME (N).ext" are tried before giving up: a directory with that many copies
#: of one name is not a place to land another
MAX_COPIES = 10_000
#: read this much at a time when hashing a whole file
_READ = 1024 * 1024
#: the plain-text records of the first files build (beside a partial file: NAME.ID.part.json,
#: ID the transfer's first 16 hex digits; in sending/: the whole ID.json): they named the
#: peer, the file and its hash unsealed. A name alone is not enough to delete a file (the
#: downloads directory may be a shared folder, with a user's ``backup.ID.part.json``):
#: what goes is a small JSON object of ours, with exactly one of its key sets, that names
#: the very file it is in (``_is_plain_record``).
_PLAIN_LANDING = re.compile(r".+\.[0-9a-f]{16}\.part\.json")
_PLAIN_SENDING = re.compile(r"[0-9a-f]{32}\.json")
#: its keys: beside a partial file, before files sent resumed ("sender"), then either kind
_PLAIN_KEYS = (
    frozenset({"sender", "transfer", "name", "size", "chunk_size", "digest"}),
    frozenset({"peer", "transfer", "name", "size", "chunk_size", "digest", "path"}),
)
_HEX_ID, _HEX_DIGEST = re.compile(r"[0-9a-f]{32}"), re.compile(r"[0-9a-f]{64}")


def default_downloads(env: Mapping[str, str] | None = None) -> Path:
    """``$XDG_DOWNLOAD_DIR/e2echat``, else ``~/Downloads/e2echat``."""
    env = os.environ if env is None else env
    base = env.get("XDG_DOWNLOAD_DIR") or str(Path("~/Downloads").expanduser())
    return Path(base) / "e2echat"


def new_digest() -> hashlib.blake2b:
    return hashlib.blake2b(digest_size=DIGEST_SIZE)


def file_digest(path: Path) -> tuple[int, bytes]:
    """The size of the file at ``path`` and its BLAKE2b-256, read once."""
    digest = new_digest()
    size = 0
    try:
        with path.open("rb") as handle:
            while block := handle.read(_READ):
                digest.update(block)
                size += len(block)
    except OSError as exc:
        raise TransferFileError(path=path, detail=exc.strerror or str(exc)) from None
    return size, digest.digest()


class Source:
    """A file being sent: read at any offset (a resumed transfer goes back). ``path`` is
    where it is, every link followed."""

    def __init__(self, path: Path) -> None:
        try:
            self.path = path.resolve()
            self._fd = os.open(self.path, os.O_RDONLY)
        except OSError as exc:
            raise TransferFileError(path=path, detail=exc.strerror or str(exc)) from None
        if not stat.S_ISREG(os.fstat(self._fd).st_mode):
            self.close()
            raise TransferFileError(path=path, detail="it is not a file")

    def digest(self) -> tuple[int, bytes]:
        """The size of the file and its BLAKE2b-256, read once through the very file that
        is then sent (not its name again: it may name another by then)."""
        digest = new_digest()
        size = 0
        try:
            while block := os.pread(self._fd, _READ, size):
                digest.update(block)
                size += len(block)
        except OSError as exc:
            raise TransferFileError(path=self.path, detail=exc.strerror or str(exc)) from None
        return size, digest.digest()

    def read(self, offset: int, length: int) -> bytes:
        try:
            data = os.pread(self._fd, length, offset)
        except OSError as exc:
            raise TransferFileError(path=self.path, detail=exc.strerror or str(exc)) from None
        if len(data) != length:
            raise TransferFileError(path=self.path, detail="it changed while it was being sent")
        return data

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)


@dataclass(frozen=True)
class Record:
    """What a transfer is, enough to take it up again after a restart: beside a partial
    file (one received), or in the profile (one sent, ``path`` the file)."""

    #: who sends the file received, or receives the file sent
    peer: str
    transfer_id: bytes
    name: str
    size: int
    chunk_size: int
    digest: bytes
    path: str = ""
    #: a file sent: the room it was offered in ("": to ``peer`` alone)
    room: str = ""

    def to_json(self) -> bytes:
        fields = {
            "peer": self.peer,
            "transfer": self.transfer_id.hex(),
            "name": self.name,
            "size": self.size,
            "chunk_size": self.chunk_size,
            "digest": self.digest.hex(),
            "path": self.path,
            "room": self.room,
        }
        return json.dumps(fields).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes) -> Record | None:
        """The record in ``data``; None if it is not one (damaged, or not ours)."""
        try:
            fields = json.loads(data)
            record = cls(
                str(fields["peer"]),
                bytes.fromhex(fields["transfer"]),
                str(fields["name"]),
                int(fields["size"]),
                int(fields["chunk_size"]),
                bytes.fromhex(fields["digest"]),
                str(fields.get("path", "")),
                str(fields.get("room", "")),
            )
        except (ValueError, TypeError, KeyError, AttributeError):
            return None
        valid = len(record.transfer_id) == 16 and len(record.digest) == DIGEST_SIZE and record.chunk_size > 0
        return record if valid and record.size >= 0 else None

    @property
    def part_name(self) -> str:
        return f"{self.name}.{self.transfer_id.hex()[:16]}"


class RecordSeal:
    """Seals records under the profile's store key (kdf.store_key): a SecretBox
    (XSalsa20-Poly1305, random nonce) of the record and, inside it, where it is kept (its
    file's name, and whether it is a file received or sent), as store/sealed.py seals its
    rows. A record copied under another name, sealed by another profile, or changed, does
    not open; as there, the seal gives no freshness (an older copy of one opens)."""

    def __init__(self, key: bytes) -> None:
        if len(key) != SecretBox.KEY_SIZE:
            raise LocalProtocolError(detail=f"a record's key has {SecretBox.KEY_SIZE} bytes, not {len(key)}")
        self._box = SecretBox(key)

    def seal(self, where: str, record: Record) -> bytes:
        return bytes(self._box.encrypt(named_payload(where, record.to_json())))

    def open(self, where: str, sealed: bytes) -> Record | None:
        """The record sealed in ``sealed`` for ``where``; None if it does not open."""
        try:
            payload = unpack_named(where, self._box.decrypt(sealed))
        except (nacl.exceptions.CryptoError, ValueError):  # too short, or not authentic
            return None
        return None if payload is None else Record.from_json(payload)


class Landing:
    """Where one file received is written: ``directory``/``name``, by way of a partial
    file named ``part_name`` + ".part" (the name and the transfer's id), and beside it
    its ``Record``. A transfer that pauses keeps its landing open, and resumes where it
    was written to; after a restart, ``kept_landings`` finds it again."""

    def __init__(self, directory: Path, name: str, part_name: str) -> None:
        if "/" in name or name in ("", ".", "..") or "/" in part_name:
            raise ValueError("a landing's names are single path parts")  # files.safe_name's job
        self.directory = directory
        self.name = name
        self.part = directory / f"{part_name}{PART_SUFFIX}"
        self.record = directory / f"{part_name}{RECORD_SUFFIX}"
        self._fd: int | None = None
        self._digest = new_digest()
        self.written = 0

    def open(self, record: Record | None = None, seal: RecordSeal | None = None) -> int:
        """Create the partial file (and its ``record``, sealed by ``seal``); returns how
        many bytes of the file are there (0)."""
        if (record is None) != (seal is None):
            raise ValueError("a record is kept sealed, and a seal is for a record")
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            # O_EXCL: a file (or a link) already under the partial file's name is nobody's
            # to write into; O_CREAT's mode is the file's from its first moment.
            self._fd = os.open(self.part, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            raise TransferFileError(path=self.part, detail=exc.strerror or str(exc)) from None
        if record is None or seal is None:
            return 0
        sealed = seal.seal(_LANDING + self.record.name, record)
        try:
            fd = os.open(self.record, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            # (the record's name is not ours: the partial file goes, and only it)
            self._close()
            with contextlib.suppress(FileNotFoundError):
                self.part.unlink()
            raise TransferFileError(path=self.record, detail=exc.strerror or str(exc)) from None
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(sealed)
        except OSError as exc:  # a full disk: neither file is left
            self.discard()
            raise TransferFileError(path=self.record, detail=exc.strerror or str(exc)) from None
        return 0

    def reopen(self, chunk_size: int) -> int:
        """Open the partial file kept from before a restart; returns how many bytes of it
        are kept (whole chunks only: one cut short by a crash is written again), whose
        hash is taken again so that the whole file is checked."""
        try:
            fd = os.open(self.part, os.O_RDWR | os.O_NOFOLLOW)
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid():
                os.close(fd)
                raise TransferFileError(path=self.part, detail="not a partial file of ours")
            kept = info.st_size // chunk_size * chunk_size
            os.ftruncate(fd, kept)
            self._fd = fd
            at = 0
            while at < kept:
                block = os.pread(fd, min(_READ, kept - at), at)
                if not block:
                    break
                self._digest.update(block)
                at += len(block)
        except OSError as exc:
            raise TransferFileError(path=self.part, detail=exc.strerror or str(exc)) from None
        self.written = at
        return at

    def keep(self) -> None:
        """Close the partial file, and keep it (and its record) for a later run."""
        self._close()

    def write(self, offset: int, data: bytes) -> None:
        """Write ``data`` at ``offset``: chunks come in order, each right after the last."""
        if self._fd is None or offset != self.written:
            raise ValueError("chunks are written in order")  # files.Transfers' job
        try:
            view = memoryview(data)
            while view:
                done = os.pwrite(self._fd, view, offset)
                view, offset = view[done:], offset + done
        except OSError as exc:
            raise TransferFileError(path=self.part, detail=exc.strerror or str(exc)) from None
        self._digest.update(data)
        self.written += len(data)

    def finish(self, digest: bytes) -> Path | None:
        """Check the whole file against ``digest``; if it matches, give it its name (the
        first free one) and return where it is; if not, delete it and return None."""
        if not hmac.compare_digest(self._digest.digest(), digest):
            self.discard()
            return None
        try:
            assert self._fd is not None
            os.fsync(self._fd)
            self._close()
            final = self._claim()
            # The name is ours (created new, empty): replacing it replaces nobody's file.
            os.replace(self.part, final)
            with contextlib.suppress(FileNotFoundError):
                self.record.unlink()
            with contextlib.suppress(OSError):
                directory = os.open(self.directory, os.O_RDONLY)
                try:
                    os.fsync(directory)
                finally:
                    os.close(directory)
        except OSError as exc:
            raise TransferFileError(path=self.part, detail=exc.strerror or str(exc)) from None
        return final

    def discard(self) -> None:
        """Delete the partial file (a transfer that ended without it)."""
        self._close()
        for path in (self.part, self.record):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def _close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    def _claim(self) -> Path:
        """The first free name of ``name``, ``name (1)``, ... created empty, 0600, by us."""
        stem, dot, extension = self.name.rpartition(".")
        if not stem:
            stem, dot, extension = self.name, "", ""
        for copy in range(MAX_COPIES):
            candidate = self.name if not copy else f"{stem} ({copy}){dot}{extension}"
            path = self.directory / candidate
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            except FileExistsError:
                continue
            os.close(fd)
            return path
        raise TransferFileError(
            path=self.directory / self.name, detail=f"{MAX_COPIES} files have its name already"
        )


def kept_landings(directory: Path, seal: RecordSeal) -> list[tuple[Record, Landing]]:
    """The partial files of transfers an earlier run left (each with its record), to
    resume. A record that does not open (another profile's, or damaged), or names a
    partial file that is not there, is left alone."""
    found = []
    try:
        paths = sorted(directory.glob(f"*{RECORD_SUFFIX}"))
    except OSError:
        return []
    for path in paths:
        try:
            if path.is_symlink() or path.stat().st_size > MAX_RECORD:
                continue
            record = seal.open(_LANDING + path.name, path.read_bytes())
        except OSError:
            continue
        if record is None or path.name != f"{record.part_name}{RECORD_SUFFIX}":
            continue
        try:
            landing = Landing(directory, record.name, record.part_name)
        except ValueError:
            continue
        if landing.part.is_file():
            found.append((record, landing))
    return found


def remove_plaintext_records(downloads: Path, sending: Path | None) -> tuple[int, list[str]]:
    """Delete the plain-text records the first files build left, beside partial files in
    ``downloads`` and in the profile's ``sending``; only those that are recognisably ours
    (``_is_plain_record``): any other file stays, whatever its name. The partial files stay
    (the user's bytes; their transfers do not resume). Returns how many went, and what could
    not be deleted (each with why)."""
    found: list[tuple[Path, bool]] = []
    for directory, pattern, landing in ((downloads, _PLAIN_LANDING, True), (sending, _PLAIN_SENDING, False)):
        if directory is None:
            continue
        try:
            found += [(path, landing) for path in directory.iterdir() if pattern.fullmatch(path.name)]
        except OSError:
            continue  # no such directory (yet): nothing was left there
    removed, problems = 0, []
    for path, landing in sorted(found):
        identity = _plain_record(path, landing)
        try:
            # (the very file read: not another put under its name since)
            if identity is None or identity != _identity(os.lstat(path)):
                continue
            path.unlink()
        except FileNotFoundError:
            continue
        except OSError as exc:
            problems.append(f"{path}: {exc.strerror or exc}")
            continue
        removed += 1
    return removed, problems


def _plain_record(path: Path, landing: bool) -> tuple[int, int] | None:
    """The device and inode of the file at ``path`` if it is a plain-text record of the
    first files build (beside a partial file if ``landing``, else in sending/); None if it
    is anything else: not a regular file of ours (a link is not followed), larger than a
    record, not a JSON object with exactly a record's keys, or naming another file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid() or info.st_size > MAX_RECORD:
            return None
        data = os.read(fd, MAX_RECORD + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    try:
        fields = json.loads(data)
    except ValueError:  # (UnicodeDecodeError is one)
        return None
    if not isinstance(fields, dict) or frozenset(fields) not in _PLAIN_KEYS:
        return None
    transfer, name = fields["transfer"], fields["name"]
    texts = [value for key, value in fields.items() if key not in ("size", "chunk_size")]
    numbers = [fields["size"], fields["chunk_size"]]
    if not all(isinstance(value, str) for value in texts) or not all(type(value) is int for value in numbers):
        return None
    if not _HEX_ID.fullmatch(transfer) or not _HEX_DIGEST.fullmatch(fields["digest"]):
        return None
    if landing:
        ours = path.name == f"{name}.{transfer[:16]}.part.json"
    else:
        ours = "path" in fields and path.name == f"{transfer}.json"
    return _identity(info) if ours else None


def _identity(info: os.stat_result) -> tuple[int, int]:
    return info.st_dev, info.st_ino


# -- files being sent, across restarts ------------------------------------------------------


def keep_sending(directory: Path, record: Record, seal: RecordSeal) -> None:
    """Keep ``record`` (a file being sent) in ``directory``, sealed, for a later run to go on."""
    name = f"{record.transfer_id.hex()}{SENDING_SUFFIX}"
    write_private_file(directory / name, seal.seal(_SENDING + name, record))


def forget_sending(directory: Path, transfer_id: bytes) -> None:
    with contextlib.suppress(FileNotFoundError):
        (directory / f"{transfer_id.hex()}{SENDING_SUFFIX}").unlink()


def kept_sending(directory: Path, seal: RecordSeal) -> list[Record]:
    """The files an earlier run was sending (each still there, and of the size offered);
    the records of the others are forgotten. One that does not open is left alone."""
    found = []
    try:
        paths = sorted(directory.glob(f"*{SENDING_SUFFIX}"))
    except OSError:
        return []
    for path in paths:
        try:
            too_big = path.is_symlink() or path.stat().st_size > MAX_RECORD
            record = None if too_big else seal.open(_SENDING + path.name, path.read_bytes())
        except OSError:
            continue
        if record is None or path.name != f"{record.transfer_id.hex()}{SENDING_SUFFIX}":
            continue
        try:
            there = Path(record.path).stat().st_size == record.size
        except OSError:
            there = False
        if there:
            found.append(record)
        else:
            forget_sending(directory, record.transfer_id)
    return found
