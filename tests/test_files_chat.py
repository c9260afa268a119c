"""File transfers as the chat shows them: the commands, /files, /set max-file, and
progress in line mode (a line a tenth), against real clients through a real relay."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from e2echat.client.fileevents import FileOffered, TransferDone
from e2echat.client.files import Transfers
from e2echat.client.filestate import Direction, State
from e2echat.ui.chat import Chat
from e2echat.ui.transfers import bar, progress_text, toolbar_text

from support import FAST, file_peers, make_file, next_event, running_relay, text_into

pytestmark = pytest.mark.timeout(90)


async def _shown_until_done(chat: Chat, lines: list[str]) -> None:
    """Show alice's events in her chat until her transfer is over."""
    while True:
        event = await asyncio.wait_for(chat.link.events.get(), 60)
        chat.show(event)
        if isinstance(event, TransferDone):
            return


async def test_line_mode_shows_offers_progress_by_tenths_and_the_end(tmp_path: Path) -> None:
    source = tmp_path / "report.pdf"
    make_file(source, 40 * 64 * 1024)
    async with running_relay(**FAST) as relay, file_peers(relay, tmp_path, "alice", "bob") as (alice, bob):
        lines: list[str] = []
        chat = Chat(alice.peer.connection, text_into(lines), files=alice.pump, clock=lambda: 0.0)
        chat.handle_line(f"/send bob {source}")
        bob.transfers.accept((await next_event(bob, FileOffered)).number)
        await _shown_until_done(chat, lines)
        shown = [line.split(" -- ", 1)[-1] for line in lines]
        assert shown[0] == "offered report.pdf (2.6 MB) to bob as file 1; it goes once they accept"
        assert "file 1 report.pdf to bob: accepted (bob accepted it)" in shown
        progress = [line for line in shown if "% of 2.6 MB" in line]
        assert 2 <= len(progress) <= 11  # a line a tenth at most, however many events
        assert shown[-1] == "file 1 report.pdf to bob: sent; they checked its hash (2.6 MB)"
        lines.clear()
        chat.handle_line("/files")
        assert lines == ["file transfers (/cancel ID stops one):", "  file 1 report.pdf to bob: done, 2.6 MB"]


async def test_progress_is_every_event_with_json(tmp_path: Path) -> None:
    source = tmp_path / "data.bin"
    make_file(source, 20 * 64 * 1024)
    async with running_relay(**FAST) as relay, file_peers(relay, tmp_path, "alice", "bob") as (alice, bob):
        records: list[str] = []
        chat = Chat(alice.peer.connection, text_into(records), files=alice.pump, json=True)
        await alice.pump.send("bob", source)
        bob.transfers.accept((await next_event(bob, FileOffered)).number)
        await _shown_until_done(chat, records)
        assert any('"type":"transfer_progress"' in record for record in records)
        assert '"type":"transfer_done"' in records[-1] and '"ok":true' in records[-1]


async def test_max_file_refuses_larger_offers_and_is_kept(tmp_path: Path) -> None:
    source = tmp_path / "big.bin"
    make_file(source, 3000)
    kept: dict[str, str] = {}
    async with running_relay(**FAST) as relay, file_peers(relay, tmp_path, "alice", "bob") as (alice, bob):
        lines: list[str] = []
        chat = Chat(bob.peer.connection, text_into(lines), files=bob.pump, keep=kept.__setitem__)
        chat.handle_line("/set max-file 2k")
        assert lines[-1].endswith("max-file 2.0 kB: larger offers are refused; kept for next time")
        assert kept == {"max-file": "2k"}
        await alice.pump.send("bob", source)
        refused = await next_event(bob, TransferDone)
        assert refused.state == "rejected" and "over your limit" in refused.detail
        told = await next_event(alice, TransferDone)
        assert (told.state, told.detail) == ("rejected", "it is over their limit of 2.0 kB")


async def test_file_commands_say_what_is_wrong(tmp_path: Path) -> None:
    async with running_relay(**FAST) as relay, file_peers(relay, tmp_path, "alice", "bob") as (alice, _):
        lines: list[str] = []
        chat = Chat(alice.peer.connection, text_into(lines), files=alice.pump)
        for line in ("/accept", "/reject 4", "/cancel 9", "/send bob", "/cancel x"):
            chat.handle_line(line)
        assert [line.split(" ", 1)[-1] for line in lines] == [
            "!! no offer to accept",
            "!! no offer 4 (/files lists them)",
            "!! no transfer 9 (/files lists them)",
            "!! usage: /send NICK|#ROOM PATH",
            "!! usage: /cancel ID",
        ]
        lines.clear()
        chat.handle_line(f"/send carol {tmp_path}")
        chat.handle_line(f"/send bob {tmp_path / 'missing'}")
        chat.handle_line(f"/send bob {tmp_path}")
        await asyncio.wait_for(asyncio.gather(*chat._offering), 10)
        # (each /send looks at its file in a thread of its own: in whatever order they end)
        assert sorted(line.split(" ", 1)[-1] for line in lines) == sorted(
            [
                "!! carol is not online, and not someone away you have talked with: the file was not offered",
                f"!! cannot use {tmp_path / 'missing'}: No such file or directory",
                f"!! cannot use {tmp_path}: it is not a file",
            ]
        )


def test_the_toolbar_shows_a_bar_for_each_transfer_on_its_way() -> None:
    transfers = Transfers()
    sending = transfers.offer("bob", "report.pdf", 10_000_000, bytes(32), "/src/report.pdf", 0.0)
    sending.state, sending.acked, sending.started_at = State.ACTIVE, 2_500_000, 0.0
    receiving = transfers.kept(
        Direction.IN, "carol", bytes(16), "photo.jpg", 4_000_000, 65536, bytes(32), 0.0
    )
    assert receiving is not None
    receiving.acked = 3_000_000
    assert toolbar_text(transfers.listing(), 10.0) == (  # the newest first
        "↓2 photo.jpg [###############-----] 75% of 4.0 MB paused"
        " | ↑1 report.pdf [#####---------------] 25% of 10.0 MB, 250.0 kB/s, 0:30 left"
    )
    transfers.cancel(1)
    assert toolbar_text(transfers.listing(), 10.0).startswith("↓2 photo.jpg")
    assert toolbar_text([], 10.0) == ""


def test_progress_reads_as_people_read_it() -> None:
    assert progress_text(0, 0, 0) == "100% of 0 B"
    assert progress_text(1, 3, 0) == "33% of 3 B"
    assert progress_text(500_000_000, 1_000_000_000, 100_000) == "50% of 1.0 GB, 100.0 kB/s, 1:23:20 left"
    assert bar(0, 10, 4) == "[----]" and bar(10, 10, 4) == "[####]" and bar(0, 0, 4) == "[####]"
