"""The client's asyncio shell around ``ClientCore``: connect, register, move bytes, and
keep the connection alive.

``Connection`` is one connection. It hands each event from the core to ``publish``, as
soon as the bytes that caused it are read, and a final ``Disconnected`` says why it
ended. Nothing here decides anything about the protocol, not even how registering went
(handshake.py says). (Reconnecting is reconnect.py's.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable, Collection, Iterator
from typing import cast

from nacl.public import PrivateKey

from e2echat.client.core import ClientCore
from e2echat.client.events import (
    ClientEvent,
    Disconnected,
    Event,
    Registered,
    RelayClosing,
)
from e2echat.client.files import Transfers
from e2echat.client.handshake import registration_outcome
from e2echat.client.memberships import LastMembers
from e2echat.client.pending import PendingDeliveries
from e2echat.client.receipts import RECEIPT_TIMEOUT
from e2echat.client.relays import RelayTrust
from e2echat.client.trust import KnownPeers
from e2echat.crypto.identity import new_session_key
from e2echat.crypto.keyring import Keyring
from e2echat.errors import (
    E2EChatError,
    KeyFileError,
    LocalProtocolError,
    RelayGone,
    RelayUnreachable,
)
from e2echat.store.pins import PinFile
from e2echat.store.sessions import SessionFile
from e2echat.streams import BufferedLink, read_buffer
from e2echat.wire.grammar import DEFAULT_ROOM

log = logging.getLogger("e2echat.client.connection")

# How long connecting and registering may take before we give up on the relay.
CONNECT_TIMEOUT = 10.0
# After this long without a byte from the relay we ping it; after twice this long the
# connection is dead (a relay that vanished without a FIN: power cut, cable, NAT).
KEEPALIVE = 20.0
# How often the connection looks at its clocks (receipts held back, overdue, keepalive).
TICK = 0.2
# On close, how long what is held back for the relay's rate (the last receipts) may take
# to go before we hang up anyway.
CLOSE_DRAIN = 2.0
_LOST = "the connection was lost before it was confirmed (it may still have arrived)"


def _internal_error(exc: Exception) -> str:
    """Why a connection ends on a bug of ours: one line (the traceback is logged at debug)."""
    error = LocalProtocolError(detail=f"{type(exc).__name__}: {exc}")
    return f"e2echat could not go on ({error}); please report it"


class _Link(BufferedLink):
    """The socket's callbacks, handed straight to the connection: bytes are decrypted and
    their events queued in the same turn of the event loop as they arrive."""

    def __init__(self, connection: Connection) -> None:
        super().__init__(read_buffer())
        self.connection = connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Set here, not when create_connection returns: the relay's challenge may be read
        # (and answered) before that.
        self.connection._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.connection._received(data)

    def eof_received(self) -> bool:
        return False  # close our end too

    def connection_lost(self, exc: Exception | None) -> None:
        self.connection._lost()


class Connection:
    """One registered connection to the relay, with a fresh session key."""

    def __init__(
        self,
        host: str,
        port: int,
        nick: str,
        identity: PrivateKey,
        known_peers: KnownPeers | None = None,
        *,
        password: bytes | None = None,
        keepalive: float = KEEPALIVE,
        receipt_timeout: float = RECEIPT_TIMEOUT,
        publish: Callable[[ClientEvent], None] | None = None,
        pin_file: PinFile | None = None,
        relay_trust: RelayTrust | None = None,
        message_ids: Iterator[int] | None = None,
        keyring: Keyring | None = None,
        session_file: SessionFile | None = None,
        pending: PendingDeliveries | None = None,
        hold_acks: bool = False,
        rooms: tuple[str, ...] = (DEFAULT_ROOM,),
        files: Transfers | None = None,
        last_members: LastMembers | None = None,
        parted: tuple[str, ...] = (),
    ) -> None:
        """``keyring`` holds our prekeys and sessions, ``pending`` our messages waiting in
        mailboxes, ``last_members`` each room's members as last seen (a ``Client`` passes
        the same ones to each of its connections); ``session_file`` is where all three are
        saved, if anywhere. ``hold_acks``: mailbox items are acknowledged when the UI says
        they are stored (``acknowledge_mail``). ``files`` takes the parts of file transfers
        that arrive."""
        self.host = host
        self.port = port
        self.nick = nick
        self.keepalive = keepalive
        # The session key's private half lives in this object only: when the connection
        # is gone, so is every session key derived from it (forward secrecy).
        self.core = ClientCore(
            nick,
            identity,
            new_session_key(),
            known_peers,
            password=password,
            relay_trust=relay_trust,
            receipt_timeout=receipt_timeout,
            message_ids=message_ids,
            keyring=keyring,
            relay_name=f"{host}:{port}",
            pending=pending,
            hold_acks=hold_acks,
            rooms=rooms,
            files=files,
            last_members=last_members,
            parted=parted,
        )
        if publish is None:
            # On its own, a connection queues its events for whoever runs it. A Client
            # passes its own ``publish``, which puts them into the one queue the UI reads:
            # a connection it makes has no queue of its own, so nothing is copied twice.
            self.events: asyncio.Queue[ClientEvent] = asyncio.Queue()
            publish = self.events.put_nowait
        self._publish_event = publish
        self._registered = False  # only a registered connection's end is news to anyone
        #: where the pins and the sessions go: the core changes them in memory, this
        #: shell writes them
        self._pin_file = pin_file
        self._session_file = session_file
        self._transport: asyncio.Transport | None = None
        #: while registering: resolves with Registered, or fails with why not
        self._registration: asyncio.Future[Registered] | None = None
        self._gone = asyncio.Event()  # the transport has closed
        self._ticker_task: asyncio.Task[None] | None = None
        self._settled = asyncio.Event()
        self._settled.set()
        #: nothing is held back for the relay's rate
        self._sendable = asyncio.Event()
        self._sendable.set()
        self._pace_timer: asyncio.TimerHandle | None = None
        self.closed = False
        self._relay_closing = False
        self._broken = ""  # how the relay broke the protocol, if it did
        self._sent_at = self._heard_at = 0.0  # loop time; set for real once connected
        # Kept, not looked up per read: on Python 3.11 get_running_loop() makes a system call.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._dead = ""

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def online(self) -> bool:
        return self._registered and not self.closed

    async def open(self, timeout: float = CONNECT_TIMEOUT) -> Registered:
        """Connect and register. Raises RelayUnreachable or RegistrationRefused."""
        self._loop = loop = asyncio.get_running_loop()
        self._registration = registration = loop.create_future()
        try:
            transport, _ = await asyncio.wait_for(
                loop.create_connection(lambda: _Link(self), self.host, self.port), timeout
            )
        # UnicodeError: a host name that cannot be encoded (an empty label, one over 63
        # characters) is refused by getaddrinfo's IDNA step, not by the network.
        except (OSError, TimeoutError, UnicodeError):
            registration.cancel()
            raise RelayUnreachable(host=self.host, port=self.port) from None
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            registered: Registered = await asyncio.wait_for(asyncio.shield(registration), timeout)
        except TimeoutError:
            transport.close()
            raise RelayGone(host=self.host, port=self.port, detail="registration timed out") from None
        except BaseException:
            transport.close()
            raise
        finally:
            registration.cancel()  # if it is still pending, nobody waits for it now
        self._sent_at = self._heard_at = loop.time()
        self._ticker_task = asyncio.create_task(self._tick_loop())
        return registered

    def _received(self, data: bytes) -> None:
        if self._broken:
            return  # being closed: nothing more counts
        assert self._loop is not None  # set before the connection exists
        self._heard_at = self._loop.time()
        try:
            events = self.core.receive_data(data)
        except E2EChatError as exc:
            self._broken = str(exc)
            if self._transport is not None:
                self._transport.abort()
            return
        except Exception as exc:  # a bug of ours: one line for the user, not asyncio's traceback
            log.debug("handling what the relay sent failed", exc_info=True)
            self._broken = self._dead = _internal_error(exc)
            if self._transport is not None:
                self._transport.abort()
            return
        finally:
            self._save()  # pins and sessions changed by this batch, even one that failed
        self._flush()
        self._relay_closing |= any(isinstance(event, RelayClosing) for event in events)
        registration = self._registration
        if registration is not None and not registration.done():
            outcome, events = registration_outcome(events, self.nick, self.host, self.port)
            if outcome is None:
                return  # still registering
            if not isinstance(outcome, Registered):
                registration.set_exception(outcome)
                return
            self._registered = True
            registration.set_result(outcome)
        self._publish(events)

    def _lost(self) -> None:
        self._gone.set()
        registration = self._registration
        if registration is not None and not registration.done():
            detail = self._broken or "it closed the connection"
            registration.set_exception(RelayGone(host=self.host, port=self.port, detail=detail))
            return
        if self._dead:
            detail = self._dead
        elif self._broken:
            detail = f"it broke the protocol ({self._broken})"
        else:
            detail = "it shut down" if self._relay_closing else "it closed the connection"
        abandoned = self.core.abandon(_LOST)
        self._close_transport()
        if not self._registered:
            return  # open() failed and raised: its caller knows
        for event in abandoned:
            self._publish_event(event)
        self._publish_event(Disconnected(detail))

    async def _tick_loop(self) -> None:
        # A few times a second: send receipts that were held back, report messages whose
        # receipts are overdue, and keep the connection alive. We ping when we have sent
        # nothing for a while (the relay drops connections it hears nothing from, however
        # much it sends them), and give up when the relay has said nothing for twice that.
        loop = asyncio.get_running_loop()
        interval = min(TICK, self.keepalive / 4)
        while not self.closed:
            await asyncio.sleep(interval)
            now = loop.time()
            try:
                self._publish(self.core.tick())
                # Keys the user accepted or verified (the UI calls the core directly) are
                # written here, at most a tick later, and in close() at the latest.
                self._save()
                if now - self._sent_at >= self.keepalive:
                    self.core.ping()
                self._flush()
            except E2EChatError as exc:  # a bug or a broken state: end this connection, loudly
                self._dead = f"it could not go on ({exc})"
            except Exception as exc:  # a bug of ours: the same, in one line, not a traceback
                log.debug("a tick of the connection failed", exc_info=True)
                self._dead = _internal_error(exc)
            if not self._dead and now - self._heard_at >= 2 * self.keepalive + interval:
                self._dead = f"no answer from it for {2 * self.keepalive:g}s"
            if self._dead and self._transport is not None:
                self._transport.abort()  # connection_lost reports it
                return

    def _save(self) -> None:
        if self._pin_file is not None:
            self._pin_file.save_soon(self.core.known_peers)
        if self._session_file is not None:
            self._session_file.save_soon(
                self.core.keyring, self.core.deliveries.pending, self.core.last_members
            )

    def _publish(self, events: list[Event]) -> None:
        for event in events:
            self._publish_event(event)
        if self.core.settled:
            self._settled.set()

    def _flush(self) -> None:
        data = self.core.data_to_send()
        if data and self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)
            assert self._loop is not None  # there is a transport
            self._sent_at = self._loop.time()
        self._pace()

    def _pace(self) -> None:
        """What the core holds back for the relay's rate goes when the rate allows: one
        timer, for the next frame due."""
        delay = self.core.send_delay()
        if delay is None:
            self._sendable.set()
            if self.core.settled:
                self._settled.set()
            return
        self._sendable.clear()
        if self._pace_timer is None and self._loop is not None and not self.closed:
            self._pace_timer = self._loop.call_later(delay, self._paced)

    def _paced(self) -> None:
        self._pace_timer = None
        if not self.closed:
            self._flush()

    # -- what the UI calls --------------------------------------------------------------------

    def send_room(
        self, room: str, text: str, only: Collection[str] | None = None, *, report_as: int = 0
    ) -> int:
        message_id = self.core.send_room(room, text, only, report_as=report_as)
        self._sent()
        return message_id

    def join(self, room: str) -> None:
        """Join ``room`` (the relay answers with its members)."""
        self.core.join(room)
        if not self.closed:
            self._flush()

    def part(self, room: str) -> None:
        self.core.part(room)
        if not self.closed:
            self._flush()

    @property
    def left_out(self) -> list[str]:
        """Who the last room message left out because their key changed."""
        return self.core.left_out

    def send_private(self, nick: str, text: str, *, report_as: int = 0) -> int:
        message_id = self.core.send_private(nick, text, report_as=report_as)
        self._sent()
        return message_id

    def set_away(self, message: str) -> None:
        """Say we are away (``message``: why) or back (""): ``ClientCore.set_away``."""
        self.core.set_away(message)
        self._sent()

    def send_file_part(self, nick: str, part: bytes, *, to_mailbox: bool = False) -> bool:
        """A part of a file transfer to ``nick``; False if it cannot go yet (see
        ``ClientCore.send_file_part``). Not tracked as a message: transfers acknowledge
        their own parts."""
        if not self.online:
            return False
        sent = self.core.send_file_part(nick, part, to_mailbox=to_mailbox)
        self._save()  # the sending chain moved on (written in the background)
        self._flush()
        return sent

    def file_budget(self) -> int:
        """Bytes of file chunks that may go now (see ``ClientCore.file_budget``)."""
        return self.core.file_budget() if self.online else 0

    def acknowledge_mail(self, seq: int) -> None:
        """The mailbox items up to ``seq`` (a ``MailboxRead``) are stored: the relay may
        forget them."""
        if not self.closed:
            self.core.acknowledge(seq)
            self._flush()

    def _sent(self) -> None:
        self._settled.clear()
        self._save()  # the sending chains moved on: saved at once (in the background)
        self._flush()

    async def wait_sendable(self) -> None:
        """Wait until nothing is held back for the relay's rate: a source of many lines (a
        pipe) must not run ahead of what the relay takes."""
        await self._sendable.wait()

    async def wait_settled(self, timeout: float) -> bool:
        """Wait until every message sent is accounted for: the relay answered, and each
        recipient confirmed it or is known not to have got it. False on timeout."""
        try:
            await asyncio.wait_for(self._settled.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def waiting_for(self) -> list[tuple[str, list[str]]]:
        """Messages sent but not yet accounted for: (preview, whom each waits for)."""
        return self.core.deliveries.waiting_for()

    def reconnect_now(self) -> bool:
        """A connection does not connect again (a ``Client`` does): False."""
        return False

    def give_up(self, reason: str) -> None:
        """Stop waiting: every message not yet accounted for is reported, now, as not
        confirmed for ``reason``."""
        self._publish(self.core.abandon(reason))

    def _close_transport(self) -> None:
        self.closed = True
        self.core.forget_keys()
        self._settled.set()  # nothing more will be answered
        self._sendable.set()  # nor sent
        if self._pace_timer is not None:
            self._pace_timer.cancel()
            self._pace_timer = None
        if self._transport is not None:
            self._transport.close()  # sends what is queued first

    async def close(self) -> None:
        if not self.closed:
            with contextlib.suppress(E2EChatError):
                self.core.flush_receipts()  # what we read is confirmed before we go
                self._flush()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._sendable.wait(), CLOSE_DRAIN)  # paced: bounded
        self._close_transport()
        if self._ticker_task is not None:
            self._ticker_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker_task
        if self._transport is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._gone.wait(), 2)
        # Both files are written even if the first fails: the caller closes the sessions
        # file next, and what it had not written (the sessions as they end) is lost.
        error: KeyFileError | None = None
        if self._pin_file is not None:
            try:
                await self._pin_file.flush(self.core.known_peers)
            except KeyFileError as exc:
                error = exc
        if self._session_file is not None:
            try:
                await self._session_file.flush(
                    self.core.keyring, self.core.deliveries.pending, self.core.last_members
                )
            except KeyFileError as exc:
                error = error or exc
        if error is not None:
            raise error
