"""The landing of a file received (store/downloads.py), on a real disk: a new partial
file readable by us alone, the hash checked before the file is named, never a file
replaced, and whatever name a peer sends landing inside the downloads directory."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import pytest

from e2echat.client.filenames import safe_name
from e2echat.errors import TransferFileError
from e2echat.store.downloads import (
    RECORD_SUFFIX,
    Landing,
    Record,
    RecordSeal,
    Source,
    default_downloads,
    file_digest,
    forget_sending,
    keep_sending,
    kept_landings,
    kept_sending,
    remove_plaintext_records,
)


def blake(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=32).digest()


def land(directory: Path, offered: str, data: bytes, *, claimed: bytes | None = None) -> Path | None:
    name = safe_name(offered)
    landing = Landing(directory, name, f"{name}.0123456789abcdef")
    assert landing.open() == 0
    for offset in range(0, len(data), 1000):
        landing.write(offset, data[offset : offset + 1000])
    return landing.finish(blake(data) if claimed is None else claimed)


@pytest.mark.parametrize(
    "offered",
    ["../../x", "/etc/passwd", "a\x1b]0;owned\x07.txt", "x" * 10_000, ".bashrc", "..", "\u202egnp.exe"],
    ids=["dot-dot", "absolute", "terminal-title", "10000-chars", "dotfile", "only-dots", "bidi"],
)
def test_every_name_lands_inside_the_directory(tmp_path: Path, offered: str) -> None:
    downloads = tmp_path / "downloads"
    landed = land(downloads, offered, b"contents")
    assert landed is not None and landed.parent == downloads
    assert landed.read_bytes() == b"contents"
    assert not landed.name.startswith(".")
    assert all(ord(char) >= 0x20 and char not in "\u202e/" for char in landed.name)
    assert sorted(p.name for p in tmp_path.rglob("*")) == sorted(["downloads", landed.name])


def test_an_existing_file_is_never_replaced(tmp_path: Path) -> None:
    (tmp_path / "report.pdf").write_bytes(b"mine")
    (tmp_path / "report (1).pdf").write_bytes(b"mine too")
    first = land(tmp_path, "report.pdf", b"theirs")
    second = land(tmp_path, "report.pdf", b"theirs again")
    assert (first, second) == (tmp_path / "report (2).pdf", tmp_path / "report (3).pdf")
    assert (tmp_path / "report.pdf").read_bytes() == b"mine"
    assert (tmp_path / "report (1).pdf").read_bytes() == b"mine too"
    assert land(tmp_path, "README", b"x") == tmp_path / "README"
    assert land(tmp_path, "README", b"y") == tmp_path / "README (1)"


def test_a_link_in_the_way_is_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_bytes(b"precious")
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    (downloads / "report.pdf").symlink_to(target)  # planted under the file's name
    landed = land(downloads, "report.pdf", b"theirs")
    assert landed == downloads / "report (1).pdf"
    assert target.read_bytes() == b"precious"
    # ... nor one under the partial file's name: the transfer fails instead
    (downloads / "evil.0123456789abcdef.part").symlink_to(target)
    with pytest.raises(TransferFileError):
        Landing(downloads, "evil", "evil.0123456789abcdef").open()
    assert target.read_bytes() == b"precious"


def test_the_partial_file_and_the_file_are_ours_alone(tmp_path: Path) -> None:
    landing = Landing(tmp_path, "report.pdf", "report.pdf.00")
    landing.open()
    assert stat.S_IMODE(os.stat(landing.part).st_mode) == 0o600
    landing.write(0, b"abc")
    landed = landing.finish(blake(b"abc"))
    assert landed is not None and stat.S_IMODE(landed.stat().st_mode) == 0o600
    assert not landing.part.exists()


def test_a_file_that_does_not_match_its_hash_is_deleted(tmp_path: Path) -> None:
    assert land(tmp_path, "report.pdf", b"contents", claimed=blake(b"other contents")) is None
    assert list(tmp_path.iterdir()) == []
    # and one flipped bit is enough
    flipped = bytearray(blake(b"contents"))
    flipped[0] ^= 1
    assert land(tmp_path, "report.pdf", b"contents", claimed=bytes(flipped)) is None


def test_chunks_are_written_in_order_only(tmp_path: Path) -> None:
    landing = Landing(tmp_path, "f", "f.00")
    landing.open()
    landing.write(0, b"ab")
    with pytest.raises(ValueError):
        landing.write(5, b"cd")
    landing.discard()
    assert list(tmp_path.iterdir()) == []


def test_a_landing_takes_single_names_only(tmp_path: Path) -> None:
    for name in ("../x", "a/b", "", ".."):
        with pytest.raises(ValueError):
            Landing(tmp_path, name, "part")


def test_a_source_reads_what_it_hashed(tmp_path: Path) -> None:
    path = tmp_path / "big"
    data = os.urandom(3 * 1024 * 1024 + 5)  # test data only
    path.write_bytes(data)
    assert file_digest(path) == (len(data), blake(data))
    source = Source(path)
    assert source.read(1024, 10) == data[1024:1034]
    with pytest.raises(TransferFileError, match="changed"):
        source.read(len(data) - 2, 10)  # shorter than it was said to be
    source.close()
    with pytest.raises(TransferFileError):
        file_digest(tmp_path / "missing")


def test_the_default_downloads_directory() -> None:
    assert default_downloads({"XDG_DOWNLOAD_DIR": "/data/dl"}) == Path("/data/dl/e2echat")
    assert default_downloads({}) == Path("~/Downloads/e2echat").expanduser()


SEAL = RecordSeal(bytes(range(32)))


def _record(path: str = "", size: int = 3) -> Record:
    return Record("alice", bytes(range(16)), "report.pdf", size, 1024, blake(b"abc"), path)


def test_a_partial_file_is_found_again_by_its_record(tmp_path: Path) -> None:
    record = _record()
    landing = Landing(tmp_path, record.name, record.part_name)
    landing.open(record, SEAL)
    landing.write(0, b"x" * 1500)  # a chunk and a half: the half is written again
    landing.keep()
    ((found, again),) = kept_landings(tmp_path, SEAL)
    assert found == record
    assert again.reopen(record.chunk_size) == 1024
    assert again.part.stat().st_size == 1024
    again.discard()
    assert list(tmp_path.iterdir()) == []


def test_records_that_do_not_parse_or_fit_are_left_alone(tmp_path: Path) -> None:
    (tmp_path / "junk.part.record").write_text("{not json")
    record = _record()
    (tmp_path / f"{record.part_name}.part").write_bytes(b"")
    where = f"landing/other{RECORD_SUFFIX}"  # sealed as another's record
    (tmp_path / f"other{RECORD_SUFFIX}").write_bytes(SEAL.seal(where, record))
    assert Record.from_json(b'{"peer": "a"}') is None
    assert Record.from_json(b"[]") is None
    assert kept_landings(tmp_path, SEAL) == []
    assert kept_landings(tmp_path / "missing", SEAL) == []


def test_records_are_sealed_and_open_only_with_the_profiles_key_where_kept(tmp_path: Path) -> None:
    """Nothing of a record is in plain text beside the partial file or in the profile;
    one sealed by another profile, moved to another name, or changed, is not taken."""
    record = _record(str(tmp_path / "report.pdf"))
    (tmp_path / "report.pdf").write_bytes(b"abc")
    landing = Landing(tmp_path / "in", record.name, record.part_name)
    landing.open(record, SEAL)
    landing.keep()
    keep_sending(tmp_path / "out", record, SEAL)
    (sent,) = (tmp_path / "out").iterdir()
    for kept in (landing.record, sent):
        data = kept.read_bytes()
        assert stat.S_IMODE(kept.stat().st_mode) == 0o600
        for clear in (
            b"alice",
            b"report",
            record.transfer_id,
            record.transfer_id.hex().encode(),
            record.digest,
        ):
            assert clear not in data
    assert [found for found, _ in kept_landings(tmp_path / "in", SEAL)] == [record]
    assert kept_sending(tmp_path / "out", SEAL) == [record]
    # Another profile's key: nothing opens, and nothing is deleted.
    other = RecordSeal(bytes(32))
    assert kept_landings(tmp_path / "in", other) == [] and kept_sending(tmp_path / "out", other) == []
    assert landing.record.exists() and sent.exists()
    # One flipped bit: not taken.
    data = landing.record.read_bytes()
    landing.record.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    assert kept_landings(tmp_path / "in", SEAL) == []
    landing.record.write_bytes(data)
    # A record of a file sent, put beside a partial file as if received: not taken.
    sent_as_landing = tmp_path / "in" / f"{record.part_name}{RECORD_SUFFIX}"
    sent_as_landing.write_bytes(sent.read_bytes())
    assert kept_landings(tmp_path / "in", SEAL) == []
    with pytest.raises(ValueError):
        Landing(tmp_path, "x", "x.1").open(record)  # a record is never written unsealed


def test_files_being_sent_are_kept_while_they_are_there(tmp_path: Path) -> None:
    profile = tmp_path / "sending"
    source = tmp_path / "report.pdf"
    source.write_bytes(b"abc")
    record = _record(str(source))
    keep_sending(profile, record, SEAL)
    assert kept_sending(profile, SEAL) == [record]
    assert stat.S_IMODE(os.stat(profile / f"{record.transfer_id.hex()}.record").st_mode) == 0o600
    source.write_bytes(b"abcd")  # another size: not the file offered; forgotten
    assert kept_sending(profile, SEAL) == []
    assert list(profile.iterdir()) == []
    keep_sending(profile, record, SEAL)
    forget_sending(profile, record.transfer_id)
    assert kept_sending(profile, SEAL) == []


def test_only_a_partial_file_of_ours_is_taken_up_again(tmp_path: Path) -> None:
    record = _record()
    landing = Landing(tmp_path, record.name, record.part_name)
    target = tmp_path / "elsewhere"
    target.write_bytes(b"precious" * 200)
    landing.part.symlink_to(target)  # a link under its name
    with pytest.raises(TransferFileError):
        landing.reopen(record.chunk_size)
    landing.part.unlink()
    os.mkfifo(landing.part)  # not a file
    with pytest.raises(TransferFileError, match="not a partial file of ours"):
        landing.reopen(record.chunk_size)
    landing.part.unlink()
    landing.part.write_bytes(b"x" * 2048)
    if os.getuid() == 0:  # (only root can give a file away)
        os.chown(landing.part, 12345, 12345)
        with pytest.raises(TransferFileError, match="not a partial file of ours"):
            landing.reopen(record.chunk_size)
    assert target.read_bytes() == b"precious" * 200


def _first_build_json(record: Record, *, sender: bool = False) -> dict[str, object]:
    """``record`` as the first files build wrote it, in plain JSON: at first a partial
    file's named its ``sender``; then both kinds named a ``peer`` and a ``path``."""
    fields: dict[str, object] = {
        "transfer": record.transfer_id.hex(),
        "name": record.name,
        "size": record.size,
        "chunk_size": record.chunk_size,
        "digest": record.digest.hex(),
    }
    if sender:
        return {"sender": record.peer, **fields}
    return {"peer": record.peer, **fields, "path": record.path}


def test_the_plain_text_records_of_the_first_build_go_and_nothing_else(tmp_path: Path) -> None:
    """The first files build kept NAME.ID.part.json beside a partial file, and ID.json in
    the profile's sending/, in plain JSON: those recognisably records go. Sealed records,
    the partial files, and files that only look alike stay: the downloads directory may be
    a shared folder, and a name is not enough to delete a user's file."""
    downloads, sending = tmp_path / "downloads", tmp_path / "profile" / "sending"
    downloads.mkdir()
    sending.mkdir(parents=True)
    record, other = _record(), Record("bob", bytes(16), "notes.txt", 9, 1024, blake(b"x"))
    plain = {
        downloads / f"{record.part_name}.part.json": _first_build_json(record, sender=True),
        downloads / f"{other.part_name}.part.json": _first_build_json(other),
        sending / f"{record.transfer_id.hex()}.json": _first_build_json(_record(path="/x/report.pdf")),
    }
    for path, fields in plain.items():
        path.write_text(json.dumps(fields))

    def named(number: int, name: str = "a.txt") -> Record:  # (a name and an id of its own)
        return Record("alice", bytes([number]) * 16, name, 3, 1024, blake(b"abc"), "/x/a.txt")

    def beside(record: Record) -> Path:
        return downloads / f"{record.part_name}.part.json"

    user = {
        # the user's own, under a name like ours
        downloads / f"backup.{'0123456789abcdef'}.part.json": json.dumps({"settings": True}),
        beside(named(1)): "not json at all",
        beside(named(2)): json.dumps([1, 2]),
        # a record but for one thing: a key more, one fewer, a number as text, a digest
        # not in hex, another name or id than the file's own, in sending/ one without a path
        beside(named(3)): json.dumps({**_first_build_json(named(3)), "extra": 1}),
        beside(named(4)): json.dumps({k: v for k, v in _first_build_json(named(4)).items() if k != "path"}),
        beside(named(5)): json.dumps({**_first_build_json(named(5)), "size": "3"}),
        beside(named(6)): json.dumps({**_first_build_json(named(6)), "digest": "zz" * 32}),
        beside(named(7)): json.dumps(_first_build_json(named(7, "b.txt"))),
        beside(named(8)): json.dumps(_first_build_json(named(9))),
        sending / f"{'4' * 32}.json": json.dumps(_first_build_json(named(10))),
        sending / f"{named(11).transfer_id.hex()}.json": json.dumps(
            _first_build_json(named(11), sender=True)
        ),
        downloads / f"{record.part_name}.part": "the user's bytes",
        downloads / f"{record.part_name}{RECORD_SUFFIX}": "sealed: resumes",
        downloads / "notes.part.json": "no transfer id",
        downloads / "report.json": "{}",
        sending / f"{record.transfer_id.hex()}.record": "sealed",
        sending / "settings.json": "{}",
    }
    for path, text in user.items():
        path.write_text(text)
    big = beside(named(12))
    big.write_text(json.dumps(_first_build_json(named(12))) + " " * (64 * 1024))  # not a record's size
    link = beside(named(13))
    (tmp_path / "elsewhere").write_text(json.dumps(_first_build_json(named(13))))
    link.symlink_to(tmp_path / "elsewhere")  # never written by e2echat: neither it goes nor what it names
    os.mkfifo(beside(named(14)))  # not a file: not opened to block
    assert remove_plaintext_records(downloads, sending) == (3, [])
    assert not any(path.exists() for path in plain)
    assert all(path.read_text() == text for path, text in user.items())
    assert big.exists() and link.is_symlink() and (tmp_path / "elsewhere").exists()
    assert remove_plaintext_records(downloads, sending) == (0, [])  # said once
    assert remove_plaintext_records(tmp_path / "none", None) == (0, [])
