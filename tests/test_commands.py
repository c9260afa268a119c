"""Typed lines -> commands."""

from __future__ import annotations

import pytest

from e2echat.errors import CommandError
from e2echat.ui.commands import (
    COMMANDS,
    Command,
    Help,
    History,
    Join,
    Names,
    Part,
    PrivateMessage,
    Quit,
    Rooms,
    Say,
    Search,
    TrustPeer,
    Untrust,
    Verify,
    Who,
    help_text,
    parse,
)

_GOOD: dict[str, tuple[str, Command]] = {
    "plain": ("hello world", Say("hello world")),
    "plain-keeps-spacing": ("  two  spaces ", Say("  two  spaces ")),
    "double-slash": ("//x", Say("/x")),
    "double-slash-path": ("//usr/bin is a path", Say("/usr/bin is a path")),
    "msg": ("/msg bob hi there", PrivateMessage("bob", "hi there")),
    "msg-extra-spaces": ("/msg bob    hi there  ", PrivateMessage("bob", "hi there")),
    "msg-uppercase": ("/MSG bob hi", PrivateMessage("bob", "hi")),
    "msg-alias-m": ("/m bob hi", PrivateMessage("bob", "hi")),
    "msg-alias-query": ("/query bob hi", PrivateMessage("bob", "hi")),
    "who": ("/who", Who()),
    "who-alias": ("/w", Who()),
    "help": ("/help", Help()),
    "help-topic": ("/help msg", Help("msg")),
    "quit": ("/quit", Quit()),
    "exit": ("/exit", Quit()),
    "quit-alias-q": ("/q", Quit()),
    "quit-surrounding-space": ("  /quit  ", Quit()),
    "verify": ("/verify bob", Verify("bob")),
    "verify-digits": ("/verify bob 12345 67890", Verify("bob", "1234567890")),
    "trust": ("/trust bob", TrustPeer("bob")),
    "trust-fingerprint": (
        "/trust bob 0a1b 2c3d 4e5f 6a7b 8c9d 0e1f 2a3b 4c5D",
        TrustPeer("bob", "0a1b 2c3d 4e5f 6a7b 8c9d 0e1f 2a3b 4c5d"),
    ),
    # As --trust-relay-key takes them: one rule for every fingerprint typed.
    "trust-fingerprint-colons": (
        "/trust bob 0A:1B:2C:3D:4E:5F:6A:7B:8C:9D:0E:1F:2A:3B:4C:5D",
        TrustPeer("bob", "0a1b 2c3d 4e5f 6a7b 8c9d 0e1f 2a3b 4c5d"),
    ),
    "untrust": ("/untrust bob", Untrust("bob")),
    "join": ("/join #ops", Join("#ops")),
    "join-without-hash": ("/join ops", Join("#ops")),
    "join-any-case": ("/JOIN #Ops", Join("#ops")),
    "part": ("/part", Part()),
    "part-room": ("/part #ops", Part("#ops")),
    "rooms": ("/rooms", Rooms()),
    "names": ("/names", Names()),
    "names-room": ("/names #dev.team", Names("#dev.team")),
    "verify-room": ("/verify #ops", Verify("#ops")),
    "history-room": ("/history #ops 5", History("#ops", 5)),
}


@pytest.mark.parametrize(("line", "expected"), _GOOD.values(), ids=_GOOD.keys())
def test_parse(line: str, expected: Command) -> None:
    assert parse(line) == expected


@pytest.mark.parametrize("line", ["", "   ", "\t", "\r"])
def test_blank_line_is_none(line: str) -> None:
    assert parse(line) is None


@pytest.mark.parametrize(
    "line",
    ["/msg bob", "/msg", "/msg bob    ", "/trust", "/trust bob extra", "/trust bob 0a1b 2c3d", "/verify"],
)
def test_usage_errors(line: str) -> None:
    with pytest.raises(CommandError, match="usage: /"):
        parse(line)


@pytest.mark.parametrize("line", ["/join", "/join #a #b", "/part #a #b", "/names #a #b"])
def test_room_command_usage_errors(line: str) -> None:
    with pytest.raises(CommandError, match="usage: /"):
        parse(line)


@pytest.mark.parametrize("line", ["/join #", "/join #" + "x" * 33, "/part #a,b", "/names #ops!", "/join #é"])
def test_bad_room_names_are_refused(line: str) -> None:
    with pytest.raises(CommandError, match="a room's name is"):
        parse(line)


def test_msg_usage_names_the_command() -> None:
    with pytest.raises(CommandError) as caught:
        parse("/msg bob")
    assert str(caught.value) == f"usage: {COMMANDS['msg'].usage}"


def test_unknown_command_suggests_the_closest() -> None:
    with pytest.raises(CommandError) as caught:
        parse("/mgs bob hi")
    assert "/mgs" in str(caught.value)
    assert "did you mean /msg?" in str(caught.value)


def test_unknown_alias_suggestion_names_the_real_command() -> None:
    with pytest.raises(CommandError, match="did you mean /quit"):
        parse("/exti")


def test_unknown_command_without_a_close_match_points_to_help() -> None:
    with pytest.raises(CommandError, match="/help lists the commands"):
        parse("/xyzzy")


def test_help_lists_every_command() -> None:
    lines = help_text()
    for entry in COMMANDS.values():
        assert any(entry.usage in line for line in lines)
    assert any("//TEXT" in line for line in lines)


@pytest.mark.parametrize("topic", ["msg", "/msg", "m", "query"])
def test_help_for_one_command(topic: str) -> None:
    assert help_text(topic) == [
        "usage: /msg NICK TEXT",
        "  send TEXT to NICK alone, in your rooms or not; nobody else receives anything",
        "example: /msg bob see you at 6",
    ]


def test_help_for_unknown_topic() -> None:
    with pytest.raises(CommandError, match="no command /mgs — did you mean /msg"):
        help_text("mgs")


@pytest.mark.parametrize(
    ("line", "command"),
    [
        ("/history", History(None, 20)),
        ("/history 5", History(None, 5)),
        ("/history #lobby", History("#lobby", 20)),
        ("/history bob 100", History("bob", 100)),
        ("/search Lunch at", Search("Lunch at")),
    ],
)
def test_history_and_search(line: str, command: Command) -> None:
    assert parse(line) == command


@pytest.mark.parametrize(
    "line", ["/history bob 5 6", "/history bob x", "/history 0", "/history 1001", "/search"]
)
def test_bad_history_and_search(line: str) -> None:
    with pytest.raises(CommandError, match=r"usage|lines"):
        parse(line)
