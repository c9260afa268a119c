"""How big each benchmark is: the full run, and the smoke run CI uses."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Plan:
    smoke: bool = False
    #: 1. relay throughput: clients per run, and about how many deliveries each run makes
    throughput_sizes: tuple[int, ...] = (10, 50, 200)
    deliveries_per_run: int = 150_000
    window: int = 16  # unanswered send frames per client
    #: 1. the same, with live clients (real-time crypto, receipts)
    live_clients: int = 50
    live_seconds: float = 5.0
    #: 2. the ratio target is judged at this size, on this many relay and forwarder runs
    #: made back to back (the machine's speed drifts over minutes; see throughput.baseline)
    ratio_size: int = 50
    ratio_pairs: int = 3
    #: 3. latency: (clients, messages a second per client, seconds)
    latency_loads: tuple[tuple[int, float, float], ...] = ((50, 4.0, 10.0), (50, 20.0, 4.0))
    #: the first (targeted) load is run this many times and judged on the median run's p99
    latency_repeats: int = 3
    #: 4. scale
    scale_target: int = 10_000
    scale_budget: float = 120.0  # seconds of registering before we report what we reached
    scale_concurrency: int = 32
    #: the idle clients are spread over this many rooms (100 rooms of 100 at 10,000)
    scale_rooms: int = 100
    newcomers: int = 3
    churn_cycles: int = 200  # /proc counts CPU in 10 ms ticks: enough cycles to see 1 ms
    #: 5. client cost
    cost_recipients: int = 49
    cost_messages: int = 300
    #: conversation turns timed for the cost of a DH ratchet step (0.1 ms or so each)
    cost_dh_turns: int = 200
    #: 12. rooms: a client's cost of one join at these sizes online, joins timed at each
    join_cost_sizes: tuple[int, ...] = (100, 10_000)
    join_cost_joins: int = 200
    #: room sizes a room message is fanned out to, and seconds of sending to each
    fanout_sizes: tuple[int, ...] = (10, 100, 1000)
    fanout_seconds: float = 3.0
    #: clients (in rooms of ``restart_room``) back after a relay restart, and the bound
    restart_clients: int = 10_000
    restart_room: int = 100
    restart_timeout: float = 60.0
    #: 6. memory
    memory_seconds: float = 15.0
    flood_seconds: float = 5.0
    #: identities whose prekey bundles are stored to measure their memory
    prekey_identities: int = 10_000
    #: 7. abuse: connections sending costly frames, honest messages timed before and during
    abuse_attackers: int = 8
    abuse_round_trips: int = 200
    abuse_warmup: float = 2.0
    #: 8. relay store: mail items enqueued then acknowledged, in transactions of these sizes
    store_items: int = 100_000
    store_batches: tuple[int, ...] = (1, 100, 1000)
    #: 9. history: rows in the profile's history, over this many conversations
    history_rows: int = 100_000
    history_conversations: int = 50
    #: 11. drain: messages queued in a mailbox while its owner was away
    drain_messages: int = 10_000
    #: 13. files: one file of this many MiB through the relay (issue 20: 256)
    file_mib: int = 256
    #: 14. cluster: clients of the replay runs on 1 and 2 relays; clients failing over
    cluster_clients: int = 50
    failover_clients: int = 1000
    #: worker processes for simulated clients (the machine has 2 cores; the relay needs one)
    workers: int = 2
    #: bound on any one wait for deliveries to arrive
    drain_timeout: float = 60.0
    #: pause for the relay to go quiet before its memory is read
    settle: float = 2.0


FULL = Plan()

SMOKE = Plan(
    smoke=True,
    throughput_sizes=(4,),
    deliveries_per_run=120,
    live_clients=3,
    live_seconds=0.3,
    ratio_size=4,
    ratio_pairs=1,
    latency_loads=((3, 4.0, 0.5), (3, 20.0, 0.3)),
    latency_repeats=2,  # exercises the median
    scale_target=24,
    scale_budget=10.0,
    scale_concurrency=8,
    scale_rooms=4,
    newcomers=1,
    churn_cycles=2,
    cost_recipients=4,
    cost_messages=10,
    cost_dh_turns=4,
    memory_seconds=0.6,
    flood_seconds=0.4,
    prekey_identities=200,
    history_rows=500,
    history_conversations=5,
    workers=1,
    drain_timeout=15.0,
    settle=0.2,
    abuse_attackers=2,
    abuse_round_trips=10,
    abuse_warmup=0.3,
    store_items=2_000,
    drain_messages=600,
    join_cost_sizes=(10, 100),
    join_cost_joins=10,
    fanout_sizes=(3, 10),
    fanout_seconds=0.3,
    restart_clients=20,
    restart_room=5,
    restart_timeout=20.0,
    file_mib=4,
    cluster_clients=4,
    failover_clients=6,
)


@dataclass
class Context:
    """What every section gets: the plan, options, and results earlier sections left."""

    plan: Plan
    profile: bool = False
    results_dir: Path = Path(__file__).resolve().parent / "results"
    shared: dict[str, Any] = field(default_factory=dict)
