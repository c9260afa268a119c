"""The protocol's lexical rules, each written once: what a nick is, key and field sizes,
limits, the protocol version. The dataclasses, the strict codec and the fast paths all
take them from here (the fast paths build their regular expressions from ``NICK``).

Pure (no I/O). The ``check_*`` functions are for values we are about to send: a bad one
is our bug, so they raise ``LocalProtocolError``.
"""

from __future__ import annotations

import re

from e2echat.errors import LocalProtocolError

PROTOCOL_VERSION = 1

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


def require(ok: bool, detail: str) -> None:
    if not ok:
        raise LocalProtocolError(detail=detail)


def check_nick(nick: object, what: str = "nick") -> None:
    require(is_valid_nick(nick), f"invalid {what} {nick!r}: {NICK_RULE}")


def check_bytes(value: object, what: str, *, size: int | None = None, limit: int = 0) -> None:
    """``value`` is bytes of exactly ``size``, or else of 1 to ``limit``."""
    require(isinstance(value, bytes), f"{what} must be bytes")
    assert isinstance(value, bytes)
    if size is not None:
        require(len(value) == size, f"{what} must be {size} bytes, not {len(value)}")
    else:
        require(0 < len(value) <= limit, f"{what} must be 1 to {limit} bytes")


def check_id(value: object) -> None:
    require(
        isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_ID,
        f"message id must be an integer from 0 to {MAX_ID}",
    )
