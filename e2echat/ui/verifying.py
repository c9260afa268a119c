"""/verify and /trust: the user compares a peer's key, then takes it, without any I/O.

A key is taken (accepted after a change, or marked verified) only if it is the one the
user was last shown for that nick (in a KEY CHANGED warning, or with a safety number), or
the one whose fingerprint they typed: never another one the relay announced meanwhile
(issue 16). A safety number typed in is compared in constant time.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable

from e2echat.client.core import ClientCore
from e2echat.client.trust import Trust
from e2echat.crypto.identity import format_safety_number, same_fingerprint
from e2echat.errors import CommandError
from e2echat.ui.render import Notice, Problem, Shown


class KeyChecks:
    """``core`` gives the connection's core now; ``say`` shows an event to the user."""

    def __init__(self, core: Callable[[], ClientCore], say: Callable[[Shown], None]) -> None:
        self._core = core
        self._say = say
        #: nick -> the fingerprint of the key last put before the user (in a KEY CHANGED
        #: warning, or with a safety number): the only key /trust accepts for that nick
        self.shown: dict[str, str] = {}

    def _notice(self, text: str) -> None:
        self._say(Notice(text))

    def _problem(self, text: str) -> None:
        self._say(Problem(text))

    def verify_room(self, room: str, digits: str | None) -> None:
        """Show the safety number of ``room``; or, given the one another member reads out
        (``digits``), compare them. Nothing is taken either way: a room's number says that
        two members see the same members and keys, not who any of them is (their pairwise
        numbers, /verify NICK, say that)."""
        number = self._core().room_safety_number(room)
        if digits is None:
            self._notice(f"the safety number of {room}: {format_safety_number(number)}")
            self._notice(
                f"every member of {room} who sees the same members with the same keys sees this number: "
                f"compare it aloud in a meeting, or paste one read to you: /verify {room} NUMBER"
            )
            return
        if not (digits.isascii() and digits.isdigit()) or len(digits) != len(number):
            raise CommandError(detail=f"a safety number has {len(number)} digits; that was not one")
        if not hmac.compare_digest(digits, number):
            self._problem(
                f"the safety number of {room} does NOT match: you and whoever read it to you see different "
                f"members of {room} (or different keys), or you compared the wrong numbers. Compare /names "
                f"{room}; do not say anything secret there until you know why."
            )
            return
        self._notice(f"the safety number of {room} matches: you both see the same members with the same keys")

    def verify(self, nick: str, digits: str | None) -> None:
        """Show the safety number with ``nick``; or, given the one ``nick`` reads out
        (``digits``), compare them and, if they match, take the key they were made from."""
        core = self._core()
        number = core.safety_number(nick)
        if digits is None:
            self._show_number(nick, number)
            return
        if not (digits.isascii() and digits.isdigit()) or len(digits) != len(number):
            raise CommandError(detail=f"a safety number has {len(number)} digits; that was not one")
        if not hmac.compare_digest(digits, number):
            self._problem(
                f"the safety number does NOT match: the key you see for {nick} is not the one {nick} "
                "sees for you, or you compared the wrong numbers. Do not trust it until you know why."
            )
            return
        # The number was made from the key the directory shows now: that key is the one to take.
        key = core.key_fingerprint(nick)
        if core.trust(nick) is Trust.CHANGED:
            core.accept_key(nick, key)
        core.set_verified(nick, True, key_fingerprint=key)
        self.shown.pop(nick, None)
        self._notice(f"the safety numbers match: {nick} is now verified")

    def _show_number(self, nick: str, number: str) -> None:
        self.shown[nick] = self._core().key_fingerprint(nick)
        self._notice(f"your safety number with {nick}: {format_safety_number(number)}")
        self._notice(
            f"compare it with {nick} in person or on a call (read it aloud); if it matches, "
            f"type /trust {nick}, or paste the number {nick} reads you: /verify {nick} NUMBER"
        )

    def trust(self, nick: str, fingerprint: str | None) -> None:
        """Accept or verify the key the user was shown (or gave): never another one the
        relay announced meanwhile (issue 16)."""
        core = self._core()
        key = core.key_fingerprint(nick)
        state = core.trust(nick)
        if state is Trust.VERIFIED:
            if fingerprint is not None and not same_fingerprint(key, fingerprint):
                self._problem(f"{nick}'s verified key has the fingerprint {key}, not {fingerprint}")
            else:
                self._notice(f"{nick} is already verified")
            return
        shown = fingerprint or self.shown.get(nick)
        if shown is None or not same_fingerprint(key, shown):
            if fingerprint is not None:
                self._problem(f"nothing accepted: {nick}'s key has the fingerprint {key}, not {fingerprint}")
            elif shown is None:
                self._problem(f"nothing accepted: compare {nick}'s key first, then /trust {nick} again")
            else:
                self._problem(
                    f"nothing accepted: {nick}'s key changed again since you were shown it; "
                    f"this is the key {nick} has now:"
                )
            self._show_key(nick)
            return
        if state is Trust.CHANGED:
            core.accept_key(nick, shown)
            self._notice(
                f"accepted {nick}'s new key; it is unverified: compare safety numbers (/verify {nick})"
            )
        else:
            core.set_verified(nick, True, key_fingerprint=shown)
            self._notice(f"{nick} is now marked verified")
        self.shown.pop(nick, None)  # a second /trust needs another look

    def _show_key(self, nick: str) -> None:
        """Put ``nick``'s key now before the user: its KEY CHANGED warning, if it is not
        the pinned one, or else the safety number to compare."""
        warning = self._core().key_changed(nick)
        if warning is not None:
            self._say(warning)
        else:
            self._show_number(nick, self._core().safety_number(nick))
