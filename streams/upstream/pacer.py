"""When one target may be called next: its learned rate, its concurrency window, its circuit.

A :class:`Pacer` is told what each call's answer said (:meth:`Pacer.answered`,
:meth:`Pacer.throttled`, :meth:`Pacer.failed`, :meth:`Pacer.released`) and answers one question:
when may the next call start (:meth:`Pacer.ready_at`)? It never sleeps; the scheduler does.

- **Rate, learned.** OpenAI's ``x-ratelimit-limit-requests`` / ``-tokens`` (per minute) set two
  GCRA lanes (generic cell rate algorithm: each call's cost moves a theoretical arrival time on
  by ``cost / rate``), requests and tokens, each at ``safety`` of the limit, with a burst of
  ``burst_s`` seconds of it after a rest (none left after a 429). A call's token cost
  is the prompt estimate plus ``max_tokens``, counted at most the limit a minute; a call the
  upstream refused (a 4xx) spent none and gives its cost back. ``remaining`` at 0 pauses until
  the ``reset``, counted from the call's start (when the upstream admitted it). A call that
  certainly costs more than the limit a minute never fits (:meth:`Pacer.never_fits`): no wait
  lets it run, as long as that limit was said lately (a customer may raise it).
- **Adapted, where nothing is said** (Talkable; an OpenAI-compatible server without headers):
  an AIMD window of calls in flight: slow start (+1 per success) from ``initial_window``, then
  halved on a 429 or an outage (once for the calls that were out together: their 429s
  halved it to 1, and a target of 50 calls a second answering in half a second was called a
  few at a time); and a 429 of a busy target paces it at what it answered lately
  (``ADAPT_*`` below): a window caps calls in flight, not their rate.
- **A new target is asked once first**: one call in flight until its first answer, which
  tells its limits, or that it refuses the key, before many calls are spent on it; but for
  ``probe_wait`` seconds at most. A refusal comes back sooner than that, while a generation may
  take many seconds: the webhooks behind the first one wait for it no longer than that.
- **A 429** pauses the target for what it asked (``retry-after``, "try again in"), else for a
  backoff of its own (its learned pace, or, nothing learned, ``throttle_base`` doubling with
  each such 429 in a row up to ``throttle_max``: Talkable asks clients to back off from seconds
  up to minutes); the throttled call goes back to the head of its queue: waiting is not failing.
  A call made after that wait and throttled again shows the wait was not enough: from then on
  the pause is at least ``throttle_floor``, doubling with each such 429 in a row (to
  ``throttle_max``), whatever the upstream asks (``retry-after: 0`` was a loop of calls).
- **An outage** (5xx, connection errors, timeouts): after ``circuit_after`` failures in a row the
  circuit opens for ``open_base`` seconds, doubling to ``open_max``; then one probe at a time
  (half open) until one succeeds, which closes it, and the queue drains at the learned rate.
  A 5xx that says how long to wait (``retry-after``, as a 503 may) pauses the target that long
  too, as a 429's does: no call, probe or other, starts before it.
"""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass
from enum import IntEnum

from streams.upstream.limits import Limits

# A target that says no limits (Talkable) and answers 429 is paced at what it was answering
# before: the calls answered in the last ADAPT_SPAN_S, when they and its 429s in that span
# are at least ADAPT_LEAST (a busy target; a quiet one's pace says nothing of its limit; a
# slow one answers few calls, and 429s to the others), at the config's safety share. The
# pace then grows by ADAPT_GROWTH with each answer, to find a limit raised, and is forgotten
# ADAPT_FORGET_S after the last 429. A window caps calls in flight, not their rate: against a
# fast upstream, a third of the calls were 429s.
ADAPT_SPAN_S = 10.0
ADAPT_LEAST = 8
ADAPT_GROWTH = 0.01
ADAPT_FORGET_S = 60.0


class Circuit(IntEnum):
    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


@dataclass(frozen=True)
class PacerConfig:
    initial_window: int = 4  # calls in flight before anything was learned
    max_window: int = 1024
    safety: float = 0.9  # share of a learned limit we use
    circuit_after: int = 3  # outage failures in a row that open the circuit
    open_base: float = 1.0  # seconds the circuit stays open the first time
    open_max: float = 30.0
    throttle_base: float = 1.0  # pause after a 429 that said nothing about how long...
    throttle_max: float = 30.0  # ...doubling with each in a row, up to this
    # after a 429 of a call made once the 429 before it had been waited out, the pause is at
    # least this, doubling with each such 429 in a row, up to throttle_max: an upstream that
    # asks for no wait ("retry-after: 0", "try again in 0s") and refuses again was called
    # back at once, hundreds of times a second, until the maximum wait
    throttle_floor: float = 0.05
    probe_wait: float = 1.0  # seconds a new target's first call goes alone, at most
    # seconds of a paced rate that may go at once after a rest: OpenAI enforces a minute's
    # limit over shorter spans ("60,000 requests/minute may be enforced as 1,000
    # requests/second"), so a second's worth is there to spend; spacing every call of a blast
    # wasted it (a second at the blast's start, a quarter of the time a 400-webhook blast at
    # 50/s may take). A 429 empties it
    burst_s: float = 1.0


class Lane:
    """One GCRA lane: ``rate`` units per second, and a burst of ``burst_s`` seconds of them
    after a rest (the bucket the upstream is assumed to hold; at least the call's own cost:
    a call larger than the burst waits for the lane to be empty)."""

    def __init__(self, burst_s: float = 0.0) -> None:
        self.rate: float | None = None
        self.burst_s = burst_s
        self._tat = 0.0  # theoretical arrival time of the next unit

    def ready_at(self, now: float, cost: float = 1.0) -> float:
        if self.rate is None:
            return now
        cell = cost / self.rate
        return max(now, self._tat - max(self.burst_s, cell) + cell)

    def take(self, cost: float, now: float) -> None:
        if self.rate is not None:
            self._tat = max(self._tat, now) + cost / self.rate

    def empty(self, now: float) -> None:
        """The upstream refused a call for its rate: whatever burst was left is not there."""
        self._tat = max(self._tat, now + self.burst_s)

    def give_back(self, cost: float, now: float) -> None:
        """Units taken for a call that did not spend them."""
        if self.rate is not None:
            self._tat = max(now, self._tat - cost / self.rate)


class Pacer:
    def __init__(self, config: PacerConfig | None = None) -> None:
        self.config = config or PacerConfig()
        self.requests = Lane(self.config.burst_s)
        self.tokens = Lane(self.config.burst_s)
        self.window = float(self.config.initial_window)
        self.slow_start = True
        self.in_flight = 0
        self.paused_until = 0.0
        self.circuit = Circuit.CLOSED
        self.open_until = 0.0
        self.failures = 0  # outage failures in a row
        self.unhinted = 0  # 429s in a row that said nothing about how long, nothing learned
        self.retried = 0  # 429s in a row, each of a call started after the one before
        self.throttled_at = float("-inf")  # when the latest 429 came
        self.decreased_at = float("-inf")  # when a 429 or an outage last halved the window
        self.backoff = False  # the latest 429's pause is a backoff of ours, not what it asked
        self.open_for = self.config.open_base
        self.learned = False  # the upstream told us its limits
        self.tokens_per_minute: float | None = None  # the limit as the upstream said it...
        self.tokens_said_at = float("-inf")  # ...when it last said so
        self.answers: collections.deque[float] = collections.deque(maxlen=256)  # their times
        self.refusals: collections.deque[float] = collections.deque(maxlen=256)  # 429s' times
        self.adapted_at: float | None = None  # when a 429 last set the pace (nothing said)
        self.heard = False  # any answer at all yet: until then, one call at a time...
        self.probe_until: float | None = None  # ...until probe_wait after the first one started

    # --- the question -------------------------------------------------------------------------

    def ready_at(self, cost_tokens: float, now: float) -> float | None:
        """When the next call may start; None while it must wait for a call in flight to end
        (the window is full, or the circuit's one probe is out)."""
        if self.circuit is Circuit.OPEN and now >= self.open_until:
            self.circuit = Circuit.HALF_OPEN
        if self.circuit is Circuit.OPEN:
            return self.open_until
        if self.circuit is Circuit.HALF_OPEN and self.in_flight > 0:
            return None
        if self.in_flight >= self.allowed_in_flight(now):
            if self.probing(now) and self.probe_until is not None:
                return self.probe_until  # then the window opens
            return None
        at = max(now, self.paused_until, self.requests.ready_at(now))
        if self.tokens.rate is not None and cost_tokens > 0:
            at = max(at, self.tokens.ready_at(now, self._counted(cost_tokens)))
        return at

    def allowed_in_flight(self, now: float) -> int:
        """Calls that may be in flight at ``now``."""
        if self.circuit is Circuit.HALF_OPEN or self.probing(now):
            return 1  # a probe: a new target is asked once before it is asked many times
        if self.learned:  # the rate paces it; the window only caps
            return self.config.max_window
        return max(1, min(self.config.max_window, math.floor(self.window)))

    def probing(self, now: float) -> bool:
        """A new target's first call is out (or about to be), and not for long yet."""
        return not self.heard and (self.probe_until is None or now < self.probe_until)

    def never_fits(self, least_tokens: float, now: float, within: float) -> bool:
        """A call that costs at least ``least_tokens`` is more than the upstream allows in a
        minute: it would refuse it however long it waited; known only from a limit it said in
        the last ``within`` seconds (after that, the call asks again)."""
        limit = self.tokens_per_minute
        fresh = now - self.tokens_said_at < within
        return limit is not None and fresh and least_tokens > limit

    def _counted(self, cost_tokens: float) -> float:
        """What a call's tokens move the lane by: never more than a minute's worth."""
        limit = self.tokens_per_minute
        return cost_tokens if limit is None else min(cost_tokens, limit)

    @property
    def rate(self) -> float | None:
        """Calls per second allowed (None: not learned)."""
        return self.requests.rate

    # --- what happened ------------------------------------------------------------------------

    def started(self, cost_tokens: float, now: float) -> None:
        if not self.heard and self.probe_until is None:
            self.probe_until = now + self.config.probe_wait
        self.in_flight += 1
        self.requests.take(1, now)
        self.tokens.take(self._counted(cost_tokens), now)

    def answered(self, limits: Limits | None, now: float, started: float | None = None) -> None:
        """The call got an answer from a healthy upstream (success, or a refusal no retry
        fixes: the upstream is up). ``started``: when the call started (None: now)."""
        self.in_flight -= 1
        self.heard = True
        self._learn(limits, now, started)
        self.answers.append(now)
        self._grow(now)
        self.failures = 0
        self.unhinted = 0
        self.retried = 0
        if self.circuit is not Circuit.CLOSED:
            self.circuit = Circuit.CLOSED
            self.open_for = self.config.open_base
        self.window = min(
            self.config.max_window, self.window + (1 if self.slow_start else 1 / self.window)
        )

    def refused(
        self, limits: Limits | None, cost_tokens: float, now: float, started: float | None = None
    ) -> None:
        """The call was refused (a 4xx no retry fixes): the upstream is up, and generated
        nothing, so the tokens taken for it go back."""
        self.tokens.give_back(self._counted(cost_tokens), now)
        self.answered(limits, now, started)

    def resume(self, now: float) -> None:
        """The pause lifted: an operator says the upstream is back (a redrive). Its next answer
        tells: a 429 pauses it again."""
        self.paused_until = min(self.paused_until, now)

    def throttled(self, limits: Limits | None, now: float, started: float | None = None) -> None:
        """A 429 that asks to wait: pause the target, shrink the window if nothing is known.
        ``started``: when the throttled call started (None: after the 429 before it)."""
        self.in_flight -= 1
        self.heard = True
        self._learn(limits, now)
        self.refusals.append(now)
        if not self.learned:
            self._adapt(now)
        config = self.config
        if started is None or started >= self.throttled_at:
            self.retried += 1  # a call made after the last 429's wait, throttled again
        self.throttled_at = now
        self.requests.empty(now)
        self.tokens.empty(now)
        asked = wait = limits.retry_after_s if limits is not None else None
        if wait is not None:
            self.unhinted = 0
        elif self.rate and self.learned:
            wait = 1 / self.rate
        else:
            wait = min(config.throttle_base * 2**self.unhinted, config.throttle_max)
            self.unhinted += 1
        if self.retried > 1:  # what it asked was not enough: never less than a backoff
            floor = config.throttle_floor * 2 ** (self.retried - 2)
            wait = max(wait, min(floor, config.throttle_max))
        # the pause is ours, not the target's: it asked for none, or for less
        self.backoff = (asked is None or wait > asked) and now + wait >= self.paused_until
        self.paused_until = max(self.paused_until, now + wait)
        if started is None or started >= self.decreased_at:
            self._decrease(now)  # once for the calls that were out together

    def failed(self, now: float, limits: Limits | None = None) -> None:
        """An outage: a 5xx, a connection error, a timeout. A 5xx that says how long to wait
        (a 503's ``retry-after``) pauses the target that long, besides the circuit."""
        self.in_flight -= 1
        self.failures += 1
        self.probe_until = None  # no answer: the next call is the target's first question again
        self._decrease(now)
        if self.circuit is Circuit.HALF_OPEN or self.failures >= self.config.circuit_after:
            if self.circuit is Circuit.HALF_OPEN:
                self.open_for = min(self.open_for * 2, self.config.open_max)
            self.circuit = Circuit.OPEN
            self.open_until = now + self.open_for
        wait = limits.retry_after_s if limits is not None else None
        if wait is not None:
            self.paused_until = max(self.paused_until, now + wait)

    def released(self) -> None:
        """A call that never reached the upstream (it could not even be sent)."""
        self.in_flight -= 1
        self.probe_until = None

    # --- learning -----------------------------------------------------------------------------

    def _decrease(self, now: float) -> None:
        self.decreased_at = now
        self.slow_start = False
        self.window = max(1.0, self.window / 2)

    def _adapt(self, now: float) -> None:
        """A 429 from a target that said no limits: pace it at what it answered lately."""
        recent = [at for at in self.answers if now - at <= ADAPT_SPAN_S]
        refused = sum(1 for at in self.refusals if now - at <= ADAPT_SPAN_S)
        if len(recent) < 2 or len(recent) + refused < ADAPT_LEAST:
            return
        answered = len(recent) / max(now - recent[0], 1.0) * self.config.safety
        paced = self.requests.rate if self.adapted_at is not None else None
        self.requests.rate = answered if paced is None else min(paced, answered)
        self.adapted_at = now

    def _grow(self, now: float) -> None:
        """An answer: a pace a 429 set grows a little, and is forgotten a while after it."""
        if self.adapted_at is None or self.learned:
            return
        if now - self.adapted_at > ADAPT_FORGET_S:
            self.requests.rate, self.adapted_at = None, None
        elif self.requests.rate is not None:
            self.requests.rate *= 1 + ADAPT_GROWTH

    def _learn(self, limits: Limits | None, now: float, started: float | None = None) -> None:
        """What an answer said. Its ``remaining`` and ``reset`` are as of the call's admission,
        at its start: a limit spent by the call itself is back ``reset`` after that, not
        after the answer (a key of 60 a minute, its bucket holding one call, was called every
        1.5 s, not every 1.1 s, when each answer's "0 left, back in 1s" counted from the
        answer, half a second of generation later)."""
        if limits is None:
            return
        since = now if started is None else min(started, now)
        safety = self.config.safety
        if limits.requests_per_minute and limits.requests_per_minute > 0:
            self.requests.rate = limits.requests_per_minute / 60 * safety
            self.learned = True
        if limits.tokens_per_minute and limits.tokens_per_minute > 0:
            self.tokens_per_minute = limits.tokens_per_minute
            self.tokens_said_at = now
            self.tokens.rate = limits.tokens_per_minute / 60 * safety
            self.learned = True
        for remaining, reset in (
            (limits.remaining_requests, limits.requests_reset_s),
            (limits.remaining_tokens, limits.tokens_reset_s),
        ):
            if remaining is not None and remaining < 1 and reset:
                self.paused_until = max(self.paused_until, since + reset)
