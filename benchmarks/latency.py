"""Section 3: latency from send to decrypted-at-recipient, at paced loads."""

from __future__ import annotations

import math
import os
import time
from array import array
from collections.abc import Callable
from typing import Any

from benchmarks import servers
from benchmarks.ledger import reconcile
from benchmarks.plan import Context
from benchmarks.pool import Pool, split
from benchmarks.report import Figure, Section, judge
from benchmarks.throughput import GO_MARGIN, SETUP_TIMEOUT, Run, live, merged, nicks

TARGET_P99_MS = 10.0


def percentile(values: list[float], share: float) -> float:
    """Nearest-rank percentile of sorted ``values`` (nan if there are none)."""
    if not values:
        return math.nan
    rank = max(0, math.ceil(share * len(values)) - 1)
    return values[rank]


def latency(context: Context) -> Section:
    plan = context.plan
    section = Section("latency", "3. latency: send → decrypted at recipient")
    runs: list[Run] = []
    with servers.relay(*servers.UNLIMITED, profile=servers.profile_path("latency", context.profile)) as relay:
        for index, (clients, rate, seconds) in enumerate(plan.latency_loads):
            # The target is for the first load (50 × 4/s), end to end. The machine's
            # speed drifts from minute to minute, so that load is run a few times.
            repeats = plan.latency_repeats if index == 0 else 1
            tries = [
                live(relay, clients, context, "paced", rate=rate, seconds=seconds) for _ in range(repeats)
            ]
            path = paced_replay(relay, clients, rate, seconds, context)
            runs += [*tries, path]
            for run in [*tries, path]:
                section.integrity = section.integrity.add(run.integrity)
            run = median_run(tries)
            _figures(
                section, run, "live", clients, rate, targeted=index == 0, judged=not plan.smoke, others=tries
            )
            _figures(section, path, "relay path", clients, rate, targeted=False, judged=False)
    section.details = {"runs": [_summary(run) for run in runs], "relay_profile": relay.profile_top}
    section.notes.append(
        "live: every client is a real e2echat Connection; latency runs from the moment a message "
        "was due (open-loop pacing, so a sender that falls behind shows as latency) to the moment "
        "the recipient's client core has finished the read that carried it (every frame of that read "
        "decrypted), in the read callback. 'To the UI' runs on to "
        "the moment the client's event queue hands the text over, a turn of the event loop later: "
        "the clients of a worker process share one loop, so that wait includes the other clients' "
        "reads of the same turn. The benchmark checks each delivery after the run, not during it. "
        "The first message of each pair (session set-up) is a warm-up, not timed. Recipients send "
        "receipts as the protocol does. All N clients share this machine's 2 cores with the relay, "
        "so their CPU, not the relay, sets these figures once the load is high."
    )
    section.notes.append(
        "relay path: the same paced load from clients that encrypted beforehand and decrypt after "
        "the run (no receipts): due time to arrival of the ciphertext at the recipient's socket. "
        "It is the relay's and the kernel's share of the latency."
    )
    return section


def median_run(runs: list[Run]) -> Run:
    """The run whose p99 is the median of the runs' (the higher of the middle two). A run
    with no samples counts as the slowest, never as the median by accident."""

    def p99(run: Run) -> float:
        value = percentile(sorted(run.latencies), 0.99)
        return math.inf if math.isnan(value) else value

    return sorted(runs, key=p99)[len(runs) // 2]


def paced_replay(
    server: servers.Measured,
    clients: int,
    rate: float,
    seconds: float,
    context: Context,
    ports: dict[str, int] | None = None,
    crossing: Callable[[int, int], bool] | None = None,
) -> Run:
    """Paced, pre-encrypted senders: the relay path's latency. With ``crossing`` (sender
    and recipient indices -> whether the pair is on two relays of a cluster), the run's
    latencies are those of the pairs it names, and ``extra["same_relay"]`` the rest."""
    plan = context.plan
    everyone = nicks(clients)
    base = {
        "host": server.host,
        "port": server.port,
        "ports": ports or {},
        "everyone": everyone,
        "rate": rate,
        "seconds": seconds,
        "timeout": seconds + plan.drain_timeout,
    }
    configs = [{**base, "mine": part} for part in split(everyone, plan.workers)]
    with Pool("benchmarks.loadgen:paced_replay", configs) as pool:
        pool.gather("ready", SETUP_TIMEOUT)
        before = server.mark()
        go = time.monotonic() + GO_MARGIN
        pool.tell("go", go)
        blasted = pool.gather("blasted", seconds + plan.drain_timeout + 30)
        after = server.mark()
        done = pool.gather("done", SETUP_TIMEOUT)
    integrity = reconcile(
        merged([r["sent"] for r in done]), {k: v for r in done for k, v in r["inboxes"].items()}
    )
    return Run(
        label=f"relay path N={clients}",
        clients=clients,
        deliveries=integrity.delivered,
        seconds=max(max(b["last"] for b in blasted) - go, seconds),
        server_cpu=after.cpu - before.cpu,
        client_cpu=sum(b["cpu"] for b in blasted),
        integrity=integrity,
        complete=all(b["complete"] for b in blasted),
        latencies=_path_latencies(done, everyone, crossing),
        extra={
            "rate": rate,
            "seconds_offered": seconds,
            **({"same_relay": _path_latencies(done, everyone, crossing, False)} if crossing else {}),
        },
    )


def _path_latencies(
    done: list[dict[str, Any]],
    everyone: list[str],
    crossing: Callable[[int, int], bool] | None = None,
    wanted: bool = True,
) -> list[float]:
    """Milliseconds from each message's write at its sender to its arrival at each
    recipient (with ``crossing``: of the pairs for which it says ``wanted``)."""
    written: dict[str, array[float]] = {}
    for result in done:
        for nick, data in result["written"].items():
            written[nick] = array("d")
            written[nick].frombytes(data)
    latencies = []
    for result in done:
        senders, seqs, arrivals, recipients = array("I"), array("I"), array("d"), array("I")
        senders.frombytes(result["arrivals"][0])
        seqs.frombytes(result["arrivals"][1])
        arrivals.frombytes(result["arrivals"][2])
        recipients.frombytes(result["arrivals"][3])
        for sender, seq, arrival, recipient in zip(senders, seqs, arrivals, recipients, strict=True):
            if crossing is None or crossing(sender, recipient) == wanted:
                latencies.append(1e3 * (arrival - written[everyone[sender]][seq]))
    return latencies


def _figures(
    section: Section,
    run: Run,
    kind: str,
    clients: int,
    rate: float,
    *,
    targeted: bool,
    judged: bool,
    others: list[Run] | None = None,
) -> None:
    """The figures of ``run``; if it is the median of ``others`` (it is among them), the
    note says so and gives their p99s."""
    ordered = sorted(run.latencies)
    p50, p99 = percentile(ordered, 0.50), percentile(ordered, 0.99)
    worst = ordered[-1] if ordered else math.nan
    load = f"{kind}, {clients} × {rate:g}/s"
    key = f"{kind.replace(' ', '_')}_{clients}x{rate:g}"
    offered = clients * (clients - 1) * rate
    note = f"{run.rate:,.0f} of {offered:,.0f} deliveries/s offered; relay CPU {run.utilisation:.0%}"
    if run.rate < 0.95 * offered:
        who = "the relay" if run.server_bound else "the clients (encrypting/decrypting on 2 cores)"
        note += f"; OVERLOADED: {who} cannot keep up"
    elif kind == "live" and run.client_cpu / max(run.seconds, 1e-9) > 0.8 * client_cores():
        note += f"; client-limited (clients used {run.client_cpu / run.seconds:.1f} cores)"
    of_runs = ""
    if others and len(others) > 1:
        each = ", ".join(f"{percentile(sorted(other.latencies), 0.99):.1f}" for other in others)
        note += f"; median of {len(others)} runs by p99 (each run's p99: {each} ms)"
        overloaded = sum(other.rate < 0.95 * offered for other in others)
        if overloaded:
            note += f"; {overloaded} of the {len(others)} runs OVERLOADED"
        of_runs = " (the median run)"
    target = f"≤ {TARGET_P99_MS:g} ms" if targeted else ""
    section.add(Figure(f"p50_ms_{key}", f"{load}: p50", p50, "ms", note=of_runs.strip(" ()")))
    section.add(
        Figure(
            f"p99_ms_{key}",
            f"{load}: p99",
            p99,
            "ms",
            target,
            judge(p99, lambda v: v <= TARGET_P99_MS, judged and bool(target)),
            note,
        )
    )
    section.add(
        Figure(f"max_ms_{key}", f"{load}: max", worst, "ms", note=f"{len(ordered):,} samples{of_runs}")
    )
    if run.handed_over:
        ui = sorted(run.handed_over)
        section.add(
            Figure(
                f"p99_ms_{key}_handed_over",
                f"{load}: p99 to the UI",
                percentile(ui, 0.99),
                "ms",
                note=f"to the event queue's hand-over; p50 {percentile(ui, 0.5):.2f} ms{of_runs}",
            )
        )


def client_cores() -> float:
    """Cores the clients may use: all but the one the relay needs."""
    return max(1.0, len(os.sched_getaffinity(0)) - 1.0)


def _summary(run: Run) -> dict[str, object]:
    ordered = sorted(run.latencies)
    return {
        **run.summary(),
        "samples": len(ordered),
        "p50_ms": percentile(ordered, 0.5),
        "p90_ms": percentile(ordered, 0.9),
        "p99_ms": percentile(ordered, 0.99),
        "p999_ms": percentile(ordered, 0.999),
        "max_ms": ordered[-1] if ordered else None,
        "handed_over_p50_ms": percentile(sorted(run.handed_over), 0.5) if run.handed_over else None,
        "handed_over_p99_ms": percentile(sorted(run.handed_over), 0.99) if run.handed_over else None,
    }
