"""The overview's chart laid out: a bar a minute over an hour; over a day, bars of ten minutes
(a bar a minute would be 0.6 px wide, and thousands of them a megabyte of page)."""

from __future__ import annotations

from streams.console.chart import MOST_BARS, chart
from streams.console.queries import TERMINAL_STATES, Overview

DAY0 = 20_500 * 1440  # an epoch minute at 00:00 UTC


def overview(minutes: int, first: int = DAY0) -> Overview:
    span = list(range(first, first + minutes))
    return Overview(
        since_ms=first * 60_000,
        until_ms=(first + minutes) * 60_000,
        minutes=span,
        series={state: [1] * minutes for state in TERMINAL_STATES},
        published=minutes,
        p50_ms=None,
        p95_ms=None,
        sites=[],
    )


def test_an_hour_is_a_bar_a_minute():
    laid = chart(overview(60))
    assert laid.per_bar == 1
    assert len(laid.bars) == 60 * len(TERMINAL_STATES)
    assert laid.bars[0].title == "00:00 UTC: 1 published"


def test_the_count_axis_middle_is_half_its_top_not_rounded_down():
    few = overview(60)
    few = Overview(**{**vars(few), "series": {"published": [3] + [0] * 59}})
    assert [t.label for t in chart(few).y_ticks] == ["0", "2.5", "5"]  # a bar of 3: top 5
    many = Overview(**{**vars(few), "series": {"published": [3_000_000] + [0] * 59}})
    assert [t.label for t in chart(many).y_ticks] == ["0", "2,500,000", "5,000,000"]


def test_a_day_is_a_bar_every_ten_minutes_each_the_sum_of_its_minutes():
    laid = chart(overview(1440))
    assert laid.per_bar == 10 and len(laid.bars) == 144 * len(TERMINAL_STATES)
    assert all(bar.width > 1 for bar in laid.bars)
    assert laid.bars[0].title == "00:00\u201300:10 UTC: 10 published"
    assert laid.total == 1440 * len(TERMINAL_STATES)  # nothing lost in the sums
    assert [t.label for t in laid.y_ticks] == ["0", "50", "100"]  # a bar of 60
    # the labels are placed at a share of the plot (the page's text, not the SVG's)
    assert [t.at for t in laid.y_ticks] == [0, 50, 100]
    assert [t.label for t in laid.x_ticks][:2] == ["00:00", "03:00"]
    assert [t.at for t in laid.x_ticks][:2] == [round(50 / 144, 2), round(100 * 18.5 / 144, 2)]


def test_bars_start_on_the_clock_whatever_minute_the_window_starts():
    laid = chart(overview(1440, first=DAY0 + 3))  # 00:03 to 00:03 the next day
    titles = [b.title for b in laid.bars if b.title.endswith("published")]
    assert titles[0] == "00:00\u201300:10 UTC: 7 published"  # 00:03 to 00:09
    assert titles[1] == "00:10\u201300:20 UTC: 10 published"
    assert len(titles) == 145 and titles[-1] == "00:00\u201300:10 UTC: 3 published"
    assert len({b.x for b in laid.bars}) <= MOST_BARS
