"""Issue 19 in a real terminal: two people in two rooms, under tmux, as they would use it."""

from __future__ import annotations

import os
import time
from pathlib import Path

from support import WAIT
from terminal import Tmux, needs_tmux

#: a line long enough to wrap at any width the test gives alice's terminal
LONG = "a long line that has to wrap on a narrow terminal, word after word after word, to its end"
#: a draft longer than the narrowest width the test gives alice's terminal, words told apart
DRAFT = " ".join(f"w{number:02}" for number in range(1, 25))


def _rows_with(shown: str, text: str) -> list[str]:
    return [row for row in shown.splitlines() if text in row]


def _unwrapped(shown: str) -> str:
    """``shown`` with each line the chat wrapped made one again."""
    return shown.replace("\n" + " " * 11, " ")


def _wrapped_under_indent(shown: str, marker: str, columns: int) -> list[str]:
    """The rows of the message that ends in ``marker``: each continuation row starts
    with the hanging indent, and none is wider than the terminal."""
    rows = shown.splitlines()
    last = max(i for i, row in enumerate(rows) if marker in row)
    first = max(i for i, row in enumerate(rows[: last + 1]) if "<bob ?>" in row)
    message = rows[first : last + 1]
    assert len(message) > 1, "\n".join(message)
    assert all(row.startswith(" " * 11) and row[11] != " " for row in message[1:]), "\n".join(message)
    assert all(len(row) < columns for row in message), "\n".join(message)
    return message


@needs_tmux
def test_two_rooms_a_mention_me_away_switching_and_a_resize(tmp_path: Path) -> None:
    tmux = Tmux(f"e2echat-rooms-{os.getpid()}", tmp_path)
    wait_for = tmux.wait_for

    def type_in(nick: str, *keys: str) -> None:
        tmux("send-keys", "-t", nick, *keys)

    def bell_rang(nick: str) -> bool:
        return tmux("display-message", "-p", "-t", nick, "#{window_bell_flag}").strip() == "1"

    def redrawn(columns: int) -> None:
        """Wait (bounded) until alice's client has drawn its toolbar for ``columns``: as
        wide as the terminal, or whole (tmux's copy of the old one, rewrapped, is not)."""
        deadline = time.monotonic() + 3 * WAIT
        while True:
            last = tmux.screen("alice").rstrip("\n").splitlines()[-1]
            if last.startswith(" #ops · ") and (len(last) >= columns - 1 or last.endswith("bell on")):
                return
            assert time.monotonic() < deadline, f"not redrawn at {columns} columns:\n{last}"
            time.sleep(0.05)

    try:
        port = tmux.start_relay()
        toolbar = f"127.0.0.1:{port} · connected"
        tmux.start_client("alice", port)
        tmux.start_client("bob", port)
        wait_for("alice", "bob came online and joined #lobby")
        # Both join #ops (and stay in #lobby, where everyone starts).
        type_in("alice", "/join #ops", "Enter")
        wait_for("alice", "#ops alice>")
        type_in("bob", "/join #ops", "Enter")
        wait_for("alice", "bob joined #ops")
        wait_for("bob", f" #ops · {toolbar}")

        # Bob says something in each room: alice sees each line under its room's tag.
        type_in("bob", "hello ops", "Enter")
        wait_for("alice", "#ops <bob ?> hello ops")
        type_in("bob", "/join #lobby", "Enter")
        wait_for("bob", "typed lines go to #lobby")
        type_in("bob", "hello lobby", "Enter")
        wait_for("alice", "#lobby <bob ?> hello lobby")
        # The delivery prints no line: bob's toolbar says it, with nothing more typed.
        wait_for("bob", "last: ✓ delivered to alice")

        # A mention: marked in the header, drawn bold, and the bell rings (once it is seen
        # by tmux: an alert on alice's window). Room lines before it rang nothing.
        assert not bell_rang("alice")
        type_in("bob", "Alice: lunch at noon?", "Enter")
        wait_for("alice", "#lobby [mention] <bob ?> Alice: lunch at noon?")
        painted = tmux("capture-pane", "-p", "-e", "-t", "alice")
        (mention,) = _rows_with(painted, "lunch at noon?")
        (plain,) = _rows_with(painted, "hello ops")
        assert "\x1b[1m" in mention and "\x1b[1m" not in plain
        deadline = time.monotonic() + 3 * WAIT
        while not bell_rang("alice"):  # polled: tmux marks the alert when it reads the bell
            assert time.monotonic() < deadline, "no bell on alice's terminal"
            time.sleep(0.05)

        # /me: an action.
        type_in("bob", "/me waves", "Enter")
        wait_for("alice", "#lobby * <bob ?> waves")

        # /away: bob's /who and /names show it; a line typed brings alice back.
        type_in("alice", "/away lunch", "Enter")
        wait_for("alice", "you are away: “lunch”")
        wait_for("bob", "alice is away: “lunch”")
        type_in("bob", "/who", "Enter")
        wait_for("bob", "online: alice (unverified, away since ")
        type_in("bob", "/names #ops", "Enter")
        shown = wait_for("bob", "#ops, 2 members: you, alice (unverified, away since ")
        assert _unwrapped(shown).count(": “lunch”)") == 2, shown
        type_in("alice", "back from lunch", "Enter")
        wait_for("alice", "you are back")
        wait_for("bob", "#ops <alice ?> back from lunch")
        wait_for("bob", "alice is back")
        type_in("bob", "/who", "Enter")
        wait_for("bob", "you are bob; online: alice (unverified)")

        # Switching: Alt+1/Alt+2 and Ctrl+N/Ctrl+P; the prompt and the toolbar say where
        # typed lines go, and the next line goes there.
        for keys, room, text in [
            ("M-1", "#lobby", "one"),
            ("C-n", "#ops", "two"),
            ("C-p", "#lobby", "three"),
            ("M-2", "#ops", "four"),
        ]:
            type_in("alice", keys)
            shown = wait_for("alice", f"{room} alice>")
            wait_for("alice", f" {room} · {toolbar}")
            type_in("alice", text, "Enter")
            wait_for("bob", f"{room} <alice ?> {text}")
            wait_for("alice", f"{room} <alice> {text}")

        # A resize, narrower then wider, with something typed: the prompt and toolbar are
        # drawn again once each (none left behind, on the screen or above it), and a line
        # that arrives wraps at the new width under its hanging indent.
        type_in("bob", "/join #ops", "Enter")
        wait_for("bob", "#ops bob>")
        type_in("alice", "draft")
        for columns, rows in [(50, 16), (100, 24)]:
            tmux("resize-window", "-t", "alice", "-x", str(columns), "-y", str(rows))
            redrawn(columns)
            marker = f"end at {columns}"
            type_in("bob", f"{LONG} {marker}", "Enter")
            wait_for("alice", marker)
            shown = wait_for("alice", "#ops alice> draft", scrollback=True)
            assert len(_rows_with(shown, " alice>")) == 1, shown
            assert len(_rows_with(shown, f"127.0.0.1:{port} ·")) == 1, shown
            _wrapped_under_indent(shown, marker, columns)
        type_in("alice", "Enter")
        wait_for("bob", "#ops <alice ?> draft")
        wait_for("alice", "#ops <alice> draft")

        # A draft longer than the narrower width: the terminal rewraps the rows the prompt
        # drew, and those rows are erased all the same; no chat line above goes with them.
        type_in("alice", DRAFT)
        wait_for("alice", "w24")
        for columns, rows in [(50, 16), (100, 24)]:
            tmux("resize-window", "-t", "alice", "-x", str(columns), "-y", str(rows))
            redrawn(columns)
            drawn = tmux.screen("alice", scrollback=True).rstrip("\n").splitlines()
            everything = "\n".join(drawn)
            prompts = [i for i, row in enumerate(drawn) if " alice>" in row]
            assert len(prompts) == 1, everything
            toolbars = [row for row in drawn if f"127.0.0.1:{port} ·" in row]
            assert toolbars == [drawn[-1]], everything
            # The prompt's rows, between the last line of chat and the toolbar, are the
            # draft once (less the blanks at their ends, which tmux does not keep).
            first = prompts[0]
            assert "".join(drawn[first:-1]).replace(" ", "") == f"#opsalice>{DRAFT}".replace(" ", ""), (
                everything
            )
            assert drawn[first - 1].endswith("#ops <alice> draft"), everything
        type_in("alice", "Enter")
        wait_for("bob", "w24")
    finally:
        tmux.kill()
