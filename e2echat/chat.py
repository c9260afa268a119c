"""What a chat does with a typed line and with each event, shared by the REPL and line
mode. No prompt_toolkit here: both front ends hand it lines and a ``write`` function.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable

from e2echat import commands
from e2echat.client import Connection, Disconnected
from e2echat.display import clock, format_event, online_text, who_entry
from e2echat.errors import CommandError
from e2echat.events import Registered
from e2echat.keys import format_safety_number
from e2echat.reconnect import Client, ClientEvent, ConnectionLost, NotSent, Queued, Reconnecting
from e2echat.trust import Trust


class Chat:
    def __init__(self, connection: Client | Connection, write: Callable[[str], None]) -> None:
        self.connection = connection
        self.write = write
        #: something typed was never sent (the connection did not come back)
        self.unsent = False

    def notice(self, text: str) -> None:
        self.write(f"{clock()} -- {text}")

    def problem(self, text: str) -> None:
        self.write(f"{clock()} !! {text}")

    def handle_line(self, line: str) -> bool:
        """Carry out one typed line. False when the user asked to leave."""
        try:
            command = commands.parse(line)
            if command is None:
                return True
            return self._run(command)
        except CommandError as exc:
            self.problem(str(exc))
            return True

    def _run(self, command: commands.Command) -> bool:
        core = self.connection.core
        if isinstance(command, commands.Say):
            if self.connection.send_room(command.text) is None:
                return True  # queued until the relay is back
            for nick in core.withheld():
                self.problem(f"not sent to {nick}: their key changed (see /verify {nick}, /trust {nick})")
        elif isinstance(command, commands.PrivateMessage):
            self.connection.send_private(command.nick, command.text)
        elif isinstance(command, commands.Who):
            if isinstance(self.connection, Client) and not self.connection.online:
                self.notice("not connected to the relay right now; reconnecting")
                return True
            self.notice(
                f"you are {core.nick}; {online_text([who_entry(n, core.trust(n)) for n in core.peers])}"
            )
        elif isinstance(command, commands.Help):
            for text in commands.help_text(command.topic):
                self.write(text)
        elif isinstance(command, commands.Quit):
            return False
        elif isinstance(command, commands.Verify):
            self._verify(command.nick, command.digits)
        elif isinstance(command, commands.TrustPeer):
            self._trust(command.nick)
        elif isinstance(command, commands.Untrust):
            core.set_verified(command.nick, False)
            self.notice(f"{command.nick} is no longer marked verified")
        return True

    def _verify(self, nick: str, digits: str | None) -> None:
        core = self.connection.core
        number = core.safety_number(nick)
        if digits is None:
            self.notice(f"your safety number with {nick}: {format_safety_number(number)}")
            self.notice(
                f"compare it with {nick} in person or on a call (read it aloud); if it matches, "
                f"type /trust {nick}, or paste the number {nick} reads you: /verify {nick} NUMBER"
            )
            return
        if not (digits.isascii() and digits.isdigit()) or len(digits) != len(number):
            raise CommandError(detail=f"a safety number has {len(number)} digits; that was not one")
        if not hmac.compare_digest(digits, number):
            self.problem(
                f"the safety number does NOT match: the key you see for {nick} is not the one {nick} "
                "sees for you, or you compared the wrong numbers. Do not trust it until you know why."
            )
            return
        if core.trust(nick) is Trust.CHANGED:
            core.accept_key(nick)
        core.set_verified(nick, True)
        self.notice(f"the safety numbers match: {nick} is now verified")

    def _trust(self, nick: str) -> None:
        core = self.connection.core
        state = core.trust(nick)
        if state is Trust.CHANGED:
            core.accept_key(nick)
            self.notice(
                f"accepted {nick}'s new key; it is unverified: compare safety numbers (/verify {nick})"
            )
        elif state is Trust.VERIFIED:
            self.notice(f"{nick} is already verified")
        else:
            core.set_verified(nick, True)
            self.notice(f"{nick} is now marked verified")

    def show(self, event: ClientEvent) -> None:
        if isinstance(event, ConnectionLost):
            self.problem(f"lost the relay at {self.connection.address}: {event.detail}")
            return
        if isinstance(event, Reconnecting):
            self.notice(f"reconnecting in {event.delay:g}s" + (f" ({event.why})" if event.why else ""))
            return
        if isinstance(event, Queued):
            self.notice(f'not connected: "{event.preview}" will be sent when the relay is back')
            return
        if isinstance(event, NotSent):
            self.unsent = True
            quoted = ", ".join(f'"{preview}"' for preview in event.previews)
            self.problem(f"NOT sent (no connection to the relay): {quoted}")
            return
        if isinstance(event, Disconnected):
            return
        if isinstance(event, Registered):
            self.notice(
                f"connected to the relay at {self.connection.address} as {event.nick}; "
                f"{online_text(event.peers)}; /help lists the commands"
            )
            return
        text = format_event(event)
        if text is not None:
            for line in text.splitlines():
                self.write(line)

    async def run_events(self) -> Disconnected:
        """Show events as they come; return how the connection ended."""
        while True:
            event = await self.connection.events.get()
            if isinstance(event, Disconnected):
                return event
            self.show(event)

    def show_queued(self) -> Disconnected | None:
        """Show whatever events are already queued, without waiting for more."""
        while not self.connection.events.empty():
            event = self.connection.events.get_nowait()
            if isinstance(event, Disconnected):
                return event
            self.show(event)
        return None

    async def finish(self, timeout: float) -> None:
        """Before leaving: wait (bounded) until the relay has answered for every message
        we sent, so nothing typed is dropped on the floor unannounced."""
        if self.connection.closed:
            return
        if not await self.connection.wait_settled(timeout):
            core = self.connection.core
            count = max(len(core.pending), core.deliveries.unconfirmed)
            if count:
                self.problem(f"{count} message(s) not confirmed within {timeout:g}s: may not have arrived")
