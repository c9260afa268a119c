"""A relay that lies, for tests that mount attacks through the untrusted server.

``HostileRelay`` is the real relay with one seam: every message it is about to write
passes through ``tamper``, which may change it, drop it, duplicate it or add others.
It also keeps what clients sent it, as a relay that records traffic would.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

from nacl.public import PublicKey

from e2echat.relay.core import Action, ConnId, Outgoing, one_by_one
from e2echat.relay.server import Relay
from e2echat.wire import messages as m

from support import LOOPBACK

Tamper = Callable[["HostileRelay", Outgoing], list[Action]]


class HostileRelay(Relay):
    def __init__(self, tamper: Tamper | None = None, **limits: Any) -> None:
        super().__init__(LOOPBACK, 0, **limits)
        self.tamper = tamper
        self.received: list[tuple[ConnId, m.Message]] = []
        honest_receive = self.core.receive

        def receive(conn: ConnId, message: m.Message | m.Routes) -> list[Action]:
            self.received.append((conn, _as_send(message) if isinstance(message, m.Routes) else message))
            return honest_receive(conn, message)

        self.core.receive = receive  # type: ignore[method-assign]

    def nick(self, conn: ConnId) -> str | None:
        return self.core.nick_of(conn)

    def conn(self, nick: str) -> ConnId:
        return self.core.online[nick]

    def inject(self, nick: str, message: m.Message) -> None:
        """Write a message of the relay's own making to ``nick``."""
        self.inject_many(nick, [message])

    def inject_many(self, nick: str, messages: list[m.Message]) -> None:
        super()._apply([Outgoing(self.conn(nick), message) for message in messages])

    def sends_from(self, nick: str) -> list[m.Send]:
        conn = self.core.online.get(nick)
        return [msg for c, msg in self.received if c == conn and isinstance(msg, m.Send)]

    def _apply(self, actions: list[Action]) -> None:
        if self.tamper is None:
            super()._apply(actions)
            return
        changed: list[Action] = []
        # The honest relay writes deliveries and presence in bulk; the tamper sees each.
        for action in one_by_one(actions):
            if isinstance(action, Outgoing):
                changed.extend(self.tamper(self, action))
            else:
                changed.append(action)
        super()._apply(changed)


def _as_send(routes: m.Routes) -> m.Send:
    return m.Send(routes.id, tuple(m.Envelope(to, base64.b64decode(body)) for to, body in routes.items))


def substitute_keys(
    victim: str,
    target: str,
    *,
    identity_key: PublicKey | None = None,
    session_key: PublicKey | None = None,
) -> Tamper:
    """Show ``victim`` other keys for ``target`` than the ones ``target`` registered."""

    def swap(peer: m.PeerInfo) -> m.PeerInfo:
        if peer.nick != target:
            return peer
        return m.PeerInfo(peer.nick, identity_key or peer.identity_key, session_key or peer.session_key)

    def tamper(relay: HostileRelay, action: Outgoing) -> list[Action]:
        message = action.message
        if relay.nick(action.conn) != victim:
            return [action]
        if isinstance(message, m.Welcome):
            message = m.Welcome(message.nick, tuple(swap(p) for p in message.peers))
        elif isinstance(message, m.PeerJoined):
            message = m.PeerJoined(swap(message.peer))
        return [Outgoing(action.conn, message)]

    return tamper


def deliveries(tamper: Callable[[HostileRelay, Outgoing, m.Deliver], list[Action]]) -> Tamper:
    """A tamper that only sees ``deliver`` messages; everything else passes untouched."""

    def on_action(relay: HostileRelay, action: Outgoing) -> list[Action]:
        if isinstance(action.message, m.Deliver):
            return tamper(relay, action, action.message)
        return [action]

    return on_action


def flip_bit(data: bytes, bit: int) -> bytes:
    changed = bytearray(data)
    changed[bit // 8] ^= 1 << (bit % 8)
    return bytes(changed)
