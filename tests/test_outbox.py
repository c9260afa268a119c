"""The outbox puts envelopes into ``send`` frames by one size rule: a frame holds what the
rule says fits, whether the envelopes go in one frame or are split across several."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from e2echat.client import outbox
from e2echat.client.outbox import envelope_size, send_frames
from e2echat.wire import messages as m
from e2echat.wire.binary import SEND_HEAD
from e2echat.wire.codec import decode_message
from e2echat.wire.fastpath import encode_send
from e2echat.wire.framing import FrameDecoder

BUDGET = 2_000  # small, so that a few envelopes fill a frame

nicks = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_.-", min_size=1, max_size=32)
envelopes = st.lists(st.tuples(nicks, st.binary(min_size=1, max_size=900)), min_size=1, max_size=12)


def _sends(data: bytes) -> list[m.Send]:
    sends = [decode_message(payload) for payload in FrameDecoder().receive_data(data)]
    assert all(isinstance(send, m.Send) for send in sends)
    return [send for send in sends if isinstance(send, m.Send)]


def test_the_rule_covers_an_envelope_as_encoded() -> None:
    for nick in ("b", "x" * 32):
        for size in (1, 2, 3, 100, 4096):
            body = b"\x01" * size
            encoded = encode_send(1, [(nick, body)])[SEND_HEAD.size :]
            assert len(encoded) == envelope_size(nick, body)


@settings(max_examples=200, deadline=None)
@given(envelopes)
def test_frames_hold_what_the_rule_allows_and_no_more(items: list[tuple[str, bytes]]) -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(outbox, "FRAME_BUDGET", BUDGET)
        sends = _sends(send_frames(7, items))
    assert [(e.to, e.body) for send in sends for e in send.items] == items  # all, in order
    sizes = [sum(envelope_size(e.to, e.body) for e in send.items) for send in sends]
    for send, size in zip(sends, sizes, strict=True):
        assert send.id == 7
        assert size <= BUDGET or len(send.items) == 1  # one envelope too big goes alone
        assert len({e.to for e in send.items}) == len(send.items)  # the relay refuses repeats
    # A frame ends early only when the next envelope would not fit or repeats a name: one
    # frame exactly when everything fits by the same rule.
    for send, following in itertools.pairwise(sends):
        first = following.items[0]
        size = sum(envelope_size(e.to, e.body) for e in send.items)
        assert size + envelope_size(first.to, first.body) > BUDGET or first.to in {e.to for e in send.items}
    fits = sum(envelope_size(to, body) for to, body in items) <= BUDGET
    assert (len(sends) == 1) is (fits and len({to for to, _ in items}) == len(items))


def test_the_item_limit_splits_frames_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(outbox, "MAX_ITEMS", 2)  # the item limit, made small
    sends = _sends(send_frames(1, [(f"n{i}", b"\x01") for i in range(5)]))
    assert [len(send.items) for send in sends] == [2, 2, 1]
