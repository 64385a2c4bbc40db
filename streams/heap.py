"""The garbage collector, set for talkstream's processes.

CPython collects its youngest generation every 700 net allocations and walks every tracked
object on a full collection. A worker under load allocates far more than that per webhook,
and what start-up built (modules, pydantic's schemas, the app) is walked on every full pass:
measured on the worker, full passes stalled its event loop 0.1-0.4 s at a time (the overhead
p99), and collections took ~17% of its CPU; in ``replay --verify`` they took ~40% of the time.
Nothing here turns the collector off: cycles are still found, less often.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

YOUNG_THRESHOLD = 50_000  # allocations between collections of the youngest generation


def settle() -> None:
    """For a long-running process once it is built: what exists now lives as long as the
    process, so it leaves the collector's sight (``gc.freeze``); collections come less often."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)


@contextmanager
def bulk() -> Iterator[None]:
    """While a batch job builds many objects that stay (a replay's derived events): collect
    less often, as :func:`settle` does, and restore the thresholds after."""
    before = gc.get_threshold()
    gc.set_threshold(max(YOUNG_THRESHOLD, before[0]), *before[1:])
    try:
        yield
    finally:
        gc.set_threshold(*before)
