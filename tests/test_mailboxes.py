"""Mailboxes in the relay core: what waits for people who are away, its limits, its time
to live, windows and acks, key changes, the away list, and every change as an op that a
store keeps. Bytes and time in, actions out: no sockets, no sleeping."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from nacl.public import PrivateKey, PublicKey

from e2echat.crypto.identity import registration_proof
from e2echat.relay.core import Action, Close, ConnId, Persist, RelayCore, Write
from e2echat.relay.limits import Limits
from e2echat.relay.mailboxes import ITEM_OVERHEAD
from e2echat.relay.store import Dequeue, Enqueue, ForgetIdentity, ForgetMember, SaveBundle, SaveIdentity
from e2echat.wire import messages as m
from e2echat.wire.codec import encode_message
from e2echat.wire.fastpath import encode_member
from e2echat.wire.framing import encode_frame
from e2echat.wire.objects import Envelope, Member, OneTimePrekey

from fake_store import FakeStore
from relay_frames import Outgoing, any_signed_prekey, spelled_out

M = TypeVar("M", bound=m.Message)
#: what a message of 41 bytes counts for against the byte limits
COST_41 = 41 + ITEM_OVERHEAD
UNLIMITED: dict[str, Any] = dict(rate=1e9, burst=1e9, byte_rate=2**40, byte_burst=2**40, idle_timeout=1e9)


def _frame(message: m.Message) -> bytes:
    return encode_frame(encode_message(message))


class Relay:
    """A core, each nick's connection and identity, and every op it asked a store to keep
    (applied to a FakeStore, so a new core can be built from what was kept)."""

    def __init__(self, store: FakeStore | None = None, **limits: Any) -> None:
        self.store = store or FakeStore()
        self.core = RelayCore(Limits(**(UNLIMITED | limits)), snapshot=self.store.load())
        self.conns: dict[str, ConnId] = {}
        self.keys: dict[str, PrivateKey] = {}
        self.now = 0.0
        self._next = 1
        self.actions: list[Action] = []

    def keep(self, actions: list[Action]) -> list[Outgoing | Close]:
        self.actions = actions  # the latest, as the core gave them
        for action in actions:
            if isinstance(action, Persist):
                self.store.apply(action.ops)
        return spelled_out(actions)

    def join(
        self,
        nick: str,
        key: PrivateKey | None = None,
        rooms: tuple[str, ...] = ("#lobby",),
        address: str = "",
    ) -> list[Outgoing | Close]:
        conn, self._next = self._next, self._next + 1
        (challenge,) = spelled_out(self.core.connect(conn, self.now, address))
        assert isinstance(challenge, Outgoing) and isinstance(challenge.message, m.Challenge)
        identity = key or self.keys.get(nick) or PrivateKey.generate()
        self.keys[nick], self.conns[nick] = identity, conn
        session = PrivateKey.generate()
        proofs = registration_proof(identity, session, challenge.message)
        register = m.Register(
            nick, identity.public_key, session.public_key, *proofs, any_signed_prekey(), rooms
        )
        return self.keep(self.core.receive_data(conn, _frame(register), self.now))

    def leave(self, nick: str) -> list[Outgoing | Close]:
        return self.keep(self.core.disconnect(self.conns.pop(nick)))

    def say(self, nick: str, message: m.Message) -> list[Outgoing | Close]:
        return self.keep(self.core.receive_data(self.conns[nick], _frame(message), self.now))

    def send(self, nick: str, message_id: int, *to: str, body: bytes = b"\x01" * 41) -> m.Routed:
        out = self.say(nick, m.Send(message_id, tuple(Envelope(t, body) for t in to)))
        (routed,) = [o.message for o in out if isinstance(o, Outgoing) and isinstance(o.message, m.Routed)]
        return routed

    def join_and_get(self, nick: str, kind: type[M], key: PrivateKey | None = None) -> list[M]:
        """``nick`` registers: the messages of ``kind`` it is sent."""
        out = self.join(nick, key)
        return _to(self.conns[nick], out, kind)

    def tick(self, seconds: float) -> list[Outgoing | Close]:
        self.now += seconds
        return self.keep(self.core.tick(self.now))


def _to(conn: ConnId, out: list[Outgoing | Close], kind: type[M]) -> list[M]:
    return [
        o.message for o in out if isinstance(o, Outgoing) and o.conn == conn and isinstance(o.message, kind)
    ]


def _away(relay: Relay, *nicks: str) -> None:
    for nick in nicks:
        relay.join(nick)
        relay.leave(nick)


# -- sending to someone away ------------------------------------------------------------------


def test_a_message_to_someone_away_is_queued_and_to_a_stranger_or_oneself_missing() -> None:
    relay = Relay()
    _away(relay, "bob")
    relay.join("alice")
    relay.join("carol")
    routed = relay.send("alice", 7, "bob", "carol", "nobody", "alice")
    assert routed == m.Routed(7, ("carol",), queued=("bob",), missing=("nobody", "alice"))
    (item,) = relay.core.kept.mailboxes.items("bob")
    assert (item.sender, item.message_id, item.body) == ("alice", 7, b"\x01" * 41)


def test_queued_comes_in_a_persist_with_the_enqueue_and_deliveries_at_once() -> None:
    relay = Relay()
    _away(relay, "bob")
    relay.join("alice")
    relay.join("carol")
    body = encode_message(m.Send(3, (Envelope("carol", b"\x02" * 41), Envelope("bob", b"\x03" * 41))))
    actions = relay.core.receive_data(relay.conns["alice"], encode_frame(body), 0.0)
    write, persist = actions
    assert isinstance(write, Write) and [conn for conn, _ in write.frames] == [relay.conns["carol"]]
    assert isinstance(persist, Persist) and [type(op) for op in persist.ops] == [Enqueue]
    assert [conn for conn, _ in persist.frames] == [relay.conns["alice"]]


def test_online_deliveries_keep_nothing() -> None:
    relay = Relay()
    relay.join("alice")
    relay.join("bob")
    actions = relay.core.receive_data(relay.conns["alice"], _frame(m.Send(1, (Envelope("bob", b"x"),))), 0.0)
    assert all(isinstance(action, Write) for action in actions)


def test_the_mailbox_comes_after_the_directory_and_away_in_order_and_acks_drop_it() -> None:
    relay = Relay()
    _away(relay, "bob", "dave")
    relay.join("alice")
    for number in range(3):
        relay.send("alice", number, "bob", body=bytes([number]) * 41)
    out = relay.join("bob")
    bob = relay.conns["bob"]
    kinds = [type(message) for message in _to(bob, out, m.Message)]
    assert kinds == [m.Welcome, m.Members, m.Mail, m.Mail, m.Mail]
    assert [[a.nick for a in ms.away] for ms in _to(bob, out, m.Members)] == [["dave"]]
    mail = _to(bob, out, m.Mail)
    assert [item.body[0] for item in mail] == [0, 1, 2]
    seqs = [item.seq for item in mail]
    assert seqs == sorted(seqs)
    relay.say("bob", m.Ack(seqs[1]))
    assert [item.seq for item in relay.core.kept.mailboxes.items("bob")] == seqs[2:]
    assert relay.store.batches[-1] == [Dequeue("bob", upto=seqs[1])]
    relay.say("bob", m.Ack(seqs[1]))  # again: nothing more to drop, and no harm
    relay.say("bob", m.Ack(seqs[2]))
    assert relay.core.kept.mailboxes.count("bob") == 0 and relay.conns["bob"] in relay.core.online.values()


def test_the_window_sends_no_more_than_it_allows_until_acked() -> None:
    relay = Relay(mail_window=3)
    _away(relay, "bob")
    relay.join("alice")
    for number in range(7):
        relay.send("alice", number, "bob")
    first = relay.join_and_get("bob", m.Mail)
    assert len(first) == 3
    more = _to(relay.conns["bob"], relay.say("bob", m.Ack(first[0].seq)), m.Mail)
    assert len(more) == 1
    rest = _to(relay.conns["bob"], relay.say("bob", m.Ack(more[0].seq)), m.Mail)
    assert [item.message_id for item in relay.core.kept.mailboxes.items("bob")][:3] == [4, 5, 6]
    assert len(rest) == 3


def test_items_not_acked_are_sent_again_next_time() -> None:
    relay = Relay()
    _away(relay, "bob")
    relay.join("alice")
    relay.send("alice", 1, "bob")
    relay.send("alice", 2, "bob")
    first = relay.join_and_get("bob", m.Mail)
    relay.say("bob", m.Ack(first[0].seq))
    relay.leave("bob")
    again = relay.join_and_get("bob", m.Mail)
    assert again == first[1:]


def test_an_ack_repeated_once_the_mailbox_is_empty_changes_nothing() -> None:
    relay = Relay()
    _away(relay, "bob")
    relay.join("alice")
    relay.send("alice", 1, "bob")
    (mail,) = relay.join_and_get("bob", m.Mail)
    relay.say("bob", m.Ack(mail.seq))
    assert relay.core.kept.mailboxes.count("bob") == 0
    out = relay.say("bob", m.Ack(mail.seq))  # again (the client did not see the first land)
    assert not _to(relay.conns["bob"], out, m.Error) and "bob" in relay.core.online


def test_an_ack_of_an_item_sent_on_an_earlier_connection_only_is_an_error() -> None:
    relay = Relay(mail_window=1)
    _away(relay, "bob")
    relay.join("alice")
    relay.send("alice", 1, "bob")
    relay.send("alice", 2, "bob")
    (first,) = relay.join_and_get("bob", m.Mail)
    relay.say("bob", m.Ack(first.seq))  # the second is sent now
    relay.leave("bob")
    (second,) = relay.join_and_get("bob", m.Mail)
    assert second.seq > first.seq
    relay.say("bob", m.Ack(first.seq))  # from before: a repeat, nothing to do
    assert "bob" in relay.core.online
    relay.say("bob", m.Ack(second.seq + 1))
    assert "bob" not in relay.core.online


@pytest.mark.parametrize("seq", ["above", "none sent"])
def test_an_ack_of_an_item_never_sent_is_a_protocol_error_for_that_client_only(seq: str) -> None:
    relay = Relay()
    _away(relay, "bob")
    relay.join("alice")
    relay.join("carol")
    if seq == "above":
        relay.send("alice", 1, "bob")
        relay.send("alice", 2, "bob")
        mail = relay.join_and_get("bob", m.Mail)
        bad = mail[-1].seq + 1
    else:
        relay.join("bob")
        bad = 0
    bob = relay.conns["bob"]
    out = relay.say("bob", m.Ack(bad))
    (error,) = _to(bob, out, m.Error)
    assert error.code == "protocol" and "ack" in error.text
    assert Close(bob, f"protocol: {error.text}") in out
    assert "bob" not in relay.core.online
    assert relay.send("alice", 3, "carol").delivered == ("carol",)  # the others are served
    assert relay.core.kept.mailboxes.count("bob") == (2 if seq == "above" else 0)  # nothing lost


# -- limits -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("limit", "value", "fits"),
    [
        ("mailbox_messages", 2, 2),
        ("mailbox_bytes", 2 * COST_41 + 40, 2),
        ("mailbox_total", 2 * COST_41 + 40, 2),
    ],
)
def test_each_limit_tells_the_sender_full_and_is_logged_once(
    limit: str, value: int, fits: int, caplog: pytest.LogCaptureFixture
) -> None:
    relay = Relay(None, **{limit: value})
    _away(relay, "bob")
    relay.join("alice")
    with caplog.at_level(logging.WARNING, "e2echat.relay.mailboxes"):
        answers = [relay.send("alice", number, "bob", body=b"\x01" * 41) for number in range(5)]
    assert [a.queued for a in answers] == [("bob",)] * fits + [()] * (5 - fits)
    assert [a.full for a in answers] == [()] * fits + [("bob",)] * (5 - fits)
    assert len([r for r in caplog.records if "full" in r.getMessage()]) == 1
    mail = relay.join_and_get("bob", m.Mail)
    relay.say("bob", m.Ack(mail[-1].seq))
    relay.leave("bob")
    assert relay.send("alice", 9, "bob").queued == ("bob",)  # room again once drained


def test_the_relay_wide_limit_counts_every_mailbox() -> None:
    relay = Relay(mailbox_total=100 + 2 * ITEM_OVERHEAD)
    _away(relay, "bob", "carol")
    relay.join("alice")
    assert relay.send("alice", 1, "bob", body=b"\x01" * 60).queued == ("bob",)
    assert relay.send("alice", 2, "carol", body=b"\x01" * 60).full == ("carol",)


# -- time to live --------------------------------------------------------------------------------


def test_expired_messages_are_dropped_and_their_sender_told_at_once_if_online() -> None:
    relay = Relay(mailbox_ttl=100.0)
    _away(relay, "bob")
    relay.join("alice")
    relay.send("alice", 5, "bob")
    relay.tick(50)
    assert relay.core.kept.mailboxes.count("bob") == 1
    out = relay.tick(51)
    assert relay.core.kept.mailboxes.count("bob") == 0
    (notice,) = _to(relay.conns["alice"], out, m.Expired)
    assert (notice.id, notice.to, notice.reason) == (5, "bob", "expired")
    assert not relay.join_and_get("bob", m.Mail)


def test_an_expired_notice_waits_for_a_sender_who_is_away_then_expires_silently() -> None:
    """A notice outlives the message it tells of, twice over (NOTICE_TTL): its sender may
    be away longer than the message was kept, and it is the only word she gets."""
    relay = Relay(mailbox_ttl=100.0)
    _away(relay, "bob")
    relay.join("alice")
    relay.send("alice", 5, "bob")
    relay.leave("alice")
    relay.tick(101)
    relay.tick(150)  # notice 5 is older than a message's time to live
    (notice,) = relay.join_and_get("alice", m.Expired)
    assert notice.id == 5
    relay.leave("alice")
    relay.tick(51)  # the notice itself expires: nobody is told about it
    assert relay.core.kept.mailboxes.count("alice") == 0 and relay.core.kept.mailboxes.count("bob") == 0


def test_a_notice_kept_longer_does_not_hold_back_the_expiry_of_messages_behind_it() -> None:
    relay = Relay(mailbox_ttl=100.0)
    _away(relay, "bob", "carol")
    relay.join("alice")
    relay.send("alice", 5, "bob")
    relay.leave("alice")
    relay.tick(101)  # alice's mailbox: the notice of 5
    relay.join("carol")
    relay.send("carol", 7, "alice")  # then carol's message to her
    relay.leave("carol")
    relay.tick(101)
    relay.join("carol")
    assert [n.id for n in relay.join_and_get("alice", m.Expired)] == [5]
    assert not relay.join_and_get("alice", m.Mail)


def test_mail_being_handed_to_its_owner_online_does_not_expire() -> None:
    """Its owner has it, and will ack it: telling the sender it expired would be a lie."""
    relay = Relay(mailbox_ttl=100.0)
    _away(relay, "bob")
    relay.join("alice")
    relay.send("alice", 5, "bob")
    relay.tick(99)
    assert len(relay.join_and_get("bob", m.Mail)) == 1
    out = relay.tick(10)  # past its time to live, and the next sweep
    assert not _to(relay.conns["alice"], out, m.Expired) and relay.core.kept.mailboxes.count("bob") == 1


def test_identities_away_too_long_are_forgotten_with_their_memberships() -> None:
    """A member away stays one past a mailbox's time to live (a message for it may wait
    there a week more); its memberships go with its identity."""
    relay = Relay(mailbox_ttl=100.0, identity_ttl=1000.0)
    _away(relay, "bob")
    relay.join("alice")
    relay.tick(101)
    rooms = relay.core.kept.rooms
    assert rooms.is_member("bob", "#lobby") and relay.core.kept.knows("bob")
    out = relay.tick(1000)
    assert not relay.core.kept.knows("bob") and relay.core.prekeys.count("bob") == 0
    assert not rooms.is_member("bob", "#lobby") and "bob" not in rooms.rooms_of
    assert _to(relay.conns["alice"], out, m.Parted) == [m.Parted("#lobby", "bob")]
    ops = [op for batch in relay.store.batches for op in batch]
    assert "ForgetIdentity" in m_ops(ops)
    assert not [member for member in relay.store.load().members if member.nick == "bob"]
    assert relay.send("alice", 1, "bob").missing == ("bob",)


def m_ops(ops: Sequence[object]) -> set[str]:
    return {type(op).__name__ for op in ops}


# -- the rooms' indexes -----------------------------------------------------------------------

_STEPS = st.lists(
    st.tuples(
        st.sampled_from(["join", "leave", "tick", "restart", "enter", "exit"]),
        st.sampled_from("abcdef"),
        st.sampled_from(["#lobby", "#x", "#y"]),
    ),
    max_size=25,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=_STEPS)
@example(steps=[("join", "a", ""), ("leave", "a", ""), *[("join", nick, "") for nick in "bcd"]])  # a evicted
@example(
    steps=[("join", "a", ""), ("enter", "a", "#x"), ("leave", "a", ""), ("tick", "", ""), ("tick", "", "")]
)
def test_the_rooms_indexes_kept_as_they_change_are_the_ones_made_afresh(
    steps: list[tuple[str, str, str]],
) -> None:
    """Joins, leaves, rooms joined and parted, identities forgotten (time to live, the
    bundles bound), restarts: each index kept step by step (who is in which room, who of
    them is online, members away encoded) is always the one made afresh."""
    relay = Relay(bundles=3, mailbox_ttl=10.0, identity_ttl=20.0)
    for step, nick, room in steps:
        if step == "join" and nick not in relay.conns:
            relay.join(nick)
        elif step == "leave" and nick in relay.conns:
            relay.leave(nick)
        elif step == "enter" and nick in relay.conns:
            relay.say(nick, m.Join(room))
        elif step == "exit" and nick in relay.conns:
            relay.say(nick, m.Part(room))
        elif step == "tick":
            relay.tick(6.0)
        elif step == "restart":
            now = relay.now
            relay = Relay(relay.store, bundles=3, mailbox_ttl=10.0, identity_ttl=20.0)
            relay.now = now
        kept, online = relay.core.kept, relay.core.online
        rooms = kept.rooms
        stored = {(member.room, member.nick) for member in relay.store.load().members}
        assert stored == {(room, nick) for room, members in rooms.members.items() for nick in members}
        assert all(members for members in rooms.members.values())  # no empty room kept
        assert {nick for nick, of in rooms.rooms_of.items() for _ in of} <= set(kept.identities)
        assert {(room, nick) for nick, of in rooms.rooms_of.items() for room in of} == stored
        assert {room: set(present) for room, present in rooms.present.items()} == {
            room: set(members) & set(online)
            for room, members in rooms.members.items()
            if set(members) & set(online)
        }
        for room in rooms.members:
            for away in rooms.away_in(room):
                key = PublicKey(kept.identities[away].identity_key)
                assert kept.encoded_member(away) == encode_member(Member(away, key))


# -- key changes -------------------------------------------------------------------------------


def test_a_nick_registered_with_another_key_gets_no_old_mail_and_senders_are_told() -> None:
    """While messages wait for a nick, another key is refused it (``nick_reserved``): else
    a stranger could wipe someone's mail by registering their nick while away. The new
    key gets none of it, and nothing is dropped, so its senders have nothing to be told.
    (Named as SECURITY.md's table names it until that row is rewritten.)"""
    relay = Relay(mailbox_ttl=100.0)
    _away(relay, "bob")
    relay.join("alice")
    relay.send("alice", 1, "bob")
    relay.tick(10)
    relay.send("alice", 2, "bob")
    out = relay.join("bob", PrivateKey.generate())
    (error,) = _to(relay.conns["bob"], out, m.Error)
    assert error.code == "nick_reserved"
    assert "messages wait here for another key of 'bob'" in error.text
    assert "expire by 1970-01-01 00:01 UTC" in error.text and "another nick" in error.text
    assert "bob" not in relay.core.online and relay.core.kept.mailboxes.count("bob") == 2
    assert not _to(relay.conns["alice"], out, m.Expired)  # nothing was dropped


def test_once_its_messages_are_gone_another_key_may_take_the_nick() -> None:
    relay = Relay(mailbox_ttl=100.0)
    _away(relay, "bob", "carol")
    relay.join("alice")
    relay.join("bob")
    relay.send("bob", 2, "carol")
    relay.leave("bob")
    relay.tick(60)
    relay.send("alice", 1, "bob")
    relay.tick(41)  # bob's message to carol expired: a notice after alice's message
    assert [item.kind for item in relay.core.kept.mailboxes.items("bob")] == ["mail", "expired"]
    relay.join("bob")
    relay.say("bob", m.Ack(relay.core.kept.mailboxes.items("bob")[0].seq))  # the message, not the notice
    relay.leave("bob")
    out = relay.join("bob", PrivateKey.generate())
    assert not _to(relay.conns["bob"], out, m.Error) and "bob" in relay.core.online
    assert not _to(relay.conns["bob"], out, m.Expired)  # the old key's notices went with it
    assert relay.core.kept.mailboxes.count("bob") == 0


def test_the_same_key_again_keeps_the_mailbox() -> None:
    relay = Relay()
    _away(relay, "bob")
    relay.join("alice")
    relay.send("alice", 1, "bob")
    out = relay.join("bob")  # the same key as before
    assert len(_to(relay.conns["bob"], out, m.Mail)) == 1 and not _to(relay.conns["alice"], out, m.Expired)


# -- what is kept --------------------------------------------------------------------------------


def test_every_change_is_kept_and_a_core_built_from_it_knows_the_same() -> None:
    relay = Relay()
    _away(relay, "bob")
    relay.join("alice")
    relay.say("alice", m.Publish(any_signed_prekey(), (OneTimePrekey(9, PrivateKey.generate().public_key),)))
    relay.join("carol")
    relay.say("carol", m.Fetch(("alice",)))  # alice's one-time prekey is handed out: gone for good
    relay.send("alice", 4, "bob")
    kinds = m_ops([op for batch in relay.store.batches for op in batch])
    assert kinds >= {"SaveIdentity", "SaveMember", "SaveBundle", "Enqueue"}
    again = Relay(relay.store)
    assert again.core.kept.knows("alice") and again.core.kept.knows("bob")
    assert again.core.prekeys.count("alice") == 0
    assert [i.message_id for i in again.core.kept.mailboxes.items("bob")] == [4]
    out = again.join("dave")
    members = _to(again.conns["dave"], out, m.Members)
    assert [[a.nick for a in ms.away] for ms in members] == [["bob", "alice", "carol"]]
    assert [i.message_id for i in again.core.kept.mailboxes.items("bob")] == [4]
    assert isinstance(relay.store.batches[0][0], SaveIdentity | SaveBundle)


def test_bundles_over_the_bound_forget_their_identities_and_tell_senders() -> None:
    relay = Relay(bundles=2)
    _away(relay, "bob")
    relay.join("alice")
    relay.send("alice", 1, "bob")
    relay.join("carol")  # three bundles: bob's, the oldest offline, goes
    assert not relay.core.kept.knows("bob")
    ops = [op for batch in relay.store.batches for op in batch]
    assert ForgetIdentity("bob") in ops
    (notice,) = relay.core.kept.mailboxes.items("alice")
    assert (notice.sender, notice.message_id, notice.reason) == ("bob", 1, "evicted")  # not "expired"
    assert not any(isinstance(op, ForgetMember) for op in ops)


def test_stopping_the_relay_evicts_nobody_that_everyone_online_kept_over_the_bound() -> None:
    relay = Relay(bundles=2)
    for nick in ("alice", "bob", "carol"):  # three online: over the bound, but none may go
        relay.join(nick)
    relay.keep(relay.core.shutdown("stopping"))
    ops = [op for batch in relay.store.batches for op in batch]
    assert not any(isinstance(op, ForgetIdentity) for op in ops)
    again = Relay(relay.store, bundles=2)
    assert all(again.core.kept.knows(nick) for nick in ("alice", "bob", "carol"))


def test_the_owners_own_notices_do_not_make_its_mailbox_full_to_others() -> None:
    relay = Relay(mailbox_messages=2, mailbox_ttl=100.0)
    _away(relay, "bob", "carol")
    relay.join("alice")
    relay.send("alice", 1, "bob")
    relay.send("alice", 2, "carol")
    relay.leave("alice")
    relay.tick(101)  # both expire: two notices wait for alice
    assert relay.core.kept.mailboxes.count("alice") == 2
    relay.join("dave")
    assert relay.send("dave", 3, "alice").queued == ("alice",)
    assert relay.send("dave", 4, "alice").queued == ("alice",)
    assert relay.send("dave", 5, "alice").full == ("alice",)  # two messages: full now


def test_each_item_costs_its_overhead_against_the_byte_limits() -> None:
    """Tiny messages must not let the relay hold far more memory than the limits say."""
    relay = Relay(mailbox_bytes=10 * (1 + ITEM_OVERHEAD), mailbox_total=15 * (1 + ITEM_OVERHEAD))
    _away(relay, "bob", "carol")
    relay.join("alice")
    answers = [relay.send("alice", number, "bob", body=b"x") for number in range(12)]
    assert [a.queued for a in answers].count(("bob",)) == 10
    answers = [relay.send("alice", 20 + number, "carol", body=b"x") for number in range(12)]
    assert [a.queued for a in answers].count(("carol",)) == 5  # the relay's total, now
    assert relay.core.kept.mailboxes.total == 15 * (1 + ITEM_OVERHEAD)
    relay.join("bob")
    relay.say("bob", m.Ack(relay.core.kept.mailboxes.items("bob")[-1].seq))
    assert relay.core.kept.mailboxes.total == 5 * (1 + ITEM_OVERHEAD)


def _expire_to_many(relay: Relay, count: int) -> None:
    """``count`` messages from alice (then away) to as many others away, all expired."""
    receivers = [f"r{number}" for number in range(count)]
    _away(relay, *receivers)
    relay.join("alice")
    for number, to in enumerate(receivers):
        relay.send("alice", number, to)
    relay.leave("alice")
    relay.tick(101)


def test_notices_are_capped_per_mailbox_the_oldest_going_first() -> None:
    relay = Relay(mailbox_messages=3, mailbox_ttl=100.0)
    _expire_to_many(relay, 5)
    items = relay.core.kept.mailboxes.items("alice")
    assert [item.message_id for item in items] == [2, 3, 4]
    assert relay.core.kept.mailboxes.total == 3 * ITEM_OVERHEAD  # each costs its overhead
    again = Relay(relay.store, mailbox_messages=3, mailbox_ttl=100.0)  # the store agrees
    assert [item.message_id for item in again.core.kept.mailboxes.items("alice")] == [2, 3, 4]
    assert [notice.id for notice in relay.join_and_get("alice", m.Expired)] == [2, 3, 4]


def _mail_bytes(conn: ConnId, out: list[Outgoing | Close]) -> int:
    return sum(len(_frame(mail)) for mail in _to(conn, out, m.Mail))


def test_a_mailbox_of_big_messages_drains_a_window_of_bytes_at_a_time() -> None:
    """16 MiB waiting must not all be queued at once: that is over the write buffer, and
    its owner would be dropped at every register, never to drain it."""
    limits = Limits()
    relay = Relay(mailbox_bytes=64 * 2**20)
    _away(relay, "bob")
    relay.join("alice")
    for number in range(40):  # 40 x 128 KiB: 7 MiB of frames, base64 and all
        assert relay.send("alice", number, "bob", body=bytes([number]) * 131_000).queued == ("bob",)
    relay.core.flushed()
    out = relay.join("bob")
    bob, got = relay.conns["bob"], []
    while True:
        assert _mail_bytes(bob, out) <= limits.mail_window_bytes
        mail = _to(bob, out, m.Mail)
        got += [item.body[0] for item in mail]
        if not mail:
            break
        relay.core.flushed()  # the shell wrote it
        out = relay.say("bob", m.Ack(mail[-1].seq))
    assert got == list(range(40)) and "bob" in relay.core.online


def test_mail_counts_against_what_its_owner_may_be_given_in_one_turn() -> None:
    limits, body = Limits(), b"\x01" * 131_000
    relay = Relay(mailbox_bytes=64 * 2**20)
    _away(relay, "bob")
    relay.join("alice")
    for number in range(10):
        relay.send("alice", number, "bob", body=body)
    relay.core.flushed()
    out = relay.join("bob")
    mail = _to(relay.conns["bob"], out, m.Mail)
    assert 0 < len(mail) < 10
    relay.join("carol")
    delivered = 0  # in the same turn, deliveries get what room the mail left
    while relay.send("carol", 100 + delivered, "bob", body=body).delivered:
        delivered += 1
    assert 0 < delivered <= (limits.write_buffer_turn - len(mail) * len(body)) // len(body) + 1
    assert not _to(relay.conns["bob"], relay.say("bob", m.Ack(mail[0].seq)), m.Mail)  # no room left
    relay.core.flushed()
    assert _to(relay.conns["bob"], relay.say("bob", m.Ack(mail[1].seq)), m.Mail)


def test_seqs_go_on_rising_across_a_restart_once_every_mailbox_drained() -> None:
    relay = Relay()
    _away(relay, "bob")
    relay.join("alice")
    relay.send("alice", 1, "bob")
    (first,) = relay.join_and_get("bob", m.Mail)
    relay.say("bob", m.Ack(first.seq))
    assert not relay.store.kept.mail  # drained: only the mark says which seqs were used
    again = Relay(relay.store)  # the same clock (0): the store alone must carry them on
    _away(again, "bob")
    again.join("alice")
    again.send("alice", 2, "bob")
    (second,) = again.join_and_get("bob", m.Mail)
    assert second.seq > first.seq


def test_seqs_start_at_the_unix_time_now_not_when_the_shells_clock_started() -> None:
    core = RelayCore(Limits(), wall=1_000.0, now=500.0)
    (enqueue,) = core.kept.mailboxes.put_notice("bob", "alice", 1, "expired", 0.0)
    assert isinstance(enqueue, Enqueue) and enqueue.item.seq == 1_500_000_000


@pytest.mark.parametrize("restart", [False, True])
def test_bundles_are_evicted_in_the_same_order_after_a_restart(restart: bool) -> None:
    """The least recent to register goes first, which is not the least recently seen."""
    relay = Relay(bundles=3)
    relay.join("ann")
    relay.join("ben")
    relay.leave("ben")
    relay.tick(1.0)
    relay.leave("ann")  # seen after ben, registered before him
    if restart:
        relay = Relay(relay.store, bundles=3)
    relay.join("cid")
    relay.join("dee")  # four bundles: ann's goes, both times
    assert not relay.core.kept.knows("ann") and relay.core.kept.knows("ben")


def test_only_frames_that_claim_something_kept_wait_for_the_store() -> None:
    """Joins, leaves and acks keep changes, but their frames (welcome, presence, mail
    already kept) claim nothing about them: under churn, nobody waits for a disk."""
    relay = Relay()
    _away(relay, "bob")
    relay.join("alice")
    relay.send("alice", 1, "bob")

    def held() -> list[ConnId]:
        assert any(isinstance(action, Persist) for action in relay.actions)  # something kept
        return [conn for action in relay.actions if isinstance(action, Persist) for conn, _ in action.frames]

    assert _to(relay.conns["alice"], relay.join("carol"), m.PeerJoined)
    assert not held()
    (mail,) = relay.join_and_get("bob", m.Mail)
    assert not held()
    relay.say("bob", m.Ack(mail.seq))
    assert not held()
    relay.leave("bob")
    assert not held()
    relay.send("alice", 2, "bob")
    assert held() == [relay.conns["alice"]]  # "queued": only once it is
