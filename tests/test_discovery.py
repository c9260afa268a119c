"""Finding the relay on the LAN: a real zeroconf responder and browser on loopback, the
relay and the client as real processes. Skipped where multicast on loopback does not work."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nacl.public import PrivateKey
from zeroconf import IPVersion, const
from zeroconf._dns import DNSPointer  # (a packet by hand: what the public API will not send)
from zeroconf._protocol.outgoing import DNSOutgoing
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

from e2echat.client.relays import relay_address
from e2echat.crypto.identity import fingerprint
from e2echat.discovery import Announcer, announce_scope, browse, service_type
from e2echat.relay.server import Relay
from e2echat.store.profiles import SETTINGS_FILE
from e2echat.store.relays import KNOWN_RELAYS_FILE, RelayPinFile
from e2echat.wire.grammar import PROTOCOL_VERSION

from support import LOOPBACK, WAIT, run_cli, running, running_relay, start_relay_process

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


@contextlib.asynccontextmanager
async def announced(relay: Relay, claimed: str | None = None) -> AsyncIterator[Announcer]:
    """``relay`` announced on loopback, as `e2echat relay` announces it (with the
    fingerprint ``claimed``, if given: a lie)."""
    announcer = Announcer(LOOPBACK, relay.port, claimed or fingerprint(relay.core.key.public_key), list)
    await announcer.register()
    assert announcer.name is not None, "not announced"
    try:
        yield announcer
    finally:
        await announcer.stop()


@contextlib.asynccontextmanager
async def fake_announcement(port: int, claimed: str) -> AsyncIterator[None]:
    """What an attacker on the LAN can do with zeroconf alone: announce a relay at any
    address and port, with any fingerprint."""
    zeroconf = AsyncZeroconf(interfaces=[LOOPBACK], ip_version=IPVersion.V4Only)
    service = service_type()  # this test run's (conftest.py)
    info = AsyncServiceInfo(
        service,
        # with a terminal control in its name: a CSI (zeroconf refuses only C0 and DEL ones)
        f"totally the relay\u009b2J.{service}",
        port=port,
        addresses=[socket.inet_aton(LOOPBACK)],
        properties={"fp": claimed, "v": str(PROTOCOL_VERSION)},
        server="attacker.local.",
    )
    await (await zeroconf.async_register_service(info))
    try:
        yield
    finally:
        await zeroconf.async_close()


async def _connect_without_host(home: Path) -> tuple[int, str, str]:
    """`e2echat connect --nick bob` with no --host, no --port, stdin not a terminal (it
    leaves at the end of its input once registered)."""
    return await run_cli("connect", "--nick", "bob", "--home", str(home))


async def _relay_process(*args: str) -> tuple[asyncio.subprocess.Process, int, str]:
    """`e2echat relay --host 127.0.0.1 --port 0 ARGS`, once its banner is out: (process,
    port, fingerprint)."""
    process, port, banner = await start_relay_process("--port", "0", *args)
    (line,) = [line for line in banner if "key fingerprint" in line]
    return process, port, line.rsplit(" is ", 1)[1]


async def _stopped(process: asyncio.subprocess.Process) -> str:
    """Its standard error, once SIGTERM stopped it."""
    if process.returncode is None:
        process.terminate()
    _, err = await asyncio.wait_for(process.communicate(), WAIT)
    return err.decode()


@pytest.mark.slow
@pytest.mark.timeout(30)
async def test_an_announcing_relay_is_found_and_one_with_no_announce_is_not(tmp_path: Path) -> None:
    (quiet, quiet_port, _), (loud, loud_port, loud_fingerprint) = await asyncio.gather(
        _relay_process("--key", str(tmp_path / "quiet.key"), "--no-announce"),
        _relay_process("--key", str(tmp_path / "loud.key")),
    )
    try:
        assert loud.stderr is not None
        while b"announced as" not in (line := await asyncio.wait_for(loud.stderr.readline(), WAIT)):
            assert line, "the relay exited"
        assert b"on this machine only" in line  # it listens on 127.0.0.1
        # In this process and through `e2echat relays`, at once: two browses of the same window.
        found, (code, out, err) = await asyncio.gather(
            browse(BROWSE, interfaces=[LOOPBACK]), run_cli("relays", "--wait", str(BROWSE))
        )
        (relay,) = [relay for relay in found if relay.port == loud_port]
        assert (relay.host, relay.fingerprint) == (LOOPBACK, loud_fingerprint)
        assert relay.version == PROTOCOL_VERSION
        assert quiet_port not in [relay.port for relay in found]
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


@pytest.mark.parametrize(
    "service", ["_e2echat._udp.local.", "_E2ECHAT._tcp.local.", "_a-much-too-long-name._tcp.local."]
)
async def test_a_malformed_service_type_is_a_usage_error(service: str) -> None:
    code, out, err = await run_cli("relays", "--wait", "0.3", env={"E2ECHAT_MDNS_SERVICE": service})
    assert (code, out) == (2, "")
    assert err.strip() == (
        "e2echat: E2ECHAT_MDNS_SERVICE must look like _name._tcp.local. (name: 1-15 of a-z, 0-9, -)"
    )


@pytest.mark.slow
async def test_a_relay_under_another_service_type_is_not_found() -> None:
    async with running_relay() as relay, announced(relay):
        assert [found.port for found in await browse(1.5, interfaces=[LOOPBACK])] == [relay.port]
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("E2ECHAT_MDNS_SERVICE", "_e2echat-other._tcp.local.")
            assert await browse(1.5, interfaces=[LOOPBACK]) == []


@pytest.mark.timeout(30)
async def test_connect_joins_the_one_relay_found_and_pins_its_announced_key(tmp_path: Path) -> None:
    home = tmp_path / "bob"
    async with running_relay() as relay:
        key = fingerprint(relay.core.key.public_key)
        async with announced(relay) as announcer:
            code, out, err = await _connect_without_host(home)
            assert code == 0, err
            assert f"found a relay on the LAN: {announcer.name}  {LOOPBACK}:{relay.port}  key {key}" in err
            assert f"pinned relay {LOOPBACK}:{relay.port} key {key}" in out
        pins = RelayPinFile(home / KNOWN_RELAYS_FILE).load()
        assert pins.get(relay_address(LOOPBACK, relay.port)) == relay.core.key.public_key
        assert f'"port": {relay.port}' in (home / SETTINGS_FILE).read_text()

        # Remembered now: no browsing (the announcement is gone; it would find nothing).
        code, out, err = await _connect_without_host(home)
        assert code == 0, err
        assert "LAN" not in err


async def test_a_fake_announcement_with_another_key_is_refused(tmp_path: Path) -> None:
    """The attack: someone on the LAN announces the relay's address with a key of their
    own choosing. The client requires the announced key, so the real relay, whose key is
    another, gets nothing; the same holds for an impostor relay that lies about its key."""
    home = tmp_path / "bob"
    async with running_relay() as relay:
        claimed = fingerprint(PrivateKey.generate().public_key)
        async with fake_announcement(relay.port, claimed):
            code, out, err = await _connect_without_host(home)
    assert code == 6, (out, err)
    assert "posing as a relay" in err and claimed in err
    assert "\u009b" not in err  # the name is anyone's text: shown neutralized
    assert "pinned" not in out
    assert not (home / KNOWN_RELAYS_FILE).exists()


@pytest.mark.slow
async def test_a_pin_wins_over_an_announcement(tmp_path: Path) -> None:
    """An announcement must not replace a pin: an impostor that took the pinned relay's
    address and announces its own key is refused as before."""
    home = tmp_path / "bob"
    async with running_relay() as genuine:
        port = genuine.port
        code, _, err = await run_cli(
            "connect", "--nick", "bob", "--home", str(home), "--host", LOOPBACK, "--port", str(port)
        )
        assert code == 0, err
    (home / SETTINGS_FILE).unlink()  # no remembered relay: it browses
    async with running(Relay(LOOPBACK, port)) as impostor, announced(impostor):
        code, out, err = await _connect_without_host(home)
    assert code == 6, (out, err)
    assert "different key than the one pinned" in err
    pins = RelayPinFile(home / KNOWN_RELAYS_FILE).load()
    assert pins.get(relay_address(LOOPBACK, port)) == genuine.core.key.public_key


@pytest.mark.slow
@pytest.mark.timeout(30)
async def test_several_relays_found_are_listed_and_not_chosen_for_a_script(tmp_path: Path) -> None:
    async with running_relay() as first, running_relay() as second:
        async with announced(first) as one, announced(second) as other:
            assert one.name != other.name  # the second was renamed: both run on this host
            code, out, err = await _connect_without_host(tmp_path / "bob")
    assert code == 2, (out, err)
    assert f"{LOOPBACK}:{first.port}" in err and f"{LOOPBACK}:{second.port}" in err
    assert err.strip().endswith("e2echat: which relay? give its --host and --port")
    assert not (tmp_path / "bob" / KNOWN_RELAYS_FILE).exists()


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


def _raw_answer(service: str, name: str) -> bytes:
    """An mDNS answer pointing ``service`` at ``name``, as anyone's packet can: zeroconf
    refuses to announce such names itself, so the packet is made by hand."""
    out = DNSOutgoing(const._FLAGS_QR_RESPONSE | const._FLAGS_AA)
    out.add_answer_at_time(DNSPointer(service, const._TYPE_PTR, const._CLASS_IN, 120, name), 0)
    return out.packets()[0]


@pytest.mark.slow
async def test_malformed_announcements_are_left_out_not_a_crash() -> None:
    """Anyone on the LAN can send a name with terminal controls in it, or one too long, or
    a version that str.isdigit takes and int does not: the browse leaves them out."""
    service = service_type()
    packets = [
        _raw_answer(service, f"evil\x1b[31mRED.{service}"),
        _raw_answer(service, f"{'x' * 40}.{'y' * 40}.{service}"),
    ]
    zeroconf = AsyncZeroconf(interfaces=[LOOPBACK], ip_version=IPVersion.V4Only)
    odd_version = AsyncServiceInfo(
        service,
        f"odd version.{service}",
        port=9,
        addresses=[socket.inet_aton(LOOPBACK)],
        properties={"fp": fingerprint(PrivateKey.generate().public_key), "v": "²"},
        server="odd.local.",
    )
    await (await zeroconf.async_register_service(odd_version))
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            sender.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(LOOPBACK))
            browsing = asyncio.create_task(browse(BROWSE, interfaces=[LOOPBACK]))
            while not browsing.done():
                for packet in packets:
                    sender.sendto(packet, (MDNS_GROUP, 5353))
                await asyncio.sleep(0.2)
            assert await browsing == []
    finally:
        await zeroconf.async_close()
