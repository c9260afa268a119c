"""The client paces what it sends to the rate the relay advertised: frames wait for a
token instead of being refused, leave in order, and a message's receipt is due counting
from when it left. Pure tests with a clock in hand, then a real relay and a real pipe."""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.public import PrivateKey

from e2echat.client.core import ClientCore, MessageReceived
from e2echat.client.pacing import MIN_BYTE_RATE, MIN_RATE, RATE_SHARE, Pacer
from e2echat.client.receipts import TIMED_OUT, DeliveryReport
from e2echat.relay.limits import Flow, Limits, Verdict
from e2echat.ui.chat import Chat
from e2echat.ui.linemode import run_line_mode
from e2echat.wire import messages as m
from e2echat.wire.codec import decode_message, encode_message
from e2echat.wire.framing import FrameDecoder, encode_frame
from e2echat.wire.grammar import CHALLENGE_SIZE
from e2echat.wire.objects import PeerInfo

from support import LOOPBACK, Peer, connect, peers, run_cli, running_relay


def _frames(count: int, start: int = 0) -> bytes:
    return b"".join(encode_frame(b"frame %d" % i) for i in range(start, start + count))


def _frame(message: m.Message) -> bytes:
    return encode_frame(encode_message(message))


def _payloads(data: bytes) -> list[bytes]:
    decoder = FrameDecoder()
    payloads = [bytes(frame) for frame in decoder.receive_data(data)]
    assert decoder.buffered == 0  # only whole frames ever leave
    return payloads


def test_nothing_is_held_back_before_the_relay_says_its_rate() -> None:
    pacer = Pacer()
    pacer.write(_frames(500), now=0.0)
    assert len(_payloads(pacer.take(0.0))) == 500
    assert pacer.delay(0.0) is None


def test_frames_over_the_rate_wait_for_tokens_and_leave_in_order() -> None:
    """rate 10, burst 4: we keep half the burst and a tenth of the rate in reserve, so 2
    frames go at once and one more every 1/9 s."""
    pacer = Pacer()
    pacer.limit(10.0, 4.0, 1e9, 1e9, now=0.0)
    leaves = pacer.write(_frames(5), now=0.0)
    assert abs(leaves - 3 / 9) < 1e-9  # the last of them, if taken when due
    taken = _payloads(pacer.take(0.0))
    assert taken == [b"frame 0", b"frame 1"]
    delay = pacer.delay(0.0)
    assert delay is not None and abs(delay - 1 / 9) < 1e-9
    assert pacer.take(0.05) == b""  # not yet
    taken += _payloads(pacer.take(1 / 9))
    taken += _payloads(pacer.take(3 / 9))
    assert taken == [b"frame %d" % i for i in range(5)]
    assert pacer.delay(3 / 9) is None and pacer.queued == 0


def test_bytes_over_the_byte_rate_wait_too() -> None:
    """10,000 bytes a second, bursts of 20,000: the relay starts us with a second's worth
    and we start with half that, 5,000 bytes: five frames of 1,000 go at once, then one
    every 1000/9000 s. A frame larger than our bucket (10,000) goes once it is full, and
    costs what the relay charges for it."""
    pacer = Pacer()
    pacer.limit(1e9, 1e9, 10_000.0, 20_000.0, now=0.0)
    pacer.write(b"".join(encode_frame(bytes([i]) * 1000) for i in range(6)), now=0.0)
    assert len(_payloads(pacer.take(0.0))) == 5
    delay = pacer.delay(0.0)
    assert delay is not None and abs(delay - 1000 / 9000) < 1e-9
    assert len(_payloads(pacer.take(delay))) == 1
    pacer.write(encode_frame(b"x" * 15_000), now=delay)
    assert pacer.take(delay) == b""
    full = delay + 10_000 / 9000
    assert pacer.take(full - 0.01) == b""
    assert _payloads(pacer.take(full)) == [b"x" * 15_000]
    # It cost what the relay charges, 15,000: our bucket is 5,000 in debt.
    pacer.write(encode_frame(b"y" * 1000), now=full)
    delay = pacer.delay(full)
    assert delay is not None and abs(delay - 6000 / 9000) < 1e-9


def test_a_frame_charged_beyond_its_size_waits_for_its_whole_charge() -> None:
    """A fetch costs FETCH_CHARGE a nick beyond its size, at the relay and so here: after
    it, the bucket is that much further in debt, and the next frame waits for it."""
    pacer = Pacer()
    pacer.limit(1e9, 1e9, 10_000.0, 20_000.0, now=0.0)  # 5,000 bytes to start with
    pacer.write(encode_frame(b"f" * 100), now=0.0, charge=4_000)
    assert _payloads(pacer.take(0.0)) == [b"f" * 100]
    pacer.write(encode_frame(b"s" * 1000), now=0.0)
    assert pacer.take(0.0) == b""  # 900 left: the charge was paid, not just the 100 bytes
    delay = pacer.delay(0.0)
    assert delay is not None and abs(delay - 100 / 9000) < 1e-9
    assert _payloads(pacer.take(delay)) == [b"s" * 1000]


def test_a_relay_advertising_a_crawl_does_not_stall_us_for_ever() -> None:
    pacer = Pacer()
    pacer.limit(1e-9, 1e-9, 1e-9, 1e-9, now=0.0)
    pacer.write(_frames(2), now=0.0)
    assert _payloads(pacer.take(0.0)) == [b"frame 0"]
    assert pacer.delay(0.0) == 1 / MIN_RATE
    assert _payloads(pacer.take(1.0)) == [b"frame 1"]


@settings(max_examples=300, deadline=None)
@given(
    st.floats(min_value=MIN_RATE / RATE_SHARE, max_value=500.0),  # (slower: the crawl test)
    st.floats(min_value=1.0, max_value=300.0),
    st.floats(min_value=MIN_BYTE_RATE / RATE_SHARE, max_value=100_000.0),
    st.floats(min_value=16.0, max_value=100_000.0),
    st.lists(
        st.tuples(
            st.floats(min_value=0.0, max_value=0.5),
            st.lists(st.floats(min_value=0.0, max_value=1.0), max_size=30),
        ),
        max_size=30,
    ),
)
def test_a_paced_client_is_never_refused_by_the_relays_buckets(
    rate: float, burst: float, byte_rate: float, byte_burst: float, steps: list[tuple[float, list[float]]]
) -> None:
    """Whatever is written whenever (frames of up to half the byte burst), and taken
    whenever (here: at each step, and when each delay says): the relay's own buckets,
    with the limits it advertised and the same clock, admit every frame; and every frame
    leaves, in order."""
    limits = Limits(rate=rate, burst=burst, byte_rate=byte_rate, byte_burst=byte_burst)  # type: ignore[arg-type]
    flow = Flow(limits, 0.0)
    pacer = Pacer()
    pacer.limit(rate, burst, byte_rate, byte_burst, now=0.0)
    now, written, taken = 0.0, list[bytes](), 0

    def take() -> None:
        nonlocal taken
        for payload in _payloads(pacer.take(now)):
            assert payload == written[taken]
            assert flow.admit(limits, now, len(payload)) is Verdict.PASS
            taken += 1

    for pause, shares in steps:
        now += pause
        take()
        sizes = [max(8, int(share * byte_burst / 2)) for share in shares]
        payloads = [(b"%d:" % (len(written) + i)).ljust(size, b"x") for i, size in enumerate(sizes)]
        written += payloads
        pacer.write(b"".join(map(encode_frame, payloads)), now)
        take()
    while (delay := pacer.delay(now)) is not None:
        now += delay
        take()
    assert taken == len(written)


def _online_pair(rate: float, burst: float) -> tuple[ClientCore, list[float]]:
    """alice, online with bob at a relay that advertised ``rate`` and ``burst``; and her
    clock, to move by hand."""
    clock = [0.0]
    relay_key = PrivateKey.generate()
    cores = {
        nick: ClientCore(nick, PrivateKey.generate(), PrivateKey.generate(), clock=lambda: clock[0])
        for nick in ("alice", "bob")
    }
    entries = {}
    for nick, core in cores.items():
        core.receive_data(_frame(m.Challenge(relay_key.public_key, bytes(CHALLENGE_SIZE))))
        (register,) = [decode_message(p) for p in FrameDecoder().receive_data(core.data_to_send())]
        assert isinstance(register, m.Register)
        entries[nick] = PeerInfo(nick, register.identity_key, register.session_key)
    for nick, core in cores.items():
        others = tuple(entry for other, entry in entries.items() if other != nick)
        core.receive_data(_frame(m.Welcome(nick, rate, burst, 1e9, 1e9, 0, others)))
    return cores["alice"], clock


def test_a_message_held_back_is_due_its_receipt_counting_from_when_it_leaves() -> None:
    """A message that waits 10 s for its turn is not reported unconfirmed 15 s after it
    was typed, but 15 s after it left."""
    alice, clock = _online_pair(rate=1.0, burst=2.0)  # one frame at once, then one a second
    for i in range(11):
        alice.send_private("bob", f"message {i}")
    assert len(_payloads(alice.data_to_send())) == 1
    clock[0] = 15.0
    expired = [event for event in alice.tick() if isinstance(event, DeliveryReport)]
    # message 0 left at 0 s and has had its 15 s; the others left later, at 1 s a frame
    assert [report.failed for report in expired] == [(("bob", TIMED_OUT),)]
    clock[0] = 25.0
    expired = [event for event in alice.tick() if isinstance(event, DeliveryReport)]
    assert len(expired) == 10


async def test_four_hundred_piped_lines_go_out_at_the_relays_rate_and_all_arrive(tmp_path: Path) -> None:
    """Before pacing, 400 lines piped in had 182 refused by the relay (and it still exited 0)."""
    count = 400
    async with running_relay(rate=100.0, burst=20.0) as relay:
        alice = await connect(relay, "alice")
        lines = b"".join(b"line %d\n" % i for i in range(count))
        args = ("--nick", "bob", "--host", LOOPBACK, "--port", str(relay.port), "--home", str(tmp_path))
        code, out, err = await run_cli("connect", *args, stdin=lines)
        assert code == 0, out + err
        assert "NOT delivered" not in out and "too many" not in out
        assert out.count("delivered to alice") == count
        assert _texts_received(alice) == [f"line {i}" for i in range(count)]
        await alice.connection.close()


def _texts_received(peer: Peer) -> list[str]:
    events = list(peer.seen)
    while not peer.connection.events.empty():
        events.append(peer.connection.events.get_nowait())
    return [event.text for event in events if isinstance(event, MessageReceived)]


async def test_line_mode_reads_on_only_once_what_it_sent_has_gone() -> None:
    """A pipe must not run ahead of the relay: a backlog of our messages would hold back
    our receipts to others (they queue behind it) until their senders give up on them."""
    async with running_relay(rate=20.0, burst=2.0) as relay, peers(relay, "alice", "bob") as (alice, bob):
        link = bob.connection
        backlog: list[int] = []  # frames held back when each line was sent
        send_room = link.send_room

        def counting_send_room(room: str, text: str, only: object = None) -> int:
            backlog.append(link.core._pacer.queued)
            return send_room(room, text)

        link.send_room = counting_send_room  # type: ignore[method-assign]
        read, write = os.pipe()
        os.write(write, b"".join(b"line %d\n" % i for i in range(6)))
        os.close(write)
        await run_line_mode(Chat(link, lambda style, text: None), fd=read)
        os.close(read)
        assert backlog == [0] * 6
        assert [(await alice.next(MessageReceived)).text for _ in range(6)] == [f"line {i}" for i in range(6)]
