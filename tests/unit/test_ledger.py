"""The per-person decision function ``models.ledger.handle``: trigger, usage window, dedupe,
results with attempts and deadlines, and what it sends to the executors (DESIGN.md §2-§4)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import hypothesis
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.decisions import publish_command
from models.events import (
    COMPLETION_EVENT_CATEGORY,
    DeadlineExpired,
    GenerateText,
    GenerationAttemptFailed,
    GenerationAttemptSucceeded,
    LifecycleEvent,
    PublicationAttemptFailed,
    PublicationAttemptSucceeded,
    PublishCompletion,
    RedriveRequested,
    RequestReceived,
    RequestsValue,
)
from models.ledger import Outcome, PersonState, Policy, handle
from models.lifecycle import TERMINAL, State, check_transition
from models.params import UsageLimit
from models.state import FORGOTTEN_IDS_BYTES, ForgottenIds
from models.usage import Window
from streams.codecs import decode, encode
from streams.ops.replay import Record
from streams.ops.verify import Rederivation, VerifySummary
from tests.unit.domain_builders import (
    EMAIL,
    PERSON,
    SEALED_OPENAI,
    SEALED_TALKABLE,
    SITE,
    T0,
    Ledger,
    Stage,
    expired,
    generated,
    generation_failed,
    limit,
    publication_failed,
    published,
    received,
    types_of,
)

FAST = settings(max_examples=200, deadline=None)
HAPPY = ["RequestReceived", "RequestAdmitted", "GenerationStarted"]


def admit(ledger: Ledger, request_id: str = "req-1", **kwargs: Any) -> Outcome:
    outcome = ledger.send(received(request_id, **kwargs))
    assert types_of(outcome) == HAPPY, types_of(outcome)
    return outcome


# --- the happy path ---------------------------------------------------------------------------


def test_a_text_cut_at_max_tokens_is_published_and_its_event_says_it_was_cut() -> None:
    """OpenAI's text cut at the campaign's ``max_tokens`` (``finish_reason: length``) is the
    campaign's cap, published as the hosted integration did; nothing said it was cut. Its
    TextGenerated says so (``truncated``), and one not cut carries nothing new (as an event
    written before the field, so ``replay --verify`` of older records finds no difference)."""
    ledger = Ledger()
    for request_id, truncated, said in (("cut", True, True), ("whole", False, None)):
        admit(ledger, request_id)
        outcome = ledger.send(generated(request_id, text="Roses are", truncated=truncated))
        assert types_of(outcome) == ["TextGenerated", "PublicationStarted"]
        assert outcome.events[0].truncated is said
        [publish] = outcome.commands
        assert isinstance(publish, PublishCompletion)
        assert publish.custom_properties["generated_text"] == "Roses are"


def test_a_request_goes_from_received_to_published() -> None:
    ledger = Ledger()
    first = admit(ledger, "req-1", usage_limit=limit(amount=3, used=1))
    [generate] = first.commands
    assert isinstance(generate, GenerateText)
    assert (generate.request_id, generate.attempt, generate.site, generate.person) == (
        "req-1",
        1,
        SITE,
        PERSON,
    )
    assert generate.openai_api_key == SEALED_OPENAI
    assert generate.chat.model == "gpt-4o-mini"

    second = ledger.send(generated("req-1", text="Roses are red."))
    assert types_of(second) == ["TextGenerated", "PublicationStarted"]
    [publish] = second.commands
    assert isinstance(publish, PublishCompletion)
    assert publish.talkable_api_key == SEALED_TALKABLE
    assert publish.custom_properties["generated_text"] == "Roses are red."

    third = ledger.send(published("req-1"))
    assert types_of(third) == ["CompletionPublished"]
    assert third.commands == []
    assert ledger.states("req-1") == [
        State.RECEIVED,
        State.ADMITTED,
        State.GENERATING,
        State.GENERATED,
        State.PUBLISHING,
        State.PUBLISHED,
    ]
    assert ledger.state is not None
    assert ledger.state.inflight == {}
    assert ledger.state.window == Window(start=T0, count=2)  # a published request keeps its slot


def test_lifecycle_events_name_the_person_site_and_event_time() -> None:
    ledger = Ledger()
    outcome = ledger.send(received("req-1", at_ms=5, usage_limit=limit(now=T0 + 42)))
    for event in outcome.events:
        assert (event.request_id, event.person, event.site) == ("req-1", PERSON, SITE)
        assert event.at_ms == (T0 + 42) * 1000  # usage_limit.current_time, not ingress time
    without_limit = ledger.send(received("req-2", at_ms=777))
    assert {event.at_ms for event in without_limit.events} == {777}


# --- the trigger rule -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("criteria", "generates"),
    [
        (None, True),
        ("true", True),
        ("TRUE", True),
        ("True", True),
        ("  true  ", True),
        ("\ttrue\n", True),
        ("", False),
        ("   ", False),
        ("false", False),
        ("yes", False),
        ("1", False),
        ("true true", False),
        ("t rue", False),
        ("{% if x %}true{% endif %}", False),
    ],
)
def test_the_trigger_rule(criteria: str | None, generates: bool) -> None:
    ledger = Ledger()
    outcome = ledger.send(received(trigger=criteria, usage_limit=limit(amount=1)))
    if generates:
        assert types_of(outcome) == HAPPY
        assert len(outcome.commands) == 1
    else:
        assert types_of(outcome) == ["RequestReceived", "RequestSkipped"]
        assert outcome.events[-1].state is State.SKIPPED
        assert outcome.commands == []
        # a skipped request neither takes a slot nor seeds the window
        assert outcome.state.window is None
        assert outcome.state.inflight == {}


# --- the usage window through the ledger ------------------------------------------------------


def test_the_snapshot_seeds_a_person_the_ledger_does_not_know() -> None:
    ledger = Ledger()
    outcome = admit(ledger, "req-1", usage_limit=limit(amount=3, start=T0 - 60, now=T0, used=2))
    admitted = outcome.events[1]
    assert (admitted.window_start, admitted.window_count) == (T0 - 60, 3)
    limited = ledger.send(received("req-2", usage_limit=limit(amount=3, start=T0 - 60, now=T0)))
    assert types_of(limited) == ["RequestReceived", "UsageLimited"]
    assert limited.events[-1].state is State.LIMITED
    assert limited.commands == []


def test_the_snapshot_never_overrides_the_ledger() -> None:
    """Liquid renders an unwritten ``__start_time`` as now, with a count of 0."""
    ledger = Ledger()
    for n in range(3):
        admit(ledger, f"req-{n}", usage_limit=limit(amount=3, now=T0 + n))
    fresh_looking = limit(amount=3, start=T0 + 10, now=T0 + 10, used=0)
    outcome = ledger.send(received("req-3", usage_limit=fresh_looking))
    assert types_of(outcome) == ["RequestReceived", "UsageLimited"]
    assert outcome.state.window == Window(start=T0, count=3)


def test_a_limited_first_sight_still_records_the_window() -> None:
    ledger = Ledger()
    outcome = ledger.send(received("req-1", usage_limit=limit(amount=3, used=3)))
    assert types_of(outcome) == ["RequestReceived", "UsageLimited"]
    assert outcome.state.window == Window(start=T0, count=3)
    # Talkable's copy later claims 0 used: the ledger knows better
    again = ledger.send(received("req-2", usage_limit=limit(amount=3, now=T0 + 5, used=0)))
    assert types_of(again) == ["RequestReceived", "UsageLimited"]


@pytest.mark.parametrize(
    ("elapsed", "admitted", "window_start"),
    [(3599, False, T0), (3600, True, T0 + 3600), (7200, True, T0 + 7200)],
)
def test_window_boundaries_are_exact(elapsed: int, admitted: bool, window_start: int) -> None:
    ledger = Ledger()
    for n in range(2):
        admit(ledger, f"req-{n}", usage_limit=limit(amount=2, duration=3600))
    later = limit(amount=2, duration=3600, now=T0 + elapsed)
    outcome = ledger.send(received("req-late", usage_limit=later))
    assert outcome.state.window is not None
    assert outcome.state.window.start == window_start
    if admitted:
        assert types_of(outcome) == HAPPY
        assert outcome.state.window.count == 1
    else:
        assert types_of(outcome) == ["RequestReceived", "UsageLimited"]
        assert outcome.state.window.count == 2


def test_exactly_the_limit_is_admitted_from_a_burst() -> None:
    """50 webhooks for one person at once, each carrying the same stale snapshot."""
    ledger = Ledger()
    snapshot = limit(amount=3, used=0)
    for n in range(50):
        ledger.send(received(f"req-{n:02}", delivery_id=f"d-{n}", usage_limit=snapshot))
    counts = Counter(ledger.types())
    assert counts["RequestAdmitted"] == 3
    assert counts["UsageLimited"] == 47
    assert counts["RequestReceived"] == 50
    assert sum(len(outcome.commands) for _, outcome in ledger.history) == 3
    assert ledger.state is not None
    assert ledger.state.window == Window(start=T0, count=3)


@FAST
@given(
    burst=st.integers(1, 60),
    amount=st.integers(0, 6),
    used=st.integers(0, 7),
    duration=st.integers(1, 86_400),
)
def test_any_burst_admits_exactly_the_free_slots(
    burst: int, amount: int, used: int, duration: int
) -> None:
    ledger = Ledger()
    snapshot = limit(amount=amount, duration=duration, used=used)
    for n in range(burst):
        ledger.send(received(f"req-{n}", usage_limit=snapshot))
    free = max(0, amount - used)
    counts = Counter(ledger.types())
    assert counts["RequestAdmitted"] == min(burst, free)
    assert counts["UsageLimited"] == burst - min(burst, free)


def test_a_failed_generation_gives_its_slot_back() -> None:
    ledger = Ledger()
    for n in range(3):
        admit(ledger, f"req-{n}", usage_limit=limit(amount=3))
    assert types_of(ledger.send(received("req-3", usage_limit=limit(amount=3)))) == [
        "RequestReceived",
        "UsageLimited",
    ]
    failed = ledger.send(generation_failed("req-1"))
    assert types_of(failed) == ["GenerationFailed"]
    assert failed.events[0].state is State.GENERATION_FAILED
    assert failed.state.window == Window(start=T0, count=2)

    admit(ledger, "req-4", usage_limit=limit(amount=3, now=T0 + 1))  # the freed slot
    again = ledger.send(received("req-5", usage_limit=limit(amount=3, now=T0 + 2)))
    assert types_of(again) == ["RequestReceived", "UsageLimited"]


def test_a_published_or_publish_failed_request_keeps_its_slot() -> None:
    ledger = Ledger()
    admit(ledger, "req-1", usage_limit=limit(amount=2))
    admit(ledger, "req-2", usage_limit=limit(amount=2))
    ledger.send(generated("req-1"))
    ledger.send(published("req-1"))
    ledger.send(generated("req-2"))
    ledger.send(publication_failed("req-2"))
    assert ledger.state is not None
    assert ledger.state.window == Window(start=T0, count=2)


def test_a_slot_is_released_only_in_the_window_it_was_taken_from() -> None:
    ledger = Ledger()
    admit(ledger, "old", usage_limit=limit(amount=1, duration=60))
    admit(ledger, "new", usage_limit=limit(amount=1, duration=60, now=T0 + 60))
    assert ledger.state is not None
    assert ledger.state.window == Window(start=T0 + 60, count=1)

    outcome = ledger.send(generation_failed("old"))
    assert types_of(outcome) == ["GenerationFailed"]
    assert outcome.state.window == Window(start=T0 + 60, count=1)  # not released into "new"'s
    limited = ledger.send(received("next", usage_limit=limit(amount=1, duration=60, now=T0 + 61)))
    assert types_of(limited) == ["RequestReceived", "UsageLimited"]


def test_a_deadline_exhausted_generation_releases_its_slot() -> None:
    ledger = Ledger(policy=Policy(max_attempts=2))
    admit(ledger, "req-1", usage_limit=limit(amount=1))
    ledger.send(expired("req-1", 1, "generating"))
    outcome = ledger.send(expired("req-1", 2, "generating"))
    assert types_of(outcome) == ["GenerationFailed"]
    assert outcome.events[0].error_class == "DeadlineExpired"
    assert outcome.state.window == Window(start=T0, count=0)
    admit(ledger, "req-2", usage_limit=limit(amount=1, now=T0 + 1))


def test_an_attempt_lost_by_a_restarted_worker_is_reissued_at_once_and_says_so() -> None:
    ledger = Ledger(policy=Policy(max_attempts=2))
    admit(ledger, "req-1", usage_limit=limit(amount=1))
    retry = ledger.send(expired("req-1", 1, "generating", lost=True))
    assert types_of(retry) == ["GenerationStarted"]
    assert retry.events[0].cause == "attempt 1 lost (its worker stopped before it ended); re-issued"
    assert [c.attempt for c in retry.commands] == [2]
    stale = ledger.send(expired("req-1", 1, "generating", lost=True))  # a second run's signal
    assert types_of(stale) == [] and stale.commands == []
    final = ledger.send(expired("req-1", 2, "generating", lost=True))
    assert types_of(final) == ["GenerationFailed"]
    assert final.events[0].error_class == "AttemptLost"
    assert final.events[0].cause == "attempt 2 lost after 2 attempts; slot released"
    assert final.state.window == Window(start=T0, count=0)


def test_requests_without_a_limit_never_touch_the_window() -> None:
    ledger = Ledger()
    admit(ledger, "limited-1", usage_limit=limit(amount=1))
    outcome = admit(ledger, "free-1")
    admitted = outcome.events[1]
    assert (admitted.window_start, admitted.window_count) == (None, None)
    failed = ledger.send(generation_failed("free-1"))
    assert failed.state.window == Window(start=T0, count=1)
    assert (failed.events[0].window_start, failed.events[0].window_count) == (None, None)


# --- duplicates -------------------------------------------------------------------------------


def test_the_same_request_from_another_delivery_is_rejected_as_a_duplicate() -> None:
    ledger = Ledger()
    admit(ledger, "req-1", delivery_id="d1", usage_limit=limit(amount=5))
    outcome = ledger.send(
        received("req-1", delivery_id="d2", at_ms=T0 * 1000 + 60_000, usage_limit=limit(amount=5))
    )
    assert types_of(outcome) == ["RequestReceived", "DuplicateRejected"]
    entity = outcome.events[0].request_id
    assert entity != "req-1"  # its own lifecycle entity: the original's stays whole
    assert {event.request_id for event in outcome.events} == {entity}
    assert [e.duplicate_of for e in outcome.events] == ["req-1", "req-1"]
    assert outcome.events[1].state is State.REJECTED_DUPLICATE
    assert outcome.commands == []
    assert outcome.state.window == Window(start=T0, count=1)  # no second slot
    assert ledger.states("req-1") == [State.RECEIVED, State.ADMITTED, State.GENERATING]


@pytest.mark.parametrize("finish", ["published", "skipped", "limited", "generation_failed"])
def test_a_duplicate_is_rejected_whatever_became_of_the_original(finish: str) -> None:
    ledger = Ledger()
    usage = limit(amount=0) if finish == "limited" else None
    first = ledger.send(
        received(
            "req-1",
            delivery_id="d1",
            usage_limit=usage,
            trigger="no" if finish == "skipped" else None,
        )
    )
    if finish == "published":
        ledger.send(generated("req-1"))
        ledger.send(published("req-1"))
    elif finish == "generation_failed":
        ledger.send(generation_failed("req-1"))
    assert first.events[-1].state in (State.GENERATING, State.SKIPPED, State.LIMITED)

    outcome = ledger.send(received("req-1", delivery_id="d2", at_ms=T0 * 1000 + 1))
    assert types_of(outcome) == ["RequestReceived", "DuplicateRejected"]


def test_the_very_same_delivery_redelivered_emits_nothing() -> None:
    ledger = Ledger()
    message = received("req-1", delivery_id="d1", usage_limit=limit(amount=3))
    ledger.send(message)
    before = ledger.state
    outcome = ledger.send(message)
    assert outcome == Outcome(state=before)


def test_a_redelivered_duplicate_emits_nothing_again() -> None:
    """A crash after rejecting a duplicate redelivers it; its entity must not be reopened."""
    ledger = Ledger()
    admit(ledger, "req-1", delivery_id="d1")
    duplicate = received("req-1", delivery_id="d2", at_ms=T0 * 1000 + 1)
    assert types_of(ledger.send(duplicate)) == ["RequestReceived", "DuplicateRejected"]
    before = ledger.state
    assert ledger.send(duplicate) == Outcome(state=before)


def test_the_same_request_after_the_dedupe_window_is_a_new_request() -> None:
    policy = Policy(dedupe_window_ms=1000)
    ledger = Ledger(policy=policy)
    admit(ledger, "req-1", delivery_id="d1")
    ledger.send(generated("req-1"))
    ledger.send(published("req-1"))
    just_inside = received("req-1", delivery_id="d2", at_ms=T0 * 1000 + 999)
    assert types_of(ledger.send(just_inside)) == ["RequestReceived", "DuplicateRejected"]

    outcome = ledger.send(received("req-1", delivery_id="d3", at_ms=T0 * 1000 + 1000))
    assert types_of(outcome) == HAPPY
    entity = outcome.events[0].request_id
    assert entity not in ("req-1", just_inside.request_id)
    assert outcome.commands[0].request_id == entity
    # and its own redelivery is recognised
    assert ledger.send(received("req-1", delivery_id="d3", at_ms=T0 * 1000 + 1000)).events == []


def test_every_earlier_delivery_of_a_readmitted_request_stays_silent() -> None:
    ledger = Ledger(policy=Policy(dedupe_window_ms=1000))
    d1 = received("req-1", delivery_id="d1")
    d2 = received("req-1", delivery_id="d2", at_ms=T0 * 1000 + 10)
    d3 = received("req-1", delivery_id="d3", at_ms=T0 * 1000 + 5000)
    for message in (d1, d2):
        ledger.send(message)
    ledger.send(generation_failed("req-1"))
    assert types_of(ledger.send(d3)) == HAPPY
    for message in (d1, d2, d3):
        assert ledger.send(message).events == []


def test_the_memory_of_answered_deliveries_is_bounded() -> None:
    ledger = Ledger()
    admit(ledger, "req-1", delivery_id="d0")
    for n in range(1, 100):
        ledger.send(received("req-1", delivery_id=f"d{n}", at_ms=T0 * 1000 + n))
    assert ledger.state is not None
    assert len(ledger.state.seen["req-1"].answered) <= 64
    assert ledger.send(received("req-1", delivery_id="d99", at_ms=T0 * 1000 + 99)).events == []
    assert ledger.send(received("req-1", delivery_id="d0")).events == []


def test_a_request_still_in_flight_is_a_duplicate_even_after_the_dedupe_window() -> None:
    ledger = Ledger(policy=Policy(dedupe_window_ms=1000))
    admit(ledger, "req-1", delivery_id="d1")
    late = ledger.send(received("req-1", delivery_id="d2", at_ms=T0 * 1000 + 5000))
    assert types_of(late) == ["RequestReceived", "DuplicateRejected"]


def test_a_readmitted_request_still_in_flight_is_a_duplicate() -> None:
    ledger = Ledger(policy=Policy(dedupe_window_ms=1000))
    admit(ledger, "req-1", delivery_id="d1")
    ledger.send(generation_failed("req-1"))
    again = admit(ledger, "req-1", delivery_id="d2", at_ms=T0 * 1000 + 2000)
    assert again.events[0].request_id != "req-1"
    late = ledger.send(received("req-1", delivery_id="d3", at_ms=T0 * 1000 + 4000))
    assert types_of(late) == ["RequestReceived", "DuplicateRejected"]


def test_fingerprints_of_requests_in_flight_survive_pruning() -> None:
    ledger = Ledger(policy=Policy(max_fingerprints=2))
    admit(ledger, "req-1", delivery_id="d1")
    for n in range(2, 6):
        ledger.send(received(f"req-{n}", at_ms=T0 * 1000 + n))
    assert ledger.state is not None
    assert "req-1" in ledger.state.seen
    # the in-flight original redelivered: still nothing; another delivery: a separate entity
    assert ledger.send(received("req-1", delivery_id="d1")).events == []
    duplicate = ledger.send(received("req-1", delivery_id="d9", at_ms=T0 * 1000 + 9))
    assert types_of(duplicate) == ["RequestReceived", "DuplicateRejected"]
    assert duplicate.events[0].request_id != "req-1"


@pytest.mark.parametrize("bound", [1, 2, 5])
def test_the_fingerprint_memory_is_bounded(bound: int) -> None:
    ledger = Ledger(policy=Policy(max_fingerprints=bound))
    for n in range(12):
        outcome = ledger.send(received(f"req-{n}", at_ms=T0 * 1000 + n, trigger="false"))
        assert len(outcome.state.seen) <= bound
        assert f"req-{n}" in outcome.state.seen  # the newest is always remembered


def test_fingerprints_expire_after_the_retention() -> None:
    ledger = Ledger(policy=Policy(dedupe_window_ms=1000, fingerprint_retention_ms=10_000))
    ledger.send(received("req-1", trigger="false"))
    outcome = ledger.send(received("req-2", at_ms=T0 * 1000 + 10_000, trigger="false"))
    assert set(outcome.state.seen) == {"req-2"}


def _published_first(policy: Policy) -> tuple[Ledger, PublishCompletion]:
    """A ledger in which req-1 (delivery d1) was admitted, generated and published."""
    ledger = Ledger(policy=policy)
    admit(ledger, "req-1", delivery_id="d1")
    [publish] = ledger.send(generated("req-1")).commands
    assert isinstance(publish, PublishCompletion)
    ledger.send(published("req-1"))
    return ledger, publish


def _published_again_later(ledger: Ledger, at_ms: int) -> tuple[Outcome, PublishCompletion]:
    """req-1's params again at ``at_ms``, generated; its admission and its publication."""
    again = ledger.send(received("req-1", delivery_id="d-again", at_ms=at_ms))
    assert types_of(again) == HAPPY, types_of(again)
    entity = again.events[0].request_id
    [publish] = ledger.send(generated(entity, at_ms=at_ms)).commands
    assert isinstance(publish, PublishCompletion)
    return again, publish


def test_params_seen_again_after_their_fingerprint_expired_are_a_request_of_their_own() -> None:
    # the person heard of meanwhile keeps the entry; req-1's fingerprint goes at the webhook
    # past its retention, which was named by it: the same name again was the same default
    # event number, which Talkable took for the first request's event ("Duplicate entity")
    ledger, first = _published_first(
        Policy(dedupe_window_ms=1000, fingerprint_retention_ms=100_000)
    )
    admit(ledger, "req-2", at_ms=T0 * 1000 + 60_000)
    again, publish = _published_again_later(ledger, T0 * 1000 + 100_000)
    assert again.state.seen["req-1"].delivery_id == "d-again"  # not a duplicate: remembered anew
    assert again.events[0].request_id == "req-1~d-again"
    assert publish.request_id == "req-1~d-again"
    assert publish.event_number != first.event_number
    # and forgotten for good at a later webhook: still never named by the fingerprint
    admit(ledger, "req-3", at_ms=T0 * 1000 + 150_000)
    later = ledger.send(received("req-1", delivery_id="d-late", at_ms=T0 * 1000 + 210_000))
    assert later.events[0].request_id == "req-1~d-late"


def test_params_seen_again_after_the_bound_forgot_them_are_a_request_of_their_own() -> None:
    ledger, _ = _published_first(Policy(dedupe_window_ms=1000, max_fingerprints=2))
    for n in (2, 3, 4):
        ledger.send(received(f"req-{n}", at_ms=T0 * 1000 + n * 1000, trigger="false"))
    assert ledger.state is not None and "req-1" not in ledger.state.seen
    again, _ = _published_again_later(ledger, T0 * 1000 + 10_000)
    assert again.events[0].request_id == "req-1~d-again"


def test_a_person_forgotten_whole_is_as_never_heard_of() -> None:
    # past the retention of everything the entry holds the ledger deletes it (a day later):
    # decided as if never heard of, whether or not the entry is still there, so a replay
    # names it as the live ledger did
    ledger, _ = _published_first(Policy(dedupe_window_ms=1000, fingerprint_retention_ms=100_000))
    again = ledger.send(received("req-1", delivery_id="d-again", at_ms=T0 * 1000 + 200_000))
    assert again.events[0].request_id == "req-1"


def test_forgotten_fingerprints_keep_the_newest_thousands_in_a_few_kilobytes() -> None:
    ids = ForgottenIds()
    for start in range(0, 6000, 500):
        ids = ids.adding(f"{n:032x}" for n in range(start, start + 500))
    assert all(ids.may_hold(f"{n:032x}") for n in range(6000 - 1536, 6000))
    strangers = sum(ids.may_hold(f"{n:032x}") for n in range(10**6, 10**6 + 2000))
    assert strangers < 2000 * 0.05, strangers  # a new request named as a repeat: rare
    state = PersonState(forgotten_ids=ids)
    assert len(encode(state)) < FORGOTTEN_IDS_BYTES + 200
    assert decode(PersonState, encode(state)) == state


# --- results: late, duplicate, stale ---------------------------------------------------------


def _generating() -> Ledger:
    ledger = Ledger()
    admit(ledger, "req-1", usage_limit=limit(amount=3))
    ledger.send(expired("req-1", 1, "generating"))  # now at attempt 2
    return ledger


def _publishing() -> Ledger:
    ledger = Ledger()
    admit(ledger, "req-1", usage_limit=limit(amount=3))
    ledger.send(generated("req-1"))
    ledger.send(publication_failed("req-1", 1, retriable=True))  # now at attempt 2
    return ledger


def _finished() -> Ledger:
    ledger = Ledger()
    admit(ledger, "req-1", usage_limit=limit(amount=3))
    ledger.send(generated("req-1"))
    ledger.send(published("req-1"))
    return ledger


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (_generating, generation_failed("req-1", 1)),  # the attempt was re-issued
        (_generating, generation_failed("req-1", 1, retriable=True)),
        (_generating, generation_failed("req-1", 3)),  # never issued
        (_generating, generated("req-1", 3)),
        (_generating, expired("req-1", 1, "generating")),
        (_generating, expired("req-1", 2, "publishing")),
        (_generating, published("req-1", 1)),
        (_generating, publication_failed("req-1", 2)),
        (_generating, generated("someone-else", 1)),
        (_publishing, generated("req-1", 1)),
        (_publishing, generated("req-1", 2)),
        (_publishing, generation_failed("req-1", 2)),
        (_publishing, expired("req-1", 2, "generating")),
        (_publishing, expired("req-1", 1, "publishing")),
        (_publishing, publication_failed("req-1", 1)),
        (_publishing, published("req-1", 3)),
        (_finished, generated("req-1", 1)),
        (_finished, generation_failed("req-1", 1)),
        (_finished, published("req-1", 1)),
        (_finished, publication_failed("req-1", 1)),
        (_finished, expired("req-1", 1, "publishing")),
        (_finished, expired("req-1", 1, "generating")),
    ],
    ids=lambda v: getattr(v, "__name__", None) or f"{v.kind}#{getattr(v, 'attempt', '')}",
)
def test_late_and_duplicate_results_change_nothing(
    setup: Callable[[], Ledger], message: RequestsValue
) -> None:
    ledger = setup()
    before = ledger.state
    assert ledger.send(message) == Outcome(state=before)


def test_a_result_for_an_unknown_person_state_changes_nothing() -> None:
    outcome = handle(None, generated("req-1"), Policy(), 0)
    assert outcome == Outcome(state=PersonState())


def test_a_success_from_an_earlier_attempt_is_taken() -> None:
    ledger = _generating()
    outcome = ledger.send(generated("req-1", 1, text="slow but real"))
    assert types_of(outcome) == ["TextGenerated", "PublicationStarted"]
    [command] = outcome.commands
    assert isinstance(command, PublishCompletion)
    assert command.custom_properties["generated_text"] == "slow but real"
    # the later attempt's success arrives too: nothing more happens
    assert ledger.send(generated("req-1", 2)).events == []


@pytest.mark.parametrize("max_attempts", [1, 2, 3, 5])
def test_retriable_generation_failures_are_reissued_up_to_max_attempts(max_attempts: int) -> None:
    ledger = Ledger(policy=Policy(max_attempts=max_attempts))
    admit(ledger, "req-1", usage_limit=limit(amount=1))
    for attempt in range(1, max_attempts):
        outcome = ledger.send(generation_failed("req-1", attempt, retriable=True))
        assert types_of(outcome) == ["GenerationStarted"]
        assert outcome.events[0].attempt == attempt + 1
        [command] = outcome.commands
        assert isinstance(command, GenerateText)
        assert command.attempt == attempt + 1
    final = ledger.send(generation_failed("req-1", max_attempts, retriable=True))
    assert types_of(final) == ["GenerationFailed"]
    assert final.state.inflight == {}
    assert final.state.window == Window(start=T0, count=0)


def test_every_generation_started_says_the_model_asked_for_a_reissue_too() -> None:
    """A re-issued generation's ``GenerationStarted`` (a retriable failure, a lost attempt, a
    deadline passed) said no ``model`` where the first attempt's and a redrive's say it: a
    consumer reading the model asked for from it found null on every retry. Each says the
    webhook's model; a re-issued publication's says none (it asks no model)."""
    ledger = Ledger(policy=Policy(max_attempts=4))
    [first] = [e for e in admit(ledger, "req-1", model="gpt-4.1").events if e.state == "generating"]
    assert first.model == "gpt-4.1"
    retried = ledger.send(generation_failed("req-1", 1, retriable=True))
    lost = ledger.send(expired("req-1", 2, "generating", lost=True))
    overdue = ledger.send(expired("req-1", 3, "generating"))
    reissued = [e for outcome in (retried, lost, overdue) for e in outcome.events]
    assert [(e.type, e.attempt, e.model) for e in reissued] == [
        ("GenerationStarted", 2, "gpt-4.1"),
        ("GenerationStarted", 3, "gpt-4.1"),
        ("GenerationStarted", 4, "gpt-4.1"),
    ]
    ledger.send(generated("req-1", 4))
    [publication] = ledger.send(expired("req-1", 1, "publishing")).events
    assert (publication.type, publication.model) == ("PublicationStarted", None)


def test_a_non_retriable_generation_failure_is_final_at_once() -> None:
    ledger = Ledger(policy=Policy(max_attempts=5))
    admit(ledger, "req-1")
    outcome = ledger.send(generation_failed("req-1", 1, retriable=False))
    assert types_of(outcome) == ["GenerationFailed"]
    assert outcome.events[0].error_class == "BadRequest"
    assert outcome.commands == []


@pytest.mark.parametrize("stage", ["generating", "publishing"])
def test_an_attempt_that_ended_waiting_says_so_in_its_cause(stage: str) -> None:
    """A QueueTimeout is not a refusal: from schema 7 on the failure says it waited out its
    target, and its cause says so; one written before (no ``waited_out``) keeps the cause it
    was recorded with, so a replay of an older log derives its events again unchanged."""
    upstream, failed = (
        ("OpenAI", generation_failed) if stage == "generating" else ("Talkable", publication_failed)
    )

    def ended(waited_out: bool) -> LifecycleEvent:
        ledger = Ledger()
        admit(ledger, "req-1")
        if stage == "publishing":
            ledger.send(generated("req-1"))
        failure = failed("req-1").model_copy(
            update={"error_class": "QueueTimeout", "waited_out": waited_out}
        )
        [event] = ledger.send(failure).events
        return event

    waited = ended(True)
    assert waited.cause.startswith(f"gave up waiting for {upstream}: the wait outlasted")
    assert waited.error_class == "QueueTimeout"
    older = ended(False).cause
    assert older in ("OpenAI call failed; slot released", "Talkable did not accept the event")
    assert upstream in older


@pytest.mark.parametrize("max_attempts", [1, 2, 4])
def test_publication_retries_then_fails(max_attempts: int) -> None:
    ledger = Ledger(policy=Policy(max_attempts=max_attempts))
    admit(ledger, "req-1")
    ledger.send(generated("req-1"))
    for attempt in range(1, max_attempts):
        outcome = ledger.send(publication_failed("req-1", attempt, retriable=True))
        assert types_of(outcome) == ["PublicationStarted"]
        assert [c.attempt for c in outcome.commands] == [attempt + 1]
    final = ledger.send(publication_failed("req-1", max_attempts, retriable=True))
    assert types_of(final) == ["PublicationFailed"]
    assert final.events[0].state is State.PUBLISH_FAILED
    assert final.state.inflight == {}
    # attempts ran out on retriable errors: parked and dead-lettered, so a redrive can land it
    [letter] = final.dead_letters
    assert isinstance(letter.command, PublishCompletion)
    assert letter.command.attempt == max_attempts
    assert letter.reason == "ServerError: stand-in failure"
    assert "req-1" in final.state.parked


def _ends_publish_failed(how: str) -> Outcome:
    ledger = Ledger(policy=Policy(max_attempts=2))
    admit(ledger, "req-1")
    ledger.send(generated("req-1"))
    if how == "refused":
        return ledger.send(publication_failed("req-1", 1, retriable=False))
    if how == "retries ran out":
        ledger.send(publication_failed("req-1", 1, retriable=True))
        return ledger.send(publication_failed("req-1", 2, retriable=True))
    ledger.send(expired("req-1", 1, "publishing"))
    return ledger.send(expired("req-1", 2, "publishing"))


@pytest.mark.parametrize("how", ["refused", "retries ran out", "deadlines ran out"])
def test_every_publication_that_ends_publish_failed_is_dead_lettered(how: str) -> None:
    final = _ends_publish_failed(how)
    [event] = final.events
    assert event.state is State.PUBLISH_FAILED
    [letter] = final.dead_letters
    assert isinstance(letter.command, PublishCompletion)
    assert (letter.command.request_id, letter.command.attempt) == ("req-1", event.attempt)
    assert letter.command.talkable_api_key == SEALED_TALKABLE
    expected = "deadline expired after 2 attempts" if how == "deadlines ran out" else "stand-in"
    assert expected in letter.reason
    assert final.state.parked == {"req-1": event.at_ms}


def test_a_duplicate_entity_answer_counts_as_published() -> None:
    ledger = Ledger()
    admit(ledger, "req-1")
    ledger.send(generated("req-1"))
    outcome = ledger.send(published("req-1", duplicate=True))
    assert types_of(outcome) == ["CompletionPublished"]
    assert outcome.events[0].state is State.PUBLISHED


def test_overdue_publication_is_reissued_then_parked() -> None:
    ledger = Ledger(policy=Policy(max_attempts=2))
    admit(ledger, "req-1")
    ledger.send(generated("req-1"))
    retry = ledger.send(expired("req-1", 1, "publishing"))
    assert types_of(retry) == ["PublicationStarted"]
    assert [c.attempt for c in retry.commands] == [2]
    final = ledger.send(expired("req-1", 2, "publishing"))
    assert types_of(final) == ["PublicationFailed"]
    assert final.events[0].error_class == "DeadlineExpired"
    [parked] = final.dead_letters
    assert isinstance(parked.command, PublishCompletion)
    assert parked.command.request_id == "req-1"
    assert final.state.inflight == {}


def test_deadlines_follow_the_worker_clock_and_decisions_do_not() -> None:
    policy = Policy(generation_deadline_ms=1000, publish_deadline_ms=500, max_wait_ms=0)
    early = handle(None, received("req-1"), policy, now_ms=10)
    late = handle(None, received("req-1"), policy, now_ms=99_000)
    assert early.state.inflight["req-1"].deadline_ms == 1010
    assert late.state.inflight["req-1"].deadline_ms == 100_000
    assert early.events == late.events


def test_a_deadline_covers_the_wait_in_the_target_queue_then_the_call() -> None:
    policy = Policy(generation_deadline_ms=1000, publish_deadline_ms=500, max_wait_ms=60_000)
    ledger = Ledger(policy=policy, now_ms=10)
    admit(ledger)
    assert ledger.state is not None
    assert ledger.state.inflight["req-1"].deadline_ms == 10 + 60_000 + 1000
    ledger.now_ms = 2_000
    ledger.send(generated("req-1"))
    assert ledger.state.inflight["req-1"].deadline_ms == 2_000 + 60_000 + 500
    ledger.send(expired("req-1", 1, "publishing"))
    assert ledger.state.inflight["req-1"].deadline_ms == 2_000 + 60_000 + 500  # re-issued now


def test_the_time_an_attempt_waited_in_its_queue_is_recorded() -> None:
    ledger = Ledger()
    admit(ledger)
    waited = generated("req-1").model_copy(update={"waited_ms": 4_200})
    [text, _] = ledger.send(waited).events
    assert text.waited_ms == 4_200
    done = published("req-1").model_copy(update={"waited_ms": 300})
    assert [e.waited_ms for e in ledger.send(done).events] == [300]


# --- what goes to Talkable --------------------------------------------------------------------


def _publish_command(ledger: Ledger, request_id: str = "req-1") -> PublishCompletion:
    outcome = ledger.send(generated(request_id, text="Hi Alice!"))
    [command] = outcome.commands
    assert isinstance(command, PublishCompletion)
    return command


def test_the_completion_carries_the_text_and_the_window_as_strings() -> None:
    ledger = Ledger()
    admit(ledger, "req-1", usage_limit=limit(amount=3, start=T0 - 30, now=T0, used=1))
    command = _publish_command(ledger)
    assert command.custom_properties == {
        "generated_text": "Hi Alice!",
        "__start_time": str(T0 - 30),
        "__current_usage_amount": "2",
    }
    assert all(isinstance(v, str) for v in command.custom_properties.values())
    assert command.event_category == COMPLETION_EVENT_CATEGORY == "generate_text_complete"
    assert (command.site, command.email, command.person) == (SITE, EMAIL, PERSON)
    assert command.talkable_api_key == SEALED_TALKABLE


def test_the_completion_writes_back_the_ledger_window_at_publish_time() -> None:
    ledger = Ledger()
    admit(ledger, "req-1", usage_limit=limit(amount=3))
    admit(ledger, "req-2", usage_limit=limit(amount=3, now=T0 + 1))
    properties = _publish_command(ledger).custom_properties
    assert (properties["__start_time"], properties["__current_usage_amount"]) == (str(T0), "2")


@pytest.mark.parametrize("how", ["lost", "overdue", "failed"])
def test_every_attempt_of_a_publication_writes_back_what_the_first_did(how: str) -> None:
    """Talkable keeps the first event under a number and refuses the same number with other
    data (400 "Duplicate entity"): an attempt re-issued after the person's window moved must
    send the first attempt's window, or a campaign-given number whose first attempt landed
    (its answer lost) ends publish_failed (DuplicateEventNumber)."""
    ledger = Ledger()
    admit(ledger, "req-1", usage_limit=limit(amount=3), event_number="order-42-complete")
    first = _publish_command(ledger)
    admit(ledger, "req-2", usage_limit=limit(amount=3, now=T0 + 1))  # the window moves on
    again = {
        "lost": expired("req-1", 1, "publishing", lost=True),
        "overdue": expired("req-1", 1, "publishing"),
        "failed": publication_failed("req-1", 1, retriable=True),
    }[how]
    [retry] = ledger.send(again).commands
    assert isinstance(retry, PublishCompletion) and retry.attempt == 2
    assert (retry.event_number, retry.custom_properties) == (
        first.event_number,
        first.custom_properties,
    )
    assert first.custom_properties["__current_usage_amount"] == "1"


def test_without_a_limit_the_completion_carries_only_the_text() -> None:
    ledger = Ledger()
    admit(ledger, "limited", usage_limit=limit(amount=3))  # the person does have a window
    admit(ledger, "req-1")
    assert _publish_command(ledger).custom_properties == {"generated_text": "Hi Alice!"}


@pytest.mark.parametrize(
    ("given_number", "published_number"),
    [
        (None, "generate_text_complete-req-1"),
        ("order-42-complete", "order-42-complete"),
    ],
)
def test_the_event_number(given_number: str | None, published_number: str) -> None:
    ledger = Ledger()
    admit(ledger, "req-1", event_number=given_number)
    assert _publish_command(ledger).event_number == published_number


@pytest.mark.parametrize("given_number", [None, "order-42-complete"])
@pytest.mark.parametrize("duplicate", [False, True])
def test_the_number_a_text_landed_under_is_on_its_completion_published(
    given_number: str | None, duplicate: bool
) -> None:
    """An analytics team joins a request with Talkable's event on the site and the event
    number; a campaign's own number was on no lifecycle event. The publisher reports the number
    the event landed under (schema 8; Talkable holding it already, a duplicate, too) and the
    request's CompletionPublished carries it; no other transition does."""
    ledger = Ledger()
    admit(ledger, "req-1", event_number=given_number)
    number = _publish_command(ledger).event_number
    landed = published("req-1", duplicate=duplicate, landed_event_number=number)
    [event] = ledger.send(landed).events
    assert (event.type, event.event_number) == ("CompletionPublished", number)
    assert number == given_number or number == "generate_text_complete-req-1"
    assert [e.type for e in ledger.events if e.event_number is not None] == ["CompletionPublished"]


def test_a_publication_reported_before_schema_8_says_no_number() -> None:
    """A result an earlier publisher wrote does not say the number: the event the ledger
    derives from it says none either, as the one recorded then did (``replay --verify`` derives
    the events of an old log again and compares every field); so does a legacy redrive's."""
    ledger = Ledger()
    admit(ledger, "req-1", event_number="order-42-complete")
    _publish_command(ledger)
    [event] = ledger.send(published("req-1")).events
    assert (event.type, event.event_number) == ("CompletionPublished", None)


def _as_written_at_7(value: Any, dropped: str) -> bytes:
    """A value as a version before schema 8 wrote it: without the field added since."""
    fields = json.loads(encode(value))
    del fields[dropped]
    return json.dumps(fields | {"schema_version": 7}).encode()


def _verified(ledger: Ledger, messages: list[bytes], recorded: list[bytes]) -> VerifySummary:
    """What ``replay --verify`` says of the lifecycle ``recorded`` beside the ledger's
    requests ``messages``."""
    check = Rederivation(ledger.policy, VerifySummary("requests", "lifecycle"))
    for offset, message in enumerate(messages):
        check.request(Record("requests", 0, offset, ledger.now_ms, message))
    for offset, event in enumerate(recorded):
        check.recorded(Record("lifecycle", 0, offset, 0, event))
    return check.compare()


@pytest.mark.parametrize("written_at", [7, 8])
def test_verify_agrees_with_a_log_written_before_the_event_number_and_after(
    written_at: int,
) -> None:
    """``replay --verify`` derives the lifecycle events again from [requests] and compares
    every field: a log a version before schema 8 wrote (a result without the number, an event
    without it) agrees, as one written from then on does; an event whose number differs from
    the one its result reported does not."""
    ledger = Ledger()
    admit(ledger, "req-1", event_number="order-42-complete")
    _publish_command(ledger)
    number = "order-42-complete" if written_at == 8 else None
    ledger.send(published("req-1", landed_event_number=number))
    messages = [encode(message) for message, _ in ledger.history]
    events = [encode(e) for e in ledger.events]
    if written_at == 7:
        messages[-1] = _as_written_at_7(ledger.history[-1][0], "landed_event_number")
        events = [_as_written_at_7(e, "event_number") for e in ledger.events]

    clean = _verified(ledger, messages, events)
    assert (clean.differences, clean.matched) == ([], len(events))
    [last] = [e for e in ledger.events if e.type == "CompletionPublished"]
    forged = encode(last.model_copy(update={"event_number": "another-number"}))
    [difference] = _verified(ledger, messages, [*events[:-1], forged]).differences
    assert difference.fields == {"event_number": (number, "another-number")}


@pytest.mark.parametrize("given_number", [None, "order-42-complete"])
@pytest.mark.parametrize("how", ["refused", "retries ran out", "deadlines ran out"])
def test_every_publication_attempt_and_its_failure_say_the_number_it_writes_under(
    given_number: str | None, how: str
) -> None:
    """A consumer of [lifecycle] could not join a failed publication with the Talkable event
    it attempted: only a CompletionPublished said a number. Each PublicationStarted (the first,
    a re-issue, a redrive's) and the PublicationFailed say the number their attempt writes
    under (``attempted_event_number``, schema 9), the one its command carries."""
    ledger = Ledger(policy=Policy(max_attempts=2))
    admit(ledger, "req-1", event_number=given_number)
    number = given_number or "generate_text_complete-req-1"
    first = ledger.send(generated("req-1"))
    if how == "refused":
        final = ledger.send(publication_failed("req-1", 1, retriable=False))
    elif how == "retries ran out":
        ledger.send(publication_failed("req-1", 1, retriable=True))
        final = ledger.send(publication_failed("req-1", 2, retriable=True))
    else:
        ledger.send(expired("req-1", 1, "publishing"))
        final = ledger.send(expired("req-1", 2, "publishing"))
    [failed] = final.events
    assert (failed.type, failed.attempted_event_number) == ("PublicationFailed", number)
    redriven = ledger.send(
        RedriveRequested(
            request_id="req-1", person=PERSON, at_ms=T0 * 1000 + 60_000, stage="publishing",
            attempt=failed.attempt,
        )
    )  # fmt: skip
    [command] = [*first.commands, *redriven.commands][-1:]
    assert isinstance(command, PublishCompletion) and command.event_number == number
    said = [(e.type, e.attempt, e.attempted_event_number) for e in ledger.events]
    publications = [s for s in said if s[0] in ("PublicationStarted", "PublicationFailed")]
    attempts = 1 if how == "refused" else 2
    assert publications == [
        *[("PublicationStarted", n, number) for n in range(1, attempts + 1)],
        ("PublicationFailed", attempts, number),
        ("PublicationStarted", attempts + 1, number),  # the redrive's
    ]
    # no other transition says one, and the number it landed under stays the landing's own
    assert [s for s in said if s not in publications and s[2] is not None] == []
    assert {e.event_number for e in ledger.events} == {None}


def test_verify_agrees_with_a_log_written_before_the_attempted_number_and_after() -> None:
    """The ledger derives the attempted number from the request's params, which every log
    holds: a log written before schema 9 recorded PublicationStarted and PublicationFailed
    without it, and ``replay --verify``, which compares every field, still agrees with it. An
    event from schema 9 on is held to its number: one that says another is a difference."""
    ledger = Ledger()
    admit(ledger, "req-1", event_number="order-42-complete")
    ledger.send(generated("req-1"))
    ledger.send(publication_failed("req-1", 1, retriable=False))
    messages = [encode(message) for message, _ in ledger.history]
    events = [encode(e) for e in ledger.events]
    assert sum(b'"attempted_event_number":"order-42-complete"' in e for e in events) == 2

    def written_at_8(value: bytes) -> bytes:
        fields = json.loads(value)
        del fields["attempted_event_number"]
        return json.dumps(fields | {"schema_version": 8}).encode()

    for recorded in (events, [written_at_8(e) for e in events]):
        clean = _verified(ledger, messages, recorded)
        assert (clean.differences, clean.matched) == ([], len(events))
    [last] = ledger.events[-1:]
    forged = encode(last.model_copy(update={"attempted_event_number": "another-number"}))
    [difference] = _verified(ledger, messages, [*events[:-1], forged]).differences
    assert (difference.type, difference.fields) == (
        "PublicationFailed",
        {"attempted_event_number": ("order-42-complete", "another-number")},
    )


def test_verify_agrees_with_a_reissue_written_before_it_said_its_model_and_after() -> None:
    """A re-issued generation's ``GenerationStarted`` says its model from schema 12 on; one
    an earlier version recorded says none, and ``replay --verify`` agrees with both. From
    schema 12 on, a re-issue that says another model is a difference."""
    ledger = Ledger(policy=Policy(max_attempts=2))
    admit(ledger, "req-1", model="gpt-4.1")
    ledger.send(generation_failed("req-1", 1, retriable=True))
    messages = [encode(message) for message, _ in ledger.history]
    events = [encode(e) for e in ledger.events]
    [reissue] = [n for n, e in enumerate(ledger.events) if e.attempt == 2]

    def written_at_11(value: bytes) -> bytes:
        fields = json.loads(value)
        if fields["attempt"] == 2:  # a re-issue's said no model
            fields["model"] = None
        return json.dumps(fields | {"schema_version": 11}).encode()

    for recorded in (events, [written_at_11(e) for e in events]):
        clean = _verified(ledger, messages, recorded)
        assert (clean.differences, clean.matched) == ([], len(events))
    forged = encode(ledger.events[reissue].model_copy(update={"model": "gpt-4o"}))
    recorded = [*events[:reissue], forged, *events[reissue + 1 :]]
    [difference] = _verified(ledger, messages, recorded).differences
    assert (difference.type, difference.fields) == (
        "GenerationStarted",
        {"model": ("gpt-4.1", "gpt-4o")},
    )


@pytest.mark.parametrize(
    "result", [published("req-1"), publication_failed("req-1")], ids=["published", "failed"]
)
def test_verify_agrees_with_publications_written_before_they_said_their_call_time_and_after(
    result: PublicationAttemptSucceeded | PublicationAttemptFailed,
) -> None:
    """``CompletionPublished`` and ``PublicationFailed`` say their Talkable call's time from
    schema 13 on. A log an earlier version wrote has results that said none (0 when read now)
    and events that say none (null): ``replay --verify`` agrees with it, and with one of this
    version's; from schema 13 on, another time is a difference."""
    ledger = Ledger()
    admit(ledger, "req-1")
    ledger.send(generated("req-1"))
    [event] = ledger.send(result.model_copy(update={"latency_ms": 420})).events
    assert event.latency_ms == 420
    messages = [encode(message) for message, _ in ledger.history]
    events = [encode(e) for e in ledger.events]

    def written_at_12(value: bytes) -> bytes:
        fields = json.loads(value)
        if fields.get("kind", "").startswith("publication_"):
            del fields["latency_ms"]  # a result said none
        if fields.get("type") == event.type:
            fields["latency_ms"] = None  # nor did its event
        return json.dumps(fields | {"schema_version": 12}).encode()

    for requests, recorded in (
        (messages, events),
        ([written_at_12(m) for m in messages], [written_at_12(e) for e in events]),
    ):
        clean = _verified(ledger, requests, recorded)
        assert (clean.differences, clean.matched) == ([], len(events))
    forged = encode(ledger.events[-1].model_copy(update={"latency_ms": 999}))
    [difference] = _verified(ledger, messages, [*events[:-1], forged]).differences
    assert (difference.type, difference.fields) == (event.type, {"latency_ms": (420, 999)})


def test_a_readmitted_request_gets_its_own_default_event_number() -> None:
    ledger = Ledger(policy=Policy(dedupe_window_ms=1000))
    admit(ledger, "req-1", delivery_id="d1")
    ledger.send(generation_failed("req-1"))
    again = admit(ledger, "req-1", delivery_id="d2", at_ms=T0 * 1000 + 5000)
    entity = again.events[0].request_id
    command = _publish_command(ledger, entity)
    assert command.event_number == f"generate_text_complete-{entity}"


def test_a_request_named_by_its_fingerprint_has_a_number_of_its_own_to_write_under() -> None:
    """The same params once the person was forgotten whole take an earlier request's id, and
    Talkable holds that request's event under the id's default number ("Duplicate entity": other
    data). The command names the number the text then goes under, a repeat's of this delivery;
    every attempt carries the same (Talkable takes the same event again)."""
    ledger = Ledger()
    admit(ledger, "req-1", usage_limit=limit(amount=3), delivery_id="d1")
    first = _publish_command(ledger)
    assert (first.event_number, first.other_event_number) == (
        "generate_text_complete-req-1",
        "generate_text_complete-req-1~d1",
    )
    [again] = ledger.send(publication_failed("req-1", 1, retriable=True)).commands
    assert isinstance(again, PublishCompletion) and again.attempt == 2
    assert again.other_event_number == first.other_event_number
    # written under it: the transition says where, and why
    [event] = ledger.send(
        published(
            "req-1",
            2,
            event_number="generate_text_complete-req-1~d1",
            landed_event_number="generate_text_complete-req-1~d1",
        )
    ).events
    assert event.type == "CompletionPublished"
    assert event.event_number == "generate_text_complete-req-1~d1"
    assert event.cause.startswith(
        "published to Talkable as event number generate_text_complete-req-1~d1: Talkable"
        " holds another request's event under this request's own"
    )


def test_no_other_number_for_a_campaigns_number_a_repeat_or_an_unfrozen_window() -> None:
    given = Ledger()
    admit(given, "req-1", event_number="order-42-complete")
    assert _publish_command(given).other_event_number is None
    repeat = Ledger()
    admit(repeat, "fp~d2")  # a repeat's id is its delivery's own: nobody else's
    assert _publish_command(repeat, "fp~d2").other_event_number is None
    # a flight an earlier version tracked did not freeze its window: an earlier attempt of its
    # own may hold other data, and its "Duplicate entity" stays the success it was
    older = Ledger()
    admit(older, "req-1", usage_limit=limit(amount=3))
    _publish_command(older)
    assert older.state is not None
    flight = older.state.inflight["req-1"].model_copy(update={"written_window": None})
    assert publish_command(flight, older.state.window, 0).other_event_number is None
    assert (
        publish_command(
            flight.model_copy(update={"request": received("req-1")}), None, 0
        ).other_event_number
        == "generate_text_complete-req-1~req-1/delivery-1"
    )


def test_no_lifecycle_field_can_carry_a_secret() -> None:
    names = set(LifecycleEvent.model_fields)
    assert not {n for n in names if any(w in n for w in ("key", "secret", "sealed", "token"))} - {
        "prompt_tokens",
        "completion_tokens",
    }
    for name, info in LifecycleEvent.model_fields.items():
        assert "Fernet" not in (info.description or ""), name


# --- properties over any interleaving ---------------------------------------------------------

RIDS = ["r0", "r1", "r2", "r3"]
DEDUPE_S = 30
TRIGGERS = [None, None, None, "true", " TRUE\n", "false", "", "yes"]
RESULT_KINDS = [
    "generated",
    "generation_failed",
    "published",
    "publication_failed",
    "expired",
    "redrive",
]


@dataclass
class Model:
    """What DESIGN.md §2-§3 say must happen, kept apart from ``models.ledger``."""

    amount: int
    duration: int
    policy: Policy
    window: tuple[int, int] | None = None
    seen: dict[str, int] = field(default_factory=dict)  # request_id -> first at_ms
    answered: set[tuple[str, str]] = field(default_factory=set)  # (request_id, delivery_id)
    inflight: dict[str, tuple[Stage, int]] = field(default_factory=dict)  # entity -> stage, try
    webhook: dict[str, str] = field(default_factory=dict)  # entity -> request_id
    slot: dict[str, int | None] = field(default_factory=dict)  # entity -> window start
    parked: dict[str, tuple[Stage, int]] = field(default_factory=dict)  # failed: stage, try
    limits: dict[str, UsageLimit | None] = field(default_factory=dict)  # entity -> its limit

    def receive(self, r: RequestReceived) -> tuple[str | None, list[str]]:
        """The entity and the event types expected for ``r`` (None: nothing at all)."""
        key = (r.request_id, r.delivery_id)
        if key in self.answered:
            return None, []
        self.answered.add(key)
        first = self.seen.get(r.request_id)
        entity = r.request_id if first is None else f"{r.request_id}~{r.delivery_id}"
        in_flight = r.request_id in {self.webhook[e] for e in self.inflight}
        if in_flight or (first is not None and r.at_ms - first < self.policy.dedupe_window_ms):
            return entity, ["RequestReceived", "DuplicateRejected"]
        self.seen[r.request_id] = r.at_ms
        if r.spec.trigger_criteria is not None and r.spec.trigger_criteria.strip().lower() != (
            "true"
        ):
            return entity, ["RequestReceived", "RequestSkipped"]
        taken: int | None = None
        usage = r.spec.usage_limit
        if usage is not None:
            start, count = self.window or (usage.start_time, usage.current_usage_amount)
            if usage.current_time - start >= usage.duration_in_seconds:
                start, count = usage.current_time, 0
            self.window = (start, count)
            if count >= usage.amount:
                return entity, ["RequestReceived", "UsageLimited"]
            self.window = (start, count + 1)
            taken = start
        self.inflight[entity] = ("generating", 1)
        self.webhook[entity] = r.request_id
        self.slot[entity] = taken
        self.limits[entity] = usage
        return entity, HAPPY

    def result(self, m: RequestsValue) -> list[str]:
        if isinstance(m, RedriveRequested):
            if m.request_id not in self.parked:
                return []
            if m.attempt is not None and (m.stage, m.attempt) != self.parked[m.request_id]:
                return []  # stale: of an attempt not parked now
            stage, attempt = self.parked.pop(m.request_id)
            if stage == "publishing":
                self.inflight[m.request_id] = ("publishing", attempt + 1)
                return ["PublicationStarted"]
            return self._readmit(m.request_id, attempt + 1, m.at_ms // 1000)
        flight = self.inflight.get(m.request_id)
        if flight is None:
            return []
        stage, attempt = flight
        retry = getattr(m, "retriable", False) and attempt < self.policy.max_attempts
        if (
            isinstance(m, GenerationAttemptSucceeded)
            and stage == "generating"
            and m.attempt <= attempt
        ):
            self.inflight[m.request_id] = ("publishing", 1)
            return ["TextGenerated", "PublicationStarted"]
        if (
            isinstance(m, GenerationAttemptFailed)
            and stage == "generating"
            and m.attempt == attempt
        ):
            return self._retry(m.request_id) if retry else self._failed(m.request_id)
        if (
            isinstance(m, PublicationAttemptSucceeded)
            and stage == "publishing"
            and m.attempt <= attempt
        ):
            del self.inflight[m.request_id]
            return ["CompletionPublished"]
        if (
            isinstance(m, PublicationAttemptFailed)
            and stage == "publishing"
            and m.attempt == attempt
        ):
            return self._retry(m.request_id) if retry else self._park(m.request_id)
        if isinstance(m, DeadlineExpired) and stage == m.stage and m.attempt == attempt:
            if attempt < self.policy.max_attempts:
                return self._retry(m.request_id)
            if stage == "generating":
                return self._failed(m.request_id)
            return self._park(m.request_id)
        return []

    def _park(self, entity: str) -> list[str]:
        self.parked[entity] = ("publishing", self.inflight.pop(entity)[1])
        return ["PublicationFailed"]

    def _readmit(self, entity: str, attempt: int, now: int) -> list[str]:
        """A redriven generation takes a slot again, judged at the redrive's time."""
        usage, taken = self.limits[entity], None
        if usage is not None:
            start, count = self.window or (usage.start_time, usage.current_usage_amount)
            if now - start >= usage.duration_in_seconds:
                start, count = now, 0
            self.window = (start, count)
            if count >= usage.amount:
                return ["UsageLimited"]
            self.window, taken = (start, count + 1), start
        self.inflight[entity] = ("generating", attempt)
        self.slot[entity] = taken
        return ["RequestAdmitted", "GenerationStarted"]

    def _retry(self, entity: str) -> list[str]:
        stage, attempt = self.inflight[entity]
        self.inflight[entity] = (stage, attempt + 1)
        return ["GenerationStarted" if stage == "generating" else "PublicationStarted"]

    def _failed(self, entity: str) -> list[str]:
        self.parked[entity] = ("generating", self.inflight.pop(entity)[1])
        taken = self.slot[entity]
        if self.window is not None and taken == self.window[0] and self.window[1] > 0:
            self.window = (taken, self.window[1] - 1)
        return ["GenerationFailed"]


@dataclass
class Run:
    """Feeds one person's ledger and checks every outcome against the model and the rules."""

    model: Model
    ledger: Ledger
    clock: int = T0
    deliveries: int = 0
    sent: list[tuple[RequestsValue, int]] = field(default_factory=list)
    lifecycle: dict[str, list[State]] = field(default_factory=dict)

    def send(self, message: RequestsValue) -> Outcome:
        before = self.ledger.state or PersonState()
        self.ledger.now_ms = self.clock * 1000
        self.sent.append((message, self.ledger.now_ms))
        outcome = self.ledger.send(message)
        if isinstance(message, RequestReceived):
            entity, expected = self.model.receive(message)
            assert [e.request_id for e in outcome.events] == [entity] * len(expected)
        else:
            expected = self.model.result(message)
        assert types_of(outcome) == expected, (message, types_of(outcome), expected)
        if not expected:  # late, duplicate, stale or redelivered: nothing changes
            assert outcome == Outcome(state=before)
        self._check(outcome)
        return outcome

    def _check(self, outcome: Outcome) -> None:
        state = outcome.state
        window = state.window
        assert ((window.start, window.count) if window else None) == self.model.window
        assert {e: (f.state.value, f.attempt) for e, f in state.inflight.items()} == (
            self.model.inflight
        )
        for event in outcome.events:
            history = self.lifecycle.setdefault(event.request_id, [])
            previous = history[-1] if history else None
            assert event.previous_state == previous, (event, history)
            check_transition(event.request_id, previous, event.state)
            history.append(event.state)
            dumped = event.model_dump_json()
            # every event survives the wire: what analytics decode is what the ledger meant
            assert LifecycleEvent.model_validate_json(dumped) == event
            assert SEALED_OPENAI not in dumped
            assert SEALED_TALKABLE not in dumped
        for command in outcome.commands:
            flight = state.inflight[command.request_id]
            assert command.attempt == flight.attempt
            if isinstance(command, GenerateText):
                assert flight.state is State.GENERATING
                assert command.openai_api_key == SEALED_OPENAI
            else:
                assert flight.state is State.PUBLISHING
                assert command.talkable_api_key == SEALED_TALKABLE
        # every request that ends publish_failed or generation_failed is dead-lettered, and
        # nothing else is
        failed = {State.PUBLISH_FAILED, State.GENERATION_FAILED}
        parked = [e.request_id for e in outcome.events if e.state in failed]
        assert [letter.command.request_id for letter in outcome.dead_letters] == parked
        assert set(state.parked) == set(self.model.parked)
        self._check_windows()

    def _check_windows(self) -> None:
        """No window ever holds more than ``amount`` admitted-and-not-failed requests (a
        redriven generation holds a slot again once re-admitted)."""
        holders: dict[int, set[str]] = {}
        for event in self.ledger.events:
            if event.type == "RequestAdmitted" and event.window_start is not None:
                holders.setdefault(event.window_start, set()).add(event.request_id)
            if event.state is State.GENERATION_FAILED:
                for entities in holders.values():
                    entities.discard(event.request_id)
            for start, entities in holders.items():
                assert len(entities) <= self.model.amount, (start, entities)

    def receive(self, data: st.DataObject) -> RequestReceived:
        self.deliveries += 1
        usage = None
        if data.draw(st.booleans(), label="limited"):
            back = data.draw(st.sampled_from([0, 1, self.model.duration - 1, self.model.duration]))
            usage = limit(
                amount=self.model.amount,
                duration=self.model.duration,
                start=self.clock - back,
                now=self.clock - data.draw(st.sampled_from([0, 0, 1]), label="skew"),
                used=data.draw(st.integers(0, self.model.amount + 1), label="used"),
            )
        return received(
            data.draw(st.sampled_from(RIDS), label="request_id"),
            delivery_id=f"dlv-{self.deliveries}",
            at_ms=self.clock * 1000,
            usage_limit=usage,
            trigger=data.draw(st.sampled_from(TRIGGERS), label="trigger"),
        )

    def result(self, data: st.DataObject, entity: str | None = None) -> RequestsValue:
        if entity is None:
            known = sorted(self.model.inflight) * 3 + sorted(self.lifecycle) + ["ghost"]
            entity = data.draw(st.sampled_from(known), label="entity")
        stage, current = self.model.inflight.get(entity, ("generating", 1))
        attempt = data.draw(
            st.sampled_from(sorted({max(1, current - 1), current, current + 1})), label="attempt"
        )
        kind = data.draw(st.sampled_from(RESULT_KINDS), label="kind")
        retriable = data.draw(st.booleans(), label="retriable")
        at_ms = self.clock * 1000
        if kind == "generated":
            return generated(entity, attempt, at_ms=at_ms)
        if kind == "generation_failed":
            return generation_failed(entity, attempt, retriable=retriable, at_ms=at_ms)
        if kind == "published":
            return published(entity, attempt, duplicate=retriable, at_ms=at_ms)
        if kind == "publication_failed":
            return publication_failed(entity, attempt, retriable=retriable, at_ms=at_ms)
        if kind == "redrive":  # of the attempt parked, of another (stale), or of any (None)
            parked = self.model.parked.get(entity, ("generating", 1))
            of = data.draw(
                st.sampled_from(
                    [None, parked, (parked[0], parked[1] + 1), ("generating", parked[1])]
                ),
                label="redrive of",
            )
            stage, tried = of if of is not None else (None, None)
            return RedriveRequested(
                request_id=entity, person=PERSON, at_ms=at_ms, stage=stage, attempt=tried
            )
        other: Stage = "publishing" if stage == "generating" else "generating"
        return expired(entity, attempt, data.draw(st.sampled_from([stage, other])), at_ms=at_ms)

    def drain(self, data: st.DataObject) -> None:
        """Drive every in-flight request to its end, by results or by deadlines alone."""
        for entity in sorted(self.model.inflight):
            for _ in range(2 * self.model.policy.max_attempts + 2):
                if entity not in self.model.inflight:
                    break
                stage, attempt = self.model.inflight[entity]
                how = data.draw(st.sampled_from(["deadline", "success", "failure"]), label="end")
                if how == "deadline":
                    message: RequestsValue = expired(entity, attempt, stage)
                elif stage == "generating":
                    message = (
                        generated(entity, attempt)
                        if how == "success"
                        else generation_failed(entity, attempt, retriable=True)
                    )
                else:
                    message = (
                        published(entity, attempt)
                        if how == "success"
                        else publication_failed(entity, attempt, retriable=True)
                    )
                self.send(message)
            assert entity not in self.model.inflight


@st.composite
def configs(draw: st.DrawFn) -> tuple[int, int, Policy]:
    amount = draw(st.integers(0, 4), label="amount")
    duration = draw(st.sampled_from([1, 2, 5, 60]), label="duration")
    policy = Policy(
        max_attempts=draw(st.integers(1, 3), label="max_attempts"),
        dedupe_window_ms=DEDUPE_S * 1000,
    )
    return amount, duration, policy


def _interleave(data: st.DataObject, config: tuple[int, int, Policy]) -> Run:
    amount, duration, policy = config
    run = Run(model=Model(amount, duration, policy), ledger=Ledger(policy=policy))
    steps = data.draw(st.integers(1, 40), label="steps")
    for _ in range(steps):
        run.clock += data.draw(
            st.sampled_from([0, 0, 0, 1, duration - 1, duration, DEDUPE_S]), label="tick"
        )
        what = data.draw(
            st.sampled_from(["receive"] * 2 + ["result"] * 3 + ["redeliver"]), label="what"
        )
        if what == "receive" or not run.sent:
            run.send(run.receive(data))
        elif what == "result":
            run.send(run.result(data))
        else:
            run.send(data.draw(st.sampled_from([m for m, _ in run.sent]), label="redelivered"))
    run.drain(data)
    for kind in sorted(set(run.ledger.types())):
        hypothesis.event(kind)  # see the mix with --hypothesis-show-statistics
    return run


@FAST
@given(data=st.data(), config=configs())
def test_any_interleaving_follows_the_rules(
    data: st.DataObject, config: tuple[int, int, Policy]
) -> None:
    """Limits, dedupe, stale results and the lifecycle table hold for any interleaving, and
    every request ends in exactly one terminal state once its results are in."""
    run = _interleave(data, config)

    assert run.ledger.state is not None
    assert run.ledger.state.inflight == {}
    for entity, states in run.lifecycle.items():
        assert states[0] is State.RECEIVED
        assert states[-1] in TERMINAL, (entity, states)
        # one terminal state, but for a failure that an operator redrove
        ends = [i for i, state in enumerate(states) if state in TERMINAL]
        assert all(
            (states[i], states[i + 1])
            in {
                (State.PUBLISH_FAILED, State.PUBLISHING),
                (State.GENERATION_FAILED, State.ADMITTED),
                (State.GENERATION_FAILED, State.LIMITED),
            }
            for i in ends[:-1]
        ), (entity, states)


@FAST
@given(data=st.data(), config=configs())
def test_a_state_restored_from_its_changelog_bytes_decides_the_same(
    data: st.DataObject, config: tuple[int, int, Policy]
) -> None:
    """What a new owner of the partition decides, from the state it recovered, is what the
    old owner decided: the state survives its JSON round trip whole."""
    run = _interleave(data, config)
    outcomes = [outcome for _, outcome in run.ledger.history]
    restored, stored = [], None
    for message, now_ms in run.sent:
        again = handle(stored, message, config[2], now_ms)
        restored.append(again)
        stored = PersonState.model_validate_json(again.state.model_dump_json())
    assert restored == outcomes


def _verify(run: Run, policy: Policy, recorded: list[LifecycleEvent]) -> VerifySummary:
    """``talkstream replay --verify``'s comparison over what this run sent and recorded."""
    check = Rederivation(policy, VerifySummary("requests", "lifecycle"))
    for offset, (message, now_ms) in enumerate(run.sent):
        check.request(Record("requests", 0, offset, now_ms, encode(message)))
    for offset, event in enumerate(recorded):
        check.recorded(Record("lifecycle", 0, offset, 0, encode(event)))
    return check.compare()


TAMPERINGS = {
    "a window count": lambda e: e.model_copy(update={"window_count": (e.window_count or 0) + 1}),
    "a cause": lambda e: e.model_copy(update={"cause": e.cause + " (edited)"}),
    "an event time": lambda e: e.model_copy(update={"at_ms": e.at_ms + 1}),
    "a state": lambda e: e.model_copy(
        update={"state": State.LIMITED if e.state is not State.LIMITED else State.SKIPPED}
    ),
}


@FAST
@given(data=st.data(), config=configs(), how=st.sampled_from(sorted(TAMPERINGS)))
def test_a_replay_finds_every_tampered_decision(
    data: st.DataObject, config: tuple[int, int, Policy], how: str
) -> None:
    run = _interleave(data, config)
    policy = config[2]
    recorded = run.ledger.events
    clean = _verify(run, policy, recorded)
    assert clean.differences == [] and clean.skipped == []
    assert clean.matched == len(recorded) > 0

    victim = data.draw(st.integers(0, len(recorded) - 1), label="tampered event")
    forged = [*recorded]
    forged[victim] = TAMPERINGS[how](recorded[victim])
    found = _verify(run, policy, forged).differences
    assert found, f"tampering with {how} of {recorded[victim]} went unnoticed"
    assert {d.request_id for d in found} == {recorded[victim].request_id}

    dropped = _verify(run, policy, recorded[:victim] + recorded[victim + 1 :]).differences
    assert [(d.kind, d.type) for d in dropped] == [("missing", recorded[victim].type)]


@FAST
@given(
    amount=st.integers(1, 4),
    duration=st.integers(2, 3600),
    offset=st.data(),
    retriable_then_deadline=st.booleans(),
)
def test_a_released_slot_is_reused_in_the_same_window(
    amount: int, duration: int, offset: st.DataObject, retriable_then_deadline: bool
) -> None:
    ledger = Ledger(policy=Policy(max_attempts=1))
    now = T0
    for n in range(amount):
        admit(ledger, f"req-{n}", usage_limit=limit(amount=amount, duration=duration, now=now))
    failing = f"req-{offset.draw(st.integers(0, amount - 1), label='failing')}"
    if retriable_then_deadline:
        ledger.send(expired(failing, 1, "generating"))
    else:
        ledger.send(generation_failed(failing, 1))
    later = now + offset.draw(st.integers(0, duration - 1), label="later")
    snapshot = limit(amount=amount, duration=duration, now=later)
    assert types_of(ledger.send(received("next", usage_limit=snapshot))) == HAPPY
    assert types_of(ledger.send(received("one-more", usage_limit=snapshot))) == [
        "RequestReceived",
        "UsageLimited",
    ]


@FAST
@given(start=st.integers(0, T0), duration=st.integers(1, 10**6), amount=st.integers(1, 5))
def test_window_boundaries_are_exact_through_the_ledger(
    start: int, duration: int, amount: int
) -> None:
    ledger = Ledger()
    for n in range(amount):
        snapshot = limit(amount=amount, duration=duration, start=start, now=start)
        admit(ledger, f"req-{n}", usage_limit=snapshot)
    last = limit(amount=amount, duration=duration, start=start, now=start + duration - 1)
    assert types_of(ledger.send(received("same", usage_limit=last)))[-1] == "UsageLimited"
    nxt = limit(amount=amount, duration=duration, start=start, now=start + duration)
    outcome = ledger.send(received("new", usage_limit=nxt))
    assert types_of(outcome) == HAPPY
    assert outcome.state.window == Window(start=start + duration, count=1)
