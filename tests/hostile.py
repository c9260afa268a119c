"""A relay that lies, for tests that mount attacks through the untrusted server.

``HostileRelay`` is the real relay with one seam: every message it is about to write
passes through ``tamper``, which may change it, drop it, duplicate it or add others.
Every ``bundles`` answer passes first through ``bundle_tamper``, which may rewrite it
(substitute keys, withhold bundles, hand out a one-time prekey again: see
``same_one_time_prekey``). It also keeps what clients sent it, as a relay that records
traffic would.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nacl.public import PrivateKey, PublicKey

from e2echat.crypto.keyring import Keyring
from e2echat.crypto.session import Kind, PeerSession
from e2echat.crypto.x3dh import PrekeyBundle
from e2echat.errors import RemoteProtocolError
from e2echat.relay.core import Action, Close, ConnId
from e2echat.relay.server import Relay, _Link
from e2echat.wire import messages as m
from e2echat.wire.codec import decode_message
from e2echat.wire.framing import FrameDecoder
from e2echat.wire.objects import OneTimePrekey, PeerInfo

from relay_frames import Outgoing, as_actions, spelled_out
from support import LOOPBACK

Tamper = Callable[["HostileRelay", Outgoing], list[Outgoing]]
BundleTamper = Callable[[m.Bundles], m.Bundles]


class HostileRelay(Relay):
    def __init__(self, tamper: Tamper | None = None, **limits: Any) -> None:
        super().__init__(LOOPBACK, 0, **limits)
        self.tamper = tamper
        #: rewrites each ``bundles`` answer before it is written (and before ``tamper``)
        self.bundle_tamper: BundleTamper | None = None
        self.received: list[tuple[ConnId, m.Message]] = []
        # The recording reads each connection's bytes a second time, as a wiretap would.
        self._taps: dict[ConnId, FrameDecoder] = {}

    def nick(self, conn: ConnId) -> str | None:
        return self.core.nick_of(conn)

    def conn(self, nick: str) -> ConnId:
        return self.core.online[nick]

    def inject(self, nick: str, message: m.Message) -> None:
        """Write a message of the relay's own making to ``nick``."""
        self.inject_many(nick, [message])

    def inject_many(self, nick: str, messages: list[m.Message]) -> None:
        super()._apply(as_actions(Outgoing(self.conn(nick), message) for message in messages))

    def hang_up(self, nick: str) -> None:
        """Drop ``nick``'s connection at once, as a relay (or the network) may at any time."""
        transport = self._links[self.conn(nick)].transport
        assert transport is not None
        transport.abort()

    def sends_from(self, nick: str) -> list[m.Send]:
        conn = self.core.online.get(nick)
        return [msg for c, msg in self.received if c == conn and isinstance(msg, m.Send)]

    def _received(self, link: _Link, data: bytes) -> None:
        if link.conn in self._links:
            tap = self._taps.setdefault(link.conn, FrameDecoder())
            with contextlib.suppress(RemoteProtocolError):  # the relay refuses it: nothing to keep
                self.received.extend((link.conn, decode_message(frame)) for frame in tap.receive_data(data))
        super()._received(link, data)

    def _apply(self, actions: list[Action]) -> None:
        if self.tamper is None and self.bundle_tamper is None:
            super()._apply(actions)
            return
        changed: list[Outgoing | Close] = []
        # The honest relay writes deliveries and presence in bulk; the tamper sees each.
        for item in spelled_out(actions):
            if isinstance(item, Outgoing) and self.bundle_tamper and isinstance(item.message, m.Bundles):
                item = Outgoing(item.conn, self.bundle_tamper(item.message))
            if isinstance(item, Outgoing) and self.tamper is not None:
                changed.extend(self.tamper(self, item))
            else:
                changed.append(item)
        super()._apply(as_actions(changed))


def substitute_keys(
    victim: str,
    target: str,
    *,
    identity_key: PublicKey | None = None,
    session_key: PublicKey | None = None,
) -> Tamper:
    """Show ``victim`` other keys for ``target`` than the ones ``target`` registered."""

    def swap(peer: PeerInfo) -> PeerInfo:
        if peer.nick != target:
            return peer
        return PeerInfo(peer.nick, identity_key or peer.identity_key, session_key or peer.session_key)

    def tamper(relay: HostileRelay, action: Outgoing) -> list[Outgoing]:
        message = action.message
        if relay.nick(action.conn) != victim:
            return [action]
        if isinstance(message, m.Welcome | m.Directory | m.Members):
            message = dataclasses.replace(message, peers=tuple(swap(p) for p in message.peers))
        elif isinstance(message, m.PeerJoined):
            message = m.PeerJoined(swap(message.peer))
        elif isinstance(message, m.Entered):
            message = m.Entered(message.room, swap(message.peer))
        return [Outgoing(action.conn, message)]

    return tamper


def deliveries(tamper: Callable[[HostileRelay, Outgoing, m.Deliver], list[Outgoing]]) -> Tamper:
    """A tamper that only sees ``deliver`` messages; everything else passes untouched."""

    def on_action(relay: HostileRelay, action: Outgoing) -> list[Outgoing]:
        if isinstance(action.message, m.Deliver):
            return tamper(relay, action, action.message)
        return [action]

    return on_action


def same_one_time_prekey(owner: str) -> BundleTamper:
    """A ``bundle_tamper`` that hands out ``owner``'s first one-time prekey again in every
    later bundle of ``owner`` (even once the relay has none left for them), as a relay
    that kept a copy would: the first contact and every later one share it."""
    first: list[OneTimePrekey] = []

    def tamper(answer: m.Bundles) -> m.Bundles:
        bundles = []
        for bundle in answer.bundles:
            if bundle.nick == owner:
                if not first:
                    first.extend(bundle.one_time)
                else:
                    bundle = dataclasses.replace(bundle, one_time=(first[0],))
            bundles.append(bundle)
        return dataclasses.replace(answer, bundles=tuple(bundles))

    return tamper


def flip_bit(data: bytes, bit: int) -> bytes:
    changed = bytearray(data)
    changed[bit // 8] ^= 1 << (bit % 8)
    return bytes(changed)


@dataclass(frozen=True)
class MadeUp:
    """Someone the relay made up: keys of its own (``info`` announces them) and a session
    with the victim, started from the victim's signed prekey as the relay holds it."""

    info: PeerInfo
    session: PeerSession

    @property
    def nick(self) -> str:
        return self.info.nick

    def deliver(self, text: str, room: str = "#lobby") -> m.Deliver:
        """A real message from them to the victim in ``room``, as the relay would pass it
        on (shown if the relay also says they are in it: ``entered``)."""
        return m.Deliver(self.nick, self.session.encrypt(text, Kind.ROOM, room=room))

    def entered(self, room: str = "#lobby") -> m.Entered:
        """The relay's word that they joined ``room``: a member, and a contact."""
        return m.Entered(room, self.info)


def victims_bundle(relay: HostileRelay, victim: str) -> PrekeyBundle:
    """``victim``'s bundle as the relay can make it from what ``victim`` sent: its
    identity key and the signed prekey it registered with (no one-time prekey)."""
    registered = [msg for _, msg in relay.received if isinstance(msg, m.Register) and msg.nick == victim]
    signed = registered[-1].signed_prekey
    return PrekeyBundle(registered[-1].identity_key, signed.key, signed.id, signed.signature)


def made_up_peers(relay: HostileRelay, victim: str, count: int, prefix: str = "fake") -> list[MadeUp]:
    """``count`` people the relay makes up (``fake0``, ``fake1``, ...), each with keys of
    its own and a session with ``victim``, so that it can announce them and deliver real
    messages from them."""
    bundle = victims_bundle(relay, victim)
    made = []
    for index in range(count):
        keyring = Keyring.fresh(f"{prefix}{index}", PrivateKey.generate(), time.time())
        session = keyring.peer(victim, bundle.identity_key)
        session.start(bundle)
        info = PeerInfo(keyring.nick, keyring.identity.public_key, PrivateKey.generate().public_key)
        made.append(MadeUp(info, session))
    return made
