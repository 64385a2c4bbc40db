"""What ends a queued or called job, and why: the scheduler's verdicts, each an error to report.

Without a call (:func:`unasked`, at arrival and at the head of the queue): a refusal of the
job's scope a moment ago (:func:`refusal`, reported as :func:`refused_again`), a size no wait
lets run (:func:`too_large`), a pause past its maximum wait (:func:`held_too_long`; an
operator's redrive lifts it instead). After waiting too long: :func:`timed_out`, with what held
it (:func:`why_held`). After calls: one that keeps timing out while its target answers others
(:func:`too_slow`), one answered with nothing usable again and again (:func:`unusable`).
"""

from __future__ import annotations

import datetime
import logging
import time
from typing import Any

from streams.errors import PublishError, QueueTimeout, UpstreamError
from streams.upstream.jobs import Job, Refused, Target
from streams.upstream.pacer import Circuit

log = logging.getLogger(__name__)


def unasked(
    target: Target, job: Job[Any], now: float, max_wait_s: float, refusal_s: float
) -> UpstreamError | None:
    """What ends the job without a call, if anything: a refusal of its scope a moment
    ago, a size no wait lets run, a pause past its maximum wait (checked as it arrives,
    and at the head of its queue: a job behind the head meets it there)."""
    refused = refusal(target, job, now)
    if refused is not None:
        return refused_again(refused, job, now)
    return too_large(target, job, now, refusal_s) or held_too_long(target, job, now, max_wait_s)


def refusal(target: Target, job: Job[Any], now: float) -> Refused | None:
    """The refusal that still covers the job's scope (never for a probe: a redrive)."""
    if job.probe:
        return None
    for scope in (job.key_scope, job.scope):
        found = target.refused.get(scope)
        if found is not None and found.until > now:
            return found
    return None


def refused_again(refused: Refused, job: Job[Any], now: float) -> UpstreamError:
    """A refusal that still covers a job, as its own answer: ``not called``, no try spent;
    saying whose call was answered so (it read "not called: Talkable answered 404 ...", as
    if this request's had been), when, and for how long its scope is not called (``called``
    False: the request's lifecycle says the upstream was not called)."""
    error = refused.error
    covers = error.refuses if error.refuses in ("site", "key", "model") else "target"
    whose = (
        "an earlier attempt of this request"
        if refused.request == job.key
        else f"request {refused.request} (the same {covers})"
    )
    again = type(error)(
        f"not called: {whose} was refused {said_wait(now - refused.at)} ago, and its "
        f"{covers} is not called for {said_wait(refused.until - refused.at)} after it (a "
        f"redrive is): {error}",
        status=error.status,
        retriable=False,
        reason=error.reason,
        refuses=error.refuses,
        called=False,
    )
    again.tries = 0
    return again


def too_large(target: Target, job: Job[Any], now: float, refusal_s: float) -> UpstreamError | None:
    """The refusal no wait fixes, without a call: the job costs more than a minute's tokens
    as the target said them within ``refusal_s`` (an operator's redrive asks anyway: the
    customer may have raised the limit)."""
    if job.probe or not target.pacer.never_fits(job.least, now, refusal_s):
        return None
    error = UpstreamError(
        f"not called: it asks for at least {job.least:.0f} tokens (max_tokens), more than "
        f"the {target.pacer.tokens_per_minute:.0f} a minute {target.name} allows; no "
        "wait lets it run: lower max_tokens",
        reason="RequestTooLarge",
        called=False,
    )
    error.tries = 0
    return error


def held_too_long(
    target: Target, job: Job[Any], now: float, max_wait_s: float
) -> QueueTimeout | None:
    """The target asked to wait (a 429's pause, a limit spent until its reset), or its 429s
    in a row made it back off (a 429 saying no wait, or too little), past the job's maximum
    wait: no call can start in time, so it ends now, not at its maximum."""
    until = target.pacer.paused_until
    if until <= now or until - job.issued_s <= max_wait_s:
        return None
    if job.probe and not job.tries:
        # an operator's redrive: the upstream is back, they say, and no wait would let the
        # call start in time. It is called; if the upstream still asks to wait, that
        # answer pauses the target again and the redrive ends then, "not called again"
        log.info("%s: a redrive lifts the pause it asked for (%s)", target.name, target.paused_by)
        target.pacer.resume(now)
        return None
    return QueueTimeout(
        f"not called{' again' if job.tries else ''}: {target.name} "
        f"{'backs off' if target.backing_off else 'asked to wait'} "
        f"{said_wait(until - now)} more ({target.paused_by}), past "
        f"the maximum wait ({max_wait_s:.0f}s, {now - job.issued_s:.0f}s of it "
        f"waited already): redrive it once the upstream allows, from {wall(until - now)}",
        reason="QueueTimeout",
    )


def said_wait(seconds: float) -> str:
    """A wait in seconds, and in hours and minutes when it is that long: a letter read later
    says "7200s (2 h)", not a number to divide."""
    whole = round(seconds)
    if whole < 60:
        return f"{whole}s"
    hours, minutes = divmod(round(whole / 60), 60)
    parts = [f"{hours} h"] if hours else []
    if minutes or not hours:
        parts.append(f"{minutes} min")
    return f"{whole}s ({' '.join(parts)})"


def wall(seconds: float) -> str:
    """When a wait of ``seconds`` from now ends, in UTC (the scheduler's clock is monotonic):
    when the redrive a letter asks for can be called."""
    at = datetime.datetime.fromtimestamp(time.time() + seconds, datetime.UTC)
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


def timed_out(target: Target, job: Job[Any], now: float, max_wait_s: float) -> QueueTimeout:
    """Why a job that waited past ``max_wait_s`` ends: what held it, and the last answer."""
    held = job.held_by or why_held(target, target.pacer.ready_at(job.cost, now), now)
    if target.last_error and target.last_error not in held:
        held += f"; last answer: {target.last_error}"
    calls = f", {job.in_calls_s:.0f}s of it in calls" if job.in_calls_s >= 0.5 else ""
    return QueueTimeout(
        f"waited {now - job.issued_s:.0f}s for {target.name}{calls}, longer "
        f"than the maximum wait ({max_wait_s:.0f}s); held by: {held}",
        reason="QueueTimeout",
    )


def why_held(target: Target, at: float | None, now: float) -> str:
    """What holds the head of the target's queue (``at``: when its pacer lets it start)."""
    pacer, last = target.pacer, f": {target.last_error}" if target.last_error else ""
    if pacer.circuit is Circuit.OPEN:
        return f"circuit open (outage){last}"
    if pacer.circuit is Circuit.HALF_OPEN:
        return f"circuit half open (probing){last}"
    if pacer.in_flight and pacer.probing(now):
        return "a new target's first call (alone until it answers, a second at most)"
    if at is None:
        return f"{pacer.in_flight} calls in flight (window {pacer.allowed_in_flight(now)})"
    if pacer.paused_until > now:
        return f"paused{last}"
    return f"paced at {pacer.rate:.2f}/s" if pacer.rate else "paced"


def too_slow(target: Target, job: Job[Any], error: UpstreamError) -> UpstreamError | None:
    """The final answer for a call that keeps timing out while its target answers others."""
    if error.reason != "Timeout" or not job.slow_after or job.timeouts < job.slow_after:
        return None
    if target.answered_s <= job.started_s:
        return None  # or the whole target is slow: an outage, which waits
    return type(error)(
        f"{error} on this call {job.timeouts} times, while {target.name} answered other calls: "
        "the call is too slow (a long generation?), not the upstream",
        reason="Timeout",
        limits=error.limits,
    )


def unusable(target: Target, job: Job[Any], error: UpstreamError) -> UpstreamError:
    """The final answer for a call answered ``unusable_after`` times with nothing usable: the
    upstream is up, and may bill each more time it is asked."""
    # an OpenAI call may be billed each time; a Talkable call costs nothing, but no answer
    # said the event landed; an error answer asked again (OpenAI's x-should-retry: true) said
    # each time that another try might help
    if isinstance(error, PublishError):
        cost = "none said the event landed"
    elif error_answer(error):
        cost = "each said to try again"
    else:
        cost = "each answer may have been billed"
    return type(error)(
        f"{error} {job.unusable} times: {target.name} answers this call with nothing usable "
        f"({cost})",
        reason=error.reason,
        status=error.status,
        limits=error.limits,
    )


def error_answer(error: UpstreamError) -> bool:
    """An error answer (a 4xx or a 5xx), not a 2xx with nothing usable in it: the upstream
    refused the call, generated nothing and billed nothing (OpenAI's ``x-should-retry: true``
    asking again a 400 it answered)."""
    return error.status is not None and error.status >= 400
