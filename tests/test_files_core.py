"""The file transfer core (client/files.py) and its parts (client/fileparts.py), without
I/O: two ``Transfers`` over a fake wire, with an in-memory disk, and a negative twin for
each rule a receiver or a sender holds the other to."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import pytest

from e2echat.client import fileparts as fp
from e2echat.client.core import FILE_BURST
from e2echat.client.events import MessagesMissing, SecurityWarning
from e2echat.client.fileevents import FileOffered, TransferChanged, TransferDone, TransferProgress
from e2echat.client.filenames import MAX_LANDED_NAME, safe_name
from e2echat.client.files import MAX_OFFERS, WINDOW, Transfers
from e2echat.client.filestate import Direction, Discard, FileGap, Finish, Land, State, Transfer, Write
from e2echat.client.trust import Trust
from e2echat.errors import CommandError
from e2echat.relay.limits import Limits

CHUNK = fp.CHUNK_SIZE
Mangle = Callable[[list[bytes]], list[bytes]]
E = TypeVar("E")


def digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=fp.DIGEST_SIZE).digest()


@dataclass
class Side:
    """One client: its transfers, the files it sends, what it wrote, what it heard."""

    nick: str
    transfers: Transfers
    sources: dict[int, bytes] = field(default_factory=dict)
    disk: dict[int, bytearray] = field(default_factory=dict)
    kept: dict[int, bytes] = field(default_factory=dict)
    heard: list[object] = field(default_factory=list)

    def offer(
        self, peer: str, data: bytes, name: str = "report.pdf", *, claimed: bytes | None = None
    ) -> Transfer:
        transfer = self.transfers.offer(peer, name, len(data), claimed or digest(data), "/src", 0.0)
        self.sources[transfer.number] = data
        return transfer

    def of(self, kind: type[E]) -> list[E]:
        return [event for event in self.heard if isinstance(event, kind)]


def pair(**options: object) -> tuple[Side, Side]:
    return Side("alice", Transfers(**options)), Side("bob", Transfers(**options))  # type: ignore[arg-type]


def run(
    one: Side,
    other: Side,
    now: float = 0.0,
    *,
    mangle: Mangle | None = None,
    trust: Trust = Trust.UNVERIFIED,
    rounds: int = 10_000,
) -> None:
    """Move parts both ways, and carry out every effect, until nothing is left to do.
    ``mangle`` sees the parts of each turn from alice to bob, as a relay would."""
    for _ in range(rounds):
        moved = False
        for side, peer in ((one, other), (other, one)):
            parts = [part for _, part in side.transfers.messages]
            side.transfers.messages.clear()
            parts += [
                fp.encode(fp.Chunk(t.transfer_id, offset, side.sources[t.number][offset : offset + length]))
                for t, offset, length in side.transfers.chunks_due(1 << 30)
            ]
            if mangle is not None and side is one:
                parts = mangle(parts)
            for part in parts:
                moved = True
                peer.heard += peer.transfers.receive(side.nick, part, trust, now)
            moved |= carry_out(side, now)
        if not moved:
            return
    raise AssertionError("the transfers never settled")


def carry_out(side: Side, now: float, *, tamper: Callable[[bytes], bytes] | None = None) -> bool:
    effects, side.transfers.effects = side.transfers.effects, []
    for effect in effects:
        transfer = effect.transfer
        if isinstance(effect, Land):
            side.disk[transfer.number] = bytearray()
            side.heard += side.transfers.landed(transfer, 0, now)
        elif isinstance(effect, Write):
            written = side.disk[transfer.number]
            assert effect.offset == len(written)  # the core hands out chunks in order
            written += effect.data if tamper is None else tamper(effect.data)
            side.heard += side.transfers.written(transfer, len(written), now)
        elif isinstance(effect, Finish):
            data = bytes(side.disk.pop(transfer.number))
            if digest(data) == transfer.digest:
                side.kept[transfer.number] = data
                side.heard += side.transfers.finished(transfer, True, path=f"/downloads/{transfer.name}")
            else:
                side.heard += side.transfers.finished(transfer, False, detail="did not match")
        elif isinstance(effect, Discard):
            side.disk.pop(transfer.number, None)
    return bool(effects)


def offered(receiver: Side) -> FileOffered:
    offers = receiver.of(FileOffered)
    assert len(offers) == 1
    return offers[0]


@pytest.mark.parametrize(
    "size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 5, 20 * CHUNK], ids=lambda size: f"{size}B"
)
def test_a_file_goes_whole_once_accepted(size: int) -> None:
    alice, bob = pair()
    data = bytes(index % 251 for index in range(size))
    sent = alice.offer("bob", data)
    run(alice, bob)
    offer = offered(bob)
    assert (offer.sender, offer.name, offer.size, offer.number) == ("alice", "report.pdf", size, 1)
    bob.transfers.accept(None)  # the only offer
    run(alice, bob)
    assert bob.kept == {1: data}
    received = bob.transfers.get(1)
    assert received is not None and received.state is State.DONE
    assert sent.state is State.DONE
    (done,) = alice.of(TransferDone)
    assert done.ok and done.direction == "out" and done.path == ""  # where it is is the receiver's
    (landed,) = bob.of(TransferDone)
    assert landed.ok and landed.path == "/downloads/report.pdf"


def test_nothing_is_sent_or_taken_before_the_receiver_accepts() -> None:
    alice, bob = pair()
    sent = alice.offer("bob", b"x" * 3 * CHUNK)
    run(alice, bob)
    assert alice.transfers.chunks_due(1 << 30) == []
    # A chunk of it anyway (a sender that does not wait): not written.
    bob.heard += bob.transfers.receive(
        "alice", fp.encode(fp.Chunk(sent.transfer_id, 0, b"x" * CHUNK)), Trust.UNVERIFIED, 0
    )
    assert bob.transfers.effects == []
    # Nor does an accept from anyone but the receiver start it.
    alice.transfers.receive("mallory", fp.encode(fp.Accept(sent.transfer_id, 0)), Trust.UNVERIFIED, 0)
    assert sent.state is State.OFFERED


def test_a_rejected_offer_tells_the_sender_why() -> None:
    alice, bob = pair()
    sent = alice.offer("bob", b"data")
    run(alice, bob)
    (declined,) = bob.transfers.reject(None)
    assert declined.state == "rejected"
    run(alice, bob)
    (done,) = alice.of(TransferDone)
    assert (done.ok, done.state, done.detail) == (False, "rejected", "they declined it")
    assert sent.state is State.REJECTED
    with pytest.raises(CommandError):
        bob.transfers.accept(1)  # answered already


def test_an_offer_over_the_limit_is_refused_with_the_reason() -> None:
    alice, bob = Side("alice", Transfers()), Side("bob", Transfers(max_size=1000))
    alice.offer("bob", b"x" * 1001)
    run(alice, bob)
    assert bob.of(FileOffered) == []
    (refused,) = bob.of(TransferDone)
    assert refused.state == "rejected" and "over your limit" in refused.detail
    (done,) = alice.of(TransferDone)
    assert done.state == "rejected" and done.detail == "it is over their limit of 1.0 kB"
    # ... and one at the limit is offered
    alice.offer("bob", b"x" * 1000)
    run(alice, bob)
    assert offered(bob).size == 1000


def test_an_offer_from_a_changed_key_is_refused_loudly() -> None:
    alice, bob = pair()
    alice.offer("bob", b"data")
    run(alice, bob, trust=Trust.CHANGED)
    assert bob.of(FileOffered) == []
    (warning,) = bob.of(SecurityWarning)
    assert "key changed" in warning.text
    assert alice.of(TransferDone)[0].state == "rejected"


@pytest.mark.parametrize("by", ["sender", "receiver"])
def test_either_side_cancels_and_the_partial_file_goes(by: str) -> None:
    alice, bob = pair()
    sent = alice.offer("bob", b"x" * 10 * CHUNK)
    run(alice, bob)
    bob.transfers.accept(1)
    carry_out(bob, 0)  # landed; its accept is on its way
    alice.heard += alice.transfers.receive("bob", bob.transfers.messages.pop()[1], Trust.UNVERIFIED, 0)
    canceller, other = (alice, bob) if by == "sender" else (bob, alice)
    (done,) = canceller.transfers.cancel(1, "changed my mind")
    assert done.state == "cancelled"
    run(alice, bob)
    assert sent.state is State.CANCELLED
    assert bob.transfers.get(1).state is State.CANCELLED  # type: ignore[union-attr]
    assert bob.disk == {} and bob.kept == {}  # the partial file was discarded
    told = other.of(TransferDone)[-1]
    assert told.state == "cancelled" and "changed my mind" in told.detail


def test_a_file_that_does_not_match_its_hash_is_not_kept_and_both_sides_hear_it() -> None:
    alice, bob = pair()
    data = b"y" * (2 * CHUNK + 7)
    alice.offer("bob", data, claimed=digest(b"something else"))
    run(alice, bob)
    bob.transfers.accept(1)
    run(alice, bob)
    assert bob.kept == {}
    (failed,) = bob.of(TransferDone)
    assert (failed.ok, failed.state) == (False, "failed")
    (told,) = alice.of(TransferDone)
    assert (told.ok, told.state, told.detail) == (False, "failed", "did not match")


def _chunks(parts: list[bytes]) -> list[int]:
    return [index for index, part in enumerate(parts) if part[0] == fp.PartType.CHUNK]


def _reorder(parts: list[bytes]) -> list[bytes]:
    chunks = _chunks(parts)
    if len(chunks) >= 2:
        first, second = chunks[0], chunks[1]
        parts[first], parts[second] = parts[second], parts[first]
    return parts


def _duplicate(parts: list[bytes]) -> list[bytes]:
    return parts + [parts[index] for index in _chunks(parts)]


_CUT_BEFORE: set[bytes] = set()


def _cut(parts: list[bytes]) -> list[bytes]:
    """Every chunk cut short the first time it goes (a relay that cuts every copy of
    one stops the transfer, as it could by dropping them all)."""
    cut = []
    for part in parts:
        if part[0] == fp.PartType.CHUNK and part not in _CUT_BEFORE:
            _CUT_BEFORE.add(part)
            part = part[:-1]
        cut.append(part)
    return cut


def _moved(parts: list[bytes]) -> list[bytes]:
    """Each chunk claims the offset of the one after it (a peer's bug, or worse)."""
    moved = []
    for part in parts:
        chunk = fp.decode(part)
        if isinstance(chunk, fp.Chunk):
            part = fp.encode(fp.Chunk(chunk.transfer, chunk.offset + CHUNK, chunk.data))
        moved.append(part)
    return moved


@pytest.mark.parametrize("mangle", [_reorder, _duplicate, _cut], ids=["reordered", "duplicated", "cut"])
def test_chunks_out_of_order_again_or_cut_are_dropped_and_sent_again(mangle: Mangle) -> None:
    """The receiver writes only the chunk it expects, of the size it expects; the rest are
    dropped, and the sender, hearing no acknowledgement, sends again from the last one."""
    alice, bob = pair(resend_after=1.0)
    data = bytes(index % 253 for index in range(6 * CHUNK + 11))
    alice.offer("bob", data)
    run(alice, bob)
    bob.transfers.accept(1)
    now = 0.0
    for _ in range(200):
        run(alice, bob, now, mangle=mangle)
        if bob.kept:
            break
        now += 1.5
        for side in (alice, bob):
            side.heard += side.transfers.tick(now, {"alice", "bob"})
    assert bob.kept == {1: data}


def test_a_chunk_claiming_another_offset_is_never_written_there() -> None:
    alice, bob = pair()
    alice.offer("bob", b"z" * 4 * CHUNK)
    run(alice, bob)
    bob.transfers.accept(1)
    run(alice, bob, mangle=_moved)
    assert bob.disk[1] == b""  # nothing written: the first chunk never came as itself


def test_an_accept_beyond_the_end_of_the_file_moves_nothing() -> None:
    alice, _ = pair()
    sent = alice.offer("bob", b"q" * CHUNK)
    alice.transfers.receive("bob", fp.encode(fp.Accept(sent.transfer_id, CHUNK + 1)), Trust.UNVERIFIED, 0)
    assert sent.state is State.OFFERED and alice.transfers.chunks_due(1 << 30) == []


def test_a_kept_transfer_must_have_a_safe_name() -> None:
    transfers = Transfers()
    for name in ("../x", ".bashrc", "a\x1bb"):
        assert transfers.kept(Direction.IN, "alice", bytes(16), name, 10, CHUNK, bytes(32), 0.0) is None
    kept = transfers.kept(Direction.IN, "alice", bytes(16), "x", 10, CHUNK, bytes(32), 0.0, written=5)
    assert kept is not None and (kept.state, kept.acked) == (State.PAUSED, 5)
    assert transfers.kept(Direction.IN, "alice", bytes(16), "x", 10, CHUNK, bytes(32), 0.0) is None  # twice


def test_a_reminder_names_the_next_byte_expected_even_with_writes_on_their_way() -> None:
    """A slow disk: chunks handed to the writer, not yet written. The receiver's reminder
    (or its resume) asks for what comes after them, not again for them: they would then
    come twice, and the second copy would meet a file already past them."""
    alice, bob = pair(remind_after=2.0)
    data = b"s" * 3 * CHUNK
    sent = alice.offer("bob", data)
    run(alice, bob)
    bob.transfers.accept(1)
    carry_out(bob, 0.0)
    bob.transfers.messages.clear()  # its accept, taken as read
    chunk = fp.Chunk(sent.transfer_id, 0, data[:CHUNK])
    bob.transfers.receive("alice", fp.encode(chunk), Trust.UNVERIFIED, 0.0)
    assert [type(effect) for effect in bob.transfers.effects] == [Write]  # not yet written
    bob.transfers.tick(5.0, {"alice"})
    ((_, reminder),) = bob.transfers.messages
    assert fp.decode(reminder) == fp.Accept(sent.transfer_id, CHUNK)
    carry_out(bob, 5.0)  # the write lands; the next chunk is still welcome
    bob.transfers.receive(
        "alice", fp.encode(fp.Chunk(sent.transfer_id, CHUNK, data[CHUNK : 2 * CHUNK])), Trust.UNVERIFIED, 5.0
    )
    assert [type(effect) for effect in bob.transfers.effects] == [Write]


def test_a_peer_cannot_pile_up_offers() -> None:
    alice, bob = pair()
    for number in range(MAX_OFFERS + 3):
        alice.offer("bob", b"x", f"file{number}")
    bob.offer("alice", b"ours")  # our own offers to them do not count
    run(alice, bob)
    assert len(bob.of(FileOffered)) == MAX_OFFERS
    refused = [done for done in alice.of(TransferDone) if done.state == "rejected"]
    assert len(refused) == 3 and refused[0].detail == "too many offers unanswered"
    bob.transfers.reject(bob.of(FileOffered)[0].number)  # one answered: room for one more
    alice.offer("bob", b"x", "one more")
    run(alice, bob)
    assert len(bob.of(FileOffered)) == MAX_OFFERS + 1


def test_a_lying_acknowledgement_moves_nothing() -> None:
    alice, bob = pair()
    sent = alice.offer("bob", b"q" * 4 * CHUNK)
    run(alice, bob)
    alice.transfers.receive("bob", fp.encode(fp.Accept(sent.transfer_id, 0)), Trust.UNVERIFIED, 0)
    alice.transfers.chunks_due(CHUNK)  # one chunk sent
    for lie in (fp.Ack(sent.transfer_id, 3 * CHUNK), fp.Done(sent.transfer_id, True)):
        alice.transfers.receive("bob", fp.encode(lie), Trust.UNVERIFIED, 0)
    assert (sent.acked, sent.state) == (0, State.ACTIVE)  # beyond what was sent; done too soon
    alice.transfers.receive("bob", fp.encode(fp.Ack(sent.transfer_id, CHUNK)), Trust.UNVERIFIED, 0)
    assert sent.acked == CHUNK


def test_the_window_bounds_what_is_unacknowledged() -> None:
    alice, bob = pair(window=3 * CHUNK)
    sent = alice.offer("bob", b"w" * 10 * CHUNK)
    run(alice, bob)
    alice.transfers.receive("bob", fp.encode(fp.Accept(sent.transfer_id, 0)), Trust.UNVERIFIED, 0)
    assert [offset for _, offset, _ in alice.transfers.chunks_due(1 << 30)] == [0, CHUNK, 2 * CHUNK]
    assert alice.transfers.chunks_due(1 << 30) == []
    alice.transfers.receive("bob", fp.encode(fp.Ack(sent.transfer_id, CHUNK)), Trust.UNVERIFIED, 0)
    assert [offset for _, offset, _ in alice.transfers.chunks_due(1 << 30)] == [3 * CHUNK]
    # ... and the budget too: a chunk that does not fit waits
    alice.transfers.receive("bob", fp.encode(fp.Ack(sent.transfer_id, 3 * CHUNK)), Trust.UNVERIFIED, 0)
    assert alice.transfers.chunks_due(CHUNK - 1) == []


def test_a_transfer_pauses_when_its_peer_goes_and_resumes_from_the_last_chunk_written() -> None:
    alice, bob = pair()
    data = bytes(index % 249 for index in range(8 * CHUNK))
    sent = alice.offer("bob", data)
    run(alice, bob)
    bob.transfers.accept(1)
    run(alice, bob, mangle=lambda parts: [part for part in parts if part[0] != fp.PartType.CHUNK])
    # Three chunks arrive, then the relay goes (with the rest of the window).
    alice.transfers.chunks_due(1 << 30)
    for offset in range(0, 3 * CHUNK, CHUNK):
        chunk = fp.Chunk(sent.transfer_id, offset, data[offset : offset + CHUNK])
        bob.transfers.receive("alice", fp.encode(chunk), Trust.UNVERIFIED, 1.0)
    carry_out(bob, 1.0)
    for side in (alice, bob):
        side.heard += side.transfers.tick(2.0, set())
        assert [e.state for e in side.of(TransferChanged)][-1] == "paused"
    assert sent.state is State.PAUSED and alice.transfers.chunks_due(1 << 30) == []
    # Both back: bob says where he is; alice goes on from there.
    bob.transfers.tick(3.0, {"alice"})
    alice.transfers.tick(3.0, {"bob"})
    run(alice, bob, 3.0)
    assert bob.kept == {1: data}
    assert alice.transfers.listing()[0].state is State.DONE
    assert "resumed" in [e.state for e in alice.of(TransferChanged)]


def test_progress_is_told_at_each_tenth() -> None:
    alice, bob = pair()
    alice.offer("bob", b"p" * 40 * CHUNK)
    run(alice, bob)
    bob.transfers.accept(1)
    run(alice, bob)
    tenths = [event.done * 10 // event.size for event in bob.of(TransferProgress)]
    assert tenths == list(range(11))  # the first chunk, then each tenth


def test_a_malformed_part_is_reported_and_changes_nothing() -> None:
    _, bob = pair()
    (warning,) = bob.transfers.receive("alice", b"\x05short", Trust.UNVERIFIED, 0)
    assert isinstance(warning, SecurityWarning) and "malformed" in warning.text


# -- the parts on the wire ------------------------------------------------------------------

ID = bytes(range(16))
PARTS = [
    fp.Offer(ID, "report.pdf", 12345, CHUNK, bytes(32)),
    fp.Offer(ID, "é" * 100, 0, 1024, bytes(range(32))),
    fp.Accept(ID, 0),
    fp.Accept(ID, 2**40),
    fp.Reject(ID, "too big"),
    fp.Reject(ID, ""),
    fp.Cancel(ID, "bye"),
    fp.Chunk(ID, 65536, b"\x00\xff" * 100),
    fp.Ack(ID, 7),
    fp.Ack(ID, 2**40, 2**63 - 1),
    fp.Done(ID, True),
    fp.Done(ID, False, "did not match"),
    fp.Probe(ID),
    fp.Rewind(ID, 3 * CHUNK),
]


@pytest.mark.parametrize("part", PARTS, ids=lambda part: type(part).__name__)
def test_parts_round_trip(part: fp.Part) -> None:
    assert fp.decode(fp.encode(part)) == part
    # the one part that may wait in a mailbox
    assert fp.is_offer(fp.encode(part)) is isinstance(part, fp.Offer)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        bytes([fp.PartType.CHUNK]) + ID,  # no offset
        bytes([fp.PartType.CHUNK]) + ID + bytes(8),  # no data
        bytes([fp.PartType.ACK]) + ID + bytes(9),
        bytes([fp.PartType.ACK]) + ID + bytes(8),  # no count of parts
        bytes([fp.PartType.ACK]) + ID + bytes(17),
        bytes([fp.PartType.ACK]) + ID + bytes(8) + b"\x80" + bytes(7),  # a count past 2**63 - 1
        bytes([fp.PartType.OFFER]) + ID + bytes(8) + (CHUNK + 1).to_bytes(4, "big") + bytes(32) + b"x",
        bytes([fp.PartType.OFFER]) + ID + bytes(8) + CHUNK.to_bytes(4, "big") + bytes(32),  # no name
        bytes([fp.PartType.OFFER]) + ID + bytes(8) + CHUNK.to_bytes(4, "big") + bytes(32) + b"\xff",
        bytes([fp.PartType.DONE]) + ID + b"\x02",
        bytes([fp.PartType.PROBE]) + ID + b"\x00",
        bytes([fp.PartType.REWIND]) + ID + bytes(7),
        bytes([fp.PartType.REWIND]) + ID + bytes(9),
        bytes([fp.PartType.REJECT]) + ID + b"\xed\xa0\x80",  # a lone surrogate
        bytes([99]) + ID,
    ],
)
def test_malformed_parts_are_refused(data: bytes) -> None:
    assert fp.decode(data) is None


# -- names ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("offered", "landed"),
    [
        ("report.pdf", "report.pdf"),
        ("../../x", "x"),
        ("/etc/passwd", "passwd"),
        ("..\\..\\windows\\evil.exe", "evil.exe"),
        ("..", "file"),
        ("", "file"),
        (".bashrc", "bashrc"),
        ("...hidden", "hidden"),
        ("a\x1b]0;pwned\x07b.txt", "a]0;pwnedb.txt"),
        ("invoice\u202efdp.exe", "invoicefdp.exe"),  # right-to-left override
        ("zero\u200bwidth", "zerowidth"),
        ("line\nbreak.txt", "linebreak.txt"),
        ("no\u00a0break", "no break"),
        ("trailing. . ", "trailing"),
        ("résumé 履歴書.pdf", "résumé 履歴書.pdf"),
    ],
)
def test_names_are_made_safe(offered: str, landed: str) -> None:
    assert safe_name(offered) == landed


def test_long_names_are_cut_and_keep_their_extension() -> None:
    name = safe_name("a" * 10_000 + ".tar.gz")
    assert name.endswith(".gz") and len(name.encode("utf-8")) <= MAX_LANDED_NAME
    wide = safe_name("履" * 5000)
    assert len(wide.encode("utf-8")) <= MAX_LANDED_NAME and wide.strip("履") == ""


def test_numbers_name_transfers_both_ways() -> None:
    alice, bob = pair()
    alice.offer("bob", b"1")
    bob.offer("alice", b"2")
    run(alice, bob)
    assert [(t.number, t.direction) for t in alice.transfers.listing()] == [
        (1, Direction.OUT),
        (2, Direction.IN),
    ]
    with pytest.raises(CommandError):
        alice.transfers.accept(1)  # our own offer is not ours to accept
    with pytest.raises(CommandError):
        alice.transfers.cancel(9)


def test_a_window_of_chunks_is_never_refused_for_the_relays_turn() -> None:
    """The relay refuses deliveries past half its write buffer in one turn: a whole
    window, and the burst queued at once, stay under it, so a transfer alone never has
    its chunks refused by a relay at its default limits."""
    limits = Limits()
    assert limits.write_buffer_turn > WINDOW + fp.CHUNK_SIZE
    assert limits.write_buffer_turn > FILE_BURST + fp.CHUNK_SIZE


def test_a_window_of_chunks_fits_under_the_relays_soft_mark() -> None:
    """Past its soft mark the relay refuses deliveries to a receiver: a whole window in
    flight, with each chunk's frame, ratchet header, nonce and tag (far less than 1 KiB),
    stays under it, so a slow receiver is never sent more than the relay takes."""
    chunks = -(-WINDOW // fp.CHUNK_SIZE)
    assert WINDOW + chunks * 1024 <= Limits().write_buffer_soft


# -- messages missing, or chunks lost -------------------------------------------------------------


def _receiving(chunks: int) -> tuple[Side, Transfer, bytes, Callable[[int, FileGap], list[object]]]:
    """bob, taking a file of ``chunks`` chunks from alice; and a way to hand him chunk
    ``index`` as the session says it came (``FileGap``), returning what he heard."""
    alice, bob = pair()
    data = bytes(index % 251 for index in range(chunks * CHUNK))
    sent = alice.offer("bob", data)
    run(alice, bob)
    bob.transfers.accept(offered(bob).number)
    carry_out(bob, 0.0)

    def chunk(index: int, gap: FileGap) -> list[object]:
        part = fp.encode(fp.Chunk(sent.transfer_id, index * CHUNK, data[index * CHUNK : (index + 1) * CHUNK]))
        heard: list[object] = list(bob.transfers.receive("alice", part, Trust.UNVERIFIED, 0.0, gap))
        carry_out(bob, 0.0)
        return heard

    return bob, sent, data, chunk


def _missing(heard: Sequence[object]) -> list[int]:
    return [event.count for event in heard if isinstance(event, MessagesMissing)]


def test_messages_skipped_that_were_chunks_of_the_file_are_not_missing() -> None:
    """A relay that restarts loses chunks: the transfer sends them again, and the chat
    does not say messages are missing for them."""
    _, _, _, chunk = _receiving(8)
    assert _missing(chunk(0, FileGap(after_file=True))) == []
    assert _missing(chunk(3, FileGap(skipped=2, after_file=True))) == []  # 1 and 2 lost
    assert _missing(chunk(1, FileGap(after_file=True))) == []  # sent again


def test_a_chat_message_lost_among_chunks_is_missing() -> None:
    _, _, _, chunk = _receiving(8)
    chunk(0, FileGap(after_file=True))
    # chunks 1 and 2 lost, and a third message: one more than the chunks between
    assert _missing(chunk(3, FileGap(skipped=3, after_file=True))) == [3]
    # the message before the gap was not a part of a file: nothing is known of the gap
    _, _, _, chunk = _receiving(8)
    chunk(0, FileGap(after_file=True))
    assert _missing(chunk(2, FileGap(skipped=1, after_file=False))) == [1]
    # a gap before a part that is not a chunk is missing as it always was
    bob, sent, _, chunk = _receiving(8)
    chunk(0, FileGap(after_file=True))
    cancel = fp.encode(fp.Cancel(sent.transfer_id, "bye"))
    assert _missing(
        bob.transfers.receive("alice", cancel, Trust.UNVERIFIED, 0.0, FileGap(1, False, True))
    ) == [1]


def second_offer(transfer: Transfer) -> bytes:
    return fp.encode(fp.Offer(transfer.transfer_id, transfer.name, transfer.size, CHUNK, transfer.digest))


def _rewind(bob: Side, sent: Transfer, offset: int, gap: FileGap) -> list[object]:
    part = fp.encode(fp.Rewind(sent.transfer_id, offset))
    return list(bob.transfers.receive("alice", part, Trust.UNVERIFIED, 0.0, gap))


def test_chunks_lost_at_the_end_of_a_run_are_not_missing_when_the_sender_goes_back() -> None:
    """The last chunks alice sent before she went back (a relay restarted; or their
    acknowledgement never came) are lost: her Rewind says how far she got, and the
    messages skipped before it were those chunks."""
    bob, sent, _, chunk = _receiving(8)
    for index in range(3):
        chunk(index, FileGap(after_file=True))
    assert _missing(_rewind(bob, sent, 5 * CHUNK, FileGap(skipped=2, after_file=True))) == []
    # what comes after it is counted from the next byte bob expects: chunks 3 and 4 sent
    # again, lost again, and another rewind
    assert _missing(_rewind(bob, sent, 5 * CHUNK, FileGap(skipped=2, after_file=True))) == []
    assert _missing(chunk(4, FileGap(skipped=1, after_file=True))) == []  # 3 lost a third time
    assert _missing(chunk(3, FileGap(late=True, after_file=True))) == []
    # the relay restarted: bob paused, and alice's rewind comes before his Accept
    bob, sent, _, chunk = _receiving(8)
    for index in range(3):
        chunk(index, FileGap(after_file=True))
    bob.transfers.tick(1.0, [])
    assert bob.transfers.listing()[0].state is State.PAUSED
    assert _missing(_rewind(bob, sent, 5 * CHUNK, FileGap(skipped=2, after_file=True))) == []
    # counted from the last chunk that came, if it came out of order (and was dropped)
    bob, sent, _, chunk = _receiving(8)
    chunk(0, FileGap(after_file=True))
    assert _missing(chunk(2, FileGap(skipped=1, after_file=True))) == []
    assert _missing(_rewind(bob, sent, 4 * CHUNK, FileGap(skipped=1, after_file=True))) == []


def test_a_chat_message_lost_with_the_last_chunks_before_a_rewind_is_missing() -> None:
    bob, sent, _, chunk = _receiving(8)
    for index in range(3):
        chunk(index, FileGap(after_file=True))
    # chunks 3 and 4, and one more message
    assert _missing(_rewind(bob, sent, 5 * CHUNK, FileGap(skipped=3, after_file=True))) == [3]
    # the message before the gap was not a part of a file
    bob, sent, _, chunk = _receiving(8)
    chunk(0, FileGap(after_file=True))
    assert _missing(_rewind(bob, sent, 2 * CHUNK, FileGap(skipped=1, after_file=False))) == [1]
    # a rewind of another transfer (of alice's, on its way too), or to where bob already
    # is, accounts for none of the chunks of this one
    bob, sent, _, chunk = _receiving(8)
    second = Side("alice", Transfers()).transfers.offer("bob", "b.bin", 8 * CHUNK, bytes(32), "/b", 0.0)
    (offer,) = bob.transfers.receive("alice", second_offer(second), Trust.UNVERIFIED, 0.0)
    assert isinstance(offer, FileOffered)
    bob.transfers.accept(offer.number)
    carry_out(bob, 0.0)
    chunk(0, FileGap(after_file=True))
    other = fp.encode(fp.Rewind(second.transfer_id, 3 * CHUNK))
    assert _missing(
        bob.transfers.receive("alice", other, Trust.UNVERIFIED, 0.0, FileGap(2, False, True))
    ) == [2]
    assert _missing(_rewind(bob, sent, CHUNK, FileGap(skipped=1, after_file=True))) == [1]


def test_a_sender_that_goes_back_says_how_far_it_got_since_it_last_did() -> None:
    """On a resend after silence and on an Accept that resumes, the sender's Rewind names
    where it got in this pass: not the furthest it ever sent, which would count chunks sent
    twice once, and let a chat message lost among them pass for a chunk."""
    alice, bob = pair(window=4 * CHUNK, resend_after=1.0)
    sent = alice.offer("bob", bytes(8 * CHUNK))
    run(alice, bob)
    bob.transfers.accept(offered(bob).number)
    carry_out(bob, 0.0)
    for part in [p for _, p in bob.transfers.messages]:
        alice.transfers.receive("bob", part, Trust.UNVERIFIED, 0.0)
    bob.transfers.messages.clear()
    assert [offset for _, offset, _ in alice.transfers.chunks_due(1 << 30)] == [
        0,
        CHUNK,
        2 * CHUNK,
        3 * CHUNK,
    ]
    alice.transfers.tick(2.0, ["bob"])  # no acknowledgement: back to 0
    rewinds = [fp.decode(part) for _, part in alice.transfers.messages]
    assert fp.Rewind(sent.transfer_id, 4 * CHUNK) in rewinds
    alice.transfers.messages.clear()
    assert [offset for _, offset, _ in alice.transfers.chunks_due(CHUNK)] == [0]
    accept = fp.encode(fp.Accept(sent.transfer_id, 0))
    alice.transfers.receive("bob", accept, Trust.UNVERIFIED, 2.5)  # (a reminder)
    assert [fp.decode(part) for _, part in alice.transfers.messages] == [fp.Rewind(sent.transfer_id, CHUNK)]
    alice.transfers.messages.clear()
    alice.transfers.receive("bob", accept, Trust.UNVERIFIED, 2.6)  # nothing sent since: no rewind
    assert alice.transfers.messages == []
    # paused (bob, or the relay, went away) with chunks on their way: back, alice asks
    # where he is, and goes back first (once)
    assert len(alice.transfers.chunks_due(1 << 30)) == 4
    alice.transfers.tick(3.0, [])
    alice.transfers.tick(10.0, ["bob"])
    assert [fp.decode(part) for _, part in alice.transfers.messages] == [
        fp.Rewind(sent.transfer_id, 4 * CHUNK),
        fp.Probe(sent.transfer_id),
    ]
    alice.transfers.messages.clear()
    alice.transfers.tick(20.0, ["bob"])
    assert [fp.decode(part) for _, part in alice.transfers.messages] == [fp.Probe(sent.transfer_id)]


def test_chunks_lost_right_after_a_probe_are_not_missing_and_a_message_is() -> None:
    """alice, hearing nothing, probes and sends again from where bob said he was (2).
    Chunks 2 and 3 lost after the probe are chunks, even though bob had taken chunks out
    of order (5) before it; one message more than those chunks is missing."""
    for lost, missing in ((2, []), (3, [3])):
        bob, sent, _, chunk = _receiving(8)
        chunk(0, FileGap(after_file=True))
        chunk(1, FileGap(after_file=True))
        chunk(5, FileGap(skipped=3, after_file=True))  # 2, 3, 4 lost: dropped, out of order
        probe = fp.encode(fp.Probe(sent.transfer_id))
        bob.transfers.receive("alice", probe, Trust.UNVERIFIED, 0.0, FileGap(after_file=True))
        assert _missing(chunk(4, FileGap(skipped=lost, after_file=True))) == missing


def _acknowledging(chunks: int) -> tuple[Side, Side, Transfer, list[bytes]]:
    """alice, sending bob a file; bob; and the parts bob sent her after his Accept, in
    order (an Ack for each chunk), none of them yet handed to her."""
    alice, bob = pair()
    data = bytes(index % 251 for index in range(chunks * CHUNK))
    sent = alice.offer("bob", data)
    run(alice, bob)
    bob.transfers.accept(offered(bob).number)
    carry_out(bob, 0.0)
    parts = [part for _, part in bob.transfers.messages]
    bob.transfers.messages.clear()
    alice.transfers.receive("bob", parts.pop(0), Trust.UNVERIFIED, 0.0)  # the Accept
    for _, offset, length in alice.transfers.chunks_due(1 << 30):
        chunk = fp.Chunk(sent.transfer_id, offset, data[offset : offset + length])
        bob.transfers.receive("alice", fp.encode(chunk), Trust.UNVERIFIED, 0.0, FileGap(after_file=True))
        carry_out(bob, 0.0)
    parts += [part for _, part in bob.transfers.messages]
    bob.transfers.messages.clear()
    return alice, bob, sent, parts


def _hand(alice: Side, part: bytes, gap: FileGap) -> list[int]:
    return _missing(alice.transfers.receive("bob", part, Trust.UNVERIFIED, 0.0, gap))


def _chat(alice: Side, gap: FileGap, now: float = 0.0) -> tuple[list[int], bool]:
    """A chat line from bob, come where ``gap`` says: what is missing, and whether held."""
    events, held = alice.transfers.other_message("bob", gap, now)
    return _missing(events), held


def test_acknowledgements_count_the_parts_their_receiver_sent() -> None:
    _, bob, sent, acks = _acknowledging(10)  # (8 go: the window)
    assert [fp.decode(part) for part in acks] == [
        fp.Ack(sent.transfer_id, (index + 1) * CHUNK, index + 2) for index in range(8)
    ]
    # an answer to a probe (an Accept) is a part of it too; a chunk bob had already
    # has him say again where he is
    bob.transfers.receive("alice", fp.encode(fp.Probe(sent.transfer_id)), Trust.UNVERIFIED, 10.0)
    chunk = fp.Chunk(sent.transfer_id, 0, bytes(index % 251 for index in range(CHUNK)))
    bob.transfers.receive("alice", fp.encode(chunk), Trust.UNVERIFIED, 20.0)
    assert [fp.decode(part) for _, part in bob.transfers.messages] == [
        fp.Accept(sent.transfer_id, 8 * CHUNK),
        fp.Ack(sent.transfer_id, 8 * CHUNK, 11),
    ]


def test_acknowledgements_lost_are_not_missing_and_a_message_among_them_is() -> None:
    """Acks 2 and 3 lost (a relay restarted, or dropped them): the next says bob sent
    two parts since the one before the gap, and two messages were skipped."""
    alice, _, _, acks = _acknowledging(6)
    assert _hand(alice, acks[0], FileGap(after_file=True)) == []
    assert _hand(alice, acks[3], FileGap(skipped=2, after_file=True)) == []
    # a chat line lost too: three skipped, where two parts went
    assert _hand(alice, acks[5], FileGap(skipped=2, after_file=True)) == [2]
    # the message before the gap was not a part (a chat line came between): not told
    alice, _, _, acks = _acknowledging(4)
    _hand(alice, acks[0], FileGap(after_file=True))
    assert _hand(alice, acks[2], FileGap(skipped=1, after_file=False)) == [1]
    # the part before the gap was not an acknowledgement (its count is not known)
    alice, _, sent, acks = _acknowledging(4)
    _hand(alice, acks[0], FileGap(after_file=True))
    _hand(alice, fp.encode(fp.Accept(sent.transfer_id, CHUNK)), FileGap(after_file=True))
    assert _hand(alice, acks[2], FileGap(skipped=1, after_file=True)) == [1]
    # an acknowledgement of another transfer, whatever it counts, says nothing of this one
    alice, _, sent, acks = _acknowledging(4)
    _hand(alice, acks[0], FileGap(after_file=True))
    other = fp.encode(fp.Ack(bytes(16), CHUNK, 4))
    assert _hand(alice, other, FileGap(skipped=1, after_file=True)) == [1]
    # a late acknowledgement fills a gap: what came in order is still counted from
    alice, _, _, acks = _acknowledging(4)
    _hand(alice, acks[0], FileGap(after_file=True))
    assert _hand(alice, acks[2], FileGap(skipped=1, after_file=True)) == []
    assert _hand(alice, acks[1], FileGap(late=True, after_file=True)) == []
    assert _hand(alice, acks[3], FileGap(after_file=True)) == []
    # a count that jumps further than the messages skipped: parts counted that never
    # went (not from bob's client), which could hide what was lost with them
    alice, _, _, acks = _acknowledging(4)
    _hand(alice, acks[0], FileGap(after_file=True))
    assert _hand(alice, acks[3], FileGap(skipped=1, after_file=True)) == [1]


def test_a_chat_line_after_acknowledgements_lost_is_held_for_the_next() -> None:
    """Ack 1, then acks 2 (lost), a chat line (kept), ack 3 (lost), ack 4: the line's
    gap is held, and ack 4 explains both gaps. A chat line lost among them makes one
    more message skipped than the parts between the acks, and it is told."""
    for lost, missing in ((False, []), (True, [2, 1])):
        alice, _, _, acks = _acknowledging(4)
        _hand(alice, acks[0], FileGap(after_file=True))
        assert _chat(alice, FileGap(skipped=1 + lost, after_file=True)) == ([], True)
        assert _hand(alice, acks[3], FileGap(skipped=1, after_file=True)) == missing
    # ack 2 lost before the line, and ack 3 came right after it (ack 2 too, late)
    for late in (False, True):
        alice, _, _, acks = _acknowledging(4)
        _hand(alice, acks[0], FileGap(after_file=True))
        assert _chat(alice, FileGap(skipped=1, after_file=True)) == ([], True)
        if late:
            assert _hand(alice, acks[1], FileGap(late=True, after_file=True)) == []
        assert _hand(alice, acks[2], FileGap(after_file=True)) == []


def test_a_gap_held_is_told_when_nothing_explains_it() -> None:
    # no acknowledgement within HOLD_GAP
    alice, _, _, acks = _acknowledging(4)
    _hand(alice, acks[0], FileGap(after_file=True))
    assert _chat(alice, FileGap(skipped=2, after_file=True), now=1.0) == ([], True)
    assert _missing(alice.transfers.tick(1.0 + alice.transfers.hold_gap - 0.1, ["bob"])) == []
    assert _missing(alice.transfers.tick(1.0 + alice.transfers.hold_gap, ["bob"])) == [2]
    assert _hand(alice, acks[3], FileGap(after_file=True)) == []  # (told once)
    # a second chat line comes first
    alice, _, _, acks = _acknowledging(4)
    _hand(alice, acks[0], FileGap(after_file=True))
    _chat(alice, FileGap(skipped=2, after_file=True))
    assert _chat(alice, FileGap(skipped=1, after_file=True)) == ([2, 1], False)
    # a part that is not an acknowledgement, or one in another session, comes next
    for another_session in (False, True):
        alice, _, sent, acks = _acknowledging(4)
        _hand(alice, acks[0], FileGap(after_file=True))
        _chat(alice, FileGap(skipped=2, after_file=True))
        if another_session:
            assert _hand(alice, acks[3], FileGap(after_file=False)) == [2]
        else:
            done = fp.encode(fp.Done(sent.transfer_id, True))
            assert _hand(alice, done, FileGap(after_file=True)) == [2]
    # not held: a gap not right after an acknowledgement, or with no transfer going on
    alice, _, _, acks = _acknowledging(4)
    _hand(alice, acks[0], FileGap(after_file=True))
    assert _chat(alice, FileGap(skipped=2, after_file=False)) == ([2], False)
    alice, _, sent, acks = _acknowledging(4)
    _hand(alice, acks[0], FileGap(after_file=True))
    alice.transfers.cancel(sent.number)
    assert _chat(alice, FileGap(skipped=2, after_file=True)) == ([2], False)
    alice, _, _, acks = _acknowledging(4)
    _hand(alice, acks[0], FileGap(after_file=True))
    _hand(alice, fp.encode(fp.Probe(bytes(16))), FileGap(after_file=True))
    assert _chat(alice, FileGap(skipped=2, after_file=True)) == ([2], False)


def test_a_relay_cannot_hide_a_lost_message_behind_a_chunk_it_reordered() -> None:
    """alice sends chunks 1 and 2, a chat message, chunk 3. The relay hands bob chunk 2
    first (1 skipped: a chunk), then 1 (late), drops the message, then hands him chunk 3:
    chunk 2 came already, so the message skipped before 3 was not a chunk, and is missing."""
    _, _, _, chunk = _receiving(8)
    chunk(0, FileGap(after_file=True))
    assert _missing(chunk(2, FileGap(skipped=1, after_file=True))) == []
    assert _missing(chunk(1, FileGap(late=True, after_file=True))) == []
    assert _missing(chunk(3, FileGap(skipped=1, after_file=True))) == [1]


# -- what a hostile review found (issue 20; the rest in test_files_review.py) -----------------


def _drop(kind: type[fp.Part]) -> Callable[[list[bytes]], list[bytes]]:
    return lambda parts: [part for part in parts if not isinstance(fp.decode(part), kind)]


def test_a_lost_done_is_asked_for_again() -> None:
    alice, bob = pair(remind_after=2.0)
    data = b"d" * (2 * CHUNK + 3)
    sent = alice.offer("bob", data)
    run(alice, bob)
    bob.transfers.accept(1)
    run(bob, alice, mangle=_drop(fp.Done))  # (bob's parts are the ones mangled)
    waiting = sent.state
    assert bob.kept and waiting is State.CHECKING
    for now in (1.0, 3.0):
        alice.transfers.tick(now, {"bob"})
        bob.transfers.tick(now, {"alice"})
        run(alice, bob, now)
    assert sent.state is State.DONE


@pytest.mark.parametrize("receiver", ["done", "forgot", "rejects", "resumes"])
def test_a_sender_that_restarts_hears_how_its_transfer_stands(receiver: str) -> None:
    """alice offered bob a file, and restarted: her transfer is kept, paused."""
    alice, bob = pair(remind_after=2.0)
    data = b"r" * (3 * CHUNK)
    offer = alice.offer("bob", data)
    run(alice, bob)
    if receiver in ("done", "resumes"):
        bob.transfers.accept(1)
        run(alice, bob, mangle=(lambda parts: parts[:2]) if receiver == "resumes" else None)
    alice.transfers = Transfers(remind_after=2.0)  # the restart
    sent = alice.transfers.kept(
        Direction.OUT,
        "bob",
        offer.transfer_id,
        "report.pdf",
        len(data),
        CHUNK,
        offer.digest,
        0.0,
        path="/src",
    )
    assert sent is not None and sent.state is State.PAUSED
    alice.sources[sent.number] = data
    if receiver == "forgot":
        bob.transfers = Transfers()
    if receiver == "rejects":
        bob.transfers.reject(1)
    for now in (3.0, 6.0, 9.0):
        alice.transfers.tick(now, {"bob"})
        run(alice, bob, now)
        bob.transfers.tick(now, {"alice"})
        run(alice, bob, now)
    expected = {
        "done": State.DONE,
        "forgot": State.CANCELLED,
        "rejects": State.REJECTED,
        "resumes": State.DONE,
    }
    assert sent.state is expected[receiver]
    if receiver == "resumes":
        assert bob.kept == {1: data}


def test_a_receiver_takes_no_chunk_beyond_the_window() -> None:
    alice, bob = pair(window=2 * CHUNK)
    data = b"w" * (4 * CHUNK)
    sent = alice.offer("bob", data)
    run(alice, bob)
    bob.transfers.accept(1)
    carry_out(bob, 0.0)  # landed, but nothing written: what a slow disk looks like
    for offset in range(0, len(data), CHUNK):
        chunk = fp.Chunk(sent.transfer_id, offset, data[offset : offset + CHUNK])
        bob.transfers.receive("alice", fp.encode(chunk), Trust.UNVERIFIED, 0.0)
    assert len([e for e in bob.transfers.effects if isinstance(e, Write)]) == 2
