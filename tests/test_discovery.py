"""Finding the relay on the LAN: a real zeroconf responder and browser on loopback, the
relay and the client as real processes. Skipped where multicast on loopback does not work."""

from __future__ import annotations

import asyncio
import functools
import os
import socket
import struct
import sys
from pathlib import Path

import pytest

from e2echat.discovery import announce_scope, browse
from e2echat.wire.grammar import PROTOCOL_VERSION

from support import LOOPBACK, REPO, WAIT, run_cli

#: short browses, but two queries long: a responder multicasts a record at most once a
#: second (RFC 6762 §6), so a query right after its announcement goes unanswered, and
#: zeroconf's browser asks again about 1 s after its first query
BROWSE = 1.5
MDNS_GROUP = "224.0.0.251"


@functools.cache
def _multicast_on_loopback() -> str | None:
    """Why multicast on loopback does not work here, or None if it does: one datagram
    to the mDNS group, sent and received on 127.0.0.1."""
    try:
        with (
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver,
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender,
        ):
            receiver.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            receiver.bind(("", 0))
            membership = struct.pack("4s4s", socket.inet_aton(MDNS_GROUP), socket.inet_aton(LOOPBACK))
            receiver.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, membership)
            receiver.settimeout(1.0)
            sender.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(LOOPBACK))
            sender.sendto(b"e2echat", (MDNS_GROUP, receiver.getsockname()[1]))
            if receiver.recv(64) != b"e2echat":
                return "a multicast datagram on loopback came back changed"
    except OSError as exc:
        return f"multicast on loopback is unavailable here: {exc}"
    return None


@pytest.fixture(autouse=True)
def _needs_multicast() -> None:
    reason = _multicast_on_loopback()
    if reason is not None:
        pytest.skip(reason)


async def _relay_process(*args: str) -> tuple[asyncio.subprocess.Process, int, str]:
    """`e2echat relay --host 127.0.0.1 --port 0 ARGS`, once its banner is out: (process,
    port, fingerprint)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "e2echat",
        "relay",
        "--host",
        LOOPBACK,
        "--port",
        "0",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert process.stdout is not None
    banner: list[str] = []
    while not banner or "Ctrl+C" not in banner[-1]:
        raw = await asyncio.wait_for(process.stdout.readline(), WAIT)
        assert raw, "the relay exited during start-up"
        banner.append(raw.decode().rstrip())
    port = int(banner[0].rsplit(":", 1)[1])
    (line,) = [line for line in banner if "key fingerprint" in line]
    return process, port, line.rsplit(" is ", 1)[1]


async def _stopped(process: asyncio.subprocess.Process) -> str:
    """Its standard error, once SIGTERM stopped it."""
    if process.returncode is None:
        process.terminate()
    _, err = await asyncio.wait_for(process.communicate(), WAIT)
    return err.decode()


@pytest.mark.timeout(30)
async def test_an_announcing_relay_is_found_and_one_with_no_announce_is_not(tmp_path: Path) -> None:
    quiet, quiet_port, _ = await _relay_process("--key", str(tmp_path / "quiet.key"), "--no-announce")
    loud, loud_port, loud_fingerprint = await _relay_process("--key", str(tmp_path / "loud.key"))
    try:
        assert loud.stderr is not None
        while b"announced as" not in (line := await asyncio.wait_for(loud.stderr.readline(), WAIT)):
            assert line, "the relay exited"
        assert b"on this machine only" in line  # it listens on 127.0.0.1
        found = await browse(BROWSE, interfaces=[LOOPBACK])
        (relay,) = [relay for relay in found if relay.port == loud_port]
        assert (relay.host, relay.fingerprint) == (LOOPBACK, loud_fingerprint)
        assert relay.version == PROTOCOL_VERSION
        assert quiet_port not in [relay.port for relay in found]

        code, out, err = await run_cli("relays", "--wait", str(BROWSE))
        assert code == 0, err
        assert f"{LOOPBACK}:{loud_port}  key {loud_fingerprint}" in out
        assert f":{quiet_port}" not in out
    finally:
        loud_err, quiet_err = await _stopped(loud), await _stopped(quiet)
    assert loud.returncode == quiet.returncode == 0
    assert "Traceback" not in loud_err + quiet_err
    assert "announced" not in quiet_err


async def test_relays_says_so_when_none_is_found() -> None:
    code, out, err = await run_cli("relays", "--wait", "0.3")
    assert (code, out) == (1, "")
    assert err.strip() == (
        "e2echat: no relay announced itself on the LAN within 0.3 s (a relay started with "
        "--no-announce, or on another network, is not seen)"
    )


def test_where_a_relay_is_announced() -> None:
    def lan() -> list[str]:
        return ["192.0.2.7"]

    everywhere = announce_scope("0.0.0.0", lan)
    assert everywhere is not None and (everywhere.interfaces, everywhere.addresses) == (None, ["192.0.2.7"])
    loopback = announce_scope("127.0.0.1", lan)
    assert loopback is not None and (loopback.interfaces, loopback.addresses) == ([LOOPBACK], [LOOPBACK])
    alone = announce_scope("0.0.0.0", list)  # no LAN address: this machine can still find it
    assert alone is not None and alone.interfaces == [LOOPBACK]
    one = announce_scope("192.0.2.9", lan)
    assert one is not None and (one.interfaces, one.addresses) == (["192.0.2.9"], ["192.0.2.9"])
    assert announce_scope("::", lan) is None  # IPv6 alone: announcements are IPv4
    assert announce_scope("::1", lan) is None
