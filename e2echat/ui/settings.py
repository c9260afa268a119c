"""The chat's settings: what each is called, the values it may take, and what it does.
``/set`` changes one for the chat at once and the profile keeps it. Pure: no I/O.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

from e2echat.errors import CommandError


@dataclass(frozen=True)
class Setting:
    """One setting: the values it may take (``/set`` lists them in this order), and what
    it does, for ``/help set``."""

    name: str
    #: the values it may take; none: it takes a size (``parse_size``)
    choices: tuple[str, ...]
    description: str

    @property
    def takes(self) -> str:
        """What it takes, as ``/set`` lists it."""
        return "|".join(self.choices) if self.choices else "a size: 100M, 1G"


#: name -> the setting. The order is the order ``/set`` lists them in.
SETTINGS: dict[str, Setting] = {
    setting.name: setting
    for setting in (
        Setting("bell", ("on", "off"), "ring the terminal bell on private messages and mentions"),
        Setting("timestamps", ("on", "off"), "start each line with the time it was shown"),
        Setting("colours", ("on", "off"), "line styles and nick colours at the prompt (NO_COLOR wins)"),
        Setting(
            "delivery",
            ("quiet", "verbose"),
            "quiet: only failures print a line, the toolbar shows the rest; verbose: a line each",
        ),
        Setting("max-file", (), "offers of larger files are refused (K, M, G: powers of 1024)"),
    )
}
#: other spellings people type
_ALIASES = {
    "color": "colours",
    "colors": "colours",
    "colour": "colours",
    "timestamp": "timestamps",
    "max_file": "max-file",
    "maxfile": "max-file",
}
_UNITS = {"": 1, "B": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


@dataclass(frozen=True)
class Settings:
    """A value for every setting; the defaults are a new profile's."""

    bell: str = "on"
    timestamps: str = "on"
    colours: str = "on"
    delivery: str = "quiet"
    #: as typed (``/set max-file 100M``): client/files.py's DEFAULT_MAX_FILE
    max_file: str = "1G"

    def __post_init__(self) -> None:
        for name, setting in SETTINGS.items():
            value = self.value(name)
            if not _valid(setting, value):
                raise ValueError(f"{name} must be {setting.takes}, not {value!r}")

    def value(self, name: str) -> str:
        return str(getattr(self, _attribute(name)))

    def changed(self, name: str, value: str) -> Settings:
        """These settings with ``name`` set to ``value`` (both checked: ``checked``)."""
        return dataclasses.replace(self, **{_attribute(name): value})

    @property
    def max_file_bytes(self) -> int:
        return parse_size(self.max_file)

    @property
    def quiet_deliveries(self) -> bool:
        return self.delivery == "quiet"


def checked(name: str, value: str) -> tuple[str, str]:
    """``name`` and ``value`` as typed after ``/set``, checked and spelled as kept; a
    ``CommandError`` that lists the choices if either is not one."""
    name = _ALIASES.get(name.lower(), name.lower())
    if name not in SETTINGS:
        raise CommandError(
            detail=f'no setting "{name}": the settings are {", ".join(SETTINGS)} (/set lists them)'
        )
    choices = SETTINGS[name].choices
    if not choices:
        parse_size(value)  # raises
        return name, value.strip()
    value = value.strip().lower()
    if value not in choices:
        given = f', not "{value}"' if value else ""
        raise CommandError(detail=f"/set {name} takes {' or '.join(choices)}{given}")
    return name, value


def settings_from(kept: Mapping[str, object]) -> Settings:
    """The settings a profile kept: a value that is missing, or not one its setting takes
    (a damaged or hand-edited file), is the default."""
    valid = {
        _attribute(name): value
        for name, value in kept.items()
        if name in SETTINGS and isinstance(value, str) and _valid(SETTINGS[name], value)
    }
    return Settings(**valid)


def parse_size(text: str) -> int:
    """``100M``, ``1G``, ``512k``, ``2048``: bytes (K, M, G and T are powers of 1024)."""
    typed = text.strip().upper().removesuffix("IB").removesuffix("B")
    number, unit = typed.rstrip("KMGT"), typed[len(typed.rstrip("KMGT")) :]
    try:
        value = float(number) if number and len(number) <= 20 else -1.0
    except ValueError:
        value = -1.0
    if unit not in _UNITS or not 0 <= value < 2**50:
        raise CommandError(detail=f'/set max-file takes a size such as 100M or 1G, not "{text.strip()}"')
    return int(value * _UNITS[unit])


def _attribute(name: str) -> str:
    return name.replace("-", "_")


def _valid(setting: Setting, value: str) -> bool:
    if setting.choices:
        return value in setting.choices
    try:
        parse_size(value)
    except CommandError:
        return False
    return True
