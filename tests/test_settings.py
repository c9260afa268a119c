"""/set (issue 19): the settings listed, changed at once and kept in the profile across a
restart; a flag winning for its run; delivery lines quiet at the prompt (the toolbar says
what became of the last message, failures still print), verbose on request; timestamps
and colours off. Real relays over loopback, the REPL headless on pipe input."""

from __future__ import annotations

import functools
import io
import json
import re
import stat
from pathlib import Path

import pytest
from prompt_toolkit.application import create_app_session
from prompt_toolkit.data_structures import Size
from prompt_toolkit.output import ColorDepth
from prompt_toolkit.output.vt100 import Vt100_Output
from test_repl_features import _complete, repl, toolbar_of, until

from e2echat.client.events import KeyChanged, MessageReceived, NotSent, Queued
from e2echat.client.files import DEFAULT_MAX_FILE
from e2echat.client.receipts import DeliveryReport, MessageQueued
from e2echat.errors import CommandError, KeyFileError
from e2echat.store.profiles import (
    CHAT_SETTINGS,
    CURRENT_ROOM,
    ROOMS,
    SETTINGS_FILE,
    keep_rooms,
    keep_setting,
    load_settings,
    save_settings,
)
from e2echat.ui import commands
from e2echat.ui.chat import Chat
from e2echat.ui.lastsent import LastSent
from e2echat.ui.render import Headed, Mention, MentionList, Notice, render
from e2echat.ui.repl import terminal_writer
from e2echat.ui.roomlist import RoomList
from e2echat.ui.settings import SETTINGS, Settings, settings_from

from support import peers, run_cli, running_relay, text_into

NOW = 1_700_000_000.0
STAMP = re.compile(r"^\d\d:\d\d:\d\d ")

# -- the settings, parsed and listed ----------------------------------------------------------


def test_set_parses_names_values_and_spellings() -> None:
    assert commands.parse("/set") == commands.ListSettings()
    assert commands.parse("/set bell OFF") == commands.Set("bell", "off")
    assert commands.parse("/set colors off") == commands.Set("colours", "off")
    assert commands.parse("/set delivery verbose") == commands.Set("delivery", "verbose")
    assert commands.parse("/set max-file 100M") == commands.Set("max-file", "100M")
    assert commands.parse("/set MAX_FILE 2k ") == commands.Set("max-file", "2k")


def test_max_file_is_a_size_whose_default_is_the_transfers() -> None:
    assert Settings().max_file_bytes == DEFAULT_MAX_FILE
    assert Settings(max_file="512k").max_file_bytes == 512 * 1024
    assert Settings().changed("max-file", "2G").max_file_bytes == 2 * 1024**3
    with pytest.raises(ValueError):
        Settings(max_file="big")


@pytest.mark.parametrize(
    ("typed", "said"),
    [
        ("/set loudness 11", 'no setting "loudness": the settings are bell, timestamps, colours, delivery'),
        ("/set bell loud", '/set bell takes on or off, not "loud"'),
        ("/set delivery", "/set delivery takes quiet or verbose"),
        ("/set max-file lots", '/set max-file takes a size such as 100M or 1G, not "lots"'),
        ("/set max-file", "/set max-file takes a size such as 100M or 1G"),
    ],
)
def test_an_unknown_name_or_value_is_one_line_that_lists_the_choices(typed: str, said: str) -> None:
    with pytest.raises(CommandError) as raised:
        commands.parse(typed)
    assert said in str(raised.value) and "\n" not in str(raised.value)


def test_a_damaged_profile_keeps_the_defaults() -> None:
    kept = settings_from(
        {
            "bell": "off",
            "timestamps": "maybe",
            "colours": 0,
            "delivery": "verbose",
            "x": "y",
            "max-file": "-1",
        }
    )
    assert kept == Settings(bell="off", delivery="verbose")
    assert settings_from({"max-file": "20M"}) == Settings(max_file="20M")
    assert Settings() == Settings(bell="on", timestamps="on", colours="on", delivery="quiet")
    with pytest.raises(ValueError):
        Settings(bell="loud")


async def test_set_alone_lists_every_setting_with_its_value_and_choices() -> None:
    lines: list[str] = []
    async with running_relay() as relay, peers(relay, "alice") as (alice,):
        chat = Chat(alice.connection, text_into(lines), settings=Settings(delivery="verbose"))
        chat.handle_line("/set")
    listed = [line.split() for line in lines[1:]]
    assert [row[: 3 if row[0] != "max-file" else 4] for row in listed] == [
        ["bell", "on", "(on|off)"],
        ["timestamps", "on", "(on|off)"],
        ["colours", "on", "(on|off)"],
        ["delivery", "verbose", "(quiet|verbose)"],
        ["max-file", "1G", "(a", "size:"],
    ]
    assert len(listed) == len(SETTINGS)
    # Line mode says which of them change nothing there, and why.
    assert "no bell here" in lines[1] and "line mode prints every delivery line" in lines[4]
    assert lines[5].endswith("no file transfers in this chat")  # a chat without a pump


def test_help_set_explains_it_with_an_example() -> None:
    usage, *description, example = commands.help_text("set")
    assert usage == "usage: /set [NAME VALUE]" and example == "example: /set delivery verbose"
    assert all(name in " ".join(description) for name in SETTINGS)


# -- kept in the profile --------------------------------------------------------------------------


async def test_a_setting_is_kept_in_the_profile_and_holds_after_a_restart(tmp_path: Path) -> None:
    profile = tmp_path / "alice"
    save_settings(profile, "alice", "127.0.0.1", 8000)
    lines: list[str] = []
    async with running_relay() as relay, peers(relay, "alice") as (alice,):
        keep = functools.partial(keep_setting, profile)
        chat = Chat(alice.connection, text_into(lines), keep=keep)
        chat.handle_line("/set timestamps off")
        chat.handle_line("/set delivery verbose")
        assert chat.settings == Settings(timestamps="off", delivery="verbose")  # at once
        assert lines[-1] == "-- delivery verbose (line mode prints every delivery line); kept for next time"
        path = profile / SETTINGS_FILE
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        # The next start remembers the relay again: the settings stay.
        save_settings(profile, "alice", "127.0.0.1", relay.port)
        document = json.loads(path.read_text())
        assert document == {
            "nick": "alice",
            "host": "127.0.0.1",
            "port": relay.port,
            CHAT_SETTINGS: {"timestamps": "off", "delivery": "verbose"},
        }
        # A new chat on the same profile starts with them.
        again = Chat(
            alice.connection, text_into(lines), settings=settings_from(load_settings(profile)[CHAT_SETTINGS])
        )
        assert again.settings == Settings(timestamps="off", delivery="verbose")


async def test_a_setting_that_could_not_be_kept_says_so_and_holds_for_this_chat(tmp_path: Path) -> None:
    def refuse(name: str, value: str) -> None:
        raise KeyFileError(path=tmp_path / SETTINGS_FILE, detail="read-only file system")

    lines: list[str] = []
    async with running_relay() as relay, peers(relay, "alice") as (alice,):
        chat = Chat(alice.connection, text_into(lines), keep=refuse)
        chat.handle_line("/set timestamps off")
    assert chat.settings.timestamps == "off"
    assert "NOT kept for next time" in lines[-1] and "read-only file system" in lines[-1]


async def test_no_bell_wins_over_the_profile_for_its_run_and_is_not_kept(tmp_path: Path) -> None:
    keep_setting(tmp_path, "bell", "on")
    keep_setting(tmp_path, "timestamps", "off")
    async with running_relay() as relay:
        base = ("connect", "--nick", "carol", "--port", str(relay.port), "--home", str(tmp_path))
        code, out, err = await run_cli(*base, "--no-bell", stdin=b"/set\n")
        assert code == 0, err
        assert re.search(r"^  bell +off ", out, re.MULTILINE), out
        assert re.search(r"^  timestamps +off ", out, re.MULTILINE), out  # the profile's, as kept
        assert re.search(r"^-- connected to the relay", out, re.MULTILINE), out  # and heeded
        assert json.loads((tmp_path / SETTINGS_FILE).read_text())[CHAT_SETTINGS] == {
            "bell": "on",
            "timestamps": "off",
        }
        code, out, err = await run_cli(*base, stdin=b"/set\n")
        assert code == 0, err
        assert re.search(r"^  bell +on ", out, re.MULTILINE), out


# -- delivery lines: quiet at the prompt, verbose on request, always in line mode ---------------------


async def test_quiet_delivery_shows_on_the_toolbar_not_as_a_line() -> None:
    async with running_relay() as relay, peers(relay, "alice", "bob", "carol") as (alice, bob, carol):
        async with repl(alice) as (pipe, screen, _):
            assert "last:" not in toolbar_of(screen)  # nothing sent yet
            pipe.send_text("to you both\r")
            await bob.next(MessageReceived)
            await carol.next(MessageReceived)
            await until(lambda: "last: ✓ delivered to 2" in toolbar_of(screen))
            pipe.send_text("/msg bob just you\r")
            await until(lambda: "last: ✓ delivered to bob" in toolbar_of(screen))
            await screen.wait_for("[private to bob] <alice> just you")
            assert not any("delivered" in line for line in screen.lines)


async def test_a_failure_still_prints_its_line_when_deliveries_are_quiet() -> None:
    async with running_relay() as relay, peers(relay, "alice", "bob") as (alice, _):
        async with repl(alice) as (pipe, screen, _):
            pipe.send_text("/msg ghost are you there\r")
            line = await screen.wait_for(
                '!! "are you there" NOT delivered to ghost (not known to this relay)'
            )
            assert screen.style_of(line) == "warning"
            assert "last: !! NOT delivered to ghost" in toolbar_of(screen)


async def test_verbose_restores_a_line_for_every_delivery() -> None:
    async with running_relay() as relay, peers(relay, "alice", "bob") as (alice, bob):
        async with repl(alice) as (pipe, screen, _):
            pipe.send_text("/set delivery verbose\r")
            await screen.wait_for("delivery verbose")
            pipe.send_text("loud and clear\r")
            await screen.wait_for('"loud and clear" delivered to bob')
            pipe.send_text("/set delivery quiet\r")
            await screen.wait_for("delivery quiet")
            pipe.send_text("quiet again\r")
            await until(lambda: "last: ✓ delivered to bob" in toolbar_of(screen))
            await bob.next(MessageReceived, lambda e: e.text == "quiet again")
            assert not any('"quiet again" delivered' in line for line in screen.lines)


async def test_line_mode_prints_every_delivery_whatever_the_setting() -> None:
    lines: list[str] = []
    async with running_relay() as relay, peers(relay, "alice", "bob") as (alice, _):
        chat = Chat(alice.connection, text_into(lines), settings=Settings(delivery="quiet"))
        chat.handle_line("for the script")
        report = await alice.next(DeliveryReport)
        chat.show(report)
    assert lines[-1].endswith('-- "for the script" delivered to bob')


def test_the_last_message_in_a_few_words() -> None:
    last = LastSent()
    assert last.text == ""
    last.sent(1)
    assert last.text == "last: … waiting"
    last.update(MessageQueued(1, False, ("dave",), "hi"))
    assert last.text == "last: queued for dave"
    last.update(DeliveryReport(1, False, ("bob", "carol"), (), "hi", queued=("dave",)))
    assert last.text == "last: ✓ delivered to 2, queued for dave"
    last.update(DeliveryReport(7, False, (), (("eve", "offline"),), "an older one"))  # not the last
    last.update(DeliveryReport(1, False, ("dave",), (), "hi"))  # dave read his mailbox
    assert last.text == "last: ✓ delivered to 3"
    last.sent(2)
    last.update(DeliveryReport(2, True, (), (("bob", "no receipt"),), "psst"))
    assert last.text == "last: !! NOT delivered to bob"
    last.sent(3)
    last.update(Queued("later", 3))
    assert last.text == "last: held until the relay is back"
    last.update(NotSent(("later",), 3))
    assert last.text == "last: NOT sent"


# -- timestamps and colours --------------------------------------------------------------------


async def test_timestamps_off_drops_the_time_from_each_line() -> None:
    lines: list[str] = []
    async with running_relay() as relay, peers(relay, "alice", "bob") as (alice, bob):
        chat = Chat(alice.connection, text_into(lines), echo=True)
        chat.handle_line("/set timestamps off")
        chat.handle_line("/who")
        chat.handle_line("stamped?")
        bob.connection.send_room("#lobby", "and mine?")
        chat.show(await alice.next(MessageReceived))
        chat.handle_line("/set timestamps on")
        chat.handle_line("/who")
    assert lines[1].startswith("-- you are alice")
    assert lines[2] == "#lobby <alice> stamped?"
    assert lines[3] == "#lobby <bob ?> and mine?"
    assert STAMP.match(lines[-1])


def test_without_timestamps_every_line_loses_its_time_and_a_message_keeps_its_nick() -> None:
    [(_, line)] = render(MessageReceived("bob", "hi", private=True), NOW, timestamps=False)
    assert isinstance(line, Headed) and line == "[private] <bob ?> hi"
    assert line[line.nick_at : line.nick_at + 3] == "bob"
    warning = render(KeyChanged("bob", "a" * 16, "b" * 16), NOW, timestamps=False)
    assert len(warning) == 5 and all(text.startswith("!! ") for _, text in warning)
    # The rows that continue a message keep their indent.
    [_, (_, continued)] = render(
        MessageReceived("bob", "one\ntwo", private=False), NOW, multiline=True, timestamps=False
    )
    assert continued == " " * 11 + "two"
    # /mentions' heading loses its time; each mention keeps when it was.
    heading, mention = render(MentionList((Mention(NOW, "#lobby", "bob", "alice!"),)), NOW, timestamps=False)
    assert heading[1] == "-- 1 line mentioned you:" and STAMP.match(mention[1])
    assert STAMP.match(render(Notice("stamped"), NOW)[0][1])  # on by default


async def test_colours_off_prints_plain_text_and_no_colour_wins(capsys: pytest.CaptureFixture[str]) -> None:
    screen = io.StringIO()
    output = Vt100_Output(
        screen, lambda: Size(rows=24, columns=100), default_color_depth=ColorDepth.TRUE_COLOR
    )
    async with running_relay() as relay, peers(relay, "alice", "bob") as (alice, _):
        with create_app_session(output=output):
            chat = Chat(alice.connection, lambda style, text: write(style, text), echo=True)
            write = terminal_writer(color=lambda: chat.colours_on)
            chat.show(MessageReceived("bob", "in colour", private=True))
            assert "38;2;" in screen.getvalue() and "in colour" in screen.getvalue()
            chat.handle_line("/set colours off")
            chat.show(MessageReceived("bob", "in plain text", private=True))
        out = capsys.readouterr().out
        assert "in plain text" in out and "\x1b[" not in out
        assert "in plain text" not in screen.getvalue()
        # NO_COLOR wins over the setting, and /set says so.
        lines: list[str] = []
        chat = Chat(alice.connection, text_into(lines), no_colour=True)
        chat.status_line = True
        assert not chat.colours_on
        chat.handle_line("/set colours on")
        assert not chat.colours_on and "NO_COLOR is set" in lines[-1]


async def test_colours_off_takes_the_colour_from_the_prompt_and_toolbar_too() -> None:
    async with running_relay() as relay, peers(relay, "alice") as (alice,):
        async with repl(alice) as (pipe, screen, _):
            assert screen.session.color_depth is None  # the terminal's own
            pipe.send_text("/set colours off\r")
            await screen.wait_for("colours off")
            assert screen.session.color_depth is ColorDepth.DEPTH_1_BIT


@pytest.mark.parametrize(
    ("typed", "expected"),
    [
        ("/set ", list(SETTINGS)),
        ("/set d", ["delivery"]),
        ("/set delivery v", ["verbose"]),
        ("/set bell ", ["on", "off"]),
    ],
)
def test_tab_completes_setting_names_and_values(typed: str, expected: list[str]) -> None:
    assert _complete(typed, ["dave"]) == expected


def test_the_profile_keeps_the_rooms_and_the_current_one(tmp_path: Path) -> None:
    profile = tmp_path / "alice"
    save_settings(profile, "alice", "127.0.0.1", 8000)
    assert ROOMS not in load_settings(profile)  # a new profile: RoomList's default, #lobby
    keep_rooms(profile, ["#lobby", "#ops"], "#ops")
    save_settings(profile, "alice", "127.0.0.1", 8001)  # the next start: the rooms stay
    kept = load_settings(profile)
    assert (kept[ROOMS], kept[CURRENT_ROOM], kept["port"]) == (["#lobby", "#ops"], "#ops", 8001)
    rooms = RoomList(kept[ROOMS], kept[CURRENT_ROOM])
    assert (rooms.names, rooms.current) == (["#lobby", "#ops"], "#ops")
    keep_rooms(profile, [], None)  # parted them all: in none, next time too
    kept = load_settings(profile)
    assert kept[ROOMS] == [] and CURRENT_ROOM not in kept
    assert RoomList(kept[ROOMS], kept.get(CURRENT_ROOM)).current is None
    # A damaged list is taken for what can be read of it.
    (profile / SETTINGS_FILE).write_text(json.dumps({"rooms": ["#ok", 3, "#Not ok"], "room": 5}))
    kept = load_settings(profile)
    assert RoomList(kept[ROOMS], kept.get(CURRENT_ROOM)).names == ["#ok"]
