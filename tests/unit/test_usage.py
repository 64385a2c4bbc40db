"""The usage window of DESIGN.md §2: the ledger is the authority, the snapshot only seeds a
person the ledger does not know, a window resets at ``>=`` its duration, and a failed
generation gives its slot back only in the window it was taken from."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.usage import Verdict, Window, current_window, release, reserve
from tests.unit.domain_builders import T0, limit

FAST = settings(max_examples=200, deadline=None)

times = st.integers(min_value=0, max_value=2 * T0)
durations = st.integers(min_value=1, max_value=30 * 24 * 3600)
amounts = st.integers(min_value=0, max_value=10)
counts = st.integers(min_value=0, max_value=12)


@st.composite
def windows(draw: st.DrawFn) -> Window:
    return Window(start=draw(times), count=draw(counts))


# --- the merge of ledger and snapshot ---------------------------------------------------------


@pytest.mark.parametrize(
    ("ledger", "snapshot_start", "snapshot_used", "now", "expected"),
    [
        # first sight: the snapshot seeds the window
        (None, T0, 2, T0 + 10, Window(start=T0, count=2)),
        # first sight, snapshot window already over: a fresh one starts now
        (None, T0, 2, T0 + 3600, Window(start=T0 + 3600, count=0)),
        # Liquid renders an unwritten __start_time as *now* with count 0: a newer-looking
        # snapshot must not override what the ledger knows
        (Window(start=T0, count=3), T0 + 100, 0, T0 + 100, Window(start=T0, count=3)),
        # a stale snapshot (Talkable's copy lags) must not override it either
        (Window(start=T0, count=1), T0 - 7200, 3, T0 + 5, Window(start=T0, count=1)),
        # the ledger's own window expires by the ledger's start, not the snapshot's
        (Window(start=T0, count=3), T0 + 3000, 0, T0 + 3600, Window(start=T0 + 3600, count=0)),
        (Window(start=T0, count=3), T0 - 9000, 3, T0 + 3599, Window(start=T0, count=3)),
    ],
    ids=[
        "seed-from-snapshot",
        "seed-expired",
        "newer-snapshot-ignored",
        "stale-snapshot-ignored",
        "ledger-window-expires",
        "ledger-window-holds",
    ],
)
def test_the_snapshot_only_seeds_a_person_the_ledger_does_not_know(
    ledger: Window | None, snapshot_start: int, snapshot_used: int, now: int, expected: Window
) -> None:
    snapshot = limit(amount=3, duration=3600, start=snapshot_start, now=now, used=snapshot_used)
    assert current_window(ledger, snapshot, now) == expected


@FAST
@given(
    ledger=windows(),
    start=times,
    used=counts,
    amount=amounts,
    duration=durations,
    now=times,
)
def test_a_known_window_never_takes_the_snapshot_values(
    ledger: Window, start: int, used: int, amount: int, duration: int, now: int
) -> None:
    snapshot = limit(amount=amount, duration=duration, start=start, now=now, used=used)
    window = current_window(ledger, snapshot, now)
    same_ledger_other_snapshot = current_window(
        ledger, limit(amount=amount, duration=duration, start=now, now=now, used=0), now
    )

    assert window == same_ledger_other_snapshot  # the snapshot's start/count play no part
    assert window in (ledger, Window(start=now, count=0))


# --- the boundary: reset at `>=` duration -----------------------------------------------------


@pytest.mark.parametrize(
    ("elapsed", "same_window"),
    [(0, True), (1, True), (3599, True), (3600, False), (3601, False), (-5, True)],
)
def test_a_window_resets_when_its_duration_has_fully_elapsed(
    elapsed: int, same_window: bool
) -> None:
    ledger = Window(start=T0, count=3)
    now = T0 + elapsed
    window = current_window(ledger, limit(duration=3600, now=now), now)
    assert window == (ledger if same_window else Window(start=now, count=0))


@FAST
@given(start=times, count=counts, duration=durations, data=st.data())
def test_window_boundaries_are_exact(
    start: int, count: int, duration: int, data: st.DataObject
) -> None:
    ledger = Window(start=start, count=count)
    inside = start + data.draw(st.integers(0, duration - 1), label="inside")
    outside = start + duration + data.draw(st.integers(0, 10 * duration), label="past")
    last = start + duration - 1

    assert current_window(ledger, limit(duration=duration, now=inside), inside) == ledger
    assert current_window(ledger, limit(duration=duration, now=last), last) == ledger
    assert current_window(ledger, limit(duration=duration, now=outside), outside) == Window(
        start=outside, count=0
    )


# --- the limit --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("count", "amount", "verdict", "after"),
    [
        (0, 3, Verdict.ADMITTED, 1),
        (2, 3, Verdict.ADMITTED, 3),
        (3, 3, Verdict.LIMITED, 3),
        (5, 3, Verdict.LIMITED, 5),  # a snapshot may report more than the limit
        (0, 0, Verdict.LIMITED, 0),  # amount 0 admits nobody
    ],
)
def test_a_full_window_limits_and_a_free_slot_admits(
    count: int, amount: int, verdict: Verdict, after: int
) -> None:
    ledger = Window(start=T0, count=count)
    got, window = reserve(ledger, limit(amount=amount, now=T0 + 10), T0 + 10)
    assert (got, window) == (verdict, Window(start=T0, count=after))


def test_a_full_window_admits_again_once_it_expires() -> None:
    full = Window(start=T0, count=3)
    assert reserve(full, limit(amount=3, now=T0 + 3599), T0 + 3599)[0] is Verdict.LIMITED
    assert reserve(full, limit(amount=3, now=T0 + 3600), T0 + 3600) == (
        Verdict.ADMITTED,
        Window(start=T0 + 3600, count=1),
    )


@FAST
@given(
    ledger=st.none() | windows(),
    used=counts,
    amount=amounts,
    duration=durations,
    now=times,
    burst=st.integers(0, 30),
)
def test_a_burst_admits_exactly_the_free_slots(
    ledger: Window | None, used: int, amount: int, duration: int, now: int, burst: int
) -> None:
    """Serialized decisions at one instant admit ``amount - count`` and not one more."""
    snapshot = limit(amount=amount, duration=duration, start=now, now=now, used=used)
    free = max(0, amount - current_window(ledger, snapshot, now).count)
    verdicts = []
    window = ledger
    for _ in range(burst):
        verdict, window = reserve(window, snapshot, now)
        verdicts.append(verdict)
        assert window.count <= max(amount, current_window(ledger, snapshot, now).count)

    assert verdicts == [Verdict.ADMITTED] * min(free, burst) + [Verdict.LIMITED] * max(
        0, burst - free
    )


@FAST
@given(ledger=st.none() | windows(), amount=amounts, duration=durations, now=times)
def test_a_limited_request_takes_nothing(
    ledger: Window | None, amount: int, duration: int, now: int
) -> None:
    snapshot = limit(amount=amount, duration=duration, start=now, now=now)
    verdict, window = reserve(ledger, snapshot, now)
    if verdict is Verdict.LIMITED:
        assert window == current_window(ledger, snapshot, now)
    else:
        assert window.count == current_window(ledger, snapshot, now).count + 1 <= amount


# --- releasing a slot -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("window", "taken_in", "expected"),
    [
        (Window(start=T0, count=3), T0, Window(start=T0, count=2)),
        # the slot was taken in an earlier window: the current one is not touched
        (Window(start=T0 + 3600, count=1), T0, Window(start=T0 + 3600, count=1)),
        (Window(start=T0, count=0), T0, Window(start=T0, count=0)),  # never below zero
        (None, T0, None),
    ],
    ids=["same-window", "later-window", "empty-window", "no-window"],
)
def test_a_slot_is_released_only_in_the_window_it_was_taken_from(
    window: Window | None, taken_in: int, expected: Window | None
) -> None:
    assert release(window, taken_in) == expected


@FAST
@given(
    ledger=st.none() | windows(),
    amount=st.integers(1, 10),
    duration=durations,
    now=times,
)
def test_a_released_slot_is_reusable_in_the_same_window(
    ledger: Window | None, amount: int, duration: int, now: int
) -> None:
    snapshot = limit(amount=amount, duration=duration, start=now, now=now)
    window = ledger
    while (taken := reserve(window, snapshot, now))[0] is Verdict.ADMITTED:
        window = taken[1]
    full = current_window(window, snapshot, now)
    assert reserve(full, snapshot, now)[0] is Verdict.LIMITED

    freed = release(full, full.start)
    again = reserve(freed, snapshot, now)
    if full.count == amount:
        assert again == (Verdict.ADMITTED, full)  # the freed slot, and only that one
    else:  # the snapshot seeded more than the limit: one release is not enough
        assert again == (Verdict.LIMITED, freed)


@FAST
@given(ledger=windows(), taken_in=times)
def test_releasing_into_another_window_changes_nothing(ledger: Window, taken_in: int) -> None:
    if taken_in != ledger.start:
        assert release(ledger, taken_in) == ledger
    else:
        assert release(ledger, taken_in) == Window(
            start=ledger.start, count=max(0, ledger.count - 1)
        )


@FAST
@given(ledger=st.none() | windows(), amount=amounts, duration=durations, now=times)
def test_reserve_then_release_in_the_same_window_restores_it(
    ledger: Window | None, amount: int, duration: int, now: int
) -> None:
    snapshot = limit(amount=amount, duration=duration, start=now, now=now)
    verdict, window = reserve(ledger, snapshot, now)
    if verdict is Verdict.ADMITTED:
        assert release(window, window.start) == current_window(ledger, snapshot, now)
