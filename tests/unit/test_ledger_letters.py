"""A dead letter of work the ledger gave up on names the [requests] record it was deciding:
its command was never read from a record of its own (partition and offset -1), but the failed
result or the expired deadline that ended it was, and an operator can find it there."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from models.events import DeadLetter
from streams.agents.ledger import OFFSET_MARK, Ledger
from streams.codecs import decode, encode
from streams.observability import WorkerMetrics
from streams.runtime import DeadLetters, Topics
from tests.unit.domain_builders import PERSON, expired, generation_failed, publication_failed
from tests.unit.domain_builders import generated as generation_succeeded
from tests.unit.domain_builders import received as webhook
from tests.unit.test_gaps import POLICY, TOPIC, Event, FixedClock, Quiet, Rec, Sent, Stream


class Named(Sent):
    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def get_topic_name(self) -> str:
        return self.name


async def nothing_skipped(topic: str, partition: int, start: int, end: int) -> list[Rec]:
    raise AssertionError("no gap: the messages arrive in order from the first")


def letters_after(*messages: object, metrics: WorkerMetrics | None = None) -> list[DeadLetter]:
    """The letters a ledger on partition 2 wrote, given these messages at offsets 10, 11, ..."""
    deadletter = Sent()
    metrics = metrics or WorkerMetrics()
    ledger = Ledger(
        {},
        POLICY,
        Topics(
            requests=Named(TOPIC),
            generate=Named("t-generate"),
            completions=Named("t-completions"),
            lifecycle=Sent(),
            deadletter=None,
        ),
        nothing_skipped,
        30_000,
        DeadLetters(deadletter, metrics.dead_letters, FixedClock()),
        metrics,
        FixedClock(),
    )
    events = [
        Event(Rec(TOPIC, 2, 10 + i), PERSON.encode(), encode(m)) for i, m in enumerate(messages)
    ]
    asyncio.run(ledger.consume(Stream(events)))
    return [decode(DeadLetter, raw) for raw in deadletter.values]


def test_a_refused_generation_names_the_failed_result_it_was_deciding() -> None:
    [letter] = letters_after(webhook("req-1"), generation_failed("req-1"))
    assert (letter.topic, letter.partition, letter.offset) == ("t-generate", -1, -1)
    assert (letter.decided_topic, letter.decided_partition, letter.decided_offset) == (
        TOPIC,
        2,
        11,
    )
    assert letter.decided == f"{TOPIC}/2/11"
    assert letter.request_id == "req-1" and letter.reason.startswith("BadRequest: ")


def test_a_publication_given_up_on_names_the_result_or_the_deadline_that_ended_it() -> None:
    [refused] = letters_after(
        webhook("req-1"), generation_succeeded("req-1"), publication_failed("req-1")
    )
    assert (refused.topic, refused.decided) == ("t-completions", f"{TOPIC}/2/12")

    deadlines = [expired("req-1", attempt, "publishing") for attempt in (1, 2, 3)]
    [lost] = letters_after(webhook("req-1"), generation_succeeded("req-1"), *deadlines)
    assert (lost.topic, lost.decided) == ("t-completions", f"{TOPIC}/2/14")  # the third


def test_a_message_that_does_not_decode_is_its_own_source() -> None:
    deadletter = Sent()
    metrics = WorkerMetrics()
    letters = DeadLetters(deadletter, metrics.dead_letters, FixedClock())
    asyncio.run(
        letters.decoded(
            lambda raw: decode(DeadLetter, raw),
            topic=TOPIC,
            partition=1,
            offset=7,
            key=None,
            value=b"{",
        )
    )
    [letter] = [decode(DeadLetter, raw) for raw in deadletter.values]
    assert (letter.topic, letter.partition, letter.offset) == (TOPIC, 1, 7)
    assert letter.decided is None


README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_dead_letter_alert_names_the_requests_given_up_on_that_it_counts() -> None:
    """README's alert on ``talkstream_dead_letters_total`` said "poison input, a bug, or
    Talkable refusing writes", and an operator read OpenAI's refusals as none of those: each
    request that ends ``generation_failed`` writes a letter (of [generate]) too."""
    metrics = WorkerMetrics()
    [letter] = letters_after(webhook("req-1"), generation_failed("req-1"), metrics=metrics)
    assert letter.topic == "t-generate"
    assert (
        metrics.registry.get_sample_value("talkstream_dead_letters_total", {"topic": "t-generate"})
        == 1
    )
    alerts = README.read_text(encoding="utf-8").split("**Alerts**", 1)[1]
    [row] = [line for line in alerts.splitlines() if "`talkstream_dead_letters_total`" in line]
    assert "`generation_failed`" in row and "`publish_failed`" in row


def test_a_record_dead_lettered_is_passed_by_the_mark_and_not_lettered_again_by_a_new_owner(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The ledger writes its offset mark only every 32 offsets (and after a gap), and a new
    owner of the partition (or the worker restarted) re-reads from there: deciding a record
    again changes nothing, but a record that does not decode was dead-lettered again, a second
    letter of the same record (seen with two workers: offsets 485-487 lettered twice, two
    minutes apart, ``talkstream_dead_letters_total`` rising with no new bad input). A batch
    that letters a record of its own writes the mark past it once the letter is acknowledged;
    the webhooks after it, in the next batch, are decided as any (the mark is not moved past
    them), and the new owner re-reads from them, not from before the poison."""
    table: dict[bytes, bytes] = {}
    first = Quiet(table)
    first.webhooks[51] = b"\xff\xfe not json"
    marks: list[int] = []

    async def scenario() -> Quiet:
        await first.deliver(50, 51)
        marks.append(int(table[OFFSET_MARK + b"3"]))
        await first.deliver(52, 53)
        marks.append(int(table[OFFSET_MARK + b"3"]))
        # the partition moves (or the worker restarts): the next owner's first message is 54
        second = Quiet(table)
        second.webhooks[51] = first.webhooks[51]
        await second.deliver(54)
        return second

    with caplog.at_level("INFO", logger="streams.gaps"):
        second = asyncio.run(scenario())
    assert second.deadletter.values == []
    [letter] = [decode(DeadLetter, raw) for raw in first.deadletter.values]
    assert (letter.topic, letter.partition, letter.offset) == (TOPIC, 3, 51)
    assert "does not decode" in letter.reason
    assert marks == [52, 52]  # past the poison, not past 52 and 53 before they were decided
    assert first.decided() == {"req-50", "req-52", "req-53"}
    assert second.decided() == {"req-54"}  # those it re-read were decided: no change
    re_read = [r.getMessage() for r in caplog.records if "since its last mark" in r.getMessage()]
    assert re_read == [
        "ledger re-reads topic=t-requests partition=3 offsets=52..53, since its last mark"
    ]


def test_a_record_whose_decision_failed_is_passed_by_the_mark_too(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A record the ledger failed on (a bug: ``ledger error``) is dead-lettered and leaves no
    state either: its batch writes the mark past it, and the next owner does not letter it
    again (deciding it again would fail again)."""
    import streams.agents.ledger as ledger_module

    decide = ledger_module.handle

    def failing(state, message, policy, now_ms):  # type: ignore[no-untyped-def]
        if message.request_id == "req-51":
            raise RuntimeError("a bug")
        return decide(state, message, policy, now_ms)

    monkeypatch.setattr(ledger_module, "handle", failing)
    table: dict[bytes, bytes] = {}
    first = Quiet(table)

    async def scenario() -> Quiet:
        await first.deliver(50, 51)
        await first.deliver(52, 53)
        second = Quiet(table)
        await second.deliver(54)
        return second

    second = asyncio.run(scenario())
    [letter] = [decode(DeadLetter, raw) for raw in first.deadletter.values]
    assert (letter.offset, letter.request_id) == (51, "req-51")
    assert letter.reason.startswith("ledger error: RuntimeError")
    assert second.deadletter.values == []
    assert int(table[OFFSET_MARK + b"3"]) == 55  # the second owner's first message, marked
