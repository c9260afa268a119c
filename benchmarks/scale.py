"""Section 4: many idle clients on one relay, in rooms: memory per connection, how long
they take to register, the directory a newcomer receives, and join/leave churn."""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

from nacl.public import PrivateKey

from benchmarks import servers
from benchmarks.crowd import join_idle, rooms_of
from benchmarks.plan import Context
from benchmarks.pool import Pool
from benchmarks.report import Figure, Section, judge
from e2echat.client.connection import Connection

TARGET_KIB = 10.0
JOIN_TIMEOUT = 120.0
#: issue 19: 10,000 clients in 100 rooms of 100 register in under 15 s; a join and a
#: leave at 10,000 online cost the relay under 5 ms of CPU
TARGET_REGISTRATION_S = 15.0
TARGET_CHURN_MS = 5.0


def scale(context: Context) -> Section:
    plan = context.plan
    section = Section(
        "scale",
        f"4. scale: up to {plan.scale_target:,} idle clients on one relay, in {plan.scale_rooms} rooms",
    )
    options = (*servers.UNLIMITED, "--idle-timeout", "3600", "--handshake-timeout", str(JOIN_TIMEOUT))
    # kill=True: a graceful stop with n online makes O(n²) "left" messages (see notes)
    with servers.relay(*options, profile=servers.profile_path("scale", context.profile), kill=True) as relay:
        time.sleep(plan.settle)
        empty_rss = relay.rss()
        config = {
            "host": relay.host,
            "port": relay.port,
            "relay_pid": relay.pid,
            "target": plan.scale_target,
            "budget": plan.scale_budget,
            "concurrency": plan.scale_concurrency,
            "rooms": plan.scale_rooms,
            "join_timeout": JOIN_TIMEOUT,
            "hold": 600.0,
        }
        with Pool("benchmarks.crowd:idle_crowd", [config]) as pool:
            (ramp,) = pool.gather("ramped", plan.scale_budget + JOIN_TIMEOUT + 60)
            time.sleep(plan.settle)
            full_rss = relay.rss()
            measured = asyncio.run(
                _newcomers_and_churn(relay, plan.newcomers, plan.churn_cycles, plan.scale_rooms, plan.settle)
            )
            pool.tell("finish")
            pool.gather("done", 120)
    _figures(section, plan, ramp, empty_rss, full_rss, measured)
    section.details = {
        "ramp": ramp,
        "relay_rss_empty_mib": round(empty_rss / 2**20, 1),
        "relay_rss_full_mib": round(full_rss / 2**20, 1),
        **measured,
        "relay_profile": relay.profile_top,
    }
    section.notes.append(
        "idle clients register for real (fresh keys, the two Box proofs) but take the directory as raw "
        "frames; the newcomer is a full e2echat Connection that decodes and records every entry. "
        f"Registration stops after {plan.scale_budget:g}s; the figures are for the size reached."
    )
    section.notes.append(
        f"client i is in room #room{{i mod {plan.scale_rooms}}}: each join sends the newcomer its contacts "
        "(its room's members online) and each of them a 'joined' and an 'entered': O(room) per join for the "
        "relay, not O(online). The newcomers and the churn clients join rooms of the crowd; the newcomer "
        "(a full client, in #lobby until clients name their rooms) sees nobody."
    )
    return section


def _figures(
    section: Section, plan: Any, ramp: dict[str, Any], empty_rss: int, full_rss: int, measured: dict[str, Any]
) -> None:
    judged = not plan.smoke
    reached = ramp["reached"]
    complete = reached >= plan.scale_target
    per_connection = (full_rss - empty_rss) / 1024 / max(1, reached)
    note = f"in {ramp['seconds']:.0f}s"
    if reached < plan.scale_target:
        note += f"; registration stopped at the {plan.scale_budget:g}s budget"
    section.add(
        Figure(
            "clients_reached",
            "idle clients registered",
            reached,
            "",
            f"{plan.scale_target:,}",
            judge(reached, lambda n: n >= plan.scale_target, judged),
            note,
        )
    )
    section.add(
        Figure(
            "registration_seconds",
            "time to register them all",
            ramp["seconds"],
            "s",
            f"< {TARGET_REGISTRATION_S:g} s",
            judge(ramp["seconds"], lambda seconds: seconds < TARGET_REGISTRATION_S and complete, judged),
            note=f"last 100 took {ramp['progress'][-1]['registration_ms_recent_median']} ms each (median)",
        )
    )
    section.add(
        Figure(
            "relay_rss_kib_per_connection",
            "relay RSS per idle connection",
            per_connection,
            "KiB",
            f"≤ {TARGET_KIB:g} KiB",
            judge(per_connection, lambda v: v <= TARGET_KIB, judged),
            f"{empty_rss / 2**20:.0f} MiB empty → {full_rss / 2**20:.0f} MiB with {reached:,}",
        )
    )
    section.add(
        Figure(
            "newcomer_directory_ms",
            f"newcomer registers ({measured['newcomer_saw_peers']:,} contacts of {reached:,} online)",
            measured["newcomer_ms_median"],
            "ms",
            note=f"connect to Registered, real client; {measured['newcomer_client_cpu_ms']:.0f} ms of it "
            "client CPU",
        )
    )
    section.add(
        Figure(
            "churn_cycles_per_s",
            "join + leave cycles per second",
            measured["churn_per_s"],
            "/s",
            note=f"a client in a room of {reached // max(1, plan.scale_rooms):,}",
        )
    )
    section.add(
        Figure(
            "churn_relay_cpu_ms",
            f"relay CPU per join + leave at {reached:,} online",
            measured["churn_relay_cpu_ms"],
            "ms",
            f"< {TARGET_CHURN_MS:g} ms",
            judge(measured["churn_relay_cpu_ms"], lambda ms: ms < TARGET_CHURN_MS, judged),
            "registration (two proofs opened) and leave, with the presence to its room",
        )
    )


async def _newcomers_and_churn(
    relay: servers.Server, newcomers: int, cycles: int, rooms: int, settle: float
) -> dict[str, Any]:
    timings, client_cpu = [], []
    for index in range(newcomers):
        connection = Connection(relay.host, relay.port, f"newcomer{index}", PrivateKey.generate())
        began, cpu = time.monotonic(), time.process_time()
        registered = await connection.open(timeout=JOIN_TIMEOUT)
        timings.append(1e3 * (time.monotonic() - began))
        client_cpu.append(1e3 * (time.process_time() - cpu))
        peers = len(registered.peers)
        await connection.close()
    await asyncio.sleep(settle)
    before, began = relay.cpu(), time.monotonic()
    for index in range(cycles):
        link, directory_bytes = await join_idle(
            relay.host, relay.port, f"churn{index}", JOIN_TIMEOUT, rooms_of(index, rooms)
        )
        link.close()
    elapsed = time.monotonic() - began
    await asyncio.sleep(settle)  # the last leave is still being announced
    return {
        "newcomer_ms": [round(t, 1) for t in timings],
        "newcomer_ms_median": statistics.median(timings),
        "newcomer_client_cpu_ms": statistics.median(client_cpu),
        "newcomer_saw_peers": peers,
        "directory_bytes": directory_bytes,
        "churn_cycles": cycles,
        "churn_per_s": cycles / elapsed,
        "churn_relay_cpu_ms": 1e3 * (relay.cpu() - before) / cycles,
    }
