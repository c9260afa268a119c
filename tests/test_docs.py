"""The documents name only files and Python names that exist.

Checked files: README.md, SECURITY.md, docs/*.md and benchmarks/README.md. Fenced code
blocks (```) are skipped; only inline `backticked` spans are read. A span is checked
when it is one of:

1. a path under e2echat/, tests/ or benchmarks/ (``e2echat/wire/framing.py``,
   ``tests/vectors/safety_numbers.json``): the file must exist. A bare ``NAME.py``
   means ``e2echat/NAME.py``.
2. ``tests/FILE.py::test_NAME``: the file must exist and define ``test_NAME``.
   ``::test_NAME`` (the tables' short form) and a bare ``test_NAME`` must be defined in
   some file under tests/.
3. a dotted name (``wire.messages.printable_reason``, ``Sessions.add``), or a
   name called with empty parentheses (``ClientCore.forget_keys()``, ``withheld()``),
   unless it starts with a name from outside e2echat (``NOT_OURS``: libraries, wire
   fields such as ``error.text``). A span that ends like a data file's name
   (``known_peers.json``, ``identity.key.tmp``) is a file in a profile. A leading
   ``e2echat.`` is dropped. If the longest leading part names a module or package of
   e2echat by its full dotted path (``relay.core``, ``cli``), every name after it must be
   defined in that file. Otherwise the first part must be a class or function defined in
   e2echat/ or tests/ (``ClientCore``), and the rest defined in a file that defines it.
4. a bare private name (``_retired_session_keys``): it must be defined somewhere in
   e2echat/. Other bare names are too often wire fields or prose to check.

"Defined" means a ``def``, a ``class``, or an assignment to that name or attribute
(``NAME = ...``, ``self.NAME = ...``), found by walking each file's AST. Spans with
spaces, arguments or other punctuation are prose or formulas and are not checked.
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [
    ROOT / "README.md",
    ROOT / "SECURITY.md",
    ROOT / "benchmarks" / "README.md",
    *sorted((ROOT / "docs").glob("*.md")),
]

# Dotted names the documents use that are not e2echat's: Python, PyNaCl and other
# libraries; wire messages' fields (`error.text`).
NOT_OURS = {
    "_hashlib", "argon2id", "asyncio", "base64", "gc", "getpass", "hashlib", "hmac", "json",
    "nacl", "os", "prompt_toolkit", "re", "socket", "str", "sys", "time", "timeit",
    "Box", "PrivateKey", "PublicKey", "SecretBox",
    "bye", "error",
}  # fmt: skip

FENCE = re.compile(r"^```.*?^```", re.S | re.M)
SPAN = re.compile(r"`([^`\n]+)`")
PATH = re.compile(r"(?:e2echat|tests|benchmarks)/[\w/.-]+\.\w+|\w+\.py")
TEST_REF = re.compile(r"(?P<path>tests/[\w/]+\.py)?::(?P<name>test_\w+)|(?P<bare>test_\w+)")
IDENT = r"[A-Za-z_]\w*"
PROFILE_FILE = re.compile(r"[\w.-]+\.(?:json|key|tmp|txt)")
DOTTED = re.compile(rf"{IDENT}(?:\.{IDENT})+(?:\(\))?|{IDENT}\(\)")
PRIVATE = re.compile(r"_[a-z]\w*")


def spans(document: Path) -> list[str]:
    return SPAN.findall(FENCE.sub("", document.read_text(encoding="utf-8")))


@cache
def defined_in(path: Path) -> frozenset[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Name | ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.id if isinstance(node, ast.Name) else node.attr)
        elif isinstance(node, ast.AnnAssign | ast.AugAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return frozenset(names)


@cache
def classes_and_functions(path: Path) -> frozenset[str]:
    kinds = ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return frozenset(node.name for node in ast.walk(tree) if isinstance(node, kinds))


SOURCES = sorted([*(ROOT / "e2echat").rglob("*.py"), *(ROOT / "tests").rglob("*.py")])


@cache
def defined_test_names() -> frozenset[str]:
    return frozenset().union(*(defined_in(path) for path in (ROOT / "tests").rglob("*.py")))


@cache
def defined_in_e2echat() -> frozenset[str]:
    return frozenset().union(*(defined_in(path) for path in (ROOT / "e2echat").rglob("*.py")))


def module_file(dotted: str) -> Path | None:
    base = ROOT / "e2echat" / Path(*dotted.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def problem(span: str) -> str | None:
    """What is wrong with the name or path in `span`, or None if it is fine or not checked."""
    if match := TEST_REF.fullmatch(span):
        name = match["name"] or match["bare"]
        if match["path"]:
            path = ROOT / match["path"]
            if not path.is_file():
                return f"no file {match['path']}"
            return None if name in defined_in(path) else f"{match['path']} defines no {name}"
        return None if name in defined_test_names() else f"no test {name}"
    if PATH.fullmatch(span):
        path = ROOT / span if "/" in span else ROOT / "e2echat" / span
        return None if path.exists() else f"no file {path.relative_to(ROOT)}"
    if PRIVATE.fullmatch(span):
        return None if span in defined_in_e2echat() else f"nothing in e2echat/ defines {span}"
    if PROFILE_FILE.fullmatch(span) or not DOTTED.fullmatch(span):
        return None
    parts = span.removesuffix("()").split(".")
    if parts[0] in NOT_OURS:
        return None
    if parts[0] == "e2echat":
        parts = parts[1:]
    for cut in range(len(parts), 0, -1):
        if (module := module_file(".".join(parts[:cut]))) is not None:
            missing = [name for name in parts[cut:] if name not in defined_in(module)]
            where = module.relative_to(ROOT)
            return f"{where} defines no {', '.join(missing)}" if missing else None
    homes = [path for path in SOURCES if parts[0] in classes_and_functions(path)]
    if not homes:
        return f"no module, class or function {parts[0]} in e2echat/ or tests/"
    if not any(all(name in defined_in(path) for name in parts[1:]) for path in homes):
        return f"no file that defines {parts[0]} defines {', '.join(parts[1:])}"
    return None


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: path.relative_to(ROOT).as_posix())
def test_documents_name_only_what_exists(document: Path) -> None:
    problems = [f"`{span}`: {why}" for span in dict.fromkeys(spans(document)) if (why := problem(span))]
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


def test_the_rules_catch_stale_names() -> None:
    assert problem("e2echat/relay_core.py") == "no file e2echat/relay_core.py"
    assert problem("keys.safety_number") is not None
    assert problem("tests/test_session.py::test_no_such_attack") is not None
    assert problem("wire.framing.FrameDecoder") is None
    assert problem("ClientCore.forget_keys()") is None
    assert problem("hmac.compare_digest") is None
    assert problem("ClientCore.no_such_method") is not None
    assert problem("e2echat relay --help") is None
    assert problem("_no_such_helper") is not None
    assert problem("_retire") is None


def layout_modules(readme: str) -> set[str]:
    """The modules README.md's layout lists: ``NAME.py`` lines under their ``DIR/`` lines,
    by indentation (two spaces a level)."""
    block = readme.split("## Layout", 1)[1].split("```", 2)[1]
    listed: set[str] = set()
    folders: list[str] = []
    for line in block.splitlines():
        match = re.match(r"( *)(\S+)", line)
        if match is None or not (match[2].endswith("/") or match[2].endswith(".py")):
            continue
        del folders[len(match[1]) // 2 :]
        if match[2].endswith("/"):
            folders.append(match[2].rstrip("/"))
        else:
            listed.add("/".join([*folders, match[2]]))
    return listed


def test_the_readme_layout_lists_every_module() -> None:
    """Issue 15: the layout section names every module of the package, and nothing else."""
    modules = {
        path.relative_to(ROOT).as_posix()
        for path in (ROOT / "e2echat").rglob("*.py")
        if path.name != "__init__.py"
    }
    listed = layout_modules((ROOT / "README.md").read_text(encoding="utf-8"))
    assert {path for path in listed if path.startswith("e2echat/")} == modules
