"""The per-address limits across a cluster (relay/cluster/addresses.py): the reports the
relays send each other, and two real relays on a real NATS server holding one address to
one limit between them."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest
from nacl.public import PrivateKey

from e2echat.errors import RemoteProtocolError
from e2echat.relay.cluster.addresses import (
    MAX_ENTRIES,
    SharedSources,
    cluster_secret,
    decode_report,
    encode_report,
    pseudonym,
    threshold,
)
from e2echat.relay.cluster.relay import ClusterRelay
from e2echat.relay.cluster.wire import DEAD_AFTER, HEARTBEAT
from e2echat.relay.limits import Limits
from e2echat.store.keyfile import load_or_create_relay_key
from e2echat.wire import messages as m

import nats_support
from nats_support import NatsServer
from support import LOOPBACK, WAIT, RawClient, start_relay_process

ONE, OTHER = "a" * 16, "b" * 16
HOME = "10.0.0.1"
SECRET = cluster_secret(PrivateKey.generate())
#: connect as fast as a test likes: only the limit a test is about is in the way
UNLIMITED: dict[str, Any] = {"connect_rate": 1e9, "connect_burst": 1e9}


# -- the reports -------------------------------------------------------------------------------


def test_a_report_goes_both_ways() -> None:
    entries = [(pseudonym(SECRET, HOME), 3, 1), (pseudonym(SECRET, "2001:db8::/64"), 0, 2)]
    assert decode_report(encode_report(ONE, entries)) == (ONE, entries)
    assert decode_report(encode_report(ONE, [])) == (ONE, [])


def test_an_address_is_named_only_by_its_pseudonym() -> None:
    name = pseudonym(SECRET, HOME)
    report = encode_report(ONE, [(name, 3, 1)])
    assert HOME.encode() not in report and bytes.fromhex(name) in report
    assert pseudonym(SECRET, "10.0.0.2") != name  # another address, another name
    assert pseudonym(cluster_secret(PrivateKey.generate()), HOME) != name  # another cluster's key


_NAME = bytes(16)


def _entry(name: bytes = _NAME, counts: bytes = b"\0\1\0\0") -> bytes:
    return name + counts


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"not a node id at all" + b"\0\0",
        ONE.encode(),  # no count
        ONE.encode() + b"\0\1",  # one entry promised, none there
        ONE.encode() + b"\0\1" + _entry(counts=b"\0\1"),  # counts cut short
        ONE.encode() + b"\0\1" + _entry(_NAME[:8]),  # a name cut short
        ONE.encode() + b"\0\2" + _entry() * 2,  # one address twice
        ONE.encode() + b"\0\1" + _entry() + b"!",  # bytes left over
        ONE.encode() + (MAX_ENTRIES + 1).to_bytes(2, "big"),
    ],
)
def test_a_report_that_is_not_one_is_refused(payload: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        decode_report(payload)
    sources = SharedSources(Limits(), ONE, SECRET)
    with pytest.raises(RemoteProtocolError):
        sources.heard(payload, 0.0)


# -- what a relay makes of them --------------------------------------------------------------------


def _pair(**limits: Any) -> tuple[Limits, SharedSources, SharedSources]:
    settings = Limits(**limits)
    return settings, SharedSources(settings, ONE, SECRET), SharedSources(settings, OTHER, SECRET)


def _elsewhere_of(sources: SharedSources, address: str = HOME) -> int:
    return sources.elsewhere(sources.pseudonym(address))


def _told(sender: SharedSources, receiver: SharedSources, now: float) -> None:
    report = sender.report(now)
    assert report is not None
    receiver.heard(report, now)


def test_connections_open_on_another_relay_count_here() -> None:
    limits, one, other = _pair(connections_per_address=4, **UNLIMITED)
    for _ in range(3):
        assert other.open(limits, HOME, 0.0) is None
    _told(other, one, 0.1)
    assert _elsewhere_of(one) == 3
    assert one.open(limits, HOME, 0.2) is None  # the fourth, across the two
    refused = one.open(limits, HOME, 0.2)
    assert refused is not None and "too many connections" in refused
    assert one.open(limits, "10.0.0.2", 0.2) is None  # another address is another matter
    other.close(HOME)
    _told(other, one, 0.3)
    assert one.open(limits, HOME, 0.4) is None  # a slot came free over there


def test_new_connections_let_in_on_another_relay_are_charged_here() -> None:
    limits, one, other = _pair(connect_rate=1.0, connect_burst=4.0)
    for _ in range(3):
        assert other.open(limits, HOME, 0.0) is None
    _told(other, one, 0.0)
    assert one.open(limits, HOME, 0.0) is None
    refused = one.open(limits, HOME, 0.0)
    assert refused is not None and "new connections" in refused
    assert one.open(limits, HOME, 1.0) is None  # the cluster's rate: one a second


def test_what_another_relay_lets_in_is_charged_only_down_to_a_burst_below_empty() -> None:
    limits, one, _ = _pair(connect_rate=1.0, connect_burst=4.0)
    one.heard(encode_report(OTHER, [(pseudonym(SECRET, HOME), 0, 60_000)]), 0.0)
    assert one.open(limits, HOME, 4.9) is not None  # owed: a burst below empty, refilling
    assert one.open(limits, HOME, 5.0) is None  # not 60,000 seconds


def test_an_address_with_a_few_connections_is_not_named() -> None:
    limits, one, other = _pair(**UNLIMITED)  # the default limit, 256
    many = threshold(limits)
    assert many == 8
    for _ in range(many - 1):
        other.open(limits, HOME, 0.0)
    _told(other, one, 0.0)  # says only that they were let in
    assert _elsewhere_of(one) == 0
    assert other.report(0.1) is None  # nothing new, and nothing named to renew
    other.open(limits, HOME, 0.2)
    _told(other, one, 0.2)
    assert _elsewhere_of(one) == many
    other.close(HOME)
    _told(other, one, 0.3)  # below the share again: no longer named
    assert _elsewhere_of(one) == 0


def test_a_report_not_renewed_is_dropped_and_a_goodbye_drops_it_at_once() -> None:
    limits, one, other = _pair(connections_per_address=4, **UNLIMITED)
    other.open(limits, HOME, 0.0)
    _told(other, one, 0.0)
    assert other.report(HEARTBEAT / 2) is None  # unchanged, and not yet due again
    _told(other, one, HEARTBEAT)  # renewed
    one.sweep(limits, HEARTBEAT + DEAD_AFTER - 0.1)
    assert _elsewhere_of(one) == 1
    one.sweep(limits, HEARTBEAT + DEAD_AFTER + 0.1)  # not heard since: gone, or cut off
    assert _elsewhere_of(one) == 0
    _told(other, one, 10.0)
    assert _elsewhere_of(one) == 1
    one.heard(other.goodbye(), 10.1)
    assert _elsewhere_of(one) == 0


def test_new_connections_waiting_to_be_told_are_bounded() -> None:
    # As while NATS is out of reach: nothing is reported, and addresses keep coming.
    limits, one, _ = _pair(**UNLIMITED)
    for number in range(MAX_ENTRIES + 10):
        address = f"10.{number >> 16 & 255}.{number >> 8 & 255}.{number & 255}"
        assert one.open(limits, address, 0.0) is None
        one.close(address)
    report = one.report(0.0)
    assert report is not None
    assert len(decode_report(report)[1]) == MAX_ENTRIES
    assert one.report(0.1) is None  # the rest went untold


def test_a_relay_ignores_its_own_report() -> None:
    limits, one, _ = _pair(connections_per_address=4, **UNLIMITED)
    one.open(limits, HOME, 0.0)
    _told(one, one, 0.0)
    assert _elsewhere_of(one) == 0


# -- two real relays on a real NATS server ------------------------------------------------------


def cluster(
    server: NatsServer, count: int, **options: Any
) -> AbstractAsyncContextManager[list[ClusterRelay]]:
    """``count`` relays of one cluster with one key (``key``, or a new one): the relays of
    a cluster share it, and name addresses under it."""
    options.setdefault("key", PrivateKey.generate())
    return nats_support.cluster(server, count, **options)


async def _until(condition: Callable[[], bool]) -> None:
    while not condition():
        await asyncio.sleep(0.02)


def _elsewhere(relay: ClusterRelay) -> int:
    """What ``relay`` knows the loopback address has open on the other relays."""
    sources = relay.cluster_core.sources
    return sources.elsewhere(sources.pseudonym(LOOPBACK))


async def _refused(relay: Any, text: str) -> None:
    raw = await RawClient.open(relay)
    try:
        error = await raw.receive()
        assert isinstance(error, m.Error) and error.code == "busy" and text in error.text, error
        assert await raw.closed()
    finally:
        raw.close()


async def _registered(relay: Any, nick: str) -> RawClient:
    raw = await RawClient.open(relay)
    await raw.register(nick)
    return raw


async def test_an_address_gets_its_connections_once_across_two_relays(nats_server: NatsServer) -> None:
    async with cluster(nats_server, 2, connections_per_address=4, **UNLIMITED) as (one, other):
        raws = [
            await _registered(relay, f"{name}{n}")
            for relay, name in ((one, "a"), (other, "b"))
            for n in (1, 2)
        ]
        try:
            await asyncio.wait_for(_until(lambda: _elsewhere(one) == _elsewhere(other) == 2), WAIT)
            for relay in (one, other):  # 2 here and 2 there: the address has its 4
                await _refused(relay, "too many connections from your address")
            raws.pop(0).close()  # one of those on the first relay goes
            await asyncio.wait_for(_until(lambda: _elsewhere(other) == 1), WAIT)
            raws.append(await _registered(other, "b3"))
        finally:
            for raw in raws:
                raw.close()


async def test_new_connections_are_counted_across_two_relays(nats_server: NatsServer) -> None:
    async with cluster(nats_server, 2, connect_rate=0.001, connect_burst=4.0) as (one, other):
        raws = [await _registered(one, "a1"), await _registered(one, "a2")]
        try:
            # The other relay has nothing from the address until it hears of these two.
            await asyncio.wait_for(_until(lambda: len(other.cluster_core.sources) == 1), WAIT)
            raws += [await _registered(other, "b1"), await _registered(other, "b2")]
            await _refused(other, "too many new connections from your address")
        finally:
            for raw in raws:
                raw.close()


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_a_killed_relays_connections_stop_counting_within_seconds(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    key_path = tmp_path / "relay.key"
    key, _ = load_or_create_relay_key(key_path)
    flags = ("--connections-per-address", "4", "--connect-rate", "1000000", "--connect-burst", "1000000")
    async with cluster(nats_server, 1, key=key, connections_per_address=4, **UNLIMITED) as (survivor,):
        process, port, _ = await start_relay_process(
            "--port", "0", "--no-announce", "--cluster", nats_server.url, "--key", str(key_path), *flags
        )
        doomed = _Port(port)
        raws: list[RawClient] = []
        try:
            raws += [await _registered(doomed, f"d{n}") for n in range(3)]
            raws.append(await _registered(survivor, "s1"))
            await asyncio.wait_for(_until(lambda: _elsewhere(survivor) == 3), WAIT)
            await _refused(survivor, "too many connections from your address")
            process.kill()  # kill -9: no goodbye
            loop = asyncio.get_running_loop()
            killed = loop.time()
            await asyncio.wait_for(_until(lambda: _elsewhere(survivor) == 0), 2 * WAIT)
            assert loop.time() - killed < DEAD_AFTER + 3
            raws.append(await _registered(survivor, "s2"))
        finally:
            for raw in raws:
                raw.close()
            if process.returncode is None:
                process.kill()
            await process.wait()


class _Port:
    def __init__(self, port: int) -> None:
        self.port = port
