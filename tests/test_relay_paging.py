"""Member lists handed over as their reader drains (relay/paging.py): a window at a time,
in order, the mail after them; what comes for the reader meanwhile behind them, neither
lost nor ahead of a list; a reader that never reads dropped after ``stall_timeout``, and
one that reads slowly never. Bytes and time in, actions out; then once over a socket."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import nacl.utils
import pytest
from nacl.public import PrivateKey
from test_mailboxes import Relay, _to

from e2echat.crypto.identity import registration_proof
from e2echat.relay import registration
from e2echat.relay.core import Close, ConnId, Persist, Write
from e2echat.relay.limits import Limits
from e2echat.relay.server import Relay as RelayServer
from e2echat.relay.store import Identity, Member, Snapshot
from e2echat.wire import messages as m
from e2echat.wire.codec import decode_message, encode_message
from e2echat.wire.framing import FrameDecoder, encode_frame
from e2echat.wire.objects import Envelope

from fake_store import FakeStore
from relay_frames import any_signed_prekey, decode_frame
from support import LOOPBACK, WAIT, running

#: a relay that may queue 32 KiB for a connection in one turn (soft mark 16 KiB)
SMALL: dict[str, Any] = dict(write_buffer=64 * 1024, stall_timeout=30.0, connect_rate=1e9, connect_burst=1e9)
TURN = Limits(**SMALL).write_buffer_turn


@pytest.fixture(autouse=True)
def _small_pages(monkeypatch: pytest.MonkeyPatch) -> None:
    # 50 entries a page (about 4 KiB): a list of a few thousand is many windows.
    monkeypatch.setattr(registration, "DIRECTORY_CHUNK", 50)


def _rooms(**sizes: int) -> tuple[Snapshot, dict[str, list[str]]]:
    """A store that knows rooms of ``sizes`` members, all away: and each room's members."""
    identities, members, names = [], [], {}
    for room, size in sizes.items():
        names[room] = [f"{room}{index}" for index in range(size)]
        for nick in names[room]:
            identities.append(Identity(nick, nacl.utils.random(32), 0.0))
            members.append(Member(f"#{room}", nick, 0.0))
    return Snapshot(identities=identities, members=members), names


def _window(relay: Relay, conn: ConnId, actions: list[Any]) -> tuple[list[m.Message], int]:
    """What ``actions`` write to ``conn``: the messages, and their bytes."""
    out = relay.keep(actions)
    size = sum(
        len(frame)
        for action in actions
        if isinstance(action, Write | Persist)
        for to, frame in action.frames
        if to == conn
    )
    return _to(conn, out, m.Message), size


def _drained(relay: Relay) -> None:
    """Everyone owed something reads fast: each turn's window is written and drains."""
    for _turn in range(1000):
        if not relay.keep(relay.core.flushed()):
            return
    raise AssertionError("still owed after 1000 turns")


def _read_slowly(relay: Relay, conn: ConnId) -> list[m.Message]:
    """``conn`` is past its soft mark after each window, then drains: what it gets, to the
    end of what it is owed."""
    got: list[m.Message] = []
    while True:
        relay.core.paused(conn, relay.now)
        assert _window(relay, conn, relay.core.flushed()) == ([], 0)
        window, size = _window(relay, conn, relay.core.resumed(conn))
        if not window:
            return got
        assert size <= TURN
        got += window


def _listed(messages: list[m.Message], room: str) -> list[str]:
    """Every member named in ``room``'s pages among ``messages`` (the last list of it)."""
    pages = [message for message in messages if isinstance(message, m.Members) and message.room == room]
    assert pages and not pages[-1].more
    start = max(index for index, page in enumerate(pages) if index == 0 or not pages[index - 1].more)
    return [nick for page in pages[start:] for nick in _nicks(page)]


def _nicks(page: m.Members) -> list[str]:
    return [peer.nick for peer in page.peers] + [member.nick for member in page.away]


def test_a_newcomer_slow_to_read_gets_its_lists_a_window_at_a_time_then_its_mail() -> None:
    snapshot, names = _rooms(big=1500, more=300)
    key = PrivateKey.generate()
    snapshot.identities.append(Identity("newcomer", bytes(key.public_key), 0.0))
    snapshot.members.append(Member("#big", "newcomer", 0.0))
    relay = Relay(FakeStore(snapshot), **SMALL)
    relay.join("alice", rooms=("#big",))
    _drained(relay)
    assert relay.send("alice", 1, "newcomer").queued == ("newcomer",)
    relay.join("newcomer", key=key, rooms=("#big", "#more"))
    conn = relay.conns["newcomer"]
    got, size = _window(relay, conn, relay.actions)
    assert isinstance(got[0], m.Welcome) and 0 < size <= TURN
    windows = 1
    while not any(isinstance(message, m.Mail) for message in got):
        relay.core.paused(conn, relay.now)  # its buffer passed the soft mark: it is slow
        assert _window(relay, conn, relay.core.flushed()) == ([], 0)  # nothing more while it is
        assert not [close for close in relay.tick(20.0) if isinstance(close, Close)]  # < stall_timeout
        window, size = _window(relay, conn, relay.core.resumed(conn))  # it read, and drained
        assert window and size <= TURN
        got += window
        windows += 1
    assert windows >= 4  # about 130 KiB of lists, over more than the stall timeout in all
    assert [type(message) for message in got] == [m.Welcome] + [m.Members] * (len(got) - 2) + [m.Mail]
    assert _listed(got, "#big") == ["alice", *names["big"]]
    assert _listed(got, "#more") == names["more"]
    rooms = [page.room for page in got if isinstance(page, m.Members)]
    assert rooms == sorted(rooms)  # #big's pages, then #more's
    assert "newcomer" in relay.core.online


def test_a_newcomer_that_drains_gets_the_next_window_each_turn() -> None:
    snapshot, names = _rooms(big=1500)
    relay = Relay(FakeStore(snapshot), **SMALL)
    relay.join("newcomer", rooms=("#big",))
    conn = relay.conns["newcomer"]
    got, _ = _window(relay, conn, relay.actions)
    for _turn in range(100):
        window, size = _window(relay, conn, relay.core.flushed())  # written, and not past the soft mark
        if not window:
            break
        assert size <= TURN
        got += window
    assert _listed(got, "#big") == names["big"]
    assert _window(relay, conn, relay.core.flushed()) == ([], 0)  # owed nothing now


def test_a_newcomer_that_never_reads_is_dropped_after_the_stall_timeout() -> None:
    snapshot, _ = _rooms(big=1500)
    relay = Relay(FakeStore(snapshot), **SMALL)
    relay.join("newcomer", rooms=("#big",))
    conn = relay.conns["newcomer"]
    relay.core.paused(conn, relay.now)
    assert relay.tick(29.0) == []
    assert Close(conn, "it is not reading") in relay.tick(2.0)
    assert "newcomer" not in relay.core.online
    assert relay.core.resumed(conn) == [] and relay.core.flushed() == []  # owed nothing more


def test_what_comes_while_the_lists_are_owed_comes_after_them_and_nothing_is_lost() -> None:
    """An ``entered`` of a room whose list is not made yet is in the list, not sent; one of
    a room whose list is on its way comes after its last page; presence and answers after
    the lists; a delivery is refused to its sender (it would overtake them)."""
    snapshot, names = _rooms(big=1500, small=3)
    relay = Relay(FakeStore(snapshot), **SMALL)
    relay.join("carol", rooms=("#big",))
    relay.join("erin", rooms=())
    _drained(relay)
    relay.join("newcomer", rooms=("#big", "#small"))
    conn = relay.conns["newcomer"]
    got, _ = _window(relay, conn, relay.actions)
    assert isinstance(got[-1], m.Members) and got[-1].room == "#big" and got[-1].more  # on its way
    # Not past its soft mark yet: a delivery would still fit in this turn, but would
    # overtake the lists. Refused, as to a reader that is behind.
    assert relay.send("carol", 6, "newcomer").refused == ("newcomer",)
    relay.core.paused(conn, relay.now)  # the shell wrote it, and it is past the soft mark
    assert _window(relay, conn, relay.core.flushed()) == ([], 0)
    assert not _to(conn, relay.join("dave", rooms=("#small",)), m.Message)  # a contact: all behind
    assert not _to(conn, relay.say("erin", m.Join("#big")), m.Message)
    assert relay.send("carol", 7, "newcomer").refused == ("newcomer",)
    assert not _to(conn, relay.say("newcomer", m.Ping()), m.Message)
    assert not _to(conn, relay.leave("carol"), m.Message)
    window, _ = _window(relay, conn, relay.core.resumed(conn))
    got += window
    while window:
        window, _ = _window(relay, conn, relay.core.flushed())
        got += window
    tail = [message for message in got if not isinstance(message, m.Members | m.Welcome)]
    assert [type(message) for message in tail] == [m.PeerJoined, m.Entered, m.Pong, m.PeerLeft]
    entered = tail[1]
    assert isinstance(entered, m.Entered) and (entered.room, entered.peer.nick) == ("#big", "erin")
    assert tail[3] == m.PeerLeft("carol")
    # No entered for #small: its list, made after dave came, has him.
    assert _listed(got, "#small") == ["dave", *names["small"]]
    assert _listed(got, "#big") == ["carol", *names["big"]]  # as it was when it was made
    members = [index for index, message in enumerate(got) if isinstance(message, m.Members)]
    assert members[-1] < got.index(entered)


def test_a_join_of_a_big_room_is_answered_a_window_at_a_time() -> None:
    snapshot, names = _rooms(big=1500, next=1000)
    relay = Relay(FakeStore(snapshot), **SMALL)
    relay.join("alice", rooms=())
    relay.join("carol", rooms=("#next",))
    _drained(relay)
    conn = relay.conns["alice"]
    joins = b"".join(encode_frame(encode_message(m.Join(room))) for room in ("#big", "#next"))
    got, size = _window(relay, conn, relay.core.receive_data(conn, joins, relay.now))
    assert 0 < size <= TURN
    assert [message.room for message in got if isinstance(message, m.Members)] == ["#big"] * len(got)
    relay.core.paused(conn, relay.now)
    assert _window(relay, conn, relay.core.flushed()) == ([], 0)
    out = relay.join("dave", rooms=("#next",))
    assert not _to(conn, out, m.Message)  # in #next's list, when it is made
    assert _to(relay.conns["carol"], out, m.Entered)
    got += _read_slowly(relay, conn)
    assert _listed(got, "#big") == names["big"]
    assert _listed(got, "#next") == ["carol", "dave", *names["next"]]
    assert not [message for message in got if isinstance(message, m.Entered)]


def test_an_answer_that_waits_for_the_store_still_does_behind_the_lists() -> None:
    snapshot, names = _rooms(big=1500)
    relay = Relay(FakeStore(snapshot), **SMALL)
    relay.join("newcomer", rooms=("#big",))
    conn = relay.conns["newcomer"]
    relay.core.paused(conn, relay.now)
    relay.core.flushed()
    routed = relay.say("newcomer", m.Send(1, (Envelope(names["big"][0], b"\x01" * 41),)))
    assert not _to(conn, routed, m.Routed)
    assert any(isinstance(action, Persist) and action.ops for action in relay.actions)  # the mail, kept
    released = []
    actions = relay.core.resumed(conn)
    while actions:
        released += actions
        actions = relay.core.flushed()
    (last,) = [
        action
        for action in released
        if any(
            isinstance(decode_frame(frame), m.Routed)
            for _, frame in action.frames  # type: ignore[union-attr]
        )
    ]
    assert isinstance(last, Persist) and last.ops == []  # written once what was given before is kept


def test_a_newcomer_that_lets_too_much_pile_up_behind_its_lists_is_dropped() -> None:
    snapshot, _ = _rooms(big=1500)
    relay = Relay(FakeStore(snapshot), **SMALL)
    relay.join("newcomer", rooms=("#big",))
    conn = relay.conns["newcomer"]
    relay.core.paused(conn, relay.now)
    pings = encode_frame(encode_message(m.Ping())) * 2000  # 2000 pongs: over 32 KiB...
    assert not relay.keep(relay.core.receive_data(conn, pings, relay.now))
    out = relay.keep(relay.core.receive_data(conn, pings, relay.now))  # ...4000: over 64 KiB
    assert Close(conn, "it is not reading") in out
    assert "newcomer" not in relay.core.online


# -- over a socket -------------------------------------------------------------------------------


@pytest.mark.parametrize("slow", [True, False], ids=["slow", "fast"])
async def test_a_client_gets_every_page_and_is_not_dropped(slow: bool) -> None:
    """About 1.4 MB of lists against a write buffer of 64 KiB. To a client that reads
    4 KiB at a time behind a small kernel buffer: all of it written at once, it would be
    dropped as not reading. To one that reads fast, on loopback's big kernel buffers: the
    relay's buffer never passes the soft mark, and each window follows the last anyway."""
    snapshot, names = _rooms(big=20_000)
    async with running(RelayServer(LOOPBACK, 0, store=FakeStore(snapshot), **SMALL)) as relay:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if slow:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        await loop.sock_connect(sock, (LOOPBACK, relay.port))
        reader, writer = await asyncio.open_connection(sock=sock)
        decoder = FrameDecoder()
        frames: list[bytes] = []

        async def receive() -> m.Message:
            while not frames:
                data = await asyncio.wait_for(reader.read(4096), WAIT)
                assert data, "the relay hung up"
                frames.extend(decoder.receive_data(data))
                if slow:
                    await asyncio.sleep(0.001)
            return decode_message(frames.pop(0))

        challenge = await receive()
        assert isinstance(challenge, m.Challenge)
        transport = relay.transport(1)  # its first connection: ours
        assert transport is not None
        if slow:  # a small kernel buffer, as a slow link: what waits, waits in the relay
            transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        identity, session = PrivateKey.generate(), PrivateKey.generate()
        proofs = registration_proof(identity, session, challenge)
        register = m.Register(
            "slow", identity.public_key, session.public_key, *proofs, any_signed_prekey(), ("#big",)
        )
        writer.write(encode_frame(encode_message(register)))
        assert isinstance(await receive(), m.Welcome)
        listed: list[str] = []
        started = time.monotonic()
        while True:
            page = await receive()
            assert isinstance(page, m.Members) and page.room == "#big"
            listed += [member.nick for member in page.away]
            assert "slow" in relay.core.online, "dropped as not reading"
            conn = relay.core.online["slow"]
            transport = relay.transport(conn)
            assert transport is not None and transport.get_write_buffer_size() <= relay.limits.write_buffer
            if not page.more:
                break
            assert time.monotonic() - started < 60
        assert listed == names["big"]
        writer.write(encode_frame(encode_message(m.Ping())))
        assert await receive() == m.Pong()
        writer.close()
