"""The history in use: what a chat records (messages both ways, delivery states), what it
shows again at start-up in a real prompt, /history and /search, and, through the real
command line and a real relay, history at rest, --no-log, the size bound and export."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from pathlib import Path

from nacl.public import PrivateKey
from test_repl import Screen
from test_repl_features import repl

from e2echat.client.events import ConnectionLost, DeliveryReport, MessageReceived, NotSent, PeerJoined, Queued
from e2echat.store.history import HISTORY_FILE, HistoryStore
from e2echat.ui.chat import Chat
from e2echat.ui.transcript import Entry, State
from e2echat.wire.grammar import DEFAULT_ROOM

from support import WAIT, connect, peers, run_cli, running_relay, spawn_cli

NOW = 1_700_000_000.0


async def test_a_chat_records_messages_both_ways_with_their_delivery_state(tmp_path: Path) -> None:
    store = HistoryStore.open(tmp_path / HISTORY_FILE, PrivateKey.generate())
    try:
        async with running_relay() as relay, peers(relay, "alice", "bob") as (alice, bob):
            screen = Screen()
            chat = Chat(alice.connection, screen.write, history=store)
            events = asyncio.create_task(chat.run_events())
            try:
                chat.handle_line("to the room")
                chat.handle_line("/msg bob just you")
                bob.connection.send_private("alice", "back to you")
                await screen.wait_for('"just you" delivered to bob')
                await screen.wait_for('"to the room" delivered to bob')
                await screen.wait_for("back to you")
            finally:
                events.cancel()
            await store.flush()
        room = store.recent(DEFAULT_ROOM, 10).entries
        private = store.recent("bob", 10).entries
    finally:
        store.close()
    assert [(e.sender, e.text, e.state, e.detail) for e in room] == [
        ("alice", "to the room", State.DELIVERED, "delivered to bob")
    ]
    assert [(e.sender, e.text, e.incoming, e.state) for e in private] == [
        ("alice", "just you", False, State.DELIVERED),
        ("bob", "back to you", True, State.NONE),
    ]
    assert private[1].sent_at is not None and private[0].message_id is not None


async def test_a_line_typed_while_the_relay_was_away_and_never_sent_is_kept_as_not_sent(
    tmp_path: Path,
) -> None:
    store = HistoryStore.open(tmp_path / HISTORY_FILE, PrivateKey.generate())
    try:
        async with running_relay() as relay:
            alice = await connect(relay, "alice", reconnecting=True)
        await alice.next(ConnectionLost)
        screen = Screen()
        chat = Chat(alice.connection, screen.write, history=store)
        chat.handle_line("into the void")
        chat.show(await alice.next(Queued))
        alice.connection.give_up("leaving")
        chat.show(await alice.next(NotSent))
        await store.flush()
        ((state, detail),) = [(e.state, e.detail) for e in store.recent(DEFAULT_ROOM, 10).entries]
        await alice.connection.close()
    finally:
        store.close()
    assert (state, detail) == (State.FAILED, "NOT sent: no connection to the relay")


async def test_start_up_shows_the_earlier_lines_in_a_real_prompt(tmp_path: Path) -> None:
    store = HistoryStore.open(tmp_path / HISTORY_FILE, PrivateKey.generate())
    for n in range(15):
        store.record(Entry(DEFAULT_ROOM, True, "carol", f"room line {n}", NOW + n))
    store.record(Entry("carol", True, "carol", "a private word", NOW + 20))
    store.record(
        Entry("carol", False, "alice", "unanswered", NOW + 21, NOW + 21, 9, State.FAILED, "NOT delivered")
    )
    try:
        async with running_relay() as relay, peers(relay, "alice", "bob") as (alice, _):
            async with repl(alice, store) as (pipe, screen, _):
                await screen.wait_for("end of the earlier lines")
                lines = screen.lines
                room = lines.index(next(line for line in lines if "earlier in #lobby" in line))
                private = lines.index(next(line for line in lines if "earlier with carol" in line))
                end = lines.index(next(line for line in lines if "end of the earlier lines" in line))
                assert room < private < end
                shown = lines[room + 1 : private]
                assert [line.split("> ", 1)[1] for line in shown] == [f"room line {n}" for n in range(5, 15)]
                assert "[private] <carol> a private word" in lines[private + 1]
                assert "[NOT delivered] <alice> unanswered" in lines[private + 2]
                assert screen.style_of(lines[private + 2]) == "warning"
                # Then the prompt: what is typed goes out, and /history and /search answer.
                pipe.send_text("/history carol 1\r")
                assert "the last line with carol:" in await screen.wait_for("the last line")
                pipe.send_text("/search ROOM LINE 1\r")
                found = await screen.wait_for("lines that contain")
                assert '6 lines that contain "ROOM LINE 1"' in found
                index = screen.lines.index(found)
                assert [line.split("> ", 1)[1] for line in screen.lines[index + 1 : index + 7]] == [
                    "room line 1",
                    *(f"room line {n}" for n in range(10, 15)),
                ]
                pipe.send_text("/search nowhere to be found\r")
                await screen.wait_for('no line contains "nowhere to be found"')
                pipe.send_text("/history\r")
                await screen.wait_for("the last 17 lines:")
    finally:
        store.close()


async def test_search_shows_only_the_newest_matches(tmp_path: Path) -> None:
    store = HistoryStore.open(tmp_path / HISTORY_FILE, PrivateKey.generate())
    for n in range(40):
        store.record(Entry(DEFAULT_ROOM, True, "carol", f"match {n}", NOW + n))
    try:
        async with running_relay() as relay, peers(relay, "alice") as (alice,):
            async with repl(alice, store) as (pipe, screen, _):
                pipe.send_text("/search match\r")
                found = await screen.wait_for("lines that contain")
                assert 'the newest 30 lines that contain "match"' in found
                index = screen.lines.index(found)
                await screen.wait_for("match 39")
                assert screen.lines[index + 1].endswith("match 10")
    finally:
        store.close()


# -- through the real command line --------------------------------------------------------------

PASSPHRASE = "correct horse battery"
TEXTS = ["kiwi-from-alice-to-all", "mango-from-alice-to-bob", "papaya-bob-to-all", "guava-bob-to-alice"]


def _env(**extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("E2ECHAT_")}
    return {**env, **extra}


async def test_history_at_rest_holds_no_text_and_no_name_and_exports(tmp_path: Path) -> None:
    home = tmp_path / "bob"
    env = _env(E2ECHAT_PASSPHRASE=PASSPHRASE)
    async with running_relay() as relay, peers(relay, "alice") as (alice,):
        args = ("connect", "--nick", "bob", "--port", str(relay.port), "--home", str(home), "--passphrase")
        async with spawn_cli(*args, env=env) as bob:
            await alice.next(PeerJoined, lambda e: e.nick == "bob")
            alice.connection.send_room("#lobby", TEXTS[0])
            alice.connection.send_private("bob", TEXTS[1])
            await bob.line_with(TEXTS[1])
            bob.stdin.write(f"{TEXTS[2]}\n/msg alice {TEXTS[3]}\n".encode())
            await bob.line_with(f'"{TEXTS[3]}" delivered to alice')
            await alice.next(DeliveryReport, lambda e: not e.private)
            bob.stdin.close()
            assert await bob.exit_code() == 0
            await alice.next(MessageReceived, lambda e: e.text == TEXTS[2])

    files = [path for path in home.rglob("*") if path.is_file()]
    assert home / HISTORY_FILE in files
    for path in files:
        data = path.read_bytes()
        for text in TEXTS:
            assert text.encode() not in data, f"{text} in {path.name}"
    sealed = (home / HISTORY_FILE).read_bytes()
    for name in (b"alice", b"bob", b"lobby"):
        assert name not in sealed
    assert stat.S_IMODE((home / HISTORY_FILE).stat().st_mode) == 0o600

    code, out, err = await run_cli("export", "--home", str(home), env=env)
    assert code == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    assert [record["text"] for record in records] == TEXTS
    assert [record["conversation"] for record in records] == ["#lobby", "alice", "#lobby", "alice"]
    assert [record["direction"] for record in records] == ["in", "in", "out", "out"]
    assert [record["state"] for record in records] == [None, None, "delivered", "delivered"]
    assert records[1]["sent_at"] is not None

    output = tmp_path / "out" / "bob.txt"
    code, out, err = await run_cli(
        "export", "--home", str(home), "--format", "txt", "--output", str(output), env=env
    )
    assert (code, out) == (0, ""), err
    assert stat.S_IMODE(output.stat().st_mode) == 0o600
    lines = output.read_text().splitlines()
    assert len(lines) == 4
    assert lines[0].endswith(f"#lobby <alice> {TEXTS[0]}")
    assert lines[3].endswith(f"alice <bob> (delivered to alice) {TEXTS[3]}")

    code, out, err = await run_cli("export", "--home", str(home), env=_env(E2ECHAT_PASSPHRASE="wrong"))
    assert code != 0 and out == ""
    assert err.strip() == f"e2echat: wrong passphrase for the identity key in {home / 'identity.key'}"


async def test_no_log_keeps_nothing_on_disk_and_history_still_answers(tmp_path: Path) -> None:
    home = tmp_path / "bob"
    async with running_relay() as relay, peers(relay, "alice") as (alice,):
        args = ("connect", "--nick", "bob", "--port", str(relay.port), "--home", str(home), "--no-log")
        async with spawn_cli(*args, env=_env()) as bob:
            await alice.next(PeerJoined, lambda e: e.nick == "bob")
            bob.stdin.write(b"apple pie for all\n/search APPLE\n")
            assert '1 line contains "APPLE"' in await bob.line_with("line contains")
            assert "<bob> apple pie for all" in await bob.line_with("<bob>")
            bob.stdin.write(b"/history 5\n")
            await bob.line_with("the last line")
            bob.stdin.close()
            assert await bob.exit_code() == 0
    assert not (home / HISTORY_FILE).exists()
    for path in home.rglob("*"):
        assert path.is_dir() or b"apple" not in path.read_bytes()


async def test_the_history_limit_prunes_the_oldest_and_the_old_input_file_goes(tmp_path: Path) -> None:
    home = tmp_path / "bob"
    home.mkdir(mode=0o700)
    (home / "history").write_text("typed long ago, in plain text\n")
    async with running_relay() as relay, peers(relay, "alice") as (alice,):
        args = (
            "connect",
            "--nick",
            "bob",
            "--port",
            str(relay.port),
            "--home",
            str(home),
            "--history-limit",
            "2",
        )
        async with spawn_cli(*args, env=_env()) as bob:
            assert "held what you typed, in plain text" in await bob.line_with(f"removed {home / 'history'}")
            await alice.next(PeerJoined, lambda e: e.nick == "bob")
            bob.stdin.write(b"one\ntwo\nthree\n")
            await bob.line_with('"three" delivered')
            bob.stdin.close()
            assert await bob.exit_code() == 0
    assert not (home / "history").exists()
    code, out, err = await run_cli("export", "--home", str(home), "--format", "txt", env=_env())
    assert code == 0, err
    assert [line.rsplit(" ", 1)[1] for line in out.splitlines()] == ["two", "three"]


async def test_a_damaged_row_is_left_out_of_an_export_with_an_error(tmp_path: Path) -> None:
    import sqlite3

    from e2echat.store.keyfile import load_or_create_identity

    home = tmp_path / "bob"
    identity, _ = load_or_create_identity(home, None)
    store = HistoryStore.open(home / HISTORY_FILE, identity)
    for text in ("first", "second"):
        store.record(Entry(DEFAULT_ROOM, True, "carol", text, NOW))
    store.close()
    with sqlite3.connect(home / HISTORY_FILE) as connection:
        connection.execute("UPDATE history SET sealed = substr(sealed, 1, 40) WHERE number = 1")
    connection.close()
    code, out, err = await asyncio.wait_for(run_cli("export", "--home", str(home), env=_env()), 3 * WAIT)
    assert code == 1
    assert [json.loads(line)["text"] for line in out.splitlines()] == ["second"]
    assert "1 lines of" in err and "did not open" in err and len(err.strip().splitlines()) == 1
