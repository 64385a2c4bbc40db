"""--log-format json: one JSON object per line, context as keys."""

from __future__ import annotations

import json
import logging

import pytest

from streams.logs import setup


@pytest.fixture(autouse=True)
def restore_logging():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_lines_carry_the_context_as_keys(capsys: pytest.CaptureFixture[str]) -> None:
    setup("info", "json")
    logging.getLogger("streams.agents.ledger").info(
        "transition request_id=%s",
        "r-1",
        extra={"request_id": "r-1", "site": "s", "state": "published"},
    )
    line = capsys.readouterr().err.strip().splitlines()[-1]
    record = json.loads(line)
    assert record["message"] == "transition request_id=r-1"
    assert (record["request_id"], record["site"], record["state"]) == ("r-1", "s", "published")
    assert record["level"] == "INFO" and record["logger"] == "streams.agents.ledger"


def test_text_is_the_default(capsys: pytest.CaptureFixture[str]) -> None:
    setup("info", "text")
    logging.getLogger("x").info("hello %s", "there")
    assert capsys.readouterr().err.strip().endswith("INFO x hello there")


@pytest.mark.parametrize("level", ["info", "warning"])
def test_a_heartbeat_that_learns_of_a_rebalance_is_no_warning(
    capsys: pytest.CaptureFixture[str], level: str
) -> None:
    setup(level, "text")
    coordinator = logging.getLogger("aiokafka.consumer.group_coordinator")
    coordinator.warning("Heartbeat failed for group %s because it is rebalancing", "ts-generator")
    coordinator.warning("Heartbeat failed for group %s: coordinator (node %s) is gone", "g", 1)
    lines = capsys.readouterr().err.strip().splitlines()
    notice = "INFO aiokafka.consumer.group_coordinator Heartbeat failed for group ts-generator "
    assert any(notice in line for line in lines) == (level == "info")
    assert not any("WARNING" in line and "rebalancing" in line for line in lines)
    assert any("WARNING" in line and "coordinator (node 1)" in line for line in lines)


@pytest.mark.parametrize("level", ["info", "warning"])
def test_a_full_changelog_buffer_is_no_warning(
    capsys: pytest.CaptureFixture[str], level: str
) -> None:
    # faust formats the size into the message itself (an f-string), so it is matched by prefix
    setup(level, "text")
    producer = logging.getLogger("faust.transport.producer")
    producer.warning(f"producer buffer full size {178}")
    producer.warning("producer stopped: %s", "broker gone")
    logging.getLogger("faust.other").warning(f"producer buffer full size {5}")
    lines = capsys.readouterr().err.strip().splitlines()
    notice = "INFO faust.transport.producer producer buffer full size 178"
    assert any(line.endswith(notice) for line in lines) == (level == "info")
    assert not any("WARNING faust.transport.producer producer buffer" in line for line in lines)
    assert any("WARNING faust.transport.producer producer stopped" in line for line in lines)
    assert any("WARNING faust.other producer buffer full size 5" in line for line in lines)
