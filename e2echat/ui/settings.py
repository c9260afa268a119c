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
    choices: tuple[str, ...]
    description: str


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
    )
}
#: other spellings people type
_ALIASES = {"color": "colours", "colors": "colours", "colour": "colours", "timestamp": "timestamps"}


@dataclass(frozen=True)
class Settings:
    """A value for every setting; the defaults are a new profile's."""

    bell: str = "on"
    timestamps: str = "on"
    colours: str = "on"
    delivery: str = "quiet"

    def __post_init__(self) -> None:
        for name, setting in SETTINGS.items():
            if getattr(self, name) not in setting.choices:
                raise ValueError(f"{name} must be one of {setting.choices}, not {getattr(self, name)!r}")

    def value(self, name: str) -> str:
        return str(getattr(self, name))

    def changed(self, name: str, value: str) -> Settings:
        """These settings with ``name`` set to ``value`` (both checked: ``checked``)."""
        return dataclasses.replace(self, **{name: value})

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
    value = value.strip().lower()
    if value not in choices:
        given = f', not "{value}"' if value else ""
        raise CommandError(detail=f"/set {name} takes {' or '.join(choices)}{given}")
    return name, value


def settings_from(kept: Mapping[str, object]) -> Settings:
    """The settings a profile kept: a value that is missing, or not one of its setting's
    choices (a damaged or hand-edited file), is the default."""
    valid = {
        name: value
        for name, value in kept.items()
        if name in SETTINGS and isinstance(value, str) and value in SETTINGS[name].choices
    }
    return Settings(**valid)
