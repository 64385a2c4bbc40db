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
