"""A ledger that lost its changelog (no offset mark, a long log behind faust's commit) reads
the partition's history back a chunk at a time on the real broker: every request decided,
once; before, the whole range was read into memory and decided in one batch."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from models.params import person_key
from streams.agents.ledger import GAP_CHUNK
from streams.codecs import encode
from streams.dev.kafka import EmbeddedKafka
from streams.topics import partition_of
from tests.integration.conftest import System, http
from tests.unit.domain_builders import received

PARTITION = 1
BEHIND = GAP_CHUNK * 2 + 500  # two whole chunks and a part


def emails(count: int) -> list[str]:
    """Emails of people whose records all go to ``PARTITION`` of the deployment's 4."""
    partition = partition_of(4)
    found: list[str] = []
    n = 0
    while len(found) < count:
        email = f"gap{n}@example.com"
        n += 1
        if partition(person_key("gap.example", email).encode()) == PARTITION:
            found.append(email)
    return found


async def history(bootstrap: str, topic: str, group: str, people: list[str]) -> None:
    """Webhooks whose trigger criteria are not met (decided at once, no upstream call) written
    to ``topic`` before any worker ran, and the ledger's group committed past them: what a
    worker meets whose changelog was lost."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20)
    await producer.start()
    try:
        now_ms = int(time.time() * 1000)
        sends = []
        for i, email in enumerate(people):
            r = received(f"gap-{i}", trigger="false", at_ms=now_ms)
            r = r.model_copy(
                update={
                    "person": person_key("gap.example", email),
                    "spec": r.spec.model_copy(update={"site": "gap.example", "email": email}),
                }
            )
            key = r.person.encode()
            sends.append(await producer.send(topic, encode(r), key=key, partition=PARTITION))
        await asyncio.gather(*sends)
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group)
    await consumer.start()
    try:
        tp = TopicPartition(topic, PARTITION)
        consumer.assign([tp])
        end = (await consumer.end_offsets([tp]))[tp]
        assert end == len(people)
        await consumer.commit({tp: end})
    finally:
        await consumer.stop()


@pytest.mark.timeout(300)
def test_a_partition_without_a_mark_is_read_back_a_chunk_at_a_time(
    kafka: EmbeddedKafka, tmp_path: Path
) -> None:
    system = System(kafka, tmp_path)
    try:
        system.talkstream("topics")
        people = emails(BEHIND + 1)
        asyncio.run(
            history(kafka.bootstrap, f"{system.app_id}-requests", system.app_id, people[:-1])
        )
        system.start()
        # the partition's next webhook, after the history faust's commit is past
        status, body = system.post(
            {
                "site": "gap.example",
                "email": people[-1],
                "api_key": "talkable-key",
                "openai": {"messages": [{"role": "user", "content": "hi"}], "api_key": "sk-x"},
                "trigger_criteria": "false",
            }
        )
        assert status == 202, body
        ids = [f"gap-{i}" for i in range(BEHIND)] + [body["request_id"]]
        rows = system.wait_terminal(ids, timeout=180)
        assert {row.state for row in rows.values()} == {"skipped"}  # each decided, once
        assert len(rows) == BEHIND + 1
        log = (tmp_path / "worker.log").read_text(errors="replace")
        warned = f"offsets=0..{BEHIND - 1} (nothing of it decided before: from its log start)"
        assert f"{warned}: repairing, {GAP_CHUNK} records at a time" in log
        status, text = http("GET", f"{system.worker_url()}/metrics")
        assert status == 200
        [repaired] = [
            float(line.split()[-1])
            for line in str(text).splitlines()
            if line.startswith("talkstream_gap_messages_repaired_total ")
        ]
        # the history, and what followed it when the last chunk was read (the webhook, the
        # chunks' probes)
        assert BEHIND <= repaired <= BEHIND + 10
    finally:
        system.stop()
