"""Clients pin the relay's long-term key per host:port (issue 16: an impostor relay must
not harvest the relay password).

A client pins the key on first contact and says so, says nothing more while it stays
the same (a restarted relay loads it from its file), and sends a relay with another key
nothing at all (no registration, no password) unless the user accepts the new key: on a
terminal when asked, elsewhere with --trust-relay-key.
"""

from __future__ import annotations

import asyncio
import os
import stat
import sys
from pathlib import Path

import pytest
from nacl.public import PrivateKey, PublicKey
from test_cli import relay_process, shown_fingerprint

from e2echat.client.core import ClientCore, ClientState, RelayKeyRefused
from e2echat.client.events import Disconnected, Registered
from e2echat.client.relays import KnownRelays, RelayTrust, relay_address
from e2echat.crypto.identity import fingerprint, parse_fingerprint
from e2echat.errors import KeyFileError
from e2echat.relay.server import Relay
from e2echat.store.keyfile import load_or_create_relay_key
from e2echat.store.relays import KNOWN_RELAYS_FILE, RelayPinFile
from e2echat.wire import messages as m
from e2echat.wire.codec import encode_message
from e2echat.wire.framing import encode_frame

from hostile import HostileRelay
from support import LOOPBACK, REPO, WAIT, connect, run_cli, running

RELAY_KEY = PrivateKey.generate()
IMPOSTOR_KEY = PrivateKey.generate()
PASSWORD = "correct horse battery staple"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _frame(message: m.Message) -> bytes:
    return encode_frame(encode_message(message))


def _challenge(key: PrivateKey, password_required: bool = True) -> bytes:
    return _frame(m.Challenge(key.public_key, b"\x05" * 32, password_required))


# -- pure: which key a client answers ------------------------------------------------------


def test_relay_trust_first_contact_pinned_and_given() -> None:
    ours, theirs = RELAY_KEY.public_key, IMPOSTOR_KEY.public_key
    assert RelayTrust().accepts(ours) and RelayTrust().accepts(theirs)  # first contact
    assert RelayTrust(ours).accepts(ours)
    assert not RelayTrust(ours).accepts(theirs)
    # A fingerprint the user gives is that key and no other, whatever is pinned.
    assert RelayTrust(ours, fingerprint(theirs)).accepts(theirs)
    assert not RelayTrust(ours, fingerprint(theirs)).accepts(ours)
    assert not RelayTrust(None, fingerprint(theirs)).accepts(ours)


def test_client_sends_a_relay_with_another_key_nothing() -> None:
    """The core checks the relay's key before it answers the challenge: to a key other
    than the pinned one it writes no byte (no proof, no password), and says why."""
    client = ClientCore(
        "bob",
        PrivateKey.generate(),
        PrivateKey.generate(),
        password=PASSWORD.encode(),
        relay_trust=RelayTrust(RELAY_KEY.public_key),
    )
    events = client.receive_data(_challenge(IMPOSTOR_KEY))
    assert events == [
        RelayKeyRefused(fingerprint(IMPOSTOR_KEY.public_key), fingerprint(RELAY_KEY.public_key))
    ]
    assert client.data_to_send() == b""
    assert client.state is ClientState.CLOSED
    assert client.relay_key is None  # nothing to pin


def test_client_answers_the_pinned_key_and_a_given_fingerprint() -> None:
    for trust, key in [
        (RelayTrust(RELAY_KEY.public_key), RELAY_KEY),
        (RelayTrust(RELAY_KEY.public_key, fingerprint(IMPOSTOR_KEY.public_key)), IMPOSTOR_KEY),
        (RelayTrust(), IMPOSTOR_KEY),
    ]:
        client = ClientCore("bob", PrivateKey.generate(), PrivateKey.generate(), relay_trust=trust)
        assert client.receive_data(_challenge(key, password_required=False)) == []
        assert client.state is ClientState.AWAIT_WELCOME and client.data_to_send()
        assert client.relay_key == key.public_key


def test_a_given_fingerprint_that_does_not_match_is_refused_on_first_contact() -> None:
    wanted = fingerprint(RELAY_KEY.public_key)
    client = ClientCore(
        "bob", PrivateKey.generate(), PrivateKey.generate(), relay_trust=RelayTrust(None, wanted)
    )
    (event,) = client.receive_data(_challenge(IMPOSTOR_KEY))
    assert event == RelayKeyRefused(fingerprint(IMPOSTOR_KEY.public_key), wanted, given=True)
    assert client.data_to_send() == b""


def test_known_relays_round_trip_and_addresses() -> None:
    known = KnownRelays()
    assert known.pin("127.0.0.1:8000", RELAY_KEY.public_key) is True
    assert known.pin("127.0.0.1:8000", RELAY_KEY.public_key) is False  # nothing new
    assert known.pin("[::1]:8000", IMPOSTOR_KEY.public_key) is True
    again = KnownRelays.decode(known.encode())
    assert again.get("127.0.0.1:8000") == RELAY_KEY.public_key
    assert again.get("[::1]:8000") == IMPOSTOR_KEY.public_key
    assert again.get("127.0.0.1:8001") is None
    assert relay_address("Relay.LAN", 8000) == "relay.lan:8000"
    assert relay_address("::1", 8000) == "[::1]:8000"


def test_fingerprints_are_read_as_people_type_them() -> None:
    printed = fingerprint(RELAY_KEY.public_key)
    digits = printed.replace(" ", "")
    for typed in (printed, digits, digits.upper(), ":".join(printed.split())):
        assert parse_fingerprint(typed) == printed
    for bad in ("", digits[:-1], digits + "0", digits[:-1] + "g"):
        assert parse_fingerprint(bad) is None


_FORMAT = b'"format": "e2echat-known-relays-v1"'
DAMAGED = [
    b"",
    b"[]",
    b'{"format": "e2echat-known-peers-v1", "relays": {}}',
    b"{" + _FORMAT + b"}",
    b"{" + _FORMAT + b', "relays": {"h:1": "AAAA"}}',
]


@pytest.mark.parametrize("data", DAMAGED)
def test_a_damaged_known_relays_file_is_a_clear_error(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / KNOWN_RELAYS_FILE
    path.write_bytes(data)
    with pytest.raises(KeyFileError, match="known-relays file is damaged"):
        RelayPinFile(path).load()


def test_the_known_relays_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / "profile" / KNOWN_RELAYS_FILE
    assert RelayPinFile(path).load().get("h:1") is None  # no file: nothing pinned
    known = KnownRelays()
    known.pin("h:1", RELAY_KEY.public_key)
    RelayPinFile(path).save(known)
    assert _mode(path) == 0o600
    assert RelayPinFile(path).load().get("h:1") == RELAY_KEY.public_key


# -- a reconnecting client -------------------------------------------------------------------


async def test_a_reconnect_answers_only_the_key_of_the_first_connection() -> None:
    """The relay restarts with its key: bob reconnects as before. It is replaced by one
    with another key on the same port: bob sends it nothing and stops reconnecting."""
    async with running(Relay(LOOPBACK, 0, key=RELAY_KEY)) as first:
        port = first.port
        bob = await connect(first, "bob", reconnecting=True)
    async with running(Relay(LOOPBACK, port, key=RELAY_KEY)):
        await bob.next(Registered)  # silently, as any reconnect
    impostor = HostileRelay(key=IMPOSTOR_KEY, password=PASSWORD.encode())
    impostor.requested_port = port
    async with running(impostor):
        ended = await bob.next(Disconnected)
        assert "came back with another key" in ended.detail
        assert fingerprint(IMPOSTOR_KEY.public_key) in ended.detail
        assert impostor.received == []  # not a frame: no registration, no password
    await bob.connection.close()


# -- the command line --------------------------------------------------------------------------


async def _bob(port: int, *options: str, typed: bytes = b"") -> tuple[int, str, str]:
    """bob in line mode, with the relay password, typing ``typed``."""
    env = {**os.environ, "E2ECHAT_RELAY_PASSWORD": PASSWORD}
    return await run_cli("connect", "--nick", "bob", "--port", str(port), *options, stdin=typed, env=env)


def _pinned(port: int) -> PublicKey | None:
    path = Path(os.environ["XDG_DATA_HOME"]) / "e2echat" / "bob" / KNOWN_RELAYS_FILE
    assert _mode(path) == 0o600
    return RelayPinFile(path).load().get(f"127.0.0.1:{port}")


async def test_connect_pins_the_relay_then_refuses_an_impostor_with_exit_code_6(tmp_path: Path) -> None:
    key_file = tmp_path / "relay.key"
    password_file = tmp_path / "password"
    password_file.write_text(PASSWORD + "\n")
    relay_args = ("--key", str(key_file), "--password-file", str(password_file))
    async with relay_process("--port", "0", *relay_args) as (port, banner):
        relay_fingerprint = shown_fingerprint(banner)
        code, out, err = await _bob(port)
        assert code == 0, err
        assert f"-- pinned relay 127.0.0.1:{port} key {relay_fingerprint}" in out
        code, out, err = await _bob(port)
        assert code == 0, err
        assert "pinned" not in out and "key" not in err  # the same key: nothing to say
    # Restarted, with its key file: the same relay to bob.
    async with relay_process("--port", str(port), *relay_args):
        code, out, err = await _bob(port)
        assert (code, err) == (0, "") and "pinned" not in out
    relay_key, _ = load_or_create_relay_key(key_file)
    assert _pinned(port) == relay_key.public_key
    # An impostor on the same address asks for the password: it gets nothing.
    impostor = HostileRelay(key=IMPOSTOR_KEY, password=PASSWORD.encode())
    impostor.requested_port = port
    new_fingerprint = fingerprint(IMPOSTOR_KEY.public_key)
    async with running(impostor):
        for options in [(), ("--json",), ("--trust-relay-key", relay_fingerprint)]:
            # Not asked: a "y" piped in is a message, not the user's consent.
            code, out, err = await _bob(port, *options, typed=b"y\n")
            assert code == 6, err
            assert err.count("\n") == 1 and "Traceback" not in err
            assert (
                f"the relay at 127.0.0.1:{port} " in err
                and "nothing was sent to it (not your password either)" in err
            )
            assert impostor.received == []  # no registration, so no password, not even boxed
        code, _, err = await _bob(port)
        assert "different key than the one pinned" in err
        assert f"run again with --trust-relay-key '{new_fingerprint}'" in err
        assert _pinned(port) == relay_key.public_key  # still the real one
        # The user confirmed the new key with whoever runs the relay: accepted, re-pinned.
        code, out, err = await _bob(port, "--trust-relay-key", new_fingerprint.replace(" ", "").upper())
        assert code == 0, err
        assert f"the relay at 127.0.0.1:{port} has a new key, now pinned: {new_fingerprint}" in out
        assert [type(msg) for _, msg in impostor.received][:1] == [m.Register]
    assert _pinned(port) == IMPOSTOR_KEY.public_key


async def test_an_invalid_fingerprint_is_a_usage_error() -> None:
    code, _, err = await run_cli("connect", "--nick", "bob", "--trust-relay-key", "abcd")
    assert code == 2 and "is not a key fingerprint" in err


async def test_connect_help_explains_the_option() -> None:
    code, connect_help, _ = await run_cli("connect", "--help")
    assert code == 0 and "--trust-relay-key FINGERPRINT" in connect_help and "exit code 6" in connect_help


class Terminal:
    """``e2echat ARGS`` on a pseudo-terminal of its own, as a person would run it: what it
    shows is read from the terminal's other end, and what the person types written to it."""

    def __init__(self, process: asyncio.subprocess.Process, master: int) -> None:
        self.process = process
        self.master = master
        self.shown = ""
        self._more = asyncio.Event()
        asyncio.get_running_loop().add_reader(master, self._read)

    @classmethod
    async def start(cls, *args: str) -> Terminal:
        master, slave = os.openpty()
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "e2echat",
            *args,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            cwd=REPO,
            env={**os.environ, "TERM": "dumb", "E2ECHAT_RELAY_PASSWORD": PASSWORD},
            start_new_session=True,  # the terminal becomes its controlling terminal
        )
        os.close(slave)
        return cls(process, master)

    def _read(self) -> None:
        try:
            data = os.read(self.master, 65536)
        except OSError:  # the other end closed
            data = b""
        if not data:
            asyncio.get_running_loop().remove_reader(self.master)
        self.shown += data.decode(errors="replace")
        self._more.set()

    async def wait_for(self, text: str) -> None:
        async def until() -> None:
            while text not in self.shown:
                self._more.clear()
                await self._more.wait()

        try:
            await asyncio.wait_for(until(), 3 * WAIT)
        except TimeoutError:
            raise AssertionError(f"{text!r} never appeared; the terminal shows:\n{self.shown}") from None

    def type(self, text: str) -> None:
        os.write(self.master, text.encode())

    async def exit_code(self) -> int:
        code = await asyncio.wait_for(self.process.wait(), 3 * WAIT)
        asyncio.get_running_loop().remove_reader(self.master)
        os.close(self.master)
        return code


async def test_on_a_terminal_a_changed_relay_key_is_asked_about() -> None:
    """In the REPL the user is warned and asked; only "y" sends the relay anything."""
    async with running(Relay(LOOPBACK, 0, key=RELAY_KEY)) as relay:
        port = relay.port
        code, _, err = await _bob(port)  # first contact: pinned
        assert code == 0, err
    impostor = HostileRelay(key=IMPOSTOR_KEY, password=PASSWORD.encode())
    impostor.requested_port = port
    async with running(impostor):
        args = ("connect", "--nick", "bob", "--port", str(port))
        terminal = await Terminal.start(*args)
        await terminal.wait_for("continue and trust the new key? [y/N]")
        assert "WARNING: the relay at 127.0.0.1:" in terminal.shown
        assert fingerprint(IMPOSTOR_KEY.public_key) in terminal.shown
        assert fingerprint(RELAY_KEY.public_key) in terminal.shown
        terminal.type("\r")  # the default: no
        assert await terminal.exit_code() == 6
        assert impostor.received == []
        assert _pinned(port) == RELAY_KEY.public_key
        terminal = await Terminal.start(*args)
        await terminal.wait_for("[y/N]")
        terminal.type("y\r")
        await terminal.wait_for("bob>")
        assert "has a new key, now pinned" in terminal.shown
        terminal.type("/quit\r")
        assert await terminal.exit_code() == 0
        assert _pinned(port) == IMPOSTOR_KEY.public_key
        assert [type(msg) for _, msg in impostor.received][:1] == [m.Register]
