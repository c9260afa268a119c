from __future__ import annotations
from benchmarks.plan import Context
from benchmarks.report import Section
def scale(context: Context) -> Section:
    raise NotImplementedError
