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

import nacl.utils
import pytest
from nacl.public import PrivateKey, PublicKey

from e2echat.client.trust import MAX_PINS, TOUCH_AFTER, DamagedPins, KnownPeers, Trust
from e2echat.errors import KeyFileError
from e2echat.store import pins
from e2echat.store.files import write_private_file
from e2echat.store.pins import KNOWN_PEERS_FILE, PinFile
from e2echat.wire.objects import PeerInfo

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


# -- a bounded file (issue 16: a hostile relay made a 14 MiB one) -----------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def test_the_least_recently_used_unverified_pins_go_first_and_verified_ones_never() -> None:
    clock = Clock()
    known = KnownPeers(max_pins=4, clock=clock)
    keys = {nick: PrivateKey.generate().public_key for nick in ("v", "a", "b", "c", "d", "e")}
    known.exchanged("v", keys["v"])
    known.set_verified("v", keys["v"], True)  # the oldest, but verified
    for nick in "abc":
        clock.now += 1
        known.exchanged(nick, keys[nick])
    clock.now += TOUCH_AFTER
    known.exchanged("a", keys["a"])  # a message with a, long after: a is used again
    for nick in "de":
        known.exchanged(nick, keys[nick])
    assert len(known) == 4
    assert [nick for nick in keys if known.get(nick) is not None] == ["v", "a", "d", "e"]  # b, c dropped


def test_only_verified_pins_may_go_over_the_bound() -> None:
    known = KnownPeers(max_pins=2)
    for nick in "abc":
        key = PrivateKey.generate().public_key
        known.see(nick, key)
        known.set_verified(nick, key, True)
    known.exchanged("d", PrivateKey.generate().public_key)
    assert len(known) == 4  # nothing the user verified is ever dropped
    known.exchanged("e", PrivateKey.generate().public_key)
    assert len(known) == 4 and known.get("d") is None and known.get("e") is not None


def test_exchanging_again_within_a_day_changes_nothing_to_write() -> None:
    clock = Clock()
    known = KnownPeers(clock=clock)
    bob = PrivateKey.generate().public_key
    assert known.exchanged("bob", bob)
    generation = known.generation
    clock.now += TOUCH_AFTER - 1
    assert not known.exchanged("bob", bob)
    assert known.generation == generation
    clock.now += 1
    known.exchanged("bob", bob)
    assert known.generation == generation + 1
    pin = known.get("bob")
    assert pin is not None and pin.last_used == clock.now


def test_the_pin_bound_holds_at_full_size() -> None:
    known = KnownPeers()
    for index in range(MAX_PINS + 50):
        known.exchanged(f"p{index}", PublicKey(nacl.utils.random(32)))
    assert len(known) == MAX_PINS
    assert known.get("p0") is None and known.get(f"p{MAX_PINS + 49}") is not None


def test_the_file_keeps_the_order_of_use() -> None:
    clock = Clock()
    known = KnownPeers(clock=clock)
    for nick in ("zed", "amy", "kim"):  # used in that order; the file sorts by nick
        clock.now += 1
        known.exchanged(nick, PrivateKey.generate().public_key)
    again = KnownPeers.decode(known.encode())
    again.max_pins = 3
    again.exchanged("new", PrivateKey.generate().public_key)
    assert again.get("zed") is None and again.get("amy") is not None


def test_a_file_from_before_last_used_is_read() -> None:
    document = {
        "format": "e2echat-known-peers-v1",
        "peers": {
            "bob": {"identity_key": base64.b64encode(_key()).decode(), "verified": False, "first_seen": 5.0}
        },
    }
    pin = KnownPeers.decode(json.dumps(document).encode()).get("bob")
    assert pin is not None and pin.last_used == 5.0


async def test_the_pins_are_encoded_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Encoding 10,000 pins takes tens of milliseconds: not on the loop that shows messages."""
    threads: list[threading.Thread] = []
    real_encode = KnownPeers.encode

    def recording(self: KnownPeers) -> bytes:
        threads.append(threading.current_thread())
        return real_encode(self)

    monkeypatch.setattr(KnownPeers, "encode", recording)
    store = PinFile(tmp_path / KNOWN_PEERS_FILE)
    known = store.load()
    known.see("bob", PrivateKey.generate().public_key)
    store.save_soon(known)
    await store.flush(known)
    assert threads and threading.main_thread() not in threads


async def test_the_writer_encodes_a_copy_while_the_loop_changes_the_pins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker thread must never iterate the pins the event loop is changing."""
    started, changed, sizes = threading.Event(), threading.Event(), []
    real_encode = KnownPeers.encode

    def slow_encode(self: KnownPeers) -> bytes:
        started.set()
        assert changed.wait(WAIT)  # the loop changes the pins meanwhile
        sizes.append(len(self))
        return real_encode(self)

    monkeypatch.setattr(KnownPeers, "encode", slow_encode)
    store = PinFile(tmp_path / KNOWN_PEERS_FILE)
    known = store.load()
    known.see("bob", PrivateKey.generate().public_key)
    store.save_soon(known)
    assert await asyncio.to_thread(started.wait, WAIT)
    for nick in ("carol", "dave"):
        known.see(nick, PrivateKey.generate().public_key)
    changed.set()
    await store.flush(known)
    assert sizes == [1, 3]  # what there was at each save, not what the loop did meanwhile


def test_exchanged_all_pins_and_touches_as_exchanged_does_with_one_clock_read() -> None:
    clock = Clock()
    reads = 0

    def counted() -> float:
        nonlocal reads
        reads += 1
        return clock()

    one, each = KnownPeers(clock=counted), KnownPeers(clock=clock)
    keys = {nick: PrivateKey.generate().public_key for nick in ("a", "b", "c")}
    directory = {nick: PeerInfo(nick, key, PrivateKey.generate().public_key) for nick, key in keys.items()}
    for known in (one, each):
        known.exchanged("a", keys["a"])
    clock.now += TOUCH_AFTER
    reads = 0
    assert one.exchanged_all(["a", "b", "c"], directory) == ["b", "c"]  # first contact: pinned
    assert [each.exchanged(nick, keys[nick]) for nick in "abc"] == [False, True, True]
    assert reads == 1 + 2  # one for the batch, one for each new pin (when it was made)
    for nick in "abc":
        assert one.get(nick) == each.get(nick) and one.get(nick) is not None
    assert one.get("a").last_used == clock.now  # type: ignore[union-attr]  # touched: a day on
    assert one.generation == each.generation
    assert one.exchanged_all(["a", "b", "c"], directory) == []
