"""Per-person state and the one function that decides over it.

``handle(state, message, policy, now_ms)`` is pure: the same state and message give the same
outcome, so a replay of the [requests] topic re-derives every decision. It returns the new
state, the lifecycle events to publish and the commands for the executors.

Times: decisions use the event's own time (``usage_limit.current_time`` when present, else
the ingress receive time); ``now_ms`` (the worker's clock) only sets deadlines for in-flight
work, which never changes a decision: a deadline that fires arrives as a ``DeadlineExpired``
message in the log, and is acted on only if its attempt is still current.
"""

from __future__ import annotations

from models.events import (
    COMPLETION_EVENT_CATEGORY,
    DeadlineExpired,
    GenerateText,
    GenerationFailed,
    GenerationSucceeded,
    LifecycleEvent,
    PublicationFailed,
    PublicationSucceeded,
    PublishCompletion,
    RequestReceived,
    RequestsValue,
)
from models.lifecycle import State, check_transition
from models.params import trigger_met
from models.state import (
    Command,
    EventType,
    InFlight,
    Outcome,
    Parked,
    PersonState,
    Policy,
    Seen,
)
from models.usage import Verdict, Window, release, reserve

__all__ = ["Command", "InFlight", "Outcome", "Parked", "PersonState", "Policy", "Seen", "handle"]


def handle(
    state: PersonState | None, message: RequestsValue, policy: Policy, now_ms: int
) -> Outcome:
    state = state or PersonState()
    if isinstance(message, RequestReceived):
        return _received(state, message, policy, now_ms)
    flight = state.inflight.get(message.request_id)
    if flight is None:
        if isinstance(message, PublicationSucceeded) and message.redrive:
            return _redriven(state, message)
        return Outcome(state=state)  # late or duplicate result of a finished request
    if isinstance(message, GenerationSucceeded):
        if flight.state is State.GENERATING and message.attempt <= flight.attempt:
            return _generated(state, flight, message, policy, now_ms)
    elif isinstance(message, GenerationFailed):
        if flight.state is State.GENERATING and message.attempt == flight.attempt:
            if message.retriable and flight.attempt < policy.max_attempts:
                return _reissue(
                    state,
                    flight,
                    message.at_ms,
                    policy,
                    now_ms,
                    f"attempt {flight.attempt} failed ({message.error_class}); re-issued",
                )
            return _generation_failed(state, flight, message.at_ms, message, None)
    elif isinstance(message, PublicationSucceeded):
        if flight.state is State.PUBLISHING and message.attempt <= flight.attempt:
            return _finish(
                state,
                flight,
                State.PUBLISHED,
                "CompletionPublished",
                message.at_ms,
                "duplicate entity: already published"
                if message.duplicate
                else "published to Talkable",
            )
    elif isinstance(message, PublicationFailed):
        if flight.state is State.PUBLISHING and message.attempt == flight.attempt:
            if message.retriable and flight.attempt < policy.max_attempts:
                return _reissue(
                    state,
                    flight,
                    message.at_ms,
                    policy,
                    now_ms,
                    f"attempt {flight.attempt} failed ({message.error_class}); re-issued",
                )
            return _finish(
                state,
                flight,
                State.PUBLISH_FAILED,
                "PublicationFailed",
                message.at_ms,
                "Talkable did not accept the event",
                error_class=message.error_class,
                error_message=message.error_message,
            )
    elif (
        isinstance(message, DeadlineExpired)
        and flight.state.value == message.stage
        and message.attempt == flight.attempt
    ):
        return _expired(state, flight, message, policy, now_ms)
    return Outcome(state=state)


# --- received ---------------------------------------------------------------------------------


def _received(state: PersonState, r: RequestReceived, policy: Policy, now_ms: int) -> Outcome:
    in_flight = {flight.request.request_id for flight in state.inflight.values()}
    seen = _pruned(state.seen, r.at_ms, policy, keep=in_flight)
    request_id = r.request_id
    first = seen.get(request_id)
    if first is not None and first.answers(r.delivery_id):
        return Outcome(state=state)  # a delivery already decided (redelivered after a crash)
    duplicate = request_id in in_flight or (
        first is not None and r.at_ms - first.at_ms < policy.dedupe_window_ms
    )
    if first is not None or duplicate:
        # same webhook again: its own lifecycle entity, so the original's stays whole
        request_id = f"{r.request_id}~{r.delivery_id}"
    if duplicate:
        if first is not None:  # None only for state pruned before in-flight pins existed
            answered = first.remember(r.delivery_id)
            seen[r.request_id] = first.model_copy(update={"answered": answered})
    else:
        seen[r.request_id] = Seen(
            at_ms=r.at_ms,
            delivery_id=r.delivery_id,
            answered=first.remember(first.delivery_id) if first is not None else (),
        )
    at_ms = _event_time_ms(r)
    received = _lifecycle(
        "RequestReceived",
        r,
        request_id,
        State.RECEIVED,
        None,
        at_ms,
        "webhook accepted",
        duplicate_of=r.request_id if duplicate else None,
    )
    # parked publications can be redriven for as long as fingerprints are kept
    parked = {
        rid: at
        for rid, at in state.parked.items()
        if r.at_ms - at < policy.fingerprint_retention_ms
    }
    state = state.model_copy(update={"seen": seen, "parked": parked})
    if duplicate:
        return Outcome(
            state=state,
            events=[
                received,
                _lifecycle(
                    "DuplicateRejected",
                    r,
                    request_id,
                    State.REJECTED_DUPLICATE,
                    State.RECEIVED,
                    at_ms,
                    "same request already seen within the dedupe window",
                    duplicate_of=r.request_id,
                ),
            ],
        )
    if not trigger_met(r.spec.trigger_criteria):
        return Outcome(
            state=state,
            events=[
                received,
                _lifecycle(
                    "RequestSkipped",
                    r,
                    request_id,
                    State.SKIPPED,
                    State.RECEIVED,
                    at_ms,
                    "trigger criteria not met",
                ),
            ],
        )

    window, taken = state.window, None  # taken: the window this request's slot is counted in
    if r.spec.usage_limit is not None:
        limit = r.spec.usage_limit
        verdict, window = reserve(state.window, limit, limit.current_time)
        if verdict is Verdict.LIMITED:
            return Outcome(
                state=state.model_copy(update={"window": window}),
                events=[
                    received,
                    _lifecycle(
                        "UsageLimited",
                        r,
                        request_id,
                        State.LIMITED,
                        State.RECEIVED,
                        at_ms,
                        f"usage window full: {window.count} of {limit.amount} used",
                        window_start=window.start,
                        window_count=window.count,
                    ),
                ],
            )
        taken = window

    flight = InFlight(
        request_id=request_id,
        request=r,
        state=State.GENERATING,
        attempt=1,
        window_start=taken.start if taken else None,
        deadline_ms=now_ms + policy.generation_deadline_ms,
    )
    admitted = _lifecycle(
        "RequestAdmitted",
        r,
        request_id,
        State.ADMITTED,
        State.RECEIVED,
        at_ms,
        "admitted",
        window_start=taken.start if taken else None,
        window_count=taken.count if taken else None,
    )
    started = _lifecycle(
        "GenerationStarted",
        r,
        request_id,
        State.GENERATING,
        State.ADMITTED,
        at_ms,
        "generation requested",
        attempt=1,
        model=r.spec.chat.model,
    )
    inflight = {**state.inflight, request_id: flight}
    return Outcome(
        state=state.model_copy(update={"window": window, "inflight": inflight}),
        events=[received, admitted, started],
        commands=[_generate_command(request_id, flight, now_ms)],
    )


def _event_time_ms(r: RequestReceived) -> int:
    if r.spec.usage_limit is not None:
        return r.spec.usage_limit.current_time * 1000
    return r.at_ms


def _pruned(seen: dict[str, Seen], at_ms: int, policy: Policy, keep: set[str]) -> dict[str, Seen]:
    """Forget fingerprints past retention, then the oldest past the bound (leaving room for one
    more); never those in ``keep`` (requests in flight: their duplicates must still be caught)."""
    kept = {
        rid: s
        for rid, s in seen.items()
        if rid in keep or at_ms - s.at_ms < policy.fingerprint_retention_ms
    }
    excess = len(kept) - max(policy.max_fingerprints - 1, 0)
    if excess > 0:
        evictable = [item for item in kept.items() if item[0] not in keep]
        for rid, _ in sorted(evictable, key=lambda item: item[1].at_ms)[:excess]:
            del kept[rid]
    return kept


# --- results ----------------------------------------------------------------------------------


def _generated(
    state: PersonState, flight: InFlight, g: GenerationSucceeded, policy: Policy, now_ms: int
) -> Outcome:
    request_id = g.request_id
    r = flight.request
    done = _lifecycle(
        "TextGenerated",
        r,
        request_id,
        State.GENERATED,
        State.GENERATING,
        g.at_ms,
        "text generated",
        attempt=g.attempt,
        model=g.model,
        prompt_tokens=g.prompt_tokens,
        completion_tokens=g.completion_tokens,
        latency_ms=g.latency_ms,
    )
    publishing = flight.model_copy(
        update={
            "state": State.PUBLISHING,
            "attempt": 1,
            "text": g.text,
            "deadline_ms": now_ms + policy.publish_deadline_ms,
        }
    )
    started = _lifecycle(
        "PublicationStarted",
        r,
        request_id,
        State.PUBLISHING,
        State.GENERATED,
        g.at_ms,
        "publication requested",
        attempt=1,
    )
    return Outcome(
        state=state.model_copy(update={"inflight": {**state.inflight, request_id: publishing}}),
        events=[done, started],
        commands=[_publish_command(request_id, publishing, state.window, now_ms)],
    )


def _generation_failed(
    state: PersonState,
    flight: InFlight,
    at_ms: int,
    failure: GenerationFailed | None,
    cause: str | None,
) -> Outcome:
    request_id = flight.request_id
    window = state.window
    if flight.window_start is not None:
        window = release(window, flight.window_start)
    shown = window if flight.window_start is not None else None  # a request without a limit
    inflight = {k: v for k, v in state.inflight.items() if k != request_id}
    event = _lifecycle(
        "GenerationFailed",
        flight.request,
        request_id,
        State.GENERATION_FAILED,
        State.GENERATING,
        at_ms,
        cause or "OpenAI call failed; slot released",
        attempt=flight.attempt,
        error_class=failure.error_class if failure else "DeadlineExpired",
        error_message=failure.error_message if failure else None,
        latency_ms=failure.latency_ms if failure else None,
        window_start=shown.start if shown else None,
        window_count=shown.count if shown else None,
    )
    return Outcome(
        state=state.model_copy(update={"window": window, "inflight": inflight}), events=[event]
    )


def _finish(
    state: PersonState,
    flight: InFlight,
    final: State,
    kind: EventType,
    at_ms: int,
    cause: str,
    **extra: str | None,
) -> Outcome:
    request_id = flight.request_id
    inflight = {k: v for k, v in state.inflight.items() if k != request_id}
    event = _lifecycle(
        kind,
        flight.request,
        request_id,
        final,
        State.PUBLISHING,
        at_ms,
        cause,
        attempt=flight.attempt,
        **extra,
    )
    update: dict[str, object] = {"inflight": inflight}
    if final is State.PUBLISH_FAILED:
        update["parked"] = {**state.parked, request_id: at_ms}
    return Outcome(state=state.model_copy(update=update), events=[event])


def _redriven(state: PersonState, p: PublicationSucceeded) -> Outcome:
    """An operator redrove a parked publication and Talkable took it: published after all."""
    if p.request_id not in state.parked:
        return Outcome(state=state)  # not parked here, or its redrive already counted
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
    )
    parked = {k: v for k, v in state.parked.items() if k != p.request_id}
    return Outcome(state=state.model_copy(update={"parked": parked}), events=[event])


def _expired(
    state: PersonState, flight: InFlight, d: DeadlineExpired, policy: Policy, now_ms: int
) -> Outcome:
    request_id = d.request_id
    if flight.attempt >= policy.max_attempts:
        cause = f"deadline expired after {flight.attempt} attempts"
        if flight.state is State.GENERATING:
            return _generation_failed(state, flight, d.at_ms, None, cause + "; slot released")
        outcome = _finish(
            state,
            flight,
            State.PUBLISH_FAILED,
            "PublicationFailed",
            d.at_ms,
            cause,
            error_class="DeadlineExpired",
        )
        parked = Parked(
            command=_publish_command(request_id, flight, state.window, now_ms), reason=cause
        )
        return outcome.model_copy(update={"parked": [parked]})
    return _reissue(
        state, flight, d.at_ms, policy, now_ms, f"attempt {flight.attempt} overdue; re-issued"
    )


def _reissue(
    state: PersonState, flight: InFlight, at_ms: int, policy: Policy, now_ms: int, cause: str
) -> Outcome:
    request_id = flight.request_id
    attempt = flight.attempt + 1
    generating = flight.state is State.GENERATING
    deadline = policy.generation_deadline_ms if generating else policy.publish_deadline_ms
    retried = flight.model_copy(update={"attempt": attempt, "deadline_ms": now_ms + deadline})
    event = _lifecycle(
        "GenerationStarted" if generating else "PublicationStarted",
        flight.request,
        request_id,
        flight.state,
        flight.state,
        at_ms,
        cause,
        attempt=attempt,
    )
    command: Command = (
        _generate_command(request_id, retried, now_ms)
        if generating
        else _publish_command(request_id, retried, state.window, now_ms)
    )
    return Outcome(
        state=state.model_copy(update={"inflight": {**state.inflight, request_id: retried}}),
        events=[event],
        commands=[command],
    )


# --- builders ---------------------------------------------------------------------------------


def _generate_command(request_id: str, flight: InFlight, now_ms: int) -> GenerateText:
    r = flight.request
    return GenerateText(
        request_id=request_id,
        person=r.person,
        site=r.spec.site,
        attempt=flight.attempt,
        issued_at_ms=now_ms,
        chat=r.spec.chat,
        openai_api_key=r.secrets.openai_api_key,
    )


def _publish_command(
    request_id: str, flight: InFlight, window: Window | None, now_ms: int
) -> PublishCompletion:
    r = flight.request
    properties = {"generated_text": flight.text or ""}
    if r.spec.usage_limit is not None and window is not None:
        properties["__start_time"] = str(window.start)
        properties["__current_usage_amount"] = str(window.count)
    return PublishCompletion(
        request_id=request_id,
        person=r.person,
        site=r.spec.site,
        email=r.spec.email,
        attempt=flight.attempt,
        issued_at_ms=now_ms,
        event_number=r.spec.event_number or f"{COMPLETION_EVENT_CATEGORY}-{request_id}",
        custom_properties=properties,
        talkable_api_key=r.secrets.talkable_api_key,
    )


def _lifecycle(
    kind: EventType,
    r: RequestReceived,
    request_id: str,
    state: State,
    previous: State | None,
    at_ms: int,
    cause: str,
    **extra: object,
) -> LifecycleEvent:
    check_transition(request_id, previous, state)
    return LifecycleEvent.model_validate(
        {
            "type": kind,
            "request_id": request_id,
            "person": r.person,
            "site": r.spec.site,
            "state": state,
            "previous_state": previous,
            "at_ms": at_ms,
            "cause": cause,
            **extra,
        }
    )
