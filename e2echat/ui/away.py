"""/away: the user says they are away, and a line they type says they are back. Pure.

What a status is, and why the relay cannot forge one, is in client/status.py; saying
it again after a dropped connection is client/reconnect.py's. This is the chat's side:
the lines it shows, and how /who shows a peer away (since when, their message quoted).
"""

from __future__ import annotations

from collections.abc import Callable

from e2echat.client.core import ClientCore
from e2echat.client.status import Away
from e2echat.client.trust import Trust
from e2echat.errors import CommandError
from e2echat.ui.render import Notice, Shown, who_entry


class AwayStatus:
    """``core`` gives the connection's core now; ``send`` says our status to the peers
    (``Link.set_away``: the core's ``set_away``, and what is sealed written and saved);
    ``say`` shows an event to the user."""

    def __init__(
        self, core: Callable[[], ClientCore], send: Callable[[str], object], say: Callable[[Shown], None]
    ) -> None:
        self._core = core
        self._send = send
        self._say = say

    def set(self, message: str, *, online: bool) -> None:
        """/away MESSAGE (or /away alone, ``message`` empty: back)."""
        if not online:
            raise CommandError(detail="not connected to the relay right now: /away once it is back")
        if not message and not self._core().our_away:
            self._say(Notice("you are not away (/away MESSAGE says you are)"))
            return
        self._send(message)
        self._say(Away(self._core().nick, message, ours=True))

    def typed(self, *, online: bool) -> None:
        """The user typed a line to send: if they were away, they are back."""
        if online and self._core().our_away:
            self.set("", online=True)

    def who_entry(self, nick: str, trust: Trust) -> str:
        """``nick`` as /who lists them: "bob (unverified, away since 12:58: at lunch)"."""
        core = self._core()
        return who_entry(nick, trust, core.their_away(nick), core.their_away_since(nick))
