"""The pure parts of audit and stats: reading times people type, percentiles."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.ops.audit import iso, parse_time, percentile

NOW_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-01-01T00:00:00Z", NOW_MS),
        ("2026-01-01T00:00:00", NOW_MS),  # no zone: UTC
        ("2026-01-01T01:00:00+01:00", NOW_MS),
        ("2026-01-01", NOW_MS),
        ("1767225600", NOW_MS),  # epoch seconds
        ("1767225600.5", NOW_MS + 500),
        ("1767225600000", NOW_MS),  # epoch milliseconds
        ("24h", NOW_MS - 24 * 3600 * 1000),
        ("30m", NOW_MS - 30 * 60 * 1000),
        ("7d", NOW_MS - 7 * 86400 * 1000),
    ],
)
def test_times_are_read_as_people_write_them(text: str, expected: int):
    assert parse_time(text, NOW_MS) == expected


@pytest.mark.parametrize("text", ["yesterday", "", "24 hours", "2026-13-01"])
def test_a_time_that_cannot_be_read_says_what_would_be(text: str):
    with pytest.raises(ValueError, match="ISO-8601"):
        parse_time(text, NOW_MS)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("99999999999999999999", "out of range"),  # past 9999 even as milliseconds
        ("-5", "out of range"),
        ("0001-01-01", "out of range"),
        ("99999999999999d", "out of range"),  # an age reaching back before 1970
        ("1e400", "must be finite"),
        ("nan", "must be finite"),
        ("inf", "must be finite"),
    ],
)
def test_a_time_outside_what_a_range_can_name_is_refused(text: str, says: str):
    """Not an overflow deep in the database driver (a 500 in the console, a traceback from the
    CLI): a ValueError saying why, as for any time that cannot be read."""
    with pytest.raises(ValueError, match=f"^{text!r} is .*{says}"):
        parse_time(text, NOW_MS)


@given(st.integers(min_value=0, max_value=253_402_300_799_999))
def test_every_epoch_millisecond_a_range_can_name_is_read(ms: int):
    text = str(ms) if ms > 100_000_000_000 else f"{ms / 1000:.3f}"
    assert abs(parse_time(text, NOW_MS) - ms) <= 1


def test_times_are_shown_in_utc():
    assert iso(NOW_MS + 1) == "2026-01-01T00:00:00.001+00:00"
    assert iso(None) is None


def test_nearest_rank_percentiles():
    assert percentile([], 50) is None
    assert percentile([5], 95) == 5
    assert percentile([700, 1200, 900], 50) == 900
    assert percentile(list(range(1, 101)), 95) == 95
    assert percentile(list(range(1, 21)), 95) == 19


@given(st.lists(st.integers(0, 10**6), min_size=1), st.floats(0, 100))
def test_a_percentile_is_one_of_the_values_and_at_least_p_percent_are_at_or_below(values, p):
    value = percentile(values, p)
    assert value in values
    assert sum(v <= value for v in values) >= p / 100 * len(values) - 1e-9


def test_a_date_written_without_dashes_is_refused_not_read_as_epoch_seconds():
    """``--since 20261204`` (ISO-8601's date without dashes) was read as epoch seconds,
    1970-08-23: a stats, or a redrive, of everything since then."""
    with pytest.raises(ValueError, match=r"^'20261204' is not a time: write the date 2026-12-04"):
        parse_time("20261204", NOW_MS)
    assert parse_time("20261399", NOW_MS) == 20_261_399_000  # no such date: epoch seconds
    assert parse_time("20261204.0", NOW_MS) == 20_261_204_000
