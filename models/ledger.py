"""The ledger's decisions: ``decide(state, message, policy, now_ms) -> Decision``, pure.

A decision (``models.decisions``) holds the facts that change the person's state (applied by
``models.state.evolve``), the lifecycle events to record, the commands for the executors and
the work given up on, for the dead-letter topic. Every admission, retry, re-issue, park and
dead letter is decided here or in ``models.admission``; the executors only run a command and
report what happened.

A webhook (:class:`RequestReceived`) is judged for the person: dedupe, trigger, usage window,
admission (``models.admission``). Every other message concerns one request, and what it does
depends on the stage that request is in (:data:`RULES`, the whole table)::

    stage        message                      rule                  when
    generating   generation attempt succeeded generated             this or an earlier attempt
                                              (give up: its text too
                                              large for the entry)
    generating   generation attempt failed    retry or give up      the current attempt
    generating   deadline expired             retry or give up      the current attempt
    publishing   publication attempt succeeded published            this or an earlier attempt
    publishing   publication attempt failed   retry or park         the current attempt
    publishing   deadline expired             retry or park         the current attempt
    parked       redrive requested            run it again          of the parked attempt
                                                                        (a failed generation
                                                                        takes a slot again
                                                                        first)
    parked       publication attempt succeeded published (legacy)   a redrive's own result

Anything else (a late, duplicate or stale result; a request that ended) changes nothing.

Times: decisions use the event's own time (``usage_limit.current_time`` when present, else the
ingress receive time); ``now_ms`` (the worker's clock) only sets deadlines for in-flight work,
which never changes a decision: a deadline that fires arrives as a ``DeadlineExpired`` message
in the log, and is acted on only if its attempt is still current.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from typing import Any

from models.admission import receive
from models.decisions import (
    Context,
    Decision,
    Outcome,
    generate_command,
    publish_command,
    transition,
)
from models.events import (
    DeadlineExpired,
    Decidable,
    GenerateText,
    GenerationAttemptFailed,
    GenerationAttemptSucceeded,
    LifecycleEvent,
    PublicationAttemptFailed,
    PublicationAttemptSucceeded,
    RedriveRequested,
    RequestReceived,
)
from models.lifecycle import State, check_transition
from models.state import (
    ENTRY_TOO_LARGE,
    Command,
    Fact,
    FlightEnded,
    FlightTracked,
    Forgotten,
    GivenUp,
    InFlight,
    PersonState,
    Policy,
    RequestParked,
    RequestUnparked,
    Seen,
    WindowMoved,
    evolve_all,
    forgotten,
    too_large_for_entry,
)
from models.usage import Verdict, Window, release, reserve

__all__ = [
    "Decision",
    "GivenUp",
    "InFlight",
    "Outcome",
    "PersonState",
    "Policy",
    "Seen",
    "decide",
    "handle",
]


def handle(state: PersonState | None, message: Decidable, policy: Policy, now_ms: int) -> Outcome:
    """Decide, then evolve the state by the decision's facts (a GapProbe, which decides
    nothing, is passed over before: it concerns no person)."""
    if state is None or forgotten(state, message.at_ms, policy):
        state = PersonState()  # never heard of, or not within retention: as if never
    decision = decide(state, message, policy, now_ms)
    state = evolve_all(state, decision.facts)
    return Outcome(
        state=state,
        events=decision.events,
        commands=decision.commands,
        dead_letters=decision.dead_letters,
    )


class Stage(StrEnum):
    """Where a request is, as far as the messages about it are concerned."""

    GENERATING = "generating"
    PUBLISHING = "publishing"
    PARKED = "parked"


Rule = Callable[..., Decision]  # (context, flight, message) -> Decision
Guard = Callable[[Any, Any], bool]  # (flight, message) -> does the rule apply?


def _this_or_earlier(flight: InFlight, m: Any) -> bool:
    return bool(m.attempt <= flight.attempt)


def _current(flight: InFlight, m: Any) -> bool:
    return bool(m.attempt == flight.attempt)


def _current_and_due(flight: InFlight, m: DeadlineExpired) -> bool:
    return m.stage == flight.state.value and m.attempt == flight.attempt


def _the_parked_attempt(ended: InFlight | None, m: RedriveRequested) -> bool:
    # a redrive names the stage and attempt it runs again: read again after a restart (the
    # ledger re-reads what it decided since its last mark), it finds the request redriven
    # since, and maybe parked again (a later attempt, or the publication of a generation it
    # redrove), which it must not run again on its own. None: an earlier version's redrive
    if m.attempt is None or m.stage is None:
        return True
    return ended is not None and (m.stage, m.attempt) == (ended.state.value, ended.attempt)


def _a_redrive(_: InFlight | None, m: PublicationAttemptSucceeded) -> bool:
    return m.redrive


def decide(state: PersonState, message: Decidable, policy: Policy, now_ms: int) -> Decision:
    if isinstance(message, RequestReceived):
        return receive(state, message, policy, now_ms)
    stage, subject = _stage(state, message.request_id)
    row = RULES.get((stage, message.kind)) if stage is not None else None
    if row is None or not row[0](subject, message):
        return Decision()  # late, duplicate or stale: changes nothing
    return row[1](Context(state, policy, now_ms), subject, message)


def _stage(state: PersonState, request_id: str) -> tuple[Stage | None, InFlight | None]:
    """The request's stage, and its flight (for a parked request: the one it ended with, None
    if it was parked by a version that kept only the time)."""
    flight = state.inflight.get(request_id)
    if flight is not None:
        return Stage(flight.state.value), flight
    if request_id in state.parked:
        return Stage.PARKED, state.parked_flights.get(request_id)
    return None, None


# --- the rules of the table -------------------------------------------------------------------


def _generated(ctx: Context, flight: InFlight, g: GenerationAttemptSucceeded) -> Decision:
    publishing = flight.model_copy(
        update={
            "state": State.PUBLISHING,
            "attempt": 1,
            "text": g.text,
            "deadline_ms": ctx.now_ms + ctx.policy.deadline_span_ms("publishing"),
            "written_window": ctx.state.window if flight.request.spec.usage_limit else None,
        }
    )
    tracked = FlightTracked(publishing)
    why = too_large_for_entry(evolve_all(ctx.state, [tracked]), ctx.policy, "its text")
    if why is not None:  # the text cannot be held for its publication: as a failed generation
        return _give_up_generation(
            ctx,
            flight,
            at_ms=g.at_ms,
            cause="no room in the person's ledger entry for the text; slot released",
            error_class=ENTRY_TOO_LARGE,
            error_message=why,
            latency_ms=g.latency_ms,
            waited_ms=g.waited_ms,
        )
    done = transition(
        flight.request_id,
        flight.request,
        "TextGenerated",
        after=State.GENERATING,
        at_ms=g.at_ms,
        cause="text generated",
        attempt=g.attempt,
        model=g.model,
        prompt_tokens=g.prompt_tokens,
        completion_tokens=g.completion_tokens,
        latency_ms=g.latency_ms,
        waited_ms=g.waited_ms,
        truncated=True if g.truncated else None,  # (None: as events written before it was)
    )
    command = publish_command(publishing, ctx.state.window, ctx.now_ms)
    started = transition(
        flight.request_id,
        flight.request,
        "PublicationStarted",
        after=State.GENERATED,
        at_ms=g.at_ms,
        cause="publication requested",
        attempt=1,
        attempted_event_number=command.event_number,  # (schema 9)
    )
    return Decision(facts=[tracked], events=[done, started], commands=[command])


def _generation_failure(ctx: Context, flight: InFlight, f: GenerationAttemptFailed) -> Decision:
    if f.retriable and flight.attempt < ctx.policy.max_attempts:
        cause = f"attempt {flight.attempt} failed ({f.error_class}); re-issued"
        return _reissue(ctx, flight, f.at_ms, cause)
    return _give_up_generation(
        ctx,
        flight,
        at_ms=f.at_ms,
        cause=_failed_cause("OpenAI call failed", "OpenAI", f) + "; slot released",
        error_class=f.error_class,
        error_message=f.error_message,
        latency_ms=f.latency_ms,
        waited_ms=f.waited_ms,
    )


def _published(ctx: Context, flight: InFlight, p: PublicationAttemptSucceeded) -> Decision:
    event = transition(
        flight.request_id,
        flight.request,
        "CompletionPublished",
        after=State.PUBLISHING,
        at_ms=p.at_ms,
        cause=_published_cause(p),
        attempt=flight.attempt,
        waited_ms=p.waited_ms,
        latency_ms=p.latency_ms,  # (schema 13)
        # as the publisher reported it (None: a result written before schema 8, so that a
        # replay of the log derives what was recorded then)
        event_number=p.landed_event_number,
    )
    return Decision(facts=[FlightEnded(flight.request_id)], events=[event])


def _published_cause(p: PublicationAttemptSucceeded) -> str:
    cause = "duplicate entity: already published" if p.duplicate else "published to Talkable"
    if p.event_number is None:
        return cause
    return (
        f"{cause} as event number {p.event_number}: Talkable holds another request's event"
        " under this request's own (an earlier request of the same params, its person since"
        " forgotten by the ledger)"
    )


def _publication_failure(ctx: Context, flight: InFlight, f: PublicationAttemptFailed) -> Decision:
    if f.retriable and flight.attempt < ctx.policy.max_attempts:
        cause = f"attempt {flight.attempt} failed ({f.error_class}); re-issued"
        return _reissue(ctx, flight, f.at_ms, cause)
    return _park(
        ctx,
        flight,
        at_ms=f.at_ms,
        cause=_failed_cause("Talkable did not accept the event", "Talkable", f),
        error_class=f.error_class,
        error_message=f.error_message,
        latency_ms=f.latency_ms,  # (schema 13)
        waited_ms=f.waited_ms,
    )


def _failed_cause(
    refused: str, upstream: str, f: GenerationAttemptFailed | PublicationAttemptFailed
) -> str:
    """A failure the upstream answered, one that ended waiting for it (``waited_out``, from
    schema 7 on), or one before its call was made (``not_called``, from schema 10 on: its key
    could not be opened). One written before says what it said then, so a replay derives it
    again."""
    if f.not_called:
        return f"{upstream} not called: the attempt failed before its call"
    if f.waited_out:
        return f"gave up waiting for {upstream}: the wait outlasted the maximum wait"
    return refused


def _overdue(ctx: Context, flight: InFlight, d: DeadlineExpired) -> Decision:
    """Overdue, or lost by a worker that restarted: re-issued like a failure, while attempts
    remain."""
    what = "lost (its worker stopped before it ended)" if d.lost else "overdue"
    if flight.attempt < ctx.policy.max_attempts:
        return _reissue(ctx, flight, d.at_ms, f"attempt {flight.attempt} {what}; re-issued")
    cause = f"attempt {flight.attempt} lost" if d.lost else "deadline expired"
    cause += f" after {flight.attempt} attempts"
    error_class = "AttemptLost" if d.lost else "DeadlineExpired"
    if flight.state is State.GENERATING:
        return _give_up_generation(
            ctx,
            flight,
            at_ms=d.at_ms,
            cause=cause + "; slot released",
            error_class=error_class,
        )
    return _park(ctx, flight, at_ms=d.at_ms, cause=cause, error_class=error_class)


def _redrive(ctx: Context, ended: InFlight | None, m: RedriveRequested) -> Decision:
    """Run a parked request again, its cause fixed: as its next attempt, like any other."""
    parked_at = ctx.state.parked[m.request_id]
    if m.at_ms - parked_at >= ctx.policy.fingerprint_retention_ms:
        # past the time a parked request can be redriven for: a webhook forgets it then, but
        # one heard of within the retention keeps the person's entry, and it, a while longer
        return Decision(facts=[Forgotten(parked=frozenset({m.request_id}))])
    if ended is None:
        return Decision()  # parked by an earlier version, which kept nothing to re-issue
    cause = "redriven by an operator" + (f" (given up on: {m.reason})" if m.reason else "")
    if ended.state is State.GENERATING:
        return _readmit(ctx, ended, m, cause)
    flight = ended.model_copy(
        update={
            "state": State.PUBLISHING,
            "attempt": ended.attempt + 1,
            "deadline_ms": ctx.now_ms + ctx.policy.deadline_span_ms("publishing"),
            "redriven": True,
        }
    )
    command = publish_command(flight, ctx.state.window, ctx.now_ms)
    event = transition(
        flight.request_id,
        flight.request,
        "PublicationStarted",
        after=State.PUBLISH_FAILED,
        at_ms=m.at_ms,
        cause=cause,
        attempt=flight.attempt,
        attempted_event_number=command.event_number,
    )
    return Decision(
        facts=[RequestUnparked(flight.request_id), FlightTracked(flight)],
        events=[event],
        commands=[command],
    )


def _readmit(ctx: Context, ended: InFlight, m: RedriveRequested, cause: str) -> Decision:
    """A failed generation redriven: it takes a slot in the person's window again, judged at
    the time of the redrive (its slot went back when it failed), or is limited now."""
    r, attempt, entity = ended.request, ended.attempt + 1, ended.request_id
    facts: list[Fact] = [RequestUnparked(entity)]
    taken: Window | None = None
    limit = r.spec.usage_limit
    if limit is not None:
        verdict, taken = reserve(ctx.state.window, limit, m.at_ms // 1000)
        facts.append(WindowMoved(taken))
        if verdict is Verdict.LIMITED:
            limited = transition(
                entity, r, "UsageLimited", after=State.GENERATION_FAILED, at_ms=m.at_ms,
                cause=f"{cause}; usage window full: {taken.count} of {limit.amount} used",
                attempt=attempt, window_start=taken.start, window_count=taken.count,
            )  # fmt: skip
            return Decision(facts=facts, events=[limited])
    flight = ended.model_copy(
        update={
            "attempt": attempt,
            "window_start": taken.start if taken else None,
            "deadline_ms": ctx.now_ms + ctx.policy.deadline_span_ms("generating"),
            "redriven": True,
        }
    )
    admitted = transition(
        entity, r, "RequestAdmitted", after=State.GENERATION_FAILED, at_ms=m.at_ms, cause=cause,
        attempt=attempt, window_start=taken.start if taken else None,
        window_count=taken.count if taken else None,
    )  # fmt: skip
    started = transition(
        entity, r, "GenerationStarted", after=State.ADMITTED, at_ms=m.at_ms,
        cause="generation requested", attempt=attempt, model=r.spec.chat.model,
    )  # fmt: skip
    return Decision(
        facts=[*facts, FlightTracked(flight)],
        events=[admitted, started],
        commands=[generate_command(flight, ctx.now_ms)],
    )


def _legacy_redriven(ctx: Context, _: InFlight | None, p: PublicationAttemptSucceeded) -> Decision:
    """A redrive as earlier versions ran it (straight to the publisher) landed."""
    check_transition(p.request_id, State.PUBLISH_FAILED, State.PUBLISHED)
    event = LifecycleEvent(
        type="CompletionPublished",
        request_id=p.request_id,
        person=p.person,
        site=p.site,
        state=State.PUBLISHED,
        previous_state=State.PUBLISH_FAILED,
        at_ms=p.at_ms,
        cause="redriven by an operator; published to Talkable",
        attempt=p.attempt,
        event_number=p.landed_event_number,
    )
    return Decision(facts=[RequestUnparked(p.request_id)], events=[event])


RULES: dict[tuple[Stage, str], tuple[Guard, Rule]] = {
    (Stage.GENERATING, "generation_succeeded"): (_this_or_earlier, _generated),
    (Stage.GENERATING, "generation_failed"): (_current, _generation_failure),
    (Stage.GENERATING, "deadline_expired"): (_current_and_due, _overdue),
    (Stage.PUBLISHING, "publication_succeeded"): (_this_or_earlier, _published),
    (Stage.PUBLISHING, "publication_failed"): (_current, _publication_failure),
    (Stage.PUBLISHING, "deadline_expired"): (_current_and_due, _overdue),
    (Stage.PARKED, "redrive_requested"): (_the_parked_attempt, _redrive),
    (Stage.PARKED, "publication_succeeded"): (_a_redrive, _legacy_redriven),
}


# --- how a request moves on or ends -----------------------------------------------------------


def _reissue(ctx: Context, flight: InFlight, at_ms: int, cause: str) -> Decision:
    generating = flight.state is State.GENERATING
    span = ctx.policy.deadline_span_ms(flight.state.value)
    retried = flight.model_copy(
        update={"attempt": flight.attempt + 1, "deadline_ms": ctx.now_ms + span}
    )
    command: Command = (
        generate_command(retried, ctx.now_ms)
        if generating
        else publish_command(retried, ctx.state.window, ctx.now_ms)
    )
    event = transition(
        flight.request_id,
        flight.request,
        "GenerationStarted" if generating else "PublicationStarted",
        after=flight.state,
        at_ms=at_ms,
        cause=cause,
        attempt=retried.attempt,
        # the model asked for, as on a first attempt's and a redrive's (schema 12: a re-issue's
        # said none)
        model=flight.request.spec.chat.model if generating else None,
        attempted_event_number=None if isinstance(command, GenerateText) else command.event_number,
    )
    return Decision(facts=[FlightTracked(retried)], events=[event], commands=[command])


def _give_up_generation(
    ctx: Context, flight: InFlight, *, at_ms: int, cause: str, **error: Any
) -> Decision:
    """generation_failed: the person got no text, so the slot goes back to its window; kept
    for a redrive (which takes a slot again), and dead-lettered with its reason."""
    facts: list[Fact] = [FlightEnded(flight.request_id), RequestParked(at_ms, flight)]
    shown: Window | None = None  # the window after the release; None for a request without one
    if flight.window_start is not None:
        shown = release(ctx.state.window, flight.window_start)
        facts.append(WindowMoved(shown))
    event = transition(
        flight.request_id,
        flight.request,
        "GenerationFailed",
        after=State.GENERATING,
        at_ms=at_ms,
        cause=cause,
        attempt=flight.attempt,
        window_start=shown.start if shown else None,
        window_count=shown.count if shown else None,
        **error,
    )
    letter = GivenUp(
        command=generate_command(flight, ctx.now_ms), reason=_letter_reason(error, cause)
    )
    return Decision(facts=facts, events=[event], dead_letters=[letter])


def _letter_reason(error: dict[str, Any], cause: str) -> str:
    """A parked request's letter says why as ``talkstream audit`` does: its error class (the
    name README, ``stats`` and ``audit`` give a failure, which ``redrive --reason-contains``
    selects by), then the message."""
    message = error.get("error_message") or cause
    error_class = error.get("error_class")
    return f"{error_class}: {message}" if error_class else message


def _park(ctx: Context, flight: InFlight, *, at_ms: int, cause: str, **error: Any) -> Decision:
    """publish_failed: kept for a redrive, and dead-lettered with its reason, whatever it is.
    Its event says the number the attempt wrote under (schema 9): with the site, the Talkable
    event a consumer joins the failure with."""
    command = publish_command(flight, ctx.state.window, ctx.now_ms)
    event = transition(
        flight.request_id,
        flight.request,
        "PublicationFailed",
        after=State.PUBLISHING,
        at_ms=at_ms,
        cause=cause,
        attempt=flight.attempt,
        attempted_event_number=command.event_number,
        **error,
    )
    letter = GivenUp(command=command, reason=_letter_reason(error, cause))
    return Decision(
        facts=[
            FlightEnded(flight.request_id),
            RequestParked(at_ms, flight),
        ],
        events=[event],
        dead_letters=[letter],
    )
