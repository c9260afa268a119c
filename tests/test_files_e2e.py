"""File transfers end to end: a real relay, real clients, files on a real disk."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from e2echat.client.fileevents import FileOffered, TransferDone

from support import FAST, FilePeer, file_peers, make_file, next_event, running_relay


@pytest.mark.parametrize(
    "size",
    [0, 1, 64 * 1024, 64 * 1024 + 1, 20 * 1024 * 1024],
    ids=["empty", "one-byte", "one-chunk", "chunk-and-a-byte", "20MiB"],
)
async def test_a_file_arrives_whole(tmp_path: Path, size: int) -> None:
    source = tmp_path / "report.pdf"
    data = make_file(source, size)
    async with (
        running_relay(
            byte_rate=64 * 1024 * 1024, byte_burst=64 * 1024 * 1024, rate=5000, burst=5000
        ) as relay,
        file_peers(relay, tmp_path, "alice", "bob") as (alice, bob),
    ):
        await alice.pump.send("bob", source)
        offer = await bob.peer.next(FileOffered)
        assert (offer.sender, offer.name, offer.size) == ("alice", "report.pdf", size)
        bob.transfers.accept(offer.number)
        done = await next_event(bob, TransferDone)
        assert done.ok, done
        landed = Path(done.path)
        assert landed == tmp_path / "bob" / "report.pdf"
        assert hashlib.sha256(landed.read_bytes()).digest() == hashlib.sha256(data).digest()
        assert landed.stat().st_mode & 0o777 == 0o600
        sent = await next_event(alice, TransferDone)
        assert sent.ok and sent.state == "done"
        assert [p.name for p in (tmp_path / "bob").iterdir()] == ["report.pdf"]


async def send_and_accept(
    sender: FilePeer, receiver: FilePeer, path: Path, name: str | None = None
) -> TransferDone:
    """``sender`` offers ``path``; ``receiver`` accepts; the receiver's TransferDone."""
    await sender.pump.send(receiver.nick, path, name)
    offer = await next_event(receiver, FileOffered)
    receiver.transfers.accept(offer.number)
    return await next_event(receiver, TransferDone)


async def test_malicious_names_land_safely_inside_the_downloads_directory(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.write_bytes(b"payload")
    downloads = tmp_path / "bob"
    downloads.mkdir()
    (downloads / "report.pdf").write_bytes(b"bob's own report")
    names = ["../../x", "/etc/passwd", "\x1b]0;pwned\x07title", "n" * 10_000, ".bashrc", "report.pdf"]
    async with running_relay(**FAST) as relay, file_peers(relay, tmp_path, "alice", "bob") as (alice, bob):
        for name in names:
            done = await send_and_accept(alice, bob, source, name)
            assert done.ok, done
            landed = Path(done.path)
            assert landed.parent == downloads and landed.read_bytes() == b"payload"
            assert not landed.name.startswith(".") and "\x1b" not in landed.name
            assert "\x1b" not in done.name and len(done.name.encode()) <= 200
    assert (downloads / "report.pdf").read_bytes() == b"bob's own report"
    assert sorted(p.name for p in downloads.iterdir()) == sorted(
        ["x", "passwd", "]0;pwnedtitle", "n" * 200, "bashrc", "report.pdf", "report (1).pdf"]
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bob", "source"]  # nothing landed elsewhere


async def test_a_file_changed_while_it_is_sent_is_not_kept(tmp_path: Path) -> None:
    """The receiver checks the whole file against the hash in the offer: bytes other than
    the ones offered are deleted, and both sides hear why."""
    source = tmp_path / "notes.txt"
    make_file(source, 300_000)
    async with running_relay(**FAST) as relay, file_peers(relay, tmp_path, "alice", "bob") as (alice, bob):
        await alice.pump.send("bob", source)
        offer = await next_event(bob, FileOffered)
        make_file(source, 300_000)  # other bytes, the same size, after the offer
        bob.transfers.accept(offer.number)
        failed = await next_event(bob, TransferDone)
        assert (failed.ok, failed.state) == (False, "failed") and "did not match" in failed.detail
        told = await next_event(alice, TransferDone)
        assert (told.ok, told.state) == (False, "failed") and "did not match" in told.detail
        assert list((tmp_path / "bob").iterdir()) == []  # the partial file went too
