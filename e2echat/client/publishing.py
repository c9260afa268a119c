"""Keeping the relay supplied with our prekeys. Pure; time is passed in.

The relay says how many of our one-time prekeys it holds: in its welcome, in its answer
to each of our publishes, and unasked when they run low. ``PrekeyPublisher`` decides
from that when to publish a new batch (with our signed prekey, a new one when it is
due), and writes ``publish`` frames through the function it is given.
"""

from __future__ import annotations

from collections.abc import Callable

from nacl.public import PrivateKey

from e2echat.crypto.prekeys import ONE_TIME_BATCH, ONE_TIME_LOW, PUBLISH_INTERVAL, OurPrekeys
from e2echat.wire import messages as m
from e2echat.wire.objects import OneTimePrekey, SignedPrekey


def signed_prekey(prekeys: OurPrekeys) -> SignedPrekey:
    """Our current signed prekey, as the wire carries it."""
    signed = prekeys.current
    return SignedPrekey(signed.prekey_id, signed.private.public_key, signed.signature)


class PrekeyPublisher:
    """When to publish our prekeys, and what. ``write`` sends a message to the relay;
    ``clock`` measures intervals, ``wall_clock`` dates signed prekeys."""

    def __init__(
        self,
        prekeys: OurPrekeys,
        identity: PrivateKey,
        write: Callable[[m.Message], None],
        *,
        clock: Callable[[], float],
        wall_clock: Callable[[], float],
    ) -> None:
        self._prekeys = prekeys
        self._identity = identity
        self._write = write
        self._clock = clock
        self._wall_clock = wall_clock
        #: publishes the relay has not answered yet (it answers each, in order)
        self._unanswered = 0
        #: when we last published on the relay's ``prekeys``; and, while a publish waits
        #: for PUBLISH_INTERVAL to pass, how many the relay last said it held
        self._published_at: float | None = None
        self._waiting: int | None = None

    def welcome(self, held: int) -> None:
        """The relay's welcome says it holds ``held``. Not paced: it comes once a
        connection, and must not hold back the first publish the relay asks for (a crowd
        of first contacts may empty the first batch at once)."""
        self._publish(held, paced=False)

    def held(self, held: int) -> None:
        """The relay says (``prekeys``) it holds ``held`` of our one-time prekeys."""
        if self._unanswered:
            # The answer to our own publish: publishing again on it would loop with a relay
            # that keeps fewer than ONE_TIME_LOW, or says so.
            self._unanswered -= 1
            return
        self._publish(held)

    def tick(self) -> None:
        """Publish what waited for PUBLISH_INTERVAL to pass, if it has."""
        if self._waiting is not None:
            self._publish(self._waiting)

    def _publish(self, held: int, *, paced: bool = True) -> None:
        """If the relay holds fewer than ONE_TIME_LOW of our one-time prekeys, give it a
        batch of new ones (and our signed prekey again, a new one if it is due). If it
        holds more than we have private halves for, some of its are dead (ours were lost
        with sessions.db, say) and would fail each new contact in turn: the batch then
        replaces all it holds. ``paced``: at most one every PUBLISH_INTERVAL, one due sooner
        waiting for ``tick``."""
        prekeys = self._prekeys
        replace = held > prekeys.unused
        if held >= ONE_TIME_LOW and not replace:
            self._waiting = None
            return
        if paced:
            now = self._clock()
            if self._published_at is not None and now - self._published_at < PUBLISH_INTERVAL:
                self._waiting = held  # tick() publishes once the interval is over
                return
            self._published_at, self._waiting = now, None
        self._unanswered += 1
        prekeys.rotate_if_due(self._identity, self._wall_clock())
        fresh = prekeys.new_one_time(ONE_TIME_BATCH - (0 if replace else held))
        one_time = tuple(OneTimePrekey(prekey_id, key) for prekey_id, key in fresh)
        self._write(m.Publish(signed_prekey(prekeys), one_time, replace=replace))
