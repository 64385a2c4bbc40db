"""``talkstream topics`` on the session broker: the replication settings reach the topics, and
a topic Kafka refuses to create is an error that names it, not silence; so are topics whose
partitions are not ``TALKSTREAM_PARTITIONS``; the consumer groups' coordinators are asked for
before the consumers start."""

from __future__ import annotations

import asyncio
import re
import uuid

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from click.testing import CliRunner

from streams.cli import main
from streams.dev.kafka import EmbeddedKafka
from streams.errors import ConfigError
from streams.settings import Settings
from streams.topics import CATALOGUE, consumer_group, coordinators_ready, ensure_topics
from tests.integration.conftest import create_topic
from tests.support import free_port

pytestmark = pytest.mark.integration


async def topic_config_source(bootstrap: str, topic: str) -> dict[str, tuple[str, str]]:
    """Each config's value, and whether it was set on the topic or comes from the broker."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        [response] = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    finally:
        await admin.close()
    [(*_, configs)] = response.resources
    # describe_configs v1+: (name, value, read_only, config_source, is_sensitive, synonyms);
    # source 1 is DYNAMIC_TOPIC_CONFIG, set on the topic
    return {c[0]: (c[1], "topic" if c[3] == 1 else "broker") for c in configs}


async def topic_config(bootstrap: str, topic: str) -> dict[str, str]:
    configs = await topic_config_source(bootstrap, topic)
    return {name: value for name, (value, _) in configs.items()}


def test_topics_get_min_insync_replicas_and_are_created_once(kafka: EmbeddedKafka) -> None:
    settings = Settings(kafka_bootstrap=kafka.bootstrap, app_id=f"ttopics{uuid.uuid4().hex[:8]}")
    created = asyncio.run(ensure_topics(settings))

    assert len(created) == 6
    config = asyncio.run(topic_config(kafka.bootstrap, settings.topic("requests")))
    assert config["min.insync.replicas"] == "1"
    changelog = asyncio.run(topic_config(kafka.bootstrap, settings.topic("ledger-changelog")))
    assert changelog["max.message.bytes"] == "1048588"  # whatever the broker's own default
    # each topic's cleanup policy is its own, not the broker's default (which may be compact:
    # the lifecycle topic would keep a request's last transition only, [requests] a person's
    # last message)
    policies = {
        spec.name: asyncio.run(topic_config_source(kafka.bootstrap, spec.full_name(settings)))[
            "cleanup.policy"
        ]
        for spec in CATALOGUE
    }
    assert policies == {
        spec.name: ("compact" if spec.name.endswith("-changelog") else "delete", "topic")
        for spec in CATALOGUE
    }
    assert asyncio.run(ensure_topics(settings)) == []  # idempotent


def test_a_ledger_changelog_taking_smaller_records_than_an_entry_is_refused_by_name(
    kafka: EmbeddedKafka,
) -> None:
    """A person's ledger entry is one changelog record: a changelog made elsewhere that takes
    smaller ones than TALKSTREAM_MAX_ENTRY_BYTES refused the worker's larger entries, logged
    as WARNINGs only, and the state was silently not saved."""
    from aiokafka.admin import NewTopic

    settings = Settings(kafka_bootstrap=kafka.bootstrap, app_id=f"tentry{uuid.uuid4().hex[:8]}")
    changelog = settings.topic("ledger-changelog")

    async def create() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap)
        await admin.start()
        try:
            config = {"cleanup.policy": "compact", "max.message.bytes": "200000"}
            await admin.create_topics([NewTopic(changelog, 8, 1, topic_configs=config)])
        finally:
            await admin.close()

    asyncio.run(create())
    with pytest.raises(ConfigError) as refused:
        asyncio.run(ensure_topics(settings))
    assert str(refused.value).startswith(
        f"{changelog} takes records of at most 200000 bytes (its max.message.bytes), less "
        "than a person's ledger entry may need (787456: TALKSTREAM_MAX_ENTRY_BYTES 786432 "
        "and its key): raise it (kafka-configs.sh --alter"
    )
    smaller = settings.model_copy(update={"max_entry_bytes": 131072})
    assert asyncio.run(ensure_topics(smaller)) == []  # a budget it takes: the topics are there


def test_more_replicas_than_brokers_is_refused_by_name(kafka: EmbeddedKafka) -> None:
    settings = Settings(
        kafka_bootstrap=kafka.bootstrap,
        app_id=f"ttopics{uuid.uuid4().hex[:8]}",
        replication_factor=3,
    )
    # each topic named, the broker's reason said once (33bcc06: it was said once per topic)
    named = re.escape(settings.topic("requests"))
    refused = rf"refused to create topics .*{named}.*replication factor"
    with pytest.raises(ConfigError, match=refused):
        asyncio.run(ensure_topics(settings))


async def topic_names(bootstrap: str, app_id: str) -> set[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return {name for name in await admin.list_topics() if name.startswith(f"{app_id}-")}
    finally:
        await admin.close()


def test_topics_of_another_partition_count_end_every_start_with_the_count_to_set(
    kafka: EmbeddedKafka, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A person's messages and ledger state live in the partition their key maps to: a process
    set for another count than the topics were created with is refused, naming the count."""
    app_id = f"tparts{uuid.uuid4().hex[:8]}"
    created = Settings(kafka_bootstrap=kafka.bootstrap, app_id=app_id, partitions=4)
    asyncio.run(ensure_topics(created))
    names = sorted(spec.full_name(created) for spec in CATALOGUE)

    monkeypatch.setenv("TALKSTREAM_KAFKA_BOOTSTRAP", kafka.bootstrap)
    monkeypatch.setenv("TALKSTREAM_APP_ID", app_id)
    monkeypatch.setenv("TALKSTREAM_PARTITIONS", "8")
    result = CliRunner().invoke(main, ["topics"])
    assert (result.exit_code, result.output) == (
        1,
        f"Error: TALKSTREAM_PARTITIONS is 8, but the topics have 4 partitions: "
        f"{', '.join(names)}. A topic's partitions are fixed when it is created, and every "
        "process must use that count (a person's messages and state live in the partition "
        "their key maps to): set TALKSTREAM_PARTITIONS=4, or give this deployment a "
        "TALKSTREAM_APP_ID of its own\n",
    )
    monkeypatch.setenv("TALKSTREAM_PARTITIONS", "4")
    assert CliRunner().invoke(main, ["topics"]).output == "all topics exist\n"


def test_a_bootstrap_at_the_controllers_port_is_named_as_no_broker(
    kafka: EmbeddedKafka, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The embedded broker's KRaft controller listens on the next port (KAFKA_CONTROLLER_PORT):
    a bootstrap set to it lets a client in and answers no Metadata, which every command said as
    `Kafka at ... is not reachable: KafkaConnectionError`, as if nothing answered there."""
    controller = f"127.0.0.1:{kafka.controller_port}"
    monkeypatch.setenv("TALKSTREAM_KAFKA_BOOTSTRAP", controller)
    result = CliRunner().invoke(main, ["topics"])
    assert (result.exit_code, result.output) == (
        1,
        f"Error: Kafka at {controller} answers, but not as a broker: it serves no Metadata "
        "requests, as a KRaft controller's listener does (the controller port, not the "
        f"broker's?); Kafka's address is TALKSTREAM_KAFKA_BOOTSTRAP={controller}\n",
    )


def test_topics_that_disagree_are_named_and_no_missing_one_is_created_beside_them(
    kafka: EmbeddedKafka,
) -> None:
    settings = Settings(
        kafka_bootstrap=kafka.bootstrap, app_id=f"tparts{uuid.uuid4().hex[:8]}", partitions=4
    )
    requests, generate = settings.topic("requests"), settings.topic("generate")
    asyncio.run(create_topic(kafka.bootstrap, requests, partitions=2))
    asyncio.run(create_topic(kafka.bootstrap, generate, partitions=3))
    with pytest.raises(ConfigError) as refused:
        asyncio.run(ensure_topics(settings))
    assert str(refused.value).startswith(
        f"TALKSTREAM_PARTITIONS is 4, but the topics have 2 partitions: {requests}; "
        f"3 partitions: {generate}. "
    )
    assert ": recreate the topics with one count, or give" in str(refused.value)
    # the missing ones were not created with a third count
    assert asyncio.run(topic_names(kafka.bootstrap, settings.app_id)) == {requests, generate}


def test_group_coordinators_are_ready_before_the_consumers_ask(kafka: EmbeddedKafka) -> None:
    """What the worker and the projector wait for at a start: Kafka names a coordinator for
    each of their groups (a consumer asking earlier logs an ERROR and asks again)."""
    settings = Settings(kafka_bootstrap=kafka.bootstrap, app_id=f"tgroups{uuid.uuid4().hex[:8]}")
    groups = [consumer_group(settings, role) for role in (None, "generator", "projector")]
    assert groups[0] == settings.app_id and groups[2] == f"{settings.app_id}-projector"
    asyncio.run(coordinators_ready(settings, groups, timeout=30.0))

    async def coordinators() -> list[int]:
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap)
        await admin.start()
        try:
            return [await admin.find_coordinator(group) for group in groups]
        finally:
            await admin.close()

    assert len(asyncio.run(coordinators())) == 3  # each answered at once, no error


def test_group_coordinators_out_of_reach_leave_the_asking_to_the_consumers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = Settings(kafka_bootstrap=f"127.0.0.1:{free_port()}", app_id="tgroups-nobody")
    with caplog.at_level("INFO", logger="streams.topics"):
        asyncio.run(coordinators_ready(settings, ["tgroups-nobody"], timeout=1.0))
    assert "the consumers will ask" in caplog.text


def test_a_partition_log_start_and_a_range_read_from_before_it(kafka: EmbeddedKafka) -> None:
    """The ledger expects a partition it has no offset mark of from its log start
    (``streams.gaps``): 0 for a partition of which Kafka deleted nothing, the first offset it
    still holds once retention (here, deleteRecords) deleted some; and a range read back from
    before it starts there (aiokafka's default reset, to the latest, read nothing)."""
    from aiokafka import AIOKafkaProducer, TopicPartition
    from aiokafka.admin.records_to_delete import RecordsToDelete

    from streams.topics import log_start, read_range

    settings = Settings(kafka_bootstrap=kafka.bootstrap, app_id=f"tstart{uuid.uuid4().hex[:8]}")
    topic = settings.topic("requests")

    async def scenario() -> tuple[int, int, int, list[int]]:
        await create_topic(kafka.bootstrap, topic, 2)
        producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap)
        await producer.start()
        try:
            for n in range(5):
                await producer.send_and_wait(topic, f"r{n}".encode(), partition=1)
        finally:
            await producer.stop()
        empty, before = await log_start(settings, topic, 0), await log_start(settings, topic, 1)
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap)
        await admin.start()
        try:
            await admin.delete_records({TopicPartition(topic, 1): RecordsToDelete(3)})
        finally:
            await admin.close()
        after = await log_start(settings, topic, 1)
        records = await read_range(settings, topic, 1, 0, 5)
        return empty, before, after, [r.offset for r in records]

    assert asyncio.run(scenario()) == (0, 0, 3, [3, 4])
