"""File transfers in the history: how each ended (sent, received and where, rejected,
cancelled, failed its check) is kept in the conversation with the peer, or the room it
was offered in, sealed as every line is; shown again by /history, neutralised."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from nacl.public import PrivateKey
from test_repl import Screen

from e2echat.client.fileevents import FileOffered, TransferDone
from e2echat.client.files import Transfers
from e2echat.client.filestate import Direction
from e2echat.client.trust import Trust
from e2echat.store.downloads import Record
from e2echat.store.history import HISTORY_FILE, HistoryStore
from e2echat.ui.chat import Chat
from e2echat.ui.transcript import Entry, Kind, export_json, export_text, record

from support import FAST, FilePeer, file_peers, make_file, next_event, running_relay

pytestmark = pytest.mark.timeout(90)


async def done_for(peer: FilePeer, chat: Chat) -> TransferDone:
    """The next TransferDone ``peer`` hears, shown in its ``chat`` (as the CLI shows it)."""
    done = await next_event(peer, TransferDone)
    chat.show(done)
    return done


async def test_how_each_transfer_ended_is_kept_in_the_history_of_its_conversation(tmp_path: Path) -> None:
    report = tmp_path / "report.pdf"
    make_file(report, 1_200_000)
    stores = {nick: HistoryStore.open(tmp_path / f"{nick}.db", PrivateKey.generate()) for nick in ("a", "b")}
    try:
        async with (
            running_relay(**FAST) as relay,
            file_peers(relay, tmp_path, "alice", "bob") as (alice, bob),
        ):
            screens = {"alice": Screen(), "bob": Screen()}
            chats = {
                one.nick: Chat(one.peer.connection, screens[one.nick].write, history=store, files=one.pump)
                for one, store in zip((alice, bob), stores.values(), strict=True)
            }
            # received, and where it landed
            await alice.pump.send("bob", report)
            bob.transfers.accept((await next_event(bob, FileOffered)).number)
            landed = await done_for(bob, chats["bob"])
            await done_for(alice, chats["alice"])
            # rejected, with a reason that tries to retitle the terminal
            await alice.pump.send("bob", report, "\x1b]0;pwned\x07notes.txt")
            offer = await next_event(bob, FileOffered)
            for event in bob.transfers.reject(offer.number, "\x1b]0;owned\x07no"):
                chats["bob"].show(event)
            await done_for(alice, chats["alice"])
            # cancelled by its sender before it was answered
            sent = await alice.pump.send("bob", report, "draft.pdf")
            await next_event(bob, FileOffered)
            for event in alice.transfers.cancel(sent.number):
                chats["alice"].show(event)
            await done_for(bob, chats["bob"])
            # failed its check: other bytes than those offered
            await alice.pump.send("bob", report, "changed.pdf")
            offer = await next_event(bob, FileOffered)
            make_file(report, 1_200_000)
            bob.transfers.accept(offer.number)
            await done_for(bob, chats["bob"])
            await done_for(alice, chats["alice"])
            chats["bob"].handle_line("/history alice")
            await screens["bob"].wait_for("the last 4 lines with alice")
            shown = await screens["bob"].wait_for("-- file changed.pdf")
            chats["alice"].handle_line("/history bob")
            recalled = await screens["alice"].wait_for("-- file ]0;pwnednotes.txt")
        await stores["a"].flush()
        await stores["b"].flush()
        kept = {nick: [e.text for e in store.recent(None, 10).entries] for nick, store in stores.items()}
        conversations = {e.conversation for store in stores.values() for e in store.recent(None, 10).entries}
    finally:
        for store in stores.values():
            store.close()
    assert kept["b"] == [
        f"you received report.pdf (1.2 MB) from alice -> {landed.path}",
        "file ]0;pwnednotes.txt (1.2 MB) from alice: rejected: you declined it",
        "file draft.pdf (1.2 MB) from alice: cancelled: alice cancelled it: cancelled",
        "file changed.pdf (1.2 MB) from alice: FAILED: the file did not match the hash in its offer: "
        "it was deleted",
    ]
    assert kept["a"][:3] == [
        "you sent report.pdf (1.2 MB) to bob",
        "file ]0;pwnednotes.txt (1.2 MB) to bob: rejected: \x1b]0;owned\x07no",
        "file draft.pdf (1.2 MB) to bob: cancelled",
    ]
    assert kept["a"][3].startswith("file changed.pdf (1.2 MB) to bob: FAILED: ")
    assert conversations == {"alice", "bob"}
    assert "-- file changed.pdf (1.2 MB) from alice: FAILED" in shown
    # what a peer sent is shown neutralised: by /history, and in an export
    assert "owned" in recalled and "\x1b" not in recalled and "\x07" not in recalled
    entry = Entry("bob", False, "bob", kept["a"][1], 0.0, kind=Kind.NOTICE)
    assert "\x1b" not in export_text(entry) and "\x1b" not in export_json(entry)


async def test_a_file_sent_to_a_room_is_kept_in_the_rooms_history(tmp_path: Path) -> None:
    """``/send #lobby``: each member's transfer ends in the room's history, by name."""
    source = tmp_path / "minutes.txt"
    make_file(source, 100_000)
    store = HistoryStore.open(tmp_path / HISTORY_FILE, PrivateKey.generate())
    try:
        async with (
            running_relay(**FAST) as relay,
            file_peers(relay, tmp_path, "alice", "bob", "carol") as (alice, bob, carol),
        ):
            screen = Screen()
            chat = Chat(alice.peer.connection, screen.write, history=store, files=alice.pump)
            chat.handle_line(f"/send #lobby {source}")
            bob.transfers.reject((await next_event(bob, FileOffered)).number)  # (bob's own chat shows it)
            carol.transfers.accept((await next_event(carol, FileOffered)).number)
            for _ in range(2):
                await done_for(alice, chat)
        await store.flush()
        entries = store.recent("#lobby", 10).entries
        private = store.recent("bob", 10).entries + store.recent("carol", 10).entries
    finally:
        store.close()
    assert sorted(e.text for e in entries) == [
        "file minutes.txt (100.0 kB) to bob: rejected: they declined it",
        "you sent minutes.txt (100.0 kB) to carol",
    ]
    assert private == []


def test_only_the_end_of_a_transfer_is_kept() -> None:
    """Progress and offers are not history; the end is, as a notice (a peer's words in it
    are never taken for a message of theirs)."""
    done = TransferDone(3, "in", "bob", "a.txt", 5, True, "done", path="/d/a.txt")
    change = record(done, 1.0)
    assert isinstance(change, Entry)
    assert (change.conversation, change.kind, change.incoming) == ("bob", Kind.NOTICE, True)
    assert record(FileOffered(3, "bob", "a.txt", 5, Trust.UNVERIFIED), 1.0) is None


def test_a_file_sent_to_a_room_is_kept_in_its_room_after_a_restart() -> None:
    """The record of a file being sent keeps its room (sealed); a record naming what is
    no room is not taken up."""
    record = Record("bob", bytes(16), "a.txt", 5, 1024, bytes(32), "/src/a.txt", "#ops")
    assert Record.from_json(record.to_json()) == record
    assert Record.from_json(record.to_json().replace(b', "room": "#ops"', b"")) == replace(record, room="")
    transfers = Transfers()
    kept = transfers.kept(Direction.OUT, "bob", bytes(16), "a.txt", 5, 1024, bytes(32), 0.0, room="#ops")
    assert kept is not None and kept.room == "#ops"
    assert (
        transfers.kept(Direction.OUT, "bob", bytes(range(16)), "a.txt", 5, 1024, bytes(32), 0.0, room="ops")
        is None
    )
