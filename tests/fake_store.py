"""A hand-written RelayStore for tests: keeps a Snapshot in memory, applying each Op as a
real store would, and can be told to be slow or to fail. Durable as far as the relay can
tell, so the shell goes through its journal (relay/journal.py) as with SQLite."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import replace

from e2echat.relay.store import (
    Dequeue,
    Enqueue,
    ForgetIdentity,
    ForgetMember,
    Op,
    SaveBundle,
    SaveIdentity,
    SaveMember,
    Snapshot,
)


class FakeStore:
    durable = True

    def __init__(self, snapshot: Snapshot | None = None) -> None:
        self.kept = snapshot or Snapshot()
        #: each batch applied, as given
        self.batches: list[list[Op]] = []
        #: cleared: apply waits until it is set again
        self.gate = threading.Event()
        self.gate.set()
        #: set: the next apply raises it
        self.fail: Exception | None = None
        self.closed = False
        self.applying = threading.Event()

    def load(self) -> Snapshot:
        return replace(
            self.kept,
            identities=list(self.kept.identities),
            bundles=list(self.kept.bundles),
            members=list(self.kept.members),
            mail=sorted(self.kept.mail, key=lambda item: (item.to, item.seq)),
        )

    def apply(self, ops: Sequence[Op]) -> None:
        self.applying.set()
        assert self.gate.wait(10), "the test never opened the gate"
        if self.fail is not None:
            raise self.fail
        for op in ops:
            self._apply(op)
        self.batches.append(list(ops))

    def close(self) -> None:
        self.closed = True

    def _apply(self, op: Op) -> None:
        kept = self.kept
        if isinstance(op, SaveIdentity):
            kept.identities = [i for i in kept.identities if i.nick != op.identity.nick] + [op.identity]
        elif isinstance(op, ForgetIdentity):
            kept.identities = [i for i in kept.identities if i.nick != op.nick]
            kept.bundles = [b for b in kept.bundles if b.nick != op.nick]
            kept.members = [m for m in kept.members if m.nick != op.nick]
            kept.mail = [item for item in kept.mail if item.to != op.nick]
        elif isinstance(op, SaveBundle):
            kept.bundles = [b for b in kept.bundles if b.nick != op.bundle.nick] + [op.bundle]
        elif isinstance(op, SaveMember):
            member = op.member
            kept.members = [m for m in kept.members if (m.room, m.nick) != (member.room, member.nick)]
            kept.members.append(member)
        elif isinstance(op, ForgetMember):
            kept.members = [m for m in kept.members if (m.room, m.nick) != (op.room, op.nick)]
        elif isinstance(op, Enqueue):
            kept.mail.append(op.item)
            kept.next_seq = max(kept.next_seq, op.item.seq + 1)
        else:
            assert isinstance(op, Dequeue)
            kept.mail = [
                item
                for item in kept.mail
                if item.to != op.to or not (item.seq <= op.upto or item.seq in op.seqs)
            ]
