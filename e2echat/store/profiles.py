"""What a profile remembers besides its keys: the nick, and the relay it last used, so
`e2echat connect` can be typed without arguments; and the chat's settings (``/set``).
Pure apart from small file I/O."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from e2echat.store.files import write_private_file
from e2echat.wire.grammar import is_valid_nick

SETTINGS_FILE = "settings.json"
#: before history.db: every line typed, in plain text. Removed where it is found.
PLAINTEXT_INPUT_FILE = "history"
_LAST_PROFILE = "last_profile"


def profile_dir(nick: str, home: str | None = None, environ: Mapping[str, str] | None = None) -> Path:
    """Where a profile lives: ``--home``, else ``$E2ECHAT_HOME``, else the XDG data dir."""
    env = os.environ if environ is None else environ
    if home:
        return Path(home).expanduser()
    if env.get("E2ECHAT_HOME"):
        return Path(env["E2ECHAT_HOME"]).expanduser()
    data_home = env.get("XDG_DATA_HOME") or str(Path("~/.local/share").expanduser())
    return Path(data_home) / "e2echat" / nick


def data_home(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    return Path(env.get("XDG_DATA_HOME") or Path("~/.local/share").expanduser()) / "e2echat"


def relay_key_path(environ: Mapping[str, str] | None = None) -> Path:
    """Where ``e2echat relay`` keeps its long-term key unless told (``--key``)."""
    return data_home(environ) / "relay" / "relay.key"


#: the key in settings.json under which the chat's settings are kept, name -> value
CHAT_SETTINGS = "chat"
#: settings.json's keys for the rooms we are in (a list of names) and the current one
ROOMS = "rooms"
CURRENT_ROOM = "room"


def _document(directory: Path) -> dict[str, Any]:
    """settings.json as it is; empty if it is missing or damaged."""
    try:
        document = json.loads((directory / SETTINGS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return document if isinstance(document, dict) else {}


def _write(directory: Path, document: dict[str, Any]) -> None:
    data = json.dumps(document, indent=2) + "\n"
    write_private_file(directory / SETTINGS_FILE, data.encode("utf-8"))


def load_settings(directory: Path) -> dict[str, Any]:
    """The profile's remembered nick, host and port, and under ``CHAT_SETTINGS`` the
    chat's settings (text by name: ui/settings.py checks them); whatever is missing or
    damaged is simply not remembered."""
    document = _document(directory)
    settings: dict[str, Any] = {}
    chat = document.get(CHAT_SETTINGS)
    if isinstance(chat, dict):
        settings[CHAT_SETTINGS] = {name: value for name, value in chat.items() if isinstance(value, str)}
    if is_valid_nick(document.get("nick")):
        settings["nick"] = document["nick"]
    if isinstance(document.get("host"), str) and document["host"]:
        settings["host"] = document["host"]
    port = document.get("port")
    if isinstance(port, int) and not isinstance(port, bool) and 0 < port < 65536:
        settings["port"] = port
    rooms = document.get(ROOMS)
    if isinstance(rooms, list):  # (each name is checked by ui/roomlist.py)
        settings[ROOMS] = [room for room in rooms if isinstance(room, str)]
    if isinstance(document.get(CURRENT_ROOM), str):
        settings[CURRENT_ROOM] = document[CURRENT_ROOM]
    return settings


def save_settings(directory: Path, nick: str, host: str, port: int) -> None:
    """Remember the nick and the relay; the chat's settings and rooms stay as they were kept."""
    document = _document(directory)
    kept = {key: document[key] for key in (CHAT_SETTINGS, ROOMS, CURRENT_ROOM) if key in document}
    _write(directory, {"nick": nick, "host": host, "port": port, **kept})


def keep_setting(directory: Path, name: str, value: str) -> None:
    """Keep one of the chat's settings (``/set``); the rest of the file stays as it is.
    The profile's lock makes this process its only writer."""
    document = _document(directory)
    chat = document.get(CHAT_SETTINGS)
    document[CHAT_SETTINGS] = {**(chat if isinstance(chat, dict) else {}), name: value}
    _write(directory, document)


def keep_rooms(directory: Path, rooms: list[str], current: str | None) -> None:
    """Keep the rooms we are in, and the current one (None: in none); the rest of the file
    stays as it is."""
    document = _document(directory)
    document[ROOMS] = list(rooms)
    document[CURRENT_ROOM] = current
    _write(directory, document)


def last_profile(environ: Mapping[str, str] | None = None) -> Path | None:
    try:
        text = (data_home(environ) / _LAST_PROFILE).read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return Path(text) if text else None


def remember_last_profile(directory: Path, environ: Mapping[str, str] | None = None) -> None:
    write_private_file(data_home(environ) / _LAST_PROFILE, (str(directory.resolve()) + "\n").encode("utf-8"))
