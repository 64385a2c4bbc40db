"""A parked publication (publish_failed) can be redriven by an operator, once."""

from __future__ import annotations

from models.events import PublicationSucceeded
from models.lifecycle import State
from tests.unit.domain_builders import (
    PERSON,
    SITE,
    T0,
    Ledger,
    generated,
    publication_failed,
    received,
)


def redriven(request_id: str) -> PublicationSucceeded:
    return PublicationSucceeded(
        request_id=request_id,
        person=PERSON,
        site=SITE,
        attempt=1,
        at_ms=T0 * 1000 + 5,
        redrive=True,
    )


def parked_ledger() -> Ledger:
    ledger = Ledger()
    ledger.send(received("req-1"))
    ledger.send(generated("req-1"))
    ledger.send(publication_failed("req-1"))
    assert ledger.states("req-1")[-1] is State.PUBLISH_FAILED
    assert ledger.state is not None and "req-1" in ledger.state.parked
    return ledger


def test_a_redriven_publication_that_lands_ends_published() -> None:
    ledger = parked_ledger()
    outcome = ledger.send(redriven("req-1"))
    [event] = outcome.events
    assert (event.previous_state, event.state) == (State.PUBLISH_FAILED, State.PUBLISHED)
    assert event.site == SITE and "redriven" in event.cause
    assert outcome.state.parked == {}


def test_a_second_redrive_result_changes_nothing() -> None:
    ledger = parked_ledger()
    ledger.send(redriven("req-1"))
    assert ledger.send(redriven("req-1")).events == []


def test_a_plain_late_success_does_not_reopen_a_failed_publication() -> None:
    ledger = parked_ledger()
    late = PublicationSucceeded(request_id="req-1", person=PERSON, attempt=1, at_ms=T0 * 1000)
    outcome = ledger.send(late)
    assert outcome.events == []
    assert "req-1" in outcome.state.parked


def test_a_redrive_of_something_never_parked_changes_nothing() -> None:
    ledger = Ledger()
    ledger.send(received("req-1"))
    assert ledger.send(redriven("req-1")).events == []
    assert ledger.send(redriven("unknown")).events == []


def test_parked_publications_are_forgotten_after_the_fingerprint_retention() -> None:
    ledger = parked_ledger()
    later = T0 * 1000 + ledger.policy.fingerprint_retention_ms + 1
    ledger.send(received("req-2", at_ms=later))
    assert ledger.state is not None and ledger.state.parked == {}
    assert ledger.send(redriven("req-1")).events == []
