"""The codec is driven by the types' tables, writes exactly the JSON ``json.dumps`` would,
takes any bytes-like payload; and the nick grammar is one rule, written once."""

from __future__ import annotations

import dataclasses
import json
import re
import string
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from nacl.public import PublicKey

from e2echat.errors import LocalProtocolError, RemoteProtocolError
from e2echat.wire import codec, fastpath, fields, grammar, objects
from e2echat.wire import messages as m
from e2echat.wire.binary import BINARY_TAGS
from e2echat.wire.codec import decode_message, encode_message
from e2echat.wire.fastpath import (
    Routes,
    decode_deliver,
    decode_mail,
    deliver_head,
    encode_send,
    encode_welcome,
)
from e2echat.wire.grammar import (
    EXPIRED_REASONS,
    MAX_ID,
    MAX_PREKEY_ID,
    MAX_PROOF,
    MAX_REASON,
    MAX_ROOMS,
    SESSION_PROOF_SIZE,
    SIGNATURE_SIZE,
    is_valid_nick,
    is_valid_room,
)
from e2echat.wire.objects import OBJECT_KINDS, Bundle, Envelope, Member, OneTimePrekey, SignedPrekey

from relay_frames import decode_for_relay

_NICK_ALPHABET = string.ascii_letters + string.digits + "_.-"
keys = st.binary(min_size=32, max_size=32).map(PublicKey)
nicks = st.text(_NICK_ALPHABET, min_size=1, max_size=32)
bodies = st.binary(min_size=1, max_size=64)
ids = st.integers(min_value=0, max_value=MAX_ID)
peers = st.builds(objects.PeerInfo, nicks, keys, keys)
_ROOM_ALPHABET = string.ascii_lowercase + string.digits + "_.-"
rooms = st.text(_ROOM_ALPHABET, min_size=1, max_size=32).map(lambda name: "#" + name)
room_lists = st.lists(rooms, max_size=MAX_ROOMS, unique=True).map(tuple)
# A room's members: online and away, each nick once among them.
member_lists = st.lists(
    st.tuples(nicks, keys, keys, st.booleans()), max_size=5, unique_by=lambda entry: entry[0]
).map(
    lambda entries: (
        tuple(objects.PeerInfo(nick, key, session) for nick, key, session, online in entries if online),
        tuple(Member(nick, key) for nick, key, _, online in entries if not online),
    )
)
# A relay's rate and burst: any finite float above 0, small or huge.
rates = st.floats(min_value=1e-300, max_value=1e300, allow_nan=False, allow_infinity=False)
# A Unix time as a whole number of seconds: check_time takes an int as well as a float.
whole_times = st.integers(min_value=0, max_value=2**40 - 1)
nick_groups = st.lists(nicks, max_size=4).map(tuple)
counts = st.integers(min_value=0, max_value=MAX_ID)
prekey_ids = st.integers(min_value=0, max_value=MAX_PREKEY_ID)
one_time_prekeys = st.builds(OneTimePrekey, prekey_ids, keys)
signed_prekeys = st.builds(
    SignedPrekey, prekey_ids, keys, st.binary(min_size=SIGNATURE_SIZE, max_size=SIGNATURE_SIZE)
)
bundles = st.builds(Bundle, nicks, keys, signed_prekeys, st.lists(one_time_prekeys, max_size=1).map(tuple))
# Free text: anything UTF-8 can carry (no lone surrogates), quotes, backslashes and
# control characters included, which JSON must escape.
texts = st.text(st.characters(exclude_categories=["Cs"]) | st.sampled_from('"\\\x00\x1f\x7f\u2028é✓'))

MESSAGES: dict[type[m.Message], st.SearchStrategy[Any]] = {
    m.Challenge: st.builds(m.Challenge, keys, st.binary(min_size=32, max_size=32), st.booleans()),
    m.Register: st.builds(
        m.Register,
        nicks,
        keys,
        keys,
        st.binary(min_size=1, max_size=MAX_PROOF),
        st.binary(min_size=SESSION_PROOF_SIZE, max_size=SESSION_PROOF_SIZE),
        signed_prekeys,
        room_lists,
    ),
    m.Welcome: st.builds(
        m.Welcome,
        nicks,
        rates,
        rates,
        rates,
        rates,
        counts,
        st.lists(peers, max_size=3).map(tuple),
        st.booleans(),
    ),
    m.Directory: st.builds(m.Directory, st.lists(peers, max_size=3).map(tuple), st.booleans()),
    m.PeerJoined: st.builds(m.PeerJoined, peers),
    m.PeerLeft: st.builds(m.PeerLeft, nicks),
    m.Send: st.builds(
        m.Send, ids, st.lists(st.builds(Envelope, nicks, bodies), min_size=1, max_size=3).map(tuple)
    ),
    m.Deliver: st.builds(m.Deliver, nicks, bodies),
    m.Routed: st.builds(m.Routed, ids, nick_groups, nick_groups, nick_groups, nick_groups, nick_groups),
    # A time may be an int (check_time takes one): written as a number that reads back equal.
    m.Mail: st.builds(m.Mail, ids, nicks, st.floats(min_value=0, max_value=2**39) | whole_times, bodies),
    m.Expired: st.builds(m.Expired, ids, ids, nicks, st.sampled_from(EXPIRED_REASONS)),
    m.Ack: st.builds(m.Ack, ids),
    m.Members: st.builds(
        lambda room, members, more: m.Members(room, members[0], members[1], more),
        rooms,
        member_lists,
        st.booleans(),
    ),
    m.Join: st.builds(m.Join, rooms),
    m.Part: st.builds(m.Part, rooms),
    m.Entered: st.builds(m.Entered, rooms, peers),
    m.Parted: st.builds(m.Parted, rooms, nicks),
    m.Publish: st.builds(
        m.Publish,
        signed_prekeys,
        st.lists(one_time_prekeys, max_size=4, unique_by=lambda prekey: prekey.id).map(tuple),
    ),
    m.Prekeys: st.builds(m.Prekeys, counts),
    m.Fetch: st.builds(m.Fetch, st.lists(nicks, min_size=1, max_size=4, unique=True).map(tuple)),
    m.Bundles: st.builds(m.Bundles, st.lists(bundles, max_size=3).map(tuple), nick_groups),
    m.Error: st.builds(
        m.Error, st.text("abz_", min_size=1, max_size=32), texts.filter(lambda t: len(t) <= MAX_REASON)
    ),
    m.Bye: st.builds(m.Bye, texts.filter(lambda t: len(t) <= MAX_REASON)),
    m.Ping: st.just(m.Ping()),
    m.Pong: st.just(m.Pong()),
}
any_message = st.one_of(*MESSAGES.values())


def test_an_int_time_is_written_as_json_writes_it_and_reads_back_equal() -> None:
    encoded = encode_message(m.Mail(7, "alice", 1_700_000_000, b"body"))
    assert b'"queued_at":1700000000,' in encoded
    decoded = decode_message(encoded)
    assert isinstance(decoded, m.Mail) and decoded.queued_at == 1_700_000_000
    assert decode_mail(encoded) == (7, "alice", 1_700_000_000.0, b"body")


# -- the tables ---------------------------------------------------------------------------


def test_every_type_has_a_strategy_here() -> None:
    assert set(MESSAGES) == set(m.MESSAGE_TYPES.values())


RECORDS: list[type[fields.Record]] = [
    *dict.fromkeys(holds.record for holds in OBJECT_KINDS.values()),
    *m.MESSAGE_TYPES.values(),
]


@pytest.mark.parametrize("cls", RECORDS, ids=lambda c: c.__name__)
def test_each_table_lists_its_dataclass_fields_in_order(cls: type[fields.Record]) -> None:
    assert dataclasses.is_dataclass(cls)
    assert [row.attr for row in cls.WIRE] == [f.name for f in dataclasses.fields(cls)]
    names = [row.wire for row in cls.WIRE]
    assert len(set(names)) == len(names) and not {"v", "type"} & set(names)


def test_every_kind_has_one_reader_and_one_writer() -> None:
    assert set(codec._READERS) == set(codec._WRITERS) == set(fields.Kind)
    used = {row.kind for cls in RECORDS for row in cls.WIRE}
    assert used == set(fields.Kind)


def test_a_table_that_misses_a_field_is_refused_at_import() -> None:
    @dataclasses.dataclass(frozen=True)
    class Broken(m.Message):
        TYPE = "broken"
        WIRE = (fields.on_wire("a", fields.TEXT),)
        a: str
        b: str

    with pytest.raises(TypeError, match=r"Broken\.WIRE"):
        fields.check_tables(Broken)


# -- encoding: exactly what json.dumps writes, from the table -------------------------------


@settings(max_examples=400)
@given(any_message)
def test_encoding_is_compact_json_in_table_order_and_round_trips(message: m.Message) -> None:
    encoded = encode_message(message)
    if isinstance(message, m.Send | m.Deliver):  # binary (test_messages pins the layout)
        assert encoded[0] in BINARY_TAGS
    else:
        obj = json.loads(encoded)
        assert list(obj) == ["v", "type", *(row.wire for row in message.WIRE)]
        assert obj["v"] == grammar.PROTOCOL_VERSION and obj["type"] == message.TYPE
        assert json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8") == encoded
    assert decode_message(encoded) == message
    # Any bytes-like payload, including a view into the middle of a bigger buffer.
    assert decode_message(bytearray(encoded)) == message
    assert decode_message(memoryview(b"xx" + encoded + b"yy")[2:-2]) == message
    relayed = decode_for_relay(memoryview(encoded))
    assert relayed == (Routes.of(message) if isinstance(message, m.Send) else message)


def test_encoding_something_that_is_not_a_message_is_our_bug() -> None:
    with pytest.raises(LocalProtocolError, match="cannot encode PeerInfo"):
        # The wrong type on purpose (a Record, not a Message): its refusal is under test.
        encode_message(objects.PeerInfo("bob", PublicKey(bytes(32)), PublicKey(bytes(32))))  # type: ignore[arg-type]


# -- bytes-like payloads --------------------------------------------------------------------


@pytest.mark.parametrize("wrap", [bytes, bytearray, memoryview], ids=["bytes", "bytearray", "memoryview"])
@pytest.mark.parametrize(
    "payload",
    [b"", b"\xff\xfe", b"[1]", b'{"v":2,"type":"bye"}', b"\x02\x02\x01a", b"\x01\x02\x00"],
    ids=["empty", "not-utf8", "array", "missing-field", "deliver-no-body", "send-cut-short"],
)
def test_a_bad_payload_of_any_bytes_like_type_is_a_remote_protocol_error(wrap: type, payload: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        decode_message(wrap(payload))
    with pytest.raises(RemoteProtocolError):
        decode_for_relay(wrap(payload))
    assert decode_deliver(wrap(payload)) is None


def test_the_client_reads_a_deliver_from_any_bytes_like_payload() -> None:
    payload = encode_message(m.Deliver("alice", b"\x00\xff"))
    for wrapped in (payload, bytearray(payload), memoryview(payload)):
        assert decode_deliver(wrapped) == ("alice", b"\x00\xff")


@pytest.mark.parametrize(
    "payload", ['{"v":2,"type":"ping"}', 5, None, [b"{}"]], ids=["str", "int", "none", "list"]
)
def test_a_payload_that_is_not_bytes_like_is_a_type_error(payload: Any) -> None:
    """Our bug, not the peer's: neither an AttributeError nor a protocol error."""
    with pytest.raises(TypeError, match="bytes-like"):
        decode_message(payload)


# -- one nick grammar ---------------------------------------------------------------------


def test_the_nick_grammar_is_written_only_in_grammar_py() -> None:
    package = Path(grammar.__file__).resolve().parent.parent
    for path in package.rglob("*.py"):
        if path.name != "grammar.py":
            source = path.read_text(encoding="utf-8")
            assert grammar.NICK_CHARS not in source, path
            assert re.search(r"\{1,\s*32\}", source) is None, path


def test_the_fast_paths_regular_expressions_are_built_from_the_grammar() -> None:
    assert fastpath._NICK_BYTES.pattern == grammar.NICK.encode("ascii") + rb"\Z"


@settings(max_examples=500)
@given(st.text(_NICK_ALPHABET + ' "\\é\n', max_size=34) | st.text(max_size=34))
@example("a" * 32)
@example("a" * 33)
@example("bob\n")
@example("")
def test_every_path_holds_a_nick_to_the_same_rule(nick: str) -> None:
    """The dataclasses, both fast readers and every fast writer accept exactly the nicks
    the grammar accepts."""
    valid = is_valid_nick(nick)
    raw = nick.encode("utf-8", "surrogatepass")[:255]
    deliver = b"\x02\x02%b%bABC" % (bytes((len(raw),)), raw)
    send = b"\x01\x02%b%b%b\x00\x00\x00\x03ABC" % (bytes(7) + b"\x01", bytes((len(raw),)), raw)
    assert (decode_deliver(deliver) is not None) == valid
    assert (fastpath.fast_routes(send) is not None) == valid
    for build in (
        lambda: m.PeerLeft(nick),
        lambda: encode_send(1, [(nick, b"x")]),
        lambda: deliver_head(nick),
        lambda: encode_welcome(nick, [], rate=50.0, burst=200.0, byte_rate=1e6, byte_burst=4e6, prekeys=0),
    ):
        if valid:
            build()
        else:
            with pytest.raises(LocalProtocolError):
                build()


# -- one room grammar ---------------------------------------------------------------------


@settings(max_examples=500)
@given(st.text(_ROOM_ALPHABET + "#A ", max_size=35) | st.text(max_size=35))
@example("#" + "a" * 32)
@example("#" + "a" * 33)
@example("#")
@example("lobby")
@example("#Lobby")
@example("#lobby\n")
@example("##")
def test_every_path_holds_a_room_to_the_same_rule(room: str) -> None:
    """The dataclasses and every fast writer accept exactly the rooms the grammar accepts."""
    valid = is_valid_room(room)
    peer = objects.PeerInfo("bob", _KEY, _KEY)
    for build in (
        lambda: m.Join(room),
        lambda: m.Part(room),
        lambda: m.Entered(room, peer),
        lambda: m.Parted(room, "bob"),
        lambda: m.Members(room, (), ()),
        lambda: m.Register("bob", _KEY, _KEY, b"p", bytes(SESSION_PROOF_SIZE), _SIGNED, (room,)),
        lambda: fastpath.encode_members(room, [], []),
        lambda: fastpath.encode_entered(room, fastpath.encode_peer(peer)),
        lambda: fastpath.encode_parted(room, "bob"),
    ):
        if valid:
            build()
        else:
            with pytest.raises(LocalProtocolError):
                build()


_KEY = PublicKey(bytes(32))
_SIGNED = SignedPrekey(1, _KEY, bytes(SIGNATURE_SIZE))


def test_the_room_grammar_is_written_only_in_grammar_py() -> None:
    package = Path(grammar.__file__).resolve().parent.parent
    for path in package.rglob("*.py"):
        if path.name != "grammar.py":
            assert grammar.ROOM_CHARS not in path.read_text(encoding="utf-8"), path


@settings(max_examples=200)
@given(rooms, member_lists, st.booleans())
def test_encode_members_gives_the_bytes_encode_message_gives(
    room: str, members: tuple[tuple[objects.PeerInfo, ...], tuple[Member, ...]], more: bool
) -> None:
    online, away = members
    encoded = fastpath.encode_members(
        room, [fastpath.encode_peer(p) for p in online], [fastpath.encode_member(a) for a in away], more=more
    )
    assert encoded == encode_message(m.Members(room, online, away, more))


@given(rooms, peers, nicks)
def test_encode_entered_and_parted_give_the_bytes_encode_message_gives(
    room: str, peer: objects.PeerInfo, nick: str
) -> None:
    assert fastpath.encode_entered(room, fastpath.encode_peer(peer)) == encode_message(m.Entered(room, peer))
    assert fastpath.encode_parted(room, nick) == encode_message(m.Parted(room, nick))
