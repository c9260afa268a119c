"""Sections 1 and 2: relay throughput at N clients, and the minimal forwarder beside it."""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

from nacl.public import PrivateKey

from benchmarks import servers
from benchmarks.ledger import TEXT_SIZE, Integrity, message_text, reconcile
from benchmarks.plan import Context
from benchmarks.pool import Pool, split
from benchmarks.report import Figure, Section, judge
from e2echat.crypto.keyring import Keyring
from e2echat.crypto.session import Kind
from e2echat.crypto.x3dh import PrekeyBundle

SETUP_TIMEOUT = 300.0
#: "go" names a moment this far ahead, so that every worker has heard it by then
GO_MARGIN = 0.5
#: below this share of one core the server was waiting for the clients, not working
SERVER_BOUND = 0.85


@dataclass
class Run:
    label: str
    clients: int
    deliveries: int
    seconds: float
    server_cpu: float
    client_cpu: float
    integrity: Integrity
    complete: bool
    receipts: int = 0
    #: milliseconds, send (or due time) to decrypted at the recipient
    latencies: list[float] = field(default_factory=list)
    #: live runs: the same, to the moment the recipient's event queue handed it over
    handed_over: list[float] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.deliveries / self.seconds if self.seconds > 0 else 0.0

    @property
    def cpu_per_delivery(self) -> float:
        return self.server_cpu / self.deliveries if self.deliveries else math.nan

    @property
    def utilisation(self) -> float:
        """The server's share of one core while the run lasted."""
        return self.server_cpu / self.seconds if self.seconds > 0 else 0.0

    @property
    def server_bound(self) -> bool:
        return self.utilisation >= SERVER_BOUND

    def summary(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "clients": self.clients,
            "deliveries": self.deliveries,
            "seconds": round(self.seconds, 4),
            "deliveries_per_s": round(self.rate, 1),
            "server_cpu_s": round(self.server_cpu, 3),
            "server_cpu_us_per_delivery": round(1e6 * self.cpu_per_delivery, 3),
            "server_utilisation": round(self.utilisation, 3),
            "client_cpu_s": round(self.client_cpu, 3),
            "complete": self.complete,
            "receipts": self.receipts,
            "integrity": self.integrity.as_dict(),
            **self.extra,
        }


def nicks(count: int) -> list[str]:
    return [f"c{index:04d}" for index in range(count)]


def sample_body_size(text_size: int = TEXT_SIZE) -> int:
    """Bytes of one real ciphertext body for a benchmark message (the forwarder's body
    size, so it carries what the relay carries): in a session both sides have written
    in, as nearly every message of a run is (a first message is 74 bytes longer)."""
    ours, theirs = (Keyring.fresh(nick, PrivateKey.generate(), time.time()) for nick in ("c0000", "c0001"))
    signed = theirs.prekeys.current
    bundle = PrekeyBundle(
        theirs.identity.public_key, signed.private.public_key, signed.prekey_id, signed.signature
    )
    to_them = ours.peer(theirs.nick, theirs.identity.public_key)
    to_them.start(bundle)
    to_us = theirs.peer(ours.nick, ours.identity.public_key)
    to_us.decrypt(to_them.encrypt("hello", Kind.ROOM))
    to_them.decrypt(to_us.encrypt("", Kind.RECEIPT, acks=(0,)))
    text = message_text("c0000", 0, 0, text_size)
    return len(to_them.encrypt(text, Kind.ROOM, directory_hash="0" * 64))


def replay(
    server: servers.Measured, kind: str, clients: int, context: Context, ports: dict[str, int] | None = None
) -> Run:
    """Every client sends its share of room messages as fast as the server answers
    (``ports``: each client's relay port, if not ``server``'s)."""
    plan = context.plan
    everyone = nicks(clients)
    messages = max(1, math.ceil(plan.deliveries_per_run / (clients * (clients - 1))))
    base = {
        "host": server.host,
        "port": server.port,
        "everyone": everyone,
        "messages": messages,
        "window": plan.window,
        "text_size": TEXT_SIZE,
        "body_size": sample_body_size(),
        "timeout": plan.drain_timeout,
        # Read at most every 0.1 ms × N: fewer wake-ups for the load generator, while the
        # window (×N recipients each) keeps far more than that in flight.
        "pause": 0.0001 * clients,
        "ports": ports or {},
    }
    configs = [{**base, "mine": part} for part in split(everyone, plan.workers)]
    with Pool(f"benchmarks.loadgen:replay_{kind}", configs) as pool:
        ready = pool.gather("ready", SETUP_TIMEOUT)
        before = server.mark()
        go = time.monotonic() + GO_MARGIN
        pool.tell("go", go)
        blasted = pool.gather("blasted", plan.drain_timeout + 30)
        after = server.mark()
        done = pool.gather("done", SETUP_TIMEOUT)
    sent = {nick: count for result in done for nick, count in result["sent"].items()}
    inboxes = {nick: inbox for result in done for nick, inbox in result["inboxes"].items()}
    integrity = reconcile(sent, inboxes)
    return Run(
        label=f"{kind} N={clients}",
        clients=clients,
        deliveries=integrity.delivered,
        seconds=max(b["last"] for b in blasted) - go,
        server_cpu=after.cpu - before.cpu,
        client_cpu=sum(b["cpu"] for b in blasted),
        integrity=integrity,
        complete=all(b["complete"] for b in blasted),
        receipts=sum(result["receipts_made"] for result in done),
        extra={
            "messages_per_client": messages,
            "prepare_cpu_s": round(sum(r["prepare_cpu"] for r in ready), 3),
            "workers": len(configs),
        },
    )


def live(server: servers.Server, clients: int, context: Context, mode: str, **load: float) -> Run:
    """Real ``Connection`` clients: encrypt when sending, decrypt when receiving, receipts."""
    plan = context.plan
    everyone = nicks(clients)
    base = {"host": server.host, "port": server.port, "everyone": everyone, "mode": mode}
    base.update(load)
    base["drain"] = plan.drain_timeout
    configs = [{**base, "mine": part} for part in split(everyone, plan.workers)]
    with Pool("benchmarks.loadgen:live", configs) as pool:
        pool.gather("connected", SETUP_TIMEOUT)
        pool.tell("warm")
        pool.tell("totals", merged(pool.gather("warmed", SETUP_TIMEOUT)))
        pool.gather("ready", plan.drain_timeout + 30)
        before = server.mark()
        go = time.monotonic() + GO_MARGIN
        pool.tell("go", go)
        pool.tell("totals", merged(pool.gather("sent", load["seconds"] + SETUP_TIMEOUT)))
        drained = pool.gather("drained", plan.drain_timeout + 30)
        after = server.mark()
        done = pool.gather("done", SETUP_TIMEOUT)
    sent = {nick: count for result in done for nick, count in result["sent"].items()}
    inboxes = {nick: inbox for result in done for nick, inbox in result["inboxes"].items()}
    integrity = reconcile(sent, inboxes)
    latencies: list[float] = []
    handed_over: list[float] = []
    for result in done:
        latencies.extend(doubles(result["latencies"]))
        handed_over.extend(doubles(result["handed_over"]))
    warm = clients * (clients - 1)  # the warm-up round: one message from each client
    return Run(
        label=f"live {mode} N={clients}",
        clients=clients,
        deliveries=integrity.delivered - warm,
        seconds=max(max(d["last"] for d in drained) - go, load["seconds"]),
        server_cpu=after.cpu - before.cpu,
        client_cpu=sum(d["cpu"] for d in drained),
        integrity=integrity,
        complete=all(d["arrived"] for d in drained),
        receipts=sum(r["receipts"] for r in done),
        latencies=latencies,
        handed_over=handed_over,
        extra={
            "unconfirmed": sum(r["unconfirmed"] for r in done),
            "gaps_reported": sum(r["missing"] for r in done),
            "disconnected": [nick for r in done for nick in r["disconnected"]],
            "unstamped": sum(r["unstamped"] for r in done),
            "sent_messages": sum(sent.values()) - clients,
            "workers": len(configs),
            **{key: value for key, value in load.items()},
        },
    )


def merged(parts: list[dict[str, int]]) -> dict[str, int]:
    return {nick: count for part in parts for nick, count in part.items()}


def doubles(data: bytes) -> list[float]:
    from array import array

    values = array("d")
    values.frombytes(data)
    return values.tolist()


def _bound_note(run: Run, who: str) -> str:
    note = f"{who} CPU {run.utilisation:.0%} of a core"
    if not run.server_bound:
        note += "; client-limited (the clients could not keep it busy)"
    if not run.complete:
        note += "; INCOMPLETE"
    return note


def throughput(context: Context) -> Section:
    plan = context.plan
    section = Section("throughput", "1. relay throughput: deliveries received and decrypted")
    runs: dict[int, Run] = {}
    profile = servers.profile_path("throughput", context.profile)
    with servers.relay(*servers.UNLIMITED, profile=profile) as relay:
        for clients in plan.throughput_sizes:
            run = runs[clients] = replay(relay, "relay", clients, context)
            section.integrity = section.integrity.add(run.integrity)
            section.add(
                Figure(
                    f"deliveries_per_s_n{clients}",
                    f"N={clients}: deliveries/s",
                    run.rate,
                    "/s",
                    note=_bound_note(run, "relay"),
                )
            )
            section.add(
                Figure(
                    f"relay_cpu_us_per_delivery_n{clients}",
                    f"N={clients}: relay CPU per delivery",
                    1e6 * run.cpu_per_delivery,
                    "µs",
                )
            )
        live_run = live(
            relay, plan.live_clients, context, "windowed", window=plan.window, seconds=plan.live_seconds
        )
    section.integrity = section.integrity.add(live_run.integrity)
    section.add(
        Figure(
            f"live_deliveries_per_s_n{plan.live_clients}",
            f"live clients N={plan.live_clients}: deliveries/s",
            live_run.rate,
            "/s",
            note=_bound_note(live_run, "relay"),
        )
    )
    section.add(
        Figure(
            f"live_relay_cpu_us_per_delivery_n{plan.live_clients}",
            f"live clients N={plan.live_clients}: relay CPU per delivery",
            1e6 * live_run.cpu_per_delivery,
            "µs",
            note=f"incl. {live_run.receipts / max(1, live_run.deliveries):.2f} receipts per delivery",
        )
    )
    context.shared["relay_runs"] = runs
    section.details = {
        "runs": [run.summary() for run in runs.values()],
        "live": live_run.summary(),
        "relay_profile": relay.profile_top,
    }
    section.notes.append(
        "replay runs: clients encrypt before the clock starts and decrypt after it stops, so the relay "
        "is the bottleneck; every delivery counted was decrypted and checked. Receipts are not sent in "
        "replay runs (they are made, counted in the JSON, and dropped)."
    )
    section.notes.append(
        "live run: e2echat.client.connection.Connection clients encrypt and decrypt as they go and send the "
        "protocol's receipts (coalesced by the client: one receipt per sender about once a second at most, "
        "which the relay forwards like any message); on 2 cores the clients, not the relay, are the "
        "limit there."
    )
    return section


def baseline(context: Context) -> Section:
    plan = context.plan
    section = Section("baseline", "2. baseline: minimal length-prefixed forwarder, same workload")
    relay_runs: dict[int, Run] = dict(context.shared.get("relay_runs", {}))
    missing = [n for n in plan.throughput_sizes if n not in relay_runs]
    if missing:
        with servers.relay(*servers.UNLIMITED) as relay:
            for clients in missing:
                relay_runs[clients] = replay(relay, "relay", clients, context)
                section.integrity = section.integrity.add(relay_runs[clients].integrity)
    forwarder_runs: dict[int, Run] = {}
    with servers.forwarder(profile=servers.profile_path("forwarder", context.profile)) as forwarder:
        for clients in plan.throughput_sizes:
            run = forwarder_runs[clients] = replay(forwarder, "forwarder", clients, context)
            section.integrity = section.integrity.add(run.integrity)
            section.add(
                Figure(
                    f"forwarder_deliveries_per_s_n{clients}",
                    f"N={clients}: forwarder deliveries/s",
                    run.rate,
                    "/s",
                    note=_bound_note(run, "forwarder"),
                )
            )
            section.add(
                Figure(
                    f"forwarder_cpu_us_per_delivery_n{clients}",
                    f"N={clients}: forwarder CPU per delivery",
                    1e6 * run.cpu_per_delivery,
                    "µs",
                )
            )
    judged = not plan.smoke
    pairs = _paired_runs(plan.ratio_size, plan.ratio_pairs, context, section)
    for clients in plan.throughput_sizes:
        if clients == plan.ratio_size:
            _judged_ratios(section, clients, pairs, judged)
            continue
        ours, theirs = relay_runs[clients], forwarder_runs[clients]
        section.add(
            Figure(
                f"throughput_ratio_n{clients}",
                f"N={clients}: relay ÷ forwarder throughput",
                ours.rate / theirs.rate if theirs.rate else math.nan,
                "×",
            )
        )
        section.add(
            Figure(
                f"capacity_ratio_n{clients}",
                f"N={clients}: relay ÷ forwarder, per CPU-second",
                _capacity(ours, theirs),
                "×",
                note="deliveries per server CPU-second; robust if either side was client-limited",
            )
        )
    section.details = {
        "forwarder_runs": [run.summary() for run in forwarder_runs.values()],
        "paired_runs": [{"relay": ours.summary(), "forwarder": theirs.summary()} for ours, theirs in pairs],
        "forwarder_profile": forwarder.profile_top,
        "median_relay_us_per_delivery": statistics.median(
            1e6 * r.cpu_per_delivery for r in relay_runs.values()
        ),
    }
    return section


def _capacity(ours: Run, theirs: Run) -> float:
    # A run too short for the 10 ms CPU clock can read 0 CPU seconds (smoke runs).
    return theirs.cpu_per_delivery / ours.cpu_per_delivery if ours.server_cpu > 0 else math.nan


def _paired_runs(clients: int, count: int, context: Context, section: Section) -> list[tuple[Run, Run]]:
    """``count`` pairs of a relay run and a forwarder run made back to back, for the judged
    ratio; the order alternates (relay first, then forwarder first, ...).

    This machine's speed drifts: the same run a minute later can be a third faster or
    slower, and the single runs above are half a minute apart. A ratio of two runs made
    back to back shares the drift; the median of a few such ratios is what is judged."""

    def run_relay() -> Run:
        with servers.relay(*servers.UNLIMITED) as relay:
            return replay(relay, "relay", clients, context)

    def run_forwarder() -> Run:
        with servers.forwarder() as forwarder:
            return replay(forwarder, "forwarder", clients, context)

    pairs = []
    for index in range(count):
        if index % 2 == 0:
            ours = run_relay()
            theirs = run_forwarder()
        else:
            theirs = run_forwarder()
            ours = run_relay()
        section.integrity = section.integrity.add(ours.integrity).add(theirs.integrity)
        pairs.append((ours, theirs))
    return pairs


def _judged_ratios(section: Section, clients: int, pairs: list[tuple[Run, Run]], judged: bool) -> None:
    ratios = [ours.rate / theirs.rate if theirs.rate else math.nan for ours, theirs in pairs]
    capacities = [_capacity(ours, theirs) for ours, theirs in pairs]
    for key, label, values, extra in (
        ("throughput_ratio", "relay ÷ forwarder throughput", ratios, ""),
        (
            "capacity_ratio",
            "relay ÷ forwarder, per CPU-second",
            capacities,
            "deliveries per server CPU-second; ",
        ),
    ):
        value = statistics.median(values)
        shown = ", ".join(f"{v:.2f}" for v in values)
        section.add(
            Figure(
                f"{key}_n{clients}",
                f"N={clients}: {label}",
                value,
                "×",
                "≥ 0.8",
                judge(value, lambda r: r >= 0.8, judged),
                note=f"{extra}median of {len(values)} back-to-back pairs, in alternating order ({shown})",
            )
        )
