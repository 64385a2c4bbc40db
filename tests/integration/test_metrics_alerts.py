"""What README's alert table says the metrics show, against a running worker on the real
broker."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import TopicPartition

from streams.dev.kafka import EmbeddedKafka
from streams.faust_transport import App, Topic
from streams.kafka_options import consumer_lag, group_consumer
from streams.observability import ConsumerLag
from tests.integration.conftest import System, create_topic, samples
from tests.support import seed_params, wait_until

pytestmark = pytest.mark.integration

README = Path(__file__).resolve().parents[2] / "README.md"


def executors_samples(system: System, name: str) -> list[tuple[dict[str, str], float]]:
    """The samples ``name`` where the worker's executors are measured: the worker's
    ``/metrics``, or its executors child's (``TALKSTREAM_EXECUTORS=process``)."""
    return [(sample.labels, sample.value) for sample in samples(system.executors_metrics(), name)]


async def five_records(bootstrap: str, topic: str) -> None:
    """A topic of one partition made, holding five records (offsets 0 to 4)."""
    await create_topic(bootstrap, topic, 1)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for i in range(5):
            await producer.send_and_wait(topic, value=b"record %d" % i, key=b"k")
    finally:
        await producer.stop()


def test_a_slow_openai_shows_in_flight_and_not_as_consumer_lag(system: System) -> None:
    """README said ``talkstream_consumer_lag`` grows with a slow OpenAI ("check OpenAI
    latency"): the executors take every command from [generate] at once and queue it by
    target, so their lag stays 0 however slow OpenAI is; the calls waiting show in
    ``talkstream_in_flight`` and ``talkstream_upstream_queue_depth``."""
    system.wait_ready()
    system.openai("POST", "/_control", {"latency_seconds": 20})
    try:
        for n in range(6):
            status, body = system.post(seed_params(f"slow-{n}@example.com"))
            assert status == 202, body

        def waiting() -> float | None:
            found = sum(
                value
                for name in ("talkstream_upstream_in_flight", "talkstream_upstream_queue_depth")
                for labels, value in executors_samples(system, name)
                if labels["upstream"] == "openai"
            )
            return found if found == 6 else None

        wait_until(waiting, 60, what="the six slow calls in the generator")
        generate = f"{system.app_id}-generate"
        lags = [v for labels, v in executors_samples(system, "talkstream_consumer_lag")
                if labels["topic"] == generate]  # fmt: skip
        assert lags and all(lag == 0 for lag in lags)
    finally:
        system.openai("POST", "/_control", {"latency_seconds": 0})
    alerts = README.read_text(encoding="utf-8").split("**Alerts**", 1)[1]
    [row] = [line for line in alerts.splitlines() if line.startswith("| `talkstream_consumer_lag")]
    assert "slow OpenAI" not in row.split("A slow OpenAI")[0]
    assert "`talkstream_upstream_queue_depth`" in row


def test_a_partition_taken_over_is_behind_by_what_lies_past_its_commit(
    kafka: EmbeddedKafka,
) -> None:
    """An executor given a partition by a rebalance (a worker added, killed or stopped) takes
    nothing of it until a command comes: it is behind by what lies past the group's commit
    there. Counted from 0, a partition its group had read to the end said its lag was every
    record it ever held (42 on a survivor's [generate] after a worker was killed, with nothing
    left to call), until the next command on it."""
    topic, group = f"t{uuid.uuid4().hex[:10]}-generate", f"g{uuid.uuid4().hex[:10]}"
    tp = TopicPartition(topic, 0)

    async def taken_over() -> tuple[dict[tuple[str, int], int], dict[tuple[str, int], int]]:
        await five_records(kafka.bootstrap, topic)
        former = AIOKafkaConsumer(bootstrap_servers=kafka.bootstrap, group_id=group)
        await former.start()  # the worker that read it all and committed, then went
        try:
            former.assign([tp])
            await former.commit({tp: 5})
        finally:
            await former.stop()
        owner = group_consumer({"bootstrap_servers": kafka.bootstrap}, group, "survivor")
        await owner.start()
        try:
            owner.subscribe([topic])
            for _ in range(100):  # until a fetch has said the partition's end (no record comes)
                assert not await owner.getmany(timeout_ms=200)
                if owner.assignment() and owner.highwater(tp) is not None:
                    break
            assert owner.highwater(tp) == 5
            return consumer_lag(owner, {}), consumer_lag(owner, {tp: 2})
        finally:
            await owner.stop()

    nothing_taken, taken_to_2 = asyncio.run(taken_over())
    assert nothing_taken == {(topic, 0): 0}
    assert taken_to_2 == {(topic, 0): 3}


def test_a_ledger_partition_just_assigned_is_behind_by_all_past_its_commit(
    kafka: EmbeddedKafka,
) -> None:
    """The ledger's lag of a partition faust has not read a record of since it was assigned
    (a worker given it by a rebalance, its records fetched and not handed on yet): faust's
    books of it hold the offset it was sought to, its group's commit, which is the next to
    read, and the lag counted it as read: one short (2 where 3 records wait)."""
    topic, group = f"t{uuid.uuid4().hex[:10]}-requests", f"g{uuid.uuid4().hex[:10]}"
    tp = TopicPartition(topic, 0)

    async def assigned() -> tuple[float, float]:
        await five_records(kafka.bootstrap, topic)
        aiokafka = AIOKafkaConsumer(
            bootstrap_servers=kafka.bootstrap, group_id=group, enable_auto_commit=False
        )
        await aiokafka.start()
        try:
            aiokafka.assign([tp])
            await aiokafka.commit({tp: 2})  # the former owner decided the first two
            app: Any = App(
                "t-lag", broker=f"talkstream://{kafka.bootstrap}", autodiscover=False, Topic=Topic
            )
            consumer = app.consumer
            consumer._thread._consumer = aiokafka  # faust's consumer over this one
            consumer._thread.seek_to_committed = aiokafka.seek_to_committed  # (no thread)
            await consumer.perform_seek()  # as faust does at an assignment
            for _ in range(100):  # fetched, none handed on to the ledger yet
                await aiokafka.getmany(timeout_ms=200)
                if aiokafka.highwater(tp) is not None:
                    break
            assert consumer.highwater(tp) == 5
            collector = ConsumerLag(SimpleNamespace(_consumer=consumer, tables={}), [])
            [family] = collector.collect()
            [before] = [s.value for s in family.samples if s.labels["topic"] == topic]
            consumer._taken[tp] = 2  # faust took offset 2: two wait
            [family] = collector.collect()
            [after] = [s.value for s in family.samples if s.labels["topic"] == topic]
            return before, after
        finally:
            await aiokafka.stop()

    before, after = asyncio.run(assigned())
    assert (before, after) == (3, 2)
