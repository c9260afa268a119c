from __future__ import annotations
from benchmarks.plan import Context
from benchmarks.report import Section
def memory(context: Context) -> Section:
    raise NotImplementedError
