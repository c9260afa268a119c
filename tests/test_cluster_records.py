"""What a cluster keeps in JetStream (relay/cluster/records.py): values read back as
written, values that are not one refused, and the compare-and-set merges and hand-outs."""

from __future__ import annotations

import struct

import pytest
from nacl.public import PrivateKey

from e2echat.errors import RemoteProtocolError
from e2echat.relay.cluster.records import (
    Record,
    decode_item,
    decode_record,
    encode_item,
    encode_record,
    mail_key,
    merged,
    nick_of_key,
    node_of_key,
    popped,
)
from e2echat.relay.cluster.wire import new_node_id
from e2echat.relay.store import EXPIRED, MAIL, Identity, MailItem

KEY = bytes(PrivateKey.generate().public_key)
SIGNED = struct.pack(">I32s64s", 7, bytes(PrivateKey.generate().public_key), bytes(64))
NODE = new_node_id()


def one_time(*ids: int) -> bytes:
    return b"".join(struct.pack(">I32s", ident, bytes(PrivateKey.generate().public_key)) for ident in ids)


def ids_of(packed: bytes) -> list[int]:
    return [struct.unpack_from(">I", packed, start)[0] for start in range(0, len(packed), 36)]


def record(*ids: int, owner: str = "") -> Record:
    return Record(Identity("dave", KEY, 1234.5, 3), SIGNED, one_time(*ids), owner)


@pytest.mark.parametrize(
    "kept",
    [record(1, 2, 3), record(owner=NODE), Record(Identity("dave", KEY, 0.0)), record(9, owner=NODE)],
)
def test_a_record_reads_back_as_written(kept: Record) -> None:
    assert decode_record("dave", encode_record(kept)) == kept


@pytest.mark.parametrize(
    "value",
    [
        b"",
        encode_record(record(1))[:-1],  # a one-time prekey cut short
        b"\x02" + encode_record(record(1))[1:],  # another format
        encode_record(Record(Identity("dave", KEY, 0.0))) + one_time(1),  # one-time but no signed prekey
        encode_record(record(owner=NODE)).replace(NODE.encode(), b"x" * 16),  # not a node id
    ],
    ids=["empty", "cut", "format", "no-signed", "owner"],
)
def test_a_value_that_is_not_a_record_is_refused(value: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        decode_record("dave", value)


def test_a_merge_drops_what_the_other_relay_handed_out_and_keeps_what_we_added() -> None:
    base = one_time(1, 2, 3)
    theirs = base[36:]  # they handed out 1
    ours = base[:72] + one_time(4)  # we handed out 3, and dave published 4
    assert ids_of(merged(ours, base, theirs)) == [2, 4]


def test_a_merge_with_nothing_changed_elsewhere_is_ours() -> None:
    base = one_time(1, 2)
    ours = base + one_time(3)
    assert merged(ours, base, base) == ours


def test_a_pop_takes_the_oldest_one_time_prekey_once() -> None:
    kept = record(5, 6)
    bundle, after = popped(kept, lambda node: True)
    assert bundle is not None and [p.id for p in bundle.one_time] == [5]
    assert after is not None and ids_of(after.one_time) == [6]
    assert bytes(bundle.identity_key) == KEY and bundle.signed_prekey.id == 7


def test_a_pop_from_a_live_owners_record_gives_the_signed_prekey_only() -> None:
    bundle, after = popped(record(5, owner=NODE), lambda node: node == NODE)
    assert bundle is not None and bundle.one_time == () and after is None


def test_a_pop_from_a_dead_owners_record_takes_a_one_time_prekey() -> None:
    bundle, after = popped(record(5, owner=NODE), lambda node: False)
    assert bundle is not None and [p.id for p in bundle.one_time] == [5]
    assert after is not None and after.owner == "" and after.one_time == b""


def test_no_bundle_without_a_signed_prekey() -> None:
    assert popped(Record(Identity("dave", KEY, 0.0)), lambda node: False) == (None, None)


@pytest.mark.parametrize(
    "item",
    [
        MailItem("dave", 4, MAIL, "alice", 17, 99.5, b"ciphertext"),
        MailItem("dave", 5, EXPIRED, "bob", 3, 100.0, reason="expired"),
    ],
)
def test_a_mailbox_item_reads_back_as_written(item: MailItem) -> None:
    assert decode_item("dave", encode_item(KEY, item)) == (KEY, item)


def test_a_mailbox_value_of_two_items_is_refused() -> None:
    item = MailItem("dave", 4, MAIL, "alice", 17, 99.5, b"ciphertext")
    with pytest.raises(RemoteProtocolError):
        decode_item("dave", encode_item(KEY, item) + b"x")


def test_a_mailbox_key_names_the_relay_that_queued_it_and_whose_it_is() -> None:
    assert node_of_key(mail_key("da.ve", NODE, 12)) == NODE
    assert nick_of_key(mail_key("da.ve", NODE, 12)) == "da.ve"
    with pytest.raises(RemoteProtocolError):
        nick_of_key(f"zz.{NODE}.1")
    with pytest.raises(RemoteProtocolError):
        node_of_key("6461766.notanode.1")
