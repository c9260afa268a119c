"""The machine, and what /proc says about a process: CPU seconds and resident memory.

Read straight from /proc (Linux) so the benchmarks need nothing beyond e2echat's own
dependencies.
"""

from __future__ import annotations

import os
import platform
import resource
import time
from dataclasses import dataclass
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")


def raise_open_files_limit() -> int:
    """Soft open-files limit up to the hard one: 10,000 clients need 10,000 sockets."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            return soft
        return target
    return soft


def machine() -> dict[str, object]:
    """What the figures were measured on."""
    return {
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "cpu_model": _cpu_model(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "kernel": platform.release(),
        "memory_gib": round(_meminfo_kib("MemTotal") / 1024 / 1024, 1),
        "open_files_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        # Anything else running competes for the same 2 cores: say so next to the figures.
        "load_average_1m": round(os.getloadavg()[0], 2),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _meminfo_kib(field: str) -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far (clock-tick resolution, 10 ms here)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # The command name (field 2) may contain spaces; everything after its ")" is numeric.
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise LookupError(f"{field} not in /proc/{pid}/status")


def rss_bytes(pid: int) -> int:
    """Resident set size now (VmRSS)."""
    return _status_kib(pid, "VmRSS") * 1024


def peak_rss_bytes(pid: int) -> int:
    """Largest resident set size so far (VmHWM)."""
    return _status_kib(pid, "VmHWM") * 1024


@dataclass(frozen=True)
class CpuMark:
    """A process's CPU time at a moment of wall-clock time, to compute utilisation."""

    wall: float
    cpu: float

    @classmethod
    def of(cls, pid: int) -> CpuMark:
        return cls(time.monotonic(), cpu_seconds(pid))

    @classmethod
    def own(cls) -> CpuMark:
        return cls(time.monotonic(), time.process_time())

    def since(self, earlier: CpuMark) -> tuple[float, float]:
        """(CPU seconds, wall seconds) between ``earlier`` and this mark."""
        return self.cpu - earlier.cpu, self.wall - earlier.wall
