"""Registering on one connection, without any I/O: the client's side of the handshake.

The relay's challenge is checked against the key we trust for the relay, then answered
with a ``register`` that proves we hold our keys (and carries the password, if the relay
asks for one). A relay whose key we do not trust gets no proof and no password. Then the
``welcome`` sets the rates we send at, and the directory of who is online arrives, in
one part or several; once it is all there, the client is registered. ``ClientCore``
keeps the state and hands each of these messages here; ``registration_outcome`` tells
the connection (connection.py) how it went.
"""

from __future__ import annotations

from collections.abc import Callable

import nacl.exceptions
from nacl.public import PrivateKey, PublicKey

from e2echat.client.directory import Directory
from e2echat.client.events import Event, Registered, RegistrationFailed, RelayKeyRefused
from e2echat.client.pacing import Pacer
from e2echat.client.publishing import PrekeyPublisher, signed_prekey
from e2echat.client.relays import RelayTrust
from e2echat.client.rooms import Rooms
from e2echat.client.sessions import Sessions
from e2echat.crypto.identity import fingerprint, registration_proof
from e2echat.crypto.prekeys import OurPrekeys
from e2echat.errors import E2EChatError, RegistrationRefused, RemoteProtocolError, UntrustedRelayKey
from e2echat.wire import messages as m
from e2echat.wire.objects import PeerInfo


class Handshake:
    """One connection's registration. ``write`` sends a message to the relay; the rest are
    the core's parts the welcome and the directory go to."""

    def __init__(
        self,
        nick: str,
        identity: PrivateKey,
        session_key: PrivateKey,
        *,
        password: bytes | None,
        relay_trust: RelayTrust,
        prekeys: OurPrekeys,
        write: Callable[[m.Message], None],
        pacer: Pacer,
        publisher: PrekeyPublisher,
        sessions: Sessions,
        directory: Directory,
        rooms: Rooms,
        clock: Callable[[], float],
        wall_clock: Callable[[], float],
    ) -> None:
        self.nick = nick
        self._identity = identity
        self._session_key = session_key
        self._password = password
        self._relay_trust = relay_trust
        self._prekeys = prekeys
        self._write = write
        self._pacer = pacer
        self._publisher = publisher
        self._sessions = sessions
        self._directory = directory
        self._rooms = rooms
        self._clock = clock
        self._wall_clock = wall_clock
        #: the relay's long-term key, once its challenge was accepted (to pin it)
        self.relay_key: PublicKey | None = None
        self._arrival_events: list[Event] = []  # while the directory arrives in parts

    def answer(self, challenge: m.Challenge) -> Event | None:
        """Answer the relay's challenge; or, if we must not, why not (the connection is
        then over)."""
        trust = self._relay_trust
        if not trust.accepts(challenge.relay_key):
            # Maybe an impostor at the relay's address: it gets no proof and no password.
            offered = fingerprint(challenge.relay_key)
            if trust.fingerprint is not None:
                return RelayKeyRefused(offered, trust.fingerprint, given=True)
            assert trust.pinned is not None  # with neither, every key is accepted
            return RelayKeyRefused(offered, fingerprint(trust.pinned))
        self.relay_key = challenge.relay_key
        if challenge.password_required and self._password is None:
            return RegistrationFailed(
                "password_required",
                "this relay needs a password: pass --password-file FILE or set E2ECHAT_RELAY_PASSWORD",
            )
        password = self._password if challenge.password_required and self._password else b""
        try:
            proof, session_proof = registration_proof(self._identity, self._session_key, challenge, password)
        except nacl.exceptions.CryptoError:
            raise RemoteProtocolError(detail="the relay's key is invalid") from None
        identity_public, session_public = self._identity.public_key, self._session_key.public_key
        self._prekeys.rotate_if_due(self._identity, self._wall_clock())
        self._write(
            m.Register(
                self.nick,
                identity_public,
                session_public,
                proof,
                session_proof,
                signed_prekey(self._prekeys),
                # The profile's rooms: the relay makes our memberships exactly these.
                rooms=tuple(self._rooms.names),
            )
        )
        return None

    def welcome(self, welcome: m.Welcome) -> None:
        """The relay let us in: send at its rates, publish prekeys if it holds too few."""
        if welcome.nick != self.nick:
            raise RemoteProtocolError(detail=f"relay welcomed {welcome.nick!r}, not {self.nick!r}")
        self._pacer.limit(welcome.rate, welcome.burst, welcome.byte_rate, welcome.byte_burst, self._clock())
        self._publisher.welcome(welcome.prekeys)

    def directory(self, peers: tuple[PeerInfo, ...], more: bool) -> list[Event]:
        """A part of the directory (the welcome's, or a ``directory``'s). Once the last is
        in (``more`` false), the events: ``Registered`` first, then what the peers brought."""
        for peer in peers:
            self._arrival_events.extend(self._sessions.add(peer))
        if more:
            return []
        events, self._arrival_events = self._arrival_events, []
        return [Registered(self.nick, tuple(self._directory.nicks())), *events]


def registration_outcome(
    events: list[Event], nick: str, host: str, port: int
) -> tuple[Registered | E2EChatError | None, list[Event]]:
    """How registering went, as far as a read's ``events`` tell: ``Registered`` with the
    events from it on (those before it are not news to anyone); the error the user sees
    if the relay refused us or we refused its key; or None while it goes on."""
    for index, event in enumerate(events):
        if isinstance(event, RegistrationFailed):
            return RegistrationRefused(nick=nick, detail=event.text, code=event.code), []
        if isinstance(event, RelayKeyRefused):
            refused = UntrustedRelayKey(
                host=host, port=port, offered=event.offered, expected=event.expected, given=event.given
            )
            return refused, []
        if isinstance(event, Registered):
            return event, events[index:]
    return None, []
