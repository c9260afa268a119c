"""Figures, targets, the printed table and the JSON file."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.ledger import Integrity


@dataclass
class Figure:
    key: str  # stable name in the JSON
    label: str  # what the table shows
    value: float | int | str | None
    unit: str = ""
    target: str = ""  # e.g. "≥ 0.8"; empty when the issue sets none
    ok: bool | None = None  # None: no target, or not judged (smoke run)
    note: str = ""


@dataclass
class Section:
    name: str
    title: str
    figures: list[Figure] = field(default_factory=list)
    integrity: Integrity = field(default_factory=Integrity)
    details: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add(self, figure: Figure) -> Figure:
        self.figures.append(figure)
        return figure


def judge(value: float | None, passes: Callable[[float], bool], judged: bool) -> bool | None:
    if not judged or value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return passes(value)


def _format_value(value: float | int | str | None, unit: str) -> str:
    if value is None:
        return "—"
    if isinstance(value, str):
        return value
    if isinstance(value, float):
        magnitude = abs(value)
        if magnitude >= 1000:
            text = f"{value:,.0f}"
        elif magnitude >= 100:
            text = f"{value:.0f}"
        elif magnitude >= 10:
            text = f"{value:.1f}"
        elif magnitude >= 0.01 or value == 0:
            text = f"{value:.2f}"
        else:
            text = f"{value:.2e}"
    else:
        text = f"{value:,}"
    return f"{text} {unit}".strip()


def _verdict(figure: Figure, smoke: bool) -> str:
    if not figure.target:
        return ""
    if figure.ok is None:
        return "(smoke)" if smoke else "n/a"
    return "PASS" if figure.ok else "MISS"


def table(sections: list[Section], machine: dict[str, Any], smoke: bool) -> str:
    lines = [
        f"e2echat benchmarks{' (SMOKE: tiny sizes, figures mean nothing)' if smoke else ''}",
        f"machine: {machine['cores']} cores ({machine['usable_cores']} usable), {machine['cpu_model']}, "
        f"Python {machine['python']}, Linux {machine['kernel']}, {machine['memory_gib']} GiB; "
        f"load average {machine['load_average_1m']} at the start",
    ]
    rows = [("figure", "value", "target", "result", "note")]
    for section in sections:
        rows.append((f"[{section.title}]", "", "", "", ""))
        for figure in section.figures:
            rows.append(
                (
                    "  " + figure.label,
                    _format_value(figure.value, figure.unit),
                    figure.target,
                    _verdict(figure, smoke),
                    figure.note,
                )
            )
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        cells = [row[i].ljust(widths[i]) for i in range(4)]
        lines.append("  ".join([*cells, row[4]]).rstrip())
    for section in sections:
        for note in section.notes:
            lines.append(f"note ({section.name}): {note}")
    return "\n".join(lines)


def integrity_total(sections: list[Section]) -> Integrity:
    total = Integrity()
    for section in sections:
        total = total.add(section.integrity)
    return total


def write_json(path: Path, sections: list[Section], machine: dict[str, Any], meta: dict[str, Any]) -> None:
    total = integrity_total(sections)
    document = {
        **meta,
        "machine": machine,
        "integrity": total.as_dict(),
        "sections": {
            section.name: {
                "title": section.title,
                "figures": {figure.key: asdict(figure) for figure in section.figures},
                "integrity": section.integrity.as_dict(),
                "details": section.details,
                "notes": section.notes,
            }
            for section in sections
        },
        "targets": [
            {"section": s.name, "key": f.key, "value": f.value, "target": f.target, "ok": f.ok}
            for s in sections
            for f in s.figures
            if f.target
        ],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")
