"""One relay of a cluster, without any I/O: ``RelayCore`` plus what the other relays have.

What is shared goes through NATS (relay/cluster/relay.py); this core only decides. It adds
to a single relay's core:

- ``Remote``: the other relays' clients (nick -> node and directory entry), as the
  ``nicks`` bucket says. They are in the directory a newcomer is sent, and their arrivals
  and departures are told to this relay's clients.
- A register is not welcomed at once: the nick must first be claimed in the bucket
  (``Claim``: the shell creates its key, keyed by the nick's skeleton, compare-and-set),
  so that of two relays racing on one nick (or on two that look alike) exactly one lets it
  in. The shell answers with ``claimed``.
- A send's copies for the other relays' clients go to each of those relays in one
  ``Forward`` (not one per recipient); the shell answers the sender's ``routed`` once they
  have said what became of them (``Forward.routed``). Copies from another relay for
  clients here: ``deliver_here``.
- A nick that leaves here is given up (``Release``).
- Rooms are one across the relays: the other relays' memberships are listed and told as
  this relay's are, and this relay's are put in the ``rooms`` bucket (``RoomsAcross``,
  relay/cluster/memberships.py).

The requests for the shell collect in ``requests`` (the core's ``Action``s stay what a
single relay's shell knows how to carry out).
"""

from __future__ import annotations

import hmac
import logging
from collections import ChainMap
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from e2echat.errors import RemoteProtocolError
from e2echat.relay.actions import Action, ConnId, Persist, Write, keep
from e2echat.relay.cluster.addresses import SharedSources, cluster_secret
from e2echat.relay.cluster.memberships import RoomsAcross
from e2echat.relay.cluster.rooms import (
    ClusterPresence,
    DropMembership,
    RemoteRooms,
    SaveMembership,
)
from e2echat.relay.cluster.wire import check_item
from e2echat.relay.core import RelayCore, _Connection
from e2echat.relay.kept import Kept
from e2echat.relay.limits import Backlog, Limits
from e2echat.relay.paging import Paging
from e2echat.relay.prekeys import Handed
from e2echat.relay.routing import _PREFIX, Copies, Router
from e2echat.relay.store import MAIL, Identity, MailItem, Op, StoredBundle
from e2echat.wire.codec import encode_message
from e2echat.wire.fastpath import Routes, deliver_head, encode_entered, encode_peer
from e2echat.wire.framing import encode_frame
from e2echat.wire.grammar import skeleton
from e2echat.wire.messages import Bundles, Fetch, PeerJoined, PeerLeft, Prekeys, Register
from e2echat.wire.objects import Bundle, PeerInfo

log = logging.getLogger("e2echat.relay.cluster.core")

#: a register the cluster turned away: the nick is someone's on another relay
TAKEN = ("nick_taken", "that nick is online on another relay of this cluster; choose another")
#: a register that could not be decided: NATS is out of reach
UNREACHABLE = ("busy", "the relay cannot reach the rest of its cluster; try again shortly")
#: this relay's client whose nick the cluster has given to another relay's (this relay was
#: out of touch long enough to be taken for dead)
DISPLACED = ("nick_taken", "your nick was claimed on another relay of the cluster; reconnect")


@dataclass(frozen=True, slots=True)
class Claim:
    """Claim ``peer``'s nick for this relay in the ``nicks`` bucket, then call
    ``ClusterCore.claimed`` for connection ``conn``."""

    conn: ConnId
    peer: PeerInfo


@dataclass(frozen=True, slots=True)
class Release:
    """``nick`` has left this relay: give its key up (if it is still ours)."""

    nick: str


@dataclass(frozen=True, slots=True)
class Forward:
    """``sender``'s send ``message_id`` (on ``conn``): ``groups`` (node -> its clients'
    copies) for the other relays; ``copies`` what became of the rest here. Its ``routed``
    is due once each relay has answered (or not, in time)."""

    conn: ConnId
    sender: str
    message_id: int
    copies: Copies
    groups: dict[str, list[tuple[str, bytes]]]

    def routed(self, outcomes: dict[str, Outcome | None]) -> list[Action]:
        """What the shell writes once the relays have answered: ``outcomes`` holds each
        node's (delivered, refused, missing, queued, full), or None for one that did not
        answer in time (a copy queued there is kept there before it says so).
        A copy whose fate is unknown is reported refused: not known to be delivered, so
        the sender says so, rather than claim a delivery that may not have happened."""
        copies = self.copies
        for node, group in self.groups.items():
            asked = [to for to, _ in group]
            outcome = outcomes.get(node)
            if outcome is None:
                copies.refused += asked
                continue
            delivered, _, missing, queued, full = (set(nicks) for nicks in outcome)
            for to in asked:  # what a relay says of nicks it was not asked about is ignored
                if to in delivered:
                    copies.delivered.append(to)
                elif to in queued:
                    copies.queued.append(to)
                elif to in full:
                    copies.full.append(to)
                elif to in missing:
                    copies.missing.append(to)
                else:
                    copies.refused.append(to)
        answer = [(self.conn, encode_frame(copies.routed(self.message_id)))]
        # Anything queued here is kept before the sender is told so.
        return [Persist(copies.ops, answer)] if copies.ops else [Write(answer)]


@dataclass(frozen=True, slots=True)
class FetchElsewhere:
    """``requester`` (on ``conn``) asked for bundles: ``here`` is the answer for the ones
    this relay had (``ops`` keep what it handed out), ``groups`` (node -> nicks) the ones
    to ask the relays their owners are on. The answer is due once those have answered."""

    conn: ConnId
    requester: str
    here: Bundles
    ops: list[Op]
    groups: dict[str, list[str]]

    def answered(self, answers: dict[str, Bundles | None]) -> list[Action]:
        """The requester's one ``bundles``, from ``answers`` (node -> its answer, None if
        it gave none in time): a bundle only for a nick that relay was asked about, once;
        every other nick asked there is missing."""
        bundles, missing = list(self.here.bundles), list(self.here.missing)
        for node, nicks in self.groups.items():
            answer = answers.get(node)
            found: dict[str, Bundle] = {}
            for bundle in answer.bundles if answer is not None else ():
                if bundle.nick in nicks:
                    found.setdefault(bundle.nick, bundle)
            bundles += found.values()
            missing += [nick for nick in nicks if nick not in found]
        frame = encode_frame(encode_message(Bundles(tuple(bundles), tuple(missing))))
        return keep(self.ops, [(self.conn, frame)])


Request = Claim | Release | Forward | FetchElsewhere | SaveMembership | DropMembership
#: what a relay did with another's copies: (delivered, refused, missing, queued, full)
Outcome = tuple[list[str], list[str], list[str], list[str], list[str]]

#: the "node" of ``FetchElsewhere.groups`` that stands for the cluster's store: the
#: bundles of nicks online nowhere are taken from there (relay/cluster/jetstream_store.py)
STORED = ""


class Remote:
    """The other relays' clients, as the ``nicks`` bucket says."""

    def __init__(self) -> None:
        #: nick -> (node, its directory entry encoded)
        self.peers: dict[str, tuple[str, bytes]] = {}
        #: nick skeleton -> the nick that has it
        self.skeletons: dict[str, str] = {}
        self._infos: dict[str, PeerInfo] = {}

    def add(self, node: str, peer: PeerInfo) -> None:
        self.drop(peer.nick)
        self.peers[peer.nick] = (node, encode_peer(peer))
        self._infos[peer.nick] = peer
        self.skeletons[skeleton(peer.nick)] = peer.nick

    def drop(self, nick: str) -> bool:
        if self.peers.pop(nick, None) is None:
            return False
        del self._infos[nick]
        del self.skeletons[skeleton(nick)]
        return True

    def node_of(self, nick: str) -> str | None:
        entry = self.peers.get(nick)
        return entry[0] if entry else None

    def info(self, nick: str) -> PeerInfo:
        """``nick``'s directory entry (it is online on another relay)."""
        return self._infos[nick]

    def on(self, node: str) -> list[str]:
        return [nick for nick, (where, _) in self.peers.items() if where == node]


class ClusterRouter(Router):
    def __init__(
        self,
        limits: Limits,
        kept: Kept,
        online: dict[str, ConnId],
        backlog: Backlog,
        paging: Paging,
        remote: Remote,
        remote_rooms: RemoteRooms,
        requests: list[Request],
    ) -> None:
        super().__init__(limits, kept, online, backlog, paging)
        self.remote = remote
        self.remote_rooms = remote_rooms
        self.requests = requests

    def route(self, conn: ConnId, sender: str, message: Routes, now: float) -> list[Action]:
        """As a single relay's, but the copies for another relay's clients go to that
        relay, all of them in one ``Forward``; so do those for another relay's members
        away, unknown here (that relay keeps their identity, and their mailbox)."""
        remote, online, kept, remote_rooms = self.remote.peers, self.online, self.kept, self.remote_rooms
        groups: dict[str, list[tuple[str, bytes]]] = {}
        here: list[tuple[str, bytes]] = []
        for to, body in message.items:
            node: str | None = None
            if to not in online:
                entry = remote.get(to)
                if entry is not None:
                    node = entry[0]
                elif not kept.knows(to):
                    node = remote_rooms.node_of(to)
            if node is None:
                here.append((to, body))
            else:
                groups.setdefault(node, []).append((to, body))
        if not groups:
            return super().route(conn, sender, message, now)
        copies = self.sort(sender, message.id, here, now)
        self.requests.append(Forward(conn, sender, message.id, copies, groups))
        frames, copies.frames = copies.frames, []
        return [Write(frames)] if frames else []

    def deliver_here(
        self, sender: str, message_id: int, items: Sequence[tuple[str, bytes]], now: float
    ) -> tuple[list[tuple[ConnId, bytes]], list[Op], Outcome]:
        """Another relay's copies of ``sender``'s send ``message_id`` for clients here:
        the deliveries, the mailbox items for those away and known here (a room's members
        away, at Unix time ``now``), and the
        outcome for its answer. Someone neither here nor known is missing: the sender's
        relay reports the copy not delivered (its recipient left, or moved, meanwhile)."""
        online, backlog, mailboxes = self.online, self.backlog, self.kept.mailboxes
        ops: list[Op] = []
        queued: list[str] = []
        full: list[str] = []
        stalled, unflushed, budget = backlog.stalled, backlog.unflushed, self.limits.write_buffer_turn
        head, pack = deliver_head(sender), _PREFIX.pack
        frames: list[tuple[ConnId, bytes]] = []
        delivered: list[str] = []
        refused: list[str] = []
        missing: list[str] = []
        for to, body in items:
            target = online.get(to)
            if target is None and to != sender and self.kept.knows(to):
                op = mailboxes.put_mail(to, sender, message_id, bytes(body), now)
                if op is None:
                    full.append(to)
                else:
                    ops.append(op)
                    queued.append(to)
            elif target is None or to == sender:
                missing.append(to)
            elif target in stalled or unflushed.get(target, 0) >= budget or target in self.paging:
                refused.append(to)  # owed more than it takes, or its member lists first
            else:
                length = len(head) + len(body)
                frames.append((target, pack(length) + head + body))
                unflushed[target] = unflushed.get(target, 0) + length
                delivered.append(to)
        return frames, ops, (delivered, refused, missing, queued, full)


class ClusterCore(RoomsAcross, RelayCore):
    def __init__(
        self, limits: Limits | None = None, *, node: str, shared_bundles: bool = False, **options: Any
    ) -> None:
        """``node``: this relay's id in the cluster; ``shared_bundles``: the bundles of
        nicks online nowhere are the cluster store's to hand out (``STORED``), not this
        relay's memory's; ``options`` as for ``RelayCore``."""
        self.node = node
        self.shared_bundles = shared_bundles
        self.remote = Remote()
        #: the other relays' memberships of rooms
        self.remote_rooms = RemoteRooms()
        #: memberships of identities forgotten here, for the bucket (``ClusterPresence``)
        self._dropped: list[DropMembership] = []
        #: what the shell is to do with NATS, in order
        self.requests: list[Request] = []
        #: registers waiting for their claim: connection -> (entry, its register)
        self._claiming: dict[ConnId, tuple[PeerInfo, Register]] = {}
        #: their nicks' skeletons, so that a second register of one is refused here
        self._pending: dict[str, str] = {}
        #: connections hung up on because their nick is another relay's now: not released
        self._displaced: set[ConnId] = set()
        super().__init__(limits, **options)
        self.kept.rooms.elsewhere = self.remote_rooms.members

    @property
    def sources(self) -> SharedSources:
        """What each address has open here and on the other relays (see addresses.py)."""
        assert isinstance(self._sources, SharedSources)
        return self._sources

    def _new_sources(self) -> SharedSources:
        return SharedSources(self.limits, self.node, cluster_secret(self.key))

    def _new_router(self) -> ClusterRouter:
        return ClusterRouter(
            self.limits,
            self.kept,
            self.online,
            self._backlog,
            self._paging,
            self.remote,
            self.remote_rooms,
            self.requests,
        )

    def _new_presence(self) -> ClusterPresence:
        return ClusterPresence(
            self.kept, self.online, self._paging, self.remote_rooms, self.remote.peers, self._dropped
        )

    def _directory(self, nick: str, contacts: Iterable[str]) -> list[bytes]:
        # The other relays' clients online who share a room with it: its contacts there.
        peers = self.remote.peers
        sharing = self.remote_rooms.sharing(self.kept.rooms.of(nick))
        elsewhere = [peers[other][1] for other in sharing if other in peers]
        return super()._directory(nick, contacts) + elsewhere

    def _register(self, record: _Connection, message: Register, now: float) -> list[Action]:
        if record.conn in self._claiming:
            return self._refuse(record, "protocol", "register sent twice")
        # Not checked against the other relays' nicks here: the claim is, and waits to see
        # whether their relay is alive (a client failing over from a dead relay finds its
        # own nick there until that relay is taken for dead).
        peer = self._admit_register(record, message, ChainMap(self._skeletons, self._pending))
        if isinstance(peer, tuple):
            return self._refuse(record, *peer)
        self._claiming[record.conn] = (peer, message)
        self._pending[skeleton(peer.nick)] = peer.nick
        self.requests.append(Claim(record.conn, peer))
        return []

    # -- what the shell tells the cluster core ------------------------------------------------

    def claimed(self, conn: ConnId, refusal: tuple[str, str] | None, now: float) -> list[Action]:
        """The claim for ``conn``'s nick is made (``refusal`` None) or was refused: let it
        in, or turn it away. A claim made for a connection gone meanwhile is released."""
        self._now = now
        claiming = self._claiming.pop(conn, None)
        if claiming is None:
            return []
        peer, message = claiming
        self._pending.pop(skeleton(peer.nick), None)
        record = self._connections.get(conn)
        if record is None:
            if refusal is None:
                self.requests.append(Release(peer.nick))
            return []
        if refusal is not None:
            return self._refuse(record, *refusal)
        self.remote.drop(peer.nick)  # an entry of the relay whose claim ours replaced
        # Its memberships kept elsewhere are kept here from now on (its register's room
        # list then says which stay, as on one relay), and put anew under this relay.
        kept_here = self.kept.rooms.of(peer.nick)
        adopted = self._adopt(peer.nick)
        # As a register's answers are in ``receive_data``: behind what is owed, and the
        # first window of that (its welcome and lists) at once.
        actions = self._behind(adopted + self._welcome(record, peer, message, now))
        self._put_again(peer.nick, kept_here)
        if conn in self._paging:
            actions[:0] = self._release(conn)
        return actions

    def remote_joined(self, node: str, peer: PeerInfo, now: float) -> list[Action]:
        """``peer`` is on relay ``node`` now (the bucket says so): told to its contacts
        here, and as a member to the rooms here not yet told it joined them. A client here
        under that nick (or one like it) loses it: the cluster gave it to the other relay
        while this one was out of touch."""
        self._now = now
        actions: list[Action] = []
        here = self._skeletons.get(skeleton(peer.nick))
        if here is not None:
            actions += self.lost_claim(here)
        self.remote.add(node, peer)
        nick, presence, untold = peer.nick, self._presence, self.remote_rooms.untold
        assert isinstance(presence, ClusterPresence)
        rooms = [room for room in self.remote_rooms.of(nick) if (room, nick) in untold]
        contacts = self._contacts(nick, untold=True)
        for room in rooms:
            del untold[(room, nick)]
        frames = presence.to(contacts, encode_frame(encode_message(PeerJoined(peer))))
        encoded = self.remote.peers[nick][1]
        for room in rooms:
            frames += presence.to_room(room, encode_frame(encode_entered(room, encoded)), nick)
        return self._behind(actions + ([Write(frames)] if frames else []))

    def remote_left(self, node: str, nick: str) -> list[Action]:
        """``nick`` left relay ``node`` (its key is gone, or it is on no relay now): told
        to its contacts here. Still a member of its rooms."""
        if self.remote.node_of(nick) != node:
            return []
        contacts = self._contacts(nick)
        if not self.remote.drop(nick):
            return []
        presence = self._presence
        assert isinstance(presence, ClusterPresence)
        frames = presence.to(contacts, encode_frame(encode_message(PeerLeft(nick))))
        return self._behind([Write(frames)] if frames else [])

    def tick(self, now: float, wall: float | None = None) -> list[Action]:
        """As a single relay's, and the memberships still untold told (``_tell_untold``)."""
        actions = super().tick(now, wall)
        return actions + self._tell_untold(now)

    def node_lost(self, node: str) -> list[Action]:
        """Relay ``node`` is taken for dead: its clients are gone."""
        actions: list[Action] = []
        for nick in self.remote.on(node):
            actions += self.remote_left(node, nick)
        return actions

    def lost_claim(self, nick: str) -> list[Action]:
        """``nick``, online here, is no longer ours in the bucket: hang up on it (without
        giving up a claim that is someone else's now)."""
        conn = self.online.get(nick)
        if conn is None:
            return []
        log.warning("%s: its nick was claimed elsewhere in the cluster; hanging up", nick)
        self._displaced.add(conn)
        return self._behind(self._refuse(self._connections[conn], *DISPLACED))

    def deliver_here(
        self, sender: str, message_id: int, items: Sequence[tuple[str, bytes]], now: float
    ) -> tuple[list[Action], Outcome]:
        """Copies another relay forwarded: see ``ClusterRouter.deliver_here``. The shell
        answers once the actions' ``Persist`` is kept (a copy queued is kept first)."""
        assert isinstance(self._router, ClusterRouter)
        self._now = now
        frames, ops, outcome = self._router.deliver_here(sender, message_id, items, self._unix())
        return self._behind(keep(ops, [], now=frames)), outcome

    def fetch_here(self, requester: str, nicks: Sequence[str]) -> tuple[list[Action], bytes]:
        """Another relay's client asked for bundles of clients here: the answer, encoded
        as a ``bundles`` message, and what goes with it here (prekeys running low)."""
        (answer, low), ops = self.kept.fetch(requester, nicks)
        frames = [
            (self.online[nick], encode_frame(encode_message(Prekeys(count)))) for nick, count in low.items()
        ]
        return self._behind(keep(ops, frames)), encode_message(answer)

    def hand_over(self, nick: str, identity_key: bytes, budget: int) -> tuple[list[MailItem], bool]:
        """``nick`` is online on another relay with ``identity_key``: the items waiting
        for it here, oldest first, about ``budget`` bytes of them, and whether more wait.
        Nothing if the identity known here has another key (its mail is not for that
        key's owner: see ``Kept.reserved_until``), or if it is online here."""
        known = self.kept.identities.get(nick)
        if known is None or nick in self.online or not hmac.compare_digest(known.identity_key, identity_key):
            return [], False
        items = self.kept.mailboxes.items(nick)
        handed: list[MailItem] = []
        for item in items:
            if handed and budget < len(item.body) + 64:
                break
            budget -= len(item.body) + 64
            handed.append(item)
        return handed, len(handed) < len(items)

    def handed_over(self, nick: str, upto: int) -> list[Action]:
        """The other relay keeps ``nick``'s items up to ``upto`` now: gone here."""
        op = self.kept.mailboxes.handed_over(nick, upto)
        return keep([op], []) if op is not None else []

    def take_over(self, nick: str, items: Sequence[MailItem]) -> tuple[list[Action], int]:
        """Items another relay kept for ``nick`` (online here, or gone meanwhile): kept
        here now, and handed to it as ours are. The highest seq taken (-1: none)."""
        ops: list[Op] = []
        upto = -1
        mailboxes = self.kept.mailboxes
        for item in items:
            try:
                check_item(item)  # decoded so already: a guard, as an item not framed breaks ``tick``
            except RemoteProtocolError as exc:
                log.warning("a mailbox item for %s from the cluster is dropped: %s", nick, exc)
                continue
            if item.kind == MAIL:
                op = mailboxes.put_mail(nick, item.sender, item.message_id, item.body, item.queued_at)
                if op is None:  # full here: kept there, for the next time
                    break
                ops.append(op)
            else:
                ops += mailboxes.put_notice(nick, item.sender, item.message_id, item.reason, item.queued_at)
            upto = item.seq
        if ops:
            self.kept.notified.add(nick)
        return self._behind(keep(ops, self._router.notify())), upto

    def adopt(self, nick: str, identity_key: bytes, bundle: StoredBundle | None) -> None:
        """``nick`` registers here with ``identity_key`` (its claim is made): ``bundle`` is
        its bundle as the cluster keeps it (None: none for that key), which replaces the
        one remembered here: other relays may have handed its prekeys out since."""
        if bundle is None:
            self.kept.prekeys.forget(nick)
        else:
            self.kept.prekeys.restore(nick, identity_key, bundle)

    def learned(self, identity: Identity) -> None:
        """Another relay of the cluster kept ``identity`` (the store says so): known here
        too, so that this relay's clients can write to it while it is away. Nothing of a
        client online here: what this relay knows of it is newer."""
        if identity.nick not in self.online and skeleton(identity.nick) not in self._pending:
            self.kept.learn(identity)

    def online_with(self, nick: str, identity_key: bytes) -> bool:
        """Whether ``nick`` is online here with ``identity_key`` (mail for that key is its)."""
        known = self.kept.identities.get(nick)
        return (
            nick in self.online
            and known is not None
            and hmac.compare_digest(known.identity_key, identity_key)
        )

    def claims(self) -> list[str]:
        """The nicks this relay holds in the bucket: its clients online."""
        return list(self.online)

    # -- helpers -------------------------------------------------------------------------------

    def _fetch(self, record: _Connection, message: Fetch) -> list[Action]:
        """As a single relay's, but the bundles of another relay's clients (and of its
        rooms' members away, unknown here) are asked of that relay (it holds them, and
        hands each one-time prekey out once)."""
        assert record.peer is not None
        groups: dict[str, list[str]] = {}
        here: list[str] = []
        for nick in message.nicks:
            node = self.remote.node_of(nick) if nick not in self.online else None
            if node is None and not self.kept.knows(nick):  # a room's member away, kept there
                node = self.remote_rooms.node_of(nick)
            if node is None and self.shared_bundles and nick not in self.online:
                node = STORED
            if node is None:
                here.append(nick)
            else:
                groups.setdefault(node, []).append(nick)
        if not groups:
            return super()._fetch(record, message)
        requester = record.peer.nick
        if here:
            (answer, low), ops = self.kept.fetch(requester, here)
        else:
            (answer, low), ops = Handed(Bundles((), ()), {}), []
        frames = [
            (self.online[nick], encode_frame(encode_message(Prekeys(count)))) for nick, count in low.items()
        ]
        self.requests.append(FetchElsewhere(record.conn, requester, answer, ops, groups))
        return [Write(frames)] if frames else []

    def _forget(self, conn: ConnId) -> list[Action]:
        nick = self.nick_of(conn)
        held = nick is not None and self.online.get(nick) == conn
        actions = super()._forget(conn)
        if held and conn not in self._displaced:
            assert nick is not None
            self.requests.append(Release(nick))
        self._displaced.discard(conn)
        return actions
