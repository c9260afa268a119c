"""Wire messages: every type round-trips, and every malformed payload raises
RemoteProtocolError and nothing else."""

from __future__ import annotations

import base64
import json
import string
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.public import PublicKey

from e2echat.errors import LocalProtocolError, RemoteProtocolError
from e2echat.wire import messages as m
from e2echat.wire.binary import BODY_LENGTH, DELIVER_TAG, SEND_HEAD, SEND_TAG
from e2echat.wire.codec import decode_message, encode_message
from e2echat.wire.fastpath import (
    Routes,
    deliver_head,
    encode_directory,
    encode_peer,
    encode_send,
    encode_welcome,
    fast_routes,
)
from e2echat.wire.grammar import (
    CHALLENGE_SIZE,
    EXPIRED_REASONS,
    MAX_BODY,
    MAX_FETCH,
    MAX_ID,
    MAX_ITEMS,
    MAX_PREKEY_ID,
    MAX_PROOF,
    MAX_PUBLISH,
    MAX_REASON,
    MAX_ROOMS,
    PROTOCOL_VERSION,
    SESSION_PROOF_SIZE,
    SIGNATURE_SIZE,
    is_valid_nick,
)
from e2echat.wire.objects import Bundle, Envelope, Member, OneTimePrekey, PeerInfo, SignedPrekey

from relay_frames import decode_for_relay

KEY_A = PublicKey(bytes(range(32)))
KEY_B = PublicKey(bytes(range(32, 64)))
KEY_C = PublicKey(b"\xee" * 32)
PEER_BOB = PeerInfo("bob", KEY_A, KEY_B)
SESSION_PROOF = b"\x04" * SESSION_PROOF_SIZE
PEER_CAROL = PeerInfo("carol.x-1_", KEY_B, KEY_C)
SIGNATURE = bytes(range(64, 64 + SIGNATURE_SIZE))
SIGNED = SignedPrekey(7, KEY_A, SIGNATURE)
ONE_TIME = (OneTimePrekey(0, KEY_B), OneTimePrekey(MAX_PREKEY_ID, KEY_C), OneTimePrekey(3, KEY_A))
BUNDLE_BOB = Bundle("bob", KEY_C, SIGNED, ONE_TIME[:1])
RELAY_ID = bytes(range(16))

EXAMPLES: dict[str, m.Message] = {
    "challenge": m.Challenge(KEY_A, b"\x01" * CHALLENGE_SIZE),
    "register": m.Register("alice", KEY_A, KEY_B, b"\x02" * 72, SESSION_PROOF, SIGNED),
    "register-rooms": m.Register(
        "alice", KEY_A, KEY_B, b"\x02" * 72, SESSION_PROOF, SIGNED, ("#ops", "#a.b-c_9")
    ),
    "register-no-rooms": m.Register("alice", KEY_A, KEY_B, b"\x02" * 72, SESSION_PROOF, SIGNED, ()),
    "welcome": m.Welcome("alice", 50.0, 200.0, 1048576.0, 4194304.0, 25, (PEER_BOB, PEER_CAROL)),
    "joined": m.PeerJoined(PEER_BOB),
    "left": m.PeerLeft("bob"),
    "send": m.Send(7, (Envelope("bob", b"\x00\xffbody"), Envelope("carol", b"c" * 100))),
    "deliver": m.Deliver("alice", b"\x00ciphertext\xff"),
    "routed": m.Routed(7, ("bob",), ("dave",), ("carol",), ("erin",)),
    "mail": m.Mail(3, "alice", 1796601600.25, b"\x00sealed\xff"),
    "expired": m.Expired(4, 7, "bob", "key_changed"),
    "ack": m.Ack(3),
    "members": m.Members("#ops", (PEER_BOB,), (Member("dave", KEY_A), Member("erin", KEY_C)), more=True),
    "members-empty": m.Members("#lobby", (), ()),
    "join": m.Join("#ops"),
    "part": m.Part("#ops"),
    "entered": m.Entered("#ops", PEER_CAROL),
    "parted": m.Parted("#ops", "carol.x-1_"),
    "error": m.Error("nick_taken", "nick 'alice' is already online — choose another ✓"),
    "bye": m.Bye("relay shutting down"),
    "directory": m.Directory((PEER_BOB,), more=True),
    "welcome-with-more": m.Welcome("alice", 0.5, 1e6, 1e-3, 7.5, 0, (PEER_CAROL,), more=True),
    "welcome-short-ttl": m.Welcome(
        "alice", 50.0, 200.0, 1e6, 4e6, 0, (), mailbox_ttl=1.5, relay_id=b"\x07" * 16
    ),
    "ping": m.Ping(),
    "pong": m.Pong(),
    "challenge-with-password": m.Challenge(KEY_B, b"\x03" * CHALLENGE_SIZE, password_required=True),
    "publish": m.Publish(SIGNED, ONE_TIME),
    "publish-signed-only": m.Publish(SignedPrekey(MAX_PREKEY_ID, KEY_B, bytes(SIGNATURE_SIZE)), ()),
    "publish-replace": m.Publish(SIGNED, ONE_TIME, replace=True),
    "prekeys": m.Prekeys(9),
    "fetch": m.Fetch(("bob", "carol.x-1_")),
    "bundles": m.Bundles((BUNDLE_BOB, Bundle("carol", KEY_A, SIGNED, ())), ("dave",)),
    "bundles-none": m.Bundles((), ("bob",)),
}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _json(obj: object) -> bytes:
    return json.dumps(obj).encode("utf-8")


def _wire(name: str) -> dict[str, Any]:
    """The decoded JSON object of the example message ``name``, to mutate. (A ``send`` or
    ``deliver`` as the JSON object it would be if it were not binary: refused whatever
    it holds.)"""
    message = EXAMPLES[name]
    if isinstance(message, m.Send):
        items = [{"to": e.to, "body": _b64(e.body)} for e in message.items]
        return {"v": PROTOCOL_VERSION, "type": "send", "id": message.id, "items": items}
    if isinstance(message, m.Deliver):
        return {"v": PROTOCOL_VERSION, "type": "deliver", "from": message.sender, "body": _b64(message.body)}
    obj: dict[str, Any] = json.loads(encode_message(message))
    return obj


def _binary_send(ident: int, items: list[tuple[bytes, bytes]], *, version: int = PROTOCOL_VERSION) -> bytes:
    """A binary send of (nick, body) items, whatever they are (binary.py's layout)."""
    parts = [SEND_HEAD.pack(SEND_TAG, version, ident)]
    for to, body in items:
        parts += (bytes((len(to),)), to, BODY_LENGTH.pack(len(body)), body)
    return b"".join(parts)


def _binary_deliver(sender: bytes, body: bytes) -> bytes:
    return bytes((DELIVER_TAG, PROTOCOL_VERSION, len(sender))) + sender + body


def _with(name: str, **changes: Any) -> bytes:
    obj = _wire(name)
    obj.update(changes)
    return _json(obj)


def _without(name: str, field: str) -> bytes:
    obj = _wire(name)
    del obj[field]
    return _json(obj)


# -- round trips --------------------------------------------------------------------------


def test_every_message_type_has_an_example() -> None:
    assert {example.TYPE for example in EXAMPLES.values()} == set(m.MESSAGE_TYPES)
    for example in EXAMPLES.values():
        assert type(example) is m.MESSAGE_TYPES[example.TYPE]


@pytest.mark.parametrize("message", EXAMPLES.values(), ids=EXAMPLES.keys())
def test_round_trip(message: m.Message) -> None:
    encoded = encode_message(message)
    decoded = decode_message(encoded)
    assert decoded == message
    assert type(decoded) is type(message)
    assert encode_message(decoded) == encoded


def test_wire_format_is_pinned() -> None:
    """The documented shape, byte for byte: other implementations rely on it."""
    assert encode_message(m.Bye("x")) == b'{"v":2,"type":"bye","reason":"x"}'
    assert encode_message(m.Deliver("bob", b"\x00\x01")) == b"\x02\x02\x03bob\x00\x01"
    assert encode_message(m.Send(7, (Envelope("bob", b"\x00\xff"), Envelope("c", b"x")))) == (
        b"\x01\x02" + (7).to_bytes(8, "big") + b"\x03bob\x00\x00\x00\x02\x00\xff" + b"\x01c\x00\x00\x00\x01x"
    )
    assert encode_message(m.Prekeys(0)) == b'{"v":2,"type":"prekeys","count":0}'
    assert encode_message(m.Join("#ops")) == b'{"v":2,"type":"join","room":"#ops"}'
    assert encode_message(m.Part("#ops")) == b'{"v":2,"type":"part","room":"#ops"}'
    assert encode_message(m.Parted("#ops", "bob")) == b'{"v":2,"type":"parted","room":"#ops","nick":"bob"}'
    assert encode_message(m.Members("#ops", (), (Member("bob", KEY_A),))) == (
        b'{"v":2,"type":"members","room":"#ops","peers":[],"away":[{"nick":"bob","identity_key":"%b"}],'
        b'"more":false}' % _b64(bytes(KEY_A)).encode()
    )
    assert encode_message(EXAMPLES["register"]).endswith(b',"rooms":["#lobby"]}')
    assert encode_message(m.Fetch(("bob", "carol"))) == b'{"v":2,"type":"fetch","nicks":["bob","carol"]}'
    key, signature = _b64(bytes(KEY_A)).encode(), _b64(SIGNATURE).encode()
    signed = b'{"id":7,"key":"%b","signature":"%b"}' % (key, signature)
    assert encode_message(m.Publish(SIGNED, (OneTimePrekey(1, KEY_A),))) == (
        b'{"v":2,"type":"publish","signed_prekey":%b,"one_time":[{"id":1,"key":"%b"}],"replace":false}'
        % (signed, key)
    )
    assert encode_message(m.Bundles((Bundle("bob", KEY_A, SIGNED, ()),), ("carol",))) == (
        b'{"v":2,"type":"bundles","bundles":[{"nick":"bob","identity_key":"%b","signed_prekey":%b,'
        b'"one_time":[]}],"missing":["carol"]}' % (key, signed)
    )
    assert json.loads(encode_message(EXAMPLES["welcome"]))["prekeys"] == 25
    assert list(json.loads(encode_message(EXAMPLES["welcome"])))[6:8] == ["byte_burst", "prekeys"]


def test_boundary_values_round_trip() -> None:
    for message in [
        m.Send(MAX_ID, (Envelope("b", b"x" * MAX_BODY),)),
        m.Send(0, (Envelope("b" * 32, b"x"),)),
        m.Error("a" * 32, "t" * MAX_REASON),
        m.Register("n", KEY_A, KEY_A, b"p" * MAX_PROOF, SESSION_PROOF, SIGNED),
        m.Welcome("alice", 50.0, 200.0, 1e6, 4e6, 0, ()),
        m.Routed(1, ()),
        m.Bye(""),
        m.Welcome("alice", 50.0, 200.0, 1e6, 4e6, MAX_ID, ()),
        m.Publish(SIGNED, tuple(OneTimePrekey(i, KEY_A) for i in range(MAX_PUBLISH))),
        m.Fetch(tuple(f"n{i}" for i in range(MAX_FETCH))),
        m.Bundles(tuple(Bundle(f"n{i}", KEY_A, SIGNED, ONE_TIME[:1]) for i in range(MAX_FETCH)), ()),
        m.Bundles((), tuple(f"n{i}" for i in range(MAX_FETCH))),
        m.Bundles((BUNDLE_BOB,), tuple(f"n{i}" for i in range(MAX_FETCH - 1))),
        m.Prekeys(MAX_ID),
        m.Register("n", KEY_A, KEY_A, b"p", SESSION_PROOF, SIGNED, tuple(f"#{i}" for i in range(MAX_ROOMS))),
        m.Join("#" + "z" * 32),
        m.Join("#-"),
        m.Members("#x", tuple(PeerInfo(f"p{i}", KEY_A, KEY_B) for i in range(MAX_ITEMS)), ()),
        m.Members("#x", (), tuple(Member(f"a{i}", KEY_A) for i in range(MAX_ITEMS))),
    ]:
        assert decode_message(encode_message(message)) == message


# -- malformed input: RemoteProtocolError and nothing else --------------------------------

_NESTED = b"[" * 100_000 + b"]" * 100_000
_BAD_CASES: dict[str, bytes] = {
    "empty": b"",
    "not-json": b"{not json",
    "trailing-garbage": encode_message(EXAMPLES["bye"]) + b" x",
    "not-utf8": b"\xff\xfe\x00",
    "latin1-in-string": '{"v":2,"type":"bye","reason":"caf\xe9"}'.encode("latin-1"),
    "utf8-bom": b"\xef\xbb\xbf" + encode_message(EXAMPLES["bye"]),
    "json-array": b"[1,2,3]",
    "json-string": b'"bye"',
    "json-null": b"null",
    "missing-v": _without("bye", "v"),
    "version-0": _with("bye", v=0),
    "version-1-downgrade": _with("bye", v=1),
    "version-3": _with("bye", v=3),
    "version-string": _with("bye", v="2"),
    "version-bool": _with("bye", v=True),
    "version-float": _with("bye", v=2.0),
    "missing-type": _without("bye", "type"),
    "unknown-type": _with("bye", type="shout"),
    "type-not-string": _with("bye", type=5),
    "missing-field": _without("register", "proof"),
    "missing-session-proof": _without("register", "session_proof"),
    "missing-field-nested": _json(
        {**_wire("joined"), "peer": {"nick": "bob", "identity_key": _b64(b"k" * 32)}}
    ),
    "extra-field": _with("bye", extra=1),
    "extra-field-nested": _json(
        {**_wire("send"), "items": [{"to": "bob", "body": _b64(b"x"), "cc": "carol"}]}
    ),
    "duplicate-key": b'{"v":2,"type":"bye","reason":"a","reason":"b"}',
    "duplicate-v": b'{"v":2,"v":2,"type":"bye","reason":"a"}',
    "duplicate-key-nested": b'{"v":2,"type":"send","id":1,"items":[{"to":"bob","to":"eve","body":"eA=="}]}',
    "string-for-int": _with("send", id="7"),
    "bool-for-int": _with("send", id=True),
    "float-for-int": _with("send", id=7.0),
    "int-for-string": _with("left", nick=5),
    "null-for-string": _with("bye", reason=None),
    "object-for-array": _with("routed", delivered={"bob": 1}),
    "int-in-nick-array": _with("routed", delivered=["bob", 3]),
    "peer-not-object": _with("welcome", peers=["bob"]),
    "joined-peer-not-object": _with("joined", peer=["bob"]),
    "string-for-number": _with("welcome", rate="50"),
    "bool-for-number": _with("welcome", burst=True),
    "null-for-number": _with("welcome", byte_rate=None),
    "byte-burst-zero": _with("welcome", byte_burst=0.0),
    "rate-zero": _with("welcome", rate=0),
    "rate-negative": _with("welcome", rate=-50.0),
    "rate-overflows-to-infinity": _with("welcome", rate=1e999).replace(b"Infinity", b"1e999"),
    "burst-int-too-big-for-a-float": _with("welcome", burst=10**400),
    "negative-id": _with("send", id=-1),
    "id-too-big": _with("send", id=MAX_ID + 1),
    "id-with-5000-digits": b'{"v":2,"type":"send","id":' + b"9" * 5000 + b',"items":[]}',
    "empty-items": _with("send", items=[]),
    "bad-base64-chars": _with("deliver", body="***"),
    "bad-base64-padding": _with("deliver", body="abc"),
    "base64-with-newline": _with("deliver", body="AAAA\nAAAA"),
    "base64-urlsafe": _with("deliver", body="-_-_"),
    "base64-non-ascii": _with("deliver", body="AAAé"),
    "empty-body": _with("deliver", body=""),
    "body-too-long": _with("deliver", body=_b64(b"x" * (MAX_BODY + 1))),
    "key-31-bytes": _with("register", identity_key=_b64(b"k" * 31)),
    "key-33-bytes": _with("register", session_key=_b64(b"k" * 33)),
    "peer-key-33-bytes": _json(
        {**_wire("joined"), "peer": {**_wire("joined")["peer"], "session_key": _b64(b"k" * 33)}}
    ),
    "challenge-31-bytes": _with("challenge", challenge=_b64(b"c" * 31)),
    "empty-proof": _with("register", proof=""),
    "proof-too-long": _with("register", proof=_b64(b"p" * (MAX_PROOF + 1))),
    "session-proof-short": _with("register", session_proof=_b64(SESSION_PROOF[1:])),
    "session-proof-long": _with("register", session_proof=_b64(SESSION_PROOF + b"p")),
    "nick-empty": _with("register", nick=""),
    "nick-33-chars": _with("register", nick="a" * 33),
    "nick-space": _with("register", nick="al ice"),
    "nick-escape": _with("register", nick="al\x1b[2Jice"),
    "nick-newline-at-end": _with("left", nick="bob\n"),
    "nick-non-ascii": _with("left", nick="bób"),
    "sender-invalid": _with("deliver", **{"from": "eve!"}),
    "recipient-invalid": _with("send", items=[{"to": "", "body": _b64(b"x")}]),
    "routed-nick-invalid": _with("routed", missing=["no one"]),
    "error-text-too-long": _with("error", text="t" * (MAX_REASON + 1)),
    "error-code-uppercase": _with("error", code="NICK"),
    "bye-reason-too-long": _with("bye", reason="r" * (MAX_REASON + 1)),
    "nan-constant": b'{"v":NaN,"type":"bye","reason":"x"}',
    "infinity-constant": b'{"v":2,"type":"send","id":Infinity,"items":[]}',
    "minus-infinity-constant": b'{"v":2,"type":"send","id":-Infinity,"items":[]}',
    "deeply-nested": _NESTED,
    "deeply-nested-in-field": b'{"v":2,"type":"bye","reason":' + _NESTED + b"}",
    "too-many-items": _with("routed", delivered=["b"] * (MAX_ITEMS + 1)),
}

_KEY = _b64(bytes(KEY_A))
_SIGNED = _wire("publish")["signed_prekey"]
_BUNDLE = _wire("bundles")["bundles"][0]


def _one_time(*ids: object, **extra: object) -> list[dict[str, object]]:
    return [{"id": ident, "key": _KEY, **extra} for ident in ids]


# The prekey messages: every way a publish, a fetch, their answers and the welcome's count
# can be wrong, at every depth.
_BAD_CASES.update(
    {
        "publish-duplicate-ids": _with("publish", one_time=_one_time(1, 2, 1)),
        "publish-too-many-one-time": _with("publish", one_time=_one_time(*range(MAX_PUBLISH + 1))),
        "publish-missing-one-time": _without("publish", "one_time"),
        "publish-missing-signed-prekey": _without("publish", "signed_prekey"),
        "publish-missing-replace": _without("publish", "replace"),
        "publish-replace-int": _with("publish", replace=1),
        "publish-replace-string": _with("publish", replace="true"),
        "publish-one-time-not-array": _with("publish", one_time=_one_time(1)[0]),
        "publish-one-time-item-not-object": _with("publish", one_time=[[1, _KEY]]),
        "publish-one-time-extra-field": _with("publish", one_time=_one_time(1, signature=_KEY)),
        "publish-one-time-missing-key": _with("publish", one_time=[{"id": 1}]),
        "publish-one-time-key-31": _with("publish", one_time=[{"id": 1, "key": _b64(b"k" * 31)}]),
        "publish-one-time-id-negative": _with("publish", one_time=_one_time(-1)),
        "publish-one-time-id-too-big": _with("publish", one_time=_one_time(MAX_PREKEY_ID + 1)),
        "publish-one-time-id-bool": _with("publish", one_time=_one_time(True)),
        "publish-one-time-id-float": _with("publish", one_time=_one_time(1.0)),
        "publish-one-time-id-string": _with("publish", one_time=_one_time("1")),
        "publish-signed-not-object": _with("publish", signed_prekey=[_SIGNED]),
        "publish-signed-null": _with("publish", signed_prekey=None),
        "publish-signed-missing-signature": _with("publish", signed_prekey={"id": 1, "key": _KEY}),
        "publish-signed-extra-field": _with("publish", signed_prekey={**_SIGNED, "nick": "bob"}),
        "publish-signature-63": _with("publish", signed_prekey={**_SIGNED, "signature": _b64(bytes(63))}),
        "publish-signature-65": _with("publish", signed_prekey={**_SIGNED, "signature": _b64(bytes(65))}),
        "publish-signature-empty": _with("publish", signed_prekey={**_SIGNED, "signature": ""}),
        "publish-signature-bad-base64": _with("publish", signed_prekey={**_SIGNED, "signature": "***"}),
        "publish-signed-key-33": _with("publish", signed_prekey={**_SIGNED, "key": _b64(b"k" * 33)}),
        "publish-signed-id-too-big": _with("publish", signed_prekey={**_SIGNED, "id": MAX_PREKEY_ID + 1}),
        "publish-duplicate-key-nested": encode_message(EXAMPLES["publish"]).replace(
            b'"signed_prekey":{"id":7,', b'"signed_prekey":{"id":7,"id":8,'
        ),
        "prekeys-negative": _with("prekeys", count=-1),
        "prekeys-too-big": _with("prekeys", count=MAX_ID + 1),
        "prekeys-bool": _with("prekeys", count=True),
        "prekeys-float": _with("prekeys", count=9.0),
        "prekeys-string": _with("prekeys", count="9"),
        "prekeys-missing-count": _without("prekeys", "count"),
        "fetch-empty": _with("fetch", nicks=[]),
        "fetch-duplicate": _with("fetch", nicks=["bob", "carol", "bob"]),
        "fetch-too-many": _with("fetch", nicks=[f"n{i}" for i in range(MAX_FETCH + 1)]),
        "fetch-invalid-nick": _with("fetch", nicks=["no one"]),
        "fetch-nick-not-string": _with("fetch", nicks=[5]),
        "fetch-nicks-not-array": _with("fetch", nicks="bob"),
        "bundles-two-one-time": _with("bundles", bundles=[{**_BUNDLE, "one_time": _one_time(1, 2)}]),
        "bundles-one-time-not-array": _with("bundles", bundles=[{**_BUNDLE, "one_time": _one_time(1)[0]}]),
        "bundles-missing-signed-prekey": _with(
            "bundles", bundles=[{k: v for k, v in _BUNDLE.items() if k != "signed_prekey"}]
        ),
        "bundles-bundle-extra-field": _with("bundles", bundles=[{**_BUNDLE, "session_key": _KEY}]),
        "bundles-bundle-bad-nick": _with("bundles", bundles=[{**_BUNDLE, "nick": "bob!"}]),
        "bundles-identity-key-31": _with("bundles", bundles=[{**_BUNDLE, "identity_key": _b64(b"k" * 31)}]),
        "bundles-signature-63": _with(
            "bundles", bundles=[{**_BUNDLE, "signed_prekey": {**_SIGNED, "signature": _b64(bytes(63))}}]
        ),
        "bundles-not-array": _with("bundles", bundles=_BUNDLE),
        "bundles-missing-bad-nick": _with("bundles", missing=[""]),
        "bundles-missing-missing": _without("bundles", "missing"),
        "bundles-too-many-missing": _with(
            "bundles", bundles=[], missing=[f"n{i}" for i in range(MAX_FETCH + 1)]
        ),
        "bundles-too-many-in-all": _with("bundles", missing=[f"n{i}" for i in range(MAX_FETCH)]),
        "welcome-prekeys-negative": _with("welcome", prekeys=-1),
        "welcome-prekeys-too-big": _with("welcome", prekeys=MAX_ID + 1),
        "welcome-prekeys-float": _with("welcome", prekeys=25.0),
        "welcome-prekeys-bool": _with("welcome", prekeys=False),
        "welcome-prekeys-null": _with("welcome", prekeys=None),
        "welcome-prekeys-missing": _without("welcome", "prekeys"),
    }
)


_MEMBER = _wire("members")["away"][0]
_PEER = _wire("members")["peers"][0]
# The rooms: every way a room name, a room list and a member list can be wrong.
_BAD_CASES.update(
    {
        "register-room-no-hash": _with("register-rooms", rooms=["ops"]),
        "register-room-only-hash": _with("register-rooms", rooms=["#"]),
        "register-room-uppercase": _with("register-rooms", rooms=["#Ops"]),
        "register-room-33": _with("register-rooms", rooms=["#" + "a" * 33]),
        "register-room-space": _with("register-rooms", rooms=["#o ps"]),
        "register-room-two-hashes": _with("register-rooms", rooms=["##ops"]),
        "register-room-non-ascii": _with("register-rooms", rooms=["#öps"]),
        "register-room-newline": _with("register-rooms", rooms=["#ops\n"]),
        "register-room-repeated": _with("register-rooms", rooms=["#ops", "#dev", "#ops"]),
        "register-too-many-rooms": _with("register-rooms", rooms=[f"#r{i}" for i in range(MAX_ROOMS + 1)]),
        "register-rooms-not-array": _with("register-rooms", rooms="#ops"),
        "register-room-not-string": _with("register-rooms", rooms=[5]),
        "register-rooms-null": _with("register-rooms", rooms=None),
        "register-rooms-missing": _without("register-rooms", "rooms"),
        "join-bad-room": _with("join", room="ops"),
        "join-room-int": _with("join", room=1),
        "join-room-array": _with("join", room=["#ops"]),
        "join-missing-room": _without("join", "room"),
        "join-extra-field": _with("join", room="#ops", nick="bob"),
        "part-bad-room": _with("part", room="#OPS"),
        "part-room-null": _with("part", room=None),
        "entered-bad-room": _with("entered", room="#a b"),
        "entered-peer-not-object": _with("entered", peer="carol"),
        "entered-peer-missing-key": _with("entered", peer={"nick": "carol", "identity_key": _KEY}),
        "entered-missing-peer": _without("entered", "peer"),
        "parted-bad-nick": _with("parted", nick="no one"),
        "parted-bad-room": _with("parted", room=""),
        "parted-nick-int": _with("parted", nick=3),
        "members-bad-room": _with("members", room="#"),
        "members-away-not-array": _with("members", away=_MEMBER),
        "members-away-not-object": _with("members", away=["dave"]),
        "members-away-extra-field": _with("members", away=[{**_MEMBER, "session_key": _KEY}]),
        "members-away-missing-key": _with("members", away=[{"nick": "dave"}]),
        "members-away-key-31": _with("members", away=[{**_MEMBER, "identity_key": _b64(b"k" * 31)}]),
        "members-away-bad-nick": _with("members", away=[{**_MEMBER, "nick": "da ve"}]),
        "members-away-twice": _with("members", away=[_MEMBER, _MEMBER]),
        "members-peer-also-away": _with("members", away=[{**_MEMBER, "nick": _PEER["nick"]}]),
        "members-peer-twice": _with("members", peers=[_PEER, _PEER]),
        "members-more-int": _with("members", more=1),
        "members-missing-more": _without("members", "more"),
        "members-too-many-away": _with("members", away=[_MEMBER] * (MAX_ITEMS + 1)),
        "away-is-gone": b'{"v":2,"type":"away","nicks":[],"more":false}',
    }
)


_SEND_JSON = json.dumps(_wire("send"), separators=(",", ":")).encode()


def _send_with_body(body: object) -> bytes:
    return _with("send", items=[{"to": "bob", "body": _b64(b"fine")}, {"to": "carol", "body": body}])


# A send as JSON, as it was before it was binary: refused, however its body is wrong.
_BAD_CASES.update(
    {
        "send-bad-base64-chars": _send_with_body("***="),
        "send-bad-base64-padding": _send_with_body("abc"),
        "send-padding-only": _send_with_body("===="),
        "send-padding-in-the-middle": _send_with_body("AA==AAAA"),
        "send-three-pads": _send_with_body("A==="),
        "send-base64-newline": _send_with_body("AAAA\nAAAA"),
        "send-base64-urlsafe": _send_with_body("-_-_"),
        "send-base64-non-ascii": _send_with_body("AAAé"),
        "send-empty-body": _send_with_body(""),
        "send-body-not-string": _send_with_body(1234),
        "send-body-too-long": _send_with_body(_b64(b"x" * (MAX_BODY + 1))),
        "send-item-not-object": _with("send", items=["bob"]),
        "send-item-missing-body": _with("send", items=[{"to": "bob"}]),
        "send-items-not-array": _with("send", items={"to": "bob", "body": "eA=="}),
        "send-recipient-not-string": _with("send", items=[{"to": 5, "body": "eA=="}]),
        "send-too-many-items": _with("send", items=[{"to": "b", "body": "eA=="}] * (MAX_ITEMS + 1)),
        "send-version-bool": _with("send", v=True),
        "send-utf8-bom": b"\xef\xbb\xbf" + _SEND_JSON,
        "send-utf16": _SEND_JSON.decode().encode("utf-16"),
        "send-utf16-le": _SEND_JSON.decode().encode("utf-16-le"),
        "send-duplicate-items": _SEND_JSON[:-1] + b',"items":[]}',
        "send-duplicate-to": b'{"v":2,"type":"send","id":1,"items":[{"to":"bob","to":"eve","body":"eA=="}]}',
        "send-item-as-array": b'{"v":2,"type":"send","id":1,"items":[[["to","bob"],["body","eA=="]]]}',
        "send-object-as-array": b'[["v",2],["type","send"],["id",1],["items",[{"to":"bob","body":"eA=="}]]]',
        "send-id-nan": b'{"v":2,"type":"send","id":NaN,"items":[{"to":"bob","body":"eA=="}]}',
    }
)


def _compact(payload: bytes) -> bytes:
    """``payload`` without JSON's optional spaces: the layout clients write, and the only
    one the relay's fast path reads itself (it leaves anything else to the strict decoder)."""
    return json.dumps(json.loads(payload), separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _plain_json(payload: bytes) -> bool:
    """UTF-8 JSON with no key twice: ``_compact`` keeps what makes it bad."""

    def unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        if len({key for key, _ in pairs}) != len(pairs):
            raise ValueError("a key twice")
        return dict(pairs)

    try:
        json.loads(payload.decode("utf-8"), object_pairs_hook=unique)
    except ValueError:  # UnicodeDecodeError too
        return False
    return True


# Every bad send again in the clients' own layout, so that the fast path meets each one.
_BAD_CASES.update(
    {
        f"{name}-compact": _compact(payload)
        for name, payload in list(_BAD_CASES.items())
        if name.startswith("send-") and _plain_json(payload) and _compact(payload) != payload
    }
)
_BAD_CASES.update(
    {
        "send-id-leading-zero-compact": b'{"v":2,"type":"send","id":007,"items":[{"to":"b","body":"eA=="}]}',
        "send-no-items-compact": b'{"v":2,"type":"send","id":1,"items":[]}',
        "send-nick-33-compact": b'{"v":2,"type":"send","id":1,"items":[{"to":"%b","body":"eA=="}]}'
        % (b"b" * 33),
    }
)


# The binary send and deliver: every field wrong, cut short, or followed by more.
_ONE = [(b"bob", b"body")]
_BAD_CASES.update(
    {
        "binary-send-json": json.dumps(_wire("send")).encode(),
        "binary-deliver-json": json.dumps(_wire("deliver")).encode(),
        "binary-send-tag-only": b"\x01",
        "binary-deliver-tag-only": b"\x02",
        "binary-send-version-1": _binary_send(1, _ONE, version=1),
        "binary-send-version-3": _binary_send(1, _ONE, version=3),
        "binary-deliver-version-1": b"\x02\x01" + _binary_deliver(b"bob", b"x")[2:],
        "binary-send-no-items": _binary_send(1, []),
        "binary-send-head-cut": _binary_send(1, _ONE)[:7],
        "binary-send-id-too-big": _binary_send(MAX_ID + 1, _ONE),
        "binary-send-id-max-u64": _binary_send(2**64 - 1, _ONE),
        "binary-send-empty-nick": _binary_send(1, [(b"", b"x")]),
        "binary-send-nick-33": _binary_send(1, [(b"b" * 33, b"x")]),
        "binary-send-nick-255": _binary_send(1, [(b"b" * 255, b"x")]),
        "binary-send-nick-space": _binary_send(1, [(b"b b", b"x")]),
        "binary-send-nick-newline": _binary_send(1, [(b"bob\n", b"x")]),
        "binary-send-nick-non-ascii": _binary_send(1, [("böb".encode(), b"x")]),
        "binary-send-nick-latin1": _binary_send(1, [(b"b\xf6b", b"x")]),
        "binary-send-empty-body": _binary_send(1, [(b"bob", b"")]),
        "binary-send-body-too-long": _binary_send(1, [(b"bob", b"x" * (MAX_BODY + 1))]),
        "binary-send-second-body-empty": _binary_send(1, [*_ONE, (b"carol", b"")]),
        "binary-send-body-cut": _binary_send(1, _ONE)[:-1],
        "binary-send-length-cut": _binary_send(1, _ONE)[:-6],
        "binary-send-nick-cut": _binary_send(1, _ONE)[: SEND_HEAD.size + 2],
        "binary-send-trailing-byte": _binary_send(1, _ONE) + b"\x00",
        "binary-send-trailing-nick": _binary_send(1, _ONE) + b"\x03bob",
        "binary-send-length-past-end": _binary_send(1, _ONE)[:-8] + BODY_LENGTH.pack(5) + b"body",
        "binary-send-too-many-items": _binary_send(1, [(b"b", b"x")] * (MAX_ITEMS + 1)),
        "binary-deliver-empty-body": _binary_deliver(b"alice", b""),
        "binary-deliver-no-nick": _binary_deliver(b"", b"x"),
        "binary-deliver-nick-33": _binary_deliver(b"a" * 33, b"x"),
        "binary-deliver-nick-invalid": _binary_deliver(b"eve!", b"x"),
        "binary-deliver-nick-non-ascii": _binary_deliver("é".encode(), b"x"),
        "binary-deliver-nick-past-end": b"\x02\x02\x09alice",
        "binary-deliver-body-too-long": _binary_deliver(b"alice", b"x" * (MAX_BODY + 1)),
    }
)


@pytest.mark.parametrize("payload", _BAD_CASES.values(), ids=_BAD_CASES.keys())
def test_malformed_payload_raises_remote_protocol_error(payload: bytes) -> None:
    # pytest.raises lets any other exception through, which fails the test.
    with pytest.raises(RemoteProtocolError):
        decode_message(payload)
    with pytest.raises(RemoteProtocolError):
        decode_for_relay(payload)


def test_relay_reads_a_send_as_routes_with_the_bodies_untouched() -> None:
    send = m.Send(9, (Envelope("bob", b"\x00" * MAX_BODY), Envelope("carol", b"\xff")))
    routes = decode_for_relay(encode_message(send))
    assert routes == Routes(9, (("bob", b"\x00" * MAX_BODY), ("carol", b"\xff")))
    assert decode_for_relay(encode_message(m.Ping())) == m.Ping()


def test_a_send_as_clients_write_it_takes_the_relays_fast_path() -> None:
    """Only speed depends on it, but a fast path nothing takes would go unnoticed."""
    payload = encode_send(7, [("bob", b"\x00body"), ("carol", b"c" * 100)])
    expected = Routes(7, (("bob", b"\x00body"), ("carol", b"c" * 100)))
    assert fast_routes(payload) == expected
    assert fast_routes(encode_message(m.Ping())) is None


def test_the_relays_prebuilt_frames_are_exactly_the_encoded_messages() -> None:
    peers = [PEER_BOB, PEER_CAROL]
    parts = [encode_peer(peer) for peer in peers]
    for more in (False, True):
        for prekeys in (0, 25, MAX_ID):
            welcome = encode_welcome(
                "alice",
                parts,
                rate=50.0,
                burst=0.25,
                byte_rate=1e6,
                byte_burst=3.5,
                prekeys=prekeys,
                more=more,
                mailbox_ttl=3600.0,
                relay_id=RELAY_ID,
            )
            expected = m.Welcome("alice", 50.0, 0.25, 1e6, 3.5, prekeys, tuple(peers), more, 3600.0, RELAY_ID)
            assert welcome == encode_message(expected)
        assert encode_directory(parts, more=more) == encode_message(m.Directory(tuple(peers), more))
    alone = encode_welcome("alice", [], rate=1e9, burst=3.0, byte_rate=1e-9, byte_burst=1e300, prekeys=1)
    assert alone == encode_message(m.Welcome("alice", 1e9, 3.0, 1e-9, 1e300, 1, ()))
    bad_counts: list[Any] = [-1, True, 1.0, MAX_ID + 1]
    for bad in bad_counts:  # what the dataclass refuses, so does the fast path
        with pytest.raises(LocalProtocolError):
            encode_welcome("alice", [], rate=1.0, burst=1.0, byte_rate=1.0, byte_burst=1.0, prekeys=bad)
    body = b"\x00ciphertext\xff"
    deliver = deliver_head("alice") + body
    assert deliver == encode_message(m.Deliver("alice", body))
    with pytest.raises(LocalProtocolError):
        deliver_head("a" * 256)  # a nick's length must fit its byte
    for routed in (
        m.Routed(0, ()),
        m.Routed(7, ("bob", "c.d-e_9"), missing=("carol",)),
        m.Routed(MAX_ID, (), refused=("bob", "carol")),
        m.Routed(3, (), ("dave",), full=("erin",)),
    ):
        general = json.dumps(
            {
                "v": PROTOCOL_VERSION,
                "type": "routed",
                "id": routed.id,
                "delivered": list(routed.delivered),
                "queued": list(routed.queued),
                "missing": list(routed.missing),
                "full": list(routed.full),
                "refused": list(routed.refused),
            },
            separators=(",", ":"),
        ).encode()
        assert encode_message(routed) == general
        assert decode_message(general) == routed


def test_version_error_names_the_version() -> None:
    with pytest.raises(RemoteProtocolError, match=r"version 1 \(this is version 2\)"):
        decode_message(_with("bye", v=1))


def test_unknown_type_name_is_truncated_in_the_error() -> None:
    with pytest.raises(RemoteProtocolError) as caught:
        decode_message(_with("bye", type="x" * 10_000))
    assert len(str(caught.value)) < 200


# JSON can carry lone surrogates ("\ud800") that UTF-8 cannot: a decoded message must
# re-encode, and a terminal must be able to print its text.
@pytest.mark.parametrize(
    "payload",
    [
        b'{"v":2,"type":"bye","reason":"\\ud800"}',
        b'{"v":2,"type":"error","code":"x","text":"a\\udfffb"}',
    ],
    ids=["bye-reason", "error-text"],
)
def test_lone_surrogate_in_text_is_rejected(payload: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        decode_message(payload)


# -- building bad messages locally is our bug: LocalProtocolError -------------------------

# The type ignores mark wrong types passed on purpose: an untyped caller can pass them, so
# the messages must refuse them at run time too.
_LOCAL_BAD: dict[str, Callable[[], object]] = {
    "nick-empty": lambda: m.PeerLeft(""),
    "nick-33": lambda: m.PeerLeft("a" * 33),
    "nick-space": lambda: m.Register("a b", KEY_A, KEY_B, b"p", SESSION_PROOF, SIGNED),
    "nick-escape": lambda: m.Welcome("a\x1b", 50.0, 200.0, 1e6, 4e6, 0, ()),
    "key-as-bytes": lambda: m.Challenge(bytes(KEY_A), b"c" * 32),  # type: ignore[arg-type]
    "challenge-31": lambda: m.Challenge(KEY_A, b"c" * 31),
    "challenge-str": lambda: m.Challenge(KEY_A, "c" * 32),  # type: ignore[arg-type]
    "proof-empty": lambda: m.Register("alice", KEY_A, KEY_B, b"", SESSION_PROOF, SIGNED),
    "proof-too-long": lambda: m.Register(
        "alice", KEY_A, KEY_B, b"p" * (MAX_PROOF + 1), SESSION_PROOF, SIGNED
    ),
    "session-proof-empty": lambda: m.Register("alice", KEY_A, KEY_B, b"p", b"", SIGNED),
    "session-proof-short": lambda: m.Register("alice", KEY_A, KEY_B, b"p", SESSION_PROOF[:-1], SIGNED),
    "register-unsigned": lambda: m.Register(
        "alice",
        KEY_A,
        KEY_B,
        b"p",
        SESSION_PROOF,
        ONE_TIME[0],  # type: ignore[arg-type]
    ),
    "envelope-empty-body": lambda: Envelope("bob", b""),
    "envelope-body-too-long": lambda: Envelope("bob", b"x" * (MAX_BODY + 1)),
    "send-no-items": lambda: m.Send(1, ()),
    "send-negative-id": lambda: m.Send(-1, (Envelope("bob", b"x"),)),
    "send-bool-id": lambda: m.Send(True, (Envelope("bob", b"x"),)),
    "send-id-too-big": lambda: m.Send(MAX_ID + 1, (Envelope("bob", b"x"),)),
    "send-items-list": lambda: m.Send(1, [Envelope("bob", b"x")]),  # type: ignore[arg-type]
    "routed-bad-nick": lambda: m.Routed(1, ("no one",)),
    "routed-bytes-nick": lambda: m.Routed(1, (), missing=(b"bob",)),  # type: ignore[arg-type]
    "routed-int-nick": lambda: m.Routed(1, (), refused=(5,)),  # type: ignore[arg-type]
    "routed-lists": lambda: m.Routed(1, ["bob"], missing=[], refused=[]),  # type: ignore[arg-type]
    "routed-too-many": lambda: m.Routed(1, ("bob",) * (MAX_ITEMS + 1)),
    "welcome-not-peer": lambda: m.Welcome("alice", 50.0, 200.0, 1e6, 4e6, 0, ("bob",)),  # type: ignore[arg-type]
    "joined-not-peer": lambda: m.PeerJoined("bob"),  # type: ignore[arg-type]
    "peer-key-bytes": lambda: PeerInfo("bob", KEY_A, bytes(KEY_B)),  # type: ignore[arg-type]
    "error-code": lambda: m.Error("Bad Code", "text"),
    "error-text-long": lambda: m.Error("code", "t" * (MAX_REASON + 1)),
    "bye-not-str": lambda: m.Bye(5),  # type: ignore[arg-type]
    "prekey-id-negative": lambda: OneTimePrekey(-1, KEY_A),
    "prekey-id-too-big": lambda: OneTimePrekey(MAX_PREKEY_ID + 1, KEY_A),
    "prekey-id-bool": lambda: OneTimePrekey(True, KEY_A),
    "prekey-key-bytes": lambda: OneTimePrekey(1, bytes(KEY_A)),  # type: ignore[arg-type]
    "signed-id-too-big": lambda: SignedPrekey(MAX_PREKEY_ID + 1, KEY_A, SIGNATURE),
    "signature-63": lambda: SignedPrekey(1, KEY_A, SIGNATURE[1:]),
    "signature-65": lambda: SignedPrekey(1, KEY_A, SIGNATURE + b"s"),
    "signature-str": lambda: SignedPrekey(1, KEY_A, "s" * 64),  # type: ignore[arg-type]
    "bundle-two-one-time": lambda: Bundle("bob", KEY_A, SIGNED, ONE_TIME[:2]),
    "bundle-one-time-list": lambda: Bundle("bob", KEY_A, SIGNED, [ONE_TIME[0]]),  # type: ignore[arg-type]
    "bundle-unsigned": lambda: Bundle("bob", KEY_A, ONE_TIME[0], ()),  # type: ignore[arg-type]
    "bundle-bad-nick": lambda: Bundle("bob!", KEY_A, SIGNED, ()),
    "publish-duplicate-ids": lambda: m.Publish(SIGNED, (OneTimePrekey(1, KEY_A), OneTimePrekey(1, KEY_B))),
    "publish-too-many": lambda: m.Publish(
        SIGNED, tuple(OneTimePrekey(i, KEY_A) for i in range(MAX_PUBLISH + 1))
    ),
    "publish-unsigned": lambda: m.Publish(ONE_TIME[0], ()),  # type: ignore[arg-type]
    "publish-replace-int": lambda: m.Publish(SIGNED, (), replace=1),  # type: ignore[arg-type]
    "prekeys-negative": lambda: m.Prekeys(-1),
    "prekeys-bool": lambda: m.Prekeys(True),
    "fetch-empty": lambda: m.Fetch(()),
    "fetch-duplicate": lambda: m.Fetch(("bob", "carol", "bob")),
    "fetch-too-many": lambda: m.Fetch(tuple(f"n{i}" for i in range(MAX_FETCH + 1))),
    "fetch-bad-nick": lambda: m.Fetch(("bob", "no one")),
    "fetch-list": lambda: m.Fetch(["bob"]),  # type: ignore[arg-type]
    "bundles-too-many": lambda: m.Bundles((), tuple(f"n{i}" for i in range(MAX_FETCH + 1))),
    "bundles-too-many-in-all": lambda: m.Bundles((BUNDLE_BOB,), tuple(f"n{i}" for i in range(MAX_FETCH))),
    "bundles-bad-missing": lambda: m.Bundles((), ("no one",)),
    "bundles-not-bundle": lambda: m.Bundles(("bob",), ()),  # type: ignore[arg-type]
    "welcome-relay-id-short": lambda: m.Welcome("alice", 50.0, 200.0, 1e6, 4e6, 0, (), relay_id=b"\x07" * 15),
    "welcome-ttl-zero": lambda: m.Welcome("alice", 50.0, 200.0, 1e6, 4e6, 0, (), mailbox_ttl=0.0),
    "welcome-prekeys-negative": lambda: m.Welcome("alice", 50.0, 200.0, 1e6, 4e6, -1, ()),
    "welcome-prekeys-float": lambda: m.Welcome("alice", 50.0, 200.0, 1e6, 4e6, 1.0, ()),  # type: ignore[arg-type]
    "register-room-no-hash": lambda: m.Register("alice", KEY_A, KEY_B, b"p", SESSION_PROOF, SIGNED, ("ops",)),
    "register-room-uppercase": lambda: m.Register("a", KEY_A, KEY_B, b"p", SESSION_PROOF, SIGNED, ("#Ops",)),
    "register-room-repeated": lambda: m.Register(
        "alice", KEY_A, KEY_B, b"p", SESSION_PROOF, SIGNED, ("#a", "#b", "#a")
    ),
    "register-too-many-rooms": lambda: m.Register(
        "alice", KEY_A, KEY_B, b"p", SESSION_PROOF, SIGNED, tuple(f"#r{i}" for i in range(MAX_ROOMS + 1))
    ),
    "register-rooms-list": lambda: m.Register(
        "alice",
        KEY_A,
        KEY_B,
        b"p",
        SESSION_PROOF,
        SIGNED,
        ["#ops"],  # type: ignore[arg-type]
    ),
    "register-rooms-str": lambda: m.Register(
        "alice",
        KEY_A,
        KEY_B,
        b"p",
        SESSION_PROOF,
        SIGNED,
        "#ops",  # type: ignore[arg-type]
    ),
    "register-room-bytes": lambda: m.Register(
        "alice",
        KEY_A,
        KEY_B,
        b"p",
        SESSION_PROOF,
        SIGNED,
        (b"#ops",),  # type: ignore[arg-type]
    ),
    "join-no-hash": lambda: m.Join("ops"),
    "join-33": lambda: m.Join("#" + "a" * 33),
    "join-not-str": lambda: m.Join(5),  # type: ignore[arg-type]
    "part-empty": lambda: m.Part(""),
    "entered-not-peer": lambda: m.Entered("#ops", Member("bob", KEY_A)),  # type: ignore[arg-type]
    "entered-bad-room": lambda: m.Entered("#o\nps", PEER_BOB),
    "parted-bad-nick": lambda: m.Parted("#ops", "no one"),
    "member-bad-nick": lambda: Member("no one", KEY_A),
    "member-key-bytes": lambda: Member("bob", bytes(KEY_A)),  # type: ignore[arg-type]
    "members-bad-room": lambda: m.Members("lobby", (), ()),
    "members-peer-in-away": lambda: m.Members("#ops", (PEER_BOB,), (Member("bob", KEY_A),)),
    "members-away-twice": lambda: m.Members("#ops", (), (Member("bob", KEY_A), Member("bob", KEY_C))),
    "members-not-member": lambda: m.Members("#ops", (), (PEER_BOB,)),  # type: ignore[arg-type]
    "members-away-list": lambda: m.Members("#ops", (), [Member("bob", KEY_A)]),  # type: ignore[arg-type]
    "members-more-int": lambda: m.Members("#ops", (), (), more=1),  # type: ignore[arg-type]
}


@pytest.mark.parametrize("build", _LOCAL_BAD.values(), ids=_LOCAL_BAD.keys())
def test_building_invalid_message_raises_local_protocol_error(build: Callable[[], object]) -> None:
    with pytest.raises(LocalProtocolError):
        build()


# -- properties ---------------------------------------------------------------------------

_FIELD_NAMES = sorted(
    {"nick", "identity_key", "session_key", "proof", "session_proof", "relay_key", "challenge", "peers"}
    | {"peer", "id"}
    | {"items", "from", "body", "delivered", "missing", "code", "text", "reason", "to"}
    | {"signed_prekey", "one_time", "signature", "key", "count", "nicks", "bundles", "prekeys"}
)
_NICK_ALPHABET = string.ascii_letters + string.digits + "_.-"

_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=20)
    | st.text(_NICK_ALPHABET, min_size=1, max_size=33)
    | st.binary(max_size=40).map(_b64)
    | st.binary(min_size=32, max_size=32).map(_b64)
)
_json_values = st.recursive(
    _scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(_FIELD_NAMES) | st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=12,
)
_nicks = st.text(_NICK_ALPHABET, min_size=1, max_size=32)
_peer_objects = st.fixed_dictionaries(
    {
        "nick": _nicks,
        "identity_key": st.binary(min_size=32, max_size=32).map(_b64),
        "session_key": st.binary(min_size=32, max_size=32).map(_b64),
    }
)
_prekey_ids = st.integers(min_value=-1, max_value=MAX_PREKEY_ID + 1)
_one_time_objects = st.fixed_dictionaries(
    {"id": _prekey_ids, "key": st.binary(min_size=31, max_size=33).map(_b64)}
)
_signed_objects = st.fixed_dictionaries(
    {
        "id": _prekey_ids,
        "key": st.binary(min_size=32, max_size=32).map(_b64),
        "signature": st.binary(min_size=SIGNATURE_SIZE - 1, max_size=SIGNATURE_SIZE + 1).map(_b64),
    }
)
_bundle_objects = st.fixed_dictionaries(
    {
        "nick": _nicks,
        "identity_key": st.binary(min_size=32, max_size=32).map(_b64),
        "signed_prekey": _signed_objects,
        "one_time": st.lists(_one_time_objects, max_size=2),
    }
)
# A room name, or nearly one.
_rooms = st.sampled_from(["#lobby", "#ops", "ops", "#", "#Ops"]) | st.text("#az09_.- ", max_size=34)
# A plausible value for each field, so that many generated messages get past the shape
# checks and exercise the per-field validation (and sometimes decode).
_PLAUSIBLE: dict[str, st.SearchStrategy[Any]] = {
    "nick": _nicks,
    "from": _nicks,
    "to": _nicks,
    "identity_key": st.binary(min_size=32, max_size=32).map(_b64),
    "session_key": st.binary(min_size=32, max_size=32).map(_b64),
    "relay_key": st.binary(min_size=32, max_size=32).map(_b64),
    "challenge": st.binary(min_size=31, max_size=33).map(_b64),
    "relay_id": st.binary(min_size=15, max_size=17).map(_b64),
    "proof": st.binary(max_size=80).map(_b64),
    "session_proof": st.binary(min_size=SESSION_PROOF_SIZE - 1, max_size=SESSION_PROOF_SIZE + 1).map(_b64),
    "body": st.binary(max_size=80).map(_b64),
    "peers": st.lists(_peer_objects, max_size=3),
    "peer": _peer_objects,
    "id": st.integers(min_value=-1, max_value=MAX_ID + 1),
    "items": st.lists(
        st.fixed_dictionaries({"to": _nicks, "body": st.binary(max_size=40).map(_b64)}), max_size=3
    ),
    "delivered": st.lists(_nicks, max_size=3),
    "missing": st.lists(_nicks, max_size=3),
    "refused": st.lists(_nicks, max_size=3),
    "queued": st.lists(_nicks, max_size=3),
    "full": st.lists(_nicks, max_size=3),
    "seq": st.integers(min_value=-1, max_value=MAX_ID + 1),
    "queued_at": st.one_of(st.floats(), st.integers(min_value=-1, max_value=2**41)),
    "code": st.text("abcxyz_A ", max_size=33),
    "text": st.text(max_size=30),
    "reason": st.one_of(st.text(max_size=30), st.sampled_from(EXPIRED_REASONS)),
    "password": st.booleans(),
    "replace": st.booleans(),
    "more": st.booleans(),
    "rate": st.one_of(st.floats(), st.integers(min_value=-1, max_value=10**400)),
    "burst": st.one_of(st.floats(), st.integers(min_value=-1, max_value=10**400)),
    "byte_rate": st.one_of(st.floats(), st.integers(min_value=-1, max_value=10**400)),
    "byte_burst": st.one_of(st.floats(), st.integers(min_value=-1, max_value=10**400)),
    "mailbox_ttl": st.one_of(st.floats(), st.integers(min_value=-1, max_value=10**400)),
    "prekeys": st.integers(min_value=-1, max_value=MAX_ID + 1),
    "count": st.integers(min_value=-1, max_value=MAX_ID + 1),
    "signed_prekey": _signed_objects,
    "one_time": st.lists(_one_time_objects, max_size=3),
    "nicks": st.lists(st.sampled_from(["bob", "carol", "no one"]) | _nicks, max_size=3),
    "bundles": st.lists(_bundle_objects, max_size=2),
    "room": _rooms,
    "rooms": st.lists(_rooms, max_size=4),
    "away": st.lists(
        st.fixed_dictionaries(
            {"nick": _nicks, "identity_key": st.binary(min_size=31, max_size=33).map(_b64)}
        ),
        max_size=3,
    ),
}


def _fields_of(name: str) -> list[str]:
    return [field for field in _wire(name) if field not in ("v", "type")]


_message_like = st.one_of(
    *[
        st.builds(
            lambda name, fields, extra, version: {"v": version, "type": name, **fields, **extra},
            st.just(name),
            st.fixed_dictionaries(
                {
                    field: st.one_of(_PLAUSIBLE[field], _PLAUSIBLE[field], _json_values)
                    for field in _fields_of(name)
                }
            ),
            st.dictionaries(st.sampled_from(_FIELD_NAMES), _json_values, max_size=1),
            st.sampled_from([2, 2, 2, 2, 0, 1, 3, True, "2"]),
        )
        for name in sorted(m.MESSAGE_TYPES)
    ],
    st.builds(
        lambda version, kind, fields: {"v": version, "type": kind, **fields},
        st.just(PROTOCOL_VERSION) | _scalars,
        st.sampled_from(sorted(m.MESSAGE_TYPES)) | st.text(max_size=8),
        st.dictionaries(st.sampled_from(_FIELD_NAMES), _json_values, max_size=5),
    ),
)


def _decodes_or_refuses(payload: bytes) -> None:
    """The strict decoder either refuses ``payload`` or gives a message that round-trips;
    the relay's decoder refuses and accepts exactly the same."""
    try:
        message = decode_message(payload)
    except RemoteProtocolError:
        with pytest.raises(RemoteProtocolError):
            decode_for_relay(payload)
        return
    assert isinstance(message, tuple(m.MESSAGE_TYPES.values()))
    assert decode_message(encode_message(message)) == message
    relayed = decode_for_relay(payload)
    if isinstance(message, m.Send):
        assert relayed == Routes.of(message)  # the same recipients and bytes
    else:
        assert relayed == message


@settings(max_examples=400)
@given(st.one_of(_json_values, _message_like), st.booleans())
def test_arbitrary_json_decodes_or_raises_remote_protocol_error(value: object, ascii_only: bool) -> None:
    _decodes_or_refuses(json.dumps(value, ensure_ascii=ascii_only).encode("utf-8"))


@settings(max_examples=600)
@given(st.binary(max_size=14), st.integers(min_value=0, max_value=20), st.binary(max_size=3))
def test_any_body_in_a_send_is_read_alike_by_relay_and_client(body: bytes, length: int, after: bytes) -> None:
    """A body and a length field that may not agree, and bytes after it: both decoders
    read the same items, or both refuse."""
    head = _binary_send(1, _ONE)
    _decodes_or_refuses(head + b"\x05carol" + BODY_LENGTH.pack(length) + body + after)
    _decodes_or_refuses(head + b"\x05carol" + BODY_LENGTH.pack(len(body)) + body + after)


@settings(max_examples=400)
@given(
    st.sampled_from([encode_message(message) for message in EXAMPLES.values()]),
    st.integers(min_value=0),
    st.integers(min_value=1, max_value=255),
)
def test_flipped_byte_decodes_or_raises_remote_protocol_error(
    encoded: bytes, position: int, mask: int
) -> None:
    index = position % len(encoded)
    mutated = encoded[:index] + bytes([encoded[index] ^ mask]) + encoded[index + 1 :]
    _decodes_or_refuses(mutated)


_SEND_SPLICES = [b"\x00", b"\x01", b"\x02", b"\x20", b"\xff", b"\x00\x00\x00\x01", b"a", b"{", b"\x03bob"]


@settings(max_examples=600)
@given(
    st.sampled_from([0, MAX_ID, MAX_ID + 1, 10**19 - 1, 10**19]) | st.integers(min_value=0),
    st.lists(
        st.tuples(
            st.text(alphabet="ab_.-9", min_size=1, max_size=3) | st.sampled_from(["n" * 32, "n" * 33, "né"]),
            st.binary(max_size=7) | st.sampled_from([MAX_BODY - 1, MAX_BODY, MAX_BODY + 1]).map(bytes),
        ),
        min_size=1,
        max_size=4,
    ),
    st.integers(min_value=0),
    st.sampled_from([b"", *_SEND_SPLICES]),
    st.integers(min_value=0, max_value=3),
)
def test_a_send_in_the_clients_form_is_read_alike_by_both_decoders(
    ident: int, items: list[tuple[str, bytes]], position: int, splice: bytes, cut: int
) -> None:
    """The relay's fast path sees a send as clients write it, with ids, nicks and bodies
    at and past the limits, repeated recipients, and a length byte or stray bytes spliced
    in anywhere (replacing up to three bytes): it takes exactly what the strict decoder
    takes, with the same recipients and bodies. (Too many items: ``_BAD_CASES``.)"""
    if ident >= 2**64:
        return  # not a binary id at all
    payload = _binary_send(ident, [(to.encode(), body) for to, body in items])
    index = position % (len(payload) + 1)
    mutated = payload[:index] + splice + payload[index + (cut if splice else 0) :]
    _decodes_or_refuses(mutated)
    valid = ident <= MAX_ID and all(is_valid_nick(to) and 0 < len(body) <= MAX_BODY for to, body in items)
    if mutated == payload and valid:
        assert fast_routes(payload) is not None


@settings(max_examples=200)
@given(
    st.sampled_from([encode_message(message) for message in EXAMPLES.values()]),
    st.integers(min_value=0),
    st.integers(min_value=0),
)
def test_truncated_message_raises_remote_protocol_error(encoded: bytes, start: int, length: int) -> None:
    begin = start % len(encoded)
    piece = encoded[begin : begin + length % len(encoded)]
    if piece == encoded:
        return
    if begin == 0 and encoded[0] in (SEND_TAG, DELIVER_TAG):
        # A binary message ends where its frame does (the frame's length says where): a
        # deliver cut short is one with a shorter body, a send cut after an item one with
        # fewer items. Which the AEAD and the routed answer catch, not the decoder.
        _decodes_or_refuses(piece)
        return
    with pytest.raises(RemoteProtocolError):
        decode_message(piece)
