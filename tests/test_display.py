"""Events -> lines, with everything a peer controls made harmless for a terminal."""

from __future__ import annotations

import time
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from e2echat.client.core import (
    KeyChanged,
    KeyPinned,
    MessageReceived,
    MessagesMissing,
    PeerJoined,
    PeerLeft,
    Registered,
    RegistrationFailed,
    RelayClosing,
    RelayError,
    RelayKeyRefused,
    RoomChanged,
    RoomEntered,
    RoomListed,
    RoomParted,
    RoomRefused,
    SecurityWarning,
    SendReport,
    SplitView,
)
from e2echat.client.events import (
    Away,
    ConnectionLost,
    Disconnected,
    MailboxRead,
    MailFromPastMember,
    MailReceived,
    NotSent,
    Queued,
    Reconnecting,
)
from e2echat.client.fileevents import FileOffered, TransferChanged, TransferDone, TransferProgress
from e2echat.client.receipts import DeliveryReport, MessageQueued
from e2echat.client.trust import Trust
from e2echat.ui.arrivals import Arrival
from e2echat.ui.cells import neutralize, terminal_cells
from e2echat.ui.render import (
    FirstContacts,
    HelpText,
    MentionList,
    Notice,
    OwnMessage,
    Problem,
    Recalled,
    RoomChanges,
    Shown,
    clock,
    online_text,
    render,
    sent_text,
)
from e2echat.ui.transcript import Entry, Kind, State
from e2echat.wire.grammar import DEFAULT_ROOM

NOW = 1_700_000_000.0
STAMP = clock(NOW)

# -- neutralize ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("\x1b[2J", "\\x1b[2J"),
        ("a\rb", "a\\x0db"),
        ("ding\x07", "ding\\x07"),
        ("\x00", "\\x00"),
        ("del\x7f", "del\\x7f"),
        ("csi\x9b2J", "csi\\x9b2J"),
        ("evil\u202etxt.exe", "evil\\u202etxt.exe"),
        ("\u202a\u202b\u202c\u202d", "\\u202a\\u202b\\u202c\\u202d"),
        ("\u2066\u2067\u2068\u2069", "\\u2066\\u2067\\u2068\\u2069"),
        ("two\nlines", "two\\nlines"),
        ("tab\there", "tab    here"),
        ("fake\u2028line", "fake\\u2028line"),
        ("zero\u200bwidth", "zero\\u200bwidth"),
        ("mark\u200e", "mark\\u200e"),
        ("pad\u3164", "pad\\u3164"),
        ("pad\u115f", "pad\\u115f"),
        ("pad\uffa0", "pad\\uffa0"),
        ("jamo\u1161", "jamo\\u1161"),
        ("\ua9c0mark", "\\ua9c0mark"),
        ("\u302emark", "\\u302emark"),
        ("\u0301lone", "\\u0301lone"),
        ("a \u0301", "a \\u0301"),
        ("\ufe0fstart", "\\ufe0fstart"),
        ("x\ufe0f\ufe0f", "x\ufe0f\\ufe0f"),
        ("\u200dstart", "\\u200dstart"),
        ("unassigned\u0378", "unassigned\\u0378"),
        ("private\ue000", "private\\ue000"),
        ("private\U000f0000", "private\\U000f0000"),
        ("surrogate\ud800", "surrogate\\ud800"),
        ("soft\xadhyphen", "soft\\xadhyphen"),
        ("\x1b\u0301", "\\x1b\\u0301"),
    ],
    ids=[
        "esc",
        "cr",
        "bel",
        "nul",
        "del",
        "c1-csi",
        "rlo",
        "embeddings",
        "isolates",
        "newline",
        "tab",
        "line-separator",
        "zero-width-space",
        "lrm",
        "hangul-filler",
        "choseong-filler",
        "halfwidth-filler",
        "conjoining-jamo",
        "javanese-mark-first",
        "tone-mark-first",
        "lone-combining-mark",
        "mark-after-space",
        "variation-selector-first",
        "second-variation-selector",
        "joiner-first",
        "unassigned",
        "private-use",
        "private-use-plane-15",
        "surrogate",
        "soft-hyphen",
        "mark-after-an-escape",
    ],
)
def test_neutralize_makes_controls_visible(text: str, shown: str) -> None:
    assert neutralize(text) == shown


@pytest.mark.parametrize(
    "text",
    [
        "plain ascii",
        "café crème, naïve, Ångström",
        "👋🏽 hi 🎉",
        "日本語",
        "עברית",
        "e\u0301",
        "Tie\u0302\u0301ng Vie\u0323\u0302t",  # decomposed: two marks on one letter
        "नमस्ते",  # spacing and nonspacing marks
        "❤\ufe0f 1\ufe0f\u20e3",  # emoji presentation, keycap
        "👨\u200d👩\u200d👧 🏳\ufe0f\u200d🌈 🇫🇷",  # joined emoji, flags
        "한국어",
    ],
)
def test_neutralize_leaves_ordinary_text_alone(text: str) -> None:
    assert neutralize(text) == text


_DANGEROUS = {
    chr(c) for c in (*range(0x20), *range(0x7F, 0xA0), *range(0x202A, 0x202F), *range(0x2066, 0x206A))
}


@settings(max_examples=300)
@given(st.text(st.characters(exclude_categories=["Cs"]), max_size=60))
def test_neutralized_text_contains_no_control_or_bidi_override(text: str) -> None:
    shown = neutralize(text)
    assert not _DANGEROUS & set(shown)
    # Nothing whose width terminals disagree on, or that has none: every character shown
    # as itself has a width terminal_cells vouches for.
    assert all(terminal_cells(char) is not None for char in shown)
    # Nor a mark, selector or joiner with nothing of the sender's before it to attach to.
    for before, char in zip(" " + shown, shown, strict=False):
        if unicodedata.category(char)[0] == "M" or char == "\u200d":
            assert terminal_cells(before) is not None and not before.isspace()
    # Nothing that was harmless was lost: every letter, digit, punctuation mark, symbol
    # and space of certain width is still there, in order (escapes come in between).
    harmless = [c for c in text if unicodedata.category(c)[0] in "LNPSZ" and terminal_cells(c) is not None]
    rest = iter(shown)
    assert all(char in rest for char in harmless)
    assert neutralize(shown) == shown  # what is shown stays as it is when shown again


def test_dangerous_set_is_what_the_docstring_promises() -> None:
    """The explicit list above agrees with Unicode: controls (Cc) and the bidi
    embeddings, overrides and isolates."""
    for char in _DANGEROUS:
        assert unicodedata.category(char) == "Cc" or unicodedata.bidirectional(char) in {
            "LRE",
            "RLE",
            "PDF",
            "LRO",
            "RLO",
            "LRI",
            "RLI",
            "FSI",
            "PDI",
        }


# -- render: each kind of event's look and text ----------------------------------------------

RELAY = "127.0.0.1:7777"


def _shown(event: Shown, **options: bool) -> tuple[str | None, str | None]:
    """The look and the text (lines joined) that ``render`` gives ``event``."""
    lines = render(event, NOW, relay=RELAY, **options)
    if not lines:
        return None, None
    styles = {style for style, _ in lines}
    assert len(styles) == 1, "every line of one event looks the same"
    return styles.pop(), "\n".join(text for _, text in lines)


_LINES: dict[str, tuple[str | None, Shown, str | None]] = {
    "room-message": ("message", MessageReceived("bob", "hi all", private=False), f"{STAMP} <bob ?> hi all"),
    "delivered-private": (
        "notice",
        DeliveryReport(3, True, ("bob",), (), "see you at 6"),
        f'{STAMP} -- "see you at 6" delivered to bob',
    ),
    "delivered-room-many": (
        "notice",
        DeliveryReport(4, False, ("a", "b", "c", "d"), (), "hi"),
        f'{STAMP} -- "hi" delivered to all 4',
    ),
    "not-delivered": (
        "warning",
        DeliveryReport(5, False, ("bob",), (("carol", "offline"), ("dave", "no receipt")), "hi"),
        f'{STAMP} !! "hi" NOT delivered to carol (offline), dave (no receipt); delivered to bob',
    ),
    "queued-in-a-mailbox": (
        "notice",
        MessageQueued(6, True, ("bob",), "see you tomorrow"),
        f'{STAMP} -- "see you tomorrow" queued for bob (offline)',
    ),
    "all-queued": (None, DeliveryReport(6, True, (), (), "see you tomorrow", ("bob",)), None),
    "mailbox-read": (None, MailboxRead(41), None),
    "room-refused": (None, RoomRefused("#full", "too_many_rooms"), None),  # ui/places.py says it
    "mailed-by-one-who-left": (
        "message",
        MailFromPastMember("alice", "bye all", private=False, sent_at=NOW - 60, room="#ops"),
        f"{STAMP} #ops [today {time.strftime('%H:%M', time.localtime(NOW - 60))}] (has since left #ops) "
        "<alice ?> bye all",
    ),
    "mailed-today": (
        "private",
        MailReceived("bob", "while you slept", private=True, sent_at=NOW - 60),
        f"{STAMP} [private] [today {time.strftime('%H:%M', time.localtime(NOW - 60))}] <bob ?> "
        "while you slept",
    ),
    "mailed-yesterday": (
        "message",
        MailReceived("bob", "old news", private=False, sent_at=NOW - 86400),
        f"{STAMP} [yesterday {time.strftime('%H:%M', time.localtime(NOW - 86400))}] <bob ?> old news",
    ),
    "mailed-last-week": (
        "message",
        MailReceived("bob", "older", private=False, sent_at=NOW - 7 * 86400),
        f"{STAMP} [{time.strftime('%Y-%m-%d %H:%M', time.localtime(NOW - 7 * 86400))}] <bob ?> older",
    ),
    "late-message": (
        "message",
        MessageReceived("bob", "held back", private=False, late=True),
        f"{STAMP} [late] <bob ?> held back",
    ),
    "old-message": (
        "message",
        MessageReceived("bob", "held back", private=False, sent_at=NOW - 5 * 60),
        f"{STAMP} (sent 5 min ago) <bob ?> held back",
    ),
    "old-late-private-message": (
        "private",
        MessageReceived("bob", "psst", private=True, late=True, sent_at=NOW - 75),
        f"{STAMP} [private] [late] (sent 75 s ago) <bob ?> psst",
    ),
    "fresh-message": (
        "message",
        MessageReceived("bob", "just now", private=False, sent_at=NOW - 59),
        f"{STAMP} <bob ?> just now",
    ),
    "message-from-the-future": (  # the sender's clock is fast: nothing to say about age
        "message",
        MessageReceived("bob", "soon", private=False, sent_at=NOW + 3600),
        f"{STAMP} <bob ?> soon",
    ),
    "split-view": (
        "warning",
        SplitView("bob"),
        f"{STAMP} !! warning: bob sees a different directory than you do: the relay may be showing "
        "people different keys. Compare safety numbers (/verify) before you trust a key.",
    ),
    "private-message": (
        "private",
        MessageReceived("bob", "psst", private=True, trust=Trust.VERIFIED),
        f"{STAMP} [private] <bob ✓> psst",
    ),
    "message-with-escape": (
        "message",
        MessageReceived("bob", "\x1b[2Jgotcha", private=False),
        f"{STAMP} <bob ?> \\x1b[2Jgotcha",
    ),
    "message-changed-key": (
        "warning",
        MessageReceived("bob", "x", private=False, trust=Trust.CHANGED),
        f"{STAMP} <bob KEY CHANGED> x",
    ),
    "joined": ("notice", PeerJoined("carol"), f"{STAMP} -- carol came online"),
    "left": ("notice", PeerLeft("carol"), f"{STAMP} -- carol went offline"),
    "away": ("notice", Away("carol", "at lunch"), f"{STAMP} -- carol is away: “at lunch”"),
    "back": ("notice", Away("carol", ""), f"{STAMP} -- carol is back"),
    "we-are-away": ("notice", Away("alice", "out", ours=True), f"{STAMP} -- you are away: “out”"),
    "we-are-back": ("notice", Away("alice", "", ours=True), f"{STAMP} -- you are back"),
    # A mark at the start of a peer's away message must not attach to our text.
    "away-with-a-leading-mark": ("notice", Away("carol", "\u0301x"), f"{STAMP} -- carol is away: “\\u0301x”"),
    "room-joined": ("notice", RoomEntered("#ops", "carol"), f"{STAMP} -- carol joined #ops"),
    "room-left": ("notice", RoomParted("#ops", "carol"), f"{STAMP} -- carol left #ops"),
    "room-listed": (
        "notice",
        RoomListed("#ops", ("user10", "user2"), ("carol",)),
        f"{STAMP} -- #ops: you, user2, user10; offline: carol",
    ),
    "room-listed-alone": ("notice", RoomListed("#new", (), ()), f"{STAMP} -- #new: only you"),
    "room-changed": (
        "notice",
        RoomChanged("#ops", "carol joined"),
        f"{STAMP} -- the safety number of #ops changed: carol joined (/verify #ops shows it)",
    ),
    "room-changes": (
        "notice",
        RoomChanges((("#ops", "carol joined"), ("#dev", "bob left"), ("#ops", "dave joined"))),
        f"{STAMP} -- the safety number of #ops changed: carol joined, dave joined (/verify #ops shows it)\n"
        f"{STAMP} -- the safety number of #dev changed: bob left (/verify #dev shows it)",
    ),
    "room-message-tagged": (
        "message",
        MessageReceived("alice", "hi", private=False, trust=Trust.VERIFIED, room="#ops"),
        f"{STAMP} #ops <alice ✓> hi",
    ),
    "own-room-message-tagged": ("own", OwnMessage("alice", "hi", None, "#ops"), f"{STAMP} #ops <alice> hi"),
    "split-view-in-a-room": (
        "warning",
        SplitView("bob", "#ops"),
        f"{STAMP} !! warning: bob sees other members of #ops than you do: the relay may have added a "
        "reader for one of you, or hidden one. Compare the room's safety number (/verify #ops) before "
        "you say anything secret there.",
    ),
    "registered-alone": (
        "notice",
        Registered("alice", ()),
        f"{STAMP} -- connected to the relay at {RELAY} as alice; nobody else is online; "
        "/help lists the commands",
    ),
    "registered-with-peers": (
        "notice",
        Registered("alice", ("bob", "carol")),
        f"{STAMP} -- connected to the relay at {RELAY} as alice; online: bob, carol; "
        "/help lists the commands",
    ),
    "missing-many": ("warning", MessagesMissing("bob", 3), f"{STAMP} !! 3 messages from bob are missing"),
    "report-all-delivered": (None, SendReport(1, False, ("bob", "carol"), ()), None),
    "report-missing": (
        None,
        SendReport(2, True, (), ("bob", "carol")),
        None,  # the DeliveryReport says it, with reasons
    ),
    "security-warning": (
        "warning",
        SecurityWarning("bad tag from \x1b]0;x\x07"),
        f"{STAMP} !! warning: bad tag from \\x1b]0;x\\x07",
    ),
    "relay-error": ("warning", RelayError("slow", "too fast\r"), f"{STAMP} !! relay error: too fast\\x0d"),
    "relay-closing": (
        "notice",
        RelayClosing("bye\u202e"),
        f"{STAMP} -- the relay is shutting down: bye\\u202e",
    ),
    "registration-failed": (
        "warning",
        RegistrationFailed("nick_taken", "nick 'alice' is taken"),
        f"{STAMP} !! the relay refused us: nick 'alice' is taken",
    ),
    "relay-key-refused": (
        "warning",
        RelayKeyRefused("bbbb 2222", "aaaa 1111"),
        f"{STAMP} !! the relay's key (bbbb 2222) is not the one pinned for it (aaaa 1111): "
        "it may be an impostor; nothing was sent to it",
    ),
    "connection-lost": (
        "warning",
        ConnectionLost("it shut down"),
        f"{STAMP} !! lost the relay at {RELAY}: it shut down",
    ),
    "reconnecting": (
        "notice",
        Reconnecting(2.0, 2, "the relay is not back yet"),
        f"{STAMP} -- reconnecting in 2s (the relay is not back yet)",
    ),
    "queued": (
        "notice",
        Queued("hello"),
        f'{STAMP} -- not connected: "hello" will be sent when the relay is back',
    ),
    "not-sent": (
        "warning",
        NotSent(("a", "b")),
        f'{STAMP} !! NOT sent (no connection to the relay): "a", "b"',
    ),
    "disconnected": (None, Disconnected("it refused us"), None),  # the front end says why
    "notice": ("notice", Notice("bell off"), f"{STAMP} -- bell off"),
    "problem": ("warning", Problem("no \x1b[2J"), f"{STAMP} !! no \\x1b[2J"),
    "own-message": ("own", OwnMessage("alice", "hi all"), f"{STAMP} <alice> hi all"),
    "own-private-message": (
        "own",
        OwnMessage("alice", "psst", "bob"),
        f"{STAMP} [private to bob] <alice> psst",
    ),
    "help": (
        "message",
        HelpText(("/who — who is online", "/quit — leave")),
        "/who — who is online\n/quit — leave",
    ),
    "recalled-room-message": (
        "message",
        Recalled(Entry(DEFAULT_ROOM, True, "bob", "hi", NOW)),
        f"{STAMP} #lobby <bob> hi",
    ),
    "recalled-private-message": (
        "private",
        Recalled(Entry("bob", True, "bob", "psst \x1b[2J", NOW, NOW - 9)),
        f"[{sent_text(NOW - 9, NOW)}] [private] <bob> psst \\x1b[2J",
    ),
    "recalled-message-sent-the-day-before": (
        "message",
        # Shown today (read from a mailbox), sent yesterday: when it was sent is what counts.
        Recalled(Entry(DEFAULT_ROOM, True, "bob", "old news", NOW, NOW - 86400)),
        f"[{sent_text(NOW - 86400, NOW)}] #lobby <bob> old news",
    ),
    "recalled-from-another-day": (
        "message",
        Recalled(Entry(DEFAULT_ROOM, True, "bob", "old", NOW - 3 * 86400)),
        f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(NOW - 3 * 86400))} #lobby <bob> old",
    ),
    "recalled-own-delivered": (
        "own",
        Recalled(Entry("bob", False, "alice", "yo", NOW, NOW, 3, State.DELIVERED, "delivered to bob")),
        f"{STAMP} [private to bob] <alice> yo",
    ),
    "recalled-own-queued": (
        "own",
        Recalled(Entry(DEFAULT_ROOM, False, "alice", "yo", NOW, NOW, 3, State.QUEUED, "queued")),
        f"{STAMP} #lobby [queued] <alice> yo",
    ),
    "recalled-own-room-message-partly-queued": (
        "own",
        Recalled(
            Entry(
                DEFAULT_ROOM,
                False,
                "alice",
                "yo",
                NOW,
                NOW,
                3,
                State.QUEUED,
                "waiting for dave (queued); delivered to bob",
            )
        ),
        f"{STAMP} #lobby [waiting for dave (queued); delivered to bob] <alice> yo",
    ),
    "recalled-own-not-delivered": (
        "warning",
        Recalled(
            Entry(
                DEFAULT_ROOM,
                False,
                "alice",
                "yo",
                NOW,
                NOW,
                3,
                State.FAILED,
                "NOT delivered to bob (offline)",
            )
        ),
        f"{STAMP} #lobby [NOT delivered to bob (offline)] <alice> yo",
    ),
    "first-contacts": (
        "notice",
        FirstContacts(tuple(f"user{n}" for n in range(12, 0, -1))),
        f"{STAMP} -- first contact with 12 people (user1, user2, user3, user4, user5 and 7 more): their "
        "keys are pinned from now on (unverified; /who lists them, /verify NICK checks one)",
    ),
    "arrival": (
        "notice",
        Arrival("carol", (("online", ""), ("joined", "#ops")), ("#ops",)),
        f"{STAMP} -- carol came online and joined #ops (safety number changed: /verify #ops)",
    ),
    "mentions-none": (
        "notice",
        MentionList(()),
        f"{STAMP} -- nobody has mentioned you in this session",
    ),
    "recalled-notice": (
        "notice",
        Recalled(Entry("bob", False, "bob", "bob's identity key changed", NOW, kind=Kind.NOTICE)),
        f"{STAMP} -- bob's identity key changed",
    ),
    "file-offered": (
        "notice",
        FileOffered(3, "bob", "report.pdf", 1_234_567, Trust.VERIFIED),
        f"{STAMP} -- bob ✓ offers report.pdf (1.2 MB): /accept 3 or /reject 3",
    ),
    "file-progress": (
        "notice",
        TransferProgress(3, "in", "bob", "report.pdf", 617_283, 1_234_567, 100_000.0),
        f"{STAMP} -- file 3 report.pdf from bob: 49% of 1.2 MB, 100.0 kB/s, 0:07 left",
    ),
    "file-paused": (
        "notice",
        TransferChanged(3, "out", "bob", "report.pdf", "paused"),
        f"{STAMP} -- file 3 report.pdf to bob: paused",
    ),
    "file-received": (
        "notice",
        TransferDone(3, "in", "bob", "report.pdf", 1_234_567, True, "done", path="/home/me/report.pdf"),
        f"{STAMP} -- file 3 report.pdf from bob: received and hash-checked (1.2 MB): "
        "saved as /home/me/report.pdf",
    ),
    "file-failed": (
        "warning",
        TransferDone(
            3, "out", "bob", "r\u202eeport.pdf", 1_234_567, False, "failed", "it did not match\x1b[2J"
        ),
        f"{STAMP} !! file 3 r\\u202eeport.pdf to bob: FAILED: it did not match\\x1b[2J",
    ),
}


@pytest.mark.parametrize(("style", "event", "line"), _LINES.values(), ids=_LINES.keys())
def test_render(style: str | None, event: Shown, line: str | None) -> None:
    assert _shown(event) == (style, line)


def test_one_missing_message_is_grammatical() -> None:
    assert _shown(MessagesMissing("bob", 1)) == ("warning", f"{STAMP} !! 1 message from bob is missing")


def test_key_pinned_line() -> None:
    style, line = _shown(KeyPinned("bob"))
    assert style == "notice" and line is not None
    assert line.startswith(f"{STAMP} -- first contact with bob")
    assert "/verify bob" in line


def test_key_changed_warning_shows_both_fingerprints_on_every_line() -> None:
    event = KeyChanged("bob", "aaaa bbbb", "cccc dddd")
    style, text = _shown(event)
    assert style == "warning" and text is not None
    lines = text.split("\n")
    assert all(line.startswith(f"{STAMP} !! ") for line in lines)
    assert "CHANGED" in lines[0] and "bob" in lines[0]
    assert any("aaaa bbbb" in line for line in lines)
    assert any("cccc dddd" in line for line in lines)
    assert "/trust bob" in text


def test_every_event_type_has_a_line_or_a_reason_not_to() -> None:
    covered = {type(event) for _, event, _ in _LINES.values()} | {KeyPinned, KeyChanged}
    assert covered == set(Shown.__args__)


# -- a peer's text never chooses how it looks ------------------------------------------------

#: what our own warnings and notices look like, typed by a peer to pass for one of them
FORGED = [
    "KEY CHANGED> mallory",
    "!! WARNING: carol's identity key has CHANGED.",
    "-- carol joined",
    '"hi" NOT delivered to carol (offline)',
    "fine\n!! WARNING: KEY CHANGED> on a line of its own",
    "fine\n-- and a notice on another",
]


@pytest.mark.parametrize("text", FORGED)
@pytest.mark.parametrize("multiline", [False, True], ids=["one-line", "multi-line"])
def test_a_peers_text_is_drawn_in_the_message_style(text: str, multiline: bool) -> None:
    assert _shown(MessageReceived("bob", text, private=False), multiline=multiline)[0] == "message"
    assert _shown(MessageReceived("bob", text, private=True), multiline=multiline)[0] == "private"
    late = MessageReceived("bob", text, private=False, trust=Trust.VERIFIED, late=True)
    assert _shown(late, multiline=multiline)[0] == "message"


def test_genuine_key_changes_are_drawn_as_warnings() -> None:
    assert _shown(KeyChanged("bob", "aaaa", "bbbb"))[0] == "warning"
    # What comes from a changed key is marked, and drawn as a warning, whatever it says.
    for private in (False, True):
        got = MessageReceived("bob", "hi, it's me", private=private, trust=Trust.CHANGED)
        assert _shown(got) == (
            "warning",
            f"{STAMP}{' [private]' if private else ''} <bob KEY CHANGED> hi, it's me",
        )


@pytest.mark.parametrize(
    ("age", "said"),
    [(60, "60 s"), (119, "119 s"), (120, "2 min"), (7199, "119 min"), (7200, "2 h"), (3 * 86400, "3 days")],
)
def test_a_messages_age_in_words(age: float, said: str) -> None:
    event = MessageReceived("bob", "x", private=False, sent_at=NOW - age)
    assert _shown(event) == ("message", f"{STAMP} (sent {said} ago) <bob ?> x")


def test_clock_format() -> None:
    assert len(STAMP) == 8 and STAMP[2] == ":" and STAMP[5] == ":"


def test_online_text() -> None:
    assert online_text(()) == "nobody else is online"
    assert online_text(["bob"]) == "online: bob"
