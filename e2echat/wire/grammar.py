"""The protocol's lexical rules, each written once: what a nick is (and when two look
the same), key and field sizes, limits, the protocol version. The dataclasses, the
strict codec and the fast paths all take them from here (the fast paths build their
regular expressions from ``NICK``).

Pure (no I/O). The ``check_*`` functions are for values we are about to send: a bad one
is our bug, so they raise ``LocalProtocolError``.
"""

from __future__ import annotations

import re

from e2echat.errors import LocalProtocolError

PROTOCOL_VERSION = 2

#: A nick: 1 to NICK_MAX of these characters (regular-expression class syntax): ASCII
#: letters, digits, '_', '-' or '.'. None needs escaping in JSON, which the encoders rely on.
NICK_CHARS = r"A-Za-z0-9_.-"
NICK_MAX = 32
#: ... as regular-expression source (the fast paths build theirs from these three)
NICK = rf"[{NICK_CHARS}]{{1,{NICK_MAX}}}"
NICK_RULE = f"1–{NICK_MAX} characters: letters, digits, '_', '-' or '.'"
NICK_PATTERN = re.compile(NICK + r"\Z")
#: An error code: for programs, so plain.
CODE_PATTERN = re.compile(r"[a-z_]{1,32}\Z")
CODE_RULE = "1–32 lowercase letters or '_'"
#: A room: '#' then 1 to ROOM_MAX of these characters: lowercase, so that "#Ops" and "#ops"
#: are never two rooms, and none needs escaping in JSON (the encoders rely on it).
ROOM_CHARS = r"a-z0-9_.-"
ROOM_MAX = 32
ROOM = rf"#[{ROOM_CHARS}]{{1,{ROOM_MAX}}}"
ROOM_RULE = f"'#' then 1–{ROOM_MAX} characters: lowercase letters, digits, '_', '-' or '.'"
ROOM_PATTERN = re.compile(ROOM + r"\Z")
#: Rooms one nick is in, at most: more than a person follows (IRC networks allow 20 to
#: 120), and the bound keeps a register's room list under 2.5 KiB.
MAX_ROOMS = 64
#: The room every client is in unless its profile says otherwise.
DEFAULT_ROOM = "#lobby"

KEY_SIZE = 32
CHALLENGE_SIZE = 32
# A relay password: a passphrase, not a file.
MAX_PASSWORD = 512
# The proof is a Box over challenge + session key + password: 64 bytes, the password, and
# 40 of nonce and tag.
MAX_PROOF = 64 + MAX_PASSWORD + 40
# The session key's proof is a Box over challenge + identity key, nothing else: always
# 64 bytes, plus 40 of nonce and tag.
SESSION_PROOF_SIZE = CHALLENGE_SIZE + KEY_SIZE + 40
# One ciphertext: a message of up to session.MAX_TEXT (16 KiB) plus its header, nonce, tag
# and the metadata around the text, with room for JSON's escaping of control characters
# (up to 6 bytes each).
MAX_BODY = 128 * 1024
# Free text the relay sends (error and shutdown reasons): a line, not a document.
MAX_REASON = 512
# Enough for every recipient of a room message on a busy relay; frames stay under
# MAX_FRAME anyway, and the client splits larger rooms across frames.
MAX_ITEMS = 10_000
MAX_ID = 2**63 - 1
# A prekey's signature: XEdDSA, 64 bytes as Ed25519's (crypto/xeddsa.py).
SIGNATURE_SIZE = 64
# A prekey's id, its owner's number for it: 32 bits, as in Signal (a client makes a few
# hundred prekeys a year).
MAX_PREKEY_ID = 2**32 - 1
# One-time prekeys in one publish: as many as the relay keeps for one identity by default
# (relay.limits.Limits.one_time_prekeys), so one frame (about 7 KiB) can fill it.
MAX_PUBLISH = 100
# Nicks in one fetch: a big room's worth at once. The answer, about 400 bytes a bundle,
# stays well under MAX_FRAME.
MAX_FETCH = 1000
# What a fetch costs against the relay's byte rate for each nick it names, on top of its
# own size: answering one takes the relay ~9 µs and a one-time prekey, where forwarding
# 512 bytes of a send takes about as long. Clients pace their fetches the same way.
FETCH_CHARGE = 512

#: why a message kept in a mailbox was dropped unread (``expired`` messages)
EXPIRED_REASONS = ("expired", "key_changed", "evicted")
# How long a relay keeps a message in a mailbox unless it says otherwise (its default).
DEFAULT_MAILBOX_TTL = 7 * 24 * 3600.0
# A relay's instance id: new when its mailboxes are (a relay in memory draws one each start).
RELAY_ID_SIZE = 16


def is_utf8(text: str) -> bool:
    """False for strings JSON can carry but UTF-8 cannot (lone surrogates like \\ud800),
    which would crash whoever later prints or encodes them."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def is_valid_nick(nick: object) -> bool:
    return isinstance(nick, str) and NICK_PATTERN.match(nick) is not None


# -- when two nicks are the same to a reader ----------------------------------------------
#
# "Bob" and "bob", "aIice" and "alice": a nick is ASCII, so what can be mistaken for what
# is a short list, kept here and nowhere else. ``skeleton`` maps every nick to a form
# that two nicks share when a reader could take one for the other, as Unicode's
# confusable skeleton does (UTS #39, section 4), restricted to the nick alphabet and made
# case-blind. The relay refuses a nick whose skeleton is that of one online.
#
# The entries of Unicode's confusables.txt (UTS #39,
# https://www.unicode.org/Public/security/latest/confusables.txt) whose source is a
# character of the nick alphabet, each to its prototype:
#   0030 ; 004F  ( 0 → O )   DIGIT ZERO → LATIN CAPITAL LETTER O
#   0031 ; 006C  ( 1 → l )   DIGIT ONE → LATIN SMALL LETTER L
#   0049 ; 006C  ( I → l )   LATIN CAPITAL LETTER I → LATIN SMALL LETTER L
#   006D ; 0072 006E  ( m → rn )   LATIN SMALL LETTER M → R, N
# (the others, '"', '`' and '|', are not allowed in a nick). Added to them, two pairs
# from the usual homoglyph lists that confusables.txt leaves out: "cl" for "d" and "vv"
# for "w". Every entry maps a letter to simpler letters, never the other way, so the
# order in which they apply does not matter.
#
# Case is folded first, so that nicks are unique ignoring case; then i must go with l
# too: "ALICE" is "alice" ignoring case, and its I looks like the l of "aIice". (A reader
# tells "ali" from "all", but a skeleton is an equivalence: that pair is the price.)
_AFTER_FOLDING = str.maketrans({"0": "o", "1": "l", "i": "l", "m": "rn", "d": "cl", "w": "vv"})


def is_valid_room(room: object) -> bool:
    return isinstance(room, str) and ROOM_PATTERN.match(room) is not None


def skeleton(nick: str) -> str:
    """The form ``nick`` shares with every nick a reader could take it for."""
    return nick.lower().translate(_AFTER_FOLDING)


def require(ok: bool, detail: str) -> None:
    if not ok:
        raise LocalProtocolError(detail=detail)


def check_nick(nick: object, what: str = "nick") -> None:
    require(is_valid_nick(nick), f"invalid {what} {nick!r}: {NICK_RULE}")


def check_room(room: object, what: str = "room") -> None:
    require(is_valid_room(room), f"invalid {what} {room!r}: {ROOM_RULE}")


def check_bytes(value: object, what: str, *, size: int | None = None, limit: int = 0) -> None:
    """``value`` is bytes of exactly ``size``, or else of 1 to ``limit``."""
    require(isinstance(value, bytes), f"{what} must be bytes")
    assert isinstance(value, bytes)
    if size is not None:
        require(len(value) == size, f"{what} must be {size} bytes, not {len(value)}")
    else:
        require(0 < len(value) <= limit, f"{what} must be 1 to {limit} bytes")


def check_id(value: object, what: str = "message id", limit: int = MAX_ID) -> None:
    require(
        isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= limit,
        f"{what} must be an integer from 0 to {limit}",
    )


def check_time(value: object, what: str) -> None:
    """A Unix time in seconds: a finite number, 0 or more."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 2**40
    require(ok, f"{what} must be a time in seconds (a number, 0 or more)")
