"""A projector its group refuses (another database than the group's), or its database (a schema
this version will not migrate): the worker's child asks again less and less often, up to a
pause it never passes, and goes on once it is taken; ``talkstream projector`` on its own stops
at the first refusal."""

from __future__ import annotations

import asyncio
import logging

import pytest

from streams.agents import projector as module
from streams.agents.projector import (
    REFUSED_RAN_SECONDS,
    REFUSED_RETRY_FIRST_SECONDS,
    REFUSED_RETRY_MAX_SECONDS,
    until_taken,
    until_topics_fit,
)
from streams.agents.projector_group import OtherDatabase
from streams.errors import ConfigError, SchemaRefused


class _Refused:
    """A projector refused ``times`` times, then taken (its run returns: cancelled)."""

    def __init__(self, times: int) -> None:
        self.times, self.runs = times, 0
        self.config = type("Config", (), {"group": "app-projector"})()

    async def run(self) -> None:
        self.runs += 1
        if self.runs <= self.times:
            raise OtherDatabase("another projector of group app-projector writes ...")


def _paused(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    pauses: list[float] = []

    async def sleep(seconds: float) -> None:
        pauses.append(seconds)

    monkeypatch.setattr(module.asyncio, "sleep", sleep)
    return pauses


def test_a_refused_child_asks_again_less_and_less_often_up_to_the_cap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pauses = _paused(monkeypatch)
    refused = _Refused(times=10)
    asyncio.run(until_taken(refused, again=True))  # type: ignore[arg-type]
    assert refused.runs == 11  # taken at the eleventh
    # 1 s, doubling, never more than a minute (README, PROJECTOR)
    assert pauses == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0, 60.0]
    assert (REFUSED_RETRY_FIRST_SECONDS, REFUSED_RETRY_MAX_SECONDS) == (1.0, 60.0)


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class _RefusedAfterWork(_Refused):
    """Refused ``times`` times at once, then it projects for ``hours`` (its run lasts that long
    by ``clock``) and is refused again, ``times`` times at once, then taken."""

    def __init__(self, times: int, clock: _Clock, hours: float) -> None:
        super().__init__(times)
        self.clock, self.hours = clock, hours

    async def run(self) -> None:
        self.runs += 1
        if self.runs == self.times + 1:  # taken: projects for hours, then refused again
            self.clock.now += self.hours * 3600
        if self.runs <= 2 * self.times + 1:
            raise OtherDatabase("another projector of group app-projector writes ...")


def test_a_child_refused_again_after_projecting_a_while_asks_again_soon(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Refused until its pause reached a minute, then taken for hours, then refused again: its
    pauses start over (1 s, 2 s, ...), as the worker's restarts of a child that ran a while
    do; it asked again after a minute at the first refusal, the pause it had reached."""
    pauses = _paused(monkeypatch)
    clock = _Clock()
    refused = _RefusedAfterWork(times=8, clock=clock, hours=3)
    asyncio.run(until_taken(refused, again=True, clock=clock))  # type: ignore[arg-type]
    assert refused.runs == 18
    before = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]
    assert pauses == [*before, *before, 60.0]  # 1 s again after its hours of work
    assert REFUSED_RAN_SECONDS == 60.0


def test_a_child_refused_again_soon_after_a_refusal_keeps_its_pause(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A run shorter than ``REFUSED_RAN_SECONDS`` (joining and being refused) does not start
    the pauses over."""
    pauses = _paused(monkeypatch)
    clock = _Clock()
    refused = _RefusedAfterWork(times=8, clock=clock, hours=(REFUSED_RAN_SECONDS - 1) / 3600)
    asyncio.run(until_taken(refused, again=True, clock=clock))  # type: ignore[arg-type]
    assert pauses == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, *([60.0] * 11)]


def test_a_projector_on_its_own_stops_at_the_first_refusal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pauses = _paused(monkeypatch)
    refused = _Refused(times=1)
    with pytest.raises(OtherDatabase):
        asyncio.run(until_taken(refused, again=False))  # type: ignore[arg-type]
    assert refused.runs == 1 and pauses == []


class _SchemaRefused(_Refused):
    """A projector whose database's schema is refused ``times`` times (an operator then takes
    the database back), then taken."""

    async def run(self) -> None:
        self.runs += 1
        if self.runs <= self.times:
            raise SchemaRefused("the projection database sqlite:///p.sqlite3 is at migration 9999")


def test_a_child_refused_by_its_database_asks_again_as_one_refused_by_its_group(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Its schema from a newer version (or without a history): the child exited on it, and the
    worker started it again every second, the same ERROR each time."""
    pauses = _paused(monkeypatch)
    refused = _SchemaRefused(times=8)
    with caplog.at_level(logging.INFO, logger=module.__name__):
        asyncio.run(until_taken(refused, again=True))  # type: ignore[arg-type]
    assert refused.runs == 9
    assert pauses == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]
    assert "projector asks its database again in 60 s (the worker goes on without it)" in (
        caplog.text
    )


def test_a_projector_on_its_own_stops_at_its_databases_first_refusal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pauses = _paused(monkeypatch)
    refused = _SchemaRefused(times=1)
    with pytest.raises(SchemaRefused):
        asyncio.run(until_taken(refused, again=False))  # type: ignore[arg-type]
    assert refused.runs == 1 and pauses == []


class _Topics:
    """The deployment's topics, checked: refused ``times`` times (partitions added since they
    were created), then as the projector is set for (``fits``: a later check passes)."""

    def __init__(self, times: int) -> None:
        self.times, self.checks = times, 0

    async def check(self) -> None:
        self.checks += 1
        if self.checks <= self.times:
            raise ConfigError(
                "TALKSTREAM_PARTITIONS is 8, as the topics were created (app-generate), but "
                "partitions were added since to app-requests (10 partitions). ... give this "
                "deployment a TALKSTREAM_APP_ID of its own (README, Operations: Scale out)"
            )


def test_a_child_started_after_partitions_were_added_says_so_once_and_asks_again(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The worker's projector child started again (it exited, the worker restarts it) after
    partitions were added to the topics under the running worker: it exited at each start, an
    ERROR of its own and the worker's "the projector process exited" each time, a minute apart
    at most for as long as the worker ran. It says it once, with what to do, and asks again
    less and less often (an INFO each time), as a child its group refused does."""
    pauses = _paused(monkeypatch)
    topics = _Topics(times=9)
    with caplog.at_level(logging.INFO, logger=module.__name__):
        asyncio.run(until_topics_fit(topics.check, again=True))
    assert topics.checks == 10
    assert pauses == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [
        "projector cannot start: TALKSTREAM_PARTITIONS is 8, as the topics were created "
        "(app-generate), but partitions were added since to app-requests (10 partitions). ... "
        "give this deployment a TALKSTREAM_APP_ID of its own (README, Operations: Scale out)"
    ]
    assert caplog.text.count("projector still refused by the deployment's topics") == 8
    assert "projector asks Kafka about the topics again in 60 s (the worker goes on" in (
        caplog.text
    )
    assert "projector no longer refused: the deployment's topics fit its settings" in (caplog.text)


def test_a_projector_on_its_own_stops_when_the_topics_do_not_fit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``talkstream projector`` run by hand (or by a supervisor) exits with the one line."""
    pauses = _paused(monkeypatch)
    topics = _Topics(times=1)
    with pytest.raises(ConfigError, match="partitions were added since"):
        asyncio.run(until_topics_fit(topics.check, again=False))
    assert topics.checks == 1 and pauses == []
