"""A fair scheduler of upstream calls: one queue per target, capacity shared round-robin.

Each command waits in its target's queue until the target's :class:`Pacer` allows a call and a
slot of the executor's capacity is free; free slots go round-robin to the targets that can use
them, so one site's blast cannot hold the slots another site needs. What a call's answer means
for the queue is decided here, what it means for the request is the ledger's:

- an answer (success, or a refusal no retry fixes) is reported;
- a 429 (rate limited) or an outage (5xx, connection error, timeout) sends the command back to
  the head of its queue: it waits, it does not spend an attempt. A command that waited past
  ``max_wait`` is reported as a failure (``QueueTimeout``) with the last thing that held it;
  so is, at once, one that the target asked to wait for longer than its ``max_wait`` allows
  (a daily limit's "try again in 3h"): waiting for nothing is not waiting;
- a command that costs more tokens at the least (its ``max_tokens``) than the target allows in
  a minute is reported at once (``RequestTooLarge``), without a call and without holding the
  commands behind it: no wait would let it run;
- a call that timed out its job's ``slow_after`` times, the last while the target answered
  its other calls, is reported (``Timeout``): it is the call that is slow (a long
  generation), not the upstream, and each try may have been billed;
- a call answered with nothing usable (a 200 without text, or not JSON) is asked again, the
  target being up (no circuit counts it), and reported after ``slow_after`` such answers
  (``EmptyCompletion``, ``BadAnswer``): each may have been billed;
- a refusal for the whole key (``insufficient_quota``, 401, 403) or for one model
  (``model_not_found``) stops the target's calls in that scope for ``refusal_seconds`` (a
  key's scope is that key: a Talkable site called with an old and a new key keeps calling
  with the new one; an OpenAI key is a family of targets, one per model, since OpenAI limits
  each model apart, and its refusal stops them all): queued and new commands in it are
  reported at once with the same reason, without a call. After that, the next command is a
  probe; so is an operator's redrive at any time (the cause was fixed), and a success lifts
  the refusal. A redrive also lifts a pause (a 429's, a limit spent until its reset) that
  would hold it past its maximum wait: it is called, and the upstream's answer says whether
  to pause again.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import contextlib
import heapq
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from streams.errors import QueueTimeout, UpstreamError
from streams.upstream.limits import Limits
from streams.upstream.pacer import Circuit, Pacer, PacerConfig

log = logging.getLogger(__name__)

R = TypeVar("R")  # what a call returns


@dataclass
class Job(Generic[R]):
    """One command's call, waiting for its target."""

    key: str  # the command's identity in its queue (request_id): a newer attempt replaces it
    attempt: int
    scope: str  # what a refusal of this call's kind may cover (the model, for OpenAI)
    cost: float  # token estimate (0 where tokens are not limited)
    issued_s: float  # when the command was issued (monotonic-comparable: the scheduler clock)
    call: Callable[[], Awaitable[tuple[R, Limits | None]]]
    report: Callable[[Outcome[R]], Awaitable[None]]
    origin: Any = None  # where the command came from (a partition), for a hand-back on revoke
    record: Any = None  # the command as it was read, to hand back
    probe: bool = False  # an operator's redrive: called even while its scope is refused
    least: float = 0.0  # the tokens it costs at the least (OpenAI counts max_tokens whole)
    slow_after: int = 0  # its calls' timeouts that end it, the target answering others, or
    # its unusable answers that do (0: none)
    key_scope: str = "key"  # what a refusal of the key covers: the target's key, or (a site
    # called with several keys) ``key:<fingerprint>`` so a wrong key stops only its own calls
    family: str = ""  # targets that share refusals (an OpenAI key's models); "": the target's own
    tries: int = 0
    seq: int = 0  # the order it arrived in
    started_s: float = 0.0  # when its latest call started
    timeouts: int = 0  # its calls that timed out
    unusable: int = 0  # its calls answered with nothing usable (no text; not JSON)
    held_by: str = ""  # why it is waiting, for a QueueTimeout


@dataclass(frozen=True)
class Outcome(Generic[R]):
    """What is reported for a job: a value, or the error that ends the attempt."""

    value: R | None
    error: UpstreamError | None
    waited_s: float
    tries: int


@dataclass(eq=False)  # one per name: the same target is the same object
class Target:
    name: str
    pacer: Pacer
    queue: collections.deque[Job[Any]] = field(default_factory=collections.deque)
    queued: dict[str, Job[Any]] = field(default_factory=dict)  # the queue's jobs by key
    # scope → until when, and why; shared by the targets of one family
    refused: dict[str, tuple[float, UpstreamError]] = field(default_factory=dict)
    throttled: int = 0  # 429s answered to this target's calls
    calls: int = 0
    last_error: str = ""  # the last 429 or outage, for whoever waits on it
    paused_by: str = ""  # what asked for its pacer's latest pause
    answered_s: float = float("-inf")  # when a call of it last got an answer
    served: int = 0  # when it last started a call (a turn number; below 0: never, newest least)
    waiting: bool = False  # has queued work: in the scheduler's round, or asleep
    asleep: bool = False  # out of the round until news of it, or until ``wakes``
    wakes: float | None = None  # when its head may start, as the pacer said (None: on news)
    alarm: float | None = None  # its latest alarm not rung yet


class Scheduler:
    def __init__(
        self,
        name: str,
        *,
        max_in_flight: int,
        max_wait_s: float,
        refusal_s: float,
        pacer_config: PacerConfig,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.max_in_flight = max_in_flight
        self.max_wait_s = max_wait_s
        self.refusal_s = refusal_s
        self._pacer_config = pacer_config
        self._clock = clock
        self.targets: dict[str, Target] = {}
        self._families: dict[str, dict[str, tuple[float, UpstreamError]]] = {}  # their refusals
        # the targets with queued work, least recently served first (round-robin); only they
        # are looked at, however many targets the scheduler knows
        self._waiting: list[Target] = []
        # those of them whose head may not start yet, out of the round until their pacer's
        # time (in a heap by it) or news of them (a command, an answer): a thousand throttled
        # sites are not asked again on every dispatch (~3.7 ms each, at every command taken)
        self._asleep: set[Target] = set()
        self._alarms: list[tuple[float, int, Target]] = []
        self._turns = 0  # calls started (a served target's turn number)
        self._new = 0  # targets created (never served: first in line, the newest first)
        self.in_flight = 0
        self._arrived = 0
        self._settled_at = clock()
        self._refused_since = False
        # every queued job by when it was issued (the oldest first): a second's look for what
        # waited too long costs what did, not the queues' length (a blast behind a rate-limited
        # key queues 100,000 commands; sweeping them all took the loop ~110 ms each second).
        # Jobs that left their queue stay until they surface, or a compaction drops them.
        self._by_issue: list[tuple[float, int, Target, Job[Any]]] = []
        self._pushed = itertools.count()
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()  # calls and reports
        self._calls: dict[asyncio.Task[None], Job[Any]] = {}  # the calls running
        self.paused = False  # stopping: nothing more starts
        self.on_call: Callable[[Target, str], None] | None = None  # metrics hook

    def now(self) -> float:
        return self._clock()

    # --- intake -------------------------------------------------------------------------------

    def submit(self, target_name: str, job: Job[Any]) -> None:
        target = self.targets.get(target_name)
        if target is None:
            self._new += 1
            refused = self._families.setdefault(job.family, {}) if job.family else {}
            pacer = Pacer(self._pacer_config)
            target = Target(target_name, pacer, refused=refused, served=-self._new)
            self.targets[target_name] = target
        now = self._clock()
        unasked = self._unasked(target, job, now)
        if unasked is not None:
            self._finish(job, None, unasked, now)
            return
        queued = target.queued.get(job.key)
        if queued is not None:  # a re-issue of work still queued: it keeps its place
            if job.attempt >= queued.attempt:
                _take_over(queued, job)
                self._expires(target, queued)  # if it was issued earlier than thought
                self._rouse(target)  # its head may cost less now
        else:
            self._arrived += 1
            job.seq = self._arrived
            target.queue.append(job)
            target.queued[job.key] = job
            self._expires(target, job)
            self._waits(target)
        self._wake.set()

    def take_back(self, origins: set[Any]) -> list[Job[Any]]:
        """Remove and return the queued (not started) jobs that came from ``origins``."""
        taken: list[Job[Any]] = []
        for target in self.targets.values():
            mine = [job for job in target.queue if job.origin in origins]
            if mine:
                target.queue = collections.deque(j for j in target.queue if j.origin not in origins)
                for job in mine:
                    del target.queued[job.key]
                taken += mine
                self._rouse(target)
        return sorted(taken, key=lambda job: job.seq)

    @property
    def queued(self) -> int:
        return sum(len(t.queue) for t in self._with_work())

    def _with_work(self) -> list[Target]:
        return [*self._waiting, *self._asleep]

    def _expires(self, target: Target, job: Job[Any]) -> None:
        heapq.heappush(self._by_issue, (job.issued_s, next(self._pushed), target, job))

    def _waits(self, target: Target) -> None:
        """The target has queued work: into the round, in its turn."""
        if target.asleep:
            self._rouse(target)
        elif not target.waiting:
            target.waiting = True
            bisect.insort(self._waiting, target, key=lambda t: t.served)

    def _rouse(self, target: Target) -> None:
        """News of an asleep target: back into the round, in its turn, to be asked again."""
        if target.asleep:
            target.asleep, target.wakes = False, None
            self._asleep.discard(target)
            bisect.insort(self._waiting, target, key=lambda t: t.served)

    def _sleep(self, target: Target, at: float | None) -> None:
        """Out of the round (the caller took it out) until ``at``, or news of it."""
        target.asleep, target.wakes = True, at
        self._asleep.add(target)
        if at is not None and at != target.alarm:  # (news woke it before: that alarm holds)
            target.alarm = at
            heapq.heappush(self._alarms, (at, next(self._pushed), target))

    # --- dispatch -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Dispatch until cancelled; calls in flight are cancelled with it."""
        try:
            while True:
                wake_at = self.dispatch()
                self._wake.clear()
                timeout = None if wake_at is None else max(wake_at - self._clock(), 0.001)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)
        finally:
            for task in list(self._tasks):
                task.cancel()

    def dispatch(self) -> float | None:
        """Start every call that may start now, one at a time to the target served least
        recently; returns when to look again (None: only on news)."""
        if self.paused:
            return None
        now = self._clock()
        self._ring(now)
        if self._refused_since:  # every queue, for the refused scope's jobs
            for target in self._with_work():
                self._settle(target, now)
                self._rouse(target)
            self._settled_at, self._refused_since = now, False
        elif now - self._settled_at >= SETTLE_EVERY_S:
            self._time_out(now)
            self._settled_at = now
        index = 0
        while self.in_flight < self.max_in_flight and index < len(self._waiting):
            target = self._waiting[index]
            head = target.queue[0] if target.queue else None
            if head is not None and (unasked := self._unasked(target, head, now)) is not None:
                target.queue.popleft()  # queued before what ends it was known
                del target.queued[head.key]
                self._finish(head, None, unasked, now)
                continue
            at = self._ready(target, now)
            if at is not None and at <= now:
                job = target.queue.popleft()
                del target.queued[job.key]
                self._start(target, job, now)
                self._turns += 1
                target.served = self._turns
                del self._waiting[index]
                self._waiting.append(target)  # served: the others come first next
                index = 0
            elif target.queue:  # the round goes on without it
                del self._waiting[index]
                self._sleep(target, at)
            else:
                index += 1
        wake_at = self._alarms[0][0] if self._alarms else None
        if any(not target.queue for target in self._waiting):  # out of the round until more
            for target in self._waiting:
                target.waiting = bool(target.queue)
            self._waiting = [target for target in self._waiting if target.waiting]
        self._retire_idle()
        if self._waiting or self._asleep:  # look again for what waited too long, at the latest
            sweep_at = self._settled_at + SETTLE_EVERY_S
            wake_at = sweep_at if wake_at is None else min(wake_at, sweep_at)
        return wake_at

    def _ring(self, now: float) -> None:
        """Targets whose alarm rang go back into the round. Alarms of targets that news woke
        since stay until they ring (and do nothing), or until they outnumber the live ones."""
        alarms = self._alarms
        while alarms and alarms[0][0] <= now:
            rings, _, target = heapq.heappop(alarms)
            if target.alarm == rings:
                target.alarm = None
            if target.asleep and target.wakes == rings:  # not roused by news since
                self._rouse(target)
        if len(alarms) > 2 * len(self._asleep) + 1024:  # mostly alarms of targets roused since
            for _, _, target in alarms:
                target.alarm = None
            alarms = self._alarms = [
                (t.wakes, next(self._pushed), t) for t in self._asleep if t.wakes is not None
            ]
            heapq.heapify(alarms)
            for rings, _, target in alarms:
                target.alarm = rings

    def _ready(self, target: Target, now: float) -> float | None:
        """When the head of the target's queue may start (None: not on its own: on news)."""
        if not target.queue:
            return None
        job = target.queue[0]
        at = target.pacer.ready_at(job.cost, now)
        if at is None or at > now:
            job.held_by = _why_held(target, at, now)
        return at

    def _settle(self, target: Target, now: float) -> None:
        """Report, without a call, the queued jobs that were refused or waited too long (a
        sweep of the whole queue: at once after a refusal)."""
        if not target.queue:
            return
        kept: collections.deque[Job[Any]] = collections.deque()
        for job in target.queue:
            refusal = self._refusal(target, job, now)
            if refusal is not None:
                self._finish(job, None, _refused_again(refusal), now)
            elif now - job.issued_s > self.max_wait_s:
                self._finish(job, None, self._timed_out(target, job, now), now)
            else:
                kept.append(job)
                continue
            del target.queued[job.key]
        target.queue = kept

    def _time_out(self, now: float) -> None:
        """Report, without a call, the queued jobs that waited too long (once a second): the
        oldest issued first, until one has not."""
        by_issue = self._by_issue
        while by_issue and now - by_issue[0][0] > self.max_wait_s:
            _, _, target, job = heapq.heappop(by_issue)
            if target.queued.get(job.key) is not job:
                continue  # started, taken back or ended since
            del target.queued[job.key]
            for index, queued in enumerate(target.queue):  # the oldest wait near the head
                if queued is job:
                    del target.queue[index]
                    break
            self._rouse(target)  # its head may have changed
            self._finish(job, None, self._timed_out(target, job, now), now)
        if len(by_issue) > 2 * self.queued + 1024:  # mostly jobs long gone: compact
            self._by_issue = [
                (job.issued_s, next(self._pushed), target, job)
                for target in self._with_work()
                for job in target.queue
            ]
            heapq.heapify(self._by_issue)

    def _timed_out(self, target: Target, job: Job[Any], now: float) -> QueueTimeout:
        held = job.held_by or _why_held(target, target.pacer.ready_at(job.cost, now), now)
        if target.last_error and target.last_error not in held:
            held += f"; last answer: {target.last_error}"
        return QueueTimeout(
            f"waited {now - job.issued_s:.0f}s in the queue of {target.name}, longer "
            f"than the maximum wait ({self.max_wait_s:.0f}s); held by: {held}",
            reason="QueueTimeout",
        )

    def _held_too_long(self, target: Target, job: Job[Any], now: float) -> QueueTimeout | None:
        """The target asked to wait (a 429's pause, a limit spent until its reset) past the
        job's maximum wait: no call can start in time, so it ends now, not at its maximum."""
        until = target.pacer.paused_until
        if until <= now or until - job.issued_s <= self.max_wait_s:
            return None
        if job.probe and not job.tries:
            # an operator's redrive: the upstream is back, they say, and no wait would let the
            # call start in time. It is called; if the upstream still asks to wait, that
            # answer pauses the target again and the redrive ends then, "not called again"
            log.info(
                "%s: a redrive lifts the pause it asked for (%s)", target.name, target.paused_by
            )
            target.pacer.resume(now)
            return None
        return QueueTimeout(
            f"not called{' again' if job.tries else ''}: {target.name} asked to wait "
            f"{until - now:.0f}s more ({target.paused_by}), past "
            f"the maximum wait ({self.max_wait_s:.0f}s, {now - job.issued_s:.0f}s of it "
            "waited already): redrive it once the upstream allows",
            reason="QueueTimeout",
        )

    def _unasked(self, target: Target, job: Job[Any], now: float) -> UpstreamError | None:
        """What ends the job without a call, if anything: a refusal of its scope a moment
        ago, a size no wait lets run, a pause past its maximum wait (checked as it arrives,
        and at the head of its queue: a job behind the head meets it there)."""
        refusal = self._refusal(target, job, now)
        if refusal is not None:
            return _refused_again(refusal)
        return self._too_large(target, job, now) or self._held_too_long(target, job, now)

    def _too_large(self, target: Target, job: Job[Any], now: float) -> UpstreamError | None:
        """The refusal no wait fixes, without a call: the job costs more than a minute's tokens
        as the target said them within ``refusal_s`` (an operator's redrive asks anyway: the
        customer may have raised the limit)."""
        if job.probe or not target.pacer.never_fits(job.least, now, self.refusal_s):
            return None
        error = UpstreamError(
            f"not called: it asks for at least {job.least:.0f} tokens (max_tokens), more than "
            f"the {target.pacer.tokens_per_minute:.0f} a minute {target.name} allows; no "
            "wait lets it run: lower max_tokens",
            reason="RequestTooLarge",
        )
        error.tries = 0
        return error

    @staticmethod
    def _refusal(target: Target, job: Job[Any], now: float) -> UpstreamError | None:
        """The refusal that still covers the job's scope (never for a probe: a redrive)."""
        if job.probe:
            return None
        for scope in (job.key_scope, job.scope):
            found = target.refused.get(scope)
            if found is not None and found[0] > now:
                return found[1]
        return None

    def _retire_idle(self) -> None:
        """Forget targets with nothing queued or in flight and nothing learned worth keeping
        past a while (bounded memory with many sites)."""
        if len(self.targets) <= 10_000:
            return
        idle = [
            n for n, t in self.targets.items() if not (t.queue or t.pacer.in_flight or t.waiting)
        ]
        for name in idle:
            del self.targets[name]
        shared = {id(t.refused) for t in self.targets.values()}
        self._families = {f: r for f, r in self._families.items() if id(r) in shared}

    # --- one call -----------------------------------------------------------------------------

    def _start(self, target: Target, job: Job[Any], now: float) -> None:
        target.pacer.started(job.cost, now)
        target.calls += 1
        self.in_flight += 1
        job.tries += 1
        job.started_s = now
        task = asyncio.create_task(self._call(target, job))
        self._tasks.add(task)
        self._calls[task] = job
        task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._calls.pop(task, None)

    async def drain(self, within_s: float) -> list[Job[Any]]:
        """Start nothing more, and give the calls running up to ``within_s`` to end and their
        reports to be sent; the calls still running then are cancelled, and returned. What is
        queued stays queued (``take_back`` takes it)."""
        self.paused = True
        loop = asyncio.get_running_loop()
        until = loop.time() + within_s
        while self._tasks and (left := until - loop.time()) > 0:
            await asyncio.wait(set(self._tasks), timeout=left)  # reports start as calls end
        cut = [job for task, job in self._calls.items() if not task.done()]
        for task in list(self._calls):
            task.cancel()
        return cut

    async def _call(self, target: Target, job: Job[Any]) -> None:
        value, error, limits = None, None, None
        try:
            value, limits = await job.call()
        except UpstreamError as exc:
            error, limits = exc, exc.limits
        now = self._clock()
        self.in_flight -= 1
        paused = target.pacer.paused_until
        try:
            if error is None or error.answered or not (error.throttle or error.retriable):
                target.answered_s = now
            if error is None:
                target.pacer.answered(limits, now)
                target.refused.pop(job.key_scope, None)  # the key works (again)
                target.refused.pop(job.scope, None)
                self._note(target, "answered")
                self._finish(job, value, None, now)
            elif error.throttle:
                target.pacer.throttled(limits, now)
                target.throttled += 1
                self._note(target, "throttled")
                self._requeue(target, job, f"rate limited ({error})")
            elif error.retriable and error.answered:  # up, but nothing usable: not an outage
                target.pacer.answered(limits, now)
                self._note(target, "failed")
                job.unusable += 1
                if job.slow_after and job.unusable >= job.slow_after:
                    self._finish(job, None, _unusable(target, job, error), now)
                else:
                    self._requeue(target, job, f"{error}")
            elif error.retriable:
                target.pacer.failed(now)
                self._note(target, "failed")
                if error.reason == "Timeout":
                    job.timeouts += 1
                slow = _too_slow(target, job, error)
                if slow is not None:
                    self._finish(job, None, slow, now)
                else:
                    self._requeue(target, job, f"{error}")
            else:
                target.pacer.refused(limits, job.cost, now)
                self._note(target, "refused")
                if error.refuses in ("key", "model"):
                    scope = job.key_scope if error.refuses == "key" else job.scope
                    target.refused[scope] = (now + self.refusal_s, error)
                    self._refused_since = True  # end the scope's queued calls at once
                self._finish(job, None, error, now)
        finally:
            if target.pacer.paused_until > paused:  # this answer asked for a pause
                throttled = error is not None and error.throttle
                target.paused_by = (
                    f"rate limited ({error})" if throttled else "its limit spent until its reset"
                )
            self._rouse(target)  # its pacer heard something
            self._wake.set()

    def _requeue(self, target: Target, job: Job[Any], why: str) -> None:
        """Back to wait, before every job that arrived after it (it keeps its turn); a
        re-issue that arrived meanwhile takes it over."""
        job.held_by = target.last_error = why
        newer = target.queued.get(job.key)
        if newer is not None:
            if job.attempt > newer.attempt:
                _take_over(newer, job)
                self._expires(target, newer)
            return
        at = next((i for i, queued in enumerate(target.queue) if queued.seq > job.seq), None)
        target.queue.insert(len(target.queue) if at is None else at, job)
        target.queued[job.key] = job
        self._expires(target, job)
        self._waits(target)

    def _finish(self, job: Job[Any], value: Any, error: UpstreamError | None, now: float) -> None:
        """Report the job's outcome (in its own task: reports never hold the dispatcher)."""
        outcome = Outcome(value, error, max(now - job.issued_s, 0.0), job.tries)
        task = asyncio.ensure_future(job.report(outcome))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _note(self, target: Target, what: str) -> None:
        if self.on_call is not None:
            self.on_call(target, what)

    # --- views --------------------------------------------------------------------------------

    def snapshot(self) -> list[dict[str, Any]]:
        """Per target: queue depth, pacing rate, 429s, circuit state (for metrics and stats)."""
        now = self._clock()
        return [_described(t, now) for t in self.targets.values()]

    def busiest(self, count: int) -> tuple[list[dict[str, Any]], dict[str, int]]:
        """The ``count`` targets with the most work (queued and in flight, then 429s) as
        :meth:`snapshot` describes them, busiest first, and the others' queued, in-flight and
        throttled sums. What a /metrics scrape needs: a pass over every target's counters, a
        description of a few (describing all 10,000 targets a scheduler may remember took
        ~70 ms of the worker's loop a scrape)."""
        now = self._clock()
        targets = self.targets.values()
        described = [_described(t, now) for t in heapq.nlargest(count, targets, key=_load)]
        rest = {"queued": 0, "in_flight": self.in_flight, "throttled": 0}
        for t in targets:
            rest["queued"] += len(t.queue)
            rest["throttled"] += t.throttled
        for name in rest:
            rest[name] -= sum(d[name] for d in described)
        return described, rest


SETTLE_EVERY_S = 1.0


def _too_slow(target: Target, job: Job[Any], error: UpstreamError) -> UpstreamError | None:
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


def _unusable(target: Target, job: Job[Any], error: UpstreamError) -> UpstreamError:
    """The final answer for a call answered ``slow_after`` times with nothing usable: the
    upstream is up, and would be billed for each more time it is asked."""
    return type(error)(
        f"{error} {job.unusable} times: {target.name} answers this call with nothing usable "
        "(each answer may have been billed)",
        reason=error.reason,
        status=error.status,
        limits=error.limits,
    )


def _load(target: Target) -> tuple[int, int]:
    return len(target.queue) + target.pacer.in_flight, target.throttled


def _described(t: Target, now: float) -> dict[str, Any]:
    return {
        "target": t.name,
        "queued": len(t.queue),
        "in_flight": t.pacer.in_flight,
        "rate": t.pacer.rate,
        "window": t.pacer.allowed_in_flight(now),
        "throttled": t.throttled,
        "calls": t.calls,
        "circuit": t.pacer.circuit.name.lower(),
        "refused": sorted(s for s, (until, _) in t.refused.items() if until > now),
    }


def _take_over(queued: Job[Any], newer: Job[Any]) -> None:
    """A re-issued command replaces the one still queued, in its place: its attempt, call and
    report, while the wait counts from the first issue."""
    queued.attempt, queued.call, queued.report = newer.attempt, newer.call, newer.report
    queued.scope, queued.cost, queued.probe = newer.scope, newer.cost, newer.probe
    queued.origin, queued.record = newer.origin, newer.record
    queued.issued_s = min(queued.issued_s, newer.issued_s)


def _why_held(target: Target, at: float | None, now: float) -> str:
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


def _refused_again(error: UpstreamError) -> UpstreamError:
    again = type(error)(
        f"not called: {error}",
        status=error.status,
        retriable=False,
        reason=error.reason,
        refuses=error.refuses,
    )
    again.tries = 0
    return again
