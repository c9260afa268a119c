"""A real terminal for tests: a relay and clients, each in its own tmux session, typed
into with send-keys and read with capture-pane."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support import LOOPBACK, REPO, WAIT

needs_tmux = pytest.mark.skipif(
    shutil.which("tmux") is None, reason="tmux is not installed (.ci/run installs it)"
)


def run_tmux(*args: str) -> str:
    return subprocess.run(["tmux", *args], capture_output=True, text=True, timeout=10, check=True).stdout


class Tmux:
    """A tmux server of the test's own (``socket_name``), whose sessions see ``home`` as
    their XDG data directory. ``kill`` ends it, and everything running in it."""

    def __init__(self, socket_name: str, home: Path) -> None:
        self.socket_name = socket_name
        self.home = home
        self.env = f"XDG_DATA_HOME={home} PYTHONPATH={REPO}"

    def __call__(self, *args: str) -> str:
        return run_tmux("-L", self.socket_name, *args)

    def start_relay(self) -> str:
        """A relay on the loopback interface, port 0, in the session "relay": its port."""
        port_file = self.home / "port"
        relay_command = (
            f"{sys.executable} -c 'import asyncio, sys; from e2echat.relay.server import run_relay; "
            f'asyncio.run(run_relay("{LOOPBACK}", 0, lambda t: (print(t, flush=True), '
            f'open("{port_file}", "a").write(t + chr(10)))))\''
        )
        self("new-session", "-d", "-s", "relay", "-x", "100", "-y", "10", f"env {self.env} {relay_command}")
        deadline = time.monotonic() + WAIT
        while not (port_file.exists() and "listening" in port_file.read_text()):
            assert time.monotonic() < deadline, "relay did not start"
            time.sleep(0.05)
        return port_file.read_text().split("\n")[0].rsplit(":", 1)[1]

    def start_client(self, nick: str, port: str, columns: int = 90, rows: int = 20) -> None:
        """``e2echat connect`` as ``nick``, in a session of that name, at its prompt."""
        command = f"env {self.env} {sys.executable} -m e2echat connect --nick {nick} --port {port}"
        self("new-session", "-d", "-s", nick, "-x", str(columns), "-y", str(rows), command)
        self.wait_for(nick, f"{nick}>")

    def screen(self, name: str, *, scrollback: bool = False) -> str:
        """What session ``name`` shows (and, with ``scrollback``, what scrolled off)."""
        return self("capture-pane", "-p", *(("-S", "-") if scrollback else ()), "-t", name)

    def wait_for(self, name: str, text: str, *, scrollback: bool = False) -> str:
        """Session ``name``'s screen, once it shows ``text``; fails after a bounded wait."""
        deadline = time.monotonic() + 3 * WAIT
        while time.monotonic() < deadline:
            shown = self.screen(name, scrollback=scrollback)
            if text in shown:
                return shown
            time.sleep(0.05)  # polling a screen: there is no event to wait on
        raise AssertionError(f"{text!r} never appeared on {name}:\n{self.screen(name, scrollback=True)}")

    def kill(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError):
            self("kill-server")
