"""What a hostile review of file transfers found (issue 20), each attack as a test that
fails when it works: a file received posing as a transfer to resume, a record naming
someone who is no nick, ..."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from e2echat.client import fileparts as fp
from e2echat.client.fileevents import TransferChanged, TransferDone
from e2echat.client.filenames import safe_name
from e2echat.client.files import (
    KEEP_ENDED,
    MAX_OFFERS,
    MAX_PROBES,
    MAX_REFUSALS,
    REFUSALS_EVERY,
    Transfers,
    new_transfer_id,
)
from e2echat.client.filestate import Direction, Finish, State
from e2echat.client.trust import Trust
from e2echat.errors import CommandError, TransferFileError
from e2echat.store.downloads import PART_SUFFIX, RECORD_SUFFIX, Landing, Record, RecordSeal, kept_landings
from e2echat.ui import transfers as shown

CHUNK = fp.CHUNK_SIZE
TRANSFER_ID = bytes(range(16))
SEAL = RecordSeal(bytes(range(32)))


@pytest.mark.parametrize(
    "offered",
    [
        f"b.{TRANSFER_ID.hex()[:16]}{RECORD_SUFFIX}",
        f"b.{TRANSFER_ID.hex()[:16]}{PART_SUFFIX}",
        f"b.{TRANSFER_ID.hex()[:16]}{RECORD_SUFFIX.upper()}",  # a file system that ignores case
        "b.part.part",
        "b.part.json",
        "b.part.record",
    ],
)
def test_a_file_received_is_never_named_as_our_partial_files_are(offered: str) -> None:
    landed = safe_name(offered)
    assert not landed.lower().endswith((PART_SUFFIX, RECORD_SUFFIX, ".part.json", ".part.record"))
    assert safe_name(landed) == landed  # kept() holds records to it


def test_a_file_received_does_not_pose_as_a_transfer_to_resume(tmp_path: Path) -> None:
    """mallory sends a record and a partial file, under the names a transfer we accepted
    would have: after a restart, no transfer starts that nobody accepted."""
    record = Record("mallory", TRANSFER_ID, "b", 2**40, CHUNK, bytes(32))
    files = (
        (f"{record.part_name}{RECORD_SUFFIX}", record.to_json()),
        (f"{record.part_name}{PART_SUFFIX}", b"x"),
    )
    for number, (offered, data) in enumerate(files):
        landing = Landing(tmp_path, safe_name(offered), f"landing{number}")
        landing.open()
        landing.write(0, data)
        assert landing.finish(hashlib.blake2b(data, digest_size=fp.DIGEST_SIZE).digest()) is not None
    assert kept_landings(tmp_path, SEAL) == []


def test_a_kept_transfer_is_held_to_the_size_limit_and_a_nick() -> None:
    transfers = Transfers(max_size=10 * CHUNK)
    over = transfers.kept(Direction.IN, "alice", TRANSFER_ID, "b", 10 * CHUNK + 1, CHUNK, bytes(32), 0.0)
    assert over is None
    for peer in ("alice\x1b[2J", "a b", "", "x" * 1000):
        assert transfers.kept(Direction.IN, peer, TRANSFER_ID, "b", 10, CHUNK, bytes(32), 0.0) is None
        assert (
            transfers.kept(Direction.OUT, peer, TRANSFER_ID, "b", 10, CHUNK, bytes(32), 0.0, path="/x")
            is None
        )
    assert transfers.kept(Direction.IN, "alice", TRANSFER_ID, "b", 10 * CHUNK, CHUNK, bytes(32), 0.0)


def test_a_peer_shown_in_a_transfer_line_is_neutralised() -> None:
    peer = "alice\x1b[2J\x1b]0;pwned\x07\nreal-looking line"
    _, line = shown.describe(TransferChanged(1, "in", peer, "b", "paused", ""), "14:00", "")
    assert "\x1b" not in line and "\n" not in line and "\x07" not in line


def test_a_flood_of_offers_costs_bounded_memory_replies_and_lines() -> None:
    """mallory offers 20,000 files over our limit, 200 a second: what we keep of them,
    what we answer and what we show stay bounded, and the same offer again is ignored."""
    transfers = Transfers(max_size=10)
    first = new_transfer_id()
    lines = replies = 0
    for count in range(20_000):
        offer = fp.Offer(first if count == 0 else new_transfer_id(), "x" * 200, 10**6, CHUNK, bytes(32))
        lines += len(transfers.receive("mallory", fp.encode(offer), Trust.UNVERIFIED, count / 200))
        replies += len(transfers.messages)
        transfers.messages.clear()
        assert len(transfers.listing()) <= 2 * KEEP_ENDED
    periods = 20_000 / 200 / REFUSALS_EVERY
    assert lines <= periods + 1 and replies <= MAX_REFUSALS * (periods + 1)
    again = fp.Offer(first, "x", 10**6, CHUNK, bytes(32))
    assert transfers.receive("mallory", fp.encode(again), Trust.UNVERIFIED, 1000.0) == []
    assert transfers.messages == []


def test_unanswered_offers_are_counted_per_peer_and_refused_quietly() -> None:
    transfers = Transfers()
    for _ in range(MAX_OFFERS + 50):
        offer = fp.Offer(new_transfer_id(), "x", 10, CHUNK, bytes(32))
        transfers.receive("mallory", fp.encode(offer), Trust.UNVERIFIED, 0.0)
    assert len(transfers.listing()) == MAX_OFFERS and len(transfers.messages) == MAX_REFUSALS
    offer = fp.Offer(new_transfer_id(), "x", 10, CHUNK, bytes(32))
    assert transfers.receive("alice", fp.encode(offer), Trust.UNVERIFIED, 0.0)  # others are heard


def test_offers_cancelled_as_soon_as_made_are_let_go_and_not_taken_again() -> None:
    transfers = Transfers()
    first = new_transfer_id()
    for count in range(3_000):
        transfer_id = first if count == 0 else new_transfer_id()
        offer = fp.Offer(transfer_id, "x" * 200, 10, CHUNK, bytes(32))
        transfers.receive("mallory", fp.encode(offer), Trust.UNVERIFIED, float(count))
        transfers.receive("mallory", fp.encode(fp.Cancel(transfer_id, "")), Trust.UNVERIFIED, float(count))
        assert len(transfers.listing()) <= 2 * KEEP_ENDED
    again = fp.Offer(first, "x", 10, CHUNK, bytes(32))
    assert transfers.receive("mallory", fp.encode(again), Trust.UNVERIFIED, 1e6) == []


def test_accept_without_a_number_takes_no_offer_when_there_are_two() -> None:
    """alice offers what bob expects; mallory offers just before bob types /accept."""
    transfers = Transfers()
    for sender in ("alice", "mallory"):
        offer = fp.Offer(new_transfer_id(), "x", 10, CHUNK, bytes(32))
        transfers.receive(sender, fp.encode(offer), Trust.UNVERIFIED, 0.0)
    for answer in (transfers.accept, transfers.reject):
        with pytest.raises(CommandError, match="2 offers are open"):
            answer(None)
    assert [t.state for t in transfers.listing()] == [State.OFFERED, State.OFFERED]
    transfers.reject(2)
    assert transfers.accept(None).peer == "alice"  # the only one left


# -- every transfer ends, or stays paused for a reason -----------------------------------------


def test_a_receiver_that_restarts_with_every_byte_written_checks_the_file() -> None:
    transfers = Transfers()
    kept = transfers.kept(
        Direction.IN, "alice", TRANSFER_ID, "a.bin", CHUNK, CHUNK, bytes(32), 0.0, written=CHUNK
    )
    assert kept is not None
    transfers.tick(1.0, {"alice"})
    assert kept.state is State.CHECKING and [type(e) for e in transfers.effects] == [Finish]
    assert not [part for _, part in transfers.messages if isinstance(fp.decode(part), fp.Accept)]


def test_quitting_does_not_wait_for_a_transfer_that_cannot_move() -> None:
    transfers = Transfers()
    transfers.kept(Direction.IN, "alice", TRANSFER_ID, "a.bin", 2 * CHUNK, CHUNK, bytes(32), 0.0)
    offer = fp.Offer(new_transfer_id(), "x", 10, CHUNK, bytes(32))
    transfers.receive("alice", fp.encode(offer), Trust.UNVERIFIED, 0.0)
    assert transfers.active and not transfers.moving
    transfers.offer("alice", "ours.bin", 10, bytes(32), "/ours.bin", 0.0)
    assert transfers.moving  # ours may yet be taken


# -- what a peer sends does not make us send more ------------------------------------------------


def test_accepts_for_a_transfer_we_do_not_have_get_one_cancel() -> None:
    transfers = Transfers()
    for count in range(100):
        stray = fp.Accept(TRANSFER_ID, 0)
        transfers.receive("mallory", fp.encode(stray), Trust.UNVERIFIED, count / 100)
        transfers.receive("mallory", fp.encode(fp.Probe(TRANSFER_ID)), Trust.UNVERIFIED, count / 100)
    assert len(transfers.messages) == 1


def test_a_landing_that_cannot_be_opened_leaves_no_partial_file_nor_an_open_fd(tmp_path: Path) -> None:
    record = Record("alice", TRANSFER_ID, "b", 10, CHUNK, bytes(32))
    landing = Landing(tmp_path, "b", record.part_name)
    landing.record.write_bytes(b"someone's file")  # its name is taken
    fds = len(list(Path("/proc/self/fd").iterdir()))
    with pytest.raises(TransferFileError):
        landing.open(record, SEAL)
    assert not landing.part.exists() and landing.record.read_bytes() == b"someone's file"
    assert len(list(Path("/proc/self/fd").iterdir())) == fds


def test_a_file_being_named_is_not_cancelled_and_then_kept() -> None:
    """Once every byte is written, the file is checked and named: a cancel then, ours or
    the sender's, would say CANCELLED of a file kept all the same."""
    transfers = Transfers()
    kept = transfers.kept(
        Direction.IN, "alice", TRANSFER_ID, "a.bin", CHUNK, CHUNK, bytes(32), 0.0, written=CHUNK
    )
    assert kept is not None
    transfers.tick(1.0, {"alice"})
    with pytest.raises(CommandError, match="being checked"):
        transfers.cancel(kept.number)
    transfers.receive("alice", fp.encode(fp.Cancel(TRANSFER_ID, "")), Trust.UNVERIFIED, 1.0)
    checking = kept.state
    assert checking is State.CHECKING
    (done,) = transfers.finished(kept, True, path="/downloads/a.bin")
    assert isinstance(done, TransferDone) and done.ok


def test_a_sender_asks_a_silent_receiver_a_bounded_number_of_times_then_says_so() -> None:
    transfers = Transfers(remind_after=1.0)
    sent = transfers.offer("bob", "a.bin", 10, bytes(32), "/a.bin", 0.0)
    transfers.receive("bob", fp.encode(fp.Accept(sent.transfer_id, 0)), Trust.UNVERIFIED, 0.0)
    transfers.chunks_due(1 << 30)
    transfers.receive("bob", fp.encode(fp.Ack(sent.transfer_id, 10)), Trust.UNVERIFIED, 0.0)
    transfers.messages.clear()
    heard = []
    for now in range(1, 100):
        if now == 5:  # a word from bob (an old acknowledgement): he is asked anew
            transfers.receive("bob", fp.encode(fp.Ack(sent.transfer_id, 10)), Trust.UNVERIFIED, 5.0)
        heard += transfers.tick(float(now), {"bob"})
    probes = [part for _, part in transfers.messages if isinstance(fp.decode(part), fp.Probe)]
    assert len(probes) == 4 + MAX_PROBES and sent.state is State.PAUSED
    assert [(e.state, "no word from bob" in e.detail) for e in heard if isinstance(e, TransferChanged)] == [
        ("paused", True)
    ]


def test_a_client_still_taking_up_its_transfers_does_not_say_it_has_none() -> None:
    """Parts come as soon as a client is connected, before it has taken up what an earlier
    run left (a large partial file takes seconds to hash again): a probe or an accept for
    a transfer it does not know yet gets no answer then (its peer asks again); once it is
    done, "no such transfer"."""
    transfers = Transfers(resuming=True)
    probe = fp.encode(fp.Probe(TRANSFER_ID))
    accept = fp.encode(fp.Accept(TRANSFER_ID, 0))
    transfers.receive("alice", probe, Trust.UNVERIFIED, 0.0)
    transfers.receive("alice", accept, Trust.UNVERIFIED, 0.0)
    assert transfers.messages == []
    transfers.resuming = False
    transfers.receive("alice", probe, Trust.UNVERIFIED, 10.0)
    transfers.receive("bob", accept, Trust.UNVERIFIED, 10.0)
    assert [fp.decode(part) for _, part in transfers.messages] == [
        fp.Cancel(TRANSFER_ID, "the receiver has no such transfer"),
        fp.Cancel(TRANSFER_ID, "the sender no longer has it"),
    ]
