"""The console's reads of Kafka, on a real broker: the dead letters it lists, how many older
ones it leaves to ``talkstream redrive``, and what a redrive reports of each letter."""

from __future__ import annotations

import asyncio
import base64
import logging
import time
import uuid

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewPartitions
from aiokafka.partitioner import DefaultPartitioner

from models.events import ChatRequest, DeadLetter, GenerateText
from streams.codecs import encode
from streams.console.app import KafkaLog
from streams.console.log import READER_LOGGERS, Sought, read_content, read_letters, reading
from streams.dev.kafka import EmbeddedKafka
from streams.ops.redrive import Selection, redrive
from streams.ops.replay import partitions_of
from streams.settings import Settings
from streams.topics import ensure_topics, partition_of
from tests.unit.domain_builders import PERSON, SEALED_OPENAI, SITE, received

pytestmark = pytest.mark.integration


def deployed(kafka: EmbeddedKafka, name: str) -> Settings:
    """Settings of a deployment of its own (``name`` and a random suffix), two partitions a
    topic, its topics created."""
    settings = Settings(
        kafka_bootstrap=kafka.bootstrap, app_id=f"{name}{uuid.uuid4().hex[:8]}", partitions=2
    )
    asyncio.run(ensure_topics(settings))
    return settings


async def write_letters(settings: Settings, counts: dict[int, int]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    await producer.start()
    try:
        for partition, count in counts.items():
            for i in range(count):
                letter = DeadLetter(
                    topic=settings.topic("requests"),
                    partition=partition,
                    offset=i,
                    reason=f"does not decode #{partition}.{i}",
                    at_ms=1_700_000_000_000 + i,
                )
                await producer.send_and_wait(
                    settings.topic("deadletter"), encode(letter), partition=partition
                )
    finally:
        await producer.stop()


def test_the_newest_letters_of_each_partition_are_read_and_the_older_counted(
    kafka: EmbeddedKafka,
) -> None:
    settings = deployed(kafka, "tletters")
    asyncio.run(write_letters(settings, {0: 5, 1: 2}))
    read = asyncio.run(read_letters(settings, most=3))
    assert sorted(x.reason for x in read.found) == [
        "does not decode #0.2",
        "does not decode #0.3",
        "does not decode #0.4",
        "does not decode #1.0",
        "does not decode #1.1",
    ]
    assert read.unread == 2  # partition 0's two oldest
    assert asyncio.run(read_letters(settings, most=5)).unread == 0


def test_a_request_named_after_its_fingerprint_finds_its_own_webhook(kafka: EmbeddedKafka) -> None:
    # the ledger names a repeat of the same params (and the same params once the dedupe window
    # passed) <fingerprint>~<delivery>; its [requests] record names the fingerprint
    settings = deployed(kafka, "tcontent")
    arrived_ms = int(time.time() * 1000) - 1000

    async def write() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
        await producer.start()
        try:
            for delivery, number in (("d1", "first"), ("d2", "second")):
                webhook = received("f00d", delivery_id=delivery, event_number=number)
                await producer.send_and_wait(
                    settings.topic("requests"), encode(webhook), key=PERSON.encode()
                )
        finally:
            await producer.stop()

    asyncio.run(write())

    def content(request_id: str) -> tuple[str | None, list[str]]:
        found = asyncio.run(read_content(settings, Sought(request_id, PERSON, arrived_ms)))
        return found.event_number, found.notes

    assert content("f00d") == ("first", [])
    assert content("f00d~d2") == ("second", [])
    assert content("f00d~d3")[0] is None


def test_a_redrive_says_when_the_letter_it_sent_was_written(kafka: EmbeddedKafka) -> None:
    """The console links a redriven request to the request of its id the letter was written
    of (the ledger names the same params by the same id again once it has forgotten the
    person): the report carries the letter's time."""
    settings = deployed(kafka, "tredrive")
    written_ms = int(time.time() * 1000) - 60_000
    command = GenerateText(
        request_id="req-1",
        person=PERSON,
        site=SITE,
        attempt=1,
        issued_at_ms=written_ms - 1000,
        chat=ChatRequest(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "a verse"}], max_tokens=60
        ),
        openai_api_key=SEALED_OPENAI,
    )
    letter = DeadLetter(
        topic=settings.topic("generate"),
        partition=-1,
        offset=-1,
        reason="AuthenticationError: 401 invalid key",
        key="req-1",
        value_b64=base64.b64encode(encode(command)).decode("ascii"),
        request_id="req-1",
        at_ms=written_ms,
    )

    async def write_and_preview() -> list[tuple[str | None, int | None]]:
        producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
        await producer.start()
        try:
            await producer.send_and_wait(settings.topic("deadletter"), encode(letter), key=b"req-1")
        finally:
            await producer.stop()
        report = await redrive(
            settings, Selection(), dry_run=True, now_ms=lambda: int(time.time() * 1000)
        )
        return [(x.request_id, x.written_ms) for x in report.redriven]

    assert asyncio.run(write_and_preview()) == [("req-1", written_ms)]


def test_a_page_read_logs_no_kafka_client_chatter(
    kafka: EmbeddedKafka, caplog: pytest.LogCaptureFixture
) -> None:
    """Each dead-letter page and content frame logged aiokafka's INFO lines of its reader's
    life ("Updating subscribed topics to: ...", two a read): a page view is no event of the
    log. What aiokafka says at WARNING is kept."""
    settings = deployed(kafka, "tquiet")
    asyncio.run(write_letters(settings, {0: 1}))
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert len(asyncio.run(read_letters(settings)).found) == 1
        content = read_content(settings, Sought("r", PERSON, arrived_ms=0, generated_ms=0))
        assert not asyncio.run(content).received
        with reading():  # what the reader's loggers say of a fault
            logging.getLogger(READER_LOGGERS[0]).warning("a fault")
        logging.getLogger(READER_LOGGERS[0]).info("another consumer")  # not the console's read
    said = [(r.name, r.levelname, r.getMessage()) for r in caplog.records]
    # what aiokafka says of a fault it retries (its fetcher's ERROR when a partition of the
    # just-created topic has no leader yet) is kept, and is no reader's chatter
    assert [x for x in said if x[0] in READER_LOGGERS] == [
        (READER_LOGGERS[0], "WARNING", "a fault"),
        (READER_LOGGERS[0], "INFO", "another consumer"),
    ]
    assert [x for x in said if x[0].startswith("aiokafka") and x[1] == "INFO"] == [
        (READER_LOGGERS[0], "INFO", "another consumer")
    ]


def test_a_redrive_from_the_console_logs_no_consumer_group_chatter(
    kafka: EmbeddedKafka, caplog: pytest.LogCaptureFixture
) -> None:
    """A redrive from the console, its preview too, logged aiokafka's INFO lines of redrive's
    consumer group ("Updating subscribed topics to: ...", "Discovered coordinator 1 for group
    ...-redrive") in the console's log: an operator's click is no event of the log."""
    settings = deployed(kafka, "tquietr")
    asyncio.run(write_letters(settings, {0: 1}))
    log = KafkaLog(settings, now_ms=lambda: int(time.time() * 1000))
    caplog.clear()
    with caplog.at_level(logging.INFO):
        for dry_run in (True, False):
            selection = Selection(topic=settings.topic("requests"))
            assert asyncio.run(log.redrive(selection, dry_run=dry_run)).examined == 1
    said = [(r.name, r.levelname, r.getMessage()) for r in caplog.records]
    assert [x for x in said if x[0].startswith("aiokafka") and x[1] == "INFO"] == []


def test_a_webhook_is_found_in_its_person_s_partition_after_partitions_were_added(
    kafka: EmbeddedKafka,
) -> None:
    # every producer writes a person's [requests] records to the person's partition over the
    # count the topics were created with (``partition_of``), not over the partitions Kafka has
    # since ``kafka-topics.sh --alter`` added some: the console reads the webhook there
    settings = deployed(kafka, "tadded")
    asyncio.run(add_partitions(settings, settings.topic("requests"), 5))
    every, now = list(range(2)), list(range(5))
    person = next(  # a person whose partition over five is not the one over two
        p
        for p in (f"site:person-{i}@example.com" for i in range(100))
        if DefaultPartitioner()(p.encode(), now, now) != partition_of(2)(p.encode())
    )
    assert partition_of(2)(person.encode()) in every
    arrived_ms = int(time.time() * 1000) - 1000

    async def write() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
        await producer.start()
        try:
            webhook = received("beef", delivery_id="d1", event_number="added")
            await producer.send_and_wait(
                settings.topic("requests"),
                encode(webhook),
                key=person.encode(),
                partition=partition_of(2)(person.encode()),
            )
        finally:
            await producer.stop()

    asyncio.run(write())
    found = asyncio.run(read_content(settings, Sought("beef", person, arrived_ms)))
    assert (found.event_number, found.notes) == ("added", [])


async def add_partitions(settings: Settings, topic: str, total: int) -> None:
    """Partitions added to ``topic`` until it has ``total``, as an operator's admin tool adds
    them; returns once the broker's metadata names them (the console reads it there)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_partitions({topic: NewPartitions(total_count=total)})
    finally:
        await admin.close()
    for _ in range(200):
        if len(await partitions_of(settings, topic)) == total:
            return
    raise AssertionError(f"the broker's metadata never named {total} partitions of {topic}")
