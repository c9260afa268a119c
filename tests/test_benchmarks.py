"""The benchmark suite keeps working: run it at smoke size and check that every section
produced its figures and that no delivery was lost, duplicated or corrupted.

Benchmarks are not tests: nothing here looks at how fast anything was.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# Figures each section must report (key prefixes: the smoke sizes are part of some keys).
EXPECTED = {
    "throughput": ["deliveries_per_s_n", "relay_cpu_us_per_delivery_n", "live_deliveries_per_s_n"],
    "baseline": ["forwarder_deliveries_per_s_n", "throughput_ratio_n", "capacity_ratio_n"],
    "latency": ["p50_ms_live_", "p99_ms_live_", "max_ms_live_", "p99_ms_relay_path_"],
    "scale": [
        "clients_reached",
        "relay_rss_kib_per_connection",
        "newcomer_directory_ms",
        "churn_cycles_per_s",
        "registration_seconds",
        "churn_relay_cpu_ms",
    ],
    "client-cost": [
        "send_ms_per_message",
        "raw_us_per_recipient",
        "send_ratio",
        "receive_us_per_delivery",
        "receive_ratio",
    ],
    "memory": [
        "non_reader_peak_growth_mib",
        "flood_peak_growth_mib",
        "flood_unlimited_peak_growth_mib",
        "prekey_bytes_per_identity",
    ],
    "abuse": ["quiet_p50_ms", "under_attack_p50_ms", "under_attack_p99_ms", "relay_cpu_under_attack"],
    "store": ["enqueue_per_s_b", "dequeue_per_s_b", "load_ms_b", "enqueue_full_per_s_b"],
    "history": ["start_up_s", "start_up_empty_s", "history_share_ms", "fill_rows_per_s", "bytes_per_row"],
    "mailbox": ["queued_per_s", "online_memory_per_s", "online_store_per_s", "online_store_ratio"],
    "drain": ["drain_per_s", "drain_us_per_message"],
    "rooms": ["client_join_us_", "client_join_growth", "fanout_", "restart_seconds"],
    "files": [
        "transfer_mb_s",
        "forwarder_mb_s",
        "floor_mb_s",
        "transfer_over_forwarder",
        "transfer_over_floor",
        "sender_cpu_ms_per_mib",
        "receiver_cpu_ms_per_mib",
        "relay_peak_rss_mib",
        "chat_p99_ms",
    ],
    "cluster": [
        "deliveries_per_s_one",
        "deliveries_per_s_two",
        "relay_cpu_us_per_delivery_two",
        "nats_cpu_us_per_delivery",
        "p99_ms_added_by_nats",
        "failover_s_n",
    ],
}


@pytest.mark.slow
def test_smoke_run_reports_every_figure_and_loses_nothing(tmp_path: Path) -> None:
    results = tmp_path / "smoke.json"
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--smoke", "--json", str(results)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "figure" in run.stdout and "cores" in run.stdout  # the table and the machine line

    document = json.loads(results.read_text())
    assert document["smoke"] is True
    assert document["machine"]["cores"] >= 1
    assert set(document["sections"]) == set(EXPECTED)
    for name, prefixes in EXPECTED.items():
        section = document["sections"][name]
        assert not section["details"].get("failed"), section["details"].get("traceback")
        figures = section["figures"]
        for prefix in prefixes:
            found = [f for key, f in figures.items() if key.startswith(prefix)]
            assert found, f"{name}: no figure {prefix}*"
            assert all(f["value"] is not None for f in found), f"{name}: {prefix}* has no value"

    integrity = document["integrity"]
    assert integrity["delivered"] > 0
    assert integrity["lost"] == integrity["duplicated"] == integrity["corrupted"] == 0
    for name, section in document["sections"].items():
        counts = section["integrity"]
        assert counts["lost"] == counts["duplicated"] == counts["corrupted"] == 0, name
    assert document["sections"]["scale"]["figures"]["clients_reached"]["value"] > 0
    # The targeted latency load ran twice (judged on the median run), the other once, and
    # each had its relay-path run.
    runs = document["sections"]["latency"]["details"]["runs"]
    assert len(runs) == 2 + 1 + 1 + 1
    # Live runs time each message to its decryption and, later, to its hand-over.
    live = [run for run in runs if run["label"].startswith("live")]
    assert live and all(run["handed_over_p99_ms"] is not None for run in live)
    assert all(run["unstamped"] == 0 for run in live)
    assert {target["key"] for target in document["targets"]} >= {
        "send_ratio",
        "receive_ratio",
        "relay_rss_kib_per_connection",
        "clients_reached",
        "registration_seconds",
        "churn_relay_cpu_ms",
        "restart_seconds",
    }


async def test_live_clients_check_every_delivery_after_the_run() -> None:
    # The load generator's live clients only note deliveries while a run lasts and check
    # them afterwards (settle): that check must still catch a duplicate and a corruption,
    # and time each intact message twice, to its decryption and to its hand-over.
    from benchmarks.ledger import message_text
    from benchmarks.loadgen import LiveClient, _arrived
    from e2echat.client.core import MessageReceived

    from support import LOOPBACK, WAIT, running_relay

    async with running_relay() as relay:
        alice, bob = (LiveClient(nick, LOOPBACK, relay.port) for nick in ("c0000", "c0001"))
        try:
            await asyncio.wait_for(asyncio.gather(alice.open(1), bob.open(1)), WAIT)
            stamp = time.monotonic_ns()
            alice.send(stamp)
            assert await _arrived([bob], {"c0000": 1}, WAIT)  # which settles what came
            alice.send(stamp)
            assert await _arrived([bob], {"c0000": 2}, WAIT)
            copy = message_text("c0000", 1, stamp)
            bob.connection.events.put_nowait(MessageReceived("c0000", copy, False))  # seen before
            bob.connection.events.put_nowait(MessageReceived("c0000", copy[:-1] + "?", False))
            # Four copies came, but only two intact messages: still waiting, then not.
            assert not await _arrived([bob], {"c0000": 3}, 0.2)
            assert bob.received == {"c0000": 4}
            assert await _arrived([bob], {"c0000": 2}, WAIT)
        finally:
            await asyncio.gather(alice.close(), bob.close())
    summary = bob.inbox.summary()
    assert summary.counts == {"c0000": (2, 1)}
    assert (summary.duplicated, summary.corrupted) == (1, 1)
    assert len(bob.latencies) == len(bob.handed_over) == 2
    # Decrypted in the read callback, handed over in a later turn of the event loop.
    assert all(0 < d < h for d, h in zip(bob.latencies, bob.handed_over, strict=True))
    # Two real deliveries were stamped, the two injected ones were not; nothing is left over.
    assert bob.unstamped == 2
    assert not bob._decrypted_at and not bob._arrivals


def test_each_section_prints_its_own_number_in_the_order_they_run() -> None:
    """The title each section prints starts with its number: 1, 2, … in the order of
    ``SECTIONS`` (the order of benchmarks/README.md), each once."""
    from benchmarks.__main__ import SECTIONS

    sources = "".join(path.read_text(encoding="utf-8") for path in sorted((REPO / "benchmarks").glob("*.py")))
    titles = {
        name: int(number) for name, number in re.findall(r'Section\(\s*"([\w-]+)",\s*f?"(\d+)\. ', sources)
    }
    assert titles == {name: index for index, name in enumerate(SECTIONS, 1)}
