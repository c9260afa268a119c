"""A relay of a cluster: the single relay's shell, plus its link to the others over NATS.

Carries out what ``ClusterCore`` asks (relay/cluster/core.py) with NATS: claims and
releases of nicks in the ``nicks`` key-value bucket (JetStream, compare-and-set), forwards
of a send's copies to other relays (request/reply on their ``node`` subject), heartbeats.
And it tells the core what the bucket and the heartbeats say: who is on which relay, and
which relay is gone. nats-py's exceptions are translated here and nowhere else.

A relay that is not heard for ``DEAD_AFTER`` is taken for dead: its clients leave every
other relay's directory at once, and its keys are deleted (compare-and-set on the revision
seen, so a key claimed anew meanwhile stays), which frees its nicks for its clients to
register on another relay. A relay cut off from NATS keeps its own clients, but cannot
let anyone in (``UNREACHABLE``) nor reach the other relays' clients (their copies are
reported not delivered); once back, it hangs up on any client whose key was deleted or
taken meanwhile (``lost_claim``): that client reconnects and claims its nick anew.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Awaitable
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.kv import KeyValue

from e2echat.errors import ClusterUnreachable, RemoteProtocolError
from e2echat.relay.cluster import addresses
from e2echat.relay.cluster.core import (
    STORED,
    TAKEN,
    UNREACHABLE,
    Claim,
    ClusterCore,
    FetchElsewhere,
    Forward,
    Release,
)
from e2echat.relay.cluster.jetstream_store import JetStreamStore, open_bucket, watch_again
from e2echat.relay.cluster.roomlink import RoomsLink
from e2echat.relay.cluster.rooms import (
    ORDERED,
    DropMembership,
    SaveMembership,
    decode_ordered,
    encode_ordered,
)
from e2echat.relay.cluster.wire import (
    DEAD_AFTER,
    DEFAULT_NAME,
    FETCH,
    HEARTBEAT,
    MAIL_TAKEN,
    MAILBOX,
    MAILBOX_PART,
    Names,
    check_name,
    check_node,
    decode_claim,
    decode_fetch,
    decode_forward,
    decode_mail,
    decode_mailbox_ask,
    decode_outcome,
    decode_taken,
    encode_claim,
    encode_fetch,
    encode_forward,
    encode_mail,
    encode_mailbox_ask,
    encode_outcome,
    encode_taken,
    new_node_id,
    nick_key,
)
from e2echat.relay.core import Action, Persist
from e2echat.relay.server import Relay
from e2echat.relay.store import Identity, Snapshot
from e2echat.wire.codec import decode_message
from e2echat.wire.messages import Bundles
from e2echat.wire.objects import Bundle, PeerInfo

log = logging.getLogger("e2echat.relay.cluster.relay")

#: how long a forward waits for the other relay's answer: past it, its copies are reported
#: not delivered (a relay that slow is as good as gone to the sender)
FORWARD_TIMEOUT = 2.0
#: each key-value operation, and the connection to NATS at start-up
NATS_TIMEOUT = 5.0
#: a gap between two rounds of ``_beat`` (due every HEARTBEAT / 2) past which this relay
#: was itself stopped or stalled, and judges no one before it hears them anew
LATE_AFTER = HEARTBEAT + 1.0
#: requests from other relays handled at once, each in its own task: past it, the next
#: waits its turn (each holds up to 1 MiB, NATS's largest payload)
REQUESTS_AT_ONCE = 64
#: asks of a live relay for a client's mail, one each HEARTBEAT, before it is left there
#: (for the client's next connection)
MAIL_TRIES = 3
#: rounds of read and compare-and-set for one claim before the nick counts as taken
CLAIM_TRIES = 4
#: claims waiting at once to learn whether the relay holding their nick is alive
#: (``_alive``): past it, the nick counts as taken at once (each waiting one holds a
#: register, up to DEAD_AFTER + HEARTBEAT)
HELD_AT_MOST = 4096
#: relays taken for dead that are remembered as such: past it, the oldest is forgotten
#: (and a claim on a nick it held waits DEAD_AFTER anew, as for a relay never heard of)
GONE_AT_MOST = 1024

Outcome = tuple[list[str], list[str], list[str], list[str], list[str]]


class ClusterRelay(Relay):
    def __init__(
        self,
        host: str,
        port: int,
        *,
        cluster: str,
        cluster_name: str = DEFAULT_NAME,
        nats_options: dict[str, Any] | None = None,
        cluster_replicas: int = 1,
        **options: Any,
    ) -> None:
        """``cluster``: the NATS server's URL; ``cluster_name``: relays with the same one
        on that server are one relay; ``nats_options``: passed to ``nats.connect`` as they
        are (credentials, TLS); ``cluster_replicas``: how many NATS servers keep each
        bucket's data; ``options`` as for ``Relay``. Without a ``store``, the relay keeps
        what it knows in the cluster's JetStream (relay/cluster/jetstream_store.py)."""
        super().__init__(host, port, **options)
        self.url = cluster
        self.names = Names(check_name(cluster_name))
        self.node = new_node_id()
        self.replicas = cluster_replicas
        if options.get("store") is None:
            self.store = JetStreamStore(self.names, self.node, self.limits, replicas=cluster_replicas)
        self._orphans_lock = asyncio.Lock()
        #: set once the mail of relays gone at start is noted (``_survey``)
        self._surveyed = asyncio.Event()
        self._nats_options = nats_options or {}
        self._nc: NatsClient | None = None
        self._kv: KeyValue | None = None
        #: key -> (nick, the revision of the key this relay wrote): its clients online
        self._claims: dict[str, tuple[str, int]] = {}
        #: the bucket as last seen: key -> (node, revision, entry)
        self._keys: dict[str, tuple[str, int, PeerInfo]] = {}
        #: node -> when it was last heard (the loop's clock); the ones taken for dead are not here
        self._heard: dict[str, float] = {}
        #: the nodes taken for dead and not heard since, oldest first (bounded: GONE_AT_MOST)
        self._gone: dict[str, None] = {}
        #: claims in ``_alive`` now (bounded: HELD_AT_MOST)
        self._held = 0
        #: set once the bucket has been read through: no claim is decided before
        self._ready = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        #: what NATS last said went wrong (for the error when it cannot be reached at all)
        self._last_error: Exception | None = None
        self._stopping = False
        self._watcher: KeyValue.KeyWatcher | None = None
        #: requests from other relays in hand (``_on_request``)
        self._requests_free = asyncio.Semaphore(REQUESTS_AT_ONCE)
        #: sender -> the last of its forwards being delivered: the next waits for it
        self._in_turn: dict[str, asyncio.Future[None]] = {}
        #: the memberships of rooms, in their own bucket
        self._rooms = RoomsLink(self)

    @property
    def cluster_core(self) -> ClusterCore:
        assert isinstance(self.core, ClusterCore)
        return self.core

    def _new_core(self, snapshot: Snapshot, *, wall: float, now: float) -> ClusterCore:
        return ClusterCore(
            self.limits,
            node=self.node,
            password=self._password,
            key=self.core.key,
            shared_bundles=isinstance(self.store, JetStreamStore),
            snapshot=snapshot,
            wall=wall,
            now=now,
        )

    # -- start and stop ------------------------------------------------------------------------

    async def start(self) -> None:
        """Reach NATS (or fail: ``ClusterUnreachable``), then listen, then join the
        cluster: read the bucket, hear and send heartbeats, take forwards."""
        self._nc = nc = await self._connect()
        try:
            js = nc.jetstream(timeout=NATS_TIMEOUT)
            self._kv = await open_bucket(js, self.names.nicks_bucket, None, self.replicas)
            if isinstance(self.store, JetStreamStore):
                await self.store.open_async(js)
            await super().start()
            await self._rooms.start(js)
            await nc.subscribe(self.names.alive, cb=self._on_alive)
            await nc.subscribe(self.names.node(self.node), cb=self._on_request)
            await nc.subscribe(addresses.subject(self.names), cb=self._on_addresses)
            watcher = await self._kv.watchall()
        except Exception as exc:
            self._stopping = True  # not "reconnecting": it is giving up
            await self._close_nats()
            if self._server is not None:
                await super().stop()
            if isinstance(exc, nats.js.errors.ServiceUnavailableError):
                detail = "it does not run JetStream (start nats-server with -js, and -sd DIR for its store)"
                raise ClusterUnreachable(url=self.url, detail=detail) from None
            raise ClusterUnreachable(url=self.url, detail=_reason(exc)) from None
        self._spawn(self._watch(watcher))
        self._spawn(self._beat())
        self._spawn(self._report_addresses())
        if isinstance(self.store, JetStreamStore):
            self._spawn(self.store.watch_async(self._learned))
            self._spawn(self._survey())
        await asyncio.wait_for(self._ready.wait(), NATS_TIMEOUT)
        await asyncio.wait_for(self._rooms.ready.wait(), NATS_TIMEOUT)
        log.info("relay %s joined cluster %r on %s", self.node, self.names.name, self.url)

    async def _connect(self) -> NatsClient:
        options: dict[str, Any] = {
            "name": f"e2echat relay {self.node}",
            "connect_timeout": NATS_TIMEOUT,
            "allow_reconnect": True,
            "max_reconnect_attempts": -1,  # a relay outlives its NATS server's restarts
            "reconnect_time_wait": 0.5,
            "disconnected_cb": self._disconnected,
            "reconnected_cb": self._reconnected,
            "error_cb": self._error,
        }
        if urlsplit(self.url).scheme == "tls":
            # TLS before the first byte of NATS's protocol, on every (re)connection: in
            # nats-py 2.16 the usual upgrade happens only if the server's INFO, sent in
            # the clear, asks for it, so whoever is on the path could strip that and read
            # CONNECT (credentials) and everything after. The server must be set up for it
            # (``handshake_first: true`` in its tls block; README, "A cluster of relays").
            options["tls_handshake_first"] = True
        options.update(self._nats_options)
        # nats-py keeps trying a server it cannot reach (as it should once connected): at
        # start-up, one that does not answer in time is an error, with what went wrong.
        try:
            return await asyncio.wait_for(nats.connect(self.url, **options), NATS_TIMEOUT)
        except Exception as exc:
            seen = self._last_error if isinstance(exc, TimeoutError) else exc
            raise ClusterUnreachable(url=self.url, detail=_reason(seen or exc)) from None

    async def stop(self, reason: str = "the relay was stopped") -> None:
        """Stop as a single relay does, then give up this relay's nicks and leave NATS
        (the changes to memberships asked for so far made first, if NATS lets them)."""
        self._stopping = True
        if self._nc is not None and self._nc.is_connected:
            await self._rooms.written_so_far()
        for task in list(self._tasks):
            task.cancel()
        await super().stop(reason)
        if self._kv is not None and self._nc is not None and self._nc.is_connected:
            kv, claims = self._kv, list(self._claims.items())
            self._claims.clear()
            deletes = [kv.delete(key, last=revision) for key, (_, revision) in claims]
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.gather(*deletes, return_exceptions=True), NATS_TIMEOUT)
            with contextlib.suppress(Exception):  # its connections no longer count anywhere
                await self._nc.publish(addresses.subject(self.names), self.cluster_core.sources.goodbye())
        await self._close_nats()

    async def _close_nats(self) -> None:
        nc, self._nc = self._nc, None
        if nc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(nc.close(), NATS_TIMEOUT)

    # -- the core's requests -------------------------------------------------------------------

    def _apply(self, actions: list[Action]) -> None:
        super()._apply(actions)
        if not isinstance(self.core, ClusterCore):
            return
        self.core.mirror(actions)
        requests = self.core.requests
        if not requests:
            return
        taken = requests[:]
        requests.clear()  # the router holds the same list
        for request in taken:
            if isinstance(request, Claim):
                self._spawn(self._claim(request))
            elif isinstance(request, Release):
                self._spawn(self._release(request.nick))
            elif isinstance(request, Forward):
                self._spawn(self._forward(request))
            elif isinstance(request, SaveMembership | DropMembership):
                self._rooms.request(request)
            else:
                self._spawn(self._fetch_elsewhere(request))

    async def _claim(self, request: Claim) -> None:
        """Create the nick's key; if it exists, take it over only from a relay taken for
        dead (compare-and-set on the revision read: two relays doing so, one wins)."""
        refusal: tuple[str, str] | None = UNREACHABLE
        try:
            await asyncio.wait_for(self._ready.wait(), NATS_TIMEOUT)
            refusal = await asyncio.wait_for(self._take(request.peer), NATS_TIMEOUT + DEAD_AFTER)
        except Exception as exc:  # NATS out of reach, or too slow
            log.warning("claim of %s failed: %s", request.peer.nick, _reason(exc))
        if refusal is None and isinstance(self.store, JetStreamStore):
            await self._adopt(request.peer)
        loop = asyncio.get_running_loop()
        self._apply(self.cluster_core.claimed(request.conn, refusal, loop.time()))
        if refusal is None:
            self._spawn(self._collect_mail(request.peer))

    async def _take(self, peer: PeerInfo) -> tuple[str, str] | None:
        """Make the claim, or say why not. A compare-and-set lost to a delete (the dead
        relay's keys being freed) is tried again: only a live owner, or another relay's
        newer claim, makes the nick taken."""
        assert self._kv is not None
        key, value = nick_key(peer.nick), encode_claim(self.node, peer)
        for _ in range(CLAIM_TRIES):
            try:
                self._claims[key] = (peer.nick, await self._kv.create(key, value))
                return None
            except nats.js.errors.KeyWrongLastSequenceError:
                pass
            try:
                entry = await self._kv.get(key)
            except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
                continue  # released meanwhile: create it
            assert entry.value is not None and entry.revision is not None
            try:
                owner = decode_claim(entry.value)[0]
            except RemoteProtocolError:
                owner = ""  # a broken value is nobody's
            if owner and owner != self.node and await self._alive(owner):
                return TAKEN
            try:
                self._claims[key] = (peer.nick, await self._kv.update(key, value, last=entry.revision))
            except nats.js.errors.KeyWrongLastSequenceError:
                continue  # changed since read: by a delete, or by another relay's claim
            log.info("%s: claim taken over from relay %s, not heard from", peer.nick, owner or "?")
            return None
        return TAKEN

    async def _adopt(self, peer: PeerInfo) -> None:
        """``peer``'s nick is claimed here: its bundle is this relay's to hand out now, as
        the cluster keeps it. If NATS fails us here, the bundle remembered here is
        dropped instead (its prekeys may have been handed out elsewhere): the client is
        told it has none, and publishes new ones."""
        assert isinstance(self.store, JetStreamStore)
        key = bytes(peer.identity_key)
        try:
            bundle = await asyncio.wait_for(self.store.adopt_async(peer.nick, key), NATS_TIMEOUT)
        except Exception as exc:
            log.warning("the record of %s could not be read: %s", peer.nick, _reason(exc))
            bundle = None
        self.cluster_core.adopt(peer.nick, key, bundle)

    async def _release(self, nick: str) -> None:
        key = nick_key(nick)
        claim = self._claims.get(key)
        if claim is None or claim[0] != nick or self._kv is None:
            return
        del self._claims[key]
        try:
            await asyncio.wait_for(self._kv.delete(key, last=claim[1]), NATS_TIMEOUT)
        except Exception as exc:  # taken over meanwhile, or NATS out of reach: the others time us out
            log.info("release of %s: %s", nick, _reason(exc))
        if isinstance(self.store, JetStreamStore):
            await self._disown(nick)

    async def _disown(self, nick: str) -> None:
        """``nick`` left: once what it changed is kept, its one-time prekeys are the
        cluster's to hand out (if it came back meanwhile, they stay this relay's)."""
        assert isinstance(self.store, JetStreamStore)
        if self._journal is not None:
            await self._journal.settle()
        if nick in self.core.online:
            return
        try:
            await asyncio.wait_for(self.store.disown_async(nick), NATS_TIMEOUT)
        except Exception as exc:  # the record stays ours until this relay is taken for dead
            log.info("record of %s not given up: %s", nick, _reason(exc))

    async def _forward(self, request: Forward) -> None:
        nodes = list(request.groups)
        # After this relay's changes to memberships so far: see relay/cluster/roomlink.py.
        after = await self._rooms.written_so_far()
        asked = [self._ask(node, request, after) for node in nodes]
        answers = await asyncio.gather(*asked)
        self._apply(request.routed(dict(zip(nodes, answers, strict=True))))

    async def _ask(self, node: str, request: Forward, after: int) -> Outcome | None:
        assert self._nc is not None
        try:
            forward = encode_forward(request.sender, request.groups[node])
            payload = encode_ordered(after, request.message_id, forward)
            reply = await self._nc.request(self.names.node(node), payload, FORWARD_TIMEOUT)
            return decode_outcome(reply.data)
        except Exception as exc:  # no answer in time, no such relay, NATS out of reach
            log.info("forward to relay %s: %s", node, _reason(exc))
            return None

    async def _fetch_elsewhere(self, request: FetchElsewhere) -> None:
        nodes = list(request.groups)
        asked = [
            self._ask_store(request.requester, request.groups[node])
            if node == STORED
            else self._ask_bundles(node, request.requester, request.groups[node])
            for node in nodes
        ]
        answers = await asyncio.gather(*asked)
        self._apply(request.answered(dict(zip(nodes, answers, strict=True))))

    async def _ask_bundles(self, node: str, requester: str, nicks: list[str]) -> Bundles | None:
        assert self._nc is not None
        try:
            reply = await self._nc.request(
                self.names.node(node), encode_fetch(requester, nicks), FORWARD_TIMEOUT
            )
            answer = decode_message(reply.data)
        except Exception as exc:  # no answer in time, no such relay, NATS out of reach, nonsense
            log.info("fetch from relay %s: %s", node, _reason(exc))
            return None
        return answer if isinstance(answer, Bundles) else None

    async def _ask_store(self, requester: str, nicks: list[str]) -> Bundles | None:
        """The bundles of nicks online nowhere, from the cluster's store, each one-time
        prekey taken out there under compare-and-set."""
        assert isinstance(self.store, JetStreamStore)
        found: list[Bundle] = []
        try:
            for nick in nicks:
                bundle = None
                if nick != requester:
                    popping = self.store.pop_async(nick, self._owner_alive)
                    bundle = await asyncio.wait_for(popping, NATS_TIMEOUT)
                if bundle is not None:
                    found.append(bundle)
        except Exception as exc:  # NATS out of reach: the rest are missing
            log.info("bundles from the cluster's store: %s", _reason(exc))
        return Bundles(tuple(found), ())

    def _learned(self, identity: Identity) -> None:
        self.cluster_core.learned(identity)

    def _owner_alive(self, node: str) -> bool:
        return node == self.node or node in self._heard

    async def _collect_mail(self, peer: PeerInfo) -> None:
        """``peer`` is in: what the other relays kept for it while it was away comes here,
        a part at a time. Each part is dropped there only once it is kept here (a part
        lost on the way stays there, for its next connection)."""
        for node in list(self._heard):
            await self._collect_from(node, peer)
        if isinstance(self.store, JetStreamStore):
            await self._surveyed.wait()
            await self._collect_orphans(peer.nick, bytes(peer.identity_key))

    async def _collect_from(self, node: str, peer: PeerInfo) -> None:
        """``peer``'s mail kept by relay ``node``. A relay alive that does not answer in
        time (busy, stalled) is asked again, ``MAIL_TRIES`` times in all: else what it
        holds would wait for the client's next connection."""
        assert self._nc is not None
        nick, key = peer.nick, bytes(peer.identity_key)
        ask = encode_mailbox_ask(nick, key)
        failures = 0
        while True:
            try:
                reply = await self._nc.request(self.names.node(node), ask, FORWARD_TIMEOUT)
                items, more = decode_mail(reply.data, nick)
            except RemoteProtocolError as exc:  # nonsense: asking again would not mend it
                log.warning("mailbox of %s from relay %s: %s", nick, node, exc)
                return
            except Exception as exc:  # out of reach, or no answer in time
                failures += 1
                # Not again once it is taken for dead (its mail is then orphaned, and
                # collected as such), nor once the client is gone.
                moot = node not in self._heard or not self.cluster_core.online_with(nick, key)
                if failures >= MAIL_TRIES or moot:
                    log.info("mailbox of %s from relay %s: %s; it stays there", nick, node, _reason(exc))
                    return
                log.info("mailbox of %s from relay %s: %s; asking again", nick, node, _reason(exc))
                await asyncio.sleep(HEARTBEAT)
                continue
            if not items:
                return
            actions, upto = self.cluster_core.take_over(nick, items)
            self._apply(actions)
            if self._journal is not None:
                await self._journal.settle()  # kept here before it is dropped there
            if upto < 0:
                return  # full here: the rest stays there
            with contextlib.suppress(Exception):
                await self._nc.publish(self.names.node(node), encode_taken(nick, upto))
            if not (more and upto == items[-1].seq):
                return

    async def _survey(self) -> None:
        """Once this relay has heard every live relay: note the mail in the cluster's store
        that relays not alive queued (killed, or not started again), and take what is
        for those online here."""
        assert isinstance(self.store, JetStreamStore)
        await asyncio.sleep(DEAD_AFTER + HEARTBEAT)
        while True:
            try:
                nicks = await asyncio.wait_for(
                    self.store.open_orphans().survey_async(self._owner_alive), NATS_TIMEOUT
                )
                break
            except Exception as exc:  # NATS out of reach: once it is back
                log.info("the mail of relays gone could not be listed: %s", _reason(exc))
                await asyncio.sleep(HEARTBEAT)
        self._surveyed.set()
        await self._collect_for(nicks)

    async def _orphaned_by(self, node: str) -> None:
        """Relay ``node`` is taken for dead: note the mail it queued, and take what is for
        those online here (it did not answer their registers)."""
        assert isinstance(self.store, JetStreamStore)
        try:
            nicks = await asyncio.wait_for(self.store.open_orphans().gone_async(node), NATS_TIMEOUT)
        except Exception as exc:  # noted at this relay's next start, or another's
            log.info("the mail of relay %s could not be listed: %s", node, _reason(exc))
            return
        await self._collect_for(nicks)

    async def _collect_for(self, nicks: list[str]) -> None:
        for nick in nicks:
            known = self.core.kept.identities.get(nick)
            if nick in self.core.online and known is not None:
                await self._collect_orphans(nick, known.identity_key)

    async def _collect_orphans(self, nick: str, identity_key: bytes) -> None:
        """What relays gone (killed, never started again) queued for ``nick`` (online here
        with ``identity_key``): read from the cluster's store, kept here, then deleted
        there."""
        assert isinstance(self.store, JetStreamStore)
        async with self._orphans_lock:  # one at a time: an item is taken once
            await self._take_orphans(nick, identity_key, self.store)

    async def _take_orphans(self, nick: str, key: bytes, store: JetStreamStore) -> None:
        if not self.cluster_core.online_with(nick, key):
            return  # gone, or another key's now: for its own connection to take
        try:
            found = await asyncio.wait_for(store.open_orphans().orphans_async(nick, key), NATS_TIMEOUT)
        except Exception as exc:  # they stay there, for its next connection
            log.info("mailbox of %s from the cluster's store: %s", nick, _reason(exc))
            return
        if not found or not self.cluster_core.online_with(nick, key):
            return
        # Numbered here in the order taken: their seqs are each their own relay's.
        items = [replace(item, seq=number) for number, (_, _, item) in enumerate(found)]
        actions, upto = self.cluster_core.take_over(nick, items)
        self._apply(actions)
        if self._journal is not None:
            await self._journal.settle()  # kept here before it is deleted there
        if self._journal is not None and self._journal.failure is not None:
            return
        taken = [(item_key, revision) for item_key, revision, _ in found[: upto + 1]]
        try:
            await asyncio.wait_for(store.open_orphans().drop_async(nick, taken), NATS_TIMEOUT)
        except Exception as exc:
            log.warning("mailbox items of %s taken but not deleted: %s", nick, _reason(exc))

    # -- what NATS tells ---------------------------------------------------------------------

    async def _on_request(self, msg: Msg) -> None:
        """Another relay's forward of copies, or its fetch of bundles, or its ask for
        mail, for clients here: each in a task of its own (nats-py hands a subscription's
        messages over one at a time), so that one waiting for the rooms bucket or the
        store holds up no other past its asker's timeout. Past ``REQUESTS_AT_ONCE`` in
        hand, the next waits its turn. Each task's first step runs in the order they came."""
        await self._requests_free.acquire()
        task = asyncio.ensure_future(self._handle_request(msg))
        self._tasks.add(task)
        task.add_done_callback(self._request_done)

    def _request_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._requests_free.release()

    async def _handle_request(self, msg: Msg) -> None:
        core = self.cluster_core
        try:
            kind = msg.data[:1]
            if kind == MAIL_TAKEN:
                nick, upto = decode_taken(msg.data)
                self._apply(core.handed_over(nick, upto))
                return
            if kind == MAILBOX:
                nick, identity_key = decode_mailbox_ask(msg.data)
                actions: list[Action] = []
                reply = encode_mail(*core.hand_over(nick, identity_key, MAILBOX_PART))
            elif kind == FETCH:
                requester, nicks = decode_fetch(msg.data)
                actions, reply = core.fetch_here(requester, nicks)
                self._apply(actions)
            else:
                # A send's copies, after what its relay wrote of memberships (roomlink.py).
                after, message_id, forward = decode_ordered(msg.data) if kind == ORDERED else (0, 0, msg.data)
                sender, items = decode_forward(forward)
                actions, reply = await self._deliver_in_turn(sender, after, message_id, items)
        except RemoteProtocolError as exc:
            log.warning("a request from another relay that does not decode: %s", exc)
            return
        if self._journal is not None and any(isinstance(action, Persist) for action in actions):
            await self._journal.settle()  # a copy said queued is kept first
        with contextlib.suppress(Exception):  # the asker times out and reports them not delivered
            await msg.respond(reply)

    async def _deliver_in_turn(
        self, sender: str, after: int, message_id: int, items: list[tuple[str, bytes]]
    ) -> tuple[list[Action], bytes]:
        """Deliver ``sender``'s copies once the rooms bucket is read to ``after``, and
        after its forwards that came before (they wait no longer: their wait began first):
        the actions, applied, and the answer."""
        before = self._in_turn.get(sender)
        mine: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._in_turn[sender] = mine
        try:
            await self._rooms.read_to(after)
            if before is not None:
                await asyncio.wait([before])  # done, even if cancelled
            now = asyncio.get_running_loop().time()
            actions, outcome = self.cluster_core.deliver_here(sender, message_id, items, now)
            self._apply(actions)
            return actions, encode_outcome(*outcome)
        finally:
            mine.set_result(None)
            if self._in_turn.get(sender) is mine:
                del self._in_turn[sender]

    async def _on_alive(self, msg: Msg) -> None:
        try:
            node = check_node(msg.data)
        except RemoteProtocolError:
            return
        if node == self.node:
            return
        if node not in self._heard:
            self._revived(node)
        self._gone.pop(node, None)
        self._heard[node] = asyncio.get_running_loop().time()

    def _revived(self, node: str) -> None:
        """``node`` is heard again after it was taken for dead: its clients left every
        directory then, and cannot be announced again with the same session keys (their
        peers take that for a replay). Their keys are deleted, if that failed then: the
        relay hangs up on them, and they register anew."""
        owned = [(key, revision) for key, (where, revision, _) in self._keys.items() if where == node]
        if owned:
            self._spawn(self._free(owned))
        if isinstance(self.store, JetStreamStore):
            self.store.open_orphans().revived(node)  # its mail is its own to hand over again

    async def _watch(self, watcher: KeyValue.KeyWatcher) -> None:
        """Every change to the bucket, from its contents at start on; watched anew after
        each reconnect to NATS (``_reconnected`` stops the old watch: a watch does not
        survive a restart of the server)."""
        assert self._kv is not None
        while True:
            self._watcher = watcher
            await self._read(watcher)
            watcher = await watch_again(self._kv, "nicks")

    async def _read(self, watcher: KeyValue.KeyWatcher) -> None:
        #: the keys the bucket holds, until it is read through
        listed: set[str] | None = set()
        async for entry in watcher:
            if entry is None:  # read through: what follows is news
                if listed is not None:
                    self._reconcile(listed)
                    listed = None
                self._ready.set()
                continue
            if listed is not None:
                listed.add(entry.key)
            try:
                self._changed(entry.key, entry.revision, entry.operation, entry.value)
            except Exception:  # a bug: say so, and keep watching
                log.exception("error handling a change to the nicks bucket")

    def _reconcile(self, listed: set[str]) -> None:
        """The bucket read through anew: the keys this relay knew that are gone (deleted
        while it was out of touch, their deletes never seen) are gone here too."""
        for key in [key for key in self._keys if key not in listed]:
            self._changed(key, self._keys[key][1] + 1, "DEL", None)
        for key, (_, revision) in list(self._claims.items()):
            if key not in listed:
                self._changed(key, revision + 1, "DEL", None)

    def _changed(self, key: str, revision: int, operation: str | None, value: bytes | None) -> None:
        core, loop = self.cluster_core, asyncio.get_running_loop()
        mine = self._claims.get(key)
        if mine is not None and revision <= mine[1]:
            return  # our own claim, or older news
        before = self._keys.pop(key, None)
        if before is not None and operation is None and value and before[0] != self.node:
            try:
                same = decode_claim(value) == (before[0], before[2])
            except RemoteProtocolError:
                same = False
            if same:  # read again (a watch anew): not news, and not to be told again
                self._keys[key] = (before[0], revision, before[2])
                return
        if mine is not None:  # a newer change to our key: it is no longer ours
            del self._claims[key]
            self._apply(core.lost_claim(mine[0]))
        if before is not None and before[0] != self.node:
            self._apply(core.remote_left(before[0], before[2].nick))
        if operation is not None or not value:  # deleted or purged
            return
        try:
            node, peer = decode_claim(value)
        except RemoteProtocolError as exc:
            log.warning("a claim in the nicks bucket does not decode: %s", exc)
            return
        if node == self.node:
            return  # an old claim of ours, released since
        self._keys[key] = (node, revision, peer)
        if node not in self._heard:
            self._heard[node] = loop.time()  # a relay seen before heard: it has DEAD_AFTER to speak
        self._apply(core.remote_joined(node, peer, loop.time()))

    # -- heartbeats --------------------------------------------------------------------------

    async def _beat(self) -> None:
        """Say we are alive; take the relays not heard for ``DEAD_AFTER`` for dead.

        Not after this relay was itself late (stopped, or its loop stalled): the others'
        heartbeats of meanwhile wait unread on its socket, and it would take every relay
        for dead, delete their clients' keys, and so make all of them hang up. It hears
        them anew first, as after a reconnect."""
        assert self._nc is not None
        loop, beat = asyncio.get_running_loop(), self.node.encode("ascii")
        last = loop.time()
        while True:
            nc, now = self._nc, loop.time()
            gap, last = now - last, now
            if gap > LATE_AFTER:
                log.warning("this relay stood still for %.1fs: hearing the others anew", gap)
                for node in self._heard:
                    self._heard[node] = now
            if nc is not None and nc.is_connected:
                with contextlib.suppress(Exception):
                    await nc.publish(self.names.alive, beat)
                for node, heard in list(self._heard.items()):
                    if now - heard > DEAD_AFTER:
                        self._dead(node)
            await asyncio.sleep(HEARTBEAT / 2)

    def _dead(self, node: str) -> None:
        log.warning("relay %s not heard for %gs: its clients are gone", node, DEAD_AFTER)
        del self._heard[node]
        self._gone[node] = None
        if len(self._gone) > GONE_AT_MOST:
            del self._gone[next(iter(self._gone))]
        self._apply(self.cluster_core.node_lost(node))
        owned = [(key, revision) for key, (where, revision, _) in self._keys.items() if where == node]
        if owned:
            self._spawn(self._free(owned))
        if isinstance(self.store, JetStreamStore):
            self._spawn(self._orphaned_by(node))

    async def _free(self, owned: list[tuple[str, int]]) -> None:
        """Delete a dead relay's keys, each only if unchanged since read (every live relay
        tries; one succeeds, the rest find the revision moved on)."""
        assert self._kv is not None
        for key, revision in owned:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._kv.delete(key, last=revision), NATS_TIMEOUT)

    async def _alive(self, node: str) -> bool:
        """Whether ``node`` is alive: it beats after we ask (True), or is taken for dead
        first (False). A relay just killed still counts as alive for up to ``DEAD_AFTER``:
        a client failing over from it waits that long here, rather than being told its own
        nick is taken and backing off. A relay never heard of has ``DEAD_AFTER`` from now;
        one already taken for dead (its keys being freed) is dead at once: waiting
        ``DEAD_AFTER`` anew for it would hold every client failing over from it whose key
        is not deleted yet."""
        if node in self._gone:
            return False
        if self._held >= HELD_AT_MOST:
            return True  # too many waiting: cautious
        loop = asyncio.get_running_loop()
        asked = loop.time()
        self._heard.setdefault(node, asked)
        self._held += 1
        try:
            while loop.time() - asked < DEAD_AFTER + HEARTBEAT:
                heard = self._heard.get(node)
                if heard is None:
                    return False
                if heard > asked:
                    return True
                await asyncio.sleep(HEARTBEAT / 10)
            return True  # neither: cautious
        finally:
            self._held -= 1

    # -- the per-address limits across the cluster (addresses.py) ----------------------------

    async def _on_addresses(self, msg: Msg) -> None:
        try:
            self.cluster_core.sources.heard(msg.data, asyncio.get_running_loop().time())
        except RemoteProtocolError as exc:
            log.warning("an address report from another relay that does not decode: %s", exc)

    async def _report_addresses(self) -> None:
        """Send this relay's address report whenever one is due. Not while NATS is out of
        reach: what this relay lets in meanwhile is told once it is back."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(addresses.REPORT_INTERVAL)
            nc = self._nc
            if nc is None or not nc.is_connected:
                continue
            payload = self.cluster_core.sources.report(loop.time())
            if payload is not None:
                with contextlib.suppress(Exception):  # lost: its counts go again, its new connections not
                    await nc.publish(addresses.subject(self.names), payload)

    # -- NATS's own events ----------------------------------------------------------------------

    async def _disconnected(self) -> None:
        if self._stopping:
            return
        log.warning("lost the cluster's NATS server at %s; reconnecting", self.url)

    async def _reconnected(self) -> None:
        # The time cut off says nothing of the others: hear them anew before judging.
        now = asyncio.get_running_loop().time()
        for node in self._heard:
            self._heard[node] = now
        if self._watcher is not None:
            with contextlib.suppress(Exception):
                await self._watcher.stop()  # type: ignore[no-untyped-call]  # and ``_watch`` reads anew
        if isinstance(self.store, JetStreamStore):
            await self.store.rewatch()
        await self._rooms.stop_watching()
        log.warning("reconnected to the cluster's NATS server at %s", self.url)

    async def _error(self, exc: Exception) -> None:
        self._last_error = exc  # every failed attempt while reconnecting: not worth a line each
        log.debug("NATS: %s", _reason(exc))

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ModuleNotFoundError) and exc.name == "nkeys":
        return "a credentials file (--cluster-creds) needs nkeys: pip install 'e2echat[cluster]'"
    if isinstance(exc, ssl.SSLError) and exc.reason == "WRONG_VERSION_NUMBER":
        return "it did not answer in TLS (for tls://, its tls block needs handshake_first: true)"
    text = str(exc).strip()
    return text or type(exc).__name__
