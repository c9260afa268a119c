"""Nicks as people read them: in natural order, each in its own colour, and found in a
line that mentions them. Pure: no I/O, no prompt_toolkit.
"""

from __future__ import annotations

import functools
import re
import zlib
from collections.abc import Iterable

from e2echat.wire.grammar import NICK_CHARS

_DIGITS = re.compile(r"([0-9]+)")


def natural_key(name: str) -> tuple[tuple[str | int, ...], str]:
    """Sorts ``user2`` before ``user10``, whatever the case; the name itself breaks ties,
    so the order is total (``Bob`` and ``bob`` are two nicks)."""
    # re.split with a group alternates text and digits, text first: parts compare in kind.
    parts = _DIGITS.split(name)
    return tuple(int(part) if index % 2 else part.casefold() for index, part in enumerate(parts)), name


def natural_sorted(names: Iterable[str]) -> list[str]:
    """``names`` in the order every list of nicks is shown in."""
    return sorted(names, key=natural_key)


@functools.lru_cache(maxsize=16)  # one nick per chat; tests run a few
def mention_pattern(nick: str) -> re.Pattern[str]:
    """Finds ``nick`` as a word of its own, whatever the case: ``alice``, ``Alice:`` and
    ``@alice`` mention alice; ``malice``, ``alice2`` and ``alice.b`` do not. A dot may end
    a sentence after a nick, but a dot followed by a nick's character goes on with it."""
    inner = f"[{NICK_CHARS.replace('.', '')}]"
    return re.compile(
        rf"(?<!{inner})(?<!{inner}\.){re.escape(nick)}(?!{inner}|\.{inner})",
        re.IGNORECASE | re.ASCII,  # ASCII: the Kelvin sign is no "k"
    )


def mentions(text: str, nick: str) -> bool:
    """Whether ``text`` mentions ``nick`` (``mention_pattern``)."""
    return mention_pattern(nick).search(text) is not None


#: Colours for nicks, readable on dark and light backgrounds; none of them is a colour
#: the REPL's line styles use for warnings.
NICK_PALETTE = (
    "#5fafaf",
    "#87af5f",
    "#d7875f",
    "#af87d7",
    "#5f87d7",
    "#d7af5f",
    "#5fd7af",
    "#d75f87",
    "#87afd7",
    "#afaf5f",
    "#d787af",
    "#5faf87",
)


def nick_colour(nick: str) -> str:
    """The colour ``nick`` is drawn in: the same in every process and on every machine
    (CRC-32 of the nick, not ``hash()``, which Python salts per process)."""
    return NICK_PALETTE[zlib.crc32(nick.encode("utf-8")) % len(NICK_PALETTE)]
