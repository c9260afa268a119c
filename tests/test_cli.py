"""The command line as a user meets it: real processes, real pipes, real exit codes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from nacl.public import PrivateKey

from e2echat import __version__
from e2echat.client.core import MessageReceived, PeerJoined, RoomEntered
from e2echat.crypto.identity import fingerprint
from e2echat.relay.server import Relay
from e2echat.store.files import exclusive
from e2echat.store.keyfile import load_or_create_relay_key
from e2echat.store.profiles import SETTINGS_FILE
from e2echat.ui.chat import Chat
from e2echat.wire import messages as m
from e2echat.wire.objects import Envelope

from hostile import HostileRelay, deliveries
from relay_frames import Outgoing
from support import (
    LOOPBACK,
    WAIT,
    RawClient,
    connect,
    peers,
    run_cli,
    running,
    running_relay,
    spawn_cli,
    start_relay_process,
    text_into,
)


@dataclass(frozen=True)
class _Listening:
    """A relay in another process, as ``connect`` sees it."""

    port: int


def _one_clear_line(err: str) -> str:
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


async def test_version() -> None:
    code, out, _ = await run_cli("--version")
    assert (code, out.strip()) == (0, f"e2echat {__version__}")


async def test_help_lists_both_commands() -> None:
    code, out, _ = await run_cli("--help")
    assert code == 0
    assert "relay" in out and "connect" in out


async def test_unreachable_relay(tmp_path: Path) -> None:
    async with running_relay() as relay:
        port = relay.port  # free once the relay stops
    code, _, err = await run_cli("connect", "--nick", "alice", "--port", str(port), "--home", str(tmp_path))
    assert code == 3
    line = _one_clear_line(err)
    assert line == f"e2echat: cannot reach relay at 127.0.0.1:{port} — is `e2echat relay` running?"


async def test_invalid_nick(tmp_path: Path) -> None:
    code, _, err = await run_cli("connect", "--nick", "no spaces please", "--home", str(tmp_path))
    assert code == 2
    assert "invalid nick" in _one_clear_line(err)
    assert not (tmp_path / "identity.key").exists()


async def test_bad_port_is_a_usage_error(tmp_path: Path) -> None:
    code, _, err = await run_cli("connect", "--nick", "alice", "--port", "http", "--home", str(tmp_path))
    assert code == 2
    assert "not a port number" in err and "Traceback" not in err


async def test_taken_nick(tmp_path: Path) -> None:
    async with running_relay() as relay, peers(relay, "alice"):
        code, _, err = await run_cli(
            "connect", "--nick", "alice", "--port", str(relay.port), "--home", str(tmp_path)
        )
    assert code == 5
    assert "already online" in _one_clear_line(err)


async def test_a_nick_with_mail_waiting_for_another_key_is_refused_clearly(tmp_path: Path) -> None:
    async with running_relay() as relay:
        away = await RawClient.open(relay)
        await away.register("bob")
        away.close()
        async with asyncio.timeout(WAIT):
            while "bob" in relay.core.online:
                await asyncio.sleep(0.01)
        alice = await RawClient.open(relay)
        await alice.register("alice")
        alice.send(m.Send(1, (Envelope("bob", b"\x01" * 41),)))
        assert (await alice.receive_kind(m.Routed)).queued == ("bob",)
        code, _, err = await run_cli(
            "connect", "--nick", "bob", "--port", str(relay.port), "--home", str(tmp_path)
        )
        alice.close()
    assert code == 5
    line = _one_clear_line(err)
    assert "messages wait here for another key of 'bob'" in line and "another nick" in line


async def test_line_mode_chat_through_a_pipe(tmp_path: Path) -> None:
    """Lines from stdin are sent; events come out one per line; EOF leaves after sending."""
    home = tmp_path / "bob"
    async with running_relay() as relay, peers(relay, "alice") as (alice,):
        args = (
            "connect",
            "--nick",
            "bob",
            "--host",
            LOOPBACK,
            "--port",
            str(relay.port),
            "--home",
            str(home),
        )
        async with spawn_cli(*args) as bob:
            await alice.next(PeerJoined, lambda e: e.nick == "bob")
            alice.connection.send_room("#lobby", "hi bob")
            assert "<alice ?> hi bob" in await bob.line_with("<alice")
            bob.stdin.write(b"hello alice\n/msg alice psst\n/who\n")
            assert "online: alice" in await bob.line_with("you are bob")
            assert (await alice.next(MessageReceived)).text == "hello alice"
            assert (await alice.next(MessageReceived)) == MessageReceived("bob", "psst", private=True)
            # These are sent right before end of input: they must still arrive.
            bob.stdin.write(b"one more\nand the last\n")
            bob.stdin.close()
            assert await bob.exit_code() == 0
            received = [(await alice.next(MessageReceived)).text for _ in range(2)]
            assert received == ["one more", "and the last"]
    assert oct((home / "identity.key").stat().st_mode & 0o777) == "0o600"
    assert oct(home.stat().st_mode & 0o777) == "0o700"


async def test_line_mode_client_survives_a_relay_restart(tmp_path: Path) -> None:
    """The relay goes away mid-chat: bob says so, keeps what he types, reconnects when the
    relay is back, sends it, and chats on."""
    alice_identity = PrivateKey.generate()
    async with running_relay() as first:
        port = first.port
        alice = await connect(first, "alice", alice_identity)
        async with spawn_cli("connect", "--nick", "bob", "--port", str(port), "--home", str(tmp_path)) as bob:
            await alice.next(PeerJoined, lambda e: e.nick == "bob")
            await first.stop("restarting")
            assert "the relay is shutting down: restarting" in await bob.line_with("shutting down")
            assert f"lost the relay at 127.0.0.1:{port}" in await bob.line_with("lost the relay")
            await bob.line_with("reconnecting in")
            bob.stdin.write(b"typed while the relay was away\n")
            await bob.line_with("will be sent when the relay is back")

            async with running(Relay(LOOPBACK, port, key=first.core.key)) as second:  # with its key
                alice_again = await connect(second, "alice", alice_identity)
                assert "online: alice" in await bob.line_with("connected to the relay")
                got = await alice_again.next(MessageReceived)
                assert (got.sender, got.text) == ("bob", "typed while the relay was away")
                alice_again.connection.send_private("bob", "welcome back")
                assert "welcome back" in await bob.line_with("welcome back")
                bob.stdin.close()
                assert await bob.exit_code() == 0
                await alice_again.connection.close()


@contextlib.asynccontextmanager
async def relay_process(*args: str) -> AsyncIterator[tuple[int, list[str]]]:
    """A running ``e2echat relay ARGS``: (port, banner). Stopped (SIGTERM) at the end."""
    process, port, banner = await start_relay_process(*args)
    try:
        yield port, banner
    finally:
        if process.returncode is None:
            process.terminate()
            await asyncio.wait_for(process.wait(), WAIT)


def shown_fingerprint(banner: list[str]) -> str:
    """The relay key's fingerprint, as the relay's banner shows it."""
    (line,) = [line for line in banner if "key fingerprint" in line]
    return line.rsplit(" is ", 1)[1]


async def test_relay_command_announces_itself_and_stops_on_signals() -> None:
    for signum in (signal.SIGINT, signal.SIGTERM):
        process, port, banner = await start_relay_process()
        try:
            assert banner[0] == f"e2echat relay listening on {LOOPBACK}:{port}"
            assert f"e2echat connect --nick YOUR_NAME --host {LOOPBACK} --port {port}" in banner[2]
            # It serves: a real client registers through it.
            peer = await connect(_Listening(port), "alice")
            process.send_signal(signum)
            _, err = await asyncio.wait_for(process.communicate(), WAIT)
            assert process.returncode == 0
            assert "Traceback" not in err.decode()
            await peer.connection.close()
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()


async def test_the_relay_keeps_its_key_in_a_file_and_shows_its_fingerprint(tmp_path: Path) -> None:
    async with relay_process("--port", "0") as (_, banner):
        default = Path(os.environ["XDG_DATA_HOME"]) / "e2echat" / "relay" / "relay.key"
        assert stat.S_IMODE(default.stat().st_mode) == 0o600
        key, _ = load_or_create_relay_key(default)
        assert shown_fingerprint(banner) == fingerprint(key.public_key)
        assert f"Its key is in {default} (made just now)" in "\n".join(banner)
    chosen = tmp_path / "elsewhere.key"
    async with relay_process("--port", "0", "--key", str(chosen)) as (_, banner):
        first = shown_fingerprint(banner)
        assert first != fingerprint(key.public_key) and stat.S_IMODE(chosen.stat().st_mode) == 0o600
    async with relay_process("--port", "0", "--key", str(chosen)) as (_, banner):
        assert shown_fingerprint(banner) == first  # the same relay, restarted
        assert "made just now" not in "\n".join(banner)
    code, relay_help, _ = await run_cli("relay", "--help")
    assert code == 0 and "--key FILE" in relay_help and "relay.key" in relay_help


async def test_a_damaged_relay_key_file_stops_the_relay_with_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "relay.key").write_text("{}")
    code, _, err = await run_cli("relay", "--port", "0", "--key", str(tmp_path / "relay.key"))
    assert code == 1 and "not an e2echat relay key file" in _one_clear_line(err)


async def test_relay_port_in_use_is_a_clear_error() -> None:
    async with running_relay() as relay:
        code, _, err = await run_cli("relay", "--host", LOOPBACK, "--port", str(relay.port))
    assert code == 1
    assert f"cannot start the relay on {LOOPBACK}:{relay.port}" in _one_clear_line(err)


async def test_overlong_relay_password_is_a_clear_error(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("x" * 600 + "\n")
    code, _, err = await run_cli("relay", "--port", "0", "--password-file", str(secret))
    assert code == 2 and "longer than 512 bytes" in _one_clear_line(err)


async def test_a_relay_password_that_is_not_utf8_is_a_clear_error(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_bytes(b"\xff\xfe secret\n")
    code, _, err = await run_cli(
        "relay", "--port", "0", "--password-file", str(secret), "--key", str(tmp_path / "k")
    )
    assert code == 2 and "is not UTF-8 text" in _one_clear_line(err)
    environment = {**os.environ, "E2ECHAT_RELAY_PASSWORD": "s\udcffcret"}  # as Python keeps bad bytes
    code, _, err = await run_cli("relay", "--port", "0", "--key", str(tmp_path / "k"), env=environment)
    assert code == 2 and "E2ECHAT_RELAY_PASSWORD is not UTF-8 text" in _one_clear_line(err)


async def test_a_second_client_on_one_profile_is_refused(tmp_path: Path) -> None:
    """Two clients on one profile would write the same files (and lose messages when one
    of them crashed): the second is turned away before it touches anything."""
    async with running_relay() as relay:
        with exclusive(tmp_path):  # as a first client holds it
            code, _, err = await run_cli(
                "connect", "--nick", "alice", "--port", str(relay.port), "--home", str(tmp_path)
            )
    assert code == 2
    assert _one_clear_line(err) == (
        f"e2echat: the profile in {tmp_path} is in use by another e2echat: close that one first "
        "(or give this one its own --home)"
    )
    assert not (tmp_path / "identity.key").exists()


# -- line mode's exit code: 4 unless everything typed was sent and delivered ------------------


async def test_line_mode_exits_4_for_a_message_to_nobody(tmp_path: Path) -> None:
    async with running_relay() as relay, peers(relay, "alice"):
        args = ("--nick", "bob", "--port", str(relay.port), "--home", str(tmp_path))
        code, out, err = await run_cli("connect", *args, stdin=b"/msg nobody x\n")
    assert "NOT delivered to nobody (not known to this relay)" in out and "Traceback" not in err
    assert code == 4


async def test_line_mode_exits_4_when_a_message_was_not_delivered(tmp_path: Path) -> None:
    """alice reads the message, but her receipt never reaches bob (the relay drops it) and
    she leaves: bob's report says she did not confirm it, and so does his exit code."""

    def drop_alices_receipts(relay: HostileRelay, action: Outgoing, deliver: m.Deliver) -> list[Outgoing]:
        return [] if deliver.sender == "alice" else [action]

    async with (
        running(HostileRelay(deliveries(drop_alices_receipts))) as relay,
        peers(relay, "alice") as (alice,),
    ):
        args = ("connect", "--nick", "bob", "--port", str(relay.port), "--home", str(tmp_path))
        async with spawn_cli(*args) as bob:
            await alice.next(PeerJoined, lambda e: e.nick == "bob")
            bob.stdin.write(b"/msg alice are you there?\n")
            assert (await alice.next(MessageReceived)).text == "are you there?"
            await alice.connection.close()
            assert "NOT delivered to alice" in await bob.line_with("are you there?")
            bob.stdin.close()
            assert await bob.exit_code() == 4


async def test_what_is_not_confirmed_when_the_user_leaves_is_reported_by_name() -> None:
    """At the end of input the chat waits, bounded, for every receipt; at the bound, each
    message still unconfirmed is reported NOT delivered, naming who did not confirm it."""

    def drop_receipts(relay: HostileRelay, action: Outgoing, deliver: m.Deliver) -> list[Outgoing]:
        return [] if relay.nick(action.conn) == "alice" else [action]

    async with (
        running(HostileRelay(deliveries(drop_receipts))) as relay,
        peers(relay, "alice", "bob") as (alice, bob),
    ):
        shown: list[str] = []
        chat = Chat(alice.connection, text_into(shown))
        chat.handle_line("/msg bob last words")
        assert (await bob.next(MessageReceived)).text == "last words"
        await chat.finish(0.5)
        chat.show_queued()
        assert any('"last words" NOT delivered to bob (no receipt within 0.5s' in line for line in shown), (
            shown
        )
        assert chat.undelivered


async def test_leaving_says_what_it_waits_for_and_ctrl_c_leaves_at_once_with_the_report() -> None:
    """While the chat waits for receipts before leaving it says which messages wait and
    for whom; Ctrl+C (SIGINT) then ends the wait at once, each one reported NOT delivered."""

    def drop_receipts(relay: HostileRelay, action: Outgoing, deliver: m.Deliver) -> list[Outgoing]:
        return [] if relay.nick(action.conn) == "alice" else [action]

    async with (
        running(HostileRelay(deliveries(drop_receipts))) as relay,
        peers(relay, "alice", "bob", "user10", "user2") as (alice, bob, *_),
    ):
        shown: list[str] = []
        before = signal.getsignal(signal.SIGINT)
        chat = Chat(alice.connection, text_into(shown))
        chat.handle_line("/msg bob last words")
        chat.handle_line("to the room")
        assert (await bob.next(MessageReceived)).text == "last words"
        loop = asyncio.get_running_loop()
        started = loop.time()
        loop.call_later(0.3, os.kill, os.getpid(), signal.SIGINT)
        await chat.finish(30.0)
        assert loop.time() - started < 10  # not the 30 s: Ctrl+C ended the wait
        chat.show_queued()
        waiting = [line for line in shown if "waiting up to 30s" in line]
        assert len(waiting) == 1, shown
        assert (
            '2 messages to be confirmed: "last words" (bob), "to the room" (bob, user2, user10); Ctrl+C'
            in waiting[0]
        )
        assert any(
            '"last words" NOT delivered to bob (you left before its receipt came)' in line for line in shown
        )
        assert any('"to the room" NOT delivered to bob (you left' in line for line in shown), shown
        assert chat.undelivered
        assert signal.getsignal(signal.SIGINT) is before  # the wait's handler is gone with it


@pytest.mark.parametrize("command", ["connect", "relay"])
async def test_a_host_name_that_cannot_be_encoded_is_a_clear_error(command: str, tmp_path: Path) -> None:
    """An empty label ('a..b') fails in getaddrinfo's IDNA step with a UnicodeError, not
    an OSError: it is bad input all the same, and gets one line, not a traceback."""
    args = (
        ["--nick", "alice", "--home", str(tmp_path)]
        if command == "connect"
        else ["--key", str(tmp_path / "k")]
    )
    code, _, err = await run_cli(command, "--host", "a..b", "--port", "1", *args)
    assert code in (1, 3)
    line = _one_clear_line(err)
    assert "a..b" in line and "Traceback" not in err


async def test_line_mode_keeps_the_rooms_in_the_profile_and_joins_them_again(tmp_path: Path) -> None:
    """/join in line mode: kept in the profile, and named at the next start's registration."""
    home = tmp_path / "bob"
    args = ("connect", "--nick", "bob", "--host", LOOPBACK, "--home", str(home))
    async with running_relay() as relay, peers(relay, "alice", rooms=("#ops",)) as (alice,):
        port = ("--port", str(relay.port))
        async with spawn_cli(*args, *port) as bob:
            bob.stdin.write(b"/join #ops\n")
            await alice.next(RoomEntered, lambda e: e.nick == "bob")
            bob.stdin.write(b"hello ops\n")
            got = await alice.next(MessageReceived)
            assert (got.text, got.room) == ("hello ops", "#ops")
            bob.stdin.write(b"/part #lobby\n")
            bob.stdin.close()
            assert await bob.exit_code() == 0
        kept = json.loads((home / SETTINGS_FILE).read_text())
        assert (kept["rooms"], kept["room"]) == (["#ops"], "#ops")
        async with spawn_cli(*args, *port) as bob:
            await alice.next(PeerJoined, lambda e: e.nick == "bob")  # back, and in #ops still
            bob.stdin.write(b"back again\n")
            got = await alice.next(MessageReceived)
            assert (got.text, got.room) == ("back again", "#ops")
            bob.stdin.close()
            assert await bob.exit_code() == 0
