"""Benchmarks for e2echat: relay throughput, latency, scale, client cost and memory.

Run ``python -m benchmarks`` (``--smoke`` for a few-second version, ``--only NAME`` for
one section). Everything runs on 127.0.0.1: the relay and the baseline forwarder in
processes of their own, so their CPU time and memory can be read from /proc, and the
simulated clients in worker processes that use the real client code and real
cryptography. See benchmarks/README.md for what each figure means.
"""

from __future__ import annotations
