"""Outputs Kafka refuses for good (a record larger than the topic's ``max.message.bytes`` or
the producer's ``max_request_size``): the ledger's batch is stored and the request ends with
the reason, instead of deciding the batch again for ever (the partition stalled)."""

from __future__ import annotations

import asyncio
import base64

import pytest
from aiokafka.errors import MessageSizeTooLargeError

from models.events import (
    ChatRequest,
    DeadLetter,
    GenerateText,
    GenerationAttemptFailed,
    LifecycleEvent,
)
from models.lifecycle import State
from streams.agents.work import Timed
from streams.clients.openai_chat import Completion
from streams.codecs import decode, decode_requests, encode
from streams.upstream.scheduler import Outcome
from tests.unit.domain_builders import PERSON, Ledger, received
from tests.unit.test_executor_marks import generator
from tests.unit.test_gaps import Quiet, Sent

LIMIT = 2_000  # bytes a fake topic takes


class Limited(Sent):
    """A topic that takes records of up to ``limit`` bytes: a larger one is refused by the
    broker (its delivery fails) or, ``at_send``, by the producer (``send`` raises, as
    aiokafka's does for a record over ``max_request_size``)."""

    def __init__(self, name: str, at_send: bool = False, limit: int = LIMIT) -> None:
        super().__init__()
        self.name, self.at_send, self.limit = name, at_send, limit
        self.refused: list[bytes] = []

    def get_topic_name(self) -> str:
        return self.name

    async def send(self, *, key: bytes | None = None, value: bytes) -> asyncio.Future[None]:
        if len(value) <= self.limit:
            return await super().send(key=key, value=value)
        self.refused.append(value)
        error = MessageSizeTooLargeError(f"{len(value)} bytes")
        if self.at_send:
            raise error
        delivery = asyncio.get_running_loop().create_future()
        delivery.set_exception(error)
        return delivery


def big_webhook(request_id: str) -> bytes:
    webhook = received(request_id, delivery_id=f"d-{request_id}")
    chat = ChatRequest(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "x" * 3 * LIMIT}], max_tokens=9
    )
    return encode(
        webhook.model_copy(update={"spec": webhook.spec.model_copy(update={"chat": chat})})
    )


@pytest.mark.parametrize("at_send", [False, True], ids=["by the broker", "by the producer"])
def test_a_command_kafka_refuses_ends_its_request_and_the_partition_flows_on(
    at_send: bool,
) -> None:
    """A webhook whose GenerateText is larger than [generate] takes (a prompt of megabytes, a
    topic with a small ``max.message.bytes``): Kafka refused the command at every decision, and
    the batch was decided again for ever; the partition's later webhooks waited behind it (or,
    refused at ``send``, the webhook was dead-lettered as a ledger error, with no trace in
    [lifecycle]). Now its attempt fails (``RecordTooLarge``, no retry), the request ends
    ``generation_failed``, and its letter (without the command, too large for [deadletter]
    too) says why; the webhook behind it is decided."""
    generate = Limited("t-generate", at_send)
    quiet = Quiet(generate=generate)
    deadletter = quiet.deadletter = Limited("t-deadletter", at_send)
    quiet.ledger._dead_letters._topic = deadletter
    quiet.ledger._emit._topics = quiet.ledger._topics = quiet.ledger._topics.__class__(
        **{**quiet.ledger._topics.__dict__, "deadletter": deadletter}
    )
    quiet.webhooks[50] = big_webhook("req-50")

    async def run() -> None:
        await quiet.deliver(50)
        reports = [decode(GenerationAttemptFailed, raw) for raw in quiet.requests.values]
        assert [(r.request_id, r.error_class, r.retriable) for r in reports] == [
            ("req-50", "RecordTooLarge", False)
        ]
        quiet.webhooks[51] = quiet.requests.values[0]  # the report, back in [requests]
        await quiet.deliver(51, 52)

    asyncio.run(run())
    events = [decode(LifecycleEvent, raw) for raw in quiet.lifecycle.values]
    ended = {e.request_id: e for e in events if e.state == State.GENERATION_FAILED}
    assert set(ended) == {"req-50"}
    assert ended["req-50"].error_class == "RecordTooLarge"
    assert "t-generate" in (ended["req-50"].error_message or "")
    assert [decode(GenerateText, raw).request_id for raw in generate.values] == ["req-52"]
    letters = [decode(DeadLetter, raw) for raw in deadletter.values]
    assert [(letter.request_id, letter.topic, letter.value_b64) for letter in letters] == [
        ("req-50", "t-generate", None)
    ]
    assert "MessageSizeTooLargeError" in letters[0].reason
    assert "value left out" in letters[0].reason
    counted = quiet.metrics.registry.get_sample_value
    assert counted("talkstream_transitions_total", {"state": "generation_failed"}) == 1
    # one letter, counted once (the one refused and the one sent in its place were two)
    assert counted("talkstream_dead_letters_total", {"topic": "t-generate"}) == 1


def test_a_lifecycle_event_kafka_refuses_is_dead_lettered_and_the_batch_stored() -> None:
    """[lifecycle] refuses a request's events (a topic set to take less than they are): the
    ledger decided the batch again for ever. Now each refused event goes to [deadletter] (its
    value kept: that topic takes it), and the batch is stored: the command went out once."""
    quiet = Quiet(table := {})
    lifecycle = quiet.lifecycle = Limited("t-lifecycle", limit=100)  # every event is larger
    quiet.ledger._emit._topics = quiet.ledger._topics = quiet.ledger._topics.__class__(
        **{**quiet.ledger._topics.__dict__, "lifecycle": lifecycle}
    )
    asyncio.run(quiet.deliver(50))
    asyncio.run(quiet.deliver(51))
    letters = [decode(DeadLetter, raw) for raw in quiet.deadletter.values]
    assert {letter.topic for letter in letters} == {"t-lifecycle"}
    refused = [
        decode(LifecycleEvent, base64.b64decode(letter.value_b64 or ""))
        for letter in letters
        if letter.topic == "t-lifecycle"
    ]
    assert {(event.request_id, event.state) for event in refused} == {
        (f"req-{offset}", state)
        for offset in (50, 51)
        for state in (State.RECEIVED, State.ADMITTED, State.GENERATING)
    }
    assert "MessageSizeTooLargeError" in letters[0].reason
    commands = [decode(GenerateText, raw).request_id for raw in quiet.generate.values]
    assert commands == ["req-50", "req-51"]  # each batch stored: nothing decided again
    assert PERSON.encode() in table


class Results(Limited):
    """[requests] as an executor reports to it: records of up to ``limit`` bytes."""

    def __init__(self, at_send: bool) -> None:
        super().__init__("t-requests", at_send, limit=LIMIT)


@pytest.mark.parametrize("at_send", [False, True], ids=["by the broker", "by the producer"])
def test_a_result_kafka_refuses_fails_its_attempt_instead_of_being_called_again(
    at_send: bool,
) -> None:
    """A generated text larger than [requests] takes: the executor logged that it could not
    report it and left it to the ledger's deadline, which re-issued the call (billed again) and
    lost it again, until the attempts ran out as ``DeadlineExpired``. Now the attempt is
    reported failed, ``RecordTooLarge``, not retriable: the ledger ends it at once."""
    results = Results(at_send)
    executor = generator(results)  # type: ignore[arg-type]
    [issued] = Ledger().send(received("req-1")).commands
    assert isinstance(issued, GenerateText)
    text = Completion(
        text="y" * 3 * LIMIT, model="gpt-4o-mini", prompt_tokens=9, completion_tokens=9
    )
    asyncio.run(executor._report(issued, Outcome(Timed(text, 5), None, 0.0, 1)))
    [report] = [decode_requests(raw) for raw in results.values]
    assert isinstance(report, GenerationAttemptFailed)
    assert (report.request_id, report.attempt, report.error_class, report.retriable) == (
        "req-1",
        1,
        "RecordTooLarge",
        False,
    )
    assert "t-requests" in report.error_message
    assert "MessageSizeTooLargeError" in report.error_message
