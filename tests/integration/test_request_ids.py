"""The same params once the ledger has forgotten their fingerprint (here: pushed out by the
person's other webhooks, with the smallest MAX_ENTRY_BYTES), on the real broker, ingress and
stand-ins: a request of its own, whose text Talkable gets under an event number of its own.
Before, it was named by the fingerprint again, the first request's id and default event number:
Talkable kept the first event ("Duplicate entity", or the same data again) and the projection
folded the two requests into one."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from models.params import from_mapping, request_fingerprint
from streams.dev.kafka import EmbeddedKafka
from tests.integration.conftest import System, http
from tests.support import seed_params, wait_until

pytestmark = pytest.mark.integration

EMAIL = "many@example.com"
# the smallest entry: a quarter of it (32 KiB) for fingerprints, fewer than 200 of them
ENTRY_BYTES = "131072"
SIX = ["received", "admitted", "generating", "generated", "publishing", "published"]


@pytest.fixture(scope="module")
def system(kafka: EmbeddedKafka, tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    """One deployment for the module's two tests (each with a person of its own), on the
    smallest entry: the first test's (the second's one webhook fits it as any)."""
    deployment = System(kafka, tmp_path_factory.mktemp("system"), max_entry_bytes=ENTRY_BYTES)
    yield deployment.start()
    deployment.stop()


def test_the_same_params_once_forgotten_are_a_request_and_an_event_of_their_own(
    system: System,
) -> None:
    params = seed_params(EMAIL, content="A verse for a person of many webhooks.")
    status, first = system.post(params)
    assert status == 202, first
    status, retry = system.post(params)  # Talkable's retry: the same id, processed once
    assert (status, retry["request_id"]) == (202, first["request_id"]), retry
    fingerprint = first["request_id"]
    assert system.wait_terminal([fingerprint])[fingerprint].state == "published"

    # the person's other webhooks (skipped: no call) push the first's fingerprint out
    others = [seed_params(EMAIL, content=f"other {n}", trigger="false") for n in range(300)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers: list[tuple[int, Any]] = list(pool.map(system.post, others))
    assert {status for status, _ in answers} == {202}
    system.wait_terminal([body["request_id"] for _, body in answers], timeout=120)

    status, again = system.post(params)  # the same id answered: the same params
    assert (status, again["request_id"]) == (202, fingerprint), again

    def named_after() -> dict[str, str] | None:
        rows = system.projection.repeats_of(fingerprint, 10)
        states = {row.request_id: row.state for row in rows}
        return states if len(states) == 2 and "published" in states.values() else None

    states = wait_until(named_after, 60, what="the retry and the request of the same params")
    [again_id] = [rid for rid, state in states.items() if state == "published"]
    assert sorted(states.values()) == ["published", "rejected_duplicate"]

    def events() -> list[dict[str, Any]] | None:
        found = [
            e
            for e in system.talkable("GET", "/_events")
            if e["email"] == EMAIL and e["event_category"] == "generate_text_complete"
        ]
        return found if len(found) >= 2 else None

    numbers = sorted(e["event_number"] for e in wait_until(events, 30, what="two events"))
    assert numbers == sorted(f"generate_text_complete-{rid}" for rid in (fingerprint, again_id))
    # and each request is whole in the projection: its own six transitions
    for rid in (fingerprint, again_id):
        assert [t.state for t in system.projection.transitions(rid)] == SIX


def test_the_same_params_after_the_person_was_forgotten_land_under_a_number_of_their_own(
    system: System,
) -> None:
    """A person silent for the fingerprint retention is forgotten as a whole: the same params
    then take the earlier request's id again (decided as never heard of), and Talkable holds
    that request's event under the id's default number. Here Talkable holds it before the
    webhook arrives (the earlier request, a month back); the text must land under the number
    of a repeat of this delivery, and the person's property be the new text. Before, Talkable's
    "Duplicate entity" counted as published and the person kept the earlier text."""
    email = "monthly@example.com"
    params = seed_params(email, content="This month's verse for a returning person.")
    fingerprint = request_fingerprint(from_mapping(params))
    own = f"generate_text_complete-{fingerprint}"
    earlier = {
        "site_slug": params["site"],
        "type": "Event",
        "data": {
            "email": email,
            "event_category": "generate_text_complete",
            "event_number": own,
            "subtotal": 0,
            "custom_properties": {"generated_text": "Last month's verse."},
        },
    }
    url = f"http://127.0.0.1:{system.talkable_port}/api/v2/origins/event"
    status, _ = http("POST", url, earlier, {"Authorization": f"Bearer {params['api_key']}"})
    assert status == 201

    status, body = system.post(params)
    assert (status, body["request_id"]) == (202, fingerprint), body
    assert system.wait_terminal([fingerprint])[fingerprint].state == "published"

    def written() -> dict[str, Any] | None:
        everyone = system.talkable("GET", "/_events")
        found = {e["event_number"]: e for e in everyone if e["email"] == email}
        return found if len(found) == 2 else None

    events = wait_until(written, 30, what="the request's event beside the earlier one")
    [other] = [number for number in events if number != own]
    assert other.startswith(f"{own}~"), other
    text = events[other]["custom_properties"]["generated_text"]
    assert text and text != "Last month's verse."
    assert events[own]["custom_properties"]["generated_text"] == "Last month's verse."
    # and the transition says under which number, and why
    [published] = [t for t in system.projection.transitions(fingerprint) if t.state == "published"]
    assert f"as event number {other}" in published.cause, published.cause
    # and so does the request's row: where its event is, not the number Talkable refused
    assert system.wait_terminal([fingerprint])[fingerprint].event_number == other
