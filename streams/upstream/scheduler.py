"""A fair scheduler of upstream calls: one queue per target, capacity shared round-robin.

Each command waits in its target's queue until the target's :class:`Pacer` allows a call and a
slot of the executor's capacity is free; free slots go round-robin to the targets that can use
them, so one site's blast cannot hold the slots another site needs. What a call's answer means
for the queue is decided here, what it means for the request is the ledger's:

- an answer (success, or a refusal no retry fixes) is reported;
- a 429 (rate limited) or an outage (5xx, connection error, timeout) sends the command back to
  the head of its queue: it waits, it does not spend an attempt. A command that waited past
  ``max_wait`` is reported as a failure (``QueueTimeout``) with the last thing that held it,
  by a look once a second and, between two looks, in place of its call;
  so is, at once, one that the target asked to wait for longer than its ``max_wait`` allows
  (a daily limit's "try again in 3h"): waiting for nothing is not waiting;
- a command that costs more tokens at the least (its ``max_tokens``) than the target allows in
  a minute is reported at once (``RequestTooLarge``), without a call and without holding the
  commands behind it: no wait would let it run;
- a call that timed out its job's ``slow_after`` times, the last while the target answered
  its other calls, is reported (``Timeout``): it is the call that is slow (a long
  generation), not the upstream, and each try may have been billed;
- a call answered with nothing usable (a 200 without text, or not JSON; a Talkable 2xx that
  is not its API's JSON; an error answer that says to try again, OpenAI's ``x-should-retry:
  true``) is asked again, the target being up (no circuit counts it), and reported after
  ``unusable_after`` such answers (``EmptyCompletion``, ``BadAnswer``, the error's reason):
  each 200 may have been billed, its tokens counted as spent; an error answer refused the
  call and generated nothing, so its tokens go back. One whose answer no retry changes (a
  refusal, a filtered text: not ``retriable``) is reported at once, its tokens counted as
  spent;
- a refusal of the call as it was sent, which its adapter has learned to send as the answer
  asks (``resend``: OpenAI's 400 for ``max_tokens`` to a model that takes
  ``max_completion_tokens`` only) goes back to its place in its queue (before every job that
  arrived after it), called again as soon as its pacer allows, as the same try: the upstream
  generated nothing, so its tokens go back. Once: refused so again, the refusal is reported;
- a refusal for the whole key (``insufficient_quota``, 401, 403), for one model
  (``model_not_found``) or for a whole Talkable site (a 404: no such site) stops the target's
  calls in that scope for ``refusal_seconds`` (a
  key's scope is that key: a Talkable site called with an old and a new key keeps calling
  with the new one; an OpenAI key is a family of targets, one per model, since OpenAI limits
  each model apart, and its refusal stops them all): queued and new commands in it are
  reported at once with the same reason, without a call. After that, the next command is a
  probe; so is an operator's redrive at any time (the cause was fixed), and a success lifts
  the refusal. A redrive also lifts a pause (a 429's, a limit spent until its reset) that
  would hold it past its maximum wait: it is called, and the upstream's answer says whether
  to pause again;
- OpenAI limits an organisation, not a key: its keys share its limits, for each model, and
  every answer names it (``openai-organization``; a 429's body too). A key's targets are paced
  by their own pacers until an answer names the key's organisation; from then on, one pacer
  paces every target of the organisation's keys for the same model (the job's ``scope``), so
  two sites with keys of one agency together send what the agency is allowed, not twice it.
  Only the pace is shared: each key keeps its queue and its turn in the round, and its
  refusals (a revoked key is that key's; ``insufficient_quota`` may be a project's budget,
  and costs one call a key to learn). The executor is told when an answer names a key's
  organisation (``on_organization``), before another call of it starts: the key's queued
  commands may go to the executor that paces the organisation (``streams.agents.forwarding``).
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
from collections.abc import Callable
from typing import Any

from streams.errors import UpstreamError
from streams.upstream import verdicts
from streams.upstream.jobs import Job, Outcome, Refused, Target, describe, load, take_over
from streams.upstream.pacer import Pacer, PacerConfig

__all__ = ["Job", "Outcome", "Scheduler", "Target"]

log = logging.getLogger(__name__)

SETTLE_EVERY_S = 1.0  # at least this often, a look for queued jobs that waited too long
RESERVE_SHARE = 16  # a sixteenth of the slots is kept for targets running few calls
KNOWN_TARGETS = 10_000  # targets remembered; past that, the idle ones are forgotten
# keys whose organisation is remembered, their targets forgotten: past that, only those of
# targets still known (a key back after a while is asked first again, as a new one)
KNOWN_ORGANIZATIONS = 10 * KNOWN_TARGETS


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
        # the last free slots go only to targets with fewer calls than this running: a target
        # that came to a scheduler a blast of slow calls has filled starts at once, not when
        # the blast's first wave ends (0: below 16 slots, none kept)
        self.reserve = max_in_flight // RESERVE_SHARE
        self.max_wait_s = max_wait_s
        self.refusal_s = refusal_s
        self._pacer_config = pacer_config
        self._clock = clock
        self.targets: dict[str, Target] = {}
        self._families: dict[str, dict[str, Refused]] = {}  # their refusals
        self._organizations: dict[str, str] = {}  # a family (an OpenAI key) → its organisation
        self._pools: dict[str, set[Target]] = {}  # "<organisation> <scope>" → one pacer's targets
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
        # told of a family (an OpenAI key) whose organisation an answer named (first, or anew)
        self.on_organization: Callable[[str], None] | None = None

    def now(self) -> float:
        return self._clock()

    # --- intake -------------------------------------------------------------------------------

    def submit(self, target_name: str, job: Job[Any], organization: str | None = None) -> None:
        """Queue ``job`` for its target. ``organization``: the organisation its record named (a
        command another executor forwarded here, keyed by its key's organisation:
        ``streams.agents.forwarding``), paced with it from its first call, as if an answer had
        named it (an answer that names another still moves it)."""
        target = self.targets.get(target_name)
        if target is None:
            self._new += 1
            refused = self._families.setdefault(job.family, {}) if job.family else {}
            pacer = Pacer(self._pacer_config)
            target = Target(
                target_name, pacer, family=job.family, refused=refused, served=-self._new
            )
            self.targets[target_name] = target
            known = self._organizations.get(job.family) if job.family else None
            if known is not None:  # its key's other models named it: paced with it
                self._share(target, job, known)
        if organization is not None and job.family and job.family not in self._organizations:
            self._share(target, job, organization)
        now = self._clock()
        ended = verdicts.unasked(target, job, now, self.max_wait_s, self.refusal_s)
        if ended is not None:
            self._finish(job, None, ended, now)
            return
        queued = target.queued.get(job.key)
        if queued is not None:  # a re-issue of work still queued: it keeps its place
            if job.attempt >= queued.attempt:
                take_over(queued, job)
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
        return self.take_out(lambda job: job.origin in origins)

    def take_out(self, which: Callable[[Job[Any]], bool]) -> list[Job[Any]]:
        """Remove and return the queued (not started) jobs ``which`` picks, in arrival order."""
        taken: list[Job[Any]] = []
        for target in self.targets.values():
            mine = [job for job in target.queue if which(job)]
            if mine:
                chosen = {id(job) for job in mine}
                target.queue = collections.deque(j for j in target.queue if id(j) not in chosen)
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
            if head is not None:
                ended = verdicts.unasked(target, head, now, self.max_wait_s, self.refusal_s)
                if ended is None and now - head.issued_s > self.max_wait_s:
                    # past its maximum since the last look for long waits (once a second):
                    # told as that look tells it, not called
                    ended = verdicts.timed_out(target, head, now, self.max_wait_s)
                if ended is not None:
                    target.queue.popleft()  # queued before what ends it was known
                    del target.queued[head.key]
                    self._finish(head, None, ended, now)
                    continue
            at = self._ready(target, now)
            if at is not None and at <= now and self._kept_from(target):
                index += 1  # in the round still: a call's end frees a slot for it
            elif at is not None and at <= now:
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

    def _kept_from(self, target: Target) -> bool:
        """Whether the free slots left are the reserve and this target runs too many calls
        to take one (its head then says why it waits)."""
        free = self.max_in_flight - self.in_flight
        if free > self.reserve or target.in_flight < self.reserve:
            return False
        target.queue[0].held_by = (
            f"{target.in_flight} of its calls running: the {self.name}'s last "
            f"{self.reserve} of {self.max_in_flight} slots are kept for targets running fewer"
        )
        return True

    def _ready(self, target: Target, now: float) -> float | None:
        """When the head of the target's queue may start (None: not on its own: on news)."""
        if not target.queue:
            return None
        job = target.queue[0]
        at = target.pacer.ready_at(job.cost, now)
        if at is None or at > now:
            job.held_by = verdicts.why_held(target, at, now)
        return at

    def _settle(self, target: Target, now: float) -> None:
        """Report, without a call, the queued jobs that were refused or waited too long (a
        sweep of the whole queue: at once after a refusal)."""
        if not target.queue:
            return
        kept: collections.deque[Job[Any]] = collections.deque()
        for job in target.queue:
            refused = verdicts.refusal(target, job, now)
            if refused is not None:
                self._finish(job, None, verdicts.refused_again(refused, job, now), now)
            elif now - job.issued_s > self.max_wait_s:
                self._finish(job, None, verdicts.timed_out(target, job, now, self.max_wait_s), now)
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
            self._finish(job, None, verdicts.timed_out(target, job, now, self.max_wait_s), now)
        if len(by_issue) > 2 * self.queued + 1024:  # mostly jobs long gone: compact
            self._by_issue = [
                (job.issued_s, next(self._pushed), target, job)
                for target in self._with_work()
                for job in target.queue
            ]
            heapq.heapify(self._by_issue)

    def _retire_idle(self) -> None:
        """Forget targets with nothing queued or in flight and nothing learned worth keeping
        past a while (bounded memory with many sites)."""
        if len(self.targets) <= KNOWN_TARGETS:
            return
        idle = [n for n, t in self.targets.items() if not (t.queue or t.in_flight or t.waiting)]
        for name in idle:
            self._leave(self.targets.pop(name))
        shared = {id(t.refused) for t in self.targets.values()}
        self._families = {f: r for f, r in self._families.items() if id(r) in shared}
        if len(self._organizations) > KNOWN_ORGANIZATIONS:
            families = {t.family for t in self.targets.values()}
            self._organizations = {f: o for f, o in self._organizations.items() if f in families}

    # --- organisations ------------------------------------------------------------------------

    def organization(self, family: str) -> str | None:
        """The organisation an answer named for the family's key (None: none yet)."""
        return self._organizations.get(family)

    def _share(self, target: Target, job: Job[Any], organization: str) -> None:
        """An answer named the organisation of the target's key (its family): from now on the
        target is paced by the one pacer of that organisation's targets for its model (the
        job's scope). The first of them keeps its own pacer (a key alone in its organisation
        is paced as before); one that joins takes theirs, and its calls still out count
        there."""
        if not job.family:
            return
        if self._organizations.get(job.family) != organization:
            self._organizations[job.family] = organization
            if self.on_organization is not None:  # before any more of its calls start
                self.on_organization(job.family)
        pool = f"{organization} {job.scope}"
        if target.pool == pool:
            return
        before = target.pacer
        left = self._leave(target)  # (its key changed organisation: rare, but not its pace)
        members = self._pools.setdefault(pool, set())
        if members:
            shared = next(iter(members)).pacer
            log.info(
                "%s is paced with %d other target(s) of organization=%s: their limits are one",
                target.name,
                len(members),
                organization,
            )
        else:  # the first of its organisation's: its own pacer, unless another pool's still
            shared = Pacer(self._pacer_config) if left else before
        if shared is not before:
            before.in_flight -= target.in_flight
            shared.in_flight += target.in_flight
            target.pacer = shared
        members.add(target)
        target.pool = pool

    def _leave(self, target: Target) -> bool:
        """The target leaves the pool whose pacer it shares; whether others still share it."""
        pool, target.pool = target.pool, ""
        members = self._pools.get(pool)
        if members is None:
            return False
        members.discard(target)
        if not members:
            del self._pools[pool]
        return bool(members)

    def _sharing(self, target: Target) -> set[Target] | tuple[Target]:
        """The targets paced by the target's pacer: its pool's, or itself."""
        return self._pools.get(target.pool) or (target,)

    # --- one call -----------------------------------------------------------------------------

    def _start(self, target: Target, job: Job[Any], now: float) -> None:
        target.pacer.started(job.cost, now)
        target.in_flight += 1
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
        if limits is not None and limits.organization:  # whose limits: one pace per org
            self._share(target, job, limits.organization)
        self.in_flight -= 1
        target.in_flight -= 1
        job.last_call_s = max(now - job.started_s, 0.0)
        job.in_calls_s += job.last_call_s
        paused = target.pacer.paused_until
        try:
            if error is None or error.answered or not (error.throttle or error.retriable):
                target.answered_s = now
            if error is None:
                target.pacer.answered(limits, now, job.started_s)
                target.refused.pop(job.key_scope, None)  # the key works (again)
                target.refused.pop(job.scope, None)
                self._note(target, "answered")
                self._finish(job, value, None, now)
            elif error.throttle:
                target.pacer.throttled(limits, now, job.started_s)
                target.throttled += 1
                self._note(target, "throttled")
                self._requeue(target, job, f"rate limited ({error})")
            elif error.retriable and error.answered:  # up, but nothing usable: not an outage
                if verdicts.error_answer(error):  # a 4xx that says to try again: refused, it
                    # generated nothing, so its tokens go back (a 200 may have been billed)
                    target.pacer.refused(limits, job.cost, now, job.started_s)
                else:
                    target.pacer.answered(limits, now, job.started_s)
                self._note(target, "failed")
                job.unusable += 1
                if job.unusable >= max(job.unusable_after, 1):
                    self._finish(job, None, verdicts.unusable(target, job, error), now)
                else:
                    self._requeue(target, job, f"{error}")
            elif error.retriable:
                target.pacer.failed(now, limits)
                self._note(target, "failed")
                if error.reason == "Timeout":
                    job.timeouts += 1
                slow = verdicts.too_slow(target, job, error)
                if slow is not None:
                    self._finish(job, None, slow, now)
                else:
                    self._requeue(target, job, f"{error}")
            elif error.resend and not job.resent:
                # refused as it was sent (OpenAI's 400 for ``max_tokens`` to a model that takes
                # ``max_completion_tokens`` only), which the call now sends as asked: made
                # again at once, in its turn, as the same try. The upstream generated nothing:
                # its tokens go back, the request it took stays taken (the pacer's to say)
                target.pacer.refused(limits, job.cost, now, job.started_s)
                self._note(target, "resent")  # not "refused": no one has anything to fix
                job.resent = True
                job.tries -= 1
                self._requeue(target, job, f"sent again ({error})", said=False)
            else:
                if error.answered:  # a 200 no retry changes (a refusal): its tokens were spent
                    target.pacer.answered(limits, now, job.started_s)
                else:
                    target.pacer.refused(limits, job.cost, now, job.started_s)
                self._note(target, "refused")
                if error.refuses in ("key", "model", "site"):  # model, site: the job's scope
                    scope = job.key_scope if error.refuses == "key" else job.scope
                    target.refused[scope] = Refused(now + self.refusal_s, error, job.key, now)
                    self._refused_since = True  # end the scope's queued calls at once
                self._finish(job, None, error, now)
        finally:
            sharing = self._sharing(target)
            if target.pacer.paused_until > paused:  # this answer asked for a pause
                backing_off = error is not None and error.throttle and target.pacer.backoff
                if error is not None and error.throttle:
                    paused_by = f"rate limited ({error})"
                elif error is not None and error.retriable:
                    paused_by = f"unavailable ({error})"
                else:
                    paused_by = "its limit spent until its reset"
                for paced in sharing:  # a pause of their one pacer holds them all
                    paced.backing_off, paced.paused_by = backing_off, paused_by
            for paced in sharing:
                self._rouse(paced)  # its pacer heard something
            self._wake.set()

    def _requeue(self, target: Target, job: Job[Any], why: str, *, said: bool = True) -> None:
        """Back to wait, before every job that arrived after it (it keeps its turn); a
        re-issue that arrived meanwhile takes it over. ``said``: ``why`` is what holds the
        target (a 429, an outage), for whoever waits on it, not this job's alone."""
        job.held_by = why
        if said:
            target.last_error = why
        newer = target.queued.get(job.key)
        if newer is not None:
            if job.attempt > newer.attempt:
                take_over(newer, job)
                self._expires(target, newer)
            return
        at = next((i for i, queued in enumerate(target.queue) if queued.seq > job.seq), None)
        target.queue.insert(len(target.queue) if at is None else at, job)
        target.queued[job.key] = job
        self._expires(target, job)
        self._waits(target)

    def _finish(self, job: Job[Any], value: Any, error: UpstreamError | None, now: float) -> None:
        """Report the job's outcome (in its own task: reports never hold the dispatcher)."""
        waited = max(now - job.issued_s - job.in_calls_s, 0.0)
        outcome = Outcome(value, error, waited, job.tries, job.last_call_s)
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
        return [describe(t, now) for t in self.targets.values()]

    def busiest(self, count: int) -> tuple[list[dict[str, Any]], dict[str, int]]:
        """The ``count`` targets with the most work (queued and in flight, then 429s) as
        :meth:`snapshot` describes them, busiest first, and the others' queued, in-flight and
        throttled sums. What a /metrics scrape needs: a pass over every target's counters, a
        description of a few (describing all 10,000 targets a scheduler may remember took
        ~70 ms of the worker's loop a scrape)."""
        now = self._clock()
        targets = self.targets.values()
        described = [describe(t, now) for t in heapq.nlargest(count, targets, key=load)]
        rest = {"queued": 0, "in_flight": self.in_flight, "throttled": 0}
        for t in targets:
            rest["queued"] += len(t.queue)
            rest["throttled"] += t.throttled
        for name in rest:
            rest[name] -= sum(d[name] for d in described)
        return described, rest
