"""A person's ledger entry is one record of the ledger's changelog: a request that would make it
larger than ``Policy.max_entry_bytes`` ends ``generation_failed`` with ``EntryTooLarge`` (at
admission, its params; at its generation's success, its text), dead-lettered; the rest of the
person's requests go on, and the usage window stays exact."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.events import ChatRequest, RedriveRequested, RequestReceived
from models.ledger import PersonState, Policy
from models.lifecycle import State
from models.state import ENTRY_TOO_LARGE, entry_bytes
from models.usage import Window
from streams.codecs import encode
from streams.settings import Settings
from tests.unit.domain_builders import (
    PERSON,
    T0,
    Ledger,
    generated,
    limit,
    published,
    received,
    types_of,
)

BUDGET = 64 * 1024
HAPPY = ["RequestReceived", "RequestAdmitted", "GenerationStarted"]
NO_ROOM = [*HAPPY, "GenerationFailed"]


def big(request_id: str, prompt_bytes: int, **kwargs: object) -> RequestReceived:
    """A webhook whose prompt is ``prompt_bytes`` long."""
    r = received(request_id, **kwargs)  # type: ignore[arg-type]
    messages = [{"role": "user", "content": "p" * prompt_bytes}]
    chat = ChatRequest(model="gpt-4o-mini", messages=messages, max_tokens=150)
    return r.model_copy(update={"spec": r.spec.model_copy(update={"chat": chat})})


def stored(state: PersonState | None) -> int:
    assert state is not None
    return len(encode(state))  # what the ledger writes to its changelog


def test_entry_bytes_is_what_the_ledger_stores() -> None:
    ledger = Ledger()
    ledger.send(big("req-1", 5000))
    ledger.send(generated("req-1", text="t" * 3000))
    assert ledger.state is not None
    assert entry_bytes(ledger.state) == stored(ledger.state)


def test_a_webhook_whose_params_do_not_fit_ends_entry_too_large_and_the_rest_goes_on() -> None:
    ledger = Ledger(policy=Policy(max_entry_bytes=BUDGET))
    window = {"usage_limit": limit(amount=3)}
    assert types_of(ledger.send(big("req-1", 40_000, **window))) == HAPPY
    refused = ledger.send(big("req-2", 40_000, **window))

    assert types_of(refused) == ["RequestReceived", *NO_ROOM[1:]]
    failed = refused.events[-1]
    assert failed.state is State.GENERATION_FAILED
    assert failed.error_class == ENTRY_TOO_LARGE
    assert failed.error_message is not None and f"{BUDGET:,}" in failed.error_message
    assert refused.commands == []  # never generated
    [letter] = refused.dead_letters
    assert letter.reason.startswith(f"{ENTRY_TOO_LARGE}: ")
    assert letter.command.request_id == "req-2"
    # its slot went back: the window counts req-1 only
    assert refused.state.window == Window(start=T0, count=1)
    assert (failed.window_start, failed.window_count) == (T0, 1)
    # not kept (its params are what does not fit), and the entry is within its budget
    assert "req-2" not in refused.state.inflight and "req-2" not in refused.state.parked
    assert stored(refused.state) <= BUDGET
    # a redelivery of it emits nothing again; a redrive of its letter finds nothing to run
    assert types_of(ledger.send(big("req-2", 40_000, **window))) == []
    redrive = RedriveRequested(
        request_id="req-2", person=PERSON, at_ms=T0 * 1000, stage="generating", attempt=1
    )
    assert types_of(ledger.send(redrive)) == []

    # the person's other request goes on, and once it ended the entry has room again
    ledger.send(generated("req-1"))
    assert types_of(ledger.send(published("req-1"))) == ["CompletionPublished"]
    assert types_of(ledger.send(big("req-3", 40_000, **window))) == HAPPY
    assert ledger.state is not None and ledger.state.window == Window(start=T0, count=2)


def test_a_text_that_does_not_fit_ends_entry_too_large_and_a_redrive_runs_it_again() -> None:
    ledger = Ledger(policy=Policy(max_entry_bytes=BUDGET))
    window = {"usage_limit": limit(amount=3)}
    for rid in ("req-1", "req-2"):
        assert types_of(ledger.send(big(rid, 2_000, **window))) == HAPPY
    assert types_of(ledger.send(generated("req-1", text="a" * 30_000))) == [
        "TextGenerated",
        "PublicationStarted",
    ]
    refused = ledger.send(generated("req-2", text="b" * 30_000))

    assert types_of(refused) == ["GenerationFailed"]
    failed = refused.events[0]
    assert (failed.error_class, failed.state) == (ENTRY_TOO_LARGE, State.GENERATION_FAILED)
    assert refused.commands == []
    [letter] = refused.dead_letters
    assert letter.reason.startswith(f"{ENTRY_TOO_LARGE}: ")
    assert refused.state.window == Window(start=T0, count=1)  # its slot went back
    assert refused.state.parked_flights["req-2"].text is None  # parked without its text
    assert stored(refused.state) <= BUDGET

    # once req-1 is published, a redrive generates req-2 again, and its text fits now
    ledger.send(published("req-1"))
    redrive = RedriveRequested(
        request_id="req-2", person=PERSON, at_ms=T0 * 1000, stage="generating", attempt=1
    )
    assert types_of(ledger.send(redrive)) == ["RequestAdmitted", "GenerationStarted"]
    assert types_of(ledger.send(generated("req-2", 2, text="b" * 30_000))) == [
        "TextGenerated",
        "PublicationStarted",
    ]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["receive", "generate", "publish"]), st.integers(10_000, 30_000)),
        max_size=25,
    )
)
def test_no_decision_stores_an_entry_over_its_budget(steps: list[tuple[str, int]]) -> None:
    """Whatever the person's webhooks, texts and publications, the stored entry fits (the
    worker's changelog send never meets a record too large for it)."""
    ledger = Ledger(policy=Policy(max_entry_bytes=BUDGET))
    for n, (step, size) in enumerate(steps):
        state = ledger.state or PersonState()
        if step == "receive":
            ledger.send(big(f"req-{n}", size, usage_limit=limit(amount=5)))
        elif step == "generate" and state.inflight:
            flight = min(state.inflight.values(), key=lambda f: f.request_id)
            if flight.state is State.GENERATING:
                ledger.send(generated(flight.request_id, flight.attempt, text="x" * size))
        elif step == "publish" and state.inflight:
            flight = max(state.inflight.values(), key=lambda f: f.request_id)
            if flight.state is State.PUBLISHING:
                ledger.send(published(flight.request_id, flight.attempt))
        state = ledger.state or PersonState()
        assert stored(state) <= BUDGET
        # the window counts exactly the requests in flight and those published (which keep
        # their slot): none refused for the entry's size
        published_ = ledger.types().count("CompletionPublished")
        assert state.window is None or state.window.count == len(state.inflight) + published_


def test_the_budget_is_a_setting_the_producer_takes() -> None:
    assert Settings().max_entry_bytes == 768 * 1024
    with pytest.raises(ValueError, match="max_entry_bytes"):
        Settings(max_entry_bytes=1_000_000)  # not room for the key: over the producer's limit
    with pytest.raises(ValueError, match="TALKSTREAM_MAX_ENTRY_BYTES"):
        Settings(max_entry_bytes=200_000, max_text_bytes=131072)


def test_a_person_of_thousands_of_webhooks_keeps_an_entry_within_its_budget() -> None:
    """Each webhook leaves a fingerprint (kept 30 days, up to 10,000 a person): 10,000 of them
    encoded to ~1.5 MB, a changelog record the worker's producer refuses (the worker stopped,
    at every start). The oldest go once they take a quarter of the entry's bytes; the newest and
    those of requests in flight stay, and a repeat of a recent one is still caught."""
    policy = Policy(max_entry_bytes=2 * BUDGET)
    ledger = Ledger(policy=policy)
    ledger.send(received("req-pinned", delivery_id="pinned/d1"))  # in flight throughout
    for n in range(3_000):
        rid = f"{n:032x}"  # a request id's length (32 hex chars)
        outcome = ledger.send(
            received(rid, delivery_id=f"{n:036x}", at_ms=T0 * 1000 + n, trigger="false")
        )
        assert stored(outcome.state) <= policy.max_entry_bytes // 4 + 1_000
        assert rid in outcome.state.seen
    assert ledger.state is not None
    assert "req-pinned" in ledger.state.seen
    assert 150 < len(ledger.state.seen) < 3_000  # a quarter of 128 KiB: ~250 fingerprints
    newest = f"{2_999:032x}"
    again = ledger.send(received(newest, delivery_id="again", at_ms=T0 * 1000 + 3_000))
    assert types_of(again) == ["RequestReceived", "DuplicateRejected"]


def test_fingerprints_full_of_redeliveries_count_their_bytes() -> None:
    """A fingerprint remembers up to 64 other deliveries of its request: counted too."""
    policy = Policy(max_entry_bytes=2 * BUDGET)
    ledger = Ledger(policy=policy)
    for n in range(200):
        rid = f"{n:032x}"
        at_ms = T0 * 1000 + n * 10
        ledger.send(received(rid, delivery_id=f"{n:036x}", at_ms=at_ms, trigger="false"))
        for d in range(64):
            ledger.send(received(rid, delivery_id=f"{n:018x}{d:018x}", at_ms=at_ms + 1))
        assert stored(ledger.state) <= policy.max_entry_bytes // 4 + 4_000
    assert ledger.state is not None and f"{199:032x}" in ledger.state.seen
