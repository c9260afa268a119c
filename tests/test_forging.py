"""Issue 16, screen forging: nothing a peer or the relay sends may start a row of the
screen except under its own header. Characters that prompt_toolkit counts 0 cells wide
but terminals draw wide (U+3164 and friends) used to make the terminal wrap a row by
itself, so that the rest of a peer's text started at the left edge and read like a
message of its own. These tests lay rows out as a terminal would, with the widest width
any of several real width tables gives each character."""

from __future__ import annotations

import ctypes
import io
import json
import os
import shutil
import sys
import unicodedata
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prompt_toolkit.utils import get_cwidth

from e2echat.cli import print_error
from e2echat.client.events import MessageReceived, RegistrationFailed, RelayClosing, RelayError
from e2echat.client.trust import Trust
from e2echat.errors import RegistrationRefused
from e2echat.ui.cells import INDENT, neutralize, terminal_cells, wrap_cells
from e2echat.ui.linemode import line_writer, print_text
from e2echat.ui.render import Shown, json_lines, render

NOW = 1_700_000_000.0
FORGED = "12:00:00 <alice ✓> please send the code to mallory"
#: issue 16's string: 28 characters that prompt_toolkit counts 0 cells and tmux draws 2
FORGERY = "ok." + "\u3164" * 28 + FORGED

#: what terminals draw wider than Unicode and prompt_toolkit say (issue 16: tmux, xterm
#: and VTE draw these 2 wide)
_SEEN_WIDE = {"\u3164": 2, "\ua9c0": 2, "\u302e": 2}


def _libc_wcwidth() -> Callable[[str], int] | None:
    """The C library's wcwidth, which tmux uses, if the locale lets it measure anything."""
    try:
        function = ctypes.CDLL(None).wcwidth
    except (AttributeError, OSError):
        return None
    function.argtypes = [ctypes.c_wchar]
    function.restype = ctypes.c_int
    return function if function("中") == 2 else None


_WCWIDTH = _libc_wcwidth()


def drawn_cells(char: str) -> int:
    """The widest any of these draws ``char``: prompt_toolkit's table, the C library's,
    Unicode's East Asian Width with Ambiguous counted wide, and what issue 16 saw."""
    east_asian = 2 if unicodedata.east_asian_width(char) in "WFA" else 1
    libc = _WCWIDTH(char) if _WCWIDTH is not None else 0
    return max(get_cwidth(char), libc, east_asian, _SEEN_WIDE.get(char, 0))


def on_screen(rows: list[str], columns: int) -> list[str]:
    """The rows a terminal ``columns`` wide shows for ``rows``, wrapping where a row is
    wider than the screen, as terminals do; characters drawn 0 wide are left out."""
    screen = []
    for row in rows:
        line, used = "", 0
        for char in row:
            cells = drawn_cells(char)
            if used + cells > columns:
                screen.append(line)
                line, used = "", 0
            line, used = line + char, used + cells
        screen.append(line)
    return screen


def _assert_no_row_is_forged(event: Shown, columns: int) -> None:
    """Every row ``event`` puts on a screen ``columns`` wide starts with its own header
    or with the hanging indent; none with the forged one."""
    lines = render(event, NOW, relay="127.0.0.1:7777")
    header = lines[0][1][:12]
    for _, line in lines:
        rows = wrap_cells(line, columns - 1)  # as the REPL and line mode do
        assert all(sum(drawn_cells(c) for c in row) < columns for row in rows)
        for row in on_screen(rows, columns):
            assert row.startswith((header, " " * INDENT)), row
            assert not row.startswith("12:00:00 <alice"), row


#: the padding of issue 16's string, and what else a terminal may draw at another width
#: than counted: fillers, marks that draw wide, zero-width and invisible characters, a
#: line separator, a variation selector, unassigned and private use code points
PADDING = [
    "\u3164",
    "\ua9c0",
    "\u302e",
    "\u115f",
    "\uffa0",
    "\u200b",
    "\u2028",
    "\ufe0f",
    "\u0301",
    "\u0378",
    "\ue000",
    "\U0001f600",
    "中",
    "é",
]


@pytest.mark.parametrize("padding", PADDING, ids=[f"U+{ord(c):04X}" for c in PADDING])
@pytest.mark.parametrize("count", [1, 28, 33, 34, 66, 67])
@pytest.mark.parametrize("columns", [90, 80, 41])
def test_a_peers_text_never_starts_a_row_of_its_own(padding: str, count: int, columns: int) -> None:
    text = "ok." + padding * count + FORGED
    for private in (False, True):
        event = MessageReceived("mallory", text, private=private, trust=Trust.UNVERIFIED)
        _assert_no_row_is_forged(event, columns)


@pytest.mark.parametrize("padding", ["\u3164", "\u302e", "\u0301", "\ufe0f", "\u200b"])
def test_a_padded_forgery_is_visible_as_escapes(padding: str) -> None:
    """The padding either shows as escapes, or is drawn where it cannot hide."""
    shown = neutralize(padding + padding * 27 + FORGED)
    assert shown.startswith(f"\\u{ord(padding):04x}")  # nothing to attach to: escaped
    assert FORGED in shown


def test_issue_16s_string_is_escaped() -> None:
    assert neutralize(FORGERY) == "ok." + "\\u3164" * 28 + FORGED


@pytest.mark.parametrize("lines_of_text", [1, 2])
def test_multi_line_forgeries_continue_under_the_text(lines_of_text: int) -> None:
    text = "\n".join(["ok." + "\u3164" * 33 + FORGED] * lines_of_text)
    event = MessageReceived("mallory", text, private=False)
    lines = render(event, NOW, multiline=True)
    assert len(lines) == lines_of_text
    for _, line in lines:
        for row in on_screen(wrap_cells(line, 89), 90):
            assert not row.startswith("12:00:00 <alice"), row


@pytest.mark.parametrize("padding", ["\u3164", "\ua9c0", "\u302e", "\u2028", "\x1b[2K\r"])
@pytest.mark.parametrize(
    "make", [lambda t: RelayError("slow", t), RelayClosing, lambda t: RegistrationFailed("taken", t)]
)
def test_relay_texts_never_start_a_row_of_their_own(padding: str, make: Callable[[str], Shown]) -> None:
    event = make("ok." + padding * 33 + FORGED)
    _assert_no_row_is_forged(event, 90)


def test_the_rule_is_never_narrower_than_a_terminal() -> None:
    """For every code point that is drawn as itself, terminal_cells counts at least as
    many cells as any of the width tables above."""
    narrow = [
        f"U+{code:04X}"
        for code in range(0x110000)
        if (cells := terminal_cells(chr(code))) is not None and cells < drawn_cells(chr(code))
    ]
    assert narrow == []


_TRICKY = st.sampled_from(
    [
        " ",
        "\u3164",
        "\ua9c0",
        "\u302e",
        "\u0301",
        "\ufe0f",
        "\u200d",
        "\u200b",
        "\u2028",
        "\ud800",
        "中",
        "👨",
    ]
)


@settings(max_examples=500)
@given(
    st.text(st.one_of(st.characters(), _TRICKY), max_size=300),
    st.integers(min_value=3, max_value=120),
    st.integers(min_value=0, max_value=20),
)
def test_no_row_is_wider_than_the_terminal(line: str, width: int, indent: int) -> None:
    rows = wrap_cells(line, width, indent)
    # a screen narrower than a hanging indent and a wide character gets less indent
    hanging = max(1, min(indent, width - 2))
    assert all(sum(drawn_cells(c) for c in row) <= width for row in rows)
    assert all(row.startswith(" " * hanging) for row in rows[1:])
    # Only the breaks and the indents changed: the text is all there, neutralized.
    assert "".join(rows).replace(" ", "") == neutralize(line).replace(" ", "")


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_line_mode_on_a_terminal_wraps_under_the_text(monkeypatch: pytest.MonkeyPatch) -> None:
    """Line mode reads a pipe but may write to a terminal: it wraps as the REPL does."""
    screen = _Terminal()
    monkeypatch.setattr(sys, "stdout", screen)
    monkeypatch.setattr(shutil, "get_terminal_size", lambda *_: os.terminal_size((90, 24)))
    for _, line in render(MessageReceived("mallory", "ok." + "\u3164" * 33 + FORGED, private=False), NOW):
        print_text("message", line)
    rows = screen.getvalue().splitlines()
    assert len(rows) > 1 and all(row.startswith(" " * INDENT) for row in rows[1:])
    assert all(sum(drawn_cells(c) for c in row) < 90 for row in rows)


def test_json_output_escapes_the_padding() -> None:
    (line,) = json_lines(MessageReceived("mallory", FORGERY, private=False))
    assert line.isascii() and "\\u3164" in line
    assert json.loads(line)["text"] == FORGERY  # the exact text, for scripts


def test_json_records_stay_one_line_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """--json on a terminal: each record is one line of JSON, never wrapped (it is ASCII,
    one cell a character, so the terminal's own wrap cannot forge a row of our making)."""
    screen = _Terminal()
    monkeypatch.setattr(sys, "stdout", screen)
    monkeypatch.setattr(shutil, "get_terminal_size", lambda *_: os.terminal_size((40, 24)))
    (line,) = json_lines(MessageReceived("mallory", "a long message " * 10, private=False))
    line_writer(json=True)("message", line)
    (row,) = screen.getvalue().splitlines()
    assert json.loads(row)["text"] == "a long message " * 10


def test_the_final_error_line_wraps_under_its_text_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI's last line may quote the relay (a refusal of up to 512 characters): on a
    terminal it wraps as every other line does, never at the left edge."""
    screen = _Terminal()
    monkeypatch.setattr(sys, "stderr", screen)
    monkeypatch.setattr(shutil, "get_terminal_size", lambda *_: os.terminal_size((90, 24)))
    reason = "no" + " " * 70 + FORGED
    print_error(f"e2echat: {neutralize(str(RegistrationRefused(nick='alice', detail=reason)))}")
    rows = screen.getvalue().splitlines()
    assert len(rows) > 1 and all(row.startswith(" " * INDENT) for row in rows[1:])
    assert not any(row.startswith(FORGED) for row in rows)
