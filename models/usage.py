"""The per-person usage window (DESIGN.md §2), pure.

A window is ``(start, count)`` in seconds. The ledger is the authority; the Talkable snapshot
only seeds a window the ledger does not have. A failed generation gives its slot back in the
window it was taken from, never in a later one.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from models.params import UsageLimit


class Window(BaseModel):
    model_config = ConfigDict(frozen=True)

    start: int = Field(ge=0)
    count: int = Field(ge=0)


class Verdict(StrEnum):
    ADMITTED = "admitted"
    LIMITED = "limited"


def current_window(window: Window | None, limit: UsageLimit, now: int) -> Window:
    """The window in force at ``now``: the ledger's, else the snapshot's; reset when expired."""
    if window is None:
        window = Window(start=limit.start_time, count=limit.current_usage_amount)
    if now - window.start >= limit.duration_in_seconds:
        window = Window(start=now, count=0)
    return window


def reserve(window: Window | None, limit: UsageLimit, now: int) -> tuple[Verdict, Window]:
    """Admit and take a slot, or refuse because the window is full."""
    window = current_window(window, limit, now)
    if window.count >= limit.amount:
        return Verdict.LIMITED, window
    return Verdict.ADMITTED, Window(start=window.start, count=window.count + 1)


def release(window: Window | None, taken_in: int) -> Window | None:
    """Give back a slot taken in the window that started at ``taken_in``."""
    if window is None or window.start != taken_in or window.count == 0:
        return window
    return Window(start=window.start, count=window.count - 1)
