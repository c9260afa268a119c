"""What a profile remembers besides its keys: the nick, and the relay it last used, so
`e2echat connect` can be typed without arguments. Pure apart from small file I/O."""

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


def load_settings(directory: Path) -> dict[str, Any]:
    """The profile's remembered nick, host and port; whatever is missing or damaged is
    simply not remembered."""
    try:
        document = json.loads((directory / SETTINGS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(document, dict):
        return {}
    settings: dict[str, Any] = {}
    if is_valid_nick(document.get("nick")):
        settings["nick"] = document["nick"]
    if isinstance(document.get("host"), str) and document["host"]:
        settings["host"] = document["host"]
    port = document.get("port")
    if isinstance(port, int) and not isinstance(port, bool) and 0 < port < 65536:
        settings["port"] = port
    return settings


def save_settings(directory: Path, nick: str, host: str, port: int) -> None:
    data = json.dumps({"nick": nick, "host": host, "port": port}, indent=2) + "\n"
    write_private_file(directory / SETTINGS_FILE, data.encode("utf-8"))


def last_profile(environ: Mapping[str, str] | None = None) -> Path | None:
    try:
        text = (data_home(environ) / _LAST_PROFILE).read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return Path(text) if text else None


def remember_last_profile(directory: Path, environ: Mapping[str, str] | None = None) -> None:
    write_private_file(data_home(environ) / _LAST_PROFILE, (str(directory.resolve()) + "\n").encode("utf-8"))
