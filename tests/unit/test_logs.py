"""--log-format json: one JSON object per line, context as keys."""

from __future__ import annotations

import json
import logging
import os

import pytest

from streams.logs import PAYLOADS, Repeats, setup

HELD = (*PAYLOADS, "httpx", "httpx2", "httpcore")


@pytest.fixture(autouse=True)
def restore_logging():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    levels = {name: logging.getLogger(name).level for name in HELD}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, was in levels.items():
        logging.getLogger(name).setLevel(was)


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


NOTICES = [
    # (logger, the level it says it at, a notice and its args, the line it becomes at INFO,
    # a real fault there at that level)
    (
        "aiokafka.consumer.group_coordinator",
        logging.WARNING,
        ("Heartbeat failed for group %s because it is rebalancing", "ts-generator"),
        "Heartbeat failed for group ts-generator because it is rebalancing",
        ("Heartbeat failed for group %s: coordinator (node %s) is gone", "g", 1),
    ),
    (
        # a member's commit refused once the group has moved on: every worker joining or
        # leaving (one killed, after the session timeout) makes a committing member say it
        "aiokafka.consumer.group_coordinator",
        logging.ERROR,
        (
            "OffsetCommit failed for group %s due to group error (%s), will rejoin",
            "ts-projector",
            "[Error 22] IllegalGenerationError: ts-projector",
        ),
        "OffsetCommit failed for group ts-projector due to group error "
        "([Error 22] IllegalGenerationError: ts-projector), will rejoin",
        (
            "OffsetCommit failed for group %s on partition %s with offset %s: %s",
            "g",
            "tp",
            7,
            "boom",
        ),
    ),
    (
        # faust formats the size into the message itself (an f-string): matched by prefix
        "faust.transport.producer",
        logging.WARNING,
        (f"producer buffer full size {178}",),
        "producer buffer full size 178",
        ("producer stopped: %s", "broker gone"),
    ),
]


@pytest.mark.parametrize("level", ["info", "warning"])
@pytest.mark.parametrize(("name", "says", "notice", "line", "fault"), NOTICES)
def test_a_library_reporting_normal_operation_is_no_warning(
    capsys: pytest.CaptureFixture[str],
    level: str,
    name: str,
    says: int,
    notice: tuple[object, ...],
    line: str,
    fault: tuple[object, ...],
) -> None:
    setup(level, "text")
    logger = logging.getLogger(name)
    logger.log(says, *notice)
    logger.log(says, *fault)
    logging.getLogger("elsewhere").log(says, *notice)  # the same words from another logger
    lines = capsys.readouterr().err.strip().splitlines()
    said = logging.getLevelName(says)
    assert any(x.endswith(f"INFO {name} {line}") for x in lines) == (level == "info")
    assert not any(f"{said} {name} {line}" in x for x in lines)
    assert any(f"{said} {name} {fault[0] % fault[1:]}" in x for x in lines)
    assert any(x.endswith(f"{said} elsewhere {line}") for x in lines)


def test_a_broker_out_of_reach_is_said_once_not_at_every_try(
    capsys: pytest.CaptureFixture[str],
) -> None:
    setup("info", "text")
    client = logging.getLogger("aiokafka")
    fetcher = logging.getLogger("aiokafka.consumer.fetcher")
    for _ in range(500):  # what aiokafka logs in about a second of an outage
        client.error("Unable connect to node with id %s: %s", 1, "[Errno 111] Connect call failed")
        client.error("Unable to update metadata from %s", [1])
        fetcher.error("Failed fetch messages from %s: %s", 1, "NodeNotReadyError")
    client.error("Topic %s not found in cluster metadata", "t")  # another line: as ever
    client.error("Topic %s not found in cluster metadata", "t")
    lines = capsys.readouterr().err.strip().splitlines()

    assert [x.split(" ERROR ", 1)[1] for x in lines] == [
        "aiokafka Unable connect to node with id 1: [Errno 111] Connect call failed",
        "aiokafka Unable to update metadata from [1]",
        "aiokafka.consumer.fetcher Failed fetch messages from 1: NodeNotReadyError",
        "aiokafka Topic t not found in cluster metadata",
        "aiokafka Topic t not found in cluster metadata",
    ]


def test_webhooks_answered_503_are_said_once_not_one_line_each(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Partitions added to [requests] (or Kafka out of reach): the ingress answers every webhook
    503 and Talkable retries each, which wrote a WARNING a webhook (8,720 in three minutes of
    three webhooks a second, each retried every second)."""
    setup("info", "text")
    ingress = logging.getLogger("streams.ingress")
    for i in range(500):
        ingress.warning(
            "ingress could not produce request_id=%s: %s", f"r{i}", "Kafka is not acknowledging"
        )
    ingress.warning("ingress stopping: %s", "SIGTERM")  # another line: as ever
    lines = capsys.readouterr().err.strip().splitlines()
    assert [x.split(" WARNING ", 1)[1] for x in lines] == [
        "streams.ingress ingress could not produce request_id=r0: Kafka is not acknowledging",
        "streams.ingress ingress stopping: SIGTERM",
    ]


def test_logging_set_up_again_holds_back_nothing_it_saw_before(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Each set-up added its filters to those of the one before (``dictConfig`` keeps a
    logger's filters): the first one's ``Repeats`` held back a line the second had not seen
    (a test after another that logged it failed, by the order the tests ran in)."""
    said = "ingress could not produce request_id=%s: %s"
    for run in ("first", "second"):
        setup("info", "text")
        logging.getLogger("streams.ingress").warning(said, run, "Kafka is not acknowledging")
    lines = capsys.readouterr().err.strip().splitlines()
    assert [x.split(" WARNING ", 1)[1] for x in lines] == [
        "streams.ingress ingress could not produce request_id=first: Kafka is not acknowledging",
        "streams.ingress ingress could not produce request_id=second: Kafka is not acknowledging",
    ]
    filters = logging.getLogger("streams.ingress").filters
    assert len([f for f in filters if isinstance(f, Repeats)]) == 1


def test_a_repeated_line_comes_back_with_how_many_were_left_out() -> None:
    now = [100.0]
    repeats = Repeats(every_s=10.0, clock=lambda: now[0])
    said = []
    for at in [0.0, 0.5, 3.0, 9.9, 10.0, 10.1, 45.0]:
        now[0] = 100.0 + at
        record = logging.LogRecord(
            "aiokafka",
            logging.ERROR,
            __file__,
            1,
            "Unable to update metadata from %s",
            ([1],),
            None,
        )
        if repeats.filter(record):
            said.append((at, record.getMessage()))

    assert said == [
        (0.0, "Unable to update metadata from [1]"),
        (10.0, "Unable to update metadata from [1] (3 more like it in the last 10 s)"),
        (45.0, "Unable to update metadata from [1] (1 more like it in the last 35 s)"),
    ]


SEALED_KEY = "gAAAAABpZ-sealed-key-of-a-site"
PROMPT = "Write to ann@example.com about her order"


async def test_debug_never_logs_a_record_kafka_is_sent(capsys: pytest.CaptureFixture[str]) -> None:
    """At DEBUG, aiokafka logs every request to a broker whole (a produce request's records,
    keys and values), and aiokafka and faust each record they send: held at INFO, as the
    worker configures its logging (``logging_config``), while the rest of DEBUG is said."""
    from aiokafka.conn import AIOKafkaConnection
    from aiokafka.protocol.produce import ProduceRequest
    from aiokafka.record.default_records import DefaultRecordBatchBuilder

    setup("debug", "text")
    batch = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=0,
        is_transactional=0,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
        batch_size=1 << 20,
    )
    batch.append(0, timestamp=None, key=SEALED_KEY.encode(), value=PROMPT.encode(), headers=[])

    class Socket:  # what aiokafka writes a request to, once connected
        def write(self, data: bytes) -> None:
            assert SEALED_KEY.encode() in data  # (the record is in the request)

        def drain(self) -> None:
            return None

    conn = AIOKafkaConnection("127.0.0.1", 9)
    conn._writer, conn._versions = Socket(), {ProduceRequest.API_KEY: (0, 8)}
    conn.send(ProduceRequest(None, 1, 1000, [("t", [(0, bytes(batch.build()))])]), False)
    # what the producer and faust log at each send (their own words)
    key, value = SEALED_KEY.encode(), PROMPT.encode()
    logging.getLogger("aiokafka.producer.producer").debug(
        "Sending (key=%s value=%s) to %s", key, value, "t-0"
    )
    for faust_logger in ("faust.topics", "faust.transport.drivers.aiokafka"):
        logging.getLogger(faust_logger).debug(
            "send: topic=%r k=%r v=%r timestamp=%r partition=%r", "t", key, value, None, 0
        )
    logging.getLogger("faust.agents.agent").debug("%r yielded: %r", "agent", value)
    # and what they say at INFO and above is said as ever, and so is the rest of DEBUG
    logging.getLogger("aiokafka.conn").info("Authenticated as %s via %s", "ts", "PLAIN")
    logging.getLogger("aiokafka.consumer.group_coordinator").debug(
        "Committed offset %s for partition %s", 7, "t-0"
    )
    logging.getLogger("faust.tables.recovery").debug("Setting recovery end")
    logging.getLogger("streams.agents.ledger").debug("transition request_id=%s", "r-1")

    err = capsys.readouterr().err
    assert SEALED_KEY not in err and "sealed" not in err and "ann@" not in err
    assert [line.split(" ", 2)[2] for line in err.strip().splitlines()] == [
        "INFO aiokafka.conn Authenticated as ts via PLAIN",
        "DEBUG aiokafka.consumer.group_coordinator Committed offset 7 for partition t-0",
        "DEBUG faust.tables.recovery Setting recovery end",
        "DEBUG streams.agents.ledger transition request_id=r-1",
    ]


@pytest.mark.parametrize("level", ["debug", "info", "warning", "error", "critical"])
def test_a_logger_held_back_is_never_said_more_than_the_level_asks(
    capsys: pytest.CaptureFixture[str], level: str
) -> None:
    """A held logger's own level lets its records through to the root's handler whatever
    the root's level: held at INFO (WARNING for the HTTP client's), and never below the
    process's level (at ``error``, no WARNING of httpx, no INFO of aiokafka.conn)."""
    setup(level, "text")
    asked = logging.getLevelNamesMapping()[level.upper()]
    expected = []
    for name in HELD:
        floor = logging.INFO if name in PAYLOADS else logging.WARNING
        assert logging.getLogger(name).getEffectiveLevel() == max(floor, asked), name
        logging.getLogger(name).log(floor, "said")
        if floor >= asked:
            expected.append(f"{logging.getLevelName(floor)} {name} said")
    err = capsys.readouterr().err
    assert [line.split(" ", 2)[2] for line in err.strip().splitlines()] == expected


def test_faust_dev_lines_are_never_said_whatever_devlog_says(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``DEVLOG`` in the environment has faust's "dev" lines said at INFO whatever the level,
    and two of them write a record whole (a dropped message's key and value, a skipped
    message): the process's logging turns them off."""
    from mode.utils import logging as mode_logging

    monkeypatch.setenv("DEVLOG", "1")
    monkeypatch.setattr(mode_logging, "DEVLOG", True)  # as mode read it at its import
    setup("info", "text")
    key, value = SEALED_KEY.encode(), PROMPT.encode()
    faust_log = mode_logging.CompositeLogger(logging.getLogger("faust.transport.consumer"))
    faust_log.dev("DROPPED MESSAGE ROFF %r: k=%r v=%r", 7, key, value)
    faust_log.info("still said")
    err = capsys.readouterr().err
    assert SEALED_KEY not in err and "ann@" not in err and "still said" in err
    assert "DEVLOG" not in os.environ


def test_the_notices_are_aiokafkas_own_words() -> None:
    """A notice is matched by its format string: one aiokafka rewords is no longer found, and
    would be a WARNING or an ERROR again at every rebalance."""
    import inspect

    from aiokafka.consumer import group_coordinator

    from streams.logs import COMMIT_REJOIN, REBALANCING

    source = inspect.getsource(group_coordinator)
    for words in (REBALANCING, COMMIT_REJOIN):
        # aiokafka writes them as adjacent string literals, split anywhere
        assert words.replace(" ", "") in source.replace('"\n', "").replace(" ", "").replace(
            '"', ""
        ), words
