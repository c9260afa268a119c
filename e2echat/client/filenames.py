"""What a file from a peer may be called here, and sizes as people read them. Pure.

A name in an offer is anything its sender typed (or made up): ``safe_name`` makes it one
a file can land under, inside the downloads directory, and show on a terminal.
"""

from __future__ import annotations

import re
import unicodedata

#: file names are cut to this many UTF-8 bytes, extension kept: under every file system's
#: 255, with room for " (123)" and ".part"
MAX_LANDED_NAME = 200
#: a name that ends as our own partial files and their records do (``x.part``,
#: ``x.part.json``, ``x.part.record``): a file received under it could pose, after a
#: restart, as a transfer the user never accepted; its dot becomes an underscore
_OURS = re.compile(r"\.(part(?:\.[^.]*)?)$", re.IGNORECASE)


def safe_name(offered: str) -> str:
    """A name a file from a peer can land under: its last path part only (no directory,
    no ``..``), without control, format (bidi) or other invisible characters, without
    leading dots (no hidden files) or trailing dots and spaces, and at most
    MAX_LANDED_NAME bytes, its extension kept; never ending as the partial files of
    transfers and their records do (``.part``, ``.part.json``: ``_part.json``). Never
    empty."""
    name = offered.replace("\\", "/").rsplit("/", 1)[-1]
    kept = "".join(
        " " if char.isspace() else char
        for char in name
        if unicodedata.category(char) not in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp")
    )
    kept = kept.strip().lstrip(".").rstrip(". ")
    if not kept:
        return "file"
    if len(kept.encode("utf-8")) > MAX_LANDED_NAME:
        stem, dot, extension = kept.rpartition(".")
        if not dot or len(extension.encode("utf-8")) > 16:
            stem, extension = kept, ""
        room = MAX_LANDED_NAME - len(extension.encode("utf-8")) - (1 if extension else 0)
        stem = stem.encode("utf-8")[:room].decode("utf-8", "ignore").rstrip(". ")
        kept = f"{stem}.{extension}" if extension else stem
    while _OURS.search(kept):  # "x.part.part" takes two turns
        kept = _OURS.sub(r"_\1", kept)
    return kept or "file"


def size_text(size: float) -> str:
    """1.2 MB, 640 kB, 17 B: decimal units, as file managers show them."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")
