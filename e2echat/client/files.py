"""File transfers: offers, answers, chunks and their acknowledgements, for every transfer
we send or receive. Pure (no I/O); time is passed in.

``Transfers`` is the state of them all; it outlives connections (a transfer pauses when
its peer or the relay goes, and resumes from the last chunk written when both are back).
The parts it sends are in ``messages`` (control parts) and ``chunks_due`` (the chunks
the window allows); what it needs done on the disk (a landing opened, a chunk written, a
file checked and named, a partial file deleted) is in ``effects``. The shell
(client/filepump.py) carries both out and reports back (``landed``, ``written``,
``finished``); ``wake`` is called whenever there is new work for it.

Nothing is sent before the receiver accepts. The sender keeps at most ``window`` bytes
of chunks unacknowledged; the receiver acknowledges what it has written, and takes
chunks only in order (one out of order, a duplicate or one of another size is dropped,
and the sender sends again from the last acknowledged one when acknowledgements stop).
The receiver checks the whole file against the hash in the offer before it is named.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass

import nacl.utils

from e2echat.client import fileparts as fp
from e2echat.client.events import Event, MessagesMissing, SecurityWarning
from e2echat.client.fileevents import FileOffered, TransferChanged, TransferDone, TransferProgress
from e2echat.client.filenames import safe_name, size_text
from e2echat.client.filestate import (
    NO_GAP,
    Direction,
    Discard,
    Effect,
    FileGap,
    Finish,
    Land,
    State,
    Transfer,
    Write,
)
from e2echat.client.trust import Trust
from e2echat.errors import CommandError, LocalProtocolError
from e2echat.wire.grammar import is_valid_nick, is_valid_room

#: what a receiver takes unless it says otherwise (``/set max-file``): 1 GiB
DEFAULT_MAX_FILE = 1024**3
#: unacknowledged bytes a sender keeps in flight per transfer: 8 chunks, 960 KiB. Under
#: the relay's soft mark (a quarter of its write buffer: 1 MiB by default) with each
#: chunk's frame, header, nonce and tag: past that mark the relay refuses deliveries to a
#: receiver, so a window above it (16 chunks before) had a slow receiver's chunks refused
#: and sent again after RESEND_AFTER. It costs the sender and the receiver about 15% more
#: CPU per MiB than 16 chunks did: the receiver acknowledges each batch it writes, and
#: with fewer chunks in flight its batches are smaller (benchmarks/README.md, issue 20).
WINDOW = 8 * fp.CHUNK_SIZE
#: a sender that hears no acknowledgement for this long sends again from the last one:
#: a chunk was lost (a relay that dropped it, or restarted)
RESEND_AFTER = 4.0
#: a receiver that hears nothing of an active transfer for this long says again where it
#: is (its acknowledgement, or its accept, was lost)
REMIND_AFTER = 6.0
#: offers from one peer waiting for an answer, at most: more are refused unseen, so a
#: peer cannot fill the screen (or our memory) with offers
MAX_OFFERS = 20
#: transfers received that are over, kept for /files: beyond these the oldest go, so a
#: peer's flood of offers costs bounded memory, and each new offer a bounded scan
KEEP_ENDED = 100
#: the ids of transfers received that ended (and are no longer kept), and whether they
#: ended well: the same offer again is not taken for a new one, and a sender who lost
#: our Done hears it again
REMEMBER_ENDED = 4096
#: refusals (Reject) sent to one peer per REFUSALS_EVERY seconds, at most: more offers
#: are dropped unanswered, and the user hears of the first only
MAX_REFUSALS = 5
REFUSALS_EVERY = 10.0
#: the answer to a probe, or the Cancel to an Accept for a transfer we do not have, goes
#: to one peer for one transfer at most this often: what a peer sends does not make us
#: send more than it did
ANSWER_EVERY = 5.0
#: probes a sender sends without an answer before it stops asking (about a minute, at
#: REMIND_AFTER): a receiver that says nothing (gone quiet, or too old to know a probe)
#: leaves the transfer paused, with the reason, until /cancel or the next time they come
MAX_PROBES = 10
#: progress is told at most this often (and at every tenth of the file)
PROGRESS_EVERY = 0.5
#: a gap before a chat message (or a receipt) from the receiver of a file we send, right
#: after one of its acknowledgements, is judged for this long at most: its next
#: acknowledgement says whether the messages skipped were acknowledgements (they come as
#: it writes, a batch every few milliseconds, or after RESEND_AFTER when chunks were lost)
HOLD_GAP = RESEND_AFTER + 1.0


def new_transfer_id() -> bytes:
    return nacl.utils.random(fp.ID_SIZE)


class Transfers:
    """Every transfer, both ways. ``max_size``: the largest file we take (larger offers
    are refused, and the sender told why); ``window``, ``resend_after`` and
    ``remind_after``: see WINDOW, RESEND_AFTER and REMIND_AFTER."""

    def __init__(
        self,
        *,
        max_size: int = DEFAULT_MAX_FILE,
        window: int = WINDOW,
        resend_after: float = RESEND_AFTER,
        remind_after: float = REMIND_AFTER,
        hold_gap: float = HOLD_GAP,
        resuming: bool = False,
    ) -> None:
        self.max_size = max_size
        #: the shell is still taking up the transfers an earlier run left (``kept``):
        #: until it is done, a probe or an accept for a transfer we do not know gets no
        #: answer (it may be one of those, its partial file still being hashed again), and
        #: its peer asks again; answered "no such transfer", it would end for nothing
        self.resuming = resuming
        self.window = window
        self.resend_after = resend_after
        self.remind_after = remind_after
        self.hold_gap = hold_gap
        self._by_number: dict[int, Transfer] = {}
        self._by_key: dict[tuple[Direction, str, bytes], Transfer] = {}
        self._numbers: Iterator[int] = iter(range(1, 2**62))
        #: (peer, id) of transfers received that ended and are no longer kept: ended well?
        self._ended: dict[tuple[str, bytes], bool] = {}
        #: per peer: when its period of refusals began, and how many it has had since
        self._refusals: dict[str, tuple[float, int]] = {}
        #: (peer, id) of the answers sent to probes (and stray Accepts): when
        self._answered: dict[tuple[str, bytes], float] = {}
        #: control parts to send: (peer, the part's bytes), oldest first
        self.messages: list[tuple[str, bytes]] = []
        #: what the shell is to do on the disk, oldest first
        self.effects: list[Effect] = []
        #: sender -> the transfer and end of the chunk that came last in order from them
        self._last_chunk: dict[str, tuple[bytes, int]] = {}
        #: sender -> the transfer and count of parts (``Ack.parts``) of the acknowledgement
        #: that came last in order from them
        self._last_ack: dict[str, tuple[bytes, int]] = {}
        #: sender -> a gap before a message of theirs that was not a part of a file, after
        #: an acknowledgement: held for their next (``other_message``)
        self._held: dict[str, _Held] = {}
        #: called when there is new work for the shell
        self.wake: Callable[[], None] = lambda: None

    # -- what the user does ---------------------------------------------------------------------

    def offer(
        self,
        peer: str,
        offered_name: str,
        size: int,
        digest: bytes,
        path: str,
        now: float,
        *,
        room: str = "",
    ) -> Transfer:
        """Offer the file at ``path`` (``size`` bytes, BLAKE2b-256 ``digest``) to ``peer``
        under ``offered_name``: sent as it is (up to MAX_NAME bytes; the receiver makes it
        safe, whoever sent it), shown here as it will land. ``room``: the room it is
        offered in (to each member, one transfer each), for the history."""
        sent_name = offered_name.encode("utf-8")[: fp.MAX_NAME].decode("utf-8", "ignore") or "file"
        transfer = self._add(
            Direction.OUT,
            peer,
            new_transfer_id(),
            safe_name(sent_name),
            size,
            fp.CHUNK_SIZE,
            digest,
            path=path,
            now=now,
        )
        transfer.room = room
        self._send(transfer, fp.Offer(transfer.transfer_id, sent_name, size, fp.CHUNK_SIZE, digest))
        return transfer

    def accept(self, number: int | None) -> Transfer:
        """Take an offer (``number``; None: the one still open, if there is only one).
        The shell opens its landing (``Land``), then ``landed`` answers the sender."""
        transfer = self._offer_to_answer(number, "accept")
        transfer.state = State.LANDING
        self._effect(Land(transfer))
        return transfer

    def reject(self, number: int | None, reason: str = "they declined it") -> list[TransferDone]:
        transfer = self._offer_to_answer(number, "reject")
        transfer.state, transfer.reason = State.REJECTED, reason
        self._send(transfer, fp.Reject(transfer.transfer_id, reason))
        return [self._done(transfer, "you declined it")]

    def cancel(self, number: int, reason: str = "cancelled") -> list[TransferDone]:
        """End transfer ``number`` (either way), and tell its peer ``reason``."""
        transfer = self._by_number.get(number)
        if transfer is None:
            raise CommandError(detail=f"no transfer {number} (/files lists them)")
        if transfer.final:
            raise CommandError(detail=f"transfer {number} is over already ({transfer.state})")
        if transfer.state is State.CHECKING and transfer.direction is Direction.IN:
            # The file is being named: cancelled now, it would be kept all the same.
            raise CommandError(detail=f"transfer {number} is being checked; it ends in a moment")
        self._end(transfer, State.CANCELLED, reason, tell=True)
        return [self._done(transfer)]

    def kept(
        self,
        direction: Direction,
        peer: str,
        transfer_id: bytes,
        name: str,
        size: int,
        chunk_size: int,
        digest: bytes,
        now: float,
        *,
        written: int = 0,
        path: str = "",
        room: str = "",
    ) -> Transfer | None:
        """A transfer an earlier run left unfinished, paused: one received, of which it
        wrote ``written`` bytes (it resumes from there when ``peer`` is online, if they
        still have it: if not, they say so, and it ends); or one sent (``path``), which
        goes on from where the receiver says. None if it is not one we can take: a record
        is a file on the disk, and is held to what an offer is held to (a nick, a safe name,
        our size limit)."""
        if (direction, peer, transfer_id) in self._by_key or not is_valid_nick(peer):
            return None
        if room and not is_valid_room(room):
            return None
        if direction is Direction.IN and (safe_name(name) != name or size > self.max_size):
            return None
        try:
            fp.Offer(transfer_id, name, size, chunk_size, digest)  # the checks an offer gets
        except LocalProtocolError:
            return None
        if not 0 <= written <= size:
            return None
        transfer = self._add(
            direction, peer, transfer_id, safe_name(name), size, chunk_size, digest, path=path, now=now
        )
        transfer.state = State.PAUSED
        transfer.sent = transfer.acked = transfer.started_from = written
        transfer.room = room if direction is Direction.OUT else ""
        return transfer

    def listing(self) -> list[Transfer]:
        return sorted(self._by_number.values(), key=lambda transfer: transfer.number)

    def get(self, number: int) -> Transfer | None:
        return self._by_number.get(number)

    @property
    def active(self) -> bool:
        """Some transfer is not over."""
        return any(not transfer.final for transfer in self._by_number.values())

    @property
    def moving(self) -> bool:
        """Some transfer can move on without us: not one paused (its peer gone, or after a
        restart), nor an offer waiting for our answer (ours to them may yet be taken)."""
        return any(
            t.state in (State.LANDING, State.ACTIVE, State.CHECKING)
            or (t.state is State.OFFERED and t.direction is Direction.OUT)
            for t in self._by_number.values()
        )

    # -- what the shell reports -----------------------------------------------------------------

    def landed(self, transfer: Transfer, offset: int, now: float, problem: str = "") -> list[Event]:
        """The landing of ``transfer`` is open with ``offset`` bytes written (0, or what an
        earlier run kept); or it could not be opened (``problem``)."""
        if transfer.state is not State.LANDING:
            return []  # cancelled meanwhile (the shell discards what it opened)
        if problem:
            self._end(transfer, State.FAILED, problem, tell=True)
            return [self._done(transfer)]
        transfer.sent = transfer.acked = transfer.started_from = offset
        transfer.state, transfer.heard_at, transfer.started_at = State.ACTIVE, now, now
        self._send(transfer, fp.Accept(transfer.transfer_id, offset))
        events: list[Event] = [self.changed_event(transfer, "accepted")]
        if offset >= transfer.size:
            transfer.state = State.CHECKING
            self._effect(Finish(transfer))
        return events

    def written(self, transfer: Transfer, end: int, now: float) -> list[Event]:
        """Every byte of ``transfer`` before ``end`` is written."""
        if transfer.final or end <= transfer.acked:
            return []
        transfer.acked = end
        if transfer.state is State.ACTIVE:
            self._ack(transfer, end)
        events = self._progress(transfer, now)
        if end >= transfer.size and transfer.state in (State.ACTIVE, State.PAUSED):
            transfer.state = State.CHECKING
            self._effect(Finish(transfer))
        return events

    def finished(self, transfer: Transfer, ok: bool, path: str = "", detail: str = "") -> list[Event]:
        """The file was checked against its hash: kept at ``path``, or deleted (``detail``)."""
        if transfer.state is not State.CHECKING:
            return []
        transfer.path = path
        if ok:
            transfer.state = State.DONE
            self._send(transfer, fp.Done(transfer.transfer_id, True))
        else:
            self._end(transfer, State.FAILED, detail, tell=False)
            self._send(transfer, fp.Done(transfer.transfer_id, False, detail))
        return [self._done(transfer)]

    def chunks_due(self, budget: int) -> list[tuple[Transfer, int, int]]:
        """The chunks to send now, within ``budget`` bytes: (transfer, offset, length),
        each counted as sent. Transfers take turns, a chunk at a time."""
        due: list[tuple[Transfer, int, int]] = []
        sending = [
            t for t in self._by_number.values() if t.direction is Direction.OUT and t.state is State.ACTIVE
        ]
        while sending and budget > 0:
            for transfer in list(sending):
                length = min(transfer.chunk_size, transfer.size - transfer.sent)
                if length <= 0 or transfer.sent - transfer.acked + length > self.window or length > budget:
                    sending.remove(transfer)
                    continue
                due.append((transfer, transfer.sent, length))
                transfer.sent += length
                transfer.furthest = max(transfer.furthest, transfer.sent)
                budget -= length
        return due

    def tick(self, now: float, online: Collection[str]) -> list[Event]:
        """Call now and then with who is online (nobody while we are not connected):
        transfers pause and resume with their peers, and lost parts are sent again."""
        events: list[Event] = []
        for sender, held in list(self._held.items()):
            if now - held.since >= self.hold_gap:  # no acknowledgement came to explain it
                del self._held[sender]
                events.append(MessagesMissing(sender, held.skipped))
        for transfer in list(self._by_number.values()):
            if transfer.final or transfer.state in (State.OFFERED, State.LANDING):
                continue
            here = transfer.peer in online
            if transfer.state is State.PAUSED:
                if transfer.direction is Direction.IN and transfer.acked >= transfer.size:
                    # Every byte was written before a restart, and the file not yet
                    # named: it is checked now (asking for more would ask for ever).
                    transfer.state = State.CHECKING
                    self._effect(Finish(transfer))
                elif here and transfer.direction is Direction.IN:
                    # The receiver resumes: from the next byte it expects (every one before
                    # it is written, or on its way to the disk).
                    self._resume(transfer, now)
                    self._send(transfer, fp.Accept(transfer.transfer_id, transfer.sent))
                    events.append(self.changed_event(transfer, "resumed"))
                elif here and now - transfer.heard_at >= self.remind_after:
                    # A sender (after a restart, say) asks where it is: the receiver
                    # resumes it, or says it is done, or that it has no such transfer.
                    # (First it goes back: chunks sent before the pause may be lost.)
                    transfer.heard_at = now
                    self._rewind(transfer, transfer.acked)
                    transfer.sent = transfer.acked
                    self._probe(transfer)
                elif not here:
                    transfer.probes = 0  # asked again when they are back
                continue
            if not here:
                if transfer.state is State.ACTIVE:
                    transfer.state = State.PAUSED
                    events.append(self.changed_event(transfer, "paused"))
                continue
            quiet = now - transfer.heard_at
            if transfer.state is State.ACTIVE and transfer.direction is Direction.OUT:
                if transfer.sent > transfer.acked and quiet >= self.resend_after:
                    self._rewind(transfer, transfer.acked)
                    transfer.sent, transfer.heard_at = transfer.acked, now
                    # (and asks: the receiver may have every byte, and its Done be lost)
                    self._probe(transfer)
            elif transfer.state is State.CHECKING and transfer.direction is Direction.OUT:
                if quiet >= self.remind_after:  # its Done may be lost: ask for it again
                    transfer.heard_at = now
                    if not self._probe(transfer):
                        transfer.state = State.PAUSED
                        detail = (
                            f"no word from {transfer.peer} on their check; /cancel {transfer.number} ends it"
                        )
                        events.append(self.changed_event(transfer, "paused", detail))
            elif transfer.state is State.ACTIVE and quiet >= self.remind_after:
                transfer.heard_at = now
                self._send(transfer, fp.Accept(transfer.transfer_id, transfer.sent))
        if self.messages or self.effects:
            self.wake()
        return events

    # -- what peers send ------------------------------------------------------------------------

    def receive(
        self, sender: str, data: bytes, trust: Trust, now: float, gap: FileGap = NO_GAP
    ) -> list[Event]:
        """A part from ``sender`` (it opened in our session with them), come where ``gap``
        says: the messages it skipped are "missing", unless each was a chunk of the file
        this one is a chunk of (``_lost_chunks``)."""
        part = fp.decode(data)
        last = self._last_chunk.pop(sender, None) if not gap.late else None
        last_ack = self._last_ack.pop(sender, None) if not gap.late else None
        held = self._held.pop(sender, None) if not gap.late else None
        if isinstance(part, fp.Probe) and not gap.late:
            # After its probe a sender sends the transfer's chunks from no further than the
            # next byte we expect (from its last acknowledgement, or from our answer): so
            # chunks lost right after it are counted from there (``_lost_chunks``).
            probed = self._by_key.get((Direction.IN, sender, part.transfer))
            if probed is not None and probed.state is State.ACTIVE:
                self._last_chunk[sender] = (part.transfer, probed.sent)
        if isinstance(part, fp.Chunk) and not gap.late:
            self._last_chunk[sender] = (part.transfer, part.offset + len(part.data))
        if isinstance(part, fp.Ack) and not gap.late:
            self._last_ack[sender] = (part.transfer, part.parts)
        missing: list[Event] = [MessagesMissing(sender, gap.skipped)] if gap.skipped else []
        earlier: list[Event] = []  # a gap held, not explained
        if held is not None or (missing and isinstance(part, fp.Ack)):
            # acknowledgements lost (a relay restarted, or dropped them), before this one
            # or before a message held: this one's count of parts tells (``_explained``)
            if self._explained(part, gap, held or _Held(last_ack, 0, 0.0)):
                missing = []
            elif held is not None:
                earlier = [MessagesMissing(sender, held.skipped)]
        return earlier + self._received(sender, part, trust, now, gap, missing, last)

    def _received(
        self,
        sender: str,
        part: fp.Part | None,
        trust: Trust,
        now: float,
        gap: FileGap,
        missing: list[Event],
        last: tuple[bytes, int] | None,
    ) -> list[Event]:
        if part is None:
            return [
                *missing,
                SecurityWarning(f"{sender} sent a malformed part of a file transfer; it was dropped"),
            ]
        if isinstance(part, fp.Chunk):
            if missing and gap.after_file and self._lost_chunks(sender, part, last) == gap.skipped:
                missing = []  # chunks lost (a relay restarted, say): the transfer sends them again
            return missing + self._chunk(sender, part, now)
        if isinstance(part, fp.Rewind):
            if missing and gap.after_file and self._lost_at_end(sender, part, last) == gap.skipped:
                missing = []  # the last chunks sent were lost, and are sent again
            if not gap.late:  # (what comes next is counted from the next byte we expect)
                self._last_chunk[sender] = (part.transfer, 0)
            return missing
        return missing + self._part(sender, part, trust, now)

    def other_message(self, sender: str, gap: FileGap, now: float) -> tuple[list[Event], bool]:
        """A message from ``sender`` that is not a part of a file (a chat message, a
        receipt) came in order, where ``gap`` says: the messages missing before it, and
        whether its gap is held. It is held when it comes right after an acknowledgement
        of a file we are sending them (the part before it was that one, and it was the
        last of theirs that came in order): the messages skipped may be the transfer's
        acknowledgements, lost, and its next acknowledgement (or HOLD_GAP) tells."""
        held = self._held.pop(sender, None)
        last_ack = self._last_ack.pop(sender, None)  # (None after a message held)
        self._last_chunk.pop(sender, None)
        missing: list[Event] = [MessagesMissing(sender, held.skipped)] if held is not None else []
        if (
            gap.skipped
            and gap.after_file
            and last_ack is not None
            and (sending := self._by_key.get((Direction.OUT, sender, last_ack[0]))) is not None
            and sending.state is State.ACTIVE
        ):
            self._held[sender] = _Held(last_ack, gap.skipped, now)
            return [], True
        return missing + ([MessagesMissing(sender, gap.skipped)] if gap.skipped else []), False

    @staticmethod
    def _explained(part: fp.Part | None, gap: FileGap, held: _Held) -> bool:
        """Every message skipped before ``part`` (and before the message held with
        ``held.skipped`` skipped, if one was: else 0) was an acknowledgement or another part
        of a transfer, lost, since the acknowledgement ``held.after`` (its transfer and count
        of parts), the last part that came in order. So if ``part`` is an acknowledgement of
        the same transfer, in the same session: the receiver counts the parts of each transfer
        it sends (``Ack.parts``), so it sent as many parts of it between the two as the counts
        differ by, less one, and if that is every message skipped, nothing else was lost. A
        chat message lost makes one more (the message held is not one of the parts: it came)."""
        return (
            isinstance(part, fp.Ack)
            and gap.after_file
            and held.after is not None
            and part.transfer == held.after[0]
            and part.parts - held.after[1] - 1 == held.skipped + gap.skipped
        )

    def _lost_at_end(self, sender: str, rewind: fp.Rewind, last: tuple[bytes, int] | None) -> int:
        """How many chunks of ``rewind``'s transfer the sender sent after the last one we
        had in order, if the message before the gap was that one (``last``): from there,
        or from the next byte we expect if further, to where the sender says it got since
        it last went back (never past the next byte we expected then): each was sent once
        after that last one. More messages skipped than these: one was something else."""
        transfer = self._by_key.get((Direction.IN, sender, rewind.transfer))
        if (
            transfer is None
            or transfer.state not in (State.ACTIVE, State.PAUSED)  # (paused: before our Accept)
            or last is None
            or last[0] != rewind.transfer
            or rewind.offset > transfer.size
        ):
            return 0
        start = max(transfer.sent, last[1])
        return -(-(rewind.offset - start) // transfer.chunk_size) if rewind.offset > start else 0

    def _lost_chunks(self, sender: str, chunk: fp.Chunk, last: tuple[bytes, int] | None) -> int:
        """How many chunks of ``chunk``'s transfer before it we never had, if the message
        before the gap was a chunk of it too (``last``: its id, and where it ended): from
        there, or from the next byte we expect if further, to ``chunk``. The sender sends
        a transfer's chunks in order, going back only to where we said (an accept, an
        acknowledgement: never past the next byte we expect), so each of those chunks was
        sent once in the gap; the messages skipped were all chunks only if they are as
        many. A chat message lost among them makes one more, and is missing."""
        transfer = self._by_key.get((Direction.IN, sender, chunk.transfer))
        if (
            transfer is None
            or transfer.state is not State.ACTIVE
            or last is None
            or last[0] != chunk.transfer
        ):
            return 0
        start = max(transfer.sent, last[1])
        before, cut = divmod(chunk.offset - start, transfer.chunk_size)
        return before if chunk.offset > start and not cut else 0

    def _part(self, sender: str, part: _Answer, trust: Trust, now: float) -> list[Event]:
        if isinstance(part, fp.Offer):
            return self._offered(sender, part, trust, now)
        if isinstance(part, fp.Probe):
            self._probed(sender, part.transfer, now)
            return []
        if isinstance(part, fp.Accept | fp.Ack | fp.Reject | fp.Done):
            transfer = self._by_key.get((Direction.OUT, sender, part.transfer))
        else:  # a cancel: either side's
            transfer = self._by_key.get((Direction.OUT, sender, part.transfer)) or self._by_key.get(
                (Direction.IN, sender, part.transfer)
            )
        if transfer is None and isinstance(part, fp.Accept):
            # A receiver resuming a transfer we no longer have (we restarted): it ends.
            if not self.resuming:
                self._answer(sender, fp.Cancel(part.transfer, "the sender no longer has it"), now)
            return []
        if transfer is None or transfer.final:
            return []  # over, or never ours: late parts of a transfer that ended
        transfer.probes = 0  # a word from them
        if isinstance(part, fp.Ack):
            if transfer.acked < part.offset <= transfer.furthest:
                transfer.acked = part.offset
                transfer.sent = max(transfer.sent, part.offset)
                transfer.heard_at = now
                self.wake()  # the window has room again
                events = self._progress(transfer, now)
                if transfer.acked >= transfer.size:
                    transfer.state = State.CHECKING
                    events.append(
                        self.changed_event(transfer, "checking", "every byte is there; they check it")
                    )
                return events
            return []
        if isinstance(part, fp.Accept):
            if part.offset > transfer.size or transfer.state not in (
                State.OFFERED,
                State.ACTIVE,
                State.PAUSED,
            ):
                return []
            answered = transfer.state is State.OFFERED
            self._rewind(transfer, part.offset)
            transfer.sent = transfer.acked = part.offset
            transfer.furthest = max(transfer.furthest, part.offset)
            was = transfer.state
            self._resume(transfer, now)
            self.wake()
            if transfer.acked >= transfer.size:
                transfer.state = State.CHECKING
            if answered:
                return [self.changed_event(transfer, "accepted", f"{sender} accepted it")]
            return [self.changed_event(transfer, "resumed")] if was is State.PAUSED else []
        if isinstance(part, fp.Reject):
            # (paused with nothing acknowledged: an offer we made before a restart)
            if transfer.state is not State.OFFERED and not (
                transfer.state is State.PAUSED and transfer.acked == 0
            ):
                return []
            transfer.state, transfer.reason = State.REJECTED, part.reason
            return [self._done(transfer)]
        if isinstance(part, fp.Done):
            if transfer.state not in (State.ACTIVE, State.CHECKING, State.PAUSED):
                return []
            if part.ok and transfer.furthest < transfer.size and transfer.state is not State.PAUSED:
                # Done before every byte was sent: not believed. (After a restart, what
                # was sent is not known: their word is taken, as their Acks are.)
                return []
            transfer.state = State.DONE if part.ok else State.FAILED
            transfer.reason = part.reason
            return [self._done(transfer)]
        if transfer.state is State.CHECKING and transfer.direction is Direction.IN:
            return []  # too late: every byte is here, and the file is being named (Done says how it went)
        self._end(transfer, State.CANCELLED, f"{sender} cancelled it" + _why(part.reason), tell=False)
        return [self._done(transfer)]

    def _offered(self, sender: str, offer: fp.Offer, trust: Trust, now: float) -> list[Event]:
        key = (Direction.IN, sender, offer.transfer)
        if key in self._by_key or (sender, offer.transfer) in self._ended:
            return []  # the same offer again
        if trust is Trust.CHANGED:
            if not self._refuse(sender, offer.transfer, "their key changed and was not accepted", now):
                return []
            return [
                SecurityWarning(
                    f"{sender} (whose key changed and was not accepted) offered a file; it was refused "
                    f"(see /verify {sender}, /trust {sender})"
                )
            ]
        if self._open_offers(sender) >= MAX_OFFERS:
            self._refuse(sender, offer.transfer, "too many offers unanswered", now)
            return []
        if offer.size > self.max_size:
            reason = f"it is over their limit of {size_text(self.max_size)}"
            if not self._refuse(sender, offer.transfer, reason, now):
                self._forget(sender, offer.transfer, False)
                return []
        transfer = self._add(
            Direction.IN,
            sender,
            offer.transfer,
            safe_name(offer.name),
            offer.size,
            offer.chunk_size,
            offer.digest,
            now=now,
        )
        transfer.trust = trust
        if offer.size > self.max_size:
            transfer.state, transfer.reason = State.REJECTED, reason
            detail = f"refused: {size_text(offer.size)} is over your limit (/set max-file)"
            return [
                self._done(
                    transfer,
                    f"{detail}; more refused offers from {sender} in {REFUSALS_EVERY:.0f} s are not shown",
                )
            ]
        return [FileOffered(transfer.number, sender, transfer.name, offer.size, trust)]

    def _probed(self, sender: str, transfer_id: bytes, now: float) -> None:
        """The sender of ``transfer_id`` asks where it is: we say."""
        transfer = self._by_key.get((Direction.IN, sender, transfer_id))
        answer: fp.Part
        if transfer is None:
            ended = self._ended.get((sender, transfer_id))
            if ended is None and self.resuming:
                return  # (it may be one we are taking up: asked again, it is answered)
            if ended is None:
                answer = fp.Cancel(transfer_id, "the receiver has no such transfer")
            else:
                answer = fp.Done(transfer_id, True) if ended else fp.Cancel(transfer_id, "it ended")
        elif transfer.state is State.DONE:
            answer = fp.Done(transfer_id, True)
        elif transfer.state is State.FAILED:
            answer = fp.Done(transfer_id, False, transfer.reason[: fp.MAX_REASON // 4])
        elif transfer.state is State.REJECTED:
            answer = fp.Reject(transfer_id, transfer.reason[: fp.MAX_REASON // 4])
        elif transfer.final:
            answer = fp.Cancel(transfer_id, transfer.reason[: fp.MAX_REASON // 4])
        elif transfer.state is State.ACTIVE:
            answer = fp.Accept(transfer_id, transfer.sent)
        else:
            return  # not answered yet, or paused (it resumes), or being checked (Done comes)
        self._answer(sender, answer, now, transfer)

    def _rewind(self, transfer: Transfer, offset: int) -> None:
        """Going back to ``offset``: say how far we got since we last went back (not the
        furthest ever: chunks sent twice would count once), so that the receiver can
        tell whether the messages it never had since were those chunks."""
        if transfer.sent > offset:
            self._send(transfer, fp.Rewind(transfer.transfer_id, transfer.sent))

    def _probe(self, transfer: Transfer) -> bool:
        """Ask the receiver where ``transfer`` is, unless MAX_PROBES went unanswered."""
        if transfer.probes >= MAX_PROBES:
            return False
        transfer.probes += 1
        self._send(transfer, fp.Probe(transfer.transfer_id))
        return True

    def _answer(self, peer: str, part: fp.Part, now: float, transfer: Transfer | None = None) -> None:
        """Send ``part`` (an answer about a transfer: ``transfer``, if we have it), unless
        one went to ``peer`` for it less than ANSWER_EVERY ago."""
        key = (peer, part.transfer)
        if now - self._answered.get(key, -math.inf) < ANSWER_EVERY:
            return
        self._answered.pop(key, None)
        self._answered[key] = now  # (at the end: the oldest are let go first)
        while len(self._answered) > REMEMBER_ENDED:
            del self._answered[next(iter(self._answered))]
        if transfer is not None:
            self._send(transfer, part)
            return
        self.messages.append((peer, fp.encode(part)))
        self.wake()

    def _chunk(self, sender: str, chunk: fp.Chunk, now: float) -> list[Event]:
        transfer = self._by_key.get((Direction.IN, sender, chunk.transfer))
        if transfer is None or transfer.state is not State.ACTIVE:
            return []  # late, or before we accepted: nothing is taken unasked
        expected = min(transfer.chunk_size, transfer.size - transfer.sent)
        if chunk.offset != transfer.sent or len(chunk.data) != expected:
            # Out of order, again, or cut: dropped. Where we are is said again, so a
            # sender whose acknowledgement was lost goes on.
            if chunk.offset < transfer.sent and now - transfer.heard_at >= PROGRESS_EVERY:
                transfer.heard_at = now
                self._ack(transfer, transfer.acked)
            return []
        if chunk.offset + expected > transfer.acked + self.window:
            return []  # beyond what a sender may have unacknowledged: not queued for the disk
        transfer.sent += expected
        transfer.heard_at = now
        self._effect(Write(transfer, chunk.offset, chunk.data))
        return []

    # -- the rest -------------------------------------------------------------------------------

    def _add(
        self,
        direction: Direction,
        peer: str,
        transfer_id: bytes,
        name: str,
        size: int,
        chunk_size: int,
        digest: bytes,
        *,
        path: str = "",
        now: float,
    ) -> Transfer:
        transfer = Transfer(
            next(self._numbers), direction, peer, transfer_id, name, size, chunk_size, digest, path=path
        )
        transfer.heard_at = transfer.started_at = now
        if direction is Direction.IN:
            self._prune()
        self._by_number[transfer.number] = transfer
        self._by_key[transfer.key] = transfer
        return transfer

    def _refuse(self, sender: str, transfer_id: bytes, reason: str, now: float) -> bool:
        """Refuse an offer from ``sender``, if they have not had MAX_REFUSALS already in
        this period; True if it is the period's first (the one the user is told of)."""
        began, count = self._refusals.get(sender, (-math.inf, 0))
        if now - began >= REFUSALS_EVERY:
            began, count = now, 0
        self._refusals[sender] = (began, count + 1)
        if count < MAX_REFUSALS:
            self.messages.append((sender, fp.encode(fp.Reject(transfer_id, reason))))
            self.wake()
        return count == 0

    def _forget(self, peer: str, transfer_id: bytes, ok: bool) -> None:
        """Remember only that transfer ``transfer_id`` from ``peer`` ended (well: ``ok``)."""
        self._ended[(peer, transfer_id)] = ok
        while len(self._ended) > REMEMBER_ENDED:
            del self._ended[next(iter(self._ended))]

    def _prune(self) -> None:
        """Let go of the oldest transfers received that are over, beyond KEEP_ENDED (once
        there are twice as many: each call is a scan)."""
        ended = [t for t in self._by_number.values() if t.direction is Direction.IN and t.final]
        if len(ended) < 2 * KEEP_ENDED:
            return
        for transfer in ended[:-KEEP_ENDED]:
            del self._by_number[transfer.number]
            del self._by_key[transfer.key]
            self._forget(transfer.peer, transfer.transfer_id, transfer.state is State.DONE)

    def _open_offers(self, sender: str) -> int:
        """Offers from ``sender`` we have not answered."""
        return sum(
            1
            for t in self._by_number.values()
            if t.peer == sender and t.direction is Direction.IN and t.state is State.OFFERED
        )

    def _offer_to_answer(self, number: int | None, verb: str) -> Transfer:
        if number is None:
            offers = [
                t
                for t in self._by_number.values()
                if t.direction is Direction.IN and t.state is State.OFFERED
            ]
            if not offers:
                raise CommandError(detail=f"no offer to {verb}")
            if len(offers) > 1:
                # Not the newest: the newest may be someone else's, sent just before.
                numbers = ", ".join(str(t.number) for t in offers[:10])
                more = ", ..." if len(offers) > 10 else ""
                raise CommandError(
                    detail=f"{len(offers)} offers are open ({numbers}{more}): /{verb} NUMBER says which"
                )
            return offers[0]
        transfer = self._by_number.get(number)
        if transfer is None or transfer.direction is not Direction.IN:
            raise CommandError(detail=f"no offer {number} (/files lists them)")
        if transfer.state is not State.OFFERED:
            raise CommandError(detail=f"offer {number} was answered already ({transfer.state})")
        return transfer

    def _resume(self, transfer: Transfer, now: float) -> None:
        transfer.state = State.ACTIVE
        transfer.heard_at = transfer.started_at = now
        transfer.started_from = transfer.acked
        transfer.told_at = -math.inf

    def _end(self, transfer: Transfer, state: State, reason: str, *, tell: bool) -> None:
        landing = transfer.direction is Direction.IN and transfer.state in (
            State.LANDING,
            State.ACTIVE,
            State.PAUSED,
            State.CHECKING,
        )
        transfer.state, transfer.reason = state, reason
        if tell:
            self._send(transfer, fp.Cancel(transfer.transfer_id, reason))
        if landing:
            self._effect(Discard(transfer))

    def _send(self, transfer: Transfer, part: fp.Part) -> None:
        if transfer.direction is Direction.IN:
            transfer.parts_sent += 1
        self.messages.append((transfer.peer, fp.encode(part)))
        self.wake()

    def _ack(self, transfer: Transfer, offset: int) -> None:
        """Acknowledge every byte of ``transfer`` before ``offset``, saying how many of its
        parts we have sent, this one included (see ``_explained``)."""
        self._send(transfer, fp.Ack(transfer.transfer_id, offset, transfer.parts_sent + 1))

    def _effect(self, effect: Effect) -> None:
        self.effects.append(effect)
        self.wake()

    def _progress(self, transfer: Transfer, now: float) -> list[Event]:
        tenth = transfer.acked * 10 // transfer.size if transfer.size else 10
        if tenth == transfer.told_tenth and now - transfer.told_at < PROGRESS_EVERY:
            return []
        transfer.told_tenth, transfer.told_at = tenth, now
        return [
            TransferProgress(
                transfer.number,
                transfer.direction.value,
                transfer.peer,
                transfer.name,
                transfer.acked,
                transfer.size,
                transfer.rate(now),
            )
        ]

    def changed_event(self, transfer: Transfer, state: str, detail: str = "") -> TransferChanged:
        """The event that says ``transfer`` went on to ``state``."""
        return TransferChanged(
            transfer.number, transfer.direction.value, transfer.peer, transfer.name, state, detail
        )

    def _done(self, transfer: Transfer, detail: str = "") -> TransferDone:
        return TransferDone(
            transfer.number,
            transfer.direction.value,
            transfer.peer,
            transfer.name,
            transfer.size,
            transfer.state is State.DONE,
            transfer.state.value,
            detail or transfer.reason,
            transfer.path if transfer.state is State.DONE and transfer.direction is Direction.IN else "",
            transfer.room,
        )


#: every part but a chunk
_Answer = fp.Offer | fp.Accept | fp.Reject | fp.Cancel | fp.Ack | fp.Done | fp.Probe


@dataclass(frozen=True)
class _Held:
    """A gap held (``Transfers.other_message``): ``after``, the acknowledgement before it
    (its transfer and count of parts); ``skipped``, the messages skipped; ``since``, when."""

    after: tuple[bytes, int] | None
    skipped: int
    since: float


def _why(reason: str) -> str:
    return f": {reason}" if reason else ""
