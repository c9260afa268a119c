"""What a peer (or the relay, under a peer's name) can make a client derive and keep with
bodies whose counters jump ahead (issue 16, denial of service 2). Chain steps are counted
with a wrapper around ``chains.chain_step``, never timed."""

from __future__ import annotations

import random
import struct
import tracemalloc
from collections.abc import Iterator

import nacl.utils
import pytest
from nacl.public import PrivateKey
from test_cores import FakeWire, _frame

from e2echat.crypto import chains
from e2echat.crypto.chains import LOOKAHEAD_TOTAL, MAX_SKIP, SKIPPED_TOTAL, KeyBudget
from e2echat.crypto.session import BODY_VERSION, Kind, Party, PeerSession
from e2echat.errors import DecryptionError, ReplayError
from e2echat.wire import messages as m

WINDOW = MAX_SKIP + 1  # the most chain steps one session takes between two real messages


class Steps:
    """Counts the receiving chain steps taken (sending uses its own reference)."""

    def __init__(self) -> None:
        self.count = 0

    def taken(self) -> int:
        count, self.count = self.count, 0
        return count


@pytest.fixture
def steps(monkeypatch: pytest.MonkeyPatch) -> Iterator[Steps]:
    counter = Steps()
    real = chains.chain_step

    def counting(chain_key: bytes) -> tuple[bytes, bytes]:
        counter.count += 1
        return real(chain_key)

    monkeypatch.setattr(chains, "chain_step", counting)
    yield counter


def _pair(budget: KeyBudget | None = None, sender: str = "alice") -> tuple[PeerSession, PeerSession]:
    """(the sender's session, bob's session with it); bob's keys go into ``budget``."""
    alice, bob = PrivateKey.generate(), PrivateKey.generate()
    alice_session, bob_session = PrivateKey.generate(), PrivateKey.generate()
    bob_party = Party("bob", bob.public_key, bob_session.public_key)
    alice_party = Party(sender, alice.public_key, alice_session.public_key)
    return (
        PeerSession(sender, alice, alice_session, bob_party),
        PeerSession("bob", bob, bob_session, alice_party, budget=budget),
    )


def garbage(counter: int) -> bytes:
    """73 bytes that look like a body under ``counter``: header, nonce, tag, a byte."""
    return struct.pack(">BQ", BODY_VERSION, counter) + nacl.utils.random(24 + 16 + 24)


def _refused(session: PeerSession, body: bytes) -> None:
    with pytest.raises(DecryptionError):
        session.decrypt(body)


def _jump(sender: PeerSession, by: int) -> None:
    """``sender`` encrypts ``by`` messages that never arrive."""
    for _ in range(by):
        sender.encrypt("lost", Kind.ROOM)


# -- what garbage costs ---------------------------------------------------------------------------


def test_a_flood_of_garbage_costs_one_window_of_steps_per_real_message(steps: Steps) -> None:
    alice, bob = _pair()
    for _ in range(100):  # under the next counter expected: the cheapest case, cached too
        _refused(bob, garbage(0))
    assert steps.taken() == 1
    draw = random.Random(16)
    flood = [garbage(draw.randrange(WINDOW)) for _ in range(500)]
    flood += [garbage(MAX_SKIP)] * 100  # the same frame again and again
    for body in flood:
        _refused(bob, body)
    assert steps.taken() <= WINDOW  # 500 x ~1000 steps before the lookahead

    # Nothing committed: the real first message opens, with nothing skipped or missing.
    opened = bob.decrypt(alice.encrypt("real", Kind.ROOM))
    assert (opened.counter, opened.skipped, bob.missing) == (0, 0, 0)
    assert steps.taken() == 0  # its key was in the lookahead already
    for body in flood:  # the window moved on by one: one more step, for the whole flood
        _refused(bob, body)
    assert steps.taken() <= 1


def test_garbage_further_ahead_than_a_window_costs_no_step(steps: Steps) -> None:
    _, bob = _pair()
    for counter in (WINDOW, 10**6, 2**64 - 1):
        _refused(bob, garbage(counter))
    assert steps.taken() == 0


def test_garbage_leaves_the_session_as_it_was() -> None:
    alice, bob = _pair()
    for counter in (0, 1, 7, MAX_SKIP):
        _refused(bob, garbage(counter))
    for index in range(3):
        opened = bob.decrypt(alice.encrypt(f"m{index}", Kind.ROOM))
        assert (opened.counter, opened.skipped, opened.late) == (index, 0, False)
    assert bob.missing == 0


def test_the_lookahead_survives_a_jump_and_serves_the_counters_beyond_it(steps: Steps) -> None:
    alice, bob = _pair()
    _refused(bob, garbage(MAX_SKIP))  # the whole window derived
    steps.taken()
    _jump(alice, 10)
    opened = bob.decrypt(alice.encrypt("after ten lost", Kind.ROOM))
    assert (opened.counter, opened.skipped, bob.missing) == (10, 10, 10)
    _refused(bob, garbage(MAX_SKIP))  # still in the window: no step
    assert steps.taken() == 0
    opened = bob.decrypt(alice.encrypt("next", Kind.ROOM))
    assert (opened.counter, opened.skipped) == (11, 0)


# -- what all sessions of a client keep -----------------------------------------------------------


def test_skipped_keys_are_bounded_across_peers_oldest_first() -> None:
    budget = KeyBudget()
    peers = SKIPPED_TOTAL // MAX_SKIP + 2
    pairs = [_pair(budget, sender=f"peer{i}") for i in range(peers)]
    first_lost = []
    for sender, receiver in pairs:
        first_lost.append(sender.encrypt("lost, then late", Kind.ROOM))
        _jump(sender, MAX_SKIP - 1)
        assert receiver.decrypt(sender.encrypt("after the gap", Kind.ROOM)).skipped == MAX_SKIP
        assert receiver.missing == MAX_SKIP
    assert budget.skipped == SKIPPED_TOTAL  # not peers x MAX_SKIP
    # The oldest keys went first: the first peers' late messages cannot be read, the last's can.
    with pytest.raises(ReplayError):
        pairs[0][1].decrypt(first_lost[0])
    assert pairs[-1][1].decrypt(first_lost[-1]).late


def test_lookaheads_are_bounded_across_peers(steps: Steps) -> None:
    budget = KeyBudget()
    peers = LOOKAHEAD_TOTAL // WINDOW + 3
    receivers = [_pair(budget, sender=f"peer{i}")[1] for i in range(peers)]
    for receiver in receivers:
        _refused(receiver, garbage(MAX_SKIP))
    assert steps.taken() == peers * WINDOW
    assert budget.lookahead <= LOOKAHEAD_TOTAL
    # The lookaheads extended least recently went; the latest are still there.
    _refused(receivers[-1], garbage(MAX_SKIP))
    assert steps.taken() == 0
    _refused(receivers[0], garbage(MAX_SKIP))
    assert steps.taken() == WINDOW


def test_a_closed_session_gives_its_keys_back() -> None:
    budget = KeyBudget()
    alice, bob = _pair(budget)
    _jump(alice, 5)
    bob.decrypt(alice.encrypt("after five", Kind.ROOM))
    _refused(bob, garbage(100))
    assert (budget.skipped, budget.lookahead) == (5, 95)
    bob.close()
    assert (budget.skipped, budget.lookahead) == (0, 0)


def test_a_full_budget_stays_within_the_documented_memory() -> None:
    """chains.py says: skipped keys about 350 bytes each, lookahead entries 64 bytes."""
    budget = KeyBudget()
    peers = LOOKAHEAD_TOTAL // WINDOW + 3
    pairs = [_pair(budget, sender=f"peer{i}") for i in range(peers)]
    for sender, _ in pairs[:6]:
        _jump(sender, MAX_SKIP)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for sender, receiver in pairs:
            if sender.next_counter:
                receiver.decrypt(sender.encrypt("after the gap", Kind.ROOM))
            _refused(receiver, garbage(receiver._receiving.next_counter + MAX_SKIP))
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert (budget.skipped, budget.lookahead) == (SKIPPED_TOTAL, LOOKAHEAD_TOTAL)
    assert held <= SKIPPED_TOTAL * 350 + LOOKAHEAD_TOTAL * 64 * 1.05  # bytearrays over-allocate


# -- one budget for the whole client ---------------------------------------------------------------


def test_a_client_keeps_skipped_keys_within_one_budget_for_all_its_peers() -> None:
    """Talkers each jump MAX_SKIP ahead: the listener keeps SKIPPED_TOTAL keys in all,
    not MAX_SKIP per talker (349 KiB each before, without bound across peers)."""
    wire = FakeWire()
    listener = wire.connect("listener")
    talkers = [wire.connect(f"talker{i}") for i in range(SKIPPED_TOTAL // MAX_SKIP + 2)]
    for talker in talkers:
        wire.clients[talker].send_private("listener", "hello")
    wire.pump()
    for talker in talkers:
        _jump(wire.clients[talker]._sessions.by_nick["listener"], MAX_SKIP)
        wire.clients[talker].send_private("listener", "after the gap")
    wire.pump()
    core = wire.clients[listener]
    assert sum(session.missing for session in core._sessions.by_nick.values()) == SKIPPED_TOTAL


def test_a_client_gives_a_leaving_peers_keys_back() -> None:
    wire = FakeWire()
    listener, talker = wire.connect("listener"), wire.connect("talker")
    wire.deliver(listener, _frame(m.Deliver("talker", garbage(MAX_SKIP))))
    budget = wire.clients[listener]._sessions.budget
    assert budget.lookahead == WINDOW
    wire.hang_up(talker)
    assert budget.lookahead == 0


def test_a_client_gives_every_key_back_when_the_connection_ends() -> None:
    wire = FakeWire()
    listener, talker = wire.connect("listener"), wire.connect("talker")
    wire.clients[talker].send_private("listener", "hello")
    wire.pump()
    _jump(wire.clients[talker]._sessions.by_nick["listener"], 5)
    wire.clients[talker].send_private("listener", "after five lost")
    wire.pump()
    wire.deliver(listener, _frame(m.Deliver("talker", garbage(100))))
    budget = wire.clients[listener]._sessions.budget
    assert (budget.skipped, budget.lookahead) == (5, 100 - 7 + 1)
    wire.clients[listener].forget_keys()
    assert (budget.skipped, budget.lookahead) == (0, 0)
