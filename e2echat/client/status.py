"""Away messages (``/away``): what a STATUS plaintext says, and what peers' statuses we
believe. Pure.

A status is a message of kind STATUS (crypto/session.py), sent through the ratchet
session with each peer like a private message: the relay can neither read nor forge
one, and a copy it replays is refused by the ratchet. Its text is the sender's session
key, then the recipient's (64 hex digits each: the keys of the two connections it was
sent between, as the sender's directory shows them), then the away message, "" for
"back"; the away message holds no control character and neither quote it is shown
between (``OPEN_QUOTE``, ``CLOSE_QUOTE``). It must say when it was sent (the plaintext's
``sent``, by the sender's clock): that is when /who says the sender went away.

It is never acknowledged and never kept in a mailbox (it goes only to those online).
It binds one pair of connections: each new connection of the sender starts "here" for
its peers, until the sender's client says its away message again under the new keys
(client/reconnect.py does, after a dropped connection; a new process does not); each
new connection of the recipient hears it anew, as anyone who comes online does.

What a relay could still try, and why it fails (``TheirStatuses.receive``):

* hold a status back and deliver it after a later one (an old "away" after "back"):
  it carries a lower number than the last status (or line) taken from that peer, and is
  ignored. (Whether it filled a gap does not matter: a status held back while a later
  receipt went through is still newer than every status taken, and must count);
* hold a status back past the sender's reconnect, and deliver it to show someone away
  who is not: it names the session key of the connection it was sent in, and the
  directory now shows another, so it is ignored, and the user warned (once per peer
  and key: ``Refused``): an honest relay passes a status on before the sender's end;
* hold a status back past the *recipient's* reconnect (while the sender was back, say),
  and deliver it to the new connection: it names the recipient's old session key, not
  the one they hold now, so it is ignored. (Not a warning: a status sent just as the
  recipient reconnected can honestly reach the new connection. The sender then sends
  the new one its status anew, as to anyone who joins);
* hold a status back within both connections: one sent more than MAX_STATUS_AGE ago
  (or that does not say when) is ignored;
* drop a "back": the line typed that brought the sender back comes after it, and a room
  or private message from a peer away says they are back (``TheirStatuses.spoke``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from nacl.public import PublicKey

from e2echat.errors import CommandError

log = logging.getLogger("e2echat.client.status")

# Peers and keys already warned about, at most: only a relay making up peers comes near
# it, and past it a warning may come again.
_MAX_WARNED = 1024

#: A status sent longer ago than this, in seconds, by the sender's clock, is ignored. An
#: honest relay passes one on in well under a second, so the bound is for clocks: five
#: minutes is the skew Kerberos tolerates by default, far beyond the drift of a clock
#: kept by NTP. (A peer whose clock is slower than that is never shown away.)
MAX_STATUS_AGE = 300.0

#: The longest away message, in characters: a line's worth, as IRC servers cap AWAY
#: (AWAYLEN is commonly 200 to 300); /who shows it beside every nick.
MAX_AWAY = 200
#: The quotes an away message is shown between, in /who and its notice, so that nothing
#: in it can pass for another entry or a trust mark: never inside one.
OPEN_QUOTE, CLOSE_QUOTE = "\u201c", "\u201d"
# A session key in hex: the sender's, then the recipient's, start a status's text.
_KEY_DIGITS = 64
_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True)
class Away:
    """``nick`` is away (``message`` says why), or back (``message`` is empty). ``ours``:
    it is us (the user typed /away, or a line that brought them back)."""

    nick: str
    message: str
    ours: bool = False


@dataclass(frozen=True)
class Refused:
    """A status was ignored, and the user should know: ``text`` says why."""

    text: str


def is_away_message(message: str) -> bool:
    """True for text an away message may be: at most MAX_AWAY printable characters
    (no control, format or separator character but the space, so nothing in it can move
    a cursor or reorder a line), not starting or ending with a space, and without the
    quotes it is shown between (so it cannot end them early)."""
    return (
        len(message) <= MAX_AWAY
        and message.isprintable()
        and message == message.strip(" ")
        and OPEN_QUOTE not in message
        and CLOSE_QUOTE not in message
    )


def checked_away(message: str) -> str:
    """``message`` (as typed after /away, trimmed) if it can be an away message; else
    ``CommandError`` saying why."""
    message = message.strip()
    if len(message) > MAX_AWAY:
        raise CommandError(detail=f"an away message is at most {MAX_AWAY} characters")
    if OPEN_QUOTE in message or CLOSE_QUOTE in message:
        raise CommandError(
            detail=f"an away message is shown between {OPEN_QUOTE} and {CLOSE_QUOTE}: it cannot hold them"
        )
    if not is_away_message(message):
        raise CommandError(detail="an away message is one line of printable text")
    return message


def encode_status(our_session_key: PublicKey, their_session_key: PublicKey, message: str) -> str:
    """The text of a STATUS plaintext: our session key (this connection's), the
    recipient's (as the directory shows it), then ``message`` ("" for back)."""
    if not is_away_message(message):
        raise ValueError("not an away message")
    return bytes(our_session_key).hex() + bytes(their_session_key).hex() + message


def decode_status(text: str) -> tuple[bytes, bytes, str]:
    """(the sender's session key it names, the recipient's, the away message) of a
    STATUS plaintext's text; raises ``ValueError`` if it is not one."""
    sender, recipient = text[:_KEY_DIGITS], text[_KEY_DIGITS : 2 * _KEY_DIGITS]
    message = text[2 * _KEY_DIGITS :]
    if not (_is_key(sender) and _is_key(recipient) and is_away_message(message)):
        raise ValueError("malformed status")
    return bytes.fromhex(sender), bytes.fromhex(recipient), message


def _is_key(digits: str) -> bool:
    return len(digits) == _KEY_DIGITS and _HEX.issuperset(digits)


class TheirStatuses:
    """The away message each peer online last sent us, with the number of their last
    status or message taken (to refuse an older status delivered later). A peer's entry goes when their
    directory entry does (``forget``): bounded by the directory."""

    def __init__(self) -> None:
        #: nick -> their away message (only those away)
        self._away: dict[str, str] = {}
        #: nick -> when they said they are away (Unix time, their clock: not after ours)
        self._since: dict[str, float] = {}
        #: nick -> the number of the last status (or room or private message) taken from them
        self._numbers: dict[str, int] = {}
        #: (nick, session key) of statuses refused for naming a key not theirs: said once
        self._warned: set[tuple[str, bytes]] = set()

    def message(self, nick: str) -> str:
        """``nick``'s away message; "" if they are not away (or not online)."""
        return self._away.get(nick, "")

    def since(self, nick: str) -> float | None:
        """When ``nick`` said they are away (Unix time); None if they are not away."""
        return self._since.get(nick)

    def receive(
        self,
        nick: str,
        counter: int,
        text: str,
        their_session_key: PublicKey,
        our_session_key: PublicKey,
        sent: int | None,
        now: float,
    ) -> Away | Refused | None:
        """A STATUS from ``nick`` (authenticated: it opened in our session with them),
        which was their message number ``counter``, ``sent`` then by their clock (Unix
        time), while the directory shows ``their_session_key`` for them, this connection
        of ours has ``our_session_key``, and our clock says ``now``. The change it
        makes, if any; ``Refused`` if it names another session key of theirs (the first
        time it does); None if it is ignored (stale) or changes nothing. ``ValueError`` if it is malformed."""
        sender_key, recipient_key, message = decode_status(text)
        if sender_key != bytes(their_session_key):
            log.info("ignored a status from %s naming a session key not theirs now", nick)
            return self._refused(nick, sender_key)
        if recipient_key != bytes(our_session_key):
            log.info("ignored a status from %s sent to an earlier connection of ours", nick)
            return None
        if sent is None or now - sent > MAX_STATUS_AGE:
            log.info("ignored a status from %s sent too long ago, or not saying when", nick)
            return None
        last = self._numbers.get(nick)
        if last is not None and counter <= last:
            log.info("ignored a status from %s older than one already taken", nick)
            return None
        self._numbers[nick] = counter
        if message == self._away.get(nick, ""):
            return None
        if message:
            self._away[nick] = message
            self._since[nick] = min(sent, now)  # (a clock that is fast must not say "later")
        else:
            del self._away[nick]
            self._since.pop(nick, None)
        return Away(nick, message)

    def _refused(self, nick: str, key: bytes) -> Refused | None:
        if (nick, key) in self._warned:
            return None
        if len(self._warned) >= _MAX_WARNED:
            self._warned.clear()
        self._warned.add((nick, key))
        return Refused(
            f"{nick} sent an away message naming a session key the directory does not show for "
            f"them ({key.hex()[:16]}…): held back by the relay, perhaps; it was ignored"
        )

    def spoke(self, nick: str, counter: int) -> Away | None:
        """A room or private message from ``nick``, their message number ``counter``: a
        line typed brings its sender back (ui/away.py), so if the "back" that went before
        it was lost on the way, this says it all the same. A status older than it is then
        ignored, as one older than a status taken. The change it makes, if any."""
        numbers = self._numbers
        if counter <= numbers.get(nick, -1):
            return None  # older than their last word: it says nothing of now
        numbers[nick] = counter
        if not self._away or self._away.pop(nick, None) is None:
            return None
        self._since.pop(nick, None)
        return Away(nick, "")

    def forget(self, nick: str) -> None:
        """``nick``'s directory entry ended (they left, or came back with other keys): a
        new connection of theirs starts "here"."""
        self._away.pop(nick, None)
        self._since.pop(nick, None)
        self._numbers.pop(nick, None)
