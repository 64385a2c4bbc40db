"""The collector settings of talkstream's processes: start-up objects frozen out of the
collector's passes, young collections less often, and a batch job's setting undone after."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from streams import heap


@pytest.fixture
def collector() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


def test_settle_freezes_what_exists_and_collects_less_often(collector: None) -> None:
    built = [object() for _ in range(10)]  # something start-up made and keeps
    gc.unfreeze()
    heap.settle()
    assert gc.get_freeze_count() > len(built)
    assert gc.get_threshold()[0] == heap.YOUNG_THRESHOLD


def test_bulk_collects_less_often_only_while_it_runs(collector: None) -> None:
    gc.set_threshold(700, 10, 10)
    with heap.bulk():
        assert gc.get_threshold() == (heap.YOUNG_THRESHOLD, 10, 10)
    assert gc.get_threshold() == (700, 10, 10)
    with pytest.raises(RuntimeError), heap.bulk():
        raise RuntimeError("a replay that fails still restores the collector")
    assert gc.get_threshold() == (700, 10, 10)
