"""What a terminal draws: how many cells each character takes, which characters must be
shown as escapes, and rows wrapped so that the terminal never wraps one itself. Pure: no
I/O, no prompt_toolkit.

A peer who could make the terminal wrap a row by itself could start a row at the left
edge with text that reads like a line of its own (a message from someone else). So only
characters whose width every terminal agrees on (or that we may safely count as wider
than any terminal draws them) are drawn as they are; every row is cut by us, counting
never fewer cells than a terminal draws, and continues under its header.
"""

from __future__ import annotations

import re
import unicodedata

_ZERO_WIDTH_JOINER = "\u200d"  # joins emoji into one picture (families, flags)

#: Default_Ignorable_Code_Point (Unicode's DerivedCoreProperties.txt) outside the
#: categories ``terminal_cells`` refuses anyway (Cf, Cn): invisible fillers that terminals
#: draw 0, 1 or 2 cells wide. Variation selectors are handled on their own.
_IGNORABLE = (
    (0x034F, 0x034F),  # combining grapheme joiner
    (0x115F, 0x115F),  # Hangul choseong filler
    (0x1160, 0x11FF),  # the jungseong filler, and the conjoining vowels and finals after it
    (0x17B4, 0x17B5),  # Khmer inherent vowels
    (0x180B, 0x180F),  # Mongolian free variation selectors
    (0x3164, 0x3164),  # Hangul filler
    (0xD7B0, 0xD7FF),  # more conjoining vowels and finals
    (0xFFA0, 0xFFA0),  # halfwidth Hangul filler
)
_VARIATION_SELECTORS = ((0xFE00, 0xFE0F), (0xE0100, 0xE01EF))
#: What Unicode says may be wide (W, F) or is wide in East Asian fonts (A: ambiguous).
_WIDE = frozenset("WFA")
#: The widest a terminal draws one code point that it draws at all.
MAX_CELLS = 2


def _within(code: int, ranges: tuple[tuple[int, int], ...]) -> bool:
    return any(low <= code <= high for low, high in ranges)


def terminal_cells(char: str) -> int | None:
    """The most cells any terminal may give ``char``, or None if it must not be drawn as
    itself. This is the one rule for what reaches a terminal as it is; ``neutralize``
    escapes the rest and the REPL wraps with these widths, so no width the REPL counts is
    ever less than what a terminal draws. (Counting too many wraps a row early: harmless.
    Counting too few lets the terminal wrap by itself, and a peer's text starts a row at
    the left edge, where it passes for a line of its own: issue 16.)

    * Printable ASCII: 1.
    * None for what has no certain width, or none at all: controls (Cc), format characters
      (Cf: bidi controls, zero-width spaces, soft hyphen; but ZWJ, see below), surrogates
      (Cs), private use (Co: the font decides), unassigned code points (Cn: a terminal with
      newer tables may draw them wide), line and paragraph separators (Zl, Zp), and the
      default-ignorable fillers (U+115F, U+3164, U+FFA0, ...) and conjoining Hangul jamo
      that terminals draw 0, 1 or 2 wide (prompt_toolkit counts U+3164 0, tmux draws 2).
    * 2 for characters Unicode calls wide or fullwidth, and for East Asian Ambiguous ones
      (terminals in CJK locales draw them wide).
    * 2 for combining marks (Mn, Mc, Me) and variation selectors: prompt_toolkit counts
      them 0, most terminals 0 or 1, some draw spacing and wide marks 2 (U+302E, U+A9C0);
      and a terminal whose tables predate a mark draws it on a cell of its own.
    * 2 for other symbols (So): emoji, which terminals draw 2 wide whatever their East
      Asian Width (regional indicators, text-style emoji with U+FE0F), and pictographs
      that tmux draws 2 wide (U+4DC0 hexagrams).
    * 2 for everything beyond the Basic Multilingual Plane: emoji, CJK extensions and
      rarer scripts, where width tables differ most between Unicode versions (the wcwidth
      table prompt_toolkit uses makes U+1D360 wide; Unicode 14 does not).
    * 1 for the zero-width joiner: 0 everywhere it joins, but counting it costs little.
    * 1 for everything else (letters, digits, punctuation of narrow scripts, spaces).

    Sequences never take more than the sum of their parts: a terminal that joins emoji
    or marks into one picture draws fewer cells than counted, never more.
    """
    code = ord(char)
    if 0x20 <= code < 0x7F:
        return 1
    category = unicodedata.category(char)
    if char == _ZERO_WIDTH_JOINER:
        return 1
    if category in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp") or _within(code, _IGNORABLE):
        return None
    wide = unicodedata.east_asian_width(char) in _WIDE
    if wide or category[0] == "M" or category == "So" or code > 0xFFFF:
        return MAX_CELLS
    return 1


def _escape(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def neutralize(text: str, newline: str = "\\n") -> str:
    """``text`` from a peer or the relay, made safe to put on a terminal: every character
    ``terminal_cells`` refuses (controls such as ESC, CR and BEL, bidi overrides,
    zero-width and filler characters, private use, unassigned) becomes a visible escape
    such as ``\\x1b`` or ``\\u3164``, and so does a combining mark, variation selector or
    zero-width joiner with nothing of the sender's own before it to attach to (it would
    attach to our header, or draw on its own at an uncertain width). A variation selector
    is kept only right after the character whose look it selects. A tab becomes four
    spaces; a newline becomes ``newline``: a visible ``\\n`` on one-line output, or a real
    line break and an indent where a message may span lines."""
    out = []
    attached = False  # the last character was drawn as itself, and a mark may follow it
    selectable = False  # ... and it was a base character, which a variation selector may follow
    for char in text:
        if char == "\n":
            out.append(newline)
            attached = selectable = False
            continue
        if char == "\t":
            out.append("    ")
            attached = selectable = False
            continue
        code = ord(char)
        category = unicodedata.category(char)
        if terminal_cells(char) is None:
            keep, attached, selectable = False, False, False
        elif _within(code, _VARIATION_SELECTORS):
            keep, attached, selectable = selectable, selectable, False
        elif category[0] == "M":
            keep, selectable = attached, False
        elif char == _ZERO_WIDTH_JOINER:
            keep, attached, selectable = attached, False, False
        else:
            keep = True
            attached = selectable = category[0] in "LNPS"
        out.append(char if keep else _escape(char))
    return "".join(out)


# Where the text of a multi-line or wrapped message continues: under the text, not
# under the time.
INDENT = 11
CONTINUATION = "\n" + " " * INDENT


def wrap_cells(line: str, width: int, indent: int = INDENT) -> list[str]:
    """Wrap ``line`` into rows of at most ``width`` terminal cells, at spaces where
    possible, continuing under the text: so no row of a peer's message can start at the
    left edge, where it could pass for a line of its own. ``line`` is neutralized first
    (a no-op on lines ``render`` made) and cells are counted with ``terminal_cells``,
    which never counts fewer than a terminal draws, so the terminal never has to wrap a
    row itself. ``indent`` shrinks on a terminal too narrow for it, keeping room for a
    wide character and at least one cell of indent."""
    width = max(width, MAX_CELLS + 1)
    indent = max(1, min(indent, width - MAX_CELLS))
    rows: list[str] = []
    row, used = "", 0
    for word in re.split(r"( )", neutralize(line)):
        cells = _cells(word)
        if used + cells <= width:
            row, used = row + word, used + cells
            continue
        if word == " ":
            continue  # the break itself
        if cells <= width - indent and used > indent:  # the word fits on a fresh row
            rows.append(row.rstrip(" "))
            row, used = " " * indent + word, indent + cells
            continue
        for char in word:  # longer than a row: cut it
            char_cells = _char_cells(char)
            if used + char_cells > width:
                rows.append(row)
                row, used = " " * indent, indent
            row, used = row + char, used + char_cells
    rows.append(row)
    return rows


def _cells(text: str) -> int:
    return sum(_char_cells(char) for char in text)


def _char_cells(char: str) -> int:
    cells = terminal_cells(char)
    # Neutralized text holds nothing terminal_cells refuses; if it did, count it wide.
    return MAX_CELLS if cells is None else cells
