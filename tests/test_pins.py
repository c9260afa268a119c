"""The known-peers pins: a pure document (client/trust.py) and the file the shell keeps
(store/pins.py), written off the event loop, one write at a time, the newest winning."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import stat
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from nacl.public import PrivateKey

from e2echat.client.trust import DamagedPins, KnownPeers, Trust
from e2echat.errors import KeyFileError
from e2echat.store import pins
from e2echat.store.files import write_private_file
from e2echat.store.pins import KNOWN_PEERS_FILE, PinFile

from support import WAIT


def _key() -> bytes:
    return bytes(PrivateKey.generate().public_key)


def test_the_pin_document_round_trips() -> None:
    known = KnownPeers()
    bob, carol, dave = (PrivateKey.generate().public_key for _ in range(3))
    known.see("bob", bob)
    known.see("carol", carol)
    known.set_verified("carol", carol, True)
    known.accept("dave", dave)
    again = KnownPeers.decode(known.encode())
    assert again.state("bob", bob) is Trust.UNVERIFIED
    assert again.state("carol", carol) is Trust.VERIFIED
    assert again.state("dave", dave) is Trust.UNVERIFIED
    assert again.state("bob", carol) is Trust.CHANGED
    assert again.encode() == known.encode()


def test_every_change_to_a_pin_moves_the_generation() -> None:
    known = KnownPeers()
    bob = PrivateKey.generate().public_key
    steps: list[Callable[[], object]] = [
        lambda: known.see("bob", bob),
        lambda: known.set_verified("bob", bob, True),
        lambda: known.accept("bob", PrivateKey.generate().public_key),
    ]
    for step in steps:
        before = known.generation
        step()
        assert known.generation > before
    before = known.generation
    known.see("bob", bob)  # seen before: nothing changes
    assert known.generation == before


def _document(**entry: object) -> bytes:
    pin = {"identity_key": "", "verified": False, "first_seen": 0.0, **entry}
    return json.dumps({"format": "e2echat-known-peers-v1", "peers": {"bob": pin}}).encode()


@pytest.mark.parametrize(
    "data",
    [
        b"{not json",
        b"\xff\xfe",
        b"[]",
        json.dumps({"format": "something-else", "peers": {}}).encode(),
        json.dumps({"format": "e2echat-known-peers-v1"}).encode(),
        _document(identity_key="AAAA"),  # too short for a key
        _document(identity_key="not base64!"),
        _document(identity_key=base64.b64encode(_key()).decode(), verified="yes"),
    ],
    ids=[
        "not-json",
        "not-utf8",
        "not-an-object",
        "other-format",
        "no-peers",
        "short-key",
        "bad-base64",
        "bad-flag",
    ],
)
def test_a_damaged_document_is_refused(data: bytes) -> None:
    with pytest.raises(DamagedPins):
        KnownPeers.decode(data)


def test_a_missing_file_is_no_pins(tmp_path: Path) -> None:
    assert KnownPeers().encode() == PinFile(tmp_path / KNOWN_PEERS_FILE).load().encode()


def test_an_unreadable_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / KNOWN_PEERS_FILE).mkdir()  # a directory where the file should be
    with pytest.raises(KeyFileError, match=KNOWN_PEERS_FILE):
        PinFile(tmp_path / KNOWN_PEERS_FILE).load()


async def test_nothing_is_written_until_a_pin_changes(tmp_path: Path) -> None:
    store = PinFile(tmp_path / KNOWN_PEERS_FILE)
    known = store.load()
    store.save_soon(known)
    await store.flush(known)
    assert not store.path.exists()
    known.see("bob", PrivateKey.generate().public_key)
    await store.flush(known)
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert PinFile(store.path).load().encode() == known.encode()


async def test_another_pin_object_is_written_even_at_the_same_generation(tmp_path: Path) -> None:
    store = PinFile(tmp_path / KNOWN_PEERS_FILE)
    known = store.load()
    known.see("bob", PrivateKey.generate().public_key)
    await store.flush(known)
    other = KnownPeers()
    other.see("carol", PrivateKey.generate().public_key)
    assert other.generation == known.generation
    await store.flush(other)
    assert PinFile(store.path).load().get("carol") is not None


async def test_writes_go_one_at_a_time_and_the_newest_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started, release = threading.Event(), threading.Event()
    written: list[bytes] = []

    def slow_write(path: Path, data: bytes) -> None:
        started.set()
        assert release.wait(WAIT)  # the disk is slow: the loop goes on meanwhile
        write_private_file(path, data)
        written.append(data)

    monkeypatch.setattr(pins, "write_private_file", slow_write)
    store = PinFile(tmp_path / KNOWN_PEERS_FILE)
    known = store.load()
    known.see("bob", PrivateKey.generate().public_key)
    store.save_soon(known)
    assert await asyncio.to_thread(started.wait, WAIT)  # the first write is under way
    for nick in ("carol", "dave", "erin"):  # three more changes while it lasts
        known.see(nick, PrivateKey.generate().public_key)
        store.save_soon(known)
    release.set()
    await store.flush(known)
    assert len(written) == 2  # the first, then only the newest of the three
    assert written[-1] == known.encode() == store.path.read_bytes()


async def test_a_failed_write_is_logged_retried_and_reported_at_the_end(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    store = PinFile(blocker / KNOWN_PEERS_FILE)  # its directory cannot be made
    known = KnownPeers()
    known.see("bob", PrivateKey.generate().public_key)
    with caplog.at_level(logging.WARNING, logger="e2echat.store.pins"):
        store.save_soon(known)
        with pytest.raises(KeyFileError):
            await store.flush(known)
    assert any(KNOWN_PEERS_FILE in record.getMessage() for record in caplog.records)
    # Once the disk is usable again, the next write succeeds and clears the failure.
    blocker.unlink()
    known.see("carol", PrivateKey.generate().public_key)
    await store.flush(known)
    assert PinFile(store.path).load().get("carol") is not None
