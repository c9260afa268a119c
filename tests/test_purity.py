"""The pure modules stay pure: no asyncio, socket or prompt_toolkit, not even indirectly
through another e2echat module (STYLE.md, habit 1)."""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

PURE = [
    "wire.framing",
    "wire.messages",
    "crypto.primitives",
    "crypto.session",
    "crypto.identity",
    "client.trust",
    "client.receipts",
    "client.events",
    "client.core",
    "relay.core",
    "relay.limits",
    "ui.commands",
    "ui.render",
]
SUBPACKAGES = {"wire", "crypto", "relay", "client", "store", "ui"}
FORBIDDEN = {"asyncio", "socket", "prompt_toolkit"}
# Modules a pure module may import from e2echat besides the pure ones.
ALLOWED_INTERNAL = {"errors", "store.files", *PURE}


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
