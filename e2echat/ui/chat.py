"""What a chat does with a typed line and with each event, shared by the REPL and line
mode. No prompt_toolkit here: both front ends hand it lines and a ``write`` function,
which gets each line to show with its style (render.py decides both).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections import deque
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, Protocol

from e2echat.client.core import ClientCore
from e2echat.client.events import (
    ClientEvent,
    DeliveryReport,
    Disconnected,
    KeyChanged,
    KeyPinned,
    MailboxRead,
    MessageQueued,
    MessageReceived,
    NotSent,
    PeerJoined,
    PeerLeft,
    Queued,
    RoomChanged,
    RoomEntered,
    RoomParted,
    RoomRefused,
)
from e2echat.client.fileevents import TransferChanged, TransferDone, TransferProgress
from e2echat.client.filenames import size_text
from e2echat.client.filepump import FilePump
from e2echat.client.receipts import RECEIPT_TIMEOUT
from e2echat.client.trust import Trust
from e2echat.errors import CommandError, E2EChatError, RelayGone
from e2echat.store.history import HistoryStore, Lines
from e2echat.ui import commands, transcript, transfers
from e2echat.ui.actions import action_of, as_action
from e2echat.ui.arrivals import Arrivals
from e2echat.ui.away import AwayStatus
from e2echat.ui.lastsent import LastSent
from e2echat.ui.nicks import mention_pattern, natural_sorted
from e2echat.ui.places import Places
from e2echat.ui.render import (
    FirstContacts,
    HelpText,
    LineStyle,
    Mention,
    MentionList,
    Notice,
    OwnMessage,
    Problem,
    Recalled,
    RoomChanges,
    Shown,
    json_lines,
    online_text,
    quote_preview,
    render,
)
from e2echat.ui.roomlist import RoomList
from e2echat.ui.settings import SETTINGS, Settings
from e2echat.ui.verifying import KeyChecks

# How long, after the user is done, to wait for everything sent to be accounted for: a
# little longer than a receipt may take, so that a missing one is reported, not cut off.
SETTLE_TIMEOUT = RECEIPT_TIMEOUT + 1.0
#: at start-up, the last lines of the most recent conversations are shown again
EARLIER_LINES = 10
EARLIER_CONVERSATIONS = 10
#: /search shows the newest matches, at most this many
SEARCH_LINES = 30
#: before leaving, transfers not yet over are waited for while they move; one that has
#: not moved for this long (its peer gone, say) is not
FILES_QUIET_TIMEOUT = 60.0


class Link(Protocol):
    """What a chat needs from its way to the relay: a ``Client`` (the real thing), or
    one ``Connection`` (a test's). Its events arrive on the one queue ``events``."""

    @property
    def nick(self) -> str: ...
    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def address(self) -> str: ...
    @property
    def core(self) -> ClientCore: ...
    @property
    def online(self) -> bool: ...
    @property
    def closed(self) -> bool: ...
    @property
    def events(self) -> asyncio.Queue[ClientEvent]: ...

    def send_room(self, room: str, text: str) -> int: ...
    def send_private(self, nick: str, text: str) -> int: ...
    def set_away(self, message: str) -> None: ...
    def join(self, room: str) -> None: ...
    def part(self, room: str) -> None: ...
    async def wait_sendable(self) -> None: ...
    async def wait_settled(self, timeout: float) -> bool: ...
    def give_up(self, reason: str) -> None: ...
    def reconnect_now(self) -> bool: ...
    def waiting_for(self) -> list[tuple[str, list[str]]]: ...
    def acknowledge_mail(self, seq: int) -> None: ...


class Chat:
    """``write`` gets each line to show, with its look. Options for the front ends:
    ``echo`` shows what we send in our own timeline (the REPL erases the prompt line);
    ``multiline`` shows line breaks in messages as line breaks; ``json`` writes one JSON
    object per event instead of text; ``bell`` is called on each private message and
    each mention of our nick while ``bell_on``; ``clock`` (Unix time) stamps each line
    and tells how old a message is; ``history`` keeps what is sent and shown
    (ui/transcript.py says what of each event). ``settings`` are the ones this chat
    starts with (ui/settings.py); ``/set`` changes one, and ``keep`` (name, value) keeps
    it in the profile; ``no_colour`` says NO_COLOR is set: no colours, whatever
    ``settings`` say. ``rooms`` are the rooms the user is in (the link's), and which is
    current; ``keep_rooms`` (names, current) keeps them in the profile when they change.
    ``files`` moves files (/send, /accept); without it there are none."""

    def __init__(
        self,
        link: Link,
        write: Callable[[LineStyle, str], None],
        *,
        echo: bool = False,
        multiline: bool = False,
        json: bool = False,
        bell: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.time,
        history: HistoryStore | None = None,
        settings: Settings | None = None,
        keep: Callable[[str, str], None] | None = None,
        no_colour: bool = False,
        rooms: RoomList | None = None,
        keep_rooms: Callable[[list[str], str | None], None] | None = None,
        files: FilePump | None = None,
    ) -> None:
        self.link = link
        self.rooms = rooms if rooms is not None else RoomList()
        self.history = history
        self.clock = clock
        self.write = write
        self.echo = echo
        self.multiline = multiline
        self.json = json
        self.bell = bell
        self.settings = settings or Settings()
        self.keep = keep
        self.no_colour = no_colour
        self.files = files
        # Line mode prints a transfer's progress once a tenth: the last tenth printed.
        self._tenths: dict[int, int] = {}
        self._offering: set[asyncio.Task[None]] = set()  # /send, hashing the file
        #: the REPL's: the state of our last message is on its toolbar, so a delivery
        #: can go without a line (``delivery quiet``); line mode prints every one
        self.status_line = False
        self.last_sent = LastSent()
        # Messages sent in this chat whose delivery may go without a line when quiet: not
        # one held in an outage, nor one sent in an earlier run (reported after a
        # restart); and whose copies kept for someone away (by message: who) are not
        # among those it reports: such a delivery comes later, and is news.
        self._quiet_ids: set[int] = set()
        self._kept_for: dict[int, set[str]] = {}
        #: the REPL's: draws the prompt and its toolbar again, after /set colours
        self.restyle: Callable[[], None] | None = None
        #: the REPL's: draws the toolbar again after each event, which may have changed
        #: what it says without printing a line (a quiet delivery, a transfer's progress)
        self.redraw: Callable[[], None] | None = None
        #: something typed was never sent (the connection did not come back)
        self.unsent = False
        #: a line typed was refused (not sent, or not a valid command)
        self.refused = False
        #: a message was reported NOT delivered to someone
        self.undelivered = False
        #: the recent messages that mentioned us, oldest first (/mentions)
        self.mentions: deque[Mention] = deque(maxlen=commands.MENTIONS_KEPT)
        #: clears the screen, for /clear: the REPL's (line mode has no screen to clear)
        self.clear_screen: Callable[[], None] | None = None
        self._keys = KeyChecks(lambda: self.link.core, self.show)  # /verify and /trust
        # /away, and back when a line is typed
        self._away = AwayStatus(
            lambda: self.link.core, lambda message: self.link.set_away(message), self.show
        )
        #: /join, /part, /rooms, /names, and switching rooms
        self.places = Places(self.rooms, lambda: self.link, self.show, keep_rooms, self._away.who_entry)
        self._lookups: set[asyncio.Task[None]] = set()  # /history and /search, reading
        # First contacts of this turn of the event loop, shown together at its end: a
        # room's first message pins dozens of keys at once (FirstContacts)
        self._first_contacts: list[str] = []
        # Who came, went, joined and parted in this turn, and the safety numbers that
        # changed: one line per person, and one per room for other changes (Arrivals)
        self._arrivals = Arrivals()

    @property
    def bell_on(self) -> bool:
        return self.bell is not None and self.settings.bell == "on"

    @property
    def colours_on(self) -> bool:
        return self.settings.colours == "on" and not self.no_colour

    @property
    def quiet_deliveries(self) -> bool:
        """A delivery shows on the toolbar, not as a line: failures still print theirs."""
        return self.status_line and self.settings.quiet_deliveries and not self.json

    def notice(self, text: str) -> None:
        self.show(Notice(text))

    def problem(self, text: str) -> None:
        self.show(Problem(text))

    def _own(self, text: str, recipient: str | None = None, room: str = "") -> None:
        if self.echo and not self.json:
            self.show(OwnMessage(self.link.nick, text, recipient, room))

    def handle_line(self, line: str) -> bool:
        """Carry out one typed line. False when the user asked to leave."""
        try:
            command = commands.parse(line)
            if command is None:
                return True
            return self._run(command)
        except CommandError as exc:
            self.refused = True
            self.problem(str(exc))
            return True

    def _run(self, command: commands.Command) -> bool:
        core = self.link.core
        if isinstance(command, commands.Say | commands.Action | commands.PrivateMessage):
            self._away.typed(online=self.link.online)  # a line typed: back, if away
        if isinstance(command, commands.Say | commands.Action):
            text = command.text if isinstance(command, commands.Say) else as_action(command.text)
            room = self.rooms.current
            if room is None:
                raise CommandError(detail="join a room first: /join #NAME (you are in none); not sent")
            online = self.link.online
            message_id = self.link.send_room(room, text)
            self._sent(message_id)
            self._record(transcript.sent(core.nick, text, None, message_id, self.clock(), room))
            self._own(text, room=room)
            if not online:
                return True  # held until the relay is back
            for nick in core.left_out:  # computed by the send; not again
                self.undelivered = True  # not to everyone it was meant for (exit code 4)
                self.problem(f"not sent to {nick}: their key changed (see /verify {nick}, /trust {nick})")
        elif isinstance(command, commands.PrivateMessage):
            message_id = self.link.send_private(command.nick, command.text)
            self._sent(message_id)
            self._record(transcript.sent(core.nick, command.text, command.nick, message_id, self.clock()))
            self._own(command.text, command.nick)
        elif isinstance(command, commands.SetAway):
            self._away.set(command.message, online=self.link.online)
        elif isinstance(command, commands.Join):
            self.places.join(command.room)
        elif isinstance(command, commands.Part):
            self.places.part(command.room)
        elif isinstance(command, commands.Rooms):
            self.places.list()
        elif isinstance(command, commands.Names):
            self.places.names(command.room)
        elif isinstance(command, commands.Set):
            self._set(command.name, command.value)
        elif isinstance(command, commands.ListSettings):
            self._list_settings()
        elif isinstance(command, commands.Who):
            if not self.link.online:
                self.notice("not connected to the relay right now; reconnecting")
                return True
            who = [self._away.who_entry(nick, core.trust(nick)) for nick in natural_sorted(core.peers)]
            self.notice(f"you are {core.nick}; {online_text(who)}")
        elif isinstance(command, commands.Help):
            self.show(HelpText(tuple(commands.help_text(command.topic))))
        elif isinstance(command, commands.Quit):
            return False
        elif isinstance(command, commands.Mentions):
            self.show(MentionList(tuple(self.mentions)))
        elif isinstance(command, commands.Reconnect):
            if self.link.online:
                self.notice(f"already connected to the relay at {self.link.address}")
            elif self.link.reconnect_now():
                self.notice(f"trying the relay at {self.link.address} again now")
            else:
                self.notice("not trying the relay again (the lines above say why): start e2echat again")
        elif isinstance(command, commands.Clear):
            if self.clear_screen is None:
                self.notice("/clear: no screen to clear here (not a terminal)")
            else:
                self.clear_screen()
        elif isinstance(command, commands.Verify) and transcript.is_room(command.nick):
            self._keys.verify_room(command.nick, command.digits)
        elif isinstance(command, commands.Verify):
            self._keys.verify(command.nick, command.digits)
        elif isinstance(command, commands.TrustPeer):
            self._keys.trust(command.nick, command.fingerprint)
        elif isinstance(command, commands.Untrust):
            core.set_verified(command.nick, False)
            self.notice(f"{command.nick} is no longer marked verified")
        elif isinstance(command, commands.FileCommand):
            self._file_command(command)
        elif isinstance(command, commands.History):
            self._look_up(self._show_history(command.conversation, command.count))
        elif isinstance(command, commands.Search):
            self._look_up(self._search(command.text))
        return True

    # -- files ----------------------------------------------------------------------------------

    def _file_command(self, command: commands.FileCommand) -> None:
        files = self.files
        if files is None:
            raise CommandError(detail="no file transfers in this chat")
        if isinstance(command, commands.SendFile):
            self._send_file(files, command.target, command.path)
        elif isinstance(command, commands.AcceptFile):
            transfer = files.transfers.accept(command.number)
            self.notice(
                f"accepting file {transfer.number} from {transfer.peer}; it is saved in {files.downloads} "
                "once its hash is checked"
            )
        elif isinstance(command, commands.RejectFile):
            for event in files.transfers.reject(command.number):
                self.show(event)
        elif isinstance(command, commands.CancelTransfer):
            for event in files.transfers.cancel(command.number):
                self.show(event)
        else:
            self.show(HelpText(tuple(transfers.listing(files.transfers.listing(), time.monotonic()))))

    def _send_file(self, files: FilePump, target: str, typed_path: str) -> None:
        core = self.link.core
        if target.startswith("#"):
            # Everyone in the room whose key is not in doubt, and those away we have a
            # session with (the offer waits in their mailbox).
            room = core.room(target.lower())
            if room is None:
                raise CommandError(detail=f"you are not in {target} (/join it first)")
            online = [nick for nick in room.others if nick in core.peers]
            nicks = [nick for nick in online if core.trust(nick) is not Trust.CHANGED]
            away = [nick for nick in room.others if nick not in online]
            nicks += [nick for nick in away if core.reachable_away(nick)]
            room_name = room.name
            unreachable = [nick for nick in away if nick not in nicks]
            if unreachable:
                self.notice(
                    f"not offered to {', '.join(natural_sorted(unreachable))}: offline, and never talked "
                    "with (an offer waits in the mailbox only of someone you have talked with)"
                )
            if not nicks:
                raise CommandError(
                    detail=f"nobody else in {room.name} can be offered it; the file was not offered"
                )
        else:
            nicks, room_name = [target], ""
        path = Path(typed_path).expanduser()

        async def offer() -> None:
            for nick in nicks:
                try:
                    transfer = await files.send(nick, path, room=room_name)
                except CommandError as exc:
                    self.refused = True
                    self.problem(str(exc))
                    continue
                self.notice(
                    f"offered {transfers.neutralize(transfer.name)} ({size_text(transfer.size)}) to {nick} "
                    f"as file {transfer.number}; it goes once they accept"
                )

        task = asyncio.get_running_loop().create_task(offer(), name="e2echat-offer")
        self._offering.add(task)
        task.add_done_callback(self._offering.discard)

    def _transfer_shown(self, event: TransferProgress | TransferChanged | TransferDone) -> bool:
        """Whether a transfer's event gets a line: in the REPL its progress is on the
        toolbar; line mode prints it once a tenth."""
        if self.redraw is not None:
            self.redraw()
        if not isinstance(event, TransferProgress) or self.json:
            return True
        if self.status_line:
            return False
        tenth = 10 if not event.size else event.done * 10 // event.size
        if self._tenths.get(event.number, -1) == tenth:
            return False
        self._tenths[event.number] = tenth
        return True

    def _sent(self, message_id: int) -> None:
        self.last_sent.sent(message_id)
        self._quiet_ids.add(message_id)

    # -- rooms ------------------------------------------------------------------------------

    def switch_to(self, number: int) -> None:
        """Alt+1..9: the ``number``-th room (in /rooms order) becomes current."""
        self.places.switch_to(number)

    def step(self, by: int) -> None:
        """Ctrl+N / Ctrl+P: the next (1) or previous (-1) room becomes current."""
        self.places.step(by)

    # -- settings ---------------------------------------------------------------------------

    def _set(self, name: str, value: str) -> None:
        """Change a setting now, and keep it in the profile for next time."""
        self.settings = self.settings.changed(name, value)
        if self.restyle is not None:
            self.restyle()
        said = f"{name} {value}"
        if name == "max-file":
            if self.files is not None:
                self.files.transfers.max_size = self.settings.max_file_bytes
            said = f"max-file {size_text(self.settings.max_file_bytes)}: larger offers are refused"
        unheeded = self._unheeded(name)
        said += f" ({unheeded})" if unheeded else ""
        if self.keep is None:
            self.notice(f"{said}; for this chat only: there is no profile to keep it in")
            return
        try:
            # A few hundred bytes, once per /set typed: written now, so that a second
            # /set cannot overtake the first on its way to the disk.
            self.keep(name, value)
        except E2EChatError as exc:
            self.problem(f"{said} for this chat, but NOT kept for next time: {exc}")
            return
        self.notice(f"{said}; kept for next time")

    def _list_settings(self) -> None:
        lines = ["settings (/set NAME VALUE changes one, and your profile keeps it):"]
        width = max(len(name) for name in SETTINGS) + 1
        for name, setting in SETTINGS.items():
            line = f"  {name:<{width}} {self.settings.value(name):<8} ({setting.takes})"
            unheeded = self._unheeded(name)
            lines.append(line + (f" {unheeded}" if unheeded else ""))
        self.show(HelpText(tuple(lines)))

    def _unheeded(self, name: str) -> str:
        """Why setting ``name`` changes nothing in this chat, if it does not."""
        if self.json and name not in ("bell", "max-file"):
            return "no effect with --json"
        if name == "bell" and self.bell is None:
            return "no bell here: not a terminal"
        if name == "colours" and (self.no_colour or not self.status_line):
            return "no colours here: NO_COLOR is set" if self.no_colour else "no colours here: not a terminal"
        if name == "max-file" and self.files is None:
            return "no file transfers in this chat"
        if name == "delivery" and not self.status_line:
            return "line mode prints every delivery line"
        return ""

    # -- the history ----------------------------------------------------------------------

    def _acknowledge(self, seq: int) -> None:
        """The mail before this was shown: once it is stored too, the relay may forget it."""
        if self.history is None:
            self.link.acknowledge_mail(seq)
            return

        async def stored() -> None:
            assert self.history is not None
            try:
                await self.history.flush()
            except E2EChatError:
                return  # not stored: not acknowledged (the relay sends it again)
            self.link.acknowledge_mail(seq)

        task = asyncio.create_task(stored(), name="e2echat-mail-stored")
        self._lookups.add(task)
        task.add_done_callback(self._lookups.discard)

    def _record(self, change: transcript.Change | None) -> None:
        if change is not None and self.history is not None:
            self.history.record(change)
            self.history.save_soon()

    def show_earlier(self) -> None:
        """At start-up: the last lines of each recent conversation, again, each under a
        header; then a line that marks where the new ones start."""
        if self.history is None:
            return
        found = self.history.latest(EARLIER_LINES, EARLIER_CONVERSATIONS)
        if not found:
            return
        for lines in found:
            where = _where(lines.entries[0].conversation) if lines.entries else "a conversation"
            self.notice(f"earlier {where}:")
            self._show_lines(lines)
        self.notice("end of the earlier lines (/history shows more); new lines follow")

    def _look_up(self, lookup: Coroutine[Any, Any, None]) -> None:
        """Read the history off the event loop; show what was found when it is there."""
        if self.history is None:
            lookup.close()
            self.problem("no history is kept in this chat")
            return
        task = asyncio.get_running_loop().create_task(lookup)
        self._lookups.add(task)
        task.add_done_callback(self._lookups.discard)

    async def _show_history(self, conversation: str | None, count: int) -> None:
        assert self.history is not None
        try:
            lines = await self.history.recent_async(conversation, count)
        except E2EChatError as exc:
            self.problem(str(exc))
            return
        where = "" if conversation is None else f" {_where(conversation)}"
        if not lines.entries and not lines.damaged:
            self.notice(f"nothing in the history{where}")
            return
        count = len(lines.entries)
        self.notice(f"the last line{where}:" if count == 1 else f"the last {count} lines{where}:")
        self._show_lines(lines)

    async def _search(self, text: str) -> None:
        assert self.history is not None
        try:
            lines = await self.history.search_async(
                lambda entry: transcript.matches(entry, text), SEARCH_LINES
            )
        except E2EChatError as exc:
            self.problem(str(exc))
            return
        if not lines.entries and not lines.damaged:
            self.notice(f'no line contains "{text}"')
            return
        more = len(lines.entries) > SEARCH_LINES
        shown = lines.entries[-SEARCH_LINES:]
        if len(shown) == 1:
            self.notice(f'1 line contains "{text}":')
        else:
            newest = f"the newest {len(shown)}" if more else str(len(shown))
            self.notice(f'{newest} lines that contain "{text}":')
        self._show_lines(Lines(shown, lines.damaged))

    def _show_lines(self, lines: Lines) -> None:
        for entry in lines.entries:
            self.show(Recalled(entry))
        if lines.damaged:
            self.problem(
                f"{lines.damaged} lines of history did not open (damaged, or sealed with another key): "
                "left out"
            )

    def show(self, event: Shown) -> None:
        """Show one event: its lines, each with the look its type gives it."""
        if isinstance(event, MailboxRead):
            self._acknowledge(event.seq)
            return
        if isinstance(event, NotSent):
            self.unsent = True
        elif isinstance(event, DeliveryReport) and event.failed:
            self.undelivered = True
        if isinstance(event, KeyChanged):
            self._keys.shown[event.nick] = event.new_fingerprint
        if isinstance(event, RoomRefused):
            self.places.refused(event.room)
        if isinstance(event, TransferProgress | TransferChanged | TransferDone) and not self._transfer_shown(
            event
        ):
            return
        self.last_sent.update(event)
        self._record(transcript.record(event, self.clock()))
        mention = False
        if isinstance(event, MessageReceived):
            said = action_of(event.text)  # an action's own markers mention no one
            mention = mention_pattern(self.link.nick).search(event.text if said is None else said) is not None
            if mention:
                where = "private" if event.private else event.room
                self.mentions.append(Mention(self.clock(), where, event.sender, event.text))
            if not event.private:
                self.rooms.shown(event.room)
        if self.json:
            for text in json_lines(event, mention=mention):
                self.write("message", text)
            return
        if isinstance(event, MessageReceived) and (event.private or mention) and self.bell_on and self.bell:
            self.bell()
        if isinstance(event, KeyPinned):
            self._first_contacts.append(event.nick)
            if len(self._first_contacts) == 1:
                try:  # after whatever else this turn shows: at once, where no loop runs
                    asyncio.get_running_loop().call_soon(self._show_first_contacts)
                except RuntimeError:
                    self._show_first_contacts()
            return
        if isinstance(event, PeerJoined | PeerLeft | RoomEntered | RoomParted | RoomChanged):
            if not self._arrivals:
                try:  # one line per person at the end of this turn: they come in bursts
                    asyncio.get_running_loop().call_soon(self._show_arrivals)
                except RuntimeError:
                    self._arrivals.add(event)
                    self._show_arrivals()
                    return
            self._arrivals.add(event)
            return
        if isinstance(event, Queued):
            self._quiet_ids.discard(event.message_id)
        elif isinstance(event, MessageQueued):
            self._kept_for.setdefault(event.message_id, set()).update(event.nicks)
        elif (
            self.quiet_deliveries
            and isinstance(event, DeliveryReport)
            and not event.failed
            and event.message_id in self._quiet_ids
            and self._kept_for.get(event.message_id, set()).isdisjoint(event.delivered)
        ):
            return  # the toolbar says so (last_sent); the history keeps it
        self._show_arrivals()  # before any line after them: the screen keeps their order
        for style, text in render(
            event,
            self.clock(),
            multiline=self.multiline,
            relay=self.link.address,
            mention=mention,
            timestamps=self.settings.timestamps == "on",
        ):
            self.write(style, text)

    def _show_first_contacts(self) -> None:
        nicks, self._first_contacts = tuple(self._first_contacts), []
        event: Shown = KeyPinned(nicks[0]) if len(nicks) == 1 else FirstContacts(nicks)
        for style, text in render(event, self.clock(), timestamps=self.settings.timestamps == "on"):
            self.write(style, text)

    def _show_arrivals(self) -> None:
        """The comings and goings gathered so far, if any: a line per person, then one
        per room for the other changes of safety numbers."""
        if not self._arrivals:
            return
        people, changes = self._arrivals.take()
        stamped = self.settings.timestamps == "on"
        for event in [*people, RoomChanges(tuple(changes))] if changes else people:
            for style, text in render(event, self.clock(), timestamps=stamped):
                self.write(style, text)

    async def run(self, typing: Coroutine[Any, Any, None]) -> None:
        """Run a front end's input loop (``typing``) beside the event loop until one
        ends. Returns when the user left; raises RelayGone when the relay went for good."""
        events = asyncio.create_task(self.run_events(), name="e2echat-events")
        typing_task = asyncio.create_task(typing, name="e2echat-input")
        try:
            await asyncio.wait({events, typing_task}, return_when=asyncio.FIRST_COMPLETED)
            if typing_task.done():
                typing_task.result()  # the user is done (or the input loop failed: raise it)
                await self.finish(SETTLE_TIMEOUT)
        finally:
            for task in (events, typing_task, *self._lookups):
                task.cancel()
            await asyncio.gather(events, typing_task, *self._lookups, return_exceptions=True)
        self.show_queued()
        if typing_task.done() and not typing_task.cancelled():
            return
        ended = events.result()
        raise RelayGone(host=self.link.host, port=self.link.port, detail=ended.detail)

    async def run_events(self) -> Disconnected:
        """Show events as they come; return how the connection ended."""
        while True:
            event = await self.link.events.get()
            if isinstance(event, Disconnected):
                return event
            self.show(event)
            if self.redraw is not None:
                self.redraw()

    def show_queued(self) -> Disconnected | None:
        """Show whatever events are already queued, without waiting for more."""
        while not self.link.events.empty():
            event = self.link.events.get_nowait()
            if isinstance(event, Disconnected):
                return event
            self.show(event)
        return None

    async def finish(self, timeout: float) -> None:
        """Before leaving: wait (bounded) until every message we sent is accounted for,
        saying what for; whatever is not by then is reported, message by message and
        person by person, so nothing typed is dropped on the floor unannounced. Ctrl+C
        (SIGINT) while it waits leaves at once, with the same report."""
        if self.link.closed:
            return
        await self._finish_files()
        waiting = self.link.waiting_for()
        if waiting:
            self.notice(f"{_waiting_text(waiting, timeout)}; Ctrl+C leaves now")
        interrupted = asyncio.Event()
        with _on_interrupt(interrupted.set):
            settling = asyncio.ensure_future(self.link.wait_settled(timeout))
            stopping = asyncio.ensure_future(interrupted.wait())
            try:
                await asyncio.wait({settling, stopping}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stopping.cancel()
                settling.cancel()
                await asyncio.gather(settling, stopping, return_exceptions=True)
        if settling.cancelled() or not settling.result():
            if interrupted.is_set():
                self.link.give_up("you left before its receipt came")
            else:
                self.link.give_up(f"no receipt within {timeout:g}s, before we left")

    async def _finish_files(self) -> None:
        """Before leaving: the files offered are hashed and offered, and the transfers not
        yet over are waited for while they move (Ctrl+C leaves at once: a file being
        received keeps its partial file, and the next run resumes it)."""
        if self._offering:
            await asyncio.gather(*self._offering, return_exceptions=True)
        if self.files is None or not self.files.transfers.moving:
            return  # (one paused, or an offer unanswered, waits for the next run)
        self.notice("waiting for the file transfers to end (/files lists them); Ctrl+C leaves now")
        interrupted = asyncio.Event()
        with _on_interrupt(interrupted.set):
            waiting = asyncio.ensure_future(self.files.wait_done(FILES_QUIET_TIMEOUT))
            stopping = asyncio.ensure_future(interrupted.wait())
            try:
                await asyncio.wait({waiting, stopping}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiting.cancel()
                stopping.cancel()
                await asyncio.gather(waiting, stopping, return_exceptions=True)


def _waiting_text(waiting: list[tuple[str, list[str]]], timeout: float) -> str:
    """``waiting`` (``DeliveryTracker.waiting_for``) in a line: the first three messages
    by their previews and whose receipts they wait for."""
    shown = [f"{quote_preview(text)} ({', '.join(natural_sorted(nicks))})" for text, nicks in waiting[:3]]
    more = f" and {len(waiting) - 3} more" if len(waiting) > 3 else ""
    what = "1 message" if len(waiting) == 1 else f"{len(waiting)} messages"
    return f"waiting up to {timeout:g}s for {what} to be confirmed: {', '.join(shown)}{more}"


@contextlib.contextmanager
def _on_interrupt(action: Callable[[], None]) -> Iterator[None]:
    """Within: SIGINT (Ctrl+C) calls ``action`` instead of interrupting. Where the event
    loop cannot take signals (not the main thread, or no such support), nothing changes."""
    loop = asyncio.get_running_loop()
    before = signal.getsignal(signal.SIGINT)
    try:
        loop.add_signal_handler(signal.SIGINT, action)
    except (NotImplementedError, RuntimeError, ValueError):
        yield
        return
    try:
        yield
    finally:
        loop.remove_signal_handler(signal.SIGINT)
        signal.signal(signal.SIGINT, before)


def _where(conversation: str) -> str:
    return f"in {conversation}" if transcript.is_room(conversation) else f"with {conversation}"
