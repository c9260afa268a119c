"""Every benchmark message says who sent it and its sequence number, so each recipient
can tell lost, duplicated and corrupted deliveries apart.

Text: ``SENDER|SEQ|STAMP|`` then filler derived from sender and sequence number, up to a
fixed size. STAMP is a time.monotonic_ns() value (0 if unused): CLOCK_MONOTONIC is one
clock for every process on the machine, so the latency of a message is "now" at the
recipient minus the stamp.
"""

from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass

TEXT_SIZE = 100  # bytes: a typical chat line


def message_text(sender: str, seq: int, stamp: int = 0, size: int = TEXT_SIZE) -> str:
    head = f"{sender}|{seq}|{stamp}|"
    seed = f"{zlib.crc32(head.encode()):08x}"
    filler = (seed * (size // len(seed) + 1))[: max(0, size - len(head))]
    return head + filler


def parse_text(text: str) -> tuple[str, int, int] | None:
    """(sender, seq, stamp) if ``text`` is exactly what ``message_text`` makes, else None."""
    parts = text.split("|", 3)
    if len(parts) != 4 or not parts[1].isdigit() or not parts[2].isdigit():
        return None
    sender, seq, stamp = parts[0], int(parts[1]), int(parts[2])
    if message_text(sender, seq, stamp, len(text.encode())) != text:
        return None
    return sender, seq, stamp


class Inbox:
    """What one recipient got."""

    def __init__(self) -> None:
        self.seen: dict[str, set[int]] = {}
        self.duplicated = 0
        self.corrupted = 0

    def record(self, sender: str, text: str) -> int | None:
        """Count one delivery from ``sender``; return its stamp, or None if it is bad."""
        parsed = parse_text(text)
        if parsed is None or parsed[0] != sender:
            self.corrupted += 1
            return None
        seqs = self.seen.setdefault(sender, set())
        if parsed[1] in seqs:
            self.duplicated += 1
            return None
        seqs.add(parsed[1])
        return parsed[2]

    def summary(self) -> InboxSummary:
        counts = {sender: (len(seqs), max(seqs)) for sender, seqs in self.seen.items()}
        return InboxSummary(counts, self.duplicated, self.corrupted)


@dataclass
class InboxSummary:
    """What a worker process sends back about one recipient (small and picklable)."""

    counts: dict[str, tuple[int, int]]  # sender -> (distinct sequence numbers, highest)
    duplicated: int
    corrupted: int


@dataclass
class Integrity:
    expected: int = 0
    delivered: int = 0
    lost: int = 0
    duplicated: int = 0
    corrupted: int = 0

    def add(self, other: Integrity) -> Integrity:
        return Integrity(*(a + b for a, b in zip(asdict(self).values(), asdict(other).values(), strict=True)))

    @property
    def clean(self) -> bool:
        return self.lost == self.duplicated == self.corrupted == 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def reconcile(sent: dict[str, int], inboxes: dict[str, InboxSummary]) -> Integrity:
    """Everyone in ``inboxes`` should have got sequence numbers 0..sent-1 from every other
    sender, exactly once, intact."""
    total = Integrity()
    for recipient, inbox in inboxes.items():
        total.duplicated += inbox.duplicated
        total.corrupted += inbox.corrupted
        for sender, count in sent.items():
            if sender == recipient:
                continue
            distinct, highest = inbox.counts.get(sender, (0, -1))
            total.expected += count
            total.delivered += distinct
            total.lost += max(0, count - distinct)
            # A sequence number beyond what was sent was never sent: it was made up.
            total.corrupted += 1 if highest >= count else 0
        total.corrupted += sum(1 for sender in inbox.counts if sender not in sent)
    return total
