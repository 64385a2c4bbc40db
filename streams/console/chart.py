"""The overview's chart: requests per minute (per few minutes over hours) by terminal state,
as stacked SVG bars.

Server-rendered: the template draws the rectangles this module lays out (no script, no
library, nothing fetched), with a ``<title>`` on each bar for its figures. The bars are an SVG
stretched to the page's width; the axes' labels are the page's text, placed at a share of it:
drawn in the SVG, they shrank with it, to 4 px in a phone's 375 px.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from streams.console.queries import Overview

WIDTH, HEIGHT = 960, 200  # the plot's units (the page stretches it: its bars, not its text)
# a bar a minute up to this many bars; past it (6 or 24 hours), a bar for the fewest minutes of
# MINUTES_PER_BAR that keeps to it: a bar stays wider than a pixel and the page light
MOST_BARS = 240
MINUTES_PER_BAR = (1, 2, 5, 10, 15, 30, 60)

COLORS = {
    "published": "#2e7d32",
    "limited": "#f9a825",
    "skipped": "#90a4ae",
    "rejected_duplicate": "#cfd8dc",
    "generation_failed": "#c62828",
    "publish_failed": "#6a1b9a",
}


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    color: str
    title: str


@dataclass(frozen=True)
class Tick:
    at: float  # percent of the plot: from its left (the time axis) or its bottom (the counts)
    label: str


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    bars: list[Bar]
    x_ticks: list[Tick]
    y_ticks: list[Tick]
    total: int
    per_bar: int  # minutes a bar counts


def chart(overview: Overview) -> Chart:
    minutes = overview.minutes
    per = next((m for m in MINUTES_PER_BAR if len(minutes) <= MOST_BARS * m), MINUTES_PER_BAR[-1])
    # each bar the minutes from a multiple of ``per`` (10:00, 10:10, ...), oldest first
    starts = sorted({minute - minute % per for minute in minutes})
    slot_of = {start: i for i, start in enumerate(starts)}
    series = {state: [0] * len(starts) for state in overview.series}
    for state, counts in overview.series.items():
        for minute, count in zip(minutes, counts, strict=True):
            series[state][slot_of[minute - minute % per]] += count
    totals = [sum(counts[i] for counts in series.values()) for i in range(len(starts))]
    top = _nice(max(totals, default=0))
    slot = WIDTH / max(len(starts), 1)
    gap = 1.0 if slot > 3 else 0.0
    bars: list[Bar] = []
    for i, start in enumerate(starts):
        y = float(HEIGHT)
        when = _hhmm(start) if per == 1 else f"{_hhmm(start)}\u2013{_hhmm(start + per)}"
        for state, counts in series.items():
            count = counts[i]
            if not count:
                continue
            h = HEIGHT * count / top
            y -= h
            bars.append(
                Bar(
                    x=round(i * slot + gap / 2, 2),
                    y=round(y, 2),
                    width=round(max(slot - gap, 0.5), 2),
                    height=round(h, 2),
                    color=COLORS.get(state, "#555"),
                    title=f"{when} UTC: {count:,} {state}",
                )
            )
    every = max(1, len(starts) // 8)
    x_ticks = [
        Tick(round(100 * (i + 0.5) / len(starts), 2), _hhmm(start))
        for i, start in enumerate(starts)
        if i % every == 0
    ]
    # (a top of 5 has its middle at 2.5, not 2)
    y_ticks = [Tick(100 * f, f"{top * f:,.1f}".removesuffix(".0")) for f in (0, 0.5, 1)]
    return Chart(
        width=WIDTH,
        height=HEIGHT,
        bars=bars,
        x_ticks=x_ticks,
        y_ticks=y_ticks,
        total=sum(totals),
        per_bar=per,
    )


def _nice(value: int) -> int:
    """The axis top: 1, 2 or 5 times a power of ten, at least ``value`` (and at least 2)."""
    step = 1
    while True:
        for m in (1, 2, 5):
            if m * step >= max(value, 2):
                return m * step
        step *= 10


def _hhmm(minute: int) -> str:
    return datetime.fromtimestamp(minute * 60, UTC).strftime("%H:%M")
