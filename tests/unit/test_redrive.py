"""A parked publication (publish_failed) can be redriven by an operator: the redrive goes
through the ledger, which re-issues it as one more attempt, routed like any other. Results of
redrives run by earlier versions (straight to the publisher) still land."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Literal

import pytest

from models.events import (
    DeadLetter,
    GenerateText,
    PublicationAttemptSucceeded,
    PublishCompletion,
    RedriveRequested,
)
from models.lifecycle import State
from models.state import GivenUp
from streams.codecs import decode_requests, encode
from streams.ops.redrive import RedriveReport, Selection, _one, _Send
from streams.settings import Settings
from tests.unit.domain_builders import (
    PERSON,
    SEALED_TALKABLE,
    SITE,
    T0,
    Ledger,
    generated,
    generation_failed,
    limit,
    publication_failed,
    published,
    received,
    types_of,
)


def redrive(
    request_id: str,
    at_ms: int = T0 * 1000 + 60_000,
    of: tuple[Literal["generating", "publishing"], int] | None = None,
) -> RedriveRequested:
    """``of``: the stage and attempt it was parked at (None: an earlier version's redrive)."""
    stage, attempt = of if of is not None else (None, None)
    return RedriveRequested(
        request_id=request_id,
        person=PERSON,
        at_ms=at_ms,
        reason="Talkable answered 401",
        stage=stage,
        attempt=attempt,
    )


def redriven(request_id: str, landed: str | None = None) -> PublicationAttemptSucceeded:
    return PublicationAttemptSucceeded(
        request_id=request_id,
        person=PERSON,
        site=SITE,
        attempt=1,
        at_ms=T0 * 1000 + 5,
        redrive=True,
        landed_event_number=landed,
    )


def parked_ledger() -> Ledger:
    ledger = Ledger()
    ledger.send(received("req-1"))
    ledger.send(generated("req-1"))
    ledger.send(publication_failed("req-1"))
    assert ledger.states("req-1")[-1] is State.PUBLISH_FAILED
    assert ledger.state is not None and "req-1" in ledger.state.parked
    return ledger


def test_a_redrive_reissues_the_parked_publication_as_its_next_attempt() -> None:
    ledger = parked_ledger()
    [letter] = ledger.history[-1][1].dead_letters
    outcome = ledger.send(redrive("req-1"))
    [event] = outcome.events
    assert (event.type, event.previous_state, event.state) == (
        "PublicationStarted",
        State.PUBLISH_FAILED,
        State.PUBLISHING,
    )
    assert event.attempt == 2 and "redriven by an operator" in event.cause
    assert "Talkable answered 401" in event.cause
    assert event.at_ms == T0 * 1000 + 60_000
    [command] = outcome.commands
    assert isinstance(command, PublishCompletion)
    assert (command.attempt, command.redrive) == (2, True)
    # the same event as the one given up on: same number, same text and key
    assert command.event_number == letter.command.event_number
    assert command.custom_properties == letter.command.custom_properties
    assert command.talkable_api_key == letter.command.talkable_api_key
    assert outcome.state.parked == {} and outcome.state.parked_flights == {}
    assert outcome.state.inflight["req-1"].attempt == 2

    landed = ledger.send(published("req-1", 2))
    assert [(e.type, e.previous_state, e.state) for e in landed.events] == [
        ("CompletionPublished", State.PUBLISHING, State.PUBLISHED)
    ]
    assert landed.state.inflight == {}


def test_a_redrive_that_fails_again_is_parked_and_dead_lettered_again() -> None:
    ledger = parked_ledger()
    ledger.send(redrive("req-1"))
    again = ledger.send(publication_failed("req-1", 2))
    assert types_of(again) == ["PublicationFailed"]
    [letter] = again.dead_letters
    assert letter.command.attempt == 2 and letter.reason
    assert "req-1" in again.state.parked
    # and can be redriven once more
    assert types_of(ledger.send(redrive("req-1", at_ms=T0 * 1000 + 120_000))) == [
        "PublicationStarted"
    ]


def test_a_redrive_writes_back_the_window_its_first_attempt_did() -> None:
    """The first attempt may have landed (its answer lost): the same event again is a success,
    the same event number with another window a 400 "Duplicate entity"."""
    ledger = Ledger()
    ledger.send(received("req-1", usage_limit=limit(amount=3)))
    [first] = ledger.send(generated("req-1")).commands
    ledger.send(publication_failed("req-1"))
    ledger.send(received("req-2", usage_limit=limit(amount=3, now=T0 + 1)))
    [command] = ledger.send(redrive("req-1")).commands
    assert command.custom_properties == first.custom_properties
    assert command.custom_properties["__current_usage_amount"] == "1"


def test_a_redrive_of_a_flight_from_an_earlier_version_writes_back_the_window_now() -> None:
    """A flight parked before the window was frozen with it has only the person's now."""
    ledger = Ledger()
    ledger.send(received("req-1", usage_limit=limit(amount=3)))
    ledger.send(generated("req-1"))
    ledger.send(publication_failed("req-1"))
    ledger.send(received("req-2", usage_limit=limit(amount=3, now=T0 + 1)))
    assert ledger.state is not None
    flights = ledger.state.parked_flights
    legacy = {rid: f.model_copy(update={"written_window": None}) for rid, f in flights.items()}
    ledger.state = ledger.state.model_copy(update={"parked_flights": legacy})
    [command] = ledger.send(redrive("req-1")).commands
    assert command.custom_properties["__current_usage_amount"] == "2"


def test_a_redrive_of_a_request_not_parked_changes_nothing() -> None:
    ledger = parked_ledger()
    ledger.send(redrive("req-1"))
    assert ledger.send(redrive("req-1")).events == []  # already running again
    fresh = Ledger()
    fresh.send(received("req-1"))
    assert fresh.send(redrive("req-1")).events == []  # in flight, never parked
    assert fresh.send(redrive("unknown")).events == []


def test_a_redriven_publication_that_lands_ends_published() -> None:
    ledger = parked_ledger()
    outcome = ledger.send(redriven("req-1"))
    [event] = outcome.events
    assert (event.previous_state, event.state) == (State.PUBLISH_FAILED, State.PUBLISHED)
    assert event.site == SITE and "redriven" in event.cause
    assert outcome.state.parked == {}
    assert event.event_number is None  # its result, an earlier version's, did not say


def test_a_redriven_publication_that_lands_says_the_number_its_publisher_reported() -> None:
    """A legacy redrive's result reported by a publisher of schema 8 (an upgrade while it was
    in flight): its CompletionPublished says where the event is, as any other's does."""
    ledger = parked_ledger()
    [event] = ledger.send(redriven("req-1", "generate_text_complete-req-1")).events
    assert (event.state, event.event_number) == (State.PUBLISHED, "generate_text_complete-req-1")


def test_a_second_redrive_result_changes_nothing() -> None:
    ledger = parked_ledger()
    ledger.send(redriven("req-1"))
    assert ledger.send(redriven("req-1")).events == []


def test_a_plain_late_success_does_not_reopen_a_failed_publication() -> None:
    ledger = parked_ledger()
    late = PublicationAttemptSucceeded(
        request_id="req-1", person=PERSON, attempt=1, at_ms=T0 * 1000
    )
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


def test_a_redrive_past_the_retention_is_refused_though_the_person_was_heard_of_since() -> None:
    # another webhook within the retention keeps the person's entry, and with it the parked
    # request, past the 30 days a parked request can be redriven for: the ledger refuses it too
    ledger = parked_ledger()
    retention = ledger.policy.fingerprint_retention_ms
    ledger.send(received("req-2", at_ms=T0 * 1000 + retention // 3))
    assert ledger.state is not None and "req-1" in ledger.state.parked
    late = ledger.send(redrive("req-1", at_ms=T0 * 1000 + retention + 60_000, of=("publishing", 1)))
    assert (late.events, late.commands) == ([], [])
    assert "req-1" not in late.state.parked and "req-1" not in late.state.parked_flights
    # within the retention it still runs
    ledger = parked_ledger()
    ledger.send(received("req-2", at_ms=T0 * 1000 + retention // 3))
    assert types_of(ledger.send(redrive("req-1", at_ms=T0 * 1000 + retention - 60_000))) == [
        "PublicationStarted"
    ]


# --- a failed generation ------------------------------------------------------------------


def failed_generation(amount: int = 2, used: int = 0) -> Ledger:
    ledger = Ledger()
    ledger.send(received("req-1", usage_limit=limit(amount=amount, used=used)))
    outcome = ledger.send(generation_failed("req-1"))
    [letter] = outcome.dead_letters
    assert isinstance(letter.command, GenerateText)
    assert letter.reason == "BadRequest: stand-in failure"
    assert ledger.state is not None and "req-1" in ledger.state.parked
    return ledger


def test_a_redriven_generation_takes_a_slot_again_and_generates() -> None:
    ledger = failed_generation(amount=2)
    outcome = ledger.send(redrive("req-1"))
    assert [(e.type, e.previous_state, e.state, e.attempt) for e in outcome.events] == [
        ("RequestAdmitted", State.GENERATION_FAILED, State.ADMITTED, 2),
        ("GenerationStarted", State.ADMITTED, State.GENERATING, 2),
    ]
    assert outcome.events[0].window_count == 1  # its slot went back when it failed
    [command] = outcome.commands
    assert isinstance(command, GenerateText) and command.attempt == 2
    assert outcome.state.window is not None and outcome.state.window.count == 1
    assert "req-1" not in outcome.state.parked
    done = ledger.send(generated("req-1", 2))
    assert types_of(done) == ["TextGenerated", "PublicationStarted"]


def test_a_redriven_generation_is_limited_when_the_window_filled_meanwhile() -> None:
    ledger = failed_generation(amount=1)
    ledger.send(received("req-2", usage_limit=limit(amount=1, now=T0 + 1)))  # took the slot
    outcome = ledger.send(redrive("req-1"))
    [event] = outcome.events
    assert (event.type, event.previous_state, event.state) == (
        "UsageLimited",
        State.GENERATION_FAILED,
        State.LIMITED,
    )
    assert "usage window full: 1 of 1 used" in event.cause
    assert outcome.commands == [] and "req-1" not in outcome.state.parked


def test_a_redriven_generation_is_judged_at_the_time_of_the_redrive() -> None:
    ledger = failed_generation(amount=1)
    ledger.send(received("req-2", usage_limit=limit(amount=1, now=T0 + 1)))
    # an hour later the window has rolled over: a slot in the new window
    outcome = ledger.send(redrive("req-1", at_ms=(T0 + 3600) * 1000))
    assert types_of(outcome) == ["RequestAdmitted", "GenerationStarted"]
    assert outcome.events[0].window_start == T0 + 3600


def test_a_redriven_generation_without_a_limit_simply_runs_again() -> None:
    ledger = Ledger()
    ledger.send(received("req-1"))
    ledger.send(generation_failed("req-1"))
    outcome = ledger.send(redrive("req-1"))
    assert types_of(outcome) == ["RequestAdmitted", "GenerationStarted"]
    assert outcome.state.window is None


def test_a_redrive_read_again_after_its_request_was_parked_again_changes_nothing() -> None:
    """A restarted worker reads again what its ledger decided since its last offset mark: a
    redrive among them must not run the request again. Here a failed generation (parked at
    attempt 1) is redriven, generates, and is parked again when Talkable refuses its
    publication (also attempt 1: a publication counts its own); the same redrive read again
    finds the publication parked and changes nothing."""
    ledger = failed_generation(amount=3)
    once = redrive("req-1", of=("generating", 1))
    assert types_of(ledger.send(once)) == ["RequestAdmitted", "GenerationStarted"]
    ledger.send(generated("req-1", 2))
    again = ledger.send(publication_failed("req-1", 1))
    assert types_of(again) == ["PublicationFailed"] and "req-1" in again.state.parked
    window = again.state.window

    read_again = ledger.send(once)
    assert (read_again.events, read_again.commands, read_again.dead_letters) == ([], [], [])
    assert read_again.state.parked == again.state.parked
    assert read_again.state.window == window  # no slot taken again
    assert ledger.send(redrive("req-1", of=("publishing", 2))).events == []  # nor another
    # the operator's redrive of the publication parked now runs it
    assert types_of(ledger.send(redrive("req-1", of=("publishing", 1)))) == ["PublicationStarted"]


def test_a_redrive_names_the_attempt_its_letter_was_parked_at() -> None:
    """What ``talkstream redrive`` sends for a letter: the attempt of the command given up on,
    which the ledger compares with the attempt parked."""
    from streams.ops.redrive import RedriveReport, Selection, _one, _Send
    from streams.settings import Settings

    ledger = parked_ledger()
    ledger.send(redrive("req-1", of=("publishing", 1)))
    [given_up] = ledger.send(publication_failed("req-1", 2)).dead_letters
    settings = Settings(app_id="t")
    letter = DeadLetter(
        topic=settings.topic("completions"),
        partition=-1,
        offset=-1,
        reason=given_up.reason,
        key=PERSON,
        value_b64=base64.b64encode(encode(given_up.command)).decode(),
        request_id="req-1",
    )
    send = _one(encode(letter), Selection(), RedriveReport(), settings, lambda: T0 * 1000, {})
    assert isinstance(send, _Send)
    sent = decode_requests(send.value)
    assert isinstance(sent, RedriveRequested) and (sent.stage, sent.attempt) == ("publishing", 2)
    assert types_of(ledger.send(sent)) == ["PublicationStarted"]


def test_a_letter_of_an_earlier_attempt_is_left_alone_when_the_filters_pass_over_the_latest() -> (
    None
):
    """Parked (Talkable answered 401), redriven, parked again for another reason: a run whose
    filters select the first letter only would send a redrive the ledger ignores (it runs the
    attempt parked now), and say "redriven". It leaves the letter alone and names it; a run
    that selects the latest letter redrives the request by it."""
    from streams.ops.redrive import Parking, _keep_latest, _latest_attempts

    ledger = parked_ledger()
    [first] = ledger.history[-1][1].dead_letters
    ledger.send(redrive("req-1", of=("publishing", 1)))
    [second] = ledger.send(publication_failed("req-1", 2)).dead_letters
    settings = Settings(app_id="t")

    def letter(given_up: GivenUp, reason: str, at_ms: int) -> bytes:
        return encode(
            DeadLetter(
                topic=settings.topic("completions"),
                partition=-1,
                offset=-1,
                reason=reason,
                key="req-1",
                value_b64=base64.b64encode(encode(given_up.command)).decode(),
                request_id="req-1",
                at_ms=at_ms,
            )
        )

    letters = [letter(first, "Unauthorized: 401", 10), letter(second, "QueueTimeout: 429", 20)]

    def run(selection: Selection) -> tuple[list[_Send], RedriveReport]:
        report, sends, parkings = RedriveReport(), dict[str, _Send](), dict[str, Parking]()
        for raw in letters:
            send = _one(raw, selection, report, settings, lambda: T0 * 1000, parkings)
            if isinstance(send, _Send):
                _keep_latest(sends, send, report)
        assert parkings == {"req-1": Parking(1, 2)}
        return list(_latest_attempts(sends, parkings, report).values()), report

    kept, report = run(Selection(reason_contains="401"))
    assert kept == []
    assert report.earlier_attempt == [
        "req-1 (a letter of publishing attempt 1; parked since by publishing attempt 2, whose"
        " letter the filters did not select)"
    ]
    assert ledger.send(redrive("req-1", of=("publishing", 1))).events == []  # what it would do

    for selection in (Selection(reason_contains="429"), Selection(request_id="req-1")):
        [send], report = run(selection)
        assert report.earlier_attempt == []
        sent = decode_requests(send.value)
        assert isinstance(sent, RedriveRequested) and (sent.stage, sent.attempt) == (
            "publishing",
            2,
        )
    assert types_of(ledger.send(sent)) == ["PublicationStarted"]


def test_a_generations_letter_is_earlier_than_any_publications() -> None:
    """A request's parkings in the order they happen: a generation (any attempt) is redriven,
    generated, then published; a publication is never generated again."""
    from streams.ops.redrive import Parking

    assert Parking(0, 3) < Parking(1, 1) < Parking(1, 2)
    assert str(Parking(0, 3)) == "generating attempt 3"


def test_a_redrive_without_an_attempt_runs_whatever_is_parked() -> None:
    """One written by an earlier version, which named no attempt: as before."""
    ledger = parked_ledger()
    ledger.send(redrive("req-1"))
    ledger.send(publication_failed("req-1", 2))
    assert types_of(ledger.send(redrive("req-1"))) == ["PublicationStarted"]


def test_a_selection_of_requests_matches_only_their_letters() -> None:
    from models.events import DeadLetter
    from streams.ops.redrive import Selection

    def letter(request_id: str | None) -> DeadLetter:
        return DeadLetter(
            topic="t-completions", partition=-1, offset=-1, reason="401", request_id=request_id
        )

    chosen = Selection(reason_contains="401", request_ids=frozenset({"req-1"}))
    assert chosen.matches(letter("req-1"))
    assert not chosen.matches(letter("req-2"))
    assert not chosen.matches(letter(None))  # a poison message belongs to no request
    assert Selection(reason_contains="401").matches(letter("req-2"))  # no restriction


def test_a_request_with_several_letters_is_redriven_once_by_its_latest() -> None:
    from streams.ops.redrive import Redriven, _keep_latest, _still_parked

    def send(request_id: str, at_ms: int) -> _Send:
        what = f"{request_id} → the ledger"
        shown = Redriven(what, f"at {at_ms}", "t-completions", -1, -1, request_id=request_id)
        return _Send("requests", b"p", b"v", at_ms, request_id, shown)

    report = RedriveReport()
    sends: dict[str, _Send] = {}
    # a publication's letter read (in its partition) before the generation's older one
    for each in (send("a", 20), send("b", 5), send("a", 10), send("c", 7)):
        _keep_latest(sends, each, report)
    assert report.superseded == 1
    assert [(s.request_id, s.at_ms) for s in sends.values()] == [("a", 20), ("b", 5), ("c", 7)]

    states = {"a": "publish_failed", "b": "published"}  # c: not in the projection yet
    kept = _still_parked(sends, lambda ids: {i: states[i] for i in ids if i in states}, report)
    assert [s.request_id for s in kept] == ["a", "c"]
    assert report.not_parked == ["b (published)"]
    assert [s.request_id for s in _still_parked(sends, None, RedriveReport())] == ["a", "b", "c"]


def test_a_letter_of_parked_work_names_its_error_class_for_redrive_to_select() -> None:
    """README's reasons table, ``talkstream stats`` ("why requests failed") and ``audit``
    name a failure by its error class, and README says to redrive with ``--reason-contains``.
    The letter's reason was the message alone, in which the class seldom appears ("OpenAI
    answered 429 insufficient_quota: ...", "waited 90s for ..."): under make dev,
    ``--reason-contains InsufficientQuota``, ``QueueTimeout`` or ``ModelNotFound`` selected
    none of the hundreds of such letters."""
    from streams.ops.redrive import Selection

    ledger = Ledger()
    ledger.send(received("req-1"))
    [letter] = ledger.send(generation_failed("req-1")).dead_letters
    assert letter.reason == "BadRequest: stand-in failure"
    wire = DeadLetter(topic="t-generate", partition=-1, offset=-1, reason=letter.reason)
    assert Selection(reason_contains="badrequest").matches(wire)
    assert Selection(reason_contains="stand-in").matches(wire)


def test_a_redrive_line_tells_the_letters_reason_site_and_source_and_no_key() -> None:
    """What ``talkstream redrive`` (and its ``--dry-run``) prints for a letter: the request,
    the site, the topic the letter came from and its reason on one line; the command inside,
    with its sealed key, is never shown."""
    ledger = parked_ledger()
    [given_up] = ledger.history[-1][1].dead_letters
    letter = DeadLetter(
        topic="talkstream-completions",
        partition=-1,
        offset=-1,
        reason=given_up.reason + "\nsecond line",
        key="req-1",
        value_b64=base64.b64encode(encode(given_up.command)).decode(),
        request_id="req-1",
        at_ms=T0 * 1000,
        decided_topic="talkstream-requests",
        decided_partition=3,
        decided_offset=1207,
    )
    send = _one(
        encode(letter), Selection(), RedriveReport(), Settings(app_id="talkstream"), int, {}
    )
    assert isinstance(send, _Send)
    line = str(send.shown)
    assert line == (
        f"req-1 → the ledger  site={SITE}  from=talkstream-completions  "
        "decided_at=talkstream-requests/3/1207  reason=Unauthorized: stand-in failure second line"
    )
    assert SEALED_TALKABLE not in line


def test_a_site_selects_parked_work_of_every_spelling_of_it() -> None:
    """``redrive --site`` (and the console's) compared a letter's site as typed: ``shop``
    left ``Shop``'s parked publication alone (and a name several spellings shared was refused,
    exit 2, naming them). A site in any case is one site (the ledger's, the publisher's), so
    any case selects every spelling of it; another site is still left."""
    ledger = parked_ledger()
    [given_up] = ledger.history[-1][1].dead_letters
    command = given_up.command.model_copy(update={"site": "Shop"})
    letter = DeadLetter(
        topic="talkstream-completions",
        partition=-1,
        offset=-1,
        reason=given_up.reason,
        key="req-1",
        value_b64=base64.b64encode(encode(command)).decode(),
        request_id="req-1",
        at_ms=T0 * 1000,
    )
    settings = Settings(app_id="talkstream")
    for typed in ("Shop", "shop", "SHOP"):
        send = _one(encode(letter), Selection(site=typed), RedriveReport(), settings, int, {})
        assert isinstance(send, _Send), typed
        assert "site=Shop " in str(send.shown)  # as its webhook typed it
    other = _one(encode(letter), Selection(site="shop-2"), RedriveReport(), settings, int, {})
    assert other.name == "NOT_SELECTED"


def commands() -> tuple[bytes, bytes]:
    """A [generate] and a [completions] value this version decodes (a command the ledger
    gave up on, as an earlier version's executor may not have read it)."""
    ledger = Ledger()
    ledger.send(received("req-1"))
    [generation] = ledger.send(generation_failed("req-1")).dead_letters
    ledger = Ledger()
    ledger.send(received("req-1"))
    ledger.send(generated("req-1"))
    [publication] = ledger.send(publication_failed("req-1")).dead_letters
    return encode(generation.command), encode(publication.command)


def test_a_message_that_did_not_decode_in_an_executors_topic_goes_back_to_it() -> None:
    """A record of [generate] or [completions] that its executor could not decode is
    dead-lettered with its own partition and offset, like one of [requests]; README says such
    a message is redriven once a deploy reads it. ``talkstream redrive`` read it as parked work
    (a letter of the command's topic), found no command in it and counted it "unreadable": it
    was never offered, not even with ``--from-beginning``, and the redrive group moved past it.
    (Under make dev: a command produced to talkstream-generate in a format a worker of an
    earlier version did not read.)"""
    settings = Settings(app_id="t")
    for topic, value in zip(
        (settings.topic("generate"), settings.topic("completions")), commands(), strict=True
    ):
        letter = DeadLetter(
            topic=topic,
            partition=3,
            offset=20,
            reason="does not decode: value: Invalid JSON",
            key="k",
            value_b64=base64.b64encode(value).decode(),
            at_ms=T0 * 1000,
        )
        report = RedriveReport()
        send = _one(encode(letter), Selection(), report, settings, lambda: T0 * 1000, {})
        assert isinstance(send, _Send), topic
        assert (send.topic, send.key, send.value) == (topic, b"k", value)
        assert send.what == f"{topic}@3:20"
        assert report.unreadable == 0 and report.undecodable == []
        # a --site belongs to parked work: no site can be told of a message that did not decode
        not_selected = _one(encode(letter), Selection(site=SITE), report, settings, int, {})
        assert not_selected.name == "NOT_SELECTED"


def test_a_message_goes_back_under_its_key_as_received_not_as_the_letter_shows_it() -> None:
    """A letter shows its message's key as text, any byte that is not UTF-8 replaced; its
    record's key is the key as received. Redriven under the text, a message whose key was not
    UTF-8 went to another key, and so another partition, than it came from."""
    settings = Settings(app_id="t")
    raw_key = b"person-\xff\xfe"
    value = encode(received("req-1"))  # (a value this version reads: it goes back)
    letter = DeadLetter(
        topic=settings.topic("requests"),
        partition=1,
        offset=7,
        reason="does not decode: value: Invalid JSON",
        key=raw_key.decode("utf-8", "replace"),
        value_b64=base64.b64encode(value).decode(),
        at_ms=T0 * 1000,
    )
    send = _one(encode(letter), Selection(), RedriveReport(), settings, int, {}, raw_key)
    assert isinstance(send, _Send)
    assert (send.topic, send.key, send.value) == (settings.topic("requests"), raw_key, value)
    # a letter read without its record's key (none given) falls back to the text it shows
    shown = _one(encode(letter), Selection(), RedriveReport(), settings, int, {})
    assert isinstance(shown, _Send) and shown.key == letter.key.encode()


def test_the_letters_a_redrive_commit_lists_past_its_offset_read_back() -> None:
    """The redrive group's commit lists the letters past its offset that runs moved past; an
    earlier version's commit (no metadata) or one that is not such a list lists none."""
    from streams.ops.redrive import _merged, _past, _within

    listed = _merged([(14, 20), (11, 13), (12, 14), (5, 6)])
    assert listed == [(5, 6), (11, 20)]
    assert [o for o in range(25) if _within(listed, o)] == [5, *range(11, 20)]
    assert _past('{"redriven": [[14, 20], [11, 13]]}') == [(11, 13), (14, 20)]
    for metadata in ("", "not json", '{"instance": "w", "run": "r"}', '{"redriven": [[1]]}'):
        assert _past(metadata) == [], metadata


def test_a_webhook_whose_params_did_not_fit_is_named_never_parked_not_redriven() -> None:
    """A webhook whose params did not fit the person's ledger entry is given up on at once
    (``EntryTooLarge``) and never parked: a redrive of its letter finds nothing to run in the
    ledger. ``talkstream redrive`` said "redriven: ... → the ledger" of it all the same (and the
    console "parked: can be redriven"), and nothing happened (under make dev: five 200 KB
    prompts for one person at once, then ``talkstream redrive --site``). It sends nothing for it
    and says why and what to do; a text that did not fit is parked, and still redriven."""
    from models.events import ChatRequest, RequestReceived
    from models.state import ENTRY_TOO_LARGE, Policy
    from streams.ops.redrive import _Left

    def big(request_id: str) -> RequestReceived:
        r = received(request_id)
        messages = [{"role": "user", "content": "p" * 40_000}]
        chat = ChatRequest(model="m", messages=messages, max_tokens=150)
        return r.model_copy(update={"spec": r.spec.model_copy(update={"chat": chat})})

    ledger = Ledger(policy=Policy(max_entry_bytes=64 * 1024))
    ledger.send(big("req-1"))
    [params] = ledger.send(big("req-2")).dead_letters
    assert "req-2" not in ledger.state.parked  # type: ignore[union-attr]
    small = Ledger(policy=Policy(max_entry_bytes=64 * 1024))
    small.send(received("req-3"))
    small.send(received("req-4"))
    small.send(generated("req-3", text="a" * 30_000))
    [text] = small.send(generated("req-4", text="b" * 30_000)).dead_letters
    assert params.reason.startswith(ENTRY_TOO_LARGE) and text.reason.startswith(ENTRY_TOO_LARGE)

    settings = Settings(app_id="t")

    def letter_of(given_up: GivenUp) -> bytes:
        return encode(
            DeadLetter(
                topic=settings.topic("generate"),
                partition=-1,
                offset=-1,
                reason=given_up.reason,
                key=PERSON,
                value_b64=base64.b64encode(encode(given_up.command)).decode(),
                request_id=given_up.command.request_id,
                at_ms=T0 * 1000,
            )
        )

    report = RedriveReport()
    left = _one(letter_of(params), Selection(), report, settings, lambda: T0 * 1000, {})
    assert left is _Left.NEVER  # nothing sent, and no later run is offered it again
    assert report.redriven == [] and report.skipped == 0
    [said] = report.never_parked
    assert said.startswith("req-2 (its params did not fit the person's ledger entry")
    assert "send the webhook again from Talkable" in said
    send = _one(letter_of(text), Selection(), report, settings, lambda: T0 * 1000, {})
    assert isinstance(send, _Send) and send.request_id == "req-4"

    from models.state import never_parked  # what the console tells them apart by too

    assert never_parked(params.reason) and not never_parked(text.reason)


def test_the_redrive_command_names_a_letter_never_parked_and_does_not_fail_on_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``talkstream redrive --request-id`` of a webhook whose params did not fit: the run
    says it was never parked and what to do, counts it, and exits 0 (it found the letter)."""
    from click.testing import CliRunner

    import streams.ops.redrive as module
    from streams.cli import main

    said = "req-2 (its params did not fit the person's ledger entry: ...)"

    async def run(settings: Settings, selection: Selection, **_: object) -> RedriveReport:
        assert selection.request_id == "req-2"
        return RedriveReport(examined=1, never_parked=[said])

    monkeypatch.setattr(module, "redrive", run)
    url = f"sqlite:///{tmp_path}/projection.sqlite3"
    # pasted with spaces around it, as --site may be: read trimmed (it selected no letter)
    result = CliRunner().invoke(main, ["redrive", "--request-id", " req-2 ", "--database-url", url])
    assert result.exit_code == 0, result.output
    assert f"never parked, nothing to redrive: {said}\n" in result.output
    assert result.output.endswith("0 redriven, 0 not selected, 0 unreadable, 1 never parked\n")


def test_a_letter_that_kept_no_record_is_counted_apart_from_those_not_selected(
    monkeypatch,
) -> None:
    """A letter without its record (one Kafka refused for its size) has nothing to send back
    under any filters, and runs pass over it; it was counted "not selected", which told the
    operator other filters would redrive it."""
    from click.testing import CliRunner

    from streams import cli
    from streams.ops import redrive as redrive_module
    from streams.ops.redrive import RedriveReport, Selection, _one

    settings = Settings(app_id="t")
    letter = DeadLetter(
        topic=settings.topic("completions"),
        partition=-1,
        offset=-1,
        reason="RecordTooLarge: 2000000 bytes",
        key=PERSON,
        request_id="req-1",
    )
    report = RedriveReport()
    assert _one(encode(letter), Selection(), report, settings, lambda: T0 * 1000, {}) is not None
    assert (report.skipped, report.empty) == (0, 1)

    async def fake_redrive(*_args: object, **_kwargs: object) -> RedriveReport:
        return RedriveReport(examined=2, skipped=1, empty=1)

    monkeypatch.setattr(redrive_module, "redrive", fake_redrive)
    said = CliRunner().invoke(cli.main, ["redrive", "--dry-run"])
    assert said.exit_code == 0, said.output
    assert said.output.endswith(
        "2 dead letters examined, 0 to redrive, 1 not selected, 0 unreadable, "
        "1 with no record to send back\n"
    )


def test_letters_of_one_message_are_counted_apart_from_older_letters_of_a_request(
    monkeypatch,
) -> None:
    """A message dead-lettered twice (a ledger re-reading it after a restart, before its mark
    moved past such a message) is sent back once; the summary counted its second letter among
    "older of the same requests", of a message that is no request."""
    from click.testing import CliRunner

    from streams import cli
    from streams.ops import redrive as redrive_module
    from streams.ops.redrive import _keep_latest

    settings = Settings(app_id="t")

    def poison(at_ms: int) -> bytes:
        return encode(
            DeadLetter(
                topic=settings.topic("requests"),
                partition=2,
                offset=485,
                reason="ledger error: KeyError('a bug, fixed since')",
                key="k",
                value_b64=base64.b64encode(encode(received("req-1"))).decode(),
                at_ms=at_ms,
            )
        )

    report = RedriveReport()
    sends: dict[str, _Send] = {}
    for at_ms in (T0 * 1000, T0 * 1000 + 107_000):
        send = _one(poison(at_ms), Selection(), report, settings, lambda: T0 * 1000, {})
        assert isinstance(send, _Send)
        _keep_latest(sends, send, report)
    assert [s.what for s in sends.values()] == ["t-requests@2:485"]  # sent back once
    assert report.superseded == 0  # no request's letters
    assert report.repeated == 1

    async def fake_redrive(*_args: object, **_kwargs: object) -> RedriveReport:
        return RedriveReport(examined=2, repeated=1)

    monkeypatch.setattr(redrive_module, "redrive", fake_redrive)
    said = CliRunner().invoke(cli.main, ["redrive", "--dry-run"])
    assert said.exit_code == 0, said.output
    assert said.output.endswith(
        "2 dead letters examined, 0 to redrive, 0 not selected, 0 unreadable, "
        "1 more letters of the same records\n"
    )


def test_a_message_that_still_does_not_decode_is_named_not_sent_back() -> None:
    """A poison record (its letter says it does not decode) was sent back to its topic by
    every redrive, and named "redriven": its reader dead-lettered it again, as a new letter,
    whatever had been fixed. It goes back only when this version's code decodes it (a deploy
    that reads it: above); otherwise the run leaves it out, names it and why, and moves past
    it. A letter of another topic (none of our readers') still goes back."""
    settings = Settings(app_id="t")
    report = RedriveReport()
    for topic in ("requests", "generate", "completions", "lifecycle"):
        letter = DeadLetter(
            topic=settings.topic(topic),
            partition=2,
            offset=485,
            reason="does not decode: value: Invalid JSON",
            key="k",
            value_b64=base64.b64encode(b"garbage").decode(),
            at_ms=T0 * 1000,
        )
        left = _one(encode(letter), Selection(), report, settings, lambda: T0 * 1000, {})
        assert left.name == "NEVER", topic  # (not "not selected": a run moves past it)
    assert report.undecodable == [
        f"t-{topic}@2:485 (does not decode: value: Invalid JSON: expected value at line 1"
        " column 1: sent back, it would be"
        " dead-lettered again; fix the producer that wrote it, the letter stays in the"
        " dead-letter topic)"
        for topic in ("requests", "generate", "completions", "lifecycle")
    ]
    assert (report.skipped, report.unreadable, report.redriven) == (0, 0, [])
    # a filter that does not select it leaves it for a later run, as any letter
    assert _one(encode(letter), Selection(reason_contains="quota"), report, settings, int, {}) == (
        _one(encode(letter), Selection(site=SITE), report, settings, int, {})
    )
    other = letter.model_copy(update={"topic": "someone-elses"})
    assert isinstance(_one(encode(other), Selection(), report, settings, int, {}), _Send)


def test_the_redrive_command_says_which_letters_do_not_decode_and_that_they_stay(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each letter left out is named, and the summary says what to do and that they stay in
    the dead-letter topic, in a dry run and a real run."""
    from click.testing import CliRunner

    import streams.ops.redrive as module
    from streams.cli import main

    said = ["t-requests@2:485 (does not decode: ...)", "t-requests@2:486 (does not decode: ...)"]
    for left, args, done in ((said, ["--dry-run"], "to redrive"), (said[:1], [], "redriven")):

        async def run(*_: object, left: list[str] = left, **__: object) -> RedriveReport:
            return RedriveReport(examined=2, skipped=2 - len(left), undecodable=left)

        monkeypatch.setattr(module, "redrive", run)
        result = CliRunner().invoke(main, ["redrive", *args])
        assert result.exit_code == 0, result.output
        lines = result.output.splitlines()
        assert lines[: len(left)] == [f"does not decode, not redriven: {what}" for what in left]
        assert lines[len(left)] == (
            f"2 dead letters examined, 0 {done}, {2 - len(left)} not selected, 0 unreadable,"
            f" {len(left)} that do not decode"
        )
    assert lines[-1] == (
        "1 letter of a record that does not decode is not redriven: fix the producer; it stays"
        " in the dead-letter topic"
    )


def test_a_redrive_writes_to_the_persons_partition_of_the_count_the_topics_were_created_with() -> (
    None
):
    """Partitions added to [requests] since (the producer's metadata shows 10, the topics were
    created with 8): the redrive goes where the ledger keeps the person's state, not where
    Kafka's partitioner over the 10 would put it; a record of another topic where Kafka puts it."""
    import asyncio
    from typing import Any

    from aiokafka.partitioner import DefaultPartitioner

    from streams.ops.redrive import Redriven, _write
    from streams.topics import partition_of

    class Producer:
        """aiokafka's producer over a topic of 10 partitions: a record's partition is the one
        given, else its default partitioner's over the 10."""

        def __init__(self) -> None:
            self.written: list[tuple[str, bytes | None, int]] = []

        async def send_and_wait(self, topic: str, value: bytes, key: bytes, **options: Any) -> None:
            partition = options.get("partition")
            if partition is None:
                partition = DefaultPartitioner()(key, list(range(10)), list(range(10)))
            self.written.append((topic, key, partition))

    settings = Settings(app_id="t", partitions=8)
    people = [f"acme:{n}@example.com".encode() for n in range(40)]

    def send(topic: str, key: bytes) -> _Send:
        shown = Redriven("req-1 → the ledger", "why", "t-completions", -1, -1, request_id="req-1")
        return _Send(settings.topic(topic), key, b"v", T0, "req-1", shown)

    producer = Producer()

    async def redrive_all() -> None:
        for person in people:
            await _write(producer, settings, send("requests", person))  # type: ignore[arg-type]
        await _write(producer, settings, send("generate", b"fp"))  # type: ignore[arg-type]

    asyncio.run(redrive_all())
    assert producer.written[:-1] == [
        ("t-requests", person, partition_of(8)(person)) for person in people
    ]
    assert producer.written[-1] == (
        "t-generate",
        b"fp",
        DefaultPartitioner()(b"fp", list(range(10)), list(range(10))),
    )
