"""The fair scheduler of upstream calls (``streams.upstream.scheduler``), in-process with calls
the test answers and a clock the test moves: fair shares, waiting without failing, refusals
that stop a key, the maximum wait."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import time
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path
from typing import Any

import pytest

from bench.blast_ticks import scheduler_looks
from bench.known_targets import cpu_per_call, scrape_ms
from streams.clients.talkable import Publication
from streams.errors import PublishError, UpstreamError
from streams.upstream import scheduler as scheduler_module
from streams.upstream.limits import Limits
from streams.upstream.pacer import Circuit, PacerConfig
from streams.upstream.scheduler import Job, Outcome, Scheduler

README = Path(__file__).resolve().parents[2] / "README.md"


@dataclass
class Clock:
    t: float = 1000.0

    def __call__(self) -> float:
        return self.t


@dataclass
class Upstream:
    """Calls wait until the test answers them; every call is recorded."""

    calls: list[str] = field(default_factory=list)
    pending: dict[str, list[asyncio.Future[Any]]] = field(default_factory=dict)
    reports: dict[str, Outcome[Any]] = field(default_factory=dict)
    said: dict[str, Limits] = field(default_factory=dict)  # the limits a job's answer says

    def job(self, key: str, *, attempt: int = 1, scope: str = "model:m", issued: float = 1000.0,
            origin: Any = None, probe: bool = False, key_scope: str = "key", cost: float = 0,
            least: float = 0, slow_after: int = 0, family: str = "") -> Job[Any]:  # fmt: skip
        async def call() -> tuple[str, Limits | None]:
            self.calls.append(key)
            future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            self.pending.setdefault(key, []).append(future)
            answer = await future
            if isinstance(answer, UpstreamError):
                raise answer
            return answer, self.said.get(key)

        async def report(outcome: Outcome[Any]) -> None:
            self.reports[key] = outcome

        return Job(key=key, attempt=attempt, scope=scope, cost=cost, issued_s=issued, call=call,
                   report=report, origin=origin, probe=probe, key_scope=key_scope,
                   least=least, slow_after=slow_after, family=family)  # fmt: skip

    def answer(self, key: str, value: Any = "ok") -> None:
        self.pending[key].pop(0).set_result(value)


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def answered_after(
    s: Scheduler, clock: Clock, up: Upstream, target: str, key: str, seconds: float, value: Any
) -> None:
    """``key``'s job on ``target`` called, and answered ``value`` (an error ends it) ``seconds``
    later on the scheduler's clock."""
    s.submit(target, up.job(key))
    s.dispatch()
    await settle()
    clock.t += seconds
    up.answer(key, value)
    await settle()


def scheduler(clock: Clock, *, slots: int = 4, window: int = 16, **kw: Any) -> Scheduler:
    # no burst after a rest (the pacer's tests have it): each call's spacing shows its pace
    config = PacerConfig(
        initial_window=window, circuit_after=2, open_base=5.0, open_max=20.0, burst_s=0.0
    )
    return Scheduler(
        "test",
        max_in_flight=slots,
        max_wait_s=kw.get("max_wait", 600.0),
        refusal_s=kw.get("refusal", 60.0),
        pacer_config=config,
        clock=clock,
    )


def throttled(wait: float = 2.0) -> UpstreamError:
    return UpstreamError("429", reason="RateLimited", status=429, retriable=True, throttle=True,
                         limits=Limits(retry_after_s=wait))  # fmt: skip


def outage(retry_after: float | None = None) -> UpstreamError:
    return UpstreamError("answered 503", reason="ServerError", status=503, retriable=True,
                         limits=Limits(retry_after_s=retry_after))  # fmt: skip


async def probe_answered(s: Scheduler, up: Upstream, key: str) -> None:
    """A new target is asked once before many times: dispatch, answer that first call."""
    s.dispatch()
    await settle()
    assert up.calls[-1] == key
    up.answer(key)
    await settle()


async def test_a_new_target_is_asked_once_before_it_is_asked_many_times() -> None:
    clock, up = Clock(), Upstream()
    s = scheduler(clock, slots=10, window=4)
    for i in range(6):
        s.submit("new", up.job(f"n{i}"))
    s.dispatch()
    await settle()
    assert up.calls == ["n0"]
    up.answer("n0")
    await settle()
    s.dispatch()
    await settle()
    assert up.calls == ["n0", "n1", "n2", "n3", "n4", "n5"]  # then its window: 4, +1 for n0


async def test_a_new_targets_slow_first_call_holds_the_others_a_second_at_most() -> None:
    clock, up = Clock(), Upstream()
    pacing = PacerConfig(initial_window=4, probe_wait=0.25)
    s = Scheduler("test", max_in_flight=10, max_wait_s=600, refusal_s=60, pacer_config=pacing,
                  clock=clock)  # fmt: skip
    for i in range(6):
        s.submit("new", up.job(f"n{i}"))
    assert s.dispatch() == clock.t + 0.25  # when to look again, with no news
    await settle()
    assert up.calls == ["n0"]
    assert "first call" in (s.targets["new"].queue[0].held_by or "")  # what holds the others
    assert s.snapshot()[0]["window"] == 1
    clock.t += 0.25  # n0 is a generation that takes its time
    s.dispatch()
    await settle()
    assert up.calls == ["n0", "n1", "n2", "n3"]  # the initial window, n0 still out
    assert s.snapshot()[0]["window"] == 4
    up.answer("n0")
    await settle()
    assert up.reports["n0"].value == "ok"


async def test_a_blasting_target_does_not_hold_the_slots_another_target_needs() -> None:
    clock, up = Clock(), Upstream()
    s = scheduler(clock, slots=4)
    for i in range(100):
        s.submit("site:blast", up.job(f"b{i}"))
    await probe_answered(s, up, "b0")
    s.dispatch()
    await settle()
    assert up.calls == ["b0", "b1", "b2", "b3", "b4"]
    s.submit("site:quiet", up.job("q0"))
    up.answer("b1")
    await settle()
    s.dispatch()
    await settle()
    assert up.calls[-1] == "q0"  # the freed slot went to the quiet target, not b5
    assert up.reports["b1"].value == "ok"


async def test_a_target_that_comes_to_slots_a_blast_of_slow_calls_filled_starts_at_once() -> None:
    """A blast of slow calls (15 s each) took every slot at once: a site that came after it
    waited for the blast's first wave to end (p95 14 s for a 0.3 s call, in a probe). The last
    sixteenth of the slots goes only to targets running fewer calls than that."""
    clock, up = Clock(), Upstream()
    s = scheduler(clock, slots=64, window=1000)  # a reserve of 4
    assert s.reserve == 4
    for i in range(200):
        s.submit("key:blast", up.job(f"b{i}"))
    await probe_answered(s, up, "b0")
    s.dispatch()
    await settle()
    assert len(up.calls) == 1 + 60 and s.in_flight == 60  # 4 slots free, kept
    head = s.targets["key:blast"].queue[0]
    assert head.held_by == (
        "60 of its calls running: the test's last 4 of 64 slots are kept for targets running fewer"
    )
    for name in ("key:trickle", "key:other"):
        s.submit(name, up.job(name))
    s.dispatch()
    await settle()
    assert sorted(up.calls[-2:]) == ["key:other", "key:trickle"]  # at once, beside the blast
    assert s.in_flight == 62
    called = len(up.calls)
    up.answer("b1")
    await settle()
    s.dispatch()
    await settle()
    assert (s.in_flight, len(up.calls)) == (61, called)  # b1's slot is the reserve's now


def test_a_scheduler_of_fewer_than_sixteen_slots_keeps_none() -> None:
    assert scheduler(Clock(), slots=15).reserve == 0
    assert scheduler(Clock(), slots=1024).reserve == 64


async def test_targets_share_the_slots_round_robin() -> None:
    clock, up = Clock(), Upstream()
    s = scheduler(clock, slots=6)
    for i in range(10):
        s.submit("a", up.job(f"a{i}"))
        s.submit("b", up.job(f"b{i}"))
    s.submit("c", up.job("c0"))
    s.dispatch()
    await settle()
    assert sorted(up.calls) == ["a0", "b0", "c0"]  # each new target asked once first
    for key in ("a0", "b0", "c0"):
        up.answer(key)
    await settle()
    up.calls.clear()
    s.dispatch()
    await settle()
    assert len(up.calls) == 6
    shares = {name: sum(c.startswith(name) for c in up.calls) for name in "ab"}
    assert shares == {"a": 3, "b": 3}


async def test_a_429_sends_the_call_back_to_wait_without_reporting_it() -> None:
    clock, up = Clock(), Upstream()
    s = scheduler(clock)
    s.submit("key", up.job("r0"))
    await probe_answered(s, up, "r0")
    up.calls.clear()
    s.submit("key", up.job("r1"))
    s.dispatch()
    await settle()
    up.answer("r1", throttled(wait=2.0))
    await settle()
    assert "r1" not in up.reports  # waiting is not failing
    s.dispatch()
    await settle()
    assert s.targets["key"].pacer.ready_at(0, clock.t) == pytest.approx(1002.0)  # as asked
    assert up.calls == ["r1"]
    clock.t = 1002.0
    s.dispatch()
    await settle()
    up.answer("r1")
    await settle()
    assert up.calls == ["r1", "r1"]
    assert (up.reports["r1"].value, up.reports["r1"].tries) == ("ok", 2)
    assert s.snapshot()[0]["throttled"] == 1


async def test_an_outage_opens_the_circuit_and_the_queue_waits_for_a_probe() -> None:
    clock, up = Clock(), Upstream()
    s = scheduler(clock, slots=10, window=1)
    s.submit("site", up.job("ok"))
    await probe_answered(s, up, "ok")
    up.calls.clear()
    for i in range(6):
        s.submit("site", up.job(f"e{i}"))
    s.dispatch()
    await settle()
    assert up.calls == ["e0", "e1"]  # the window: 1, +1 for the success
    up.answer("e0", outage())
    up.answer("e1", outage())
    await settle()
    s.dispatch()
    await settle()
    assert s.targets["site"].pacer.ready_at(0, clock.t) == pytest.approx(1005.0)  # open
    assert len(up.calls) == 2
    clock.t = 1005.0
    s.dispatch()
    await settle()
    assert up.calls[2:] == ["e0"]  # one probe, the oldest
    up.answer("e0", outage())
    await settle()
    clock.t = 1015.0  # open twice as long
    s.dispatch()
    await settle()
    up.answer("e0")  # it answers: closed, the queue drains
    await settle()
    while len(up.reports) < 7:  # "ok" and e0..e5
        s.dispatch()
        await settle()
        for key, futures in up.pending.items():
            if futures:
                up.answer(key)
        await settle()
    assert up.reports["e0"].value == "ok" and up.reports["e0"].tries == 3
    assert not any(r.error for r in up.reports.values())
    # the outage cost one failed call each for the two in flight, and one failed probe
    assert len(up.calls) == 6 + 3


async def test_an_outage_that_says_how_long_to_wait_is_not_called_before() -> None:
    """Talkable asks clients to back off, from seconds up to minutes: a 503's Retry-After holds
    every call (probes too) that long, where the circuit alone would probe after seconds."""
    clock, up = Clock(), Upstream()
    s = scheduler(clock, slots=10, max_wait=900.0)
    s.submit("site", up.job("ok"))
    await probe_answered(s, up, "ok")
    up.calls.clear()
    s.submit("site", up.job("e0"))
    s.dispatch()
    await settle()
    up.answer("e0", outage(retry_after=120.0))
    await settle()
    assert "e0" not in up.reports  # waiting is not failing
    for now in (1001.0, 1005.0, 1060.0, 1119.0):  # the circuit is closed (one failure)
        clock.t = now
        s.dispatch()
        await settle()
        assert up.calls == ["e0"], now
    assert s.targets["site"].paused_by == "unavailable (answered 503)"
    clock.t = 1120.0
    s.dispatch()
    await settle()
    assert up.calls == ["e0", "e0"]
    up.answer("e0")
    await settle()
    assert (up.reports["e0"].value, up.reports["e0"].tries) == ("ok", 2)


async def test_a_refused_key_is_called_once_and_its_queue_ends_at_once() -> None:
    clock, up = Clock(), Upstream()
    s = scheduler(clock, slots=10, window=1)
    for i in range(5):
        s.submit("openai:revoked", up.job(f"r{i}"))
    s.submit("openai:other", up.job("o0"))
    s.dispatch()
    await settle()
    quota = UpstreamError("429 insufficient_quota", reason="InsufficientQuota", status=429,
                          refuses="key")  # fmt: skip
    up.answer("r0", quota)
    up.answer("o0")
    await settle()
    s.dispatch()
    await settle()
    assert up.calls.count("r0") == 1 and [c for c in up.calls if c[0] == "r"] == ["r0"]
    assert {k: up.reports[k].error.reason for k in up.reports if k[0] == "r"} == dict.fromkeys(
        ["r0", "r1", "r2", "r3", "r4"], "InsufficientQuota"
    )
    assert "not called" in str(up.reports["r3"].error)
    assert up.reports["o0"].value == "ok"  # another key is another target
    # a new command for the key within the refusal ends the same way, without a call
    s.submit("openai:revoked", up.job("r5"))
    s.dispatch()
    await settle()
    assert up.reports["r5"].error.reason == "InsufficientQuota" and "r5" not in up.calls
    # an operator's redrive is a probe: called at once, and its success lifts the refusal
    s.submit("openai:revoked", up.job("r6", probe=True))
    s.dispatch()
    await settle()
    up.answer("r6")
    await settle()
    s.submit("openai:revoked", up.job("r7"))
    s.dispatch()
    await settle()
    assert up.calls[-1] == "r7"


def refused_as_sent(limits: Limits | None = None) -> UpstreamError:
    """OpenAI's 400 for ``max_tokens`` to a model that takes ``max_completion_tokens`` only,
    which the adapter now sends as asked (``resend``)."""
    return UpstreamError("OpenAI answered 400 unsupported_parameter: Use 'max_completion_tokens'"
                         " instead.", reason="BadRequest", status=400, resend=True,
                         limits=limits)  # fmt: skip


async def test_a_call_refused_as_it_was_sent_is_called_again_at_once_as_the_same_try() -> None:
    """A refusal of the call as it was sent, which its adapter now sends as the answer asked
    (``resend``), is called again at once: one outcome, one try, and the tokens the refused
    call was paced for are back (it generated nothing), so a key whose tokens a minute it took
    does not hold it; a circuit does not count it. Refused so again, that refusal ends it."""
    clock, up = Clock(), Upstream()
    s = scheduler(clock)
    outcomes: list[str] = []
    s.on_call = lambda _, outcome: outcomes.append(outcome)  # talkstream_upstream_calls_total
    up.said["first"] = Limits(requests_per_minute=6_000, tokens_per_minute=600)  # 9 tokens/s
    s.submit("openai:k/m", up.job("first"))
    await probe_answered(s, up, "first")
    s.submit("openai:k/m", up.job("r", cost=90))  # ten seconds of the key's tokens
    s.dispatch()
    await settle()
    up.answer("r", refused_as_sent())
    await settle()
    clock.t += 0.1  # (the request it spent is the pacer's: 100 a second)
    s.dispatch()
    await settle()
    assert up.calls == ["first", "r", "r"]  # not 10 s later: its tokens went back
    assert "r" not in up.reports
    up.answer("r")
    await settle()
    assert (up.reports["r"].value, up.reports["r"].error, up.reports["r"].tries) == ("ok", None, 1)
    assert s.snapshot()[0]["circuit"] == "closed"
    assert outcomes == ["answered", "resent", "answered"]  # not "refused": nothing to fix

    s.submit("openai:k/m", up.job("again"))  # refused so twice: the refusal is its outcome
    clock.t += 10  # (r's tokens are spent)
    s.dispatch()
    await settle()
    up.answer("again", refused_as_sent())
    await settle()
    clock.t += 0.1
    s.dispatch()
    await settle()
    up.answer("again", refused_as_sent())
    await settle()
    s.dispatch()
    await settle()
    assert up.calls.count("again") == 2
    error = up.reports["again"].error
    assert error is not None and (error.reason, error.status) == ("BadRequest", 400)


async def test_a_call_refused_as_it_was_sent_is_called_again_as_its_pacer_allows() -> None:
    """Called again at once, but paced: a refusal that says the key's requests are spent
    until a reset holds the call again until then, as any answer's would."""
    clock, up = Clock(), Upstream()
    s = scheduler(clock)
    s.submit("openai:k/m", up.job("r"))
    s.dispatch()
    await settle()
    up.answer("r", refused_as_sent(Limits(remaining_requests=0, requests_reset_s=5.0)))
    await settle()
    s.dispatch()
    await settle()
    assert up.calls == ["r"]
    clock.t += 5
    s.dispatch()
    await settle()
    assert up.calls == ["r", "r"]
    up.answer("r")
    await settle()
    assert (up.reports["r"].value, up.reports["r"].tries) == ("ok", 1)


async def test_a_site_key_refused_stops_only_that_key_of_the_site() -> None:
    """A Talkable site is one target whatever key calls it; a 401 for an old key must not end
    the calls made with the site's good key (the one that came first in the queue)."""
    clock, up = Clock(), Upstream()
    s = scheduler(clock, slots=10, window=1)
    s.submit("talkable:site", up.job("old1", scope="site", key_scope="key:old"))
    s.submit("talkable:site", up.job("new1", scope="site", key_scope="key:new"))
    s.submit("talkable:site", up.job("old2", scope="site", key_scope="key:old"))
    s.dispatch()
    await settle()
    revoked = UpstreamError("answered 401", reason="Unauthorized", status=401, refuses="key")
    up.answer("old1", revoked)
    await settle()
    s.dispatch()
    await settle()
    assert up.reports["old2"].error.reason == "Unauthorized" and "old2" not in up.calls
    assert "new1" in up.calls and "new1" not in up.reports  # called, not refused
    up.answer("new1")
    await settle()
    assert up.reports["new1"].value == "ok"
    assert s.snapshot()[0]["refused"] == ["key:old"]


async def test_a_site_key_refused_is_a_refused_call_as_the_alert_table_says() -> None:
    """``talkstream_upstream_calls_total{outcome="refused"}`` counts Talkable's refusals too
    (``upstream="talkable"``): the README's alert on it named only OpenAI's (a key without
    quota, revoked, a missing model), and a revoked site key raised it all the same."""
    clock, up = Clock(), Upstream()
    s = scheduler(clock, slots=10, window=1)
    outcomes: list[str] = []
    s.on_call = lambda _, outcome: outcomes.append(outcome)
    s.submit("talkable:site", up.job("p1", scope="site", key_scope="key:old"))
    s.dispatch()
    await settle()
    up.answer("p1", UpstreamError("answered 401", reason="Unauthorized", status=401, refuses="key"))
    await settle()
    assert outcomes == ["refused"]
    alerts = README.read_text(encoding="utf-8").split("**Alerts**", 1)[1]
    [row] = [line for line in alerts.splitlines() if '{outcome="refused"}' in line]
    assert "Talkable site key refused" in row and 'upstream="talkable"' in row


async def test_a_site_talkable_does_not_know_is_called_once_whatever_the_key() -> None:
    """Talkable's 404 for a ``site_slug`` it does not know ended only its own request: each
    request of the site called it again, to the same answer. It refuses the site a while:
    its queued and new calls, with any key, end without a call; a redrive is called."""
    clock, up = Clock(), Upstream()
    s = scheduler(clock, slots=10, window=1)
    s.submit("talkable:typo", up.job("a1", scope="site", key_scope="key:a"))
    s.submit("talkable:typo", up.job("a2", scope="site", key_scope="key:a"))
    s.submit("talkable:typo", up.job("b1", scope="site", key_scope="key:b"))
    s.submit("talkable:other", up.job("o1", scope="site", key_scope="key:a"))
    s.dispatch()
    await settle()
    unknown = PublishError("Talkable answered 404 (it has no site `typo` ...)",
                           reason="SiteNotFound", status=404, refuses="site")  # fmt: skip
    up.answer("a1", unknown)
    up.answer("o1")
    await settle()
    s.dispatch()
    await settle()
    assert [c for c in up.calls if c != "o1"] == ["a1"]
    assert {k: up.reports[k].error.reason for k in ("a1", "a2", "b1")} == dict.fromkeys(
        ("a1", "a2", "b1"), "SiteNotFound"
    )
    # whose call was answered 404: not b1's (it read "not called: Talkable answered 404 ...",
    # as if b1's had been)
    assert str(up.reports["b1"].error) == (
        "not called: request a1 (the same site) was refused 0s ago, and its site is not called "
        "for 60s (1 min) after it (a redrive is): Talkable answered 404 (it has no site `typo` "
        "...)"
    )
    assert up.reports["o1"].value == "ok"  # another site is another target
    assert {t["target"]: t["refused"] for t in s.snapshot()}["talkable:typo"] == ["site"]
    clock.t += 12
    s.submit("talkable:typo", up.job("a3", scope="site", key_scope="key:a"))
    s.dispatch()
    await settle()
    assert up.reports["a3"].error.reason == "SiteNotFound" and "a3" not in up.calls
    assert str(up.reports["a3"].error).startswith(
        "not called: request a1 (the same site) was refused 12s ago"
    )
    s.submit("talkable:typo", up.job("a4", scope="site", key_scope="key:a", probe=True))
    s.dispatch()
    await settle()
    assert up.calls[-1] == "a4"  # an operator's redrive asks anyway


async def test_a_missing_model_refuses_only_that_model() -> None:
    clock, up = Clock(), Upstream()
    s = scheduler(clock, slots=10, window=1)
    s.submit("openai:k", up.job("m1", scope="model:gpt-x"))
    s.submit("openai:k", up.job("m2", scope="model:gpt-x"))
    s.submit("openai:k", up.job("n1", scope="model:gpt-y"))
    s.dispatch()
    await settle()
    missing = UpstreamError("404 model_not_found", reason="ModelNotFound", status=404,
                            refuses="model")  # fmt: skip
    up.answer("m1", missing)
    await settle()
    s.dispatch()
    await settle()
    assert up.reports["m2"].error.reason == "ModelNotFound" and "m2" not in up.calls
    assert up.calls == ["m1", "n1"]


async def test_a_keys_models_are_paced_apart_and_refused_together() -> None:
    """OpenAI limits each model of a key apart: one target per key and model, each paced by
    what its own answers say; a refusal of the key (no quota) stops every model's calls."""
    clock, up = Clock(), Upstream()
    s = scheduler(clock, slots=10, window=1)
    for model in ("scarce", "plenty"):
        s.submit(f"openai:k/{model}", up.job(f"{model}0", family="openai:k"))
    s.dispatch()
    await settle()
    assert sorted(up.calls) == ["plenty0", "scarce0"]  # each model's first question at once
    up.said = {"scarce0": Limits(requests_per_minute=60),
               "plenty0": Limits(requests_per_minute=6000)}  # fmt: skip
    up.answer("scarce0")
    up.answer("plenty0")
    await settle()
    scarce, plenty = s.targets["openai:k/scarce"], s.targets["openai:k/plenty"]
    assert (scarce.pacer.rate, plenty.pacer.rate) == (pytest.approx(0.9), pytest.approx(90))
    for i in range(1, 4):
        for model in ("scarce", "plenty"):
            s.submit(f"openai:k/{model}", up.job(f"{model}{i}", family="openai:k"))
    s.dispatch()
    await settle()
    # each at its own model's pace: one scarce call now, the plentiful ones 11 ms apart
    assert sorted(up.calls[2:]) == ["plenty1", "scarce1"]
    clock.t += 0.02
    s.dispatch()
    await settle()
    assert up.calls[4:] == ["plenty2"]
    s.submit("openai:other/plenty", up.job("other0", family="openai:other"))
    quota = UpstreamError("429 insufficient_quota", reason="InsufficientQuota", status=429,
                          refuses="key")  # fmt: skip
    up.answer("scarce1", quota)
    await settle()
    clock.t += 0.02
    s.dispatch()
    await settle()
    refused = {k for k, r in up.reports.items() if r.error}
    assert refused == {"scarce1", "scarce2", "scarce3", "plenty3"}  # the queued, not called
    assert {up.reports[k].error.reason for k in refused} == {"InsufficientQuota"}
    assert "plenty3" not in up.calls and "other0" in up.calls  # another key goes on
    assert plenty.refused is scarce.refused and set(plenty.refused) == {"key"}


@pytest.mark.parametrize("organizations", [("org-agency", "org-agency"), ("org-a", "org-b")])
async def test_keys_of_one_organization_are_paced_as_one_once_their_answers_name_it(
    organizations: tuple[str, str],
) -> None:
    """OpenAI limits an organisation, for each model, not a key: two sites' keys of one agency
    share its 1 call a second. Each key is asked first on its own (its organisation unknown);
    once their answers name the same one, one pace holds both, and they take turns. Keys of
    two organisations keep a pace each."""
    clock, up = Clock(), Upstream()
    s = scheduler(clock, slots=10)
    for i in range(4):
        for key in ("a", "b"):
            s.submit(f"openai:{key}/m", up.job(f"{key}{i}", family=f"openai:{key}"))
    up.said = {f"{key}{i}": Limits(requests_per_minute=60, organization=org)
               for key, org in zip("ab", organizations, strict=True) for i in range(4)}  # fmt: skip
    s.dispatch()
    await settle()
    assert sorted(up.calls) == ["a0", "b0"]  # each key's first question: nothing known yet
    up.answer("a0")
    up.answer("b0")
    await settle()
    a, b = s.targets["openai:a/m"], s.targets["openai:b/m"]
    s.dispatch()
    await settle()
    if organizations[0] != organizations[1]:  # a pace each: both call now
        assert sorted(up.calls[2:]) == ["a1", "b1"]
        return
    assert len(up.calls) == 3  # 0.9 a second between them: one now...
    first = up.calls[-1][0]
    other = "b" if first == "a" else "a"
    for then in (f"{other}1", f"{first}2", f"{other}2"):  # ...and the other key next, in turn
        clock.t += 1 / 0.9
        s.dispatch()
        await settle()
        assert up.calls[-1] == then
    assert len(up.calls) == 6
    # each key's own calls are its own: what it runs, and its refusals
    assert [t["in_flight"] for t in s.snapshot()] == [2, 2] and a.pacer.in_flight == 4
    assert s.busiest(1)[1]["in_flight"] == 2  # the others' on /metrics: the other key's two
    revoked = UpstreamError("401 invalid_api_key", reason="Unauthorized", status=401,
                            refuses="key")  # fmt: skip
    up.answer("a1", revoked)
    await settle()
    clock.t += 1 / 0.9
    s.dispatch()
    await settle()
    assert up.reports["a3"].error.reason == "Unauthorized" and "a3" not in up.calls
    assert up.calls[-1] == "b3" and not b.refused  # the other key of its organisation goes on


async def test_keys_of_a_known_organization_come_back_to_one_pace(monkeypatch: Any) -> None:
    """A scheduler forgets idle targets (past its ``KNOWN_TARGETS``), not whose organisation
    their keys are: the keys' targets that come back are paced as one at once, the first call
    the organisation's one question (nothing is known of its pace yet), not one per key."""
    clock, up = Clock(), Upstream()
    s = scheduler(clock, slots=10)
    up.said = {k: Limits(requests_per_minute=60, organization="org-agency")
               for k in ("a0", "b0", "b1", "a1")}  # fmt: skip
    s.submit("openai:a/m", up.job("a0", family="openai:a"))
    s.submit("openai:b/m", up.job("b0", family="openai:b"))
    s.dispatch()
    await settle()
    up.answer("a0")
    up.answer("b0")
    await settle()
    monkeypatch.setattr(scheduler_module, "KNOWN_TARGETS", 1)
    s.dispatch()
    assert s.targets == {}  # both idle: forgotten
    s.submit("openai:b/m", up.job("b1", family="openai:b"))
    s.submit("openai:a/m", up.job("a1", family="openai:a"))
    s.dispatch()
    await settle()
    [first] = up.calls[2:]  # one question for the organisation, not one per key
    up.answer(first)
    await settle()
    s.dispatch()
    await settle()
    assert sorted(up.calls[2:]) == ["a1", "b1"]  # then its pace
    up.answer(up.calls[-1])
    await settle()
    assert up.reports["a1"].value == up.reports["b1"].value == "ok"


async def test_a_command_larger_than_a_minute_of_tokens_ends_at_once_and_holds_nothing() -> None:
    """OpenAI refuses a call that asks for more tokens than the key allows in a minute however
    long it waits ("Request too large"). Once the limit is known, a command whose max_tokens
    alone is more ends at once without a call, queued or new; one that is called and refused
    gives back the tokens it took: the commands behind it are not held."""
    clock, up = Clock(), Upstream()
    s = scheduler(clock)
    for key, least in (("big0", 40_000), ("big1", 20_000), ("small0", 60)):
        s.submit("fp1", up.job(key, cost=least + 500, least=least))
    s.dispatch()
    await settle()
    assert up.calls == ["big0"]  # a new target's first question
    limits = Limits(requests_per_minute=6_000, tokens_per_minute=10_000)
    too_large = UpstreamError("429 rate_limit_exceeded: Request too large",
                              reason="RequestTooLarge", status=429, limits=limits)  # fmt: skip
    up.answer("big0", too_large)
    await settle()
    s.dispatch()
    await settle()
    assert up.calls == ["big0", "small0"]  # big1 queued before the limit was known: no call
    assert (up.reports["big0"].error.reason, up.reports["big0"].tries) == ("RequestTooLarge", 1)
    big1 = up.reports["big1"]
    assert (big1.error.reason, big1.tries) == ("RequestTooLarge", 0)
    assert str(big1.error) == (
        "not called: it asks for at least 20000 tokens (max_tokens), more than the 10000 a "
        "minute fp1 allows; no wait lets it run: lower max_tokens"
    )
    up.answer("small0")
    await settle()
    clock.t += 10  # small0's tokens paced out

    s.submit("fp1", up.job("big2", cost=30_500, least=30_000))  # known now: at once
    await settle()
    assert up.reports["big2"].error.reason == "RequestTooLarge"
    # max_tokens fits, the prompt's estimate does not: called, refused, its tokens given back
    s.submit("fp1", up.job("mid", cost=50_000, least=5_000))
    s.dispatch()
    await settle()
    up.answer("mid", too_large)
    await settle()
    clock.t += 0.1  # the requests' spacing (90/s), not the minute "mid" took of tokens
    s.submit("fp1", up.job("small1", cost=100, least=60))
    s.dispatch()
    await settle()
    assert up.calls == ["big0", "small0", "mid", "small1"]  # not a minute behind "mid"
    assert "big2" not in up.calls
    up.answer("small1")
    await settle()

    # the customer may raise the limit: an operator's redrive asks anyway, and so does any
    # command once the limit was last said longer ago than a refusal lasts (60 s here)
    clock.t += 1
    s.submit("fp1", up.job("redriven", cost=30_500, least=30_000, probe=True))
    s.dispatch()
    await settle()
    assert up.calls[-1] == "redriven" and "redriven" not in up.reports
    up.answer("redriven", "ok")  # the limit was raised; this answer said nothing of it
    await settle()
    clock.t += 70  # past the minute of tokens "redriven" was counted for, too
    s.submit("fp1", up.job("big3", cost=30_500, least=30_000))
    s.dispatch()
    await settle()
    assert up.calls[-1] == "big3"


def timed_out() -> UpstreamError:
    return UpstreamError("OpenAI timed out", reason="Timeout", retriable=True)


async def test_a_call_that_keeps_timing_out_while_its_target_answers_others_ends() -> None:
    """A long generation that outlasts the call's timeout every time: each try may have been
    billed, and its key answers the other calls meanwhile, so it is the call that is slow,
    not the upstream. Where every call times out (an outage), they wait instead."""
    clock, up = Clock(), Upstream()
    s = scheduler(clock, slots=10, window=8)
    s.submit("key", up.job("first"))
    await probe_answered(s, up, "first")
    s.submit("key", up.job("slow", slow_after=3))
    for turn in range(3):
        s.submit("key", up.job(f"quick{turn}"))
        s.dispatch()
        await settle()
        assert up.calls[-2:] == ["slow", f"quick{turn}"]
        clock.t += 1
        up.answer(f"quick{turn}")  # the key answers while the slow call is out
        await settle()
        up.answer("slow", timed_out())
        await settle()
        assert ("slow" in up.reports) == (turn == 2)
    slow = up.reports["slow"]
    assert (slow.error.reason, slow.error.retriable, slow.tries) == ("Timeout", False, 3)
    assert str(slow.error) == (
        "OpenAI timed out on this call 3 times, while key answered other calls: the call is "
        "too slow (a long generation?), not the upstream"
    )

    # a publication's retries cost nothing and are idempotent: its job has no slow_after
    s.submit("site", up.job("site-first"))
    await probe_answered(s, up, "site-first")
    s.submit("site", up.job("publish"))
    for turn in range(3):  # as "slow" above
        s.submit("site", up.job(f"other{turn}"))
        s.dispatch()
        await settle()
        clock.t += 1
        up.answer(f"other{turn}")
        await settle()
        up.answer("publish", timed_out())
        await settle()
    assert up.calls.count("publish") == 3 and "publish" not in up.reports

    s.submit("down", up.job("d0", slow_after=3))
    for _ in range(4):  # the whole target times out: it waits for it, however many times
        s.dispatch()
        await settle()
        up.answer("d0", timed_out())
        await settle()
        clock.t += 60
    assert up.calls.count("d0") == 4 and "d0" not in up.reports


def no_text() -> UpstreamError:
    return UpstreamError("OpenAI returned no text", reason="EmptyCompletion", retriable=True,
                         answered=True)  # fmt: skip


async def test_a_call_answered_with_no_text_is_asked_again_a_few_times_then_ends() -> None:
    """A 200 without a text (a refusal, a tool call the campaign's params asked for) is an
    answer, billed: the key is up. It was taken for an outage: asked again at the key's pace
    until the maximum wait (95 billed calls in 20 s on a busy key, in a look at it), each
    counted by the circuit, which then held the key's other webhooks when they ran out."""
    clock, up = Clock(), Upstream()
    s = scheduler(clock, slots=10, window=8)  # circuit_after=2
    s.submit("key", up.job("first"))
    await probe_answered(s, up, "first")
    s.submit("key", up.job("empty", slow_after=3))
    for turn in range(3):
        s.dispatch()
        await settle()
        assert up.calls[-1] == "empty"
        up.answer("empty", no_text())
        await settle()
        assert ("empty" in up.reports) == (turn == 2)
    empty = up.reports["empty"]
    assert (empty.error.reason, empty.error.retriable, empty.tries) == ("EmptyCompletion", False, 3)
    assert str(empty.error).startswith("OpenAI returned no text 3 times: key answers this call")
    assert s.targets["key"].pacer.circuit is Circuit.CLOSED  # not an outage
    s.submit("key", up.job("next"))
    s.dispatch()
    await settle()
    assert up.calls[-1] == "next"  # the key's other webhooks go on at once


@pytest.mark.parametrize("reason", ["Refused", "ContentFiltered", "ToolCall", "MaxTokensTooLow"])
async def test_an_answer_no_retry_changes_ends_after_one_call_and_its_tokens_stay_spent(
    reason: str,
) -> None:
    """A 200 with the model's refusal, or a text OpenAI's filter cut, was asked three times
    (each billed) as if another answer might hold a text, and then failed all the same. It is
    an answer: reported after its one call, the key up, its tokens spent (a refusal of the
    request, a 400, generated nothing: its tokens go back)."""
    clock, up = Clock(), Upstream()
    s = scheduler(clock, slots=10, window=8)
    outcomes: list[str] = []
    s.on_call = lambda _, outcome: outcomes.append(outcome)
    s.submit("key", up.job("first"))
    await probe_answered(s, up, "first")
    pacer = s.targets["key"].pacer
    pacer.tokens.rate = 10.0  # tokens a second, as if the key had said its limits
    for name, error in (
        ("no-text", UpstreamError("OpenAI returned no text: ...", reason=reason, answered=True)),
        ("bad", UpstreamError("OpenAI answered 400: ...", reason="BadRequest", status=400)),
    ):
        s.submit("key", up.job(name, cost=100, slow_after=3))
        s.dispatch()
        await settle()
        up.answer(name, error)
        await settle()
        outcome = up.reports[name]
        assert (outcome.error.reason, outcome.error.retriable, outcome.tries) == (
            error.reason, False, 1,
        )  # fmt: skip
        assert up.calls.count(name) == 1
        spent = pacer.tokens.ready_at(clock.t) - clock.t
        assert spent == (pytest.approx(10.0) if name == "no-text" else 0.0)
        clock.t += 20  # the lane empties again
    assert outcomes[-2:] == ["refused", "refused"]
    assert pacer.circuit is Circuit.CLOSED  # not an outage


async def test_an_error_answer_asked_again_gives_its_tokens_back_each_time() -> None:
    """An error answer that says to try again (OpenAI's 400 with ``x-should-retry: true``) is
    asked again as a 200 without a text is, but it refused the call: it generated nothing and
    billed nothing. Its tokens were counted as spent each time, as a billed 200's are: three
    such answers held the key's other calls behind three calls' tokens that were never used."""
    clock, up = Clock(), Upstream()
    s = scheduler(clock, slots=10, window=8)
    s.submit("key", up.job("first"))
    await probe_answered(s, up, "first")
    pacer = s.targets["key"].pacer
    pacer.tokens.rate = 10.0  # tokens a second, as if the key had said its limits
    said_again = UpstreamError("OpenAI answered 400 (x-should-retry: true: asked again): ...",
                               reason="BadRequest", status=400, retriable=True,
                               answered=True)  # fmt: skip
    for name, error, spent_per_call in (("again", said_again, 0.0), ("empty", no_text(), 10.0)):
        s.submit("key", up.job(name, cost=100, slow_after=3))
        for turn in range(3):
            s.dispatch()
            await settle()
            assert up.calls[-1] == name
            up.answer(name, error)
            await settle()
            spent = pacer.tokens.ready_at(clock.t) - clock.t
            assert spent == pytest.approx(spent_per_call), (name, turn)
            clock.t += 20  # the lane empties again
        outcome = up.reports[name]
        assert (outcome.error.reason, outcome.tries) == (error.reason, 3)
    assert pacer.circuit is Circuit.CLOSED  # not an outage


async def test_a_publication_answered_with_nothing_usable_ends_too() -> None:
    """A publication's job has no ``slow_after`` (its timeouts wait): its answers with nothing
    usable (Talkable's 2xx that is not its API's JSON) were asked again at once, without a
    pause, as often as the target answered, until the maximum wait."""
    clock, up = Clock(), Upstream()
    s = scheduler(clock, slots=10, window=8)
    s.submit("site", up.job("first"))
    await probe_answered(s, up, "first")
    s.submit("site", up.job("publish"))
    for turn in range(3):
        s.dispatch()
        await settle()
        assert up.calls[-1] == "publish"
        not_json = PublishError("Talkable answered 200 with a body that is not its API's JSON",
                                reason="BadAnswer", retriable=True, answered=True)  # fmt: skip
        up.answer("publish", not_json)
        await settle()
        assert ("publish" in up.reports) == (turn == 2)
    error = up.reports["publish"].error
    assert (error.reason, error.retriable) == ("BadAnswer", False)
    assert up.calls.count("publish") == 3
    # a Talkable call is not billed (OpenAI's may be): what matters is that none landed
    assert str(error).endswith("3 times: site answers this call with nothing usable (none said "
                               "the event landed)")  # fmt: skip
    assert s.targets["site"].pacer.circuit is Circuit.CLOSED


async def test_a_command_that_waits_past_the_maximum_ends_with_why_it_waited() -> None:
    clock, up = Clock(), Upstream()
    s = scheduler(clock, slots=10, window=1, max_wait=30.0)
    s.submit("site", up.job("w0"))
    s.submit("site", up.job("w1"))
    s.dispatch()
    await settle()
    up.answer("w0", outage())
    await settle()
    clock.t = 1031.0
    s.dispatch()
    await settle()
    error = up.reports["w1"].error
    assert error is not None and error.reason == "QueueTimeout" and not error.retriable
    assert "maximum wait (30s)" in str(error) and "503" in str(error)
    assert str(error).startswith("waited 31s for site, longer than")
    assert up.reports["w1"].waited_s == pytest.approx(31.0)


async def test_a_command_past_its_maximum_wait_between_two_looks_is_told_not_called() -> None:
    """The look for long waits runs once a second: a slot that freed in between went to a
    head of its queue that had waited past its maximum since the last look, and it was
    called (the ledger may have given up on it, and the call billed). It is told, as the look
    tells it, when it would start. Issued at 1000, maximum 30 s: the last look at 1029.9 found
    it in time; the slot frees at 1030.5, 0.6 s later."""
    clock, up = Clock(), Upstream()
    s = scheduler(clock, slots=1, max_wait=30.0)
    s.submit("site", up.job("busy"))
    s.dispatch()  # the only slot
    await settle()
    s.submit("site", up.job("late", issued=1000.0))
    clock.t = 1029.9
    s.dispatch()  # the look: 29.9 s waited, in time
    await settle()
    assert "late" not in up.reports
    clock.t = 1030.5
    up.answer("busy")  # the slot frees
    await settle()
    s.dispatch()
    await settle()
    assert up.calls == ["busy"]  # "late" not called
    error = up.reports["late"].error
    assert error is not None and error.reason == "QueueTimeout" and not error.retriable
    assert str(error).startswith("waited 30s for site, longer than the maximum wait (30s)")
    assert s.in_flight == 0 and s.queued == 0


async def test_a_timed_out_command_says_how_much_of_its_time_went_to_calls() -> None:
    """The maximum wait counts from the command's issue, its calls included; the message
    said all of it was "in the queue". Issued at 1000, called 20 s (an outage's timeout),
    then held by the open circuit until 1031: 31 s, 20 of them in a call."""
    clock, up = Clock(), Upstream()
    s = scheduler(clock, slots=10, window=1, max_wait=30.0)
    s.submit("site", up.job("w0", issued=1000.0))
    s.dispatch()
    await settle()
    clock.t = 1020.0
    up.answer("w0", outage())
    await settle()
    clock.t = 1031.0
    s.dispatch()
    await settle()
    error = up.reports["w0"].error
    assert error is not None and error.reason == "QueueTimeout"
    assert str(error).startswith("waited 31s for site, 20s of it in calls, longer than")
    assert up.reports["w0"].waited_s == pytest.approx(11.0)


async def test_the_wait_reported_is_the_time_in_the_queue_not_in_the_calls() -> None:
    """``waited_ms`` ("time in its target's queue"), ``stats``' "waited" and the wait metric:
    a slow call was counted as waiting, so every request of a site on a slow model showed as
    held by its upstream. Issued at 1000, queued 2 s, called 5 s (throttled), queued 3 s
    more, called 1 s: it waited 5 s."""
    clock, up = Clock(), Upstream()
    s = scheduler(clock, slots=10, window=4)
    s.submit("key", up.job("first"))
    await probe_answered(s, up, "first")
    assert up.reports["first"].waited_s == 0.0  # called at once, answered at once
    s.submit("key", up.job("slow", issued=1000.0))
    clock.t = 1002.0
    s.dispatch()
    await settle()
    assert up.calls[-1] == "slow"
    clock.t = 1007.0
    up.answer("slow", throttled(wait=3.0))
    await settle()
    clock.t = 1010.0
    s.dispatch()
    await settle()
    assert up.calls.count("slow") == 2
    clock.t = 1011.0
    up.answer("slow")
    await settle()
    assert up.reports["slow"].waited_s == pytest.approx(5.0)
    assert up.reports["slow"].tries == 2


async def test_a_command_the_target_holds_past_its_maximum_wait_ends_at_once() -> None:
    """A daily limit spent ("try again in 2h"): no queued command can start within its
    maximum wait, so each ends now, saying so, not after waiting for nothing; a command that
    can still start in time waits, and so does another target's."""
    clock, up = Clock(), Upstream()
    s = scheduler(clock, slots=10, window=1, max_wait=600.0)
    s.submit("daily", up.job("d0"))
    await probe_answered(s, up, "d0")
    s.submit("daily", up.job("d1", issued=1000.0))
    s.submit("daily", up.job("d2", issued=1000.0))
    s.submit("other", up.job("o0"))
    s.dispatch()
    await settle()
    up.answer("d2")
    up.answer("d1", throttled(wait=300.0))  # a pause the wait allows: it waits
    await settle()
    assert "d1" not in up.reports
    clock.t = 1100.0
    s.submit("daily", up.job("d3", issued=1100.0))
    up.answer("o0")
    await settle()
    clock.t = 1400.0  # the pause is over: d1 is called again, and the day's limit is spent
    s.dispatch()
    await settle()
    up.answer("d1", throttled(wait=7200.0))
    await settle()
    s.dispatch()  # (the dispatcher runs on the answer's news)
    await settle()
    for key, called in (("d1", "not called again"), ("d3", "not called")):  # neither can
        error = up.reports[key].error  # start within 600 s of its issue
        assert error is not None and error.reason == "QueueTimeout", key
        assert str(error).startswith(
            f"{called}: daily asked to wait 7200s (2 h) more (rate limited"
        )
        assert "past the maximum wait (600s, " in str(error)
        # when the upstream allows it: a letter read hours later says when to redrive
        said = str(error).split("redrive it once the upstream allows, from ")[1]
        resume = datetime.datetime.strptime(said, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        assert resume.timestamp() == pytest.approx(time.time() + 7200.0, abs=5)
    assert up.reports["d3"].waited_s == pytest.approx(300.0)
    assert up.calls.count("d3") == 0 and up.reports["o0"].value == "ok"
    # a new command for it ends the same way, without a call; once the pause is over, calls go
    s.submit("daily", up.job("d4", issued=1400.0))
    await settle()
    assert up.reports["d4"].error.reason == "QueueTimeout" and "d4" not in up.calls
    clock.t = 1400.0 + 7200.0
    s.submit("daily", up.job("d5", issued=clock.t))
    s.dispatch()
    await settle()
    assert up.calls[-1] == "d5"
    # a success that says the limit is spent until a reset an hour away: the same
    up.said["d5"] = Limits(remaining_requests=0, requests_reset_s=3600.0)
    up.answer("d5")
    await settle()
    s.submit("daily", up.job("d6", issued=clock.t))
    await settle()
    held = str(up.reports["d6"].error)
    assert "asked to wait 3600s (1 h) more (its limit spent until its reset)" in held


async def test_a_backoff_of_its_own_is_not_said_to_be_what_the_target_asked() -> None:
    """429s that say nothing of how long: the pause is talkstream's backoff (1 s doubling),
    and the request it holds past its maximum wait ended "asked to wait 8s more", a wait the
    target never asked for."""
    clock, up = Clock(), Upstream()
    s = scheduler(clock, slots=10, window=1, max_wait=10.0)
    s.submit("site", up.job("s0"))
    await probe_answered(s, up, "s0")
    s.submit("site", up.job("s1", issued=1000.0))
    unhinted = UpstreamError("Talkable answered 429: Too Many Requests", reason="RateLimited",
                             status=429, retriable=True, throttle=True)  # fmt: skip
    for pause in (1.0, 2.0, 4.0, 0.0):  # the fourth pause, 8 s, ends past 1010: not waited
        s.dispatch()
        await settle()
        assert up.calls[-1] == "s1"
        up.answer("s1", unhinted)
        await settle()
        s.dispatch()
        await settle()
        clock.t += pause
    error = up.reports["s1"].error
    assert error is not None and error.reason == "QueueTimeout"
    assert str(error).startswith("not called again: site backs off 8s more (rate limited (Talk")
    assert up.calls.count("s1") == 4


async def test_a_redrive_lifts_a_pause_past_its_maximum_wait_and_the_answer_decides() -> None:
    """Talkable asked to wait an hour: its commands ended "not called". Once it is back, the
    operator's redrive is called (not ended at once again for an hour); a redrive the upstream
    still asks to wait ends then, after that one call."""
    clock, up = Clock(), Upstream()
    s = scheduler(clock, slots=10, window=1, max_wait=600.0)
    s.submit("site", up.job("a0"))
    await probe_answered(s, up, "a0")
    s.submit("site", up.job("a1"))
    s.dispatch()
    await settle()
    up.answer("a1", throttled(wait=3600.0))
    await settle()
    s.dispatch()
    await settle()
    assert str(up.reports["a1"].error).startswith("not called again: site asked to wait 3600s")
    s.submit("site", up.job("a2", issued=1000.0))  # a live command: ends at once, as before
    await settle()
    assert up.reports["a2"].error.reason == "QueueTimeout" and "a2" not in up.calls

    clock.t = 1060.0  # the operator fixed it and redrives
    s.submit("site", up.job("a2", attempt=2, issued=clock.t, probe=True))
    s.dispatch()
    await settle()
    assert up.calls[-1] == "a2"
    up.answer("a2")
    await settle()
    assert up.reports["a2"].value == "ok"
    s.submit("site", up.job("a3", issued=clock.t))  # the upstream said it is fine: calls go
    s.dispatch()
    await settle()
    assert up.calls[-1] == "a3"
    up.answer("a3", throttled(wait=3600.0))  # ...until it asks to wait again
    await settle()
    s.dispatch()
    await settle()
    assert str(up.reports["a3"].error).startswith("not called again: site asked to wait")

    s.submit("site", up.job("a4", attempt=2, issued=clock.t, probe=True))
    s.dispatch()
    await settle()
    up.answer("a4", throttled(wait=3600.0))  # still not back: the redrive ends, one call
    await settle()
    s.dispatch()
    await settle()
    error = up.reports["a4"].error
    assert error is not None and str(error).startswith("not called again: site asked to wait")
    assert up.calls.count("a4") == 1


async def test_a_reissue_of_queued_work_keeps_its_place_and_takes_the_new_attempt() -> None:
    clock, up = Clock(), Upstream()
    s = scheduler(clock, slots=1, window=1)
    s.submit("t", up.job("x"))
    s.submit("t", up.job("y", issued=990.0))
    s.submit("t", up.job("z"))
    s.submit("t", up.job("y", attempt=2, issued=1020.0))
    [target] = s.targets.values()
    assert [(j.key, j.attempt) for j in target.queue] == [("x", 1), ("y", 2), ("z", 1)]
    assert target.queue[1].issued_s == 990.0  # waiting counts from the first issue
    s.submit("t", up.job("y", attempt=1))  # a stale copy changes nothing
    assert [(j.key, j.attempt) for j in target.queue] == [("x", 1), ("y", 2), ("z", 1)]


async def test_a_thousand_queued_commands_cost_no_quadratic_time() -> None:
    """Intake and dispatch stay linear: a campaign's ten thousand commands for one key."""
    clock, up = Clock(), Upstream()
    s = scheduler(clock, slots=4, window=1)
    for i in range(10_000):
        s.submit("openai:campaign", up.job(f"c{i}"))
    for i in range(10_000):  # every one re-issued while still queued: replaced in place
        s.submit("openai:campaign", up.job(f"c{i}", attempt=2))
    [target] = s.targets.values()
    assert len(target.queue) == 10_000 and {j.attempt for j in target.queue} == {2}
    for _ in range(100):
        s.dispatch()
    assert len(target.queue) == 9_999  # one probe out, the rest waiting for its answer


async def test_targets_known_but_idle_cost_a_dispatch_nothing(monkeypatch: Any) -> None:
    """Many tenants: every site or key seen once stays known (what it taught of its limits),
    but a dispatch looks only at the targets with queued work, however many are known."""
    clock, up = Clock(), Upstream()
    s = scheduler(clock, slots=20_000)
    for i in range(10_000):
        s.submit(f"site{i}", up.job(f"once{i}"))
    s.dispatch()
    await settle()
    for i in range(10_000):
        up.answer(f"once{i}")
    await settle()
    assert len(s.targets) == 10_000 and s.queued == 0 and s.in_flight == 0
    looked: list[str] = []  # the targets a dispatch asked whether they may call now
    ready = s._ready
    monkeypatch.setattr(s, "_ready", lambda t, now: looked.append(t.name) or ready(t, now))
    s.submit("site7", up.job("busy1"))
    s.submit("site7", up.job("busy2"))
    s.dispatch()
    await settle()
    assert up.calls[-2:] == ["busy1", "busy2"]
    assert set(looked) == {"site7"} and len(looked) <= 3  # once per call, once more
    assert s.queued == 0


async def test_targets_waiting_out_their_limits_cost_a_dispatch_nothing(monkeypatch: Any) -> None:
    """Many tenants at their rate limits at once: a thousand sites told by a 429 to wait a
    minute keep their queued work, but a dispatch does not ask them again until their minute
    is up (or news of them comes); then each is asked once, in its turn."""
    clock, up = Clock(), Upstream()
    s = scheduler(clock, slots=20_000)
    for i in range(1000):
        s.submit(f"site{i}", up.job(f"first{i}"))
        s.submit(f"site{i}", up.job(f"second{i}"))
    s.dispatch()
    await settle()
    for i in range(1000):
        up.answer(f"first{i}", throttled(wait=60.0))  # both back to wait, for a minute
    await settle()
    s.dispatch()
    assert s.queued == 2000 and s.in_flight == 0
    looked: list[str] = []  # the targets a dispatch asked whether they may call now
    ready = s._ready
    monkeypatch.setattr(s, "_ready", lambda t, now: looked.append(t.name) or ready(t, now))
    s.submit("fresh", up.job("busy"))
    s.dispatch()
    await settle()
    assert up.calls[-1] == "busy" and set(looked) == {"fresh"}
    looked.clear()
    up.answer("busy")
    await settle()
    s.dispatch()
    assert looked == [] or set(looked) == {"fresh"}
    called = len(up.calls)
    clock.t += 60.0  # their minute is up: each asked again, and called
    s.dispatch()
    await settle()
    assert {name for name in looked if name != "fresh"} == {f"site{i}" for i in range(1000)}
    assert {f"first{i}" for i in range(1000)} <= set(up.calls[called:])


async def test_a_throttled_target_woken_by_news_keeps_one_alarm() -> None:
    """Commands keep arriving for a site that waits out a 429: each is news of it (it is asked
    again, and sleeps again), but it keeps one alarm, and is called when that rings."""
    clock, up = Clock(), Upstream()
    s = scheduler(clock, slots=10)
    s.submit("t", up.job("x0"))
    s.dispatch()
    await settle()
    up.answer("x0", throttled(wait=60.0))
    await settle()
    for i in range(1, 2000):
        s.submit("t", up.job(f"x{i}"))
        s.dispatch()
    assert len(s._alarms) == 1 and up.calls == ["x0"]
    clock.t += 60.0
    s.dispatch()
    await settle()
    assert up.calls[:2] == ["x0", "x0"]


async def test_alarms_of_targets_whose_work_left_are_dropped_and_new_ones_still_ring() -> None:
    clock, up = Clock(), Upstream()
    s = scheduler(clock, slots=5000)
    for i in range(2000):
        s.submit(f"site{i}", up.job(f"s{i}", origin="p0"))
    s.dispatch()
    await settle()
    for i in range(2000):
        up.answer(f"s{i}", throttled(wait=60.0))
    await settle()
    s.dispatch()
    assert len(s._alarms) == 2000
    assert len(s.take_back({"p0"})) == 2000  # a rebalance took their partition
    s.dispatch()
    assert s._alarms == [] and s.queued == 0
    s.submit("site7", up.job("again"))  # still paused: asleep again, with an alarm that rings
    s.dispatch()
    assert len(s._alarms) == 1
    clock.t += 60.0
    s.dispatch()
    await settle()
    assert up.calls[-1] == "again"


async def test_news_of_a_waiting_target_brings_it_back_to_the_round() -> None:
    """A target whose window is full waits for news of it, not for the clock: the answer of
    its call in flight lets the next start at once; a refusal ends its queued work at once."""
    clock, up = Clock(), Upstream()
    s = scheduler(clock, slots=10, window=1)
    s.submit("t", up.job("a"))
    await probe_answered(s, up, "a")  # the window opens to two
    for key in "bcd":
        s.submit("t", up.job(key))
    s.dispatch()
    await settle()
    assert up.calls == ["a", "b", "c"]  # two in flight: d waits for news
    clock.t += 30.0  # time alone changes nothing for it
    s.dispatch()
    assert up.calls == ["a", "b", "c"]
    up.answer("b")
    await settle()
    s.dispatch()
    await settle()
    assert up.calls == ["a", "b", "c", "d"]
    s.submit("t", up.job("e"))
    s.submit("t", up.job("f", scope="model:other"))
    up.answer("c", UpstreamError("no such model", reason="NotFound", status=404,
                                 refuses="model"))  # fmt: skip
    await settle()
    s.dispatch()
    await settle()
    assert up.reports["e"].error is not None and "no such model" in str(up.reports["e"].error)
    assert up.calls[-1] == "f"


async def test_queued_work_of_revoked_partitions_is_taken_back_in_order() -> None:
    clock, up = Clock(), Upstream()
    s = scheduler(clock, slots=1, window=1)
    s.submit("t", up.job("a", origin=("topic", 0)))
    s.submit("u", up.job("b", origin=("topic", 1)))
    s.submit("t", up.job("c", origin=("topic", 0)))
    s.submit("u", up.job("d", origin=("topic", 0)))
    assert [j.key for j in s.take_back({("topic", 0)})] == ["a", "c", "d"]
    assert [j.key for t in s.targets.values() for j in t.queue] == ["b"]


async def test_the_known_targets_benchmark_makes_every_call_it_times() -> None:
    assert await cpu_per_call(known=50, busy=5, calls=200) > 0


async def test_the_look_for_long_waits_ends_exactly_the_commands_that_waited_too_long() -> None:
    """A queue that cannot start anything (no slot): the once-a-second look ends each command
    the second its wait passes the maximum, whatever its place, and the rest keep theirs. A
    re-issue that says the work was issued earlier moves its end earlier."""
    clock, up = Clock(), Upstream()
    s = scheduler(clock, slots=0, max_wait=30.0)
    for key, issued in [("a", 1000.0), ("b", 1004.0), ("c", 1002.0), ("d", 1010.0)]:
        s.submit("t", up.job(key, issued=issued))
    s.submit("t", up.job("d", attempt=2, issued=1001.0))  # d's work was issued at 1001
    [target] = s.targets.values()
    ended: list[list[str]] = []
    for now in (1030.5, 1031.5, 1032.5, 1033.5, 1034.5):
        clock.t = now
        s.dispatch()
        await settle()
        ended.append(sorted(k for k in up.reports if all(k not in e for e in ended)))
    assert ended == [["a"], ["d"], ["c"], [], ["b"]]
    assert list(target.queue) == [] and target.queued == {}
    assert [up.reports[k].error.reason for k in "abcd"] == ["QueueTimeout"] * 4  # type: ignore[union-attr]
    assert up.calls == []


async def test_commands_that_left_the_queue_do_not_pile_up_behind_it() -> None:
    """Every queued command is indexed by when it was issued; those that left the queue (here
    handed back on a rebalance) are dropped from the index at the next look, once they
    outnumber the queued ones, so it stays near the queues' own size."""
    clock, up = Clock(), Upstream()
    s = scheduler(clock, slots=0, max_wait=30.0)
    for i in range(5000):
        s.submit("t", up.job(f"k{i}", origin="p0" if i < 4000 else "p1"))
    assert len(s.take_back({"p0"})) == 4000
    assert len(s._by_issue) == 5000
    clock.t += 1.0
    s.dispatch()
    assert s.queued == 1000 and len(s._by_issue) == 1000
    clock.t += 30.0
    s.dispatch()
    await settle()
    assert sorted(up.reports) == sorted(f"k{i}" for i in range(4000, 5000))


async def test_a_new_attempt_of_work_that_was_called_waits_its_own_maximum() -> None:
    """The first attempt's entry in the look for long waits outlives its call; the second
    attempt, queued under the same request id, is timed from its own issue."""
    clock, up = Clock(), Upstream()
    s = scheduler(clock, slots=1, max_wait=30.0)
    s.submit("t", up.job("x", issued=1000.0))
    await probe_answered(s, up, "x")
    s.submit("t", up.job("busy"))  # holds the only slot
    s.dispatch()
    await settle()
    s.submit("t", up.job("x", attempt=2, issued=1020.0))
    clock.t = 1031.0
    s.dispatch()
    await settle()
    assert up.reports["x"].error is None  # the first attempt's answer, nothing more yet
    clock.t = 1051.0
    s.dispatch()
    await settle()
    error = up.reports["x"].error
    assert error is not None and error.reason == "QueueTimeout"


def test_the_look_benchmark_compares_looks_that_time_out_the_same_commands() -> None:
    sweep_ms, heap_ms, swept, found = scheduler_looks(300, 60)
    assert swept == found == 20 and sweep_ms > 0 and heap_ms > 0


async def test_the_busiest_targets_are_described_and_the_others_summed() -> None:
    """What /metrics shows of many targets: the busiest few as ``snapshot`` describes them, in
    its order, and the others' sums, without describing each of the others."""
    clock, up = Clock(), Upstream()
    s = scheduler(clock, slots=6, window=1)  # one call at a time per target: the rest queue
    for target, jobs in (("a", 1), ("b", 4), ("c", 2), ("d", 3), ("e", 1), ("f", 2)):
        for i in range(jobs):
            s.submit(target, up.job(f"{target}{i}"))
    s.dispatch()
    await settle()
    up.answer("e0")  # e: nothing left
    up.answer("a0", throttled(60.0))  # a: a 429, its command queued again
    await settle()
    s.dispatch()
    await settle()
    by_load = sorted(
        s.snapshot(), key=lambda d: (d["queued"] + d["in_flight"], d["throttled"]), reverse=True
    )

    top, rest = s.busiest(3)

    assert top == by_load[:3]
    assert [d["target"] for d in top] == ["b", "d", "c"]
    others = by_load[3:]
    assert rest == {name: sum(d[name] for d in others) for name in rest}
    assert rest["throttled"] == 1 and rest["queued"] + rest["in_flight"] == 3  # a, e, f
    assert s.busiest(10) == (by_load, {"queued": 0, "in_flight": 0, "throttled": 0})


async def test_the_scrape_benchmark_finds_the_same_busiest_targets_both_ways() -> None:
    described, busiest = await scrape_ms(300, count=50, looks=2)  # asserts the same top 50
    assert described > 0 and busiest > 0


async def test_a_failed_call_reports_how_long_it_took_and_one_not_made_reports_none() -> None:
    """A failed generation's ``latency_ms`` was 0 whatever its call took (docs/consumers.md:
    "a failed call's time is not measured"): the executor knows it. The call refused after
    2.5 s reports it (schema 12), on its result and on the request's ``GenerationFailed``; an
    attempt ended without a call (``not_called``: the key refused a moment ago) keeps 0."""
    from streams.agents.work import Generate
    from tests.functional.test_sealed_keys import commands
    from tests.unit.domain_builders import Ledger, received

    clock, up = Clock(), Upstream()
    s = scheduler(clock, slots=10, window=1)
    refused = UpstreamError("OpenAI answered 401 invalid_api_key", reason="Unauthorized",
                            status=401, refuses="key")  # fmt: skip
    await answered_after(s, clock, up, "openai:key", "called", 2.5, refused)
    s.submit("openai:key", up.job("after"))
    s.dispatch()
    await settle()
    assert "after" not in up.calls  # ended by the refusal of the key, without a call
    assert up.reports["called"].call_s == pytest.approx(2.5)
    assert up.reports["after"].call_s is None

    generate, _ = commands()
    generator = Generate(None, None)  # type: ignore[arg-type]
    results = {key: generator.result(generate, up.reports[key], now_ms=1) for key in up.reports}
    assert {key: r.latency_ms for key, r in results.items()} == {"called": 2500, "after": 0}
    for key, latency in (("called", 2500), ("after", 0)):
        ledger = Ledger()
        ledger.send(received(generate.request_id))
        [failed] = ledger.send(results[key]).events
        assert (failed.type, failed.latency_ms) == ("GenerationFailed", latency)


async def test_a_publication_reports_its_talkable_calls_time_answered_or_failed() -> None:
    """Schema 13: a publication's result and its lifecycle event say how long the Talkable
    call took, as a generation's say the OpenAI call's (they said nothing: Talkable's time was
    nowhere to be seen). An answered call (1.2 s) says its time on ``CompletionPublished``; one
    refused (0.3 s) on ``PublicationFailed``; an attempt ended without a call (the site's key
    refused a moment ago: ``not_called``) says 0."""
    from streams.agents.work import Publish
    from tests.functional.test_sealed_keys import commands
    from tests.unit.domain_builders import Ledger, generated, received

    clock, up = Clock(), Upstream()
    s = scheduler(clock, slots=10, window=1)
    await answered_after(s, clock, up, "talkable:site", "answered", 1.2, "ok")
    refused = UpstreamError("Talkable answered 401", reason="Unauthorized", status=401,
                            refuses="key")  # fmt: skip
    await answered_after(s, clock, up, "talkable:site", "refused", 0.3, refused)
    s.submit("talkable:site", up.job("after"))
    s.dispatch()
    await settle()
    assert "after" not in up.calls  # ended by the refusal of the key, without a call

    _, publish = commands()
    publisher = Publish(None, None)  # type: ignore[arg-type]
    answered = Publication(duplicate=False)  # (the stand-in upstream answers no Publication)
    up.reports["answered"] = dataclasses.replace(up.reports["answered"], value=answered)
    results = {key: publisher.result(publish, up.reports[key], now_ms=1) for key in up.reports}
    assert {key: r.latency_ms for key, r in results.items()} == {
        "answered": 1200,
        "refused": 300,
        "after": 0,
    }
    for key, (kind, latency) in {
        "answered": ("CompletionPublished", 1200),
        "refused": ("PublicationFailed", 300),
        "after": ("PublicationFailed", 0),
    }.items():
        ledger = Ledger()
        ledger.send(received(publish.request_id))
        ledger.send(generated(publish.request_id))
        [event] = ledger.send(results[key]).events
        assert (event.type, event.latency_ms) == (kind, latency)
