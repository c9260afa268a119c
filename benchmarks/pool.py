"""Client worker processes and the conductor that keeps them in step.

Simulated clients run in a few worker processes (``spawn``: a clean interpreter, no
inherited sockets or event loop). Each worker runs ``async def work(channel, config)``
and moves through phases: it ``report``s ("ready", …) and ``expect``s the conductor's
next word ("go", …), so that all clients of a run start sending at the same moment and
every wait is bounded.
"""

from __future__ import annotations

import asyncio
import importlib
import multiprocessing
import time
import traceback
from multiprocessing.connection import Connection
from typing import Any

from benchmarks.system import raise_open_files_limit

JOIN_TIMEOUT = 10.0


class WorkerFailed(RuntimeError):
    pass


def _entry(pipe: Connection, target: str, config: dict[str, Any]) -> None:
    raise_open_files_limit()
    module_name, _, function_name = target.partition(":")
    work = getattr(importlib.import_module(module_name), function_name)
    try:
        result = asyncio.run(work(Channel(pipe), config))
    except BaseException:
        pipe.send(("error", traceback.format_exc()))
        return
    pipe.send(("done", result))


class Channel:
    """The worker's end of the pipe to the conductor."""

    def __init__(self, pipe: Connection) -> None:
        self._pipe = pipe

    def report(self, kind: str, data: Any = None) -> None:
        self._pipe.send((kind, data))

    async def expect(self, kind: str, timeout: float) -> Any:
        """The conductor's next word, which must be ``kind``. The event loop watches the
        pipe, so the clients keep being served meanwhile and "go" is seen at once."""
        if not self._pipe.poll(0):
            loop = asyncio.get_running_loop()
            readable = asyncio.Event()
            loop.add_reader(self._pipe.fileno(), readable.set)
            try:
                await asyncio.wait_for(readable.wait(), timeout)
            except TimeoutError:
                raise TimeoutError(f"no {kind!r} from the conductor within {timeout:g}s") from None
            finally:
                loop.remove_reader(self._pipe.fileno())
        got, data = self._pipe.recv()
        if got != kind:
            raise WorkerFailed(f"expected {kind!r} from the conductor, got {got!r}")
        return data


class Pool:
    """Start one worker per config; ``gather`` a phase from all; ``tell`` them all."""

    def __init__(self, target: str, configs: list[dict[str, Any]]) -> None:
        context = multiprocessing.get_context("spawn")
        self._pipes: list[Connection] = []
        self._processes: list[multiprocessing.process.BaseProcess] = []
        for config in configs:
            ours, theirs = context.Pipe()
            process = context.Process(target=_entry, args=(theirs, target, config), daemon=True)
            process.start()
            theirs.close()
            self._pipes.append(ours)
            self._processes.append(process)

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        if exc_type is not None:
            # Something went wrong here: workers may be waiting for a word that never comes.
            for process in self._processes:
                if process.is_alive():
                    process.terminate()
        self.close()

    def tell(self, kind: str, data: Any = None) -> None:
        for pipe in self._pipes:
            pipe.send((kind, data))

    def gather(self, kind: str, timeout: float) -> list[Any]:
        """Each worker's report of phase ``kind``, in worker order."""
        deadline = time.monotonic() + timeout
        replies = []
        for index, pipe in enumerate(self._pipes):
            replies.append(self._receive(index, pipe, kind, deadline))
        return replies

    def _receive(self, index: int, pipe: Connection, kind: str, deadline: float) -> Any:
        while not pipe.poll(0.1):
            if time.monotonic() > deadline:
                raise WorkerFailed(f"worker {index} did not report {kind!r} in time")
            if not self._processes[index].is_alive() and not pipe.poll(0):
                raise WorkerFailed(f"worker {index} died (exit code {self._processes[index].exitcode})")
        got, data = pipe.recv()
        if got == "error":
            raise WorkerFailed(f"worker {index} failed:\n{data}")
        if got != kind:
            raise WorkerFailed(f"worker {index} reported {got!r}, expected {kind!r}")
        return data

    def close(self) -> None:
        for process in self._processes:
            process.join(JOIN_TIMEOUT)
            if process.is_alive():
                process.terminate()
                process.join(JOIN_TIMEOUT)
        for pipe in self._pipes:
            pipe.close()


def split(items: list[Any], parts: int) -> list[list[Any]]:
    """``items`` dealt round-robin into ``parts`` lists (none empty if avoidable)."""
    parts = max(1, min(parts, len(items)))
    return [items[index::parts] for index in range(parts)]
