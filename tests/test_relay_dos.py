"""Denial of service at the relay: one client must not get another dropped, saturate the
relay's CPU, park its memory, or churn registrations; and no nick may pass for another.

The core is tested with time passed in; the shell over real loopback sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Callable
from typing import Any

import pytest
from nacl.public import PrivateKey
from test_relay_core import _error, _join, _send

import e2echat.relay.intake as intake
from e2echat.relay.core import Close, ConnId, RelayCore
from e2echat.relay.limits import Limits, Sources, address_key
from e2echat.wire import codec, fastpath
from e2echat.wire import messages as m
from e2echat.wire.framing import encode_frame
from e2echat.wire.grammar import MAX_BODY, MAX_PUBLISH, skeleton
from e2echat.wire.objects import Envelope, OneTimePrekey

from relay_frames import Outgoing, any_signed_prekey, spelled_out
from support import LOOPBACK, WAIT, RawClient, running_relay

#: no rate limits: the tests below each switch on the one they are about
LIFTED: dict[str, Any] = {"rate": 1e9, "burst": 1e9, "byte_rate": 2**40, "byte_burst": 2**40}
BIG_BODY = MAX_BODY  # 128 KiB, the largest a client may send one recipient

#: long after everyone joined: every token bucket is full
FULL = 1e7


def _big_send(message_id: int, to: str, body: bytes = bytes(BIG_BODY)) -> bytes:
    return encode_frame(codec.encode_message(m.Send(message_id, (Envelope(to, body),))))


def _routed(actions: list[Outgoing | Close], conn: ConnId) -> m.Routed:
    (routed,) = [a.message for a in actions if isinstance(a, Outgoing) and a.conn == conn]
    assert isinstance(routed, m.Routed)
    return routed


def _three(limits: Limits) -> RelayCore:
    """mallory (1), victim (2) and alice (3), registered."""
    relay = RelayCore(limits)
    for conn, nick in ((1, "mallory"), (2, "victim"), (3, "alice")):
        _join(relay, conn, nick)
    return relay


# -- a victim never pays for a sender's flood ------------------------------------------------------


def test_a_recipient_behind_on_reading_is_refused_to_its_senders_not_dropped() -> None:
    relay = _three(Limits(**LIFTED))
    relay.paused(2, 0.0)  # the shell: victim's write buffer passed the soft mark
    actions = spelled_out(relay.receive_data(1, _send(1, "victim", "alice"), 0.0))
    assert [a.conn for a in actions if isinstance(a, Outgoing)] == [3, 1]  # nothing to victim
    assert _routed(actions, 1) == m.Routed(1, ("alice",), refused=("victim",))
    assert not any(isinstance(a, Close) for a in actions)
    relay.resumed(2)  # it caught up
    assert _routed(spelled_out(relay.receive_data(1, _send(2, "victim"), 0.0)), 1).delivered == ("victim",)


def test_one_turn_queues_at_most_half_the_write_buffer_for_a_recipient() -> None:
    """The soft mark is seen only once the shell writes, so within one turn of its loop
    the core counts what it queued for each recipient itself."""
    limits = Limits(write_buffer=2**20, **LIFTED)
    relay = _three(limits)
    queued, refused = 0, 0
    for message_id in range(8):
        actions = relay.receive_data(1, _big_send(message_id, "victim"), 0.0)
        routed = _routed(spelled_out(actions), 1)
        if routed.refused:
            refused += 1
        else:
            queued += len(actions[0].frames[0][1])  # type: ignore[union-attr]
    assert refused and queued <= limits.write_buffer_turn + len(_big_send(0, "victim"))
    relay.flushed()  # written: the transport's buffer tells from now on
    after = spelled_out(relay.receive_data(1, _big_send(9, "victim"), 0.0))
    assert _routed(after, 1).delivered == ("victim",)


def test_a_recipient_that_stays_behind_is_dropped_after_the_stall_timeout() -> None:
    relay = _three(Limits(stall_timeout=30.0, idle_timeout=1000.0))
    relay.paused(2, 100.0)
    relay.paused(2, 110.0)  # still behind: the first time counts
    assert relay.tick(129.0) == []
    assert Close(2, "it is not reading") in relay.tick(131.0)
    assert relay.nick_of(2) is None


async def _unread_victim(relay: Any) -> tuple[RawClient, socket.socket]:
    """A registered client that will not read for a while (a small receive window)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (LOOPBACK, relay.port))
    reader, writer = await asyncio.open_connection(sock=sock)
    victim = RawClient(reader, writer)
    await victim.register("victim")
    return victim, sock


@pytest.mark.parametrize("options", [{}, LIFTED], ids=["default-limits", "rates-lifted"])
async def test_a_flood_of_big_frames_at_a_victim_does_not_get_it_dropped(options: dict[str, Any]) -> None:
    """The issue's attack: ~150 frames of 128 KiB garbage to one victim, within the
    message burst. With the default limits the byte rate refuses them after the first
    4 MiB, and the flooder, going on, is disconnected; with the rates lifted the soft
    mark alone keeps the victim's queue short, and the flooder is told each frame it
    had refused. Either way the victim stays online and gets an honest message after."""
    async with running_relay(**options) as relay:
        victim, _ = await _unread_victim(relay)
        mallory, alice = await RawClient.open(relay), await RawClient.open(relay)
        await mallory.register("mallory")
        await alice.register("alice")
        flood = 150
        garbage = bytes(range(256)) * (BIG_BODY // 256)
        for message_id in range(flood):
            mallory.send_bytes(_big_send(message_id, "victim", garbage))
        answers: list[m.Routed] = []
        with contextlib.suppress(ConnectionResetError):  # hung up on, its flood still unread
            while len(answers) < flood and (message := await mallory.receive()) is not None:
                if isinstance(message, m.Routed):
                    answers.append(message)
        delivered = sum(1 for routed in answers if routed.delivered == ("victim",))
        refused = sum(1 for routed in answers if routed.refused == ("victim",))
        assert delivered + refused == len(answers) and delivered < flood
        if "mallory" in relay.core.online:  # the flooder paid: told it was refused ...
            assert len(answers) == flood and refused
        else:  # ... or it went on and was dropped (what it had not read yet went with it)
            assert options == {}
        assert "victim" in relay.core.online  # ... and the victim did not
        for message_id in range(flood):  # alice tries while the victim catches up
            alice.send(m.Send(message_id, (Envelope("victim", b"honest"),)))
            routed = await alice.receive_kind(m.Routed)
            if routed.delivered:
                break
            assert routed.refused == ("victim",)  # it is still behind: there is more to read
            assert (await victim.receive_kind(m.Deliver)).sender == "mallory"
        while (got := await victim.receive_kind(m.Deliver)).sender == "mallory":
            pass
        assert (got.sender, got.body) == ("alice", b"honest")
        for client in (victim, mallory, alice):
            client.close()


async def test_a_reader_briefly_behind_still_gets_all_that_fits_under_the_soft_mark() -> None:
    """Refusing starts at ``write_buffer_soft`` queued for it (the shell sets that mark on
    each transport), not at asyncio's much lower default."""
    async with running_relay(**LIFTED) as relay:
        victim, _ = await _unread_victim(relay)
        transport = relay.transport(relay.core.online["victim"])
        assert transport is not None  # a small kernel buffer: what waits, waits in the relay
        transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        alice = await RawClient.open(relay)
        await alice.register("alice")
        body, sent = bytes(50_000), 0
        for message_id in range(200):
            alice.send(m.Send(message_id, (Envelope("victim", body),)))
            if (await alice.receive_kind(m.Routed)).refused:
                break
            sent += len(body)  # what the relay queues: the body as it came
        assert relay.limits.write_buffer_soft <= sent < relay.limits.write_buffer
        assert "victim" in relay.core.online
        for client in (victim, alice):
            client.close()


# -- charged before decoding -----------------------------------------------------------------------


def _count_decoding(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Count the relay's calls of both decoders (a hook in the test, not in the relay)."""
    calls = {"fast": 0, "strict": 0}

    def counted(name: str, decode: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
        def wrapper(frame: bytes) -> Any:
            calls[name] += 1
            return decode(frame)

        return wrapper

    monkeypatch.setattr(intake, "fast_routes", counted("fast", fastpath.fast_routes))
    monkeypatch.setattr(intake, "decode_message", counted("strict", codec.decode_message))
    return calls


def test_frames_beyond_the_rate_are_never_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    relay = _three(Limits(rate=1.0, burst=10.0))  # disconnected after 10 refusals in a row
    calls = _count_decoding(monkeypatch)
    flood = b"".join(_send(i, "victim") for i in range(18))
    actions = spelled_out(relay.receive_data(1, flood, 0.0))
    assert calls == {"fast": 10, "strict": 0}  # only the ten within the burst
    answers = [a.message for a in actions if isinstance(a, Outgoing) and isinstance(a.message, m.Routed)]
    assert [routed.id for routed in answers if routed.refused == ("victim",)] == list(range(10, 18))


@pytest.mark.parametrize(
    "frame",
    [
        b'{"v":2,"type":"send","id":9999999999999999999,"items":[{"to":"victim","body":"AAAA"}]}',
        b'{"v":2,"type":"send","id":1,"items":['
        + b",".join([b'{"to":"victim","body":"AAAA"}'] * 10_001)
        + b"]}",
        b'{"v":2,"type":"send","id":1,"items":[]}',
    ],
    ids=["id-too-big", "too-many-items", "no-items"],
)
def test_a_refused_frame_that_is_no_valid_send_gets_no_answer(frame: bytes) -> None:
    """Read without decoding, a refused frame may say anything: what cannot be a valid
    ``routed`` answer is not given (and does not break the relay)."""
    relay = _three(Limits(rate=1.0, burst=1.0))
    relay.receive_data(1, _send(0, "victim"), 0.0)  # the one token
    actions = spelled_out(relay.receive_data(1, encode_frame(frame), 0.0))
    assert [type(a.message) for a in actions if isinstance(a, Outgoing)] == [m.Error]  # the warning
    assert relay.nick_of(1) == "mallory"


def test_bytes_beyond_the_byte_rate_are_never_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    frame = _big_send(0, "victim")
    relay = _three(Limits(rate=1e9, burst=1e9, byte_rate=1000, byte_burst=3 * len(frame)))
    calls = _count_decoding(monkeypatch)
    actions = spelled_out(relay.receive_data(1, b"".join(_big_send(i, "victim") for i in range(5)), FULL))
    assert calls == {"fast": 3, "strict": 0}
    to_mallory = [a.message for a in actions if isinstance(a, Outgoing) and a.conn == 1]
    assert [e.code for e in to_mallory if isinstance(e, m.Error)] == ["rate_limited"]  # told once
    assert [r.id for r in to_mallory if isinstance(r, m.Routed) and r.refused == ("victim",)] == [3, 4]
    later = spelled_out(relay.receive_data(1, frame, FULL + 1000))  # the bucket filled again
    assert _routed(later, 1).delivered == ("victim",) and calls["fast"] == 4


def _big_publish() -> bytes:
    """A frame only the strict decoder reads (JSON), as large as a publish gets."""
    one_time = tuple(OneTimePrekey(i, PrivateKey.generate().public_key) for i in range(MAX_PUBLISH))
    return encode_frame(codec.encode_message(m.Publish(any_signed_prekey(), one_time)))


def _answered(actions: list[Outgoing | Close]) -> bool:
    return any(isinstance(a, Outgoing) and isinstance(a.message, m.Prekeys) for a in actions)


def test_a_send_only_the_strict_decoder_reads_is_charged_more(monkeypatch: pytest.MonkeyPatch) -> None:
    """A frame the fast path does not read costs the strict decoder several times what
    the fast path costs a send of the same size. (Sends are binary, and the fast path
    reads every valid one: the frame here is a JSON publish.) It is charged
    ``strict_weight`` times its size (at most a full bucket) before it is decoded, so
    big JSON frames buy no more decoding."""
    canonical = _big_send(0, "victim")
    strict = _big_publish()

    def relay(burst: int) -> RelayCore:
        return _three(Limits(rate=1e9, burst=1e9, byte_rate=1, byte_burst=burst, strict_weight=8.0))

    four = relay(len(canonical) + 4 * len(strict))
    calls = _count_decoding(monkeypatch)
    assert _routed(spelled_out(four.receive_data(1, canonical, FULL)), 1).delivered == ("victim",)
    refused = spelled_out(four.receive_data(1, strict, FULL))  # needs eight, has four
    assert calls == {"fast": 2, "strict": 0}  # not read as a send, and never decoded
    assert not _answered(refused)

    for burst in (4 * len(strict), 9 * len(strict)):  # a full bucket pays for it
        calls = _count_decoding(monkeypatch)
        assert _answered(spelled_out(relay(burst).receive_data(1, strict, FULL)))
        assert calls == {"fast": 1, "strict": 1}


def test_a_new_connection_starts_with_a_seconds_worth_of_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not with a full bucket: joining again and again must not buy a burst each time,
    nor a frame that needs most of the bucket (a costly one for the strict decoder)."""
    strict = _big_publish()
    relay = _three(Limits(rate=1e9, burst=1e9, byte_rate=len(strict), byte_burst=4 * len(strict)))
    calls = _count_decoding(monkeypatch)
    assert not _answered(spelled_out(relay.receive_data(1, strict, 0.0)))
    assert calls["strict"] == 0  # a second's worth: not enough for it
    assert _answered(spelled_out(relay.receive_data(1, strict, 4.0)))
    assert calls["strict"] == 1  # once the bucket has filled


def test_refusing_a_burst_of_bytes_in_a_row_disconnects() -> None:
    """Each refused byte was still read: a sender that goes on sending big frames after
    being refused is disconnected once it has been refused more than ``byte_burst``."""
    frame = _big_send(0, "victim")
    relay = _three(Limits(rate=1e9, burst=1e9, byte_rate=1, byte_burst=2 * len(frame)))
    flood = b"".join(_big_send(i, "victim") for i in range(10))
    actions = spelled_out(relay.receive_data(1, flood, FULL))  # 2 pass, 2 refused, then over
    hung_up = actions.index(Close(1, "rate_limited: disconnected: too many messages"))
    assert _error(1, actions[hung_up - 1 :]).text == "disconnected: too many messages"
    to_mallory = [a.message for a in actions if isinstance(a, Outgoing) and a.conn == 1]
    assert sum(1 for r in to_mallory if isinstance(r, m.Routed) and r.refused) == 2
    assert relay.nick_of(1) is None and relay.nick_of(2) == "victim"


# -- idle means no whole frame ---------------------------------------------------------------------


def test_a_trickle_of_bytes_does_not_keep_a_connection_alive() -> None:
    relay = RelayCore(Limits(idle_timeout=10.0))
    _join(relay, 1, "trickler", now=0.0)
    _join(relay, 2, "pinger", now=0.0)
    trickle = _big_send(1, "pinger")
    for second in range(1, 12):  # a byte a second: never a whole frame
        relay.receive_data(1, trickle[second - 1 : second], float(second))
    relay.receive_data(2, encode_frame(codec.encode_message(m.Ping())), 5.0)  # a whole frame
    actions = spelled_out(relay.tick(11.5))
    assert _error(1, actions).code == "idle"
    assert relay.nick_of(2) == "pinger"


# -- unfinished frames are bounded across the relay ------------------------------------------------


def _unfinished(relay: RelayCore, conn: ConnId, size: int, now: float = 0.0) -> list[Outgoing | Close]:
    """``conn`` starts a frame of 1 MiB and sends ``size`` bytes of it."""
    prefix = struct.pack(">I", MAX_BODY * 8)
    return spelled_out(relay.receive_data(conn, prefix + bytes(size), now))


def test_unfinished_frames_over_the_budget_close_the_oldest() -> None:
    relay = RelayCore(Limits(partial_frames=10_000))
    for conn in range(1, 5):
        _join(relay, conn, f"n{conn}")
    for conn in (1, 2, 3):
        assert _unfinished(relay, conn, 2996) == []  # 3,000 bytes each, 9,000 in all
    actions = _unfinished(relay, 4, 2996)  # 12,000: over, until the oldest is gone
    assert _error(1, actions).code == "busy"
    assert [relay.nick_of(conn) for conn in range(1, 5)] == [None, "n2", "n3", "n4"]
    assert relay.receive_data(2, bytes(900), 0.0) == []  # more of 2's frame: 9,900, not over


def test_finishing_a_frame_makes_a_connection_young_again() -> None:
    relay = RelayCore(Limits(partial_frames=10_000, **LIFTED))
    for conn in range(1, 5):
        _join(relay, conn, f"n{conn}")
    ping = encode_frame(codec.encode_message(m.Ping()))
    relay.receive_data(1, ping[:3], 0.0)  # 1 is first to hold an unfinished frame
    assert _unfinished(relay, 2, 4000) == []
    relay.receive_data(1, ping[3:] + ping + struct.pack(">I", 2**20) + bytes(3000), 0.0)  # done; another
    actions = _unfinished(relay, 3, 4000)  # 11,000 held: 2 is now the oldest
    assert _error(2, actions).code == "busy"
    assert relay.nick_of(1) == "n1"


async def test_a_hundred_and_fifty_strangers_cannot_park_a_mebibyte_each() -> None:
    """The issue's attack: register, then start a maximal frame and never finish it. The
    relay holds no more than its budget of unfinished frames; the oldest go first."""
    budget, each, count = 4 * 2**20, 64 * 1024, 150
    one_machine = {"connect_rate": 1e9, "connect_burst": 1e9}
    async with running_relay(partial_frames=budget, **one_machine) as relay:
        parked = [await RawClient.open(relay) for _ in range(count)]
        await asyncio.gather(*(raw.register(f"p{i}") for i, raw in enumerate(parked)))
        last = await RawClient.open(relay)
        await last.register("last")
        for raw in parked:
            raw.send_bytes(struct.pack(">I", 2**20) + bytes(each))
            await raw.writer.drain()
            last.send(m.Ping())  # answered once the relay has read the bytes above: in order
            await last.receive_kind(m.Pong)
        held = relay.core._unfinished.total
        assert held <= budget
        closed = [i for i, raw in enumerate(parked) if f"p{i}" not in relay.core.online]
        assert len(closed) >= count - budget // each
        assert closed == list(range(len(closed)))  # the oldest first
        error = await parked[0].receive_kind(m.Error)
        assert error.code == "busy"
        for raw in [*parked, last]:
            raw.close()


# -- per-address limits ----------------------------------------------------------------------------


def test_one_address_may_hold_only_so_many_connections() -> None:
    relay = RelayCore(Limits(connections_per_address=3))
    for conn in (1, 2, 3):
        assert len(relay.connect(conn, 0.0, "10.0.0.1")) == 1  # a challenge
    actions = spelled_out(relay.connect(4, 0.0, "10.0.0.1"))
    assert _error(4, actions).code == "busy" and "too many connections" in _error(4, actions).text
    assert len(relay.connect(5, 0.0, "10.0.0.2")) == 1  # another address is another matter
    relay.disconnect(1)
    assert len(relay.connect(6, 0.0, "10.0.0.1")) == 1  # a slot came free


def test_one_address_may_open_connections_only_so_fast() -> None:
    relay = RelayCore(Limits(connect_rate=1.0, connect_burst=2.0))
    assert [len(relay.connect(conn, 0.0, "10.0.0.1")) for conn in (1, 2)] == [1, 1]
    actions = spelled_out(relay.connect(3, 0.0, "10.0.0.1"))
    assert "too many new connections" in _error(3, actions).text
    relay.disconnect(1)
    relay.disconnect(2)  # closing them gives no token back: churn is what is limited
    assert _error(4, spelled_out(relay.connect(4, 0.5, "10.0.0.1"))).code == "busy"
    assert len(relay.connect(5, 1.1, "10.0.0.1")) == 1  # a token came back


def test_addresses_are_forgotten_once_idle_and_full_again() -> None:
    limits = Limits(connect_rate=1.0, connect_burst=2.0)
    sources = Sources()
    assert sources.open(limits, "10.0.0.1", 0.0) is None
    sources.close("10.0.0.1")
    sources.sweep(limits, 0.5)
    assert len(sources) == 1  # its bucket is not full again yet: forgetting it would refill it
    sources.sweep(limits, 1.0)
    assert len(sources) == 0


@pytest.mark.parametrize(
    ("one", "other", "same"),
    [
        ("10.0.0.1", "10.0.0.1", True),
        ("10.0.0.1", "10.0.0.2", False),
        ("::ffff:10.0.0.1", "10.0.0.1", True),
        ("2001:db8::1", "2001:db8::ffff:2", True),  # one /64: one host's to pick from
        ("2001:db8::1", "2001:db8:0:1::1", False),
        ("fe80::1%eth0", "fe80::2%eth1", True),
    ],
)
def test_what_counts_as_one_address(one: str, other: str, same: bool) -> None:
    assert (address_key(one) == address_key(other)) is same


async def test_one_machine_cannot_churn_connections_or_take_every_slot() -> None:
    async with running_relay(connect_rate=0.001, connect_burst=5.0) as relay:
        opened = [await RawClient.open(relay) for _ in range(5)]
        for raw in opened:
            assert isinstance(await raw.receive(), m.Challenge)
        extra = await RawClient.open(relay)
        error = await extra.receive()
        assert isinstance(error, m.Error) and error.code == "busy" and "new connections" in error.text
        assert await extra.closed()
        for raw in opened:
            raw.close()
    async with running_relay(connections_per_address=2) as relay:
        first, second = await RawClient.open(relay), await RawClient.open(relay)
        await first.register("first")
        await second.register("second")
        third = await RawClient.open(relay)
        error = await third.receive()
        assert isinstance(error, m.Error) and "too many connections" in error.text
        first.close()
        deadline = asyncio.get_running_loop().time() + WAIT
        while "first" in relay.core.online and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)  # until the relay sees the socket close (bounded)
        again = await RawClient.open(relay)
        await again.register("again")  # its slot is free again
        for raw in (second, third, again):
            raw.close()


# -- look-alike nicks ------------------------------------------------------------------------------


LOOK_ALIKES = [
    ("Bob", "bob"),
    ("aIice", "alice"),
    ("a1ice", "alice"),
    ("b0b", "BOB"),
    ("rnallory", "mallory"),
]


@pytest.mark.parametrize(
    ("one", "other"),
    [*LOOK_ALIKES, ("c1ara", "dara"), ("vvill", "Will"), ("ALICE", "alice"), ("AIICE", "alice")],
)
def test_look_alike_nicks_share_a_skeleton(one: str, other: str) -> None:
    assert skeleton(one) == skeleton(other)


DIFFERENT = [("alice", "alicia"), ("bob", "rob"), ("a-b", "a_b"), ("bob", "bob.")]


@pytest.mark.parametrize(("one", "other"), DIFFERENT)
def test_different_nicks_keep_different_skeletons(one: str, other: str) -> None:
    assert skeleton(one) != skeleton(other)


def test_a_nick_that_looks_like_one_online_is_refused_naming_it() -> None:
    relay = RelayCore()
    _join(relay, 1, "bob")
    _join(relay, 2, "alice")
    for conn, nick, online in ((3, "Bob", "bob"), (4, "aIice", "alice"), (5, "B0B", "bob")):
        error = _error(conn, _join(relay, conn, nick))
        assert error.code == "nick_confusable"
        assert f"{online!r}" in error.text and f"{nick!r}" in error.text
    assert _error(6, _join(relay, 6, "bob")).code == "nick_taken"
    assert set(relay.online) == {"bob", "alice"}
    relay.disconnect(1)  # bob leaves: a look-alike of nobody online is a nick like any other
    _join(relay, 7, "Bob")
    assert relay.nick_of(7) == "Bob"
    assert set(relay.online) == {"Bob", "alice"}
