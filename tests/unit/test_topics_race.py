"""``ensure_topics`` and a topic the controller has and the broker asked does not list yet (a
KRaft broker applies the metadata log a moment after CreateTopics returns): its partitions are
compared before any missing topic is created, as for a topic listed at once. Seen in an
integration run: a topic created with another count a moment before was not listed, the
others were created beside it, and the mismatch went unnamed."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.errors import InvalidReplicationFactorError, TopicAlreadyExistsError

from streams import topics
from streams.errors import ConfigError
from streams.settings import Settings
from streams.topics import ensure_topics


class LateAdmin:
    """An admin client of a cluster where ``existing`` topics (name -> partitions) were just
    created by another process: the broker lists them only from the ``listed_from``-th list
    on; the controller (CreateTopics) knows them at once. ``created``: what it was made to
    create."""

    existing: dict[str, int] = {}
    listed_from = 2
    lists = 0
    created: list[str] = []

    def __init__(self, **_: Any) -> None:
        pass

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def list_topics(self) -> list[str]:
        cls = type(self)
        cls.lists += 1
        return list(cls.existing) if cls.lists >= cls.listed_from else []

    async def describe_topics(self, names: list[str]) -> list[dict[str, Any]]:
        return [{"topic": n, "error_code": 0, "partitions": [{}] * self.existing[n]} for n in names]

    async def create_topics(self, new: list[Any], validate_only: bool = False) -> Any:
        errors = [
            (t.name, TopicAlreadyExistsError.errno if t.name in self.existing else 0, None)
            for t in new
        ]
        if not validate_only:
            type(self).created += [t.name for t in new if t.name not in self.existing]
        return SimpleNamespace(topic_errors=errors)

    async def describe_configs(self, resources: list[Any]) -> list[Any]:
        entries = [("max.message.bytes", str(1 << 30))]
        return [SimpleNamespace(resources=[(0, "", 2, resources[0].name, entries)])]


async def known_everywhere(*_: Any) -> None:
    """(The brokers' metadata, asked after a creation: not this test's.)"""


def test_a_topic_not_listed_yet_has_its_partitions_compared_before_any_is_created(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = Settings(kafka_bootstrap="127.0.0.1:1", app_id="trace", partitions=4)
    requests = settings.topic("requests")
    monkeypatch.setattr(LateAdmin, "existing", {requests: 2})
    monkeypatch.setattr(LateAdmin, "created", [])
    monkeypatch.setattr(topics, "AIOKafkaAdminClient", LateAdmin)
    monkeypatch.setattr(topics, "_until_every_broker_knows", known_everywhere)
    with pytest.raises(ConfigError) as refused:
        asyncio.run(ensure_topics(settings, timeout=5.0))
    assert str(refused.value).startswith(
        f"TALKSTREAM_PARTITIONS is 4, but the topics have 2 partitions: {requests}. "
    )
    assert LateAdmin.created == []  # none beside it with another count


def test_partitions_added_to_a_topic_since_are_named_as_such() -> None:
    """``kafka-topics.sh --alter --partitions`` on a live deployment's [requests]: every start
    is refused. It said the count set was the topics' own ("is 8, but the topics have 8
    partitions: ...; 10 partitions: ...") and to recreate the topics (the audit log with them),
    where README's way is a new app id."""
    settings = Settings(kafka_bootstrap="127.0.0.1:1", app_id="tgrown", partitions=8)
    counts = {settings.topic(t): 8 for t in ("generate", "ledger-changelog", "lifecycle")}
    counts[settings.topic("requests")] = 10
    assert topics.partitions_differ(settings, counts) == (
        "TALKSTREAM_PARTITIONS is 8, as the topics were created (tgrown-generate, "
        "tgrown-ledger-changelog, tgrown-lifecycle), but partitions were added since to "
        "tgrown-requests (10 partitions). A person's messages and state live in the partition "
        "their key maps to, so every topic must keep the count it was created with, and Kafka "
        "takes no partition away: give this deployment a TALKSTREAM_APP_ID of its own (README, "
        "Operations: Scale out)"
    )


class RefusingAdmin(LateAdmin):
    """A single broker's controller: no topic exists, and every one asked for with a
    replication factor of 3 is refused, as Kafka 4.4 words it."""

    existing: dict[str, int] = {}
    listed_from = 1
    WHY = (
        "Unable to replicate the partition 3 time(s): The target replication factor of 3 "
        "cannot be reached because only 1 broker(s) are registered or some brokers have all "
        "their log directories cordoned."
    )

    async def create_topics(self, new: list[Any], validate_only: bool = False) -> Any:
        errors = [(t.name, InvalidReplicationFactorError.errno, self.WHY) for t in new]
        return SimpleNamespace(topic_errors=errors)


def test_a_replication_factor_above_the_brokers_is_said_once_with_what_to_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`TALKSTREAM_REPLICATION_FACTOR=3` (README's production value) against the embedded
    broker: Kafka's sentence was said once a topic, six times in one line, and what to set
    not at all."""
    settings = Settings(kafka_bootstrap="127.0.0.1:1", app_id="rf", replication_factor=3)
    monkeypatch.setattr(topics, "AIOKafkaAdminClient", RefusingAdmin)
    with pytest.raises(ConfigError) as refused:
        asyncio.run(ensure_topics(settings, timeout=5.0))
    names = ", ".join(settings.topic(spec.name) for spec in topics.CATALOGUE)
    assert str(refused.value) == (
        f"Kafka refused to create topics {names}: {RefusingAdmin.WHY} "
        "(TALKSTREAM_REPLICATION_FACTOR is 3: give at most the number of brokers, 1 for a "
        "single broker)"
    )
