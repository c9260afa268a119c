"""The REPL's comforts, tested headless (real PromptSession on pipe input) and, once, in a
real terminal under tmux."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from nacl.public import PrivateKey
from prompt_toolkit.application import create_app_session
from prompt_toolkit.completion import CompleteEvent
from prompt_toolkit.data_structures import Point, Size
from prompt_toolkit.document import Document
from prompt_toolkit.input import PipeInput, create_pipe_input
from prompt_toolkit.output import ColorDepth, DummyOutput
from prompt_toolkit.output.vt100 import Vt100_Output
from prompt_toolkit.shortcuts import PromptSession
from test_display import FORGED as FORGED_LOOKS
from test_forging import FORGED, FORGERY
from test_repl import Screen

from e2echat.client.connection import Connection
from e2echat.client.events import MessageReceived, PeerJoined
from e2echat.client.trust import KnownPeers
from e2echat.store.history import HistoryStore
from e2echat.ui.chat import Chat
from e2echat.ui.render import LineStyle
from e2echat.ui.repl import (
    ChatCompleter,
    erase_rewrapped_rows,
    input_history,
    make_session,
    rows_above_cursor,
    run_repl,
    terminal_rewraps,
    terminal_writer,
    toolbar_text,
)

from support import REPO, WAIT, Peer, connect, peers, run_cli, running_relay, spawn_cli, text_into
from terminal import Tmux, needs_tmux

# -- completion, toolbar, styles (no network needed) ------------------------------------------


def _complete(text: str, nicks: list[str]) -> list[str]:
    completer = ChatCompleter(lambda: nicks)
    return [
        c.text for c in completer.get_completions(Document(text), CompleteEvent(completion_requested=True))
    ]


@pytest.mark.parametrize(
    ("typed", "expected"),
    [
        ("/m", ["/me", "/mentions", "/msg"]),
        ("/v", ["/verify"]),
        ("/a", ["/accept", "/away"]),
        (
            "/",
            [
                "/accept",
                "/away",
                "/cancel",
                "/clear",
                "/files",
                "/help",
                "/history",
                "/join",
                "/me",
                "/mentions",
                "/msg",
                "/names",
                "/part",
                "/quit",
                "/reconnect",
                "/reject",
                "/rooms",
                "/search",
                "/send",
                "/set",
                "/trust",
                "/untrust",
                "/verify",
                "/who",
            ],
        ),
        ("/msg ", ["alice", "bob", "bobby"]),
        ("/msg bo", ["bob", "bobby"]),
        ("/verify a", ["alice"]),
        ("/trust bobb", ["bobby"]),
        ("/untrust z", []),
        ("/msg bob hel", []),  # the message itself is not completed
        ("hello /m", []),  # nor is plain text
        ("/set b", ["bell"]),
        ("/send bo", ["bob", "bobby"]),
    ],
)
def test_completion_of_commands_and_nicks(typed: str, expected: list[str]) -> None:
    assert _complete(typed, ["alice", "bob", "bobby"]) == expected


def test_send_completes_paths(tmp_path: Path) -> None:
    (tmp_path / "report one.pdf").write_bytes(b"x")
    (tmp_path / "reports").mkdir()
    (tmp_path / "other.txt").write_bytes(b"x")
    # (what completes the name typed so far: the rest of each name)
    assert _complete(f"/send bob {tmp_path}/rep", ["bob"]) == ["ort one.pdf", "orts"]
    assert _complete(f"/send bob {tmp_path}/o", ["bob"]) == ["ther.txt"]


@pytest.mark.parametrize(
    ("typed", "expected"),
    [
        ("/join #", ["#lobby", "#ops", "#ops-2"]),
        ("/join o", ["#ops", "#ops-2"]),
        ("/part #ops", ["#ops", "#ops-2"]),
        ("/names #l", ["#lobby"]),
        ("/verify #o", ["#ops", "#ops-2"]),
        ("/verify a", ["alice"]),  # a nick, as before
        ("/history #l", ["#lobby"]),
        ("/join #ops x", []),
    ],
)
def test_completion_of_room_names(typed: str, expected: list[str]) -> None:
    completer = ChatCompleter(lambda: ["alice", "bob"], lambda: ["#lobby", "#ops", "#ops-2"])
    document = Document(typed)
    completions = completer.get_completions(document, CompleteEvent(completion_requested=True))
    assert [c.text for c in completions] == expected


@pytest.mark.parametrize(
    ("style", "colour"),
    [("warning", "38;2;255;85;85;1m"), ("notice", "38;2;136;136;136m"), ("own", "38;2;95;175;255m")],
)
def test_the_terminal_paints_each_line_in_its_style(style: LineStyle, colour: str) -> None:
    def painted(style: LineStyle) -> str:
        screen = io.StringIO()
        output = Vt100_Output(
            screen, lambda: Size(rows=24, columns=100), default_color_depth=ColorDepth.TRUE_COLOR
        )
        with create_app_session(output=output):
            terminal_writer(color=True)(style, "12:00:00 KEY CHANGED> !! -- NOT delivered")
        return screen.getvalue()

    assert colour in painted(style)
    assert "38;2;" not in painted("message")  # the terminal's own colour, whatever the text


async def test_toolbar_shows_relay_state_and_trust() -> None:
    async with running_relay() as relay, peers(relay, "alice", "bob", "carol") as (alice, _, _):
        chat = Chat(alice.connection, text_into([]), bell=lambda: None)
        text = toolbar_text(chat)
        assert f"127.0.0.1:{relay.port}" in text
        assert "connected" in text and "2 online" in text and "2 unverified" in text
        assert "bell on" in text
        chat.handle_line("/verify bob")  # the number to compare, then
        chat.handle_line("/trust bob")
        chat.handle_line("/set bell off")
        text = toolbar_text(chat)
        assert "1 unverified" in text and "bell off" in text
        await alice.connection.close()
        assert "reconnecting" in toolbar_text(chat)


# -- headless sessions with the real key bindings and history -----------------------------------


class SessionScreen(Screen):
    """A ``Screen`` that also holds its prompt session, for tests that read its buffer."""

    session: PromptSession[str]
    chat: Chat


@contextlib.asynccontextmanager
async def repl(
    peer: Peer, store: HistoryStore | None = None, bell: Callable[[], None] | None = None
) -> AsyncIterator[tuple[PipeInput, SessionScreen, asyncio.Task[None]]]:
    screen = SessionScreen()
    with create_pipe_input() as pipe, create_app_session(input=pipe, output=DummyOutput()):
        chat = Chat(peer.connection, screen.write, echo=True, multiline=True, bell=bell, history=store)
        recall = None if store is None else input_history(store)
        session = make_session(chat, recall, input=pipe, output=DummyOutput())
        task = asyncio.create_task(run_repl(chat, session, patch=False))
        screen.session = session
        screen.chat = chat
        try:
            yield pipe, screen, task
        finally:
            if not task.done():
                pipe.send_text("/quit\r")
            await asyncio.wait_for(task, WAIT)


def toolbar_of(screen: SessionScreen) -> str:
    toolbar = screen.session.bottom_toolbar
    assert callable(toolbar)
    return str(toolbar())


async def until(condition: Callable[[], bool]) -> None:
    """Wait (bounded) until ``condition`` holds: for what has no event to wait on, such
    as the toolbar's text, which prompt_toolkit asks for when it redraws."""

    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), WAIT)


async def test_bracketed_paste_arrives_as_one_message() -> None:
    async with running_relay() as relay, peers(relay, "alice", "bob") as (alice, bob):
        async with repl(alice) as (pipe, screen, _):
            pipe.send_text("\x1b[200~first line\nsecond line\x1b[201~\r")
            got = await bob.next(MessageReceived)
            assert got.text == "first line\nsecond line"
            await screen.wait_for("<alice> first line")
            assert any(line.strip() == "second line" for line in screen.lines)


async def test_escape_enter_inserts_a_newline() -> None:
    async with running_relay() as relay, peers(relay, "alice", "bob") as (alice, bob):
        async with repl(alice) as (pipe, _, _):
            pipe.send_text("dear bob,\x1b\rsee you\r")
            assert (await bob.next(MessageReceived)).text == "dear bob,\nsee you"


async def test_multi_line_message_is_shown_on_several_lines() -> None:
    async with running_relay() as relay, peers(relay, "alice", "bob") as (alice, bob):
        async with repl(alice) as (_, screen, _):
            bob.connection.send_room("#lobby", "roses are red\nviolets are blue")
            first = await screen.wait_for("roses are red")
            index = screen.lines.index(first)
            assert screen.lines[index + 1] == " " * 11 + "violets are blue"


async def test_up_brings_back_messages_sent_in_an_earlier_session(tmp_path: Path) -> None:
    """Input history with nothing typed on disk: Up recalls what was sent before, from the
    sealed history, as it was typed."""
    path = tmp_path / "profile" / "history.db"
    identity = PrivateKey.generate()
    async with running_relay() as relay, peers(relay, "alice", "bob") as (alice, bob):
        store = HistoryStore.open(path, identity)
        try:
            async with repl(alice, store) as (pipe, _, _):
                pipe.send_text("remember me\r/msg bob and me\r")
                await bob.next(MessageReceived, lambda e: e.private)
        finally:
            store.close()
        for file in path.parent.iterdir():
            assert b"remember me" not in file.read_bytes() and b"and me" not in file.read_bytes()
        # A new session of the same profile: Up brings the lines back, newest first.
        store = HistoryStore.open(path, identity)
        try:
            async with repl(alice, store) as (pipe, screen, _):
                # prompt_toolkit loads history in the background when the prompt starts; a
                # person never presses Up that fast, a test does: wait until it is loaded.
                buffer = screen.session.default_buffer
                while len(buffer._working_lines) < 3:  # the two messages, and the new line
                    await asyncio.sleep(0.01)
                pipe.send_text("\x1b[A\r")
                got = await bob.next(MessageReceived)
                assert (got.text, got.private) == ("and me", True)
                # Up, one press at a time, past the one just sent and "and me": the prompt
                # reloads its history in the background after each line, so each press
                # waits to be seen.
                for _ in range(6):
                    before = buffer.text
                    pipe.send_text("\x1b[A")
                    for _ in range(100):
                        if buffer.text != before:
                            break
                        await asyncio.sleep(0.01)
                    if buffer.text == "remember me":
                        break
                pipe.send_text("\r")
                assert (await bob.next(MessageReceived)).text == "remember me"
        finally:
            store.close()


async def test_tab_completes_nicks_and_commands_in_the_prompt() -> None:
    async with running_relay() as relay, peers(relay, "alice", "bob") as (alice, bob):
        async with repl(alice) as (pipe, screen, _):
            buffer = screen.session.default_buffer

            async def typed(keys: str, shown: str) -> None:
                pipe.send_text(keys)
                while buffer.text != shown:  # completion runs asynchronously, as it should
                    await asyncio.sleep(0.01)

            await typed("/msg b\t", "/msg bob")
            pipe.send_text(" hello\r")
            got = await bob.next(MessageReceived)
            assert (got.text, got.private) == ("hello", True)
            await typed("bo\t", "bob: ")  # at the start of the line, as IRC's: "nick: "
            pipe.send_text("lunch?\r")
            assert (await bob.next(MessageReceived)).text == "bob: lunch?"
            await typed("/help ver\t", "/help verify")
            pipe.send_text("\r")
            await screen.wait_for("usage: /verify NICK|#ROOM [NUMBER]")


async def test_bell_on_private_messages_and_switchable() -> None:
    rings: list[float] = []
    async with running_relay() as relay, peers(relay, "alice", "bob") as (alice, bob):
        async with repl(alice, bell=lambda: rings.append(time.monotonic())) as (pipe, screen, _):
            bob.connection.send_room("#lobby", "room: no bell")
            bob.connection.send_private("alice", "private: bell")
            await screen.wait_for("private: bell")
            assert len(rings) == 1
            pipe.send_text("/set bell off\r")
            await screen.wait_for("bell off")
            bob.connection.send_private("alice", "private again: silent")
            await screen.wait_for("private again: silent")
            assert len(rings) == 1


async def test_own_messages_appear_in_the_timeline() -> None:
    async with running_relay() as relay, peers(relay, "alice", "bob") as (alice, _):
        async with repl(alice) as (pipe, screen, _):
            pipe.send_text("hello all\r/msg bob psst\r")
            assert screen.style_of(await screen.wait_for("<alice> hello all")) == "own"
            assert screen.style_of(await screen.wait_for("[private to bob] <alice> psst")) == "own"
            # Quiet by default at the prompt: the toolbar, not a line, says it arrived.
            await until(lambda: "last: ✓ delivered to bob" in toolbar_of(screen))
            assert not any("delivered to" in line for line in screen.lines)


async def test_the_toolbar_is_drawn_again_when_a_quiet_delivery_arrives() -> None:
    """A delivery prints no line by default; the toolbar that says so is drawn again all
    the same, with nothing typed: the ✓ comes while the user watches."""
    async with running_relay() as relay, peers(relay, "alice", "bob") as (alice, bob):
        async with repl(alice) as (pipe, screen, _):
            drawn: list[str] = []
            toolbar = screen.session.bottom_toolbar
            assert callable(toolbar)

            def drawing() -> str:
                drawn.append(str(toolbar()))
                return drawn[-1]

            screen.session.bottom_toolbar = drawing
            # Bob reads nothing (so sends no receipt) until the prompt was drawn after Enter.
            assert isinstance(bob.connection, Connection)
            bobs_socket = bob.connection._transport
            assert bobs_socket is not None
            bobs_socket.pause_reading()
            pipe.send_text("hello\r")
            await until(lambda: any("last: … waiting" in text for text in drawn))
            bobs_socket.resume_reading()
            await until(lambda: "✓ delivered to bob" in screen.chat.last_sent.text)
            await until(lambda: any("last: ✓ delivered to bob" in text for text in drawn))


async def test_a_peers_text_is_drawn_as_a_message_and_key_changes_as_warnings() -> None:
    """However a peer dresses up its text, the REPL draws it in the message style; what
    really warns (a changed key, and what comes from it) is drawn as a warning."""
    known = KnownPeers()
    async with running_relay() as relay:
        alice = await connect(relay, "alice", known_peers=known)
        bob = await connect(relay, "bob")
        await alice.next(PeerJoined, lambda e: e.nick == "bob")  # bob's first message pins his key
        new_bob = None
        try:
            async with repl(alice) as (_, screen, _):
                for number, text in enumerate(FORGED_LOOKS):
                    bob.connection.send_room("#lobby", f"{text} #{number}")
                    last = await screen.wait_for(f" #{number}")
                    first = screen.lines.index(last) - text.count("\n")
                    assert "<bob ?>" in screen.lines[first]
                    assert set(screen.styles[first : screen.lines.index(last) + 1]) == {"message"}
                await bob.connection.close()
                new_bob = await connect(relay, "bob", PrivateKey.generate())
                warning = await screen.wait_for("WARNING: bob's identity key has CHANGED")
                start = screen.lines.index(warning)
                end = screen.lines.index(await screen.wait_for("without comparing")) + 1
                assert end - start == 5 and set(screen.styles[start:end]) == {"warning"}
                new_bob.connection.send_room("#lobby", "KEY CHANGED> it is really me")
                assert screen.style_of(await screen.wait_for("<bob KEY CHANGED>")) == "warning"
        finally:
            for peer in (alice, bob, new_bob):
                if peer is not None:
                    await peer.connection.close()


# -- line mode for scripts: --json, and connect without --nick ---------------------------------


async def test_json_mode_prints_one_object_per_event(tmp_path: Path) -> None:
    async with running_relay() as relay, peers(relay, "alice") as (alice,):
        args = ("connect", "--nick", "bot", "--port", str(relay.port), "--home", str(tmp_path), "--json")
        async with spawn_cli(*args) as bot:
            await alice.next(PeerJoined, lambda e: e.nick == "bot")
            alice.connection.send_private("bot", "ping \x1b[31m")
            records: list[dict[str, Any]] = []
            while not any(r["type"] == "message_received" for r in records):
                records.append(json.loads(await bot.line_with("{")))
            message = next(r for r in records if r["type"] == "message_received")
            assert message["sender"] == "alice" and message["private"] is True
            assert message["text"] == "ping \x1b[31m"  # exact text; JSON escapes it safely
            assert message["trust"] == "unverified"
            assert {"registered", "key_pinned"} <= {r["type"] for r in records}
            bot.stdin.write(b"pong\n")
            bot.stdin.close()
            rest = [
                json.loads(line) for line in (await asyncio.wait_for(bot.stdout.read(), WAIT)).splitlines()
            ]
            assert any(r["type"] == "delivery_report" and r["delivered"] == ["alice"] for r in rest)
            assert await bot.exit_code() == 0


async def test_connect_without_nick_uses_the_last_profile_and_its_relay() -> None:
    async with running_relay() as relay:
        code, out, err = await run_cli("connect", "--nick", "dora", "--port", str(relay.port))
        assert code == 0, err
        code, out, err = await run_cli("connect")  # nick, host and port remembered
        assert code == 0, err
        assert f"connected to the relay at 127.0.0.1:{relay.port} as dora" in out
    code, _, err = await run_cli("connect", env={**os.environ, "XDG_DATA_HOME": "/nonexistent/e2e"})
    assert code == 2 and "which nick?" in err


# -- a real terminal --------------------------------------------------------------------------------


#: padding that prompt_toolkit counts 0 cells wide, and how wide tmux draws it
_WIDE_PADDING = [("\u3164", 2), ("\u302e", 2), ("\ua9c0", 1), ("\uffa0", 1)]


@needs_tmux
def test_real_terminal_under_tmux(tmp_path: Path) -> None:
    """A relay and two clients in tmux: typed with send-keys, read with capture-pane."""
    tmux = Tmux(f"e2echat-test-{os.getpid()}", tmp_path)
    wait_for = tmux.wait_for
    try:
        port = tmux.start_relay()
        for nick in ("alice", "bob"):
            tmux.start_client(nick, port)
        wait_for("alice", "bob came online and joined #lobby")
        tmux("send-keys", "-t", "alice", "hello from a real terminal", "Enter")
        wait_for("bob", "<alice ?> hello from a real terminal")
        # The toolbar, waited for: a capture can land between the erase of the prompt and
        # its redraw below the new line.
        wait_for("bob", f"127.0.0.1:{port} · connected · 1 online")
        tmux("send-keys", "-t", "bob", "/ms", "Tab")  # "/m" is /mentions too
        wait_for("bob", "bob> /msg")
        tmux("send-keys", "-t", "bob", " al", "Tab")
        wait_for("bob", "bob> /msg alice")
        tmux("send-keys", "-t", "bob", " and back", "Enter")
        wait_for("alice", "[private] <bob ?> and back")
        wait_for("bob", "last: ✓ delivered to alice")  # on the toolbar: no line, by default

        def mallory_sends(lines: bytes) -> None:  # a peer in line mode, typing ``lines``
            subprocess.run(
                [sys.executable, "-m", "e2echat", "connect", "--nick", "mallory", "--port", port],
                input=lines,
                capture_output=True,
                timeout=3 * WAIT,
                check=True,
                cwd=REPO,
                env={**os.environ, "XDG_DATA_HOME": str(tmp_path)},
            )

        # A peer sends real escape sequences (set the title, clear the screen): alice's
        # terminal shows them as text and is neither retitled nor cleared.
        mallory_sends(b"\x1b]0;evil\x07\x1b[2J\x1b[Hwiped?\n")
        shown = wait_for("alice", "wiped?")
        assert "\\x1b]0;evil\\x07\\x1b[2J\\x1b[Hwiped?" in shown
        assert "hello from a real terminal" in shown  # the screen was not cleared
        assert tmux("display-message", "-p", "-t", "alice", "#{pane_title}").strip() != "evil"
        # A peer pads text with characters prompt_toolkit counts 0 cells wide but tmux
        # draws wider (issue 16): issue 16's own string, and paddings sized so that, were
        # they drawn as they are, tmux would wrap the row right before the forged text
        # (alice's rows hold 89 cells; "HH:MM:SS [mention] <mallory ?> ok." takes 34 of
        # them: the forged text names alice, so its header says it mentions her).
        forgeries = [FORGERY] + ["ok." + pad * (56 // width) + FORGED for pad, width in _WIDE_PADDING]
        mallory_sends("".join(f"{text}\n" for text in forgeries).encode() + b"forgeries done\n")
        wait_for("alice", "forgeries done")
        rows = tmux("capture-pane", "-p", "-S", "-", "-t", "alice").splitlines()  # with scrollback
        first = next(i for i, row in enumerate(rows) if "[mention] <mallory ?>" in row)
        last = next(i for i, row in enumerate(rows) if "forgeries done" in row)
        forged_rows = rows[first:last]
        assert sum("[mention] <mallory ?>" in row for row in forged_rows) == len(forgeries)
        for row in forged_rows:  # each row under its own header, or under the indent
            assert not row.startswith("12:00:00 <alice"), "\n".join(forged_rows)
            header = row[9:].startswith("#lobby [mention] <mallory ?>")
            assert header or row.startswith(" " * 11), "\n".join(forged_rows)
    finally:
        tmux.kill()


@pytest.mark.parametrize("color", [True, False])
def test_lines_wrap_at_the_terminals_width_not_at_columns(
    color: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The width is the terminal's, asked at each line (a resize changes it): $COLUMNS,
    exported by a shell at the size it had then, is not."""
    monkeypatch.setenv("COLUMNS", "300")
    screen = io.StringIO()
    size = Size(rows=24, columns=60)
    output = Vt100_Output(screen, lambda: size, default_color_depth=ColorDepth.TRUE_COLOR)
    write = terminal_writer(color=color)
    with create_app_session(output=output), contextlib.redirect_stdout(screen):
        write("message", "12:00:00 <bob ?> " + "word " * 40)
        size = Size(rows=24, columns=40)  # resized
        write("message", "12:00:01 <bob ?> " + "more " * 40)
    text = re.sub("\x1b\\[[0-9;?]*[a-zA-Z]", "", screen.getvalue()).replace("\r", "")
    first, second = text.split("12:00:01")
    assert 50 < max(len(row) for row in first.splitlines()) < 60
    assert 30 < max(len(row) for row in ("12:00:01" + second).splitlines()) < 40


@pytest.mark.parametrize(
    ("lengths", "cursor_x", "columns", "up"),
    [
        ([40, 12], 12, 40, 1),  # the width it was drawn at: the rows drawn
        ([40, 12], 12, 80, 1),  # wider: nothing is rewrapped
        ([40, 12], 12, 20, 2),  # the first row is now two
        ([40, 12], 12, 13, 4),
        ([0, 5], 5, 3, 2),  # an empty row is still a row; the cursor past its row's end
        ([30], 25, 10, 2),  # the cursor inside its row: in the piece it fell in
        ([30], 30, 10, 2),  # at the end of its row: at the end of its last piece
        ([35], 35, 10, 3),
    ],
)
def test_rows_above_the_cursor_once_the_terminal_rewrapped(
    lengths: list[int], cursor_x: int, columns: int, up: int
) -> None:
    assert rows_above_cursor(lengths, cursor_x, columns) == up


@pytest.mark.parametrize(
    ("columns", "up"), [(40, "\x1b[A"), (80, "\x1b[A"), (20, "\x1b[2A"), (13, "\x1b[4A")]
)
async def test_a_resize_erases_the_rows_the_terminal_rewrapped(
    columns: int, up: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A draft that fills the first row: after a shrink, the erase goes up as many rows as
    the terminal made of it, not the one prompt_toolkit drew (prompt-toolkit#1933)."""
    monkeypatch.setenv("TERM", "xterm-256color")  # a terminal that rewraps, as most do
    monkeypatch.delenv("XTERM_VERSION", raising=False)
    screen = io.StringIO()
    size = Size(rows=24, columns=40)
    output = Vt100_Output(screen, lambda: size, default_color_depth=ColorDepth.TRUE_COLOR, enable_cpr=False)
    rendered = asyncio.Event()
    with create_pipe_input() as pipe, create_app_session(input=pipe, output=output):
        session: PromptSession[str] = PromptSession(input=pipe, output=output, bottom_toolbar=" toolbar ")
        erase_rewrapped_rows(session.app.renderer)
        session.app.after_render += lambda _: rendered.set()
        typing = asyncio.create_task(session.prompt_async("> "))
        pipe.send_text("x" * 50)  # "> " and 38 of them on the first row, 12 on the second
        while True:
            rendered.clear()
            drawn = session.app.renderer.last_rendered_screen
            if drawn and drawn.get_cursor_position(session.app.layout.current_window) == Point(12, 1):
                break
            await asyncio.wait_for(rendered.wait(), WAIT)
        size = Size(rows=24, columns=columns)
        screen.truncate(0)
        screen.seek(0)
        session.app.renderer.erase(leave_alternate_screen=False)
        assert screen.getvalue().startswith(f"\x1b[12D{up}\x1b[J"), repr(screen.getvalue())
        pipe.send_text("\r")
        assert await asyncio.wait_for(typing, WAIT) == "x" * 50


@pytest.mark.parametrize(
    ("environ", "rewraps"),
    [
        ({"TERM": "xterm-256color"}, True),  # kitty, VTE, Alacritty, iTerm2 ...
        ({"TERM": "xterm-kitty"}, True),
        ({"TERM": "xterm", "XTERM_VERSION": "XTerm(379)"}, False),  # xterm itself
        ({"TERM": "linux"}, False),  # the Linux console
        ({"TERM": "screen", "TMUX": "/tmp/tmux-0/default,1,0", "XTERM_VERSION": "XTerm(379)"}, True),
        ({"TERM": "tmux-256color", "TMUX": "/tmp/tmux-0/default,1,0"}, True),
    ],
)
def test_which_terminals_rewrap_their_rows(environ: dict[str, str], rewraps: bool) -> None:
    assert terminal_rewraps(environ) is rewraps


def test_a_terminal_that_does_not_rewrap_keeps_prompt_toolkits_erase(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XTERM_VERSION", "XTerm(379)")
    monkeypatch.delenv("TMUX", raising=False)
    with create_pipe_input() as pipe:
        session: PromptSession[str] = PromptSession(input=pipe, output=DummyOutput())
        erase = session.app.renderer.erase
        erase_rewrapped_rows(session.app.renderer)
        assert session.app.renderer.erase == erase


def test_plain_writer_for_no_color_wraps_under_the_text(capsys: pytest.CaptureFixture[str]) -> None:
    write = terminal_writer(color=False)
    write("message", "12:00:00 <bob ?> " + "word " * 40)
    out = capsys.readouterr().out
    assert "\x1b[" not in out  # no colour codes at all
    lines = out.rstrip("\n").split("\n")
    assert len(lines) > 1 and all(line.startswith(" " * 11) for line in lines[1:])
