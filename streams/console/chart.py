"""The overview's chart: requests per minute by terminal state, as stacked SVG bars.

Server-rendered: the template draws the rectangles this module lays out (no script, no
library, nothing fetched), with a ``<title>`` on each bar for its figures.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from streams.console.queries import Overview

WIDTH, HEIGHT = 960, 220
LEFT, RIGHT, TOP, BOTTOM = 44, 8, 10, 26

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
    x: float
    y: float
    label: str


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    bars: list[Bar]
    x_ticks: list[Tick]
    y_ticks: list[Tick]
    plot_left: int
    plot_bottom: int
    plot_right: int
    total: int


def chart(overview: Overview) -> Chart:
    minutes = overview.minutes
    totals = [sum(series[i] for series in overview.series.values()) for i in range(len(minutes))]
    top = _nice(max(totals, default=0))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot = plot_w / max(len(minutes), 1)
    gap = 1.0 if slot > 3 else 0.0
    bars: list[Bar] = []
    for i, minute in enumerate(minutes):
        y = float(HEIGHT - BOTTOM)
        for state, series in overview.series.items():
            count = series[i]
            if not count:
                continue
            h = plot_h * count / top
            y -= h
            bars.append(
                Bar(
                    x=round(LEFT + i * slot + gap / 2, 2),
                    y=round(y, 2),
                    width=round(max(slot - gap, 0.5), 2),
                    height=round(h, 2),
                    color=COLORS.get(state, "#555"),
                    title=f"{_hhmm(minute)} UTC: {count} {state}",
                )
            )
    every = max(1, len(minutes) // 8)
    x_ticks = [
        Tick(round(LEFT + i * slot + slot / 2, 2), HEIGHT - 8, _hhmm(minute))
        for i, minute in enumerate(minutes)
        if i % every == 0
    ]
    y_ticks = [
        Tick(LEFT - 6, round(TOP + plot_h * (1 - f), 2) + 4, str(int(top * f))) for f in (0, 0.5, 1)
    ]
    return Chart(
        width=WIDTH,
        height=HEIGHT,
        bars=bars,
        x_ticks=x_ticks,
        y_ticks=y_ticks,
        plot_left=LEFT,
        plot_bottom=HEIGHT - BOTTOM,
        plot_right=WIDTH - RIGHT,
        total=sum(totals),
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
