"""The deadline timer's index: overdue work is signalled once per attempt, and after a
rebalance (when faust may have dropped executors' buffered commands) older work is given a
short grace instead of the rest of its deadline."""

from __future__ import annotations

from models.ledger import Policy
from streams.agents.ledger import DeadlineIndex
from tests.unit.domain_builders import PERSON, T0, Ledger, received

POLICY = Policy(generation_deadline_ms=120_000, publish_deadline_ms=60_000, max_wait_ms=0)
STAGES = {"generating": 120_000, "publishing": 60_000}
ISSUED = T0 * 1000


def index_with(*request_ids: str, issued: int = ISSUED) -> DeadlineIndex:
    ledger = Ledger(policy=POLICY, now_ms=issued)
    for request_id in request_ids:
        ledger.send(received(request_id))
    index = DeadlineIndex(STAGES, grace_ms=30_000)
    assert ledger.state is not None
    index.track(PERSON, ledger.state)
    return index


def test_overdue_work_is_signalled_once_per_attempt() -> None:
    index = index_with("req-1")
    assert index.overdue(ISSUED + 119_999) == []
    [expired] = index.overdue(ISSUED + 120_000)
    assert (expired.request_id, expired.attempt, expired.stage) == ("req-1", 1, "generating")
    assert index.overdue(ISSUED + 130_000) == []  # not again while the attempt is the same


def test_after_a_rebalance_older_work_gets_only_the_grace() -> None:
    index = index_with("req-1")
    index.rebalanced(ISSUED + 10_000)
    assert index.overdue(ISSUED + 39_999) == []
    [expired] = index.overdue(ISSUED + 40_000)  # rebalance + 30 s, not issue + 120 s
    assert expired.request_id == "req-1"


def test_work_issued_after_the_rebalance_keeps_its_whole_deadline() -> None:
    index = index_with("req-1", issued=ISSUED + 20_000)
    index.rebalanced(ISSUED + 10_000)
    assert index.overdue(ISSUED + 100_000) == []
    assert len(index.overdue(ISSUED + 140_000)) == 1
