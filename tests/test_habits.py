"""IRC habits (issue 19): mentions, Tab completion, nick colours, natural order, /help
COMMAND, /clear and Ctrl+C. Pure parts with bare values; the REPL headless on pipe input."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
import time

import pytest
from prompt_toolkit.application import create_app_session
from prompt_toolkit.completion import CompleteEvent
from prompt_toolkit.data_structures import Size
from prompt_toolkit.document import Document
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import ColorDepth
from prompt_toolkit.output.vt100 import Vt100_Output
from test_repl_features import repl

from e2echat.client.events import KeyPinned, MessageReceived, Registered
from e2echat.client.receipts import DeliveryReport
from e2echat.ui import commands
from e2echat.ui.chat import Chat
from e2echat.ui.nicks import NICK_PALETTE, mentions, natural_sorted, nick_colour
from e2echat.ui.render import Headed, Mention, MentionList, json_lines, online_text, render
from e2echat.ui.repl import ChatCompleter, make_session, painted, run_repl

from support import REPO, WAIT, peers, running_relay, text_into

NOW = 1_700_000_000.0

# -- mentions ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text", ["alice", "Alice: hi", "@alice look", "hi ALICE!", "is that you, alice.", "(alice)"]
)
def test_a_nick_as_a_word_is_a_mention(text: str) -> None:
    assert mentions(text, "alice")


@pytest.mark.parametrize("text", ["malice", "alice2", "alice_b", "alice-b", "alice.b", "x.alice", "al ice"])
def test_a_nick_inside_another_word_is_not(text: str) -> None:
    assert not mentions(text, "alice")


def test_the_kelvin_sign_is_not_a_k() -> None:
    assert not mentions("\u212aate", "kate") and mentions("KATE", "kate")


def test_a_mention_is_highlighted_and_marked_and_says_so_in_json() -> None:
    event = MessageReceived("bob", "alice: lunch?", private=False)
    [(style, line)] = render(event, NOW, mention=True)
    assert style == "mention" and "[mention] <bob ?> alice: lunch?" in line
    [(style, line)] = render(event, NOW)
    assert style == "message" and "[mention]" not in line
    assert json.loads(json_lines(event, mention=True)[0])["mention"] is True
    assert json.loads(json_lines(event)[0])["mention"] is False


def test_a_changed_key_stays_a_warning_even_when_it_mentions_us() -> None:
    from e2echat.client.trust import Trust

    event = MessageReceived("bob", "alice: it is me", private=False, trust=Trust.CHANGED)
    [(style, _)] = render(event, NOW, mention=True)
    assert style == "warning"


def test_the_mention_list_says_when_where_and_who() -> None:
    listed = MentionList(
        (Mention(NOW, "#lobby", "bob", "alice?"), Mention(NOW, "private", "carol", "hi alice"))
    )
    lines = render(listed, NOW)
    assert lines[0][0] == "notice" and "the last 2 lines that mentioned you" in lines[0][1]
    assert [style for style, _ in lines[1:]] == ["mention", "mention"]
    assert lines[1][1].endswith("#lobby <bob> alice?") and lines[2][1].endswith("private <carol> hi alice")
    records = [json.loads(text) for text in json_lines(listed)]
    assert [(r["type"], r["where"], r["sender"]) for r in records] == [
        ("mention", "#lobby", "bob"),
        ("mention", "private", "carol"),
    ]


async def test_mentions_ring_the_bell_are_listed_and_kept_to_the_last_50() -> None:
    rings: list[float] = []
    async with running_relay() as relay, peers(relay, "alice", "bob") as (alice, bob):
        async with repl(alice, bell=lambda: rings.append(time.monotonic())) as (pipe, screen, _):
            bob.connection.send_room("#lobby", "malice is no mention")
            bob.connection.send_room("#lobby", "Alice: this is one")
            line = await screen.wait_for("Alice: this is one")
            assert screen.style_of(line) == "mention" and "[mention] <bob ?>" in line
            assert screen.style_of(await screen.wait_for("malice is no mention")) == "message"
            assert len(rings) == 1  # the mention; the other room line is quiet
            bob.connection.send_private("alice", "psst")  # private messages ring, as before
            await screen.wait_for("psst")
            assert len(rings) == 2
            pipe.send_text("/mentions\r")
            await screen.wait_for("1 line mentioned you")
            listed = await screen.wait_for("#lobby <bob> Alice: this is one")
            assert screen.style_of(listed) == "mention"
            pipe.send_text("/set bell off\r")
            await screen.wait_for("bell off")
            for number in range(55):
                bob.connection.send_room("#lobby", f"@alice number {number}")
            await screen.wait_for("@alice number 54")
            assert len(rings) == 2  # the bell is off
            pipe.send_text("/mentions\r")
            await screen.wait_for("the last 50 lines that mentioned you")
            await screen.wait_for("<bob> @alice number 54")
            listed_lines = screen.lines[-50:]
            assert listed_lines[0].endswith("<bob> @alice number 5")  # the oldest kept


async def test_line_mode_marks_mentions_and_clear_is_a_no_op_there() -> None:
    lines: list[str] = []
    async with running_relay() as relay, peers(relay, "alice", "bob") as (alice, bob):
        chat = Chat(alice.connection, text_into(lines))
        chat.handle_line("/clear")
        assert any("no screen to clear" in line for line in lines)
        records: list[str] = []
        json_chat = Chat(alice.connection, text_into(records), json=True)
        bob.connection.send_room("#lobby", "hey alice")
        json_chat.show(await alice.next(MessageReceived))
        assert json.loads(records[-1])["mention"] is True
        chat.show(MessageReceived("bob", "hey alice", private=False))
        assert "[mention] <bob ?> hey alice" in lines[-1]


# -- Tab completion ---------------------------------------------------------------------------


def _complete(text: str, nicks: list[str] = ["alice", "bob", "bobby", "user10", "user2"]) -> list[str]:  # noqa: B006
    completer = ChatCompleter(lambda: nicks)
    return [
        c.text for c in completer.get_completions(Document(text), CompleteEvent(completion_requested=True))
    ]


@pytest.mark.parametrize(
    ("typed", "expected"),
    [
        ("b", ["bob: ", "bobby: "]),  # at the start of the line: "nick: "
        ("B", ["bob: ", "bobby: "]),  # whatever the case
        ("hi bo", ["bob", "bobby"]),  # anywhere else: the nick alone
        ("hi @al", ["@alice"]),
        ("hey alice, and u", ["user2", "user10"]),  # in natural order
        ("/msg bob ask al", ["alice"]),  # in a message's text too
        ("/help ", [f"{name}" for name in sorted(commands.COMMANDS)]),
        ("/help me", ["me", "mentions"]),
        ("/help /ve", ["/verify"]),
        ("/he", ["/help"]),
        ("/cl", ["/clear"]),
        ("/help verify x", []),
        ("zed", []),
    ],
)
def test_tab_completes_nicks_anywhere_and_commands(typed: str, expected: list[str]) -> None:
    assert _complete(typed) == expected


# -- nick colours and natural order -------------------------------------------------------------


def test_a_nick_has_the_same_colour_in_every_process() -> None:
    code = "from e2echat.ui.nicks import nick_colour; print(nick_colour('alice'), nick_colour('bob'))"
    seen = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            cwd=REPO,
            env={"PYTHONHASHSEED": seed, "PATH": ""},
            timeout=WAIT,
        ).stdout
        for seed in ("1", "2")
    }
    assert seen == {f"{nick_colour('alice')} {nick_colour('bob')}\n"}
    assert len({nick_colour(f"user{n}") for n in range(100)}) == len(NICK_PALETTE)  # they spread


def test_the_terminal_draws_the_senders_nick_in_its_colour() -> None:
    def drawn(line: str) -> str:
        screen = io.StringIO()
        output = Vt100_Output(
            screen, lambda: Size(rows=24, columns=100), default_color_depth=ColorDepth.TRUE_COLOR
        )
        with create_app_session(output=output):
            from e2echat.ui.repl import terminal_writer

            terminal_writer(color=True)("message", line)
        return screen.getvalue()

    [(_, line)] = render(MessageReceived("bob", "carol says hi", private=False), NOW)
    assert isinstance(line, Headed) and line[line.nick_at : line.nick_at + 3] == "bob"
    colour = nick_colour("bob").lstrip("#")
    rgb = ";".join(str(int(colour[i : i + 2], 16)) for i in (0, 2, 4))
    assert f"38;2;{rgb}m" in drawn(line)
    assert f"38;2;{rgb}m" not in drawn(str(line))  # plain text: nothing found by reading it
    fragments = painted("message", line, [str(line)])
    assert [text for _, text in fragments] == [line[: line.nick_at], "bob", line[line.nick_at + 3 :]]


def test_the_current_room_s_tag_is_drawn_less_loudly_and_only_that_room_s() -> None:
    message = MessageReceived("bob", "#ops is quiet", private=False, room="#ops")
    for timestamps in (True, False):
        [(_, line)] = render(message, NOW, timestamps=timestamps)
        assert isinstance(line, Headed) and line[line.room_at : line.room_at + 4] == "#ops"
        fragments = painted("message", line, [str(line)], current_room="#ops")
        assert [text for style, text in fragments if "room-current" in style] == ["#ops"]
        assert "".join(text for _, text in fragments) == line
        # Another room's tag keeps the line's look; so does the room named in the text.
        others = painted("message", line, [str(line)], current_room="#dev")
        assert not [text for style, text in others if "room-current" in style]


def test_a_header_cut_by_a_narrow_terminal_is_drawn_in_one_colour() -> None:
    [(_, line)] = render(MessageReceived("bob", "hi", private=False), NOW)
    assert painted("message", line, [line[:10], line[10:]]) == [
        ("class:message", f"{line[:10]}\n{line[10:]}")
    ]


def test_no_color_draws_no_nick_colours(capsys: pytest.CaptureFixture[str]) -> None:
    from e2echat.ui.repl import terminal_writer

    [(_, line)] = render(MessageReceived("bob", "hi", private=False), NOW)
    terminal_writer(color=False)("message", line)
    assert "\x1b[" not in capsys.readouterr().out


def test_lists_of_nicks_sort_naturally_whatever_the_case() -> None:
    assert natural_sorted(["user10", "User2", "bob", "user1", "Alice"]) == [
        "Alice",
        "bob",
        "user1",
        "User2",
        "user10",
    ]
    assert online_text(("user10", "user2")) == "online: user2, user10"
    [(_, line)] = render(Registered("me", ("user10", "user2")), NOW, relay="r")
    assert "online: user2, user10" in line
    report = DeliveryReport(1, False, ("user10", "user2"), (("u10", "offline"), ("u9", "offline")), "hi")
    [(_, line)] = render(report, NOW)
    assert "NOT delivered to u9 (offline), u10 (offline); delivered to user2, user10" in line


async def test_who_lists_nicks_in_natural_order() -> None:
    lines: list[str] = []
    async with running_relay() as relay, peers(relay, "me", "user10", "user2", "User1") as (me, *_):
        Chat(me.connection, text_into(lines)).handle_line("/who")
        assert "online: User1 (unverified), user2 (unverified), user10 (unverified)" in lines[-1]


# -- /help COMMAND ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(commands.COMMANDS))
def test_every_command_has_usage_description_and_example(name: str) -> None:
    entry = commands.COMMANDS[name]
    assert entry.usage.startswith(f"/{name}") and entry.description and entry.example.startswith(f"/{name}")
    usage, *description, example = commands.help_text(name)
    assert usage == f"usage: {entry.usage}" and example == f"example: {entry.example}"
    assert " ".join(line.strip() for line in description) == entry.description


def test_the_listing_continues_descriptions_under_their_column() -> None:
    lines = commands.help_text()
    column = lines[1].index("join #ROOM (made")
    continued = [line for line in lines[1:] if line.startswith(" " * column)]
    assert continued, "some description is long enough to wrap"
    assert all(not line[column].isspace() for line in continued)
    assert all(len(line) <= commands.HELP_WIDTH for line in lines)


def test_mentions_and_clear_parse() -> None:
    assert commands.parse("/mentions") == commands.Mentions()
    assert commands.parse("/CLEAR") == commands.Clear()


# -- /clear and Ctrl+C on a real prompt ---------------------------------------------------------


async def test_clear_erases_the_screen() -> None:
    async with running_relay() as relay, peers(relay, "alice") as (alice,):
        screen = io.StringIO()
        output = Vt100_Output(screen, lambda: Size(rows=24, columns=80))
        lines: list[str] = []
        with create_pipe_input() as pipe, create_app_session(input=pipe, output=output):
            chat = Chat(alice.connection, text_into(lines))
            session = make_session(chat, input=pipe, output=output)
            task = asyncio.create_task(run_repl(chat, session, patch=False))
            pipe.send_text("/clear\r/quit\r")
            await asyncio.wait_for(task, WAIT)
        assert "\x1b[2J" in screen.getvalue()
        assert not any("no screen to clear" in line for line in lines)


async def test_ctrl_c_ends_a_search_then_clears_what_is_typed_then_leaves() -> None:
    async with running_relay() as relay, peers(relay, "alice", "bob") as (alice, bob):
        async with repl(alice) as (pipe, screen, task):
            buffer = screen.session.default_buffer
            pipe.send_text("half a thought")
            while buffer.text != "half a thought":
                await asyncio.sleep(0.01)
            pipe.send_text("\x12")  # Ctrl+R: search the history
            await asyncio.sleep(0.2)
            pipe.send_text("\x03")  # ends the search, not the chat
            await asyncio.sleep(0.2)
            assert not task.done() and buffer.text == "half a thought"
            pipe.send_text("\x03")  # clears what is typed
            while buffer.text:
                await asyncio.sleep(0.01)
            assert not task.done()
            pipe.send_text("a whole one\r")
            assert (await bob.next(MessageReceived)).text == "a whole one"
            pipe.send_text("\x03")  # on the empty line: leave
            await asyncio.wait_for(task, WAIT)


# -- first contacts ---------------------------------------------------------------------------


async def test_a_rooms_first_contacts_are_one_line_and_a_single_one_its_own() -> None:
    async with (
        running_relay() as relay,
        peers(relay, "alice", "bob", "carol", "dave", "user10") as (alice, *_),
    ):
        lines: list[str] = []
        chat = Chat(alice.connection, text_into(lines))
        chat.handle_line("hello, room")  # pins the four keys at once
        for _ in range(50):  # the core tells of them with its next read or tick
            await asyncio.sleep(0.05)
            chat.show_queued()
            if any("first contact" in line for line in lines):
                break
        pinned = [line for line in lines if "first contact" in line]
        assert len(pinned) == 1, lines
        assert "first contact with 4 people (bob, carol, dave, user10): their keys are pinned" in pinned[0]
        chat.show(KeyPinned("erin"))  # alone in its turn: the line it always had
        await asyncio.sleep(0.1)
        assert lines[-1].endswith(
            "first contact with erin: their key is pinned from now on (unverified; /verify erin to check it)"
        )
