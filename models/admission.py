"""A webhook judged for its person: ``receive(state, request, policy, now_ms) -> Decision``, pure.

In order: a delivery already decided (redelivered after a crash) changes nothing; a repeat of
a request in flight or within the dedupe window is recorded as its own lifecycle entity and
rejected; a request whose trigger criteria are not met is skipped; one with a usage limit
takes a slot in the person's window or is limited; the rest is admitted and its generation
requested, unless the person's ledger entry has no room for it (``EntryTooLarge``:
:func:`_no_room`). The fingerprints that catch repeats are remembered here, and forgotten past
retention (never while their request is in flight). Every other message is ``models.ledger``'s.

Times: a webhook is judged at its event time (:func:`event_time_ms`: ``usage_limit.current_time``
when present, else the ingress receive time); ``now_ms`` (the worker's clock) only sets the
generation's deadline.
"""

from __future__ import annotations

from models.decisions import Decision, generate_command, transition
from models.events import LifecycleEvent, RequestReceived
from models.lifecycle import State
from models.params import trigger_met
from models.state import (
    ENTRY_TOO_LARGE,
    FORGOTTEN_IDS_BYTES,
    ITS_PARAMS,
    Fact,
    Fingerprinted,
    FlightTracked,
    Forgotten,
    GivenUp,
    InFlight,
    PersonState,
    Policy,
    Seen,
    WindowMoved,
    evolve_all,
    fingerprint_room,
    too_large_for_entry,
)
from models.usage import Verdict, Window, release, reserve


def receive(state: PersonState, r: RequestReceived, policy: Policy, now_ms: int) -> Decision:
    in_flight = {flight.request.request_id for flight in state.inflight.values()}
    kept = _pruned(state.seen, r.at_ms, policy, keep=in_flight)
    first = kept.get(r.request_id)
    if first is not None and first.answers(r.delivery_id):
        return Decision()  # a delivery already decided (redelivered after a crash)
    duplicate = r.request_id in in_flight or (
        first is not None and r.at_ms - first.at_ms < policy.dedupe_window_ms
    )
    entity = _entity(state, r, first, duplicate)
    facts = _remember(state, r, kept, first, duplicate, policy)
    at_ms = event_time_ms(r)
    received = transition(
        entity,
        r,
        "RequestReceived",
        after=None,
        at_ms=at_ms,
        cause="webhook accepted",
        duplicate_of=r.request_id if duplicate else None,
        arrived_at_ms=r.at_ms,
    )
    if duplicate:
        rejected = transition(
            entity,
            r,
            "DuplicateRejected",
            after=State.RECEIVED,
            at_ms=at_ms,
            cause="same request already seen within the dedupe window",
            duplicate_of=r.request_id,
        )
        return Decision(facts=facts, events=[received, rejected])
    if not trigger_met(r.spec.trigger_criteria):
        skipped = transition(
            entity,
            r,
            "RequestSkipped",
            after=State.RECEIVED,
            at_ms=at_ms,
            cause="trigger criteria not met",
        )
        return Decision(facts=facts, events=[received, skipped])
    return _admit(state, r, entity, Decision(facts=facts, events=[received]), policy, now_ms)


def _entity(state: PersonState, r: RequestReceived, first: Seen | None, duplicate: bool) -> str:
    """The webhook's lifecycle id: its fingerprint (what the ingress answered) for a request
    first seen; a repeat's own (``<fingerprint>~<delivery>``), so the original's history stays
    whole. So is a request whose fingerprint the person's entry knew and forgot (past its
    retention now, or earlier: ``ForgottenIds``): named by the fingerprint, it would be the
    earlier request again, with its default event number, which Talkable takes as the earlier
    event ("Duplicate entity"), so its text would never land."""
    if first is None and not duplicate:
        ids = state.forgotten_ids
        if r.request_id not in state.seen and (ids is None or not ids.may_hold(r.request_id)):
            return r.request_id
    return f"{r.request_id}~{r.delivery_id}"


def _admit(
    state: PersonState,
    r: RequestReceived,
    entity: str,
    so_far: Decision,
    policy: Policy,
    now_ms: int,
) -> Decision:
    """Reserve a slot in the person's window (if the request has a limit), or refuse."""
    at_ms = event_time_ms(r)
    taken: Window | None = None  # the window this request's slot is counted in
    facts, events = list(so_far.facts), list(so_far.events)
    limit = r.spec.usage_limit
    if limit is not None:
        verdict, taken = reserve(state.window, limit, limit.current_time)
        facts.append(WindowMoved(taken))
        if verdict is Verdict.LIMITED:
            cause = f"usage window full: {taken.count} of {limit.amount} used"
            limited = transition(
                entity, r, "UsageLimited", after=State.RECEIVED, at_ms=at_ms, cause=cause,
                window_start=taken.start, window_count=taken.count,
            )  # fmt: skip
            return Decision(facts=facts, events=[*events, limited])
    flight = InFlight(
        request_id=entity,
        request=r,
        state=State.GENERATING,
        attempt=1,
        window_start=taken.start if taken else None,
        deadline_ms=now_ms + policy.deadline_span_ms("generating"),
    )
    tracked = FlightTracked(flight)
    why = too_large_for_entry(evolve_all(state, [*facts, tracked]), policy, ITS_PARAMS)
    if why is not None:
        so_far = Decision(facts=facts, events=events)
        return _no_room(r, entity, flight, so_far, taken, why, now_ms)
    admitted = _admitted(entity, r, at_ms, taken)
    started = transition(
        entity, r, "GenerationStarted", after=State.ADMITTED, at_ms=at_ms,
        cause="generation requested", attempt=1, model=r.spec.chat.model,
    )  # fmt: skip
    return Decision(
        facts=[*facts, tracked],
        events=[*events, admitted, started],
        commands=[generate_command(flight, now_ms)],
    )


def _admitted(entity: str, r: RequestReceived, at_ms: int, taken: Window | None) -> LifecycleEvent:
    """The request took its slot (if it has a limit): the window as it stands with it."""
    return transition(
        entity, r, "RequestAdmitted", after=State.RECEIVED, at_ms=at_ms, cause="admitted",
        window_start=taken.start if taken else None, window_count=taken.count if taken else None,
    )  # fmt: skip


def _no_room(
    r: RequestReceived,
    entity: str,
    flight: InFlight,
    so_far: Decision,
    taken: Window | None,
    why: str,
    now_ms: int,
) -> Decision:
    """A request the person's ledger entry has no room for (the params of their requests in
    flight or parked, and the texts they hold, with this one's): admitted and given up on in
    the same decision, without a generation (``generation_failed``, ``EntryTooLarge``; its slot
    goes back), and dead-lettered so that it can be seen. It is not parked (its params are
    what does not fit): a redrive of its letter finds nothing to run."""
    at_ms = event_time_ms(r)
    facts = list(so_far.facts)
    shown: Window | None = None
    if taken is not None:
        shown = release(taken, taken.start)
        facts.append(WindowMoved(shown))
    window = {
        "window_start": shown.start if shown else None,
        "window_count": shown.count if shown else None,
    }
    admitted = _admitted(entity, r, at_ms, taken)
    started = transition(
        entity, r, "GenerationStarted", after=State.ADMITTED, at_ms=at_ms,
        cause="no room in the person's ledger entry: not generated", attempt=1,
        model=r.spec.chat.model,
    )  # fmt: skip
    failed = transition(
        entity, r, "GenerationFailed", after=State.GENERATING, at_ms=at_ms,
        cause="no room in the person's ledger entry; slot released", attempt=1,
        error_class=ENTRY_TOO_LARGE, error_message=why, **window,
    )  # fmt: skip
    letter = GivenUp(command=generate_command(flight, now_ms), reason=f"{ENTRY_TOO_LARGE}: {why}")
    return Decision(
        facts=facts, events=[*so_far.events, admitted, started, failed], dead_letters=[letter]
    )


def _remember(
    state: PersonState,
    r: RequestReceived,
    kept: dict[str, Seen],
    first: Seen | None,
    duplicate: bool,
    policy: Policy,
) -> list[Fact]:
    """The fingerprint facts of a delivery: what is forgotten now, and what is remembered."""
    facts: list[Fact] = []
    forgotten = Forgotten(
        fingerprints=frozenset(state.seen.keys() - kept.keys()),
        # parked requests can be redriven for as long as fingerprints are kept
        parked=frozenset(
            rid
            for rid, at_ms in state.parked.items()
            if r.at_ms - at_ms >= policy.fingerprint_retention_ms
        ),
    )
    if forgotten.fingerprints or forgotten.parked:
        facts.append(forgotten)
    if not duplicate:
        answered = first.remember(first.delivery_id) if first is not None else ()
        seen = Seen(at_ms=r.at_ms, delivery_id=r.delivery_id, answered=answered)
        facts.append(Fingerprinted(r.request_id, seen))
    elif first is not None:  # None only for state pruned before in-flight pins existed
        answered = first.remember(r.delivery_id)
        facts.append(Fingerprinted(r.request_id, first.model_copy(update={"answered": answered})))
    return facts


def event_time_ms(r: RequestReceived) -> int:
    """The time a webhook is judged at: Talkable's rendered ``current_time`` when it sent a
    usage limit, else when the ingress received it."""
    if r.spec.usage_limit is not None:
        return r.spec.usage_limit.current_time * 1000
    return r.at_ms


def _pruned(seen: dict[str, Seen], at_ms: int, policy: Policy, keep: set[str]) -> dict[str, Seen]:
    """Forget fingerprints past retention, then the oldest past the bound and past their share
    of the entry's bytes (leaving room for one more); never those in ``keep`` (requests in flight:
    their duplicates must still be caught)."""
    kept = {
        rid: s
        for rid, s in seen.items()
        if rid in keep or at_ms - s.at_ms < policy.fingerprint_retention_ms
    }
    # the oldest go past the bound, and past their share of the entry's bytes (a quarter): a
    # person's thousands of webhooks a month made an entry larger than one changelog record
    # (10,000 fingerprints: ~1.5 MB), which stopped the worker at every start; the rest of the
    # entry is for the params and texts of the requests in flight or parked
    # (``too_large_for_entry``)
    bound = max(policy.max_fingerprints - 1, 0)
    room = fingerprint_room(policy) - FINGERPRINT_BYTES - FORGOTTEN_IDS_BYTES
    size = sum(_fingerprint_bytes(rid, s) for rid, s in kept.items())
    if len(kept) > bound or size > room:
        evictable = [item for item in kept.items() if item[0] not in keep]
        for rid, s in sorted(evictable, key=lambda item: item[1].at_ms):
            if len(kept) <= bound and size <= room:
                break
            del kept[rid]
            size -= _fingerprint_bytes(rid, s)
    return kept


# about what a fingerprint adds to an entry's JSON besides its ids (``"<request_id>":
# {"at_ms":<13 digits>,"delivery_id":"<id>","answered":[...]},``); a typical one in all
FINGERPRINT_OVERHEAD = 60
FINGERPRINT_BYTES = 32 + 36 + FINGERPRINT_OVERHEAD


def _fingerprint_bytes(request_id: str, seen: Seen) -> int:
    answered = sum(len(delivery) + 3 for delivery in seen.answered)
    return len(request_id) + len(seen.delivery_id) + answered + FINGERPRINT_OVERHEAD
