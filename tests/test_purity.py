"""The pure modules stay pure: no I/O of any kind (no asyncio, socket, prompt_toolkit,
os, pathlib, sqlite3, e2echat.store, nor the builtin ``open``), not even indirectly
through another e2echat module (STYLE.md, habits 1 and 11)."""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "e2echat"
# Everything in wire/ and crypto/ is pure, whatever is added there later; elsewhere the
# cores and the modules they use are named one by one.
PURE = sorted(
    [
        f"{package}.{path.stem}"
        for package in ("wire", "crypto")
        for path in (PACKAGE / package).glob("*.py")
        if path.stem != "__init__"
    ]
    + [
        "client.trust",
        "client.relays",
        "client.receipts",
        "client.pending",
        "client.events",
        "client.held",
        "client.pacing",
        "client.publishing",
        "client.directory",
        "client.rooms",
        "client.presence",
        "client.memberships",
        "client.outbox",
        "client.sessions",
        "client.core",
        "client.handshake",
        "client.mailbox",
        "client.status",
        "client.fileparts",
        "client.files",
        "client.fileevents",
        "client.filenames",
        "client.filestate",
        "relay.core",
        "relay.routing",
        "relay.registration",
        "relay.intake",
        "relay.prekeys",
        "relay.kept",
        "relay.rooms",
        "relay.presence",
        "relay.paging",
        "relay.actions",
        "relay.mailboxes",
        "relay.store",
        "relay.limits",
        "relay.cluster.wire",
        "relay.cluster.core",
        "relay.cluster.records",
        "relay.cluster.addresses",
        "relay.cluster.rooms",
        "relay.cluster.memberships",
        "ui.cells",
        "ui.commands",
        "ui.transfers",
        "ui.nicks",
        "ui.actions",
        "ui.render",
        "ui.arrivals",
        "ui.transcript",
        "ui.verifying",
        "ui.settings",
        "ui.lastsent",
        "ui.away",
        "ui.roomlist",
        "ui.places",
    ]
)
SUBPACKAGES = {"wire", "crypto", "relay", "client", "store", "ui"}
# I/O frameworks: not even loaded at run time, through any import (see the last test).
FORBIDDEN = {"asyncio", "socket", "prompt_toolkit"}
# Files, processes and databases: a pure module does not name them (os and pathlib are
# loaded by the interpreter itself, so only the source can be checked for these).
FORBIDDEN_IN_SOURCE = {*FORBIDDEN, "os", "pathlib", "sqlite3", "e2echat.store"}
# Modules a pure module may import from e2echat besides the pure ones.
ALLOWED_INTERNAL = {"errors", *PURE}


def _source(module: str) -> tuple[Path, str]:
    spec = importlib.util.find_spec(f"e2echat.{module}")
    assert spec is not None and spec.origin is not None
    path = Path(spec.origin)
    return path, path.read_text(encoding="utf-8")


def imported_modules(source: str, package: str = "e2echat") -> set[str]:
    """Every module an ``import`` statement anywhere in ``source`` names, fully qualified."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package if node.level else ""
            module = ".".join(part for part in (base, node.module or "") if part)
            found.add(module)
            # "from e2echat.wire import messages" imports the module e2echat.wire.messages.
            if module == package or module.removeprefix(package + ".") in SUBPACKAGES:
                found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def forbidden_imports(source: str) -> set[str]:
    """The modules ``source`` imports that a pure module may not (a submodule counts as
    its package: ``os.path`` is ``os``, ``e2echat.store.files`` is ``e2echat.store``)."""
    found = set()
    for name in imported_modules(source):
        for banned in FORBIDDEN_IN_SOURCE:
            if name == banned or name.startswith(banned + "."):
                found.add(banned)
    return found


def calls_open(source: str) -> bool:
    """Whether ``source`` calls the builtin ``open`` (``handle.open()`` is something else)."""
    return any(
        isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "open"
        for node in ast.walk(ast.parse(source))
    )


def _internal(modules: set[str]) -> set[str]:
    """The e2echat modules named, without the package prefix (``wire.messages``); a
    subpackage named on its own (``from e2echat.wire import messages``) is left out."""
    names = {name.removeprefix("e2echat.") for name in modules if name.startswith("e2echat.")}
    return names - SUBPACKAGES


@pytest.mark.parametrize("module", PURE)
def test_pure_module_imports_no_io_framework(module: str) -> None:
    path, source = _source(module)
    roots = {name.split(".")[0] for name in imported_modules(source)}
    assert not roots & FORBIDDEN, f"{path.name} imports {sorted(roots & FORBIDDEN)}"


@pytest.mark.parametrize("module", PURE)
def test_pure_module_touches_no_file_process_or_store(module: str) -> None:
    path, source = _source(module)
    banned = forbidden_imports(source)
    assert not banned, f"{path.name} imports {sorted(banned)}"
    assert not calls_open(source), f"{path.name} calls open()"


@pytest.mark.parametrize("module", PURE)
def test_pure_module_imports_only_pure_e2echat_modules(module: str) -> None:
    path, source = _source(module)
    impure = _internal(imported_modules(source)) - ALLOWED_INTERNAL
    assert not impure, f"{path.name} imports e2echat.{sorted(impure)}"


@pytest.mark.parametrize(
    "source",
    [
        "import asyncio",
        "import socket as s",
        "from asyncio import Queue",
        "import asyncio.streams",
        "from prompt_toolkit.shortcuts import PromptSession",
        "def f():\n    import socket\n",
        "try:\n    import prompt_toolkit\nexcept ImportError:\n    pass\n",
    ],
)
def test_checker_sees_forbidden_imports(source: str) -> None:
    """The twin: the checker above would notice each way of importing them."""
    roots = {name.split(".")[0] for name in imported_modules(source)}
    assert roots & FORBIDDEN


@pytest.mark.parametrize(
    ("source", "banned"),
    [
        ("import os", {"os"}),
        ("import os.path", {"os"}),
        ("from os import fsync", {"os"}),
        ("from pathlib import Path", {"pathlib"}),
        ("import sqlite3 as db", {"sqlite3"}),
        ("import asyncio", {"asyncio"}),
        ("from e2echat.store import files", {"e2echat.store"}),
        ("from e2echat.store.pins import PinFile", {"e2echat.store"}),
        ("import e2echat.store.keyfile", {"e2echat.store"}),
        ("from ..store import files", {"e2echat.store"}),
        ("def f():\n    from e2echat import store\n", {"e2echat.store"}),
        ("import ossaudiodev, pathlib_like, e2echat.stored", set()),  # names that only look alike
    ],
)
def test_checker_sees_files_processes_and_stores(source: str, banned: set[str]) -> None:
    """The twin: each of these in a core would fail the test above."""
    assert forbidden_imports(source) == banned


@pytest.mark.parametrize(
    ("source", "opens"),
    [
        ("open('known_peers.json', 'w')", True),
        ("with open(path, 'rb') as handle:\n    data = handle.read()\n", True),
        ("def save():\n    return open\n", False),  # named, not called: nothing is opened
        ("decoder.open(body)", False),
        ("self._open(key, body)", False),
    ],
)
def test_checker_sees_calls_to_open(source: str, opens: bool) -> None:
    assert calls_open(source) is opens


@pytest.mark.parametrize(
    ("source", "internal"),
    [
        ("from e2echat.client import connection", {"client.connection"}),
        ("from e2echat.relay.server import Relay", {"relay.server"}),
        ("from e2echat import cli", {"cli"}),
        ("import e2echat.cli", {"cli"}),
    ],
)
def test_checker_sees_internal_imports(source: str, internal: set[str]) -> None:
    assert _internal(imported_modules(source)) == internal


def test_importing_the_pure_modules_loads_no_io_framework() -> None:
    """At run time too, transitively (third-party imports included), in a clean interpreter."""
    code = (
        "import sys\n"
        + "".join(f"import e2echat.{module}\n" for module in PURE)
        + f"print(sorted(m for m in sys.modules if m.split('.')[0] in {sorted(FORBIDDEN)!r}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]"


def test_importing_the_pure_modules_loads_no_store() -> None:
    code = (
        "import sys\n"
        + "".join(f"import e2echat.{module}\n" for module in PURE)
        + "print(sorted(m for m in sys.modules if m == 'sqlite3' or m.startswith('e2echat.store')))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]"
