"""Run ``async def`` tests with asyncio.run and a hard time limit.

A dozen lines instead of a pytest-asyncio dependency: every async test gets a fresh
event loop and is cancelled (and fails) if it has not finished in ASYNC_TEST_TIMEOUT.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nacl.utils
import pytest

from nats_support import NatsServer, running_nats

ASYNC_TEST_TIMEOUT = 30.0
_SERVICE = f"_e2echat-{nacl.utils.random(3).hex()}._tcp.local."


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    arguments: dict[str, Any] = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    timeout = ASYNC_TEST_TIMEOUT
    marker = pyfuncitem.get_closest_marker("timeout")
    if marker is not None:
        timeout = float(marker.args[0])
    asyncio.run(asyncio.wait_for(pyfuncitem.obj(**arguments), timeout))
    return True


@pytest.fixture(autouse=True)
def _private_data_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reads or writes the real ~/.local/share/e2echat (profiles remember the last
    one used there); child processes inherit this too."""
    home = tmp_path_factory.mktemp("data-home")
    monkeypatch.setenv("XDG_DATA_HOME", str(home))
    monkeypatch.delenv("E2ECHAT_HOME", raising=False)
    monkeypatch.delenv("E2ECHAT_PASSPHRASE", raising=False)
    monkeypatch.delenv("E2ECHAT_RELAY_PASSWORD", raising=False)
    # Relays started by tests announce, and the discovery tests browse, under this run's own
    # mDNS service type: not found by (nor finding) another run's, or a real relay on the LAN.
    monkeypatch.setenv("E2ECHAT_MDNS_SERVICE", _SERVICE)


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A real ``nats-server -js`` for one test, its store in the test's temporary directory
    (skipped where no server is installed: see nats_support)."""
    with running_nats(tmp_path / "nats") as server:
        yield server
