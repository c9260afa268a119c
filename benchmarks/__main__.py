"""``python -m benchmarks [--smoke] [--json PATH] [--only NAME] [--profile]``"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from benchmarks import (
    abuse,
    client_cost,
    cluster,
    drain,
    files,
    history,
    latency,
    mailboxes,
    memory,
    rooms,
    scale,
    store,
    throughput,
)
from benchmarks.plan import FULL, SMOKE, Context
from benchmarks.report import Figure, Section, integrity_total, table, write_json
from benchmarks.system import machine, raise_open_files_limit

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "latest.json"

SECTIONS: dict[str, Callable[[Context], Section]] = {
    "throughput": throughput.throughput,
    "baseline": throughput.baseline,
    "latency": latency.latency,
    "scale": scale.scale,
    "client-cost": client_cost.client_cost,
    "memory": memory.memory,
    "abuse": abuse.abuse,
    "store": store.store,
    "history": history.history,
    "mailbox": mailboxes.mailboxes,
    "drain": drain.drain,
    "rooms": rooms.rooms,
    "files": files.files,
    "cluster": cluster.cluster,
}


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Measure e2echat's relay and client on loopback; print a table, write JSON.",
    )
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks that every benchmark runs")
    parser.add_argument(
        "--json",
        type=Path,
        default=DEFAULT_JSON,
        metavar="PATH",
        help=f"where to write the results (default: {DEFAULT_JSON})",
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=sorted(SECTIONS),
        metavar="NAME",
        help=f"run only this section (repeatable): {', '.join(SECTIONS)}",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="run the relay under cProfile and print its top functions (timings suffer)",
    )
    return parser.parse_args(argv)


def run_section(name: str, context: Context) -> Section:
    """One section; a failure is reported as a figure, and the other sections still run."""
    started = time.monotonic()
    try:
        section = SECTIONS[name](context)
    except Exception as exc:
        section = Section(name, f"{name} (FAILED)")
        section.add(Figure("error", "error", f"{type(exc).__name__}: {exc}".splitlines()[0][:200]))
        section.details["traceback"] = traceback.format_exc()
        section.details["failed"] = True
    section.details["wall_seconds"] = round(time.monotonic() - started, 2)
    print(f"... {name} done in {time.monotonic() - started:.1f}s", file=sys.stderr, flush=True)
    return section


def main(argv: list[str] | None = None) -> int:
    options = parse(argv)
    raise_open_files_limit()
    plan = SMOKE if options.smoke else FULL
    context = Context(plan, profile=options.profile)
    names = [name for name in SECTIONS if not options.only or name in options.only]
    about = machine()
    sections = [run_section(name, context) for name in names]
    about["load_average_1m_at_end"] = round(os.getloadavg()[0], 2)
    print(table(sections, about, plan.smoke))
    for section in sections:
        for key, lines in section.details.items():
            if key.endswith("profile") and lines:
                print(f"\n{section.name}: {key.replace('_', ' ')} (top functions by own time)")
                print("\n".join(lines[:12]))
    total = integrity_total(sections)
    meta = {
        "command": "python -m benchmarks " + " ".join(sys.argv[1:] if argv is None else argv),
        "smoke": plan.smoke,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_json(options.json, sections, about, meta)
    print(
        f"\nintegrity: {total.delivered:,} deliveries checked; lost {total.lost}, duplicated "
        f"{total.duplicated}, corrupted {total.corrupted}"
    )
    print(f"results written to {options.json}")
    failed = [s.name for s in sections if s.details.get("failed")]
    if failed:
        print(f"FAILED sections: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed or not total.clean else 0


if __name__ == "__main__":
    sys.exit(main())
