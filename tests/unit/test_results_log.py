"""How an executor says a record Kafka did not take (``streams.agents.results.log_unsent``):
an outage the worker rides out is a WARNING that says what becomes of the call, not an ERROR
with a traceback at every call; what is no refusal of Kafka's keeps its traceback."""

from __future__ import annotations

import logging

import pytest
from aiokafka.errors import KafkaTimeoutError, NotLeaderForPartitionError

from streams.agents.results import NOT_HANDED_BACK, NOT_REPORTED, log_unsent
from streams.kafka_options import GivenUp
from streams.logs import Repeats

LOGGER = "streams.agents.executors"


@pytest.fixture(autouse=True)
def every_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each line: a test that set the process's logging up (``streams.logs``) left its
    one-every-10-s filter on the executors' logger."""
    monkeypatch.setattr(logging.getLogger(LOGGER), "filters", [])


@pytest.mark.parametrize(
    "exc", [KafkaTimeoutError("expired"), NotLeaderForPartitionError()], ids=type
)
def test_a_result_kafka_did_not_take_is_a_warning_of_what_becomes_of_it(
    caplog: pytest.LogCaptureFixture, exc: Exception
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    log_unsent(exc, NOT_REPORTED, "generator", "req-1")
    [record] = caplog.records
    assert record.levelno == logging.WARNING and record.exc_info is None
    said = record.getMessage()
    assert said.startswith(f"generator could not report request_id=req-1 ({type(exc).__name__}")
    assert "re-issued at its deadline" in said


def test_what_is_no_refusal_of_kafkas_keeps_its_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    log_unsent(TypeError("a bug"), NOT_REPORTED, "publisher", "req-2")
    [record] = caplog.records
    assert record.levelno == logging.ERROR and record.exc_info is not None


def test_a_record_a_stop_gave_up_on_is_counted_by_the_stop_not_said_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    log_unsent(GivenUp("stopped"), NOT_REPORTED, "generator", "req-3")
    [record] = caplog.records
    assert record.levelno == logging.DEBUG


@pytest.mark.parametrize("message", [NOT_REPORTED, NOT_HANDED_BACK])
def test_an_outages_lines_are_said_once_every_ten_seconds_with_a_count(
    caplog: pytest.LogCaptureFixture, message: str
) -> None:
    """One per call in an outage: the logs' repeat filter keeps one every 10 s, saying how
    many like it it left out (as it does aiokafka's lines)."""
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    for i in range(5):
        log_unsent(KafkaTimeoutError("expired"), message, "generator", f"req-{i}")
    now = [0.0]
    repeats = Repeats(every_s=10.0, clock=lambda: now[0])
    kept = [record for record in caplog.records[:4] if repeats.filter(record)]
    now[0] = 10.0
    kept += [record for record in caplog.records[4:] if repeats.filter(record)]
    assert len(kept) == 2
    assert kept[1].getMessage().endswith("(3 more like it in the last 10 s)")
