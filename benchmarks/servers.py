"""The relay under test and the baseline forwarder, each in a process of its own.

A separate process lets us read its CPU time and memory from /proc without counting the
clients', and keeps the clients' event loops from stealing its turns. Each server prints
"... listening on HOST:PORT" as its first line; we parse the port from it.
"""

from __future__ import annotations

import contextlib
import os
import pstats
import re
import select
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from benchmarks.system import CpuMark, cpu_seconds, peak_rss_bytes, raise_open_files_limit, rss_bytes

LOOPBACK = "127.0.0.1"
REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
_LISTENING = re.compile(rb"listening on (\S+):(\d+)")
START_TIMEOUT = 20.0
STOP_TIMEOUT = 15.0

#: The relay's own limits would refuse a benchmark's traffic as a flood, and its clients,
#: all on loopback, as too many from one address: lift them.
UNLIMITED = (
    *("--rate", "1000000", "--burst", "1000000", "--max-connections", "20000"),
    *("--byte-rate", str(2**40), "--byte-burst", str(2**40)),
    *("--connections-per-address", "20000", "--connect-rate", "1000000", "--connect-burst", "1000000"),
)


class ServerFailed(RuntimeError):
    pass


class Measured(Protocol):
    """What a run needs of what it measures: where clients connect, and its CPU time (a
    relay, the forwarder, or a cluster's relays together)."""

    @property
    def host(self) -> str: ...

    @property
    def port(self) -> int: ...

    def mark(self) -> CpuMark: ...


@dataclass
class Server:
    name: str
    process: subprocess.Popen[bytes]
    host: str
    port: int
    log_path: Path
    profile_path: Path | None = None
    profile_top: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def mark(self) -> CpuMark:
        return CpuMark.of(self.pid)

    def rss(self) -> int:
        return rss_bytes(self.pid)

    def peak_rss(self) -> int:
        return peak_rss_bytes(self.pid)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, *, kill: bool = False, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM (a graceful stop) and wait, bounded; SIGKILL if asked or if it hangs."""
        if self.alive():
            self.process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_TIMEOUT)
        if self.process.stdout is not None:
            self.process.stdout.close()
        if self.profile_path is not None and self.profile_path.exists():
            self.profile_top = top_functions(self.profile_path)


def _preexec() -> None:
    raise_open_files_limit()


def start(name: str, module_args: list[str], *, profile: Path | None = None) -> Server:
    """Start ``python -m MODULE_ARGS`` and wait for its listening line."""
    log = tempfile.NamedTemporaryFile(prefix=f"bench-{name}-", suffix=".log", delete=False)  # noqa: SIM115
    command = [sys.executable]
    if profile is not None:
        # cProfile writes its file when the program exits, which a SIGTERM still allows.
        command += ["-m", "cProfile", "-o", str(profile)]
    command += ["-m", *module_args]
    process = subprocess.Popen(
        command,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=log,
        stdin=subprocess.DEVNULL,
        preexec_fn=_preexec,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    log.close()
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], START_TIMEOUT)
    line = process.stdout.readline() if ready else b""
    found = _LISTENING.search(line)
    if not found:
        process.kill()
        process.wait()
        detail = Path(log.name).read_text(errors="replace")[-2000:]
        raise ServerFailed(f"{name} did not start (first line {line!r}):\n{detail}")
    return Server(name, process, found.group(1).decode(), int(found.group(2)), Path(log.name), profile)


@contextlib.contextmanager
def relay(*options: str, profile: Path | None = None, kill: bool = False) -> Iterator[Server]:
    """The real relay, ``python -m e2echat relay``, on a free loopback port.

    ``--log-level warning`` rather than ``--quiet``: quiet also hides the listening line.
    ``kill`` stops it with SIGKILL, except when profiling (cProfile writes its file only
    on a clean exit, so then it gets SIGTERM and all the time it needs).
    """
    # A key of its own in a directory of its own: not the one in the user's data directory.
    with tempfile.TemporaryDirectory(prefix="bench-relay-") as directory:
        key = str(Path(directory) / "relay.key")
        args = ["e2echat", "relay", "--host", LOOPBACK, "--port", "0", "--log-level", "warning", "--key", key]
        server = start("relay", [*args, *options], profile=profile)
        try:
            yield server
        finally:
            if profile is not None:
                server.stop(timeout=600)
            else:
                server.stop(kill=kill)
            server.log_path.unlink(missing_ok=True)


@contextlib.contextmanager
def forwarder(profile: Path | None = None) -> Iterator[Server]:
    """The baseline: benchmarks/forwarder.py."""
    server = start("forwarder", ["benchmarks.forwarder", "--port", "0"], profile=profile)
    try:
        yield server
    finally:
        server.stop()
        server.log_path.unlink(missing_ok=True)


def top_functions(path: Path, count: int = 12) -> list[str]:
    """The functions that took the most time in a cProfile file, one line each; shares
    are of the busy time (waiting in epoll is left out)."""
    stats = pstats.Stats(str(path))
    rows = []
    # The ignore: Stats keeps its table in an attribute typeshed leaves out.
    for (filename, line, function), (_, calls, tottime, cumtime, _) in stats.stats.items():  # type: ignore[attr-defined]
        if "select.epoll" not in function:
            rows.append((tottime, cumtime, calls, f"{Path(filename).name}:{line}({function})"))
    total = sum(row[0] for row in rows) or 1.0
    rows.sort(reverse=True)
    return [
        f"{tottime:8.2f}s {100 * tottime / total:5.1f}%  cum {cumtime:8.2f}s  {calls:>10}  {where}"
        for tottime, cumtime, calls, where in rows[:count]
    ]


def profile_path(section: str, enabled: bool) -> Path | None:
    if not enabled:
        return None
    RESULTS.mkdir(parents=True, exist_ok=True)
    return RESULTS / f"relay-{section}.prof"
