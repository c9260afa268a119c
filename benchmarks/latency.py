from __future__ import annotations
from benchmarks.plan import Context
from benchmarks.report import Section
def latency(context: Context) -> Section:
    raise NotImplementedError
