"""``/me``: an action (shown ``* <alice ?> waves``), carried as IRC carries it, a CTCP ACTION: the
text between ``\\x01ACTION `` and ``\\x01``. Inside the encryption like any text, so it
needs nothing new on the wire; a client that does not know it shows the text with its
two control characters escaped. Pure.
"""

from __future__ import annotations

ACTION_START = "\x01ACTION "
ACTION_END = "\x01"


def as_action(text: str) -> str:
    """The message text that says ``text`` as an action."""
    return f"{ACTION_START}{text}{ACTION_END}"


def action_of(text: str) -> str | None:
    """What ``text`` does, if it is an action; None if it is not. A preview cut short
    (its end lost) still reads as one."""
    if not text.startswith(ACTION_START):
        return None
    return text[len(ACTION_START) :].removesuffix(ACTION_END)


def readable(text: str) -> str:
    """``text`` as a quote of it reads: an action as ``* waves``."""
    action = action_of(text)
    return text if action is None else f"* {action}"
