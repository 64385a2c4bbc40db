"""Partitions added to the ledger's changelog rather than to [requests] (``kafka-topics.sh
--alter`` on the wrong topic), named as such: Kafka takes no partition away, so the topic with
more partitions is the one that grew. The ingress said "[requests] has 8 partitions but the
ledger's changelog 12: a webhook could land where no ledger reads it", the other way round
(every webhook still goes to one of the 8, which the ledgers read); the worker said a record
in the changelog's partition 9 "stops the worker that reads it" (nothing writes there)."""

from __future__ import annotations

from types import SimpleNamespace

from faust.types import TP

from streams.ingress import KafkaSink
from streams.settings import Settings
from streams.topics import partitions_added, partitions_differ, unpaired

SETTINGS = Settings(kafka_bootstrap="127.0.0.1:1", app_id="tgrown", partitions=8)
REQUESTS = SETTINGS.topic("requests")
CHANGELOG = SETTINGS.topic("ledger-changelog")


def producer_seeing(counts: dict[str, int]) -> SimpleNamespace:
    """A producer whose metadata has ``counts`` partitions of each topic."""
    cluster = SimpleNamespace(partitions_for_topic=lambda t: set(range(counts[t])) or None)
    return SimpleNamespace(client=SimpleNamespace(cluster=cluster))


def sink() -> KafkaSink:
    return KafkaSink({}, ledger_changelog=CHANGELOG, partitions=8)


def test_the_ingress_names_a_grown_changelog_as_the_topic_that_grew() -> None:
    """It said the webhook "could be decided by a worker without its person's ledger state":
    the worker's ledger now decides none of a partition of [requests] it holds without the
    changelog's of the same number (``unpaired``), so the webhook waits, undecided."""
    said = sink().split(producer_seeing({REQUESTS: 8, CHANGELOG: 12}), REQUESTS)
    assert said == (
        f"the ledger's {CHANGELOG} has 12 partitions but {REQUESTS} 8: a webhook could wait "
        f"in Kafka, undecided, on a worker that holds its partition of {REQUESTS} without its "
        "person's ledger state (partitions added to the ledger's changelog, which faust then "
        f"assigns apart from {REQUESTS}; to change the count, deploy under a new "
        "TALKSTREAM_APP_ID)"
    )


def test_the_ingress_names_grown_requests_as_what_makes_a_webhook_wait() -> None:
    """It said a webhook "could land where no ledger reads it": the ingress writes a person's
    record to their partition among the count the topics were created with (``partition_of``),
    which a ledger reads; but faust assigns the two topics apart, so it could wait, undecided.
    A sink that maps keys over the partitions Kafka has now (none given) still says it could
    land where no ledger reads it."""
    said = sink().split(producer_seeing({REQUESTS: 12, CHANGELOG: 8}), REQUESTS)
    assert said == (
        f"{REQUESTS} has 12 partitions but the ledger's {CHANGELOG} 8: a webhook could wait in "
        f"Kafka, undecided, on a worker that holds its partition of {REQUESTS} without its "
        "person's ledger state (partitions added to a deployment's topics, which faust then "
        "assigns apart from the ledger's changelog; to change the count, deploy under a new "
        "TALKSTREAM_APP_ID)"
    )
    assert sink().split(producer_seeing({REQUESTS: 8, CHANGELOG: 8}), REQUESTS) is None
    unmapped = KafkaSink({}, ledger_changelog=CHANGELOG)
    assert unmapped.split(producer_seeing({REQUESTS: 12, CHANGELOG: 8}), REQUESTS) == (
        f"{REQUESTS} has 12 partitions but the ledger's {CHANGELOG} 8: a webhook could land "
        "where no ledger reads it (partitions added to a deployment's topics; to change the "
        "count, deploy under a new TALKSTREAM_APP_ID)"
    )


def test_a_refused_start_says_why_a_grown_changelog_cannot_work() -> None:
    counts = {SETTINGS.topic(t): 8 for t in ("requests", "generate", "lifecycle")}
    counts[CHANGELOG] = 10
    said = partitions_differ(SETTINGS, counts)
    assert said.startswith(
        "TALKSTREAM_PARTITIONS is 8, as the topics were created (tgrown-generate, "
        "tgrown-lifecycle, tgrown-requests), but partitions were added since to "
        "tgrown-ledger-changelog (10 partitions). The ledger's table is paired with [requests] "
        "partition by partition (by faust's assignor) only while their counts agree, so a "
        "person's requests could wait in Kafka, undecided, on a worker without their state, "
        "so every topic must keep the count it was created with"
    ), said


def test_a_worker_given_a_grown_changelogs_partitions_says_what_that_breaks() -> None:
    said = partitions_added({TP(REQUESTS, 3), TP(CHANGELOG, 3), TP(CHANGELOG, 9)}, 8)
    assert said == (
        f"partitions added to a deployment's topics: this worker holds {CHANGELOG} partition "
        "9, past the 8 the topics were created with: the ledger's changelog has more "
        "partitions than [requests], and faust then assigns them apart: a worker given a "
        "person's [requests] partition without their ledger state decides none of it (their "
        "records wait in Kafka); to change the count, deploy under a new TALKSTREAM_APP_ID"
    )
    assert "stops the worker" not in said  # nothing is written to those partitions
    both = partitions_added({TP(REQUESTS, 8), TP(CHANGELOG, 9)}, 8)
    assert both is not None
    assert (
        f"holds {REQUESTS} partition 8, past the 8 the topics were created with, where no " in both
    )
    assert f"; and this worker holds {CHANGELOG} partition 9, past the 8" in both


def test_requests_partitions_held_without_their_ledger_state_are_named() -> None:
    """faust's assignor pairs [requests] partition N with the changelog's partition N only
    while their counts agree: once partitions were added to one, a worker may be given
    [requests] partition 2 while another holds changelog partition 2 (its people's state).
    Those are named, past the count or not: only those below it hold people's records."""
    both = {TP(REQUESTS, p) for p in (0, 1)} | {TP(CHANGELOG, p) for p in (0, 1)}
    assert unpaired(both | {TP(REQUESTS, 9)}, 8, "tgrown") == (set(), None)
    assert unpaired(both | {TP(CHANGELOG, 2)}, 8, "tgrown") == (set(), None)  # its owner's to say
    apart, said = unpaired(both | {TP(REQUESTS, 5), TP(REQUESTS, 2), TP("other", 3)}, 8, "tgrown")
    assert apart == {TP(REQUESTS, 2), TP(REQUESTS, 5)}
    assert said == (
        f"{REQUESTS} and the ledger's {CHANGELOG} assigned apart: this worker holds {REQUESTS} "
        f"partition 2, 5 without the ledger's state of its people (the same partition of "
        f"{CHANGELOG} is another worker's), so its ledger decides none of their records, which "
        "wait in Kafka, until the deployment is fixed (faust's assignor pairs the two partition "
        "by partition only while their counts agree: partitions were added to one of them; "
        "deploy under a new TALKSTREAM_APP_ID)"
    )
