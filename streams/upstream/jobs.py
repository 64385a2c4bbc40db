"""What the scheduler queues and for whom: a :class:`Job` (one command's call), its
:class:`Outcome`, and a :class:`Target` (one upstream key or site, with its queue, pacer and
refusals), with the small functions over them that the scheduler and its views share.
"""

from __future__ import annotations

import collections
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from streams.errors import UpstreamError
from streams.upstream.limits import Limits
from streams.upstream.pacer import Pacer

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
    slow_after: int = 0  # its calls' timeouts that end it, the target answering others (0: none)
    unusable_after: int = 3  # its answers with nothing usable that end it (a 200 without a
    # text, a body that is not the API's): the target is up, asking again waits for nothing
    key_scope: str = "key"  # what a refusal of the key covers: the target's key, or (a site
    # called with several keys) ``key:<fingerprint>`` so a wrong key stops only its own calls
    family: str = ""  # targets that share refusals (an OpenAI key's models); "": the target's own
    # read from its key's partition, so it may go to its organisation's executor (an
    # executor's concern: ``streams.agents.forwarding``); one forwarded there may not
    forwardable: bool = False
    tries: int = 0
    seq: int = 0  # the order it arrived in
    started_s: float = 0.0  # when its latest call started
    in_calls_s: float = 0.0  # its calls' time so far (what it did not spend waiting)
    last_call_s: float | None = None  # its latest call's time (None: never called)
    timeouts: int = 0  # its calls that timed out
    unusable: int = 0  # its calls answered with nothing usable (no text; not JSON)
    resent: bool = False  # called again once after a refusal of the call as it was sent
    held_by: str = ""  # why it is waiting, for a QueueTimeout


@dataclass(frozen=True)
class Refused:
    """A refusal that covers a scope of a target (a key, a model, a site) a while: the
    answer, until when, and the request whose call it answered, when (said to each job it
    ends without a call: that request's answer, not theirs)."""

    until: float
    error: UpstreamError
    request: str  # the answered job's key (its request id)
    at: float


@dataclass(frozen=True)
class Outcome(Generic[R]):
    """What is reported for a job: a value, or the error that ends the attempt."""

    value: R | None
    error: UpstreamError | None
    waited_s: float  # in its target's queue: from its issue to its outcome, less its calls
    tries: int
    # its last call's time, from its start to its answer (None: it made none): what a
    # publication and a failed generation report as their latency (a generated text reports
    # its own, timed by the call)
    call_s: float | None = None


@dataclass(eq=False)  # one per name: the same target is the same object
class Target:
    """One upstream the scheduler calls (an OpenAI key's model, a Talkable site): its queue,
    its pacer (shared with the other keys of its OpenAI organisation, for the same model, once
    an answer named it), the refusals that cover it, and its place in the scheduler's round."""

    name: str
    pacer: Pacer
    family: str = ""  # its jobs' family (an OpenAI key): "" for a target of its own
    pool: str = ""  # "<organisation> <scope>" whose one pacer it shares; "": its own pacer
    in_flight: int = 0  # its own calls running (its pacer's may count its organisation's)
    queue: collections.deque[Job[Any]] = field(default_factory=collections.deque)
    queued: dict[str, Job[Any]] = field(default_factory=dict)  # the queue's jobs by key
    # scope → until when, and why; shared by the targets of one family
    refused: dict[str, Refused] = field(default_factory=dict)
    throttled: int = 0  # 429s answered to this target's calls
    calls: int = 0
    last_error: str = ""  # the last 429 or outage, for whoever waits on it
    paused_by: str = ""  # what asked for its pacer's latest pause
    backing_off: bool = False  # that pause is longer than its 429 asked: a backoff of our own
    answered_s: float = float("-inf")  # when a call of it last got an answer
    served: int = 0  # when it last started a call (a turn number; below 0: never, newest least)
    waiting: bool = False  # has queued work: in the scheduler's round, or asleep
    asleep: bool = False  # out of the round until news of it, or until ``wakes``
    wakes: float | None = None  # when its head may start, as the pacer said (None: on news)
    alarm: float | None = None  # its latest alarm not rung yet


def take_over(queued: Job[Any], newer: Job[Any]) -> None:
    """A re-issued command replaces the one still queued, in its place: its attempt, call and
    report, while the wait counts from the first issue."""
    queued.attempt, queued.call, queued.report = newer.attempt, newer.call, newer.report
    queued.scope, queued.cost, queued.probe = newer.scope, newer.cost, newer.probe
    queued.origin, queued.record, queued.forwardable = newer.origin, newer.record, newer.forwardable
    if newer.issued_s < queued.issued_s:  # the wait counts from the first, less its calls
        queued.issued_s, queued.in_calls_s = newer.issued_s, newer.in_calls_s


def load(target: Target) -> tuple[int, int]:
    """How busy a target is: queued and in flight, then its 429s."""
    return len(target.queue) + target.in_flight, target.throttled


def describe(t: Target, now: float) -> dict[str, Any]:
    """A target as metrics and ``talkstream stats`` show it."""
    return {
        "target": t.name,
        "queued": len(t.queue),
        "in_flight": t.in_flight,
        "rate": t.pacer.rate,
        "window": t.pacer.allowed_in_flight(now),
        "throttled": t.throttled,
        "calls": t.calls,
        "circuit": t.pacer.circuit.name.lower(),
        "refused": sorted(s for s, r in t.refused.items() if r.until > now),
    }
