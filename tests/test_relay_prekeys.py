"""Prekey bundles in the relay: published, kept (also while their owners are away), handed
out with each one-time prekey once, within bounds. The logic frame by frame against
``RelayCore``; then over real sockets, and through a relay that lies about bundles."""

from __future__ import annotations

import base64
import json

import nacl.utils
import pytest
from nacl.public import PrivateKey, PublicKey

from e2echat.client.core import MessageReceived
from e2echat.crypto.identity import registration_proof
from e2echat.errors import RemoteProtocolError
from e2echat.relay.core import Close, ConnId, RelayCore
from e2echat.relay.limits import Limits
from e2echat.wire import messages as m
from e2echat.wire.codec import decode_message, encode_message
from e2echat.wire.framing import encode_frame
from e2echat.wire.grammar import FETCH_CHARGE, MAX_FETCH, MAX_PREKEY_ID, MAX_PUBLISH
from e2echat.wire.objects import Bundle, OneTimePrekey, SignedPrekey

from hostile import HostileRelay, same_one_time_prekey
from relay_frames import Outgoing, spelled_out
from support import RawClient, peers, running, running_relay


def _frame(message: m.Message) -> bytes:
    return encode_frame(encode_message(message))


def _raw_frame(obj: object) -> bytes:
    """A frame of any JSON, for what the dataclasses would refuse to build."""
    return encode_frame(json.dumps(obj, separators=(",", ":")).encode())


def _key() -> PublicKey:
    return PublicKey(nacl.utils.random(32))


def _signed(ident: int = 1) -> SignedPrekey:
    # The relay never checks the signature, so any 64 bytes do here.
    return SignedPrekey(ident, _key(), nacl.utils.random(64))


def _one_time(*ids: int) -> tuple[OneTimePrekey, ...]:
    return tuple(OneTimePrekey(ident, _key()) for ident in ids)


def _register_json(
    relay: RelayCore, conn: ConnId, nick: str, identity: PrivateKey, signed: SignedPrekey
) -> dict[str, object]:
    """Connect, and make the register that answers the challenge: as JSON, to spoil."""
    (challenge,) = spelled_out(relay.connect(conn, 0.0))
    assert isinstance(challenge, Outgoing) and isinstance(challenge.message, m.Challenge)
    session = PrivateKey.generate()
    proofs = registration_proof(identity, session, challenge.message)
    register = m.Register(nick, identity.public_key, session.public_key, *proofs, signed)
    as_json: dict[str, object] = json.loads(encode_message(register))
    return as_json


def _joining(
    relay: RelayCore,
    conn: ConnId,
    nick: str,
    identity: PrivateKey | None = None,
    signed: SignedPrekey | None = None,
) -> list[Outgoing | Close]:
    """Connect and register ``nick`` (with ``identity`` and ``signed``, or new ones): all
    the relay wrote, its welcome first."""
    register = _register_json(relay, conn, nick, identity or PrivateKey.generate(), signed or _signed())
    actions = spelled_out(relay.receive_data(conn, _raw_frame(register), 0.0))
    assert isinstance(actions[0], Outgoing) and isinstance(actions[0].message, m.Welcome)
    return actions


def _register(
    relay: RelayCore,
    conn: ConnId,
    nick: str,
    identity: PrivateKey | None = None,
    signed: SignedPrekey | None = None,
) -> m.Welcome:
    """Connect and register ``nick``: its welcome."""
    welcome = _joining(relay, conn, nick, identity, signed)[0]
    assert isinstance(welcome, Outgoing) and isinstance(welcome.message, m.Welcome)
    return welcome.message


def _publish(
    relay: RelayCore,
    conn: ConnId,
    signed: SignedPrekey,
    one_time: tuple[OneTimePrekey, ...],
    *,
    replace: bool = False,
) -> int:
    """Publish; the count the relay answers with (its only answer)."""
    publish = m.Publish(signed, one_time, replace=replace)
    (answer,) = spelled_out(relay.receive_data(conn, _frame(publish), 0.0))
    assert isinstance(answer, Outgoing) and answer.conn == conn and isinstance(answer.message, m.Prekeys)
    return answer.message.count


def test_a_fetch_is_charged_for_each_nick_it_names() -> None:
    """Handing out a bundle costs the relay far more than the bytes that asked for it: a
    fetch pays FETCH_CHARGE a nick against the byte rate, so a sender cannot make the
    relay hand out (and use up) thousands of one-time prekeys a second. Control: a fetch
    naming few nicks within the same budget is answered."""
    limits = Limits(byte_rate=10 * FETCH_CHARGE, byte_burst=40 * FETCH_CHARGE)
    relay = RelayCore(limits)
    _register(relay, 1, "asker")
    for conn in range(2, 12):
        _register(relay, conn, f"n{conn}")
    answer, _ = _fetch(relay, 1, "n2")
    assert [bundle.nick for bundle in answer.bundles] == ["n2"]
    many = tuple(f"x{i}" for i in range(30))
    written = spelled_out(relay.receive_data(1, _frame(m.Fetch(many)), 0.0))
    assert not any(isinstance(out, Outgoing) and isinstance(out.message, m.Bundles) for out in written)


def _fetch(relay: RelayCore, conn: ConnId, *nicks: str) -> tuple[m.Bundles, list[Outgoing | Close]]:
    """Fetch; the answer, and whatever else the relay wrote (notices to owners)."""
    answer, *rest = spelled_out(relay.receive_data(conn, _frame(m.Fetch(nicks)), 0.0))
    assert isinstance(answer, Outgoing) and answer.conn == conn and isinstance(answer.message, m.Bundles)
    return answer.message, rest


def _one_time_ids(relay: RelayCore, conn: ConnId, nick: str, times: int) -> list[int | None]:
    """Fetch ``nick``'s bundle ``times`` times: the one-time prekey id in each (or None)."""
    ids: list[int | None] = []
    for _ in range(times):
        answer, _ = _fetch(relay, conn, nick)
        (bundle,) = answer.bundles
        ids.append(bundle.one_time[0].id if bundle.one_time else None)
    return ids


def _error(conn: ConnId, actions: list[Outgoing | Close]) -> m.Error:
    error, close = actions[:2]
    assert isinstance(error, Outgoing) and error.conn == conn and isinstance(error.message, m.Error)
    assert isinstance(close, Close) and close.conn == conn
    return error.message


# -- publish and fetch -----------------------------------------------------------------------------


def test_each_one_time_prekey_is_handed_out_once_oldest_first_then_none() -> None:
    relay = RelayCore()
    alice = PrivateKey.generate()
    _register(relay, 1, "alice", alice)
    _register(relay, 2, "bob")
    signed, one_time = _signed(7), _one_time(10, 11, 12)
    assert _publish(relay, 1, signed, one_time) == 3
    answer, _ = _fetch(relay, 2, "alice")
    assert answer == m.Bundles((Bundle("alice", alice.public_key, signed, one_time[:1]),), ())
    assert _one_time_ids(relay, 2, "alice", 3) == [11, 12, None]
    # Out of one-time prekeys, the bundle still has the identity and signed prekeys.
    answer, _ = _fetch(relay, 2, "alice")
    assert answer == m.Bundles((Bundle("alice", alice.public_key, signed, ()),), ())
    assert relay.prekeys.count("alice") == 0


def test_a_fetch_answers_each_nick_once_and_never_the_askers_own() -> None:
    """Nobody unknown and not oneself: those are missing. Whoever registered has a bundle,
    if not yet a one-time prekey: carol never published."""
    relay = RelayCore()
    carol, carol_signed = PrivateKey.generate(), _signed(5)
    _register(relay, 1, "alice")
    _register(relay, 2, "bob")
    _register(relay, 3, "carol", carol, carol_signed)
    _publish(relay, 1, _signed(), _one_time(1))
    _publish(relay, 2, _signed(), _one_time(1))
    answer, rest = _fetch(relay, 2, "nobody", "alice", "bob", "carol")
    assert [bundle.nick for bundle in answer.bundles] == ["alice", "carol"]
    assert answer.bundles[1] == Bundle("carol", carol.public_key, carol_signed, ())
    assert answer.missing == ("nobody", "bob")
    # alice is out of them (and told); carol had none to hand out, so nothing to tell her
    assert rest == [Outgoing(1, m.Prekeys(0))]
    assert relay.prekeys.count("bob") == 1  # asking for oneself uses nothing up


def test_a_publish_replaces_the_signed_prekey_and_adds_only_new_one_time_ids() -> None:
    relay = RelayCore()
    _register(relay, 1, "alice")
    _register(relay, 2, "bob")
    first, second = _one_time(1, 2), _one_time(2, 3)
    assert _publish(relay, 1, _signed(1), first) == 2
    newer = _signed(2)
    assert _publish(relay, 1, newer, second) == 3  # id 2 is held already: ignored
    bundles = [_fetch(relay, 2, "alice")[0].bundles[0] for _ in range(3)]
    assert [bundle.signed_prekey for bundle in bundles] == [newer] * 3
    assert [bundle.one_time[0] for bundle in bundles] == [first[0], first[1], second[1]]
    assert _publish(relay, 1, newer, ()) == 0  # a signed prekey alone, rotated


def test_a_publish_that_replaces_drops_every_one_time_prekey_held_before() -> None:
    """alice lost the private halves of what the relay holds (sessions.db moved away): a
    publish with ``replace`` leaves only its own one-time prekeys to hand out, even the ids
    held before."""
    relay = RelayCore()
    _register(relay, 1, "alice")
    _register(relay, 2, "bob")
    assert _publish(relay, 1, _signed(), _one_time(1, 2, 3)) == 3
    fresh = _one_time(3, 9)
    assert _publish(relay, 1, _signed(), fresh, replace=True) == 2
    assert [_fetch(relay, 2, "alice")[0].bundles[0].one_time for _ in range(3)] == [fresh[:1], fresh[1:], ()]
    assert _publish(relay, 1, _signed(), (), replace=True) == 0


def test_one_time_prekeys_beyond_the_limit_push_out_the_oldest() -> None:
    relay = RelayCore(Limits(one_time_prekeys=3))
    _register(relay, 1, "alice")
    _register(relay, 2, "bob")
    assert _publish(relay, 1, _signed(), _one_time(1, 2, 3, 4, 5)) == 3
    assert _publish(relay, 1, _signed(), _one_time(6)) == 3
    assert _one_time_ids(relay, 2, "alice", 4) == [4, 5, 6, None]


# -- who owns a bundle, and for how long ----------------------------------------------------------


def test_a_bundle_stays_when_its_owner_leaves_and_the_welcome_counts_it() -> None:
    relay = RelayCore()
    alice = PrivateKey.generate()
    assert _register(relay, 1, "alice", alice).prekeys == 0
    _register(relay, 2, "bob")
    assert _publish(relay, 1, _signed(), _one_time(1, 2, 3)) == 3
    relay.disconnect(1)
    assert "alice" not in relay.online
    assert _one_time_ids(relay, 2, "alice", 1) == [1]  # handed out while she is away
    assert _register(relay, 3, "alice", alice).prekeys == 2


def test_a_nick_registered_with_another_identity_key_loses_the_old_bundle() -> None:
    relay = RelayCore()
    alice = PrivateKey.generate()
    _register(relay, 1, "alice", alice)
    _register(relay, 2, "bob")
    _publish(relay, 1, _signed(), _one_time(1, 2))
    relay.disconnect(1)
    # Someone else, or alice with a new key: the bundle is the newcomer's, from its register.
    other, other_signed = PrivateKey.generate(), _signed(9)
    assert _register(relay, 3, "alice", other, other_signed).prekeys == 0
    answer, _ = _fetch(relay, 2, "alice")
    assert answer == m.Bundles((Bundle("alice", other.public_key, other_signed, ()),), ())
    relay.disconnect(3)
    signed = _signed(10)
    assert _register(relay, 4, "alice", alice, signed).prekeys == 0  # gone for good
    answer, _ = _fetch(relay, 2, "alice")
    assert answer == m.Bundles((Bundle("alice", alice.public_key, signed, ()),), ())
    assert len(relay.prekeys) == 2  # alice's and bob's


def test_someone_who_never_published_leaves_the_bundle_of_their_register() -> None:
    relay = RelayCore()
    alice, signed = PrivateKey.generate(), _signed(4)
    _register(relay, 1, "alice", alice, signed)
    relay.disconnect(1)
    assert relay.prekeys.count("alice") == 0 and len(relay.prekeys) == 1
    _register(relay, 2, "bob")
    answer, rest = _fetch(relay, 2, "alice")
    assert answer == m.Bundles((Bundle("alice", alice.public_key, signed, ()),), ())
    assert rest == []


def test_a_fetch_right_after_someone_registers_gets_their_bundle() -> None:
    """The race a register's signed prekey closes: bob hears alice join and asks for her
    bundle before her first publish reaches the relay. He gets it, with no one-time
    prekey; her publish then replaces the signed prekey and adds the one-time ones."""
    relay = RelayCore()
    _register(relay, 1, "bob")
    alice, signed = PrivateKey.generate(), _signed(3)
    joined = _joining(relay, 2, "alice", alice, signed)
    assert [(item.conn, type(item.message)) for item in joined if isinstance(item, Outgoing)] == [
        (2, m.Welcome),
        (2, m.Members),
        (1, m.PeerJoined),
        (1, m.Entered),  # new in #lobby too
    ]
    answer, rest = _fetch(relay, 1, "alice")
    assert answer == m.Bundles((Bundle("alice", alice.public_key, signed, ()),), ())
    assert rest == []
    newer, one_time = _signed(4), _one_time(1)
    assert _publish(relay, 2, newer, one_time) == 1
    answer, _ = _fetch(relay, 1, "alice")
    assert answer == m.Bundles((Bundle("alice", alice.public_key, newer, one_time),), ())


def test_registering_again_replaces_the_signed_prekey_and_keeps_the_one_time_ones() -> None:
    relay = RelayCore()
    alice = PrivateKey.generate()
    _register(relay, 1, "alice", alice, _signed(1))
    _register(relay, 2, "bob")
    one_time = _one_time(7)
    _publish(relay, 1, _signed(2), one_time)
    relay.disconnect(1)
    signed = _signed(3)
    assert _register(relay, 3, "alice", alice, signed).prekeys == 1
    answer, _ = _fetch(relay, 2, "alice")
    assert answer == m.Bundles((Bundle("alice", alice.public_key, signed, one_time),), ())


def test_an_owner_running_low_is_told_as_it_crosses_the_mark_and_at_none() -> None:
    """Once below the mark, and once at none: not after every prekey handed out, which
    had an owner publish a batch for each (and discard keys the relay still held)."""
    relay = RelayCore(Limits(prekeys_low=3))
    _register(relay, 1, "alice")
    _register(relay, 2, "bob")
    _publish(relay, 1, _signed(), _one_time(1, 2, 3, 4, 5))
    notices = [_fetch(relay, 2, "alice")[1] for _ in range(6)]
    assert notices == [
        [],  # 4 left
        [],  # 3 left: not below the mark
        [Outgoing(1, m.Prekeys(2))],
        [],  # 1 left: told already
        [Outgoing(1, m.Prekeys(0))],
        [],  # none handed out: nothing new to say
    ]
    _publish(relay, 1, _signed(), _one_time(6))
    relay.disconnect(1)
    assert _fetch(relay, 2, "alice")[1] == []  # away: nobody to tell


def test_the_store_drops_the_bundle_of_whoever_offline_registered_least_recently() -> None:
    """Registered, not left: a registered first and left last, and goes first."""
    relay = RelayCore(Limits(bundles=3))
    keys = {nick: PrivateKey.generate() for nick in "abcde"}
    for conn, nick in enumerate("abc", start=1):
        _register(relay, conn, nick, keys[nick])
        _publish(relay, conn, _signed(), _one_time(1))
    relay.disconnect(2)  # b
    relay.disconnect(1)  # a
    _register(relay, 4, "d", keys["d"])  # a register brings a bundle: a's goes at once
    answer, _ = _fetch(relay, 4, "a", "b", "c")
    assert answer.missing == ("a",) and len(relay.prekeys) == 3
    _publish(relay, 4, _signed(), _one_time(1))
    assert len(relay.prekeys) == 3  # a publish adds to a bundle, never another one
    # Registering again makes b the most recent; c, offline now too, goes next.
    _register(relay, 5, "b", keys["b"])
    relay.disconnect(5)
    relay.disconnect(3)  # c
    _register(relay, 6, "e", keys["e"])
    _publish(relay, 6, _signed(), ())
    answer, _ = _fetch(relay, 6, "b", "c", "d")
    assert [bundle.nick for bundle in answer.bundles] == ["b", "d"] and answer.missing == ("c",)


def test_the_store_never_drops_a_bundle_whose_owner_is_online() -> None:
    """a registered first, but is online: b, offline, goes instead. With everyone online
    the store holds more than its bound until they leave."""
    relay = RelayCore(Limits(bundles=2))
    for conn, nick in enumerate(("a", "b"), start=1):
        _register(relay, conn, nick)
        _publish(relay, conn, _signed(), _one_time(1))
    relay.disconnect(2)
    _register(relay, 3, "c")
    _publish(relay, 3, _signed(), _one_time(1))
    answer, _ = _fetch(relay, 3, "a", "b")
    assert [bundle.nick for bundle in answer.bundles] == ["a"] and answer.missing == ("b",)
    _register(relay, 4, "d")
    _publish(relay, 4, _signed(), _one_time(1))
    assert len(relay.prekeys) == 3  # a, c and d are all online
    relay.disconnect(3)  # c leaves: it is the one offline, so it goes
    assert len(relay.prekeys) == 2
    answer, _ = _fetch(relay, 4, "a", "c", "d")
    assert [bundle.nick for bundle in answer.bundles] == ["a"] and answer.missing == ("c", "d")


# -- refusals -------------------------------------------------------------------------------------------


def _signed_json() -> dict[str, object]:
    signed: dict[str, object] = json.loads(encode_message(m.Publish(_signed(), ())))["signed_prekey"]
    return signed


_KEY = json.loads(encode_message(m.Publish(_signed(), ())))["signed_prekey"]["key"]
REFUSED = {
    "publish-duplicate-ids": {
        "type": "publish",
        "signed_prekey": _signed_json(),
        "one_time": [{"id": 1, "key": _KEY}, {"id": 1, "key": _KEY}],
    },
    "publish-too-many": {
        "type": "publish",
        "signed_prekey": _signed_json(),
        "one_time": [{"id": i, "key": _KEY} for i in range(MAX_PUBLISH + 1)],
    },
    "fetch-duplicate": {"type": "fetch", "nicks": ["alice", "alice"]},
    "fetch-too-many": {"type": "fetch", "nicks": [f"n{i}" for i in range(MAX_FETCH + 1)]},
    "fetch-none": {"type": "fetch", "nicks": []},
}


@pytest.mark.parametrize("payload", REFUSED.values(), ids=REFUSED.keys())
def test_a_bad_publish_or_fetch_closes_only_its_sender(payload: dict[str, object]) -> None:
    relay = RelayCore()
    _register(relay, 1, "alice")
    _register(relay, 2, "bob")
    _publish(relay, 1, _signed(), _one_time(1, 2))
    actions = spelled_out(relay.receive_data(2, _raw_frame({"v": 2, **payload}), 0.0))
    assert _error(2, actions).code == "protocol"
    assert actions[2:] == [Outgoing(1, m.PeerLeft("bob"))]
    assert relay.prekeys.count("alice") == 2  # nothing was handed out
    _register(relay, 3, "carol")
    assert _one_time_ids(relay, 3, "alice", 1) == [1]


_SIGNED_JSON = _signed_json()
_ABSENT = object()


def _but(**changes: object) -> dict[str, object]:
    return {**_SIGNED_JSON, **changes}


def _without(field: str) -> dict[str, object]:
    return {name: value for name, value in _SIGNED_JSON.items() if name != field}


def _b64(size: int) -> str:
    return base64.b64encode(bytes(range(size))).decode()


BAD_SIGNED_PREKEYS: dict[str, object] = {
    "absent": _ABSENT,  # a register from before the field
    "null": None,
    "a-string": _SIGNED_JSON["key"],
    "a-list": list(_SIGNED_JSON.values()),
    "key-31": _but(key=_b64(31)),
    "key-33": _but(key=_b64(33)),
    "key-not-base64": _but(key="!" * 44),
    "signature-63": _but(signature=_b64(63)),
    "signature-65": _but(signature=_b64(65)),
    "id-negative": _but(id=-1),
    "id-too-large": _but(id=MAX_PREKEY_ID + 1),
    "id-a-string": _but(id="1"),
    "id-a-bool": _but(id=True),
    "id-a-float": _but(id=1.0),
    "no-id": _without("id"),
    "no-key": _without("key"),
    "no-signature": _without("signature"),
    "unknown-field": _but(extra=1),
}


def _spoil(register: dict[str, object], bad: object) -> dict[str, object]:
    spoiled = {name: value for name, value in register.items() if name != "signed_prekey"}
    if bad is not _ABSENT:
        spoiled["signed_prekey"] = bad
    with pytest.raises(RemoteProtocolError):  # the relay decodes a register strictly
        decode_message(json.dumps(spoiled).encode())
    return spoiled


@pytest.mark.parametrize("bad", BAD_SIGNED_PREKEYS.values(), ids=BAD_SIGNED_PREKEYS.keys())
def test_a_register_with_a_malformed_signed_prekey_closes_only_its_sender(bad: object) -> None:
    """Refused as it is decoded: an error, a hang-up, and nobody hears of the sender or
    loses anything. The same register made well for the next challenge is welcome."""
    relay = RelayCore()
    _register(relay, 1, "alice")
    _publish(relay, 1, _signed(), _one_time(1, 2))
    mallory = PrivateKey.generate()
    register = _spoil(_register_json(relay, 2, "mallory", mallory, _signed()), bad)
    actions = spelled_out(relay.receive_data(2, _raw_frame(register), 0.0))
    assert _error(2, actions).code == "protocol"
    assert len(actions) == 2  # alice is told of no one joining
    assert "mallory" not in relay.online and relay.prekeys.count("mallory") == 0
    assert len(relay.prekeys) == 1 and relay.prekeys.count("alice") == 2
    _register(relay, 3, "mallory", mallory)  # the control
    assert len(relay.prekeys) == 2 and _one_time_ids(relay, 3, "alice", 1) == [1]


def test_the_largest_publish_and_fetch_are_taken() -> None:
    relay = RelayCore(Limits(one_time_prekeys=MAX_PUBLISH))
    _register(relay, 1, "alice")
    _register(relay, 2, "bob")
    assert _publish(relay, 1, _signed(), _one_time(*range(MAX_PUBLISH))) == MAX_PUBLISH
    answer, _ = _fetch(relay, 2, "alice", *(f"n{i}" for i in range(MAX_FETCH - 1)))
    assert len(answer.bundles) == 1 and len(answer.missing) == MAX_FETCH - 1


@pytest.mark.parametrize(
    "message", [m.Publish(_signed(), _one_time(1)), m.Fetch(("alice",))], ids=["publish", "fetch"]
)
def test_prekey_frames_before_registration_are_refused(message: m.Message) -> None:
    relay = RelayCore()
    relay.connect(1, 0.0)
    actions = spelled_out(relay.receive_data(1, _frame(message), 0.0))
    assert _error(1, actions).code == "not_registered" and len(actions) == 2


_OVER_THE_RATE = "too many messages (at most 1 a second and 1024 KiB a second); some were not forwarded"


def test_publishes_and_fetches_are_charged_to_the_senders_rate() -> None:
    """They pass through the same buckets as every frame: burst 2, and the third in the
    same instant is refused (with a warning) and not handled."""
    relay = RelayCore(Limits(rate=1.0, burst=2.0))
    _register(relay, 1, "alice")
    _register(relay, 2, "bob")
    assert _publish(relay, 1, _signed(), _one_time(1, 2, 3)) == 3
    assert _publish(relay, 1, _signed(), _one_time(4)) == 4
    (refused,) = spelled_out(relay.receive_data(1, _frame(m.Publish(_signed(), _one_time(5))), 0.0))
    assert refused == Outgoing(1, m.Error("rate_limited", _OVER_THE_RATE))
    assert relay.prekeys.count("alice") == 4
    _fetch(relay, 2, "alice")
    _fetch(relay, 2, "alice")
    (refused,) = spelled_out(relay.receive_data(2, _frame(m.Fetch(("alice",))), 0.0))
    assert refused == Outgoing(2, m.Error("rate_limited", _OVER_THE_RATE))
    assert relay.prekeys.count("alice") == 2


# -- over real sockets ------------------------------------------------------------------------------------


async def _welcome_by_hand(
    raw: RawClient, nick: str, identity: PrivateKey, signed: SignedPrekey | None = None
) -> m.Welcome:
    """Register ``nick`` frame by frame, to read the welcome itself."""
    challenge = await raw.receive()
    assert isinstance(challenge, m.Challenge)
    session = PrivateKey.generate()
    proofs = registration_proof(identity, session, challenge)
    raw.send(m.Register(nick, identity.public_key, session.public_key, *proofs, signed or _signed()))
    return await raw.receive_kind(m.Welcome)


async def test_a_bundle_published_over_a_socket_is_fetched_after_its_owner_left() -> None:
    async with running_relay() as relay:
        alice_key = PrivateKey.generate()
        alice = await RawClient.open(relay)
        assert (await _welcome_by_hand(alice, "alice", alice_key)).prekeys == 0
        signed, one_time = _signed(3), _one_time(1, 2)
        alice.send(m.Publish(signed, one_time))
        assert await alice.receive_kind(m.Prekeys) == m.Prekeys(2)
        alice.close()
        bob = await RawClient.open(relay)
        await bob.register("bob")
        bob.send(m.Fetch(("alice", "bob", "carol")))
        answer = await bob.receive_kind(m.Bundles)
        assert answer == m.Bundles(
            (Bundle("alice", alice_key.public_key, signed, one_time[:1]),), ("bob", "carol")
        )
        back = await RawClient.open(relay)
        assert (await _welcome_by_hand(back, "alice", alice_key)).prekeys == 1
        back.close()
        bob.close()


async def test_a_fetch_right_after_someone_registers_gets_their_bundle_over_sockets() -> None:
    """alice registers and never publishes; bob, told she joined, fetches her bundle."""
    async with running_relay() as relay:
        bob = await RawClient.open(relay)
        await bob.register("bob")
        alice_key, signed = PrivateKey.generate(), _signed(6)
        alice = await RawClient.open(relay)
        await _welcome_by_hand(alice, "alice", alice_key, signed)
        assert (await bob.receive_kind(m.PeerJoined)).peer.nick == "alice"
        bob.send(m.Fetch(("alice",)))
        answer = await bob.receive_kind(m.Bundles)
        assert answer == m.Bundles((Bundle("alice", alice_key.public_key, signed, ()),), ())
        alice.close()
        bob.close()


async def test_a_malformed_signed_prekey_closes_only_the_registrant_over_sockets() -> None:
    async with running_relay() as relay, peers(relay, "alice", "bob") as (alice, bob):
        offender = await RawClient.open(relay)
        challenge = await offender.receive()
        assert isinstance(challenge, m.Challenge)
        identity, session = PrivateKey.generate(), PrivateKey.generate()
        proofs = registration_proof(identity, session, challenge)
        register = m.Register("mallory", identity.public_key, session.public_key, *proofs, _signed())
        spoiled = _spoil(json.loads(encode_message(register)), BAD_SIGNED_PREKEYS["key-31"])
        offender.send_bytes(_raw_frame(spoiled))
        assert (await offender.receive_kind(m.Error)).code == "protocol"
        assert await offender.closed()
        alice.connection.send_private("bob", "still here")
        assert (await bob.next(MessageReceived)).text == "still here"
        assert "mallory" not in relay.core.online


async def test_a_duplicate_nick_in_a_fetch_closes_only_the_offender_over_sockets() -> None:
    async with running_relay() as relay, peers(relay, "alice", "bob") as (alice, bob):
        offender = await RawClient.open(relay)
        await offender.register("mallory")
        offender.send_bytes(_raw_frame({"v": 2, "type": "fetch", "nicks": ["alice", "alice"]}))
        error = await offender.receive_kind(m.Error)
        assert error.code == "protocol" and "twice" in error.text
        assert await offender.closed()
        alice.connection.send_private("bob", "still here")
        assert (await bob.next(MessageReceived)).text == "still here"


# -- a relay that lies about bundles ---------------------------------------------------------------------


async def _published_and_asker(relay: HostileRelay) -> tuple[RawClient, RawClient]:
    alice = await RawClient.open(relay)
    await alice.register("alice")
    alice.send(m.Publish(_signed(), _one_time(1, 2, 3)))
    await alice.receive_kind(m.Prekeys)
    bob = await RawClient.open(relay)
    await bob.register("bob")
    return alice, bob


async def _fetched(asker: RawClient, nick: str) -> m.Bundles:
    asker.send(m.Fetch((nick,)))
    return await asker.receive_kind(m.Bundles)


async def test_the_hostile_relay_can_rewrite_any_bundles_answer() -> None:
    substitute = _signed(99)

    def swap(answer: m.Bundles) -> m.Bundles:
        bundles = tuple(Bundle(b.nick, b.identity_key, substitute, b.one_time) for b in answer.bundles)
        return m.Bundles(bundles, answer.missing)

    async with running(HostileRelay()) as relay:
        alice, bob = await _published_and_asker(relay)
        honest = await _fetched(bob, "alice")
        assert honest.bundles[0].signed_prekey != substitute  # the control: not rewritten
        relay.bundle_tamper = swap
        (lied,) = (await _fetched(bob, "alice")).bundles
        assert lied.signed_prekey == substitute and lied.one_time[0].id == 2
        alice.close()
        bob.close()


async def test_the_hostile_relay_can_hand_out_one_one_time_prekey_twice() -> None:
    async with running(HostileRelay()) as relay:
        alice, bob = await _published_and_asker(relay)
        carol = await RawClient.open(relay)
        await carol.register("carol")
        honest = [(await _fetched(asker, "alice")).bundles[0].one_time for asker in (bob, carol)]
        assert honest[0] != honest[1]  # the control: an honest relay never repeats one
        relay.bundle_tamper = same_one_time_prekey("alice")
        lied = [(await _fetched(asker, "alice")).bundles[0].one_time for asker in (bob, carol, bob, bob)]
        assert lied == [lied[0]] * 4 and lied[0][0].id == 3  # again and again, even after the last
        assert relay.core.prekeys.count("alice") == 0
        for raw in (alice, bob, carol):
            raw.close()
