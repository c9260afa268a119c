"""One line, not three, when someone arrives (issue 19): what one turn brings about one
person is one line, and every safety-number change is still said. Pure parts with bare
values; the chat with and without a running loop; line mode through a real relay."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from e2echat.client.events import (
    MessageReceived,
    PeerJoined,
    PeerLeft,
    RoomChanged,
    RoomEntered,
    RoomParted,
)
from e2echat.ui.arrivals import Arrival, Arrivals, PresenceEvent, arrival_text
from e2echat.ui.chat import Chat
from e2echat.ui.render import render

from support import WAIT, connect, running_relay, spawn_cli, text_into

NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    ("arrival", "text"),
    [
        (
            Arrival("bob", (("online", ""), ("joined", "#lobby")), ("#lobby",)),
            "bob came online and joined #lobby (safety number changed: /verify #lobby)",
        ),
        (
            Arrival("bob", (("online", ""), ("joined", "#lobby"), ("joined", "#ops")), ("#lobby", "#ops")),
            "bob came online, joined #lobby and #ops (safety numbers changed: /verify #lobby, /verify #ops)",
        ),
        (
            Arrival("bob", (("left", "#ops"), ("offline", "")), ("#ops",)),
            "bob left #ops and went offline (safety number changed: /verify #ops)",
        ),
        (
            Arrival("bob", (("left", "#a"), ("left", "#b"), ("left", "#c"), ("offline", ""))),
            "bob left #a, #b and #c, went offline",
        ),
        (
            Arrival("bob", (("joined", "#ops"),), ("#ops",)),
            "bob joined #ops (safety number changed: /verify #ops)",
        ),
    ],
)
def test_an_arrival_is_said_in_one_line(arrival: Arrival, text: str) -> None:
    assert arrival_text(arrival) == text
    [(style, line)] = render(arrival, NOW, timestamps=False)
    assert (style, line) == ("notice", f"-- {text}")


def _taken(*events: PresenceEvent) -> tuple[list[object], list[tuple[str, str]]]:
    arrivals = Arrivals()
    for event in events:
        arrivals.add(event)
    shown = arrivals.take()
    assert not arrivals  # empty again
    return list(shown[0]), shown[1]


def test_the_facts_of_one_turn_are_one_line_per_person() -> None:
    people, others = _taken(
        PeerJoined("bob"),
        RoomEntered("#lobby", "bob"),
        RoomChanged("#lobby", "bob joined"),
        PeerJoined("carol"),
        RoomEntered("#ops", "bob"),
        RoomChanged("#ops", "bob joined"),
    )
    assert people == [
        Arrival("bob", (("online", ""), ("joined", "#lobby"), ("joined", "#ops")), ("#lobby", "#ops")),
        PeerJoined("carol"),  # all there is of her: her line as it always was
    ]
    assert others == []


@pytest.mark.parametrize(
    "events",
    [
        # A key changed: not a join's doing, and said as it is, on its own line.
        [PeerJoined("bob"), RoomChanged("#lobby", "bob's key changed")],
        # The relay's list changed: right after a join, but of another room.
        [RoomEntered("#ops", "bob"), RoomChanged("#lobby", "the relay's list of its members changed")],
        # A second change after one join: the join accounts for one.
        [
            RoomEntered("#lobby", "bob"),
            RoomChanged("#lobby", "bob joined"),
            RoomChanged("#lobby", "the relay's list of its members changed"),
        ],
    ],
)
def test_a_change_that_is_no_ones_join_or_part_keeps_its_own_line(events: list[PresenceEvent]) -> None:
    changes = [event for event in events if isinstance(event, RoomChanged)]
    people, others = _taken(*events)
    said = [(room, why) for room, why in others]
    for arrival in people:
        if isinstance(arrival, Arrival):
            said += [(room, "") for room in arrival.changed]
    # Every change is said: by a person's line or by its own, with its reason.
    assert sorted(room for room, _ in said) == sorted(change.room for change in changes)
    assert (changes[-1].room, changes[-1].why) in others


class _Named:
    """What Chat needs of its link to show events: our nick and the relay's address."""

    nick = "alice"
    address = "127.0.0.1:8000"


def _chat(lines: list[str], **options: bool) -> Chat:
    return Chat(_Named(), text_into(lines), **options)  # type: ignore[arg-type]


async def test_the_chat_says_one_line_at_the_end_of_the_turn_before_what_follows() -> None:
    lines: list[str] = []
    chat = _chat(lines)
    chat.settings = chat.settings.changed("timestamps", "off")
    for event in (PeerJoined("bob"), RoomEntered("#lobby", "bob"), RoomChanged("#lobby", "bob joined")):
        chat.show(event)
    assert lines == []  # gathered until the turn ends, or another line comes
    chat.show(MessageReceived("bob", "hi", private=False, room="#lobby"))
    assert lines == [
        "-- bob came online and joined #lobby (safety number changed: /verify #lobby)",
        "#lobby <bob ?> hi",
    ]
    chat.show(RoomParted("#lobby", "bob"))
    chat.show(RoomChanged("#lobby", "bob left"))
    chat.show(PeerLeft("bob"))
    chat.show(RoomChanged("#ops", "carol's key changed"))
    await asyncio.sleep(0)  # the turn ends
    assert lines[2:] == [
        "-- bob left #lobby and went offline (safety number changed: /verify #lobby)",
        "-- the safety number of #ops changed: carol's key changed (/verify #ops shows it)",
    ]


def test_without_a_loop_each_fact_is_said_at_once() -> None:
    lines: list[str] = []
    chat = _chat(lines)
    chat.show(PeerJoined("bob"))
    chat.show(RoomEntered("#lobby", "bob"))
    chat.show(RoomChanged("#lobby", "bob joined"))
    assert [line.split(" -- ")[1] for line in lines] == [
        "bob came online",
        "bob joined #lobby",
        "the safety number of #lobby changed: bob joined (/verify #lobby shows it)",
    ]


async def test_json_keeps_one_event_per_fact() -> None:
    lines: list[str] = []
    chat = _chat(lines, json=True)
    for event in (PeerJoined("bob"), RoomEntered("#lobby", "bob"), RoomChanged("#lobby", "bob joined")):
        chat.show(event)
    await asyncio.sleep(0)
    assert [json.loads(line)["type"] for line in lines] == ["peer_joined", "room_entered", "room_changed"]


async def test_line_mode_says_one_line_when_someone_arrives_through_a_relay(tmp_path: Path) -> None:
    async with running_relay() as relay:
        args = ("connect", "--nick", "alice", "--port", str(relay.port), "--home", str(tmp_path))
        async with spawn_cli(*args) as alice:
            await alice.line_with("connected to the relay")
            assert alice.stdin is not None
            alice.stdin.write(b"/join #ops\n")
            await alice.line_with("you joined #ops")
            bob = await connect(relay, "bob", rooms=("#lobby", "#ops"))
            try:
                arrived = await alice.line_with("bob")
                assert arrived.rstrip("\n").endswith(
                    "-- bob came online, joined #lobby and #ops "
                    "(safety numbers changed: /verify #lobby, /verify #ops)"
                ), arrived
                # Nothing more about his arrival: the next lines are what he says.
                bob.connection.send_room("#lobby", "the marker")
                between: list[str] = []
                while True:
                    line = (await asyncio.wait_for(alice.stdout.readline(), WAIT)).decode()
                    assert line, "alice's client ended"
                    if "the marker" in line:
                        break
                    between.append(line)
                assert not [line for line in between if "joined" in line or "safety number" in line], between
            finally:
                await bob.connection.close()
            assert (await alice.line_with("went offline")).rstrip("\n").endswith("-- bob went offline")
            alice.stdin.close()
            assert await alice.exit_code() == 0
