"""What an upstream says about its limits, and when a target may be called next
(``streams.upstream.limits``, ``streams.upstream.pacer``), on a clock the test moves."""

from __future__ import annotations

import itertools

import pytest

from streams.upstream.limits import Limits, duration_seconds, read_limits, try_again_in
from streams.upstream.pacer import Circuit, Pacer, PacerConfig
from streams.upstream.verdicts import said_wait

OPENAI_HEADERS = {
    "x-ratelimit-limit-requests": "300",
    "x-ratelimit-remaining-requests": "299",
    "x-ratelimit-reset-requests": "200ms",
    "x-ratelimit-limit-tokens": "40000",
    "x-ratelimit-remaining-tokens": "39850",
    "x-ratelimit-reset-tokens": "6m0s",
}


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("20ms", 0.02),
        ("1s", 1.0),
        ("1.5s", 1.5),
        ("6m0s", 360.0),
        ("1h2m3s", 3723.0),
        ("", None),
        ("5", None),
        ("soon", None),
        ("1s and more", None),
    ],
)
def test_durations_as_openai_writes_them(text: str, seconds: float | None) -> None:
    assert duration_seconds(text) == seconds


def test_openai_headers_give_the_limits_per_minute_and_the_resets() -> None:
    limits = read_limits(OPENAI_HEADERS)
    assert limits == Limits(
        requests_per_minute=300,
        remaining_requests=299,
        requests_reset_s=0.2,
        tokens_per_minute=40000,
        remaining_tokens=39850,
        tokens_reset_s=360,
    )
    assert limits.said_anything
    assert not read_limits({}).said_anything


def test_an_answer_names_the_organization_whose_limits_they_are() -> None:
    """OpenAI's limits are an organisation's, shared by its keys: its header names it, else a
    429 body does (a proxy that dropped the headers); a Talkable answer names none."""
    body = "Rate limit reached for gpt-4o in organization org-AbC_9 on requests per min (RPM)"
    assert read_limits({"openai-organization": "org-xyz"}).organization == "org-xyz"
    assert read_limits({"openai-organization": "org-xyz"}, body).organization == "org-xyz"
    assert read_limits({}, body).organization == "org-AbC_9"
    assert read_limits({"openai-organization": " "}, "no such words").organization is None
    assert read_limits({"retry-after": "1"}).organization is None


def test_an_organization_that_may_be_a_key_is_none_named() -> None:
    """The organisation named becomes a Kafka key and words of a log line: an upstream (or a
    proxy) that echoes the call's key there, a part of it, or anything but an organisation's
    id ("org-...", "user-...", a slug) names none. A 429 body's may still name one."""
    key = "sk-proj-Abc123def456ghi789"
    plain_key = "abcdef0123456789abcdef0123456789"  # an OpenAI-compatible API's: no prefix
    for real in ("org-9PKnn7txwxhPDTNvTe3ZL164", "user-lqkg0bkbnhqnfeah0ky35m3s", "risk-team_2"):
        assert read_limits({"openai-organization": real}, secret=key).organization == real
    for said, secret in [
        (key, key),
        (key, ""),  # a key of its look, whoever's
        (f"org-{key}", key),
        ("key_live_a1b2c3d4", ""),
        (plain_key, plain_key),
        (f"org-{plain_key}", plain_key),
        (plain_key[4:20], plain_key),  # a part of the key
        ("x" * 65, ""),  # no longer cut to 64: a key's first 64 characters are no better
        ("org-abc def", ""),
        ("org-abc;sk=1", ""),
        ("Bearer abcdef", ""),
        ("org-é", ""),
    ]:
        headers = {"openai-organization": said}
        assert read_limits(headers, secret=secret).organization is None, said
    body = "Rate limit reached for gpt-4o in organization org-AbC_9 on requests per min (RPM)"
    assert read_limits({"openai-organization": key}, body, secret=key).organization == "org-AbC_9"
    echoed = f"Rate limit reached for gpt-4o in organization org-{plain_key} on requests"
    assert read_limits({}, echoed, secret=plain_key).organization is None


def test_numbers_no_upstream_could_mean_are_not_read() -> None:
    """A header of "inf" would pause the target for ever, "nan" or a negative limit would
    pace it by nothing: such an answer said nothing about its limits."""
    odd = {
        "x-ratelimit-limit-requests": "nan",
        "x-ratelimit-limit-tokens": "-5",
        "retry-after": "inf",
    }
    limits = read_limits(odd)
    assert (limits.requests_per_minute, limits.retry_after_s) == (None, None)
    pacer = Pacer()
    pacer.started(0, 0.0)
    pacer.throttled(limits, 0.0)
    assert pacer.ready_at(0, 0.0) == PacerConfig().throttle_base  # its own backoff
    assert (pacer.rate, pacer.tokens_per_minute, pacer.learned) == (None, None, False)


def test_the_wait_asked_for_is_the_longest_of_header_and_message() -> None:
    message = "Rate limit reached ... Limit 3, Used 3, Requested 1. Please try again in 20s. Visit"
    assert try_again_in(message) == 20.0
    assert try_again_in("Please try again in 1.234s.") == 1.234
    assert try_again_in("nothing to see") is None
    assert read_limits({"retry-after-ms": "1500"}).retry_after_s == 1.5
    assert read_limits({"retry-after": "3"}).retry_after_s == 3.0
    # an HTTP date (RFC 9110): the wait until then; one past is no wait; a broken one nothing
    at = 1_445_412_480.0  # Wed, 21 Oct 2015 07:28:00 GMT
    dated = {"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}
    assert read_limits(dated, now=at - 90).retry_after_s == 90.0
    assert read_limits(dated, now=at + 5).retry_after_s == 0.0
    assert read_limits({"retry-after": "Wed, 99 Foo"}, now=at).retry_after_s is None
    assert read_limits({"retry-after": "2"}, message).retry_after_s == 20.0


def test_a_429_body_names_the_limit_where_no_header_says_it() -> None:
    """A compatible server or a proxy may drop OpenAI's ``x-ratelimit-*`` headers and pass the
    429's body on; the body names the minute's limit it hit, and that paces the key as the
    headers would (a day's limit is no pace; a header, where there is one, says it first)."""
    rpm = (
        "Rate limit reached for gpt-4o in organization org-x on requests per min (RPM): "
        "Limit 300, Used 300, Requested 1. Please try again in 200ms. Visit https://..."
    )
    tpm = (
        "Rate limit reached for gpt-4o in organization org-x on tokens per min (TPM): "
        "Limit 40000, Used 39000, Requested 1200. Please try again in 1.8s. Visit https://..."
    )
    rpd = (
        "Rate limit reached for gpt-4o in organization org-x on requests per day (RPD): "
        "Limit 200, Used 200, Requested 1. Please try again in 7m12s. Visit https://..."
    )
    said = {"organization": "org-x"}  # whose limits: the organisation each body names
    assert read_limits({}, rpm) == Limits(requests_per_minute=300, retry_after_s=0.2, **said)
    assert read_limits({}, tpm) == Limits(tokens_per_minute=40000, retry_after_s=1.8, **said)
    assert read_limits({}, rpd) == Limits(retry_after_s=432.0, **said)
    assert read_limits({"x-ratelimit-limit-requests": "600"}, rpm).requests_per_minute == 600
    pacer = Pacer(PacerConfig(safety=0.9))
    pacer.started(0, 0.0)
    pacer.answered(read_limits({}), 0.5)  # a 200 that says nothing
    pacer.started(0, 0.5)
    pacer.throttled(read_limits({}, rpm), 0.6, started=0.5)
    assert (pacer.learned, pacer.rate) == (True, pytest.approx(4.5))


def spaced_calls(pacer: Pacer, count: int, cost: float = 0, start: float = 0.0) -> list[float]:
    """When ``count`` calls start (from ``start``) if each starts as soon as allowed and ends
    at once."""
    now, starts = start, []
    for _ in range(count):
        at = pacer.ready_at(cost, now)
        assert at is not None
        now = max(now, at)
        pacer.started(cost, now)
        pacer.answered(None, now)
        starts.append(now)
    return starts


def test_a_learned_request_limit_spaces_calls_at_its_safe_share() -> None:
    pacer = Pacer(PacerConfig(safety=0.9, burst_s=0.0))
    pacer.started(0, 0.0)
    pacer.answered(read_limits({"x-ratelimit-limit-requests": "300"}), 0.0)  # 5/s
    assert pacer.rate == pytest.approx(4.5)
    starts = spaced_calls(pacer, 46)
    assert starts[-1] - starts[0] == pytest.approx(45 / 4.5)  # never faster than 4.5/s


def test_a_rested_limit_spends_a_seconds_worth_at_once_then_its_safe_share() -> None:
    """OpenAI enforces a minute's limit over shorter spans, a second's worth at least: a blast
    spent its first second spacing calls a bucket held (a 400-webhook blast on a key of 50/s
    took 1.34 times what the limit allows, past the 1.25 promised)."""
    pacer = Pacer(PacerConfig(safety=0.9, burst_s=1.0))
    pacer.started(0, 0.0)
    pacer.answered(read_limits({"x-ratelimit-limit-requests": "300"}), 0.0)  # 5/s
    starts = spaced_calls(pacer, 46)
    assert starts[:4] == [0.0] * 4  # a second of 4.5/s: 4 calls of the 5 a bucket holds
    gaps = [b - a for a, b in itertools.pairwise(starts[4:])]
    assert gaps == pytest.approx([1 / 4.5] * len(gaps))  # then never faster than 4.5/s
    # a rest fills it again; a 429 empties it: after the pause, calls are spaced at once
    rested = starts[-1] + 10.0
    assert spaced_calls(pacer, 4, start=rested) == [rested] * 4
    pacer.started(0, rested)
    pacer.throttled(read_limits({}, "Please try again in 20ms."), rested + 0.1, rested)
    after = spaced_calls(pacer, 3, start=rested + 0.1)
    assert after[0] >= rested + 0.12
    assert [b - a for a, b in itertools.pairwise(after)] == pytest.approx([1 / 4.5] * 2)


def test_a_learned_token_limit_paces_by_each_calls_cost() -> None:
    pacer = Pacer(PacerConfig(safety=1.0))
    pacer.started(0, 0.0)
    limits = read_limits({"x-ratelimit-limit-requests": "6000", "x-ratelimit-limit-tokens": "6000"})
    pacer.answered(limits, 0.0)  # 100 requests/s, but 100 tokens/s
    starts = spaced_calls(pacer, 5, cost=200)  # 2 s of tokens each
    assert [round(b - a, 6) for a, b in itertools.pairwise(starts)] == [2.0] * 4


def test_a_call_moves_the_tokens_lane_a_minute_at_most_and_a_refused_one_not_at_all() -> None:
    """OpenAI refuses, unspent, a call that asks for more than a minute's tokens; one such
    call must not hold the key's lane for longer than that, nor at all once refused."""
    pacer = Pacer(PacerConfig(safety=1.0, burst_s=0.0))
    pacer.started(0, 0.0)
    limits = read_limits({"x-ratelimit-limit-requests": "6000", "x-ratelimit-limit-tokens": "6000"})
    pacer.answered(limits, 0.0)  # 100 tokens/s
    assert (pacer.never_fits(6_000, 0.0, 60), pacer.never_fits(6_001, 0.0, 60)) == (False, True)
    assert not pacer.never_fits(6_001, 60.0, 60)  # said a minute ago: the call asks again

    pacer.started(1_000_000, 0.0)  # asks for 10,000 s of tokens: counted as one minute
    pacer.answered(None, 0.0)
    assert pacer.ready_at(100, 0.0) == pytest.approx(60.0)

    pacer.started(1_000_000, 60.0)
    pacer.refused(None, 1_000_000, 60.0)  # refused: spent nothing
    assert pacer.ready_at(100, 60.0) == pytest.approx(60.01)  # the request's spacing alone


def test_remaining_zero_pauses_until_the_reset() -> None:
    pacer = Pacer()
    pacer.started(0, 10.0)
    pacer.answered(
        read_limits({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "2s"}),
        10.0,
    )
    assert pacer.ready_at(0, 10.0) == 12.0


def test_a_limit_the_call_spent_is_back_its_reset_after_the_call_started() -> None:
    """An answer's "0 left, back in 1s" is as of the call's admission: a key of 60 a minute
    (its bucket holding one call) answering in half a second was called every 1.5 s, not at
    its pace, when the reset counted from the answer (a blast of 50 took 1.5 times what the
    limit allows)."""
    pacer = Pacer(PacerConfig(safety=0.9))
    spent = {
        "x-ratelimit-limit-requests": "60",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "1s",
    }
    pacer.started(0, 0.0)
    pacer.answered(read_limits(spent), 0.5, started=0.0)
    assert pacer.ready_at(0, 0.5) == pytest.approx(1.0)
    pacer.started(0, 1.0)
    pacer.answered(read_limits(spent), 1.5, started=1.0)
    assert pacer.ready_at(0, 1.5) == pytest.approx(1.0 + 1 / 0.9)  # its pace, not 2.5


def test_before_anything_is_learned_the_window_caps_calls_in_flight() -> None:
    pacer = Pacer(PacerConfig(initial_window=2))
    pacer.started(0, 0.0)
    pacer.answered(None, 0.1)  # the first answer: now its window, 2 (+1 for that success)
    for _ in range(3):
        pacer.started(0, 0.1)
    assert pacer.ready_at(0, 0.1) is None  # three in flight: wait for one to end
    pacer.answered(None, 0.2)
    assert pacer.ready_at(0, 0.2) == 0.2
    assert pacer.allowed_in_flight(0.2) == 4  # slow start: +1 per success


def test_a_429_pauses_for_what_it_asked_and_halves_an_unlearned_window() -> None:
    pacer = Pacer(PacerConfig(initial_window=8))
    pacer.started(0, 0.0)
    pacer.throttled(Limits(retry_after_s=2.5), 1.0)
    assert pacer.ready_at(0, 1.0) == 3.5
    assert pacer.allowed_in_flight(1.0) == 4
    pacer.started(0, 3.5)
    pacer.throttled(None, 3.5)  # said nothing: a backoff of its own
    assert pacer.ready_at(0, 3.5) == pytest.approx(3.5 + PacerConfig().throttle_base)


def test_the_429s_of_calls_out_together_halve_the_window_once() -> None:
    """A window's calls out together all meet the limit at once: each of their 429s halved
    the window, from 9 to 1, and a target allowing 50 calls a second, each answered in half a
    second, was then called a few at a time (a blast of 400 took 1.46 times what its limit
    allows, in a simulation). A call started after the halving and throttled halves it
    again."""
    pacer = Pacer(PacerConfig(initial_window=8))
    pacer.started(0, 0.0)
    pacer.answered(None, 0.5)  # the first answer: a window of 9
    for _ in range(9):
        pacer.started(0, 0.5)
    for i in range(6):
        pacer.throttled(Limits(retry_after_s=0.02), 0.52 + i * 0.001, started=0.5)
    assert pacer.allowed_in_flight(0.6) == 4
    pacer.started(0, 0.6)
    pacer.throttled(Limits(retry_after_s=0.02), 0.7, started=0.6)
    assert pacer.allowed_in_flight(0.7) == 2


def test_429s_in_a_row_that_say_nothing_back_off_doubling_up_to_the_maximum() -> None:
    """Talkable publishes no limits and asks clients to back off from seconds up to minutes:
    one call a second through a 429 storm of minutes would be sixty a minute."""
    pacer = Pacer(PacerConfig(throttle_base=1.0, throttle_max=8.0))
    now, waits = 0.0, []
    for _ in range(6):
        pacer.started(0, now)
        pacer.throttled(None, now)
        at = pacer.ready_at(0, now)
        assert at is not None
        waits.append(at - now)
        now = at
    assert waits == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    pacer.started(0, now)
    pacer.answered(None, now)  # an answer ends the run
    pacer.started(0, now)
    pacer.throttled(None, now)
    assert pacer.ready_at(0, now) == now + 1.0
    pacer.started(0, now + 1.0)
    pacer.throttled(Limits(retry_after_s=0.5), now + 1.0)  # what it asks, as asked
    assert pacer.ready_at(0, now + 1.0) == now + 1.5


def test_429s_that_ask_for_no_wait_back_off_all_the_same() -> None:
    """``retry-after: 0`` (or "try again in 0s") and a 429 again: the target was called back
    at once, 600 times a second against a real server, until the maximum wait. What it asks
    is kept while it works; once a call made after the wait is throttled again, the pause is
    a backoff of its own, doubling to the maximum."""
    pacer = Pacer(PacerConfig(throttle_floor=0.05, throttle_max=1.0))
    now, waits = 0.0, []
    for _ in range(8):
        pacer.started(0, now)
        pacer.throttled(Limits(retry_after_s=0.0), now + 0.001, started=now)
        now += 0.001
        at = pacer.ready_at(0, now)
        assert at is not None
        waits.append(round(at - now, 3))
        now = at
    assert waits == [0.0, 0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    pacer.started(0, now)
    pacer.answered(None, now + 0.001)  # an answer ends the run: what it asks is kept again
    now += 0.001
    pacer.started(0, now)
    pacer.throttled(Limits(retry_after_s=0.0), now + 0.001, started=now)
    assert pacer.ready_at(0, now + 0.001) == now + 0.001


def test_429s_of_calls_already_in_flight_are_one_429_not_a_run() -> None:
    """A burst's calls out together all answer 429 (OpenAI's "try again in 20ms"): they were
    made before the first 429, so they say nothing of its wait, and add no backoff."""
    pacer = Pacer(PacerConfig(initial_window=8, throttle_floor=0.05))
    for _ in range(6):
        pacer.started(0, 0.0)
    for i in range(6):
        now = 0.1 + i * 0.05
        pacer.throttled(Limits(retry_after_s=0.02), now, started=0.0)
    assert pacer.ready_at(0, 0.35) == pytest.approx(0.37)


def calls_against_a_limit(pacer: Pacer, per_second: float, seconds: float) -> tuple[int, int]:
    """One call at a time, each answered 50 ms after it starts, by an upstream that allows
    ``per_second`` (a bucket of one second's calls) and says nothing of it: a 429 without
    headers, as Talkable answers. Returns (answered, 429s)."""
    now, tokens, last, answered, throttled = 0.0, per_second, 0.0, 0, 0
    while now < seconds:
        at = pacer.ready_at(0, now)
        assert at is not None
        now = max(now, at)
        pacer.started(0, now)
        tokens, last = min(per_second, tokens + (now - last) * per_second), now
        now += 0.05
        if tokens >= 1:
            tokens -= 1
            answered += 1
            pacer.answered(None, now)
        else:
            throttled += 1
            pacer.throttled(None, now)
    return answered, throttled


def test_a_target_that_says_no_limits_is_paced_at_what_it_answered_before_its_429s() -> None:
    """Talkable publishes no limits: its 429s paused the target, and then calls went as fast
    as the window let them, into the next 429 (a third of the calls, in a probe). A 429 of a
    busy target now paces it at what it answered lately, growing slowly to find more."""
    pacer = Pacer(PacerConfig(initial_window=4, safety=0.9))
    answered, throttled = calls_against_a_limit(pacer, per_second=2.0, seconds=120.0)
    assert throttled / (answered + throttled) < 0.12
    assert answered / 120.0 > 1.6  # near the limit all the same
    assert pacer.rate is not None and 1.5 < pacer.rate < 2.5
    # the pace is forgotten a minute after the last 429: a limit raised is found at once
    last = pacer.adapted_at
    assert last is not None
    for step in range(1, 8):
        pacer.started(0, last + 10 * step)
        pacer.answered(None, last + 10 * step)
    assert (pacer.rate, pacer.adapted_at) == (None, None)


def test_a_slow_target_whose_calls_are_mostly_429s_is_paced_all_the_same() -> None:
    """A site allowing a call a second answers a window of one with a 429 every other call:
    fewer than 8 answers in 10 s, so it was never "busy" enough to be paced, and a third of
    its calls were 429s. Its 429s show it is pushed: they count towards busy."""
    pacer = Pacer(PacerConfig(initial_window=4, safety=0.9))
    answered, throttled = calls_against_a_limit(pacer, per_second=1.0, seconds=20.0)
    assert throttled / (answered + throttled) < 0.25
    assert pacer.rate is not None and 0.7 < pacer.rate < 1.2


def test_a_quiet_target_learns_no_pace_from_a_429() -> None:
    """Fewer than a few answers in the last seconds say nothing of the limit: the 429 backs
    off as before, and no pace holds the next blast."""
    pacer = Pacer(PacerConfig(throttle_base=1.0))
    for at in (0.0, 5.0):
        pacer.started(0, at)
        pacer.answered(None, at)
    pacer.started(0, 6.0)
    pacer.throttled(None, 6.0)
    assert pacer.rate is None and pacer.ready_at(0, 6.0) == 7.0


def test_a_pace_the_upstream_said_is_not_changed_by_its_429s() -> None:
    pacer = Pacer(PacerConfig(safety=0.9))
    pacer.started(0, 0.0)
    pacer.answered(read_limits({"x-ratelimit-limit-requests": "300"}), 0.0)  # 4.5/s
    answered, _ = calls_against_a_limit(pacer, per_second=2.0, seconds=20.0)
    assert answered > 0 and pacer.rate == pytest.approx(4.5) and pacer.adapted_at is None


def test_an_outage_opens_the_circuit_then_one_probe_at_a_time() -> None:
    pacer = Pacer(PacerConfig(circuit_after=3, open_base=1.0, open_max=4.0))
    for _ in range(2):
        pacer.started(0, 0.0)
        pacer.failed(0.0)
    assert pacer.circuit is Circuit.CLOSED
    pacer.started(0, 0.0)
    pacer.failed(0.0)
    assert pacer.circuit is Circuit.OPEN
    assert pacer.ready_at(0, 0.5) == 1.0  # nothing before the circuit half-opens
    assert pacer.ready_at(0, 1.0) == 1.0
    assert pacer.circuit is Circuit.HALF_OPEN
    pacer.started(0, 1.0)
    assert pacer.ready_at(0, 1.0) is None  # the probe is out: nobody else
    pacer.failed(1.2)  # still down: open again, twice as long
    assert pacer.circuit is Circuit.OPEN and pacer.ready_at(0, 1.2) == pytest.approx(3.2)
    for now in (3.2, 7.2):  # doubling, up to open_max
        assert pacer.ready_at(0, now) == now
        pacer.started(0, now)
        pacer.failed(now)
    assert pacer.open_until - 7.2 == pytest.approx(4.0)
    assert pacer.ready_at(0, 11.2) == 11.2
    pacer.started(0, 11.2)
    pacer.answered(None, 11.3)  # it answers: closed, and back to the learned pace
    assert pacer.circuit is Circuit.CLOSED and pacer.open_for == 1.0
    assert pacer.ready_at(0, 11.3) == 11.3


def test_a_new_target_is_asked_once_until_its_first_answer() -> None:
    pacer = Pacer(PacerConfig(initial_window=8, probe_wait=1.0))
    assert pacer.allowed_in_flight(0.0) == 1
    pacer.started(0, 0.0)
    assert pacer.ready_at(0, 0.0) == 1.0  # alone until it answers, for a second at most
    assert pacer.ready_at(0, 0.9) == 1.0
    pacer.answered(None, 0.5)  # it answered: now its window
    assert pacer.allowed_in_flight(0.5) == 9


def test_a_first_call_that_takes_long_goes_alone_only_for_the_probe_wait() -> None:
    pacer = Pacer(PacerConfig(initial_window=8, probe_wait=1.0))
    pacer.started(0, 10.0)  # a generation that takes seconds
    assert pacer.ready_at(0, 10.5) == 11.0
    assert pacer.allowed_in_flight(10.5) == 1
    assert pacer.ready_at(0, 11.0) == 11.0  # no answer yet: the initial window opens
    assert pacer.allowed_in_flight(11.0) == 8
    for _ in range(7):
        pacer.started(0, 11.0)
    assert pacer.ready_at(0, 11.0) is None  # eight in flight: wait for one to end


def test_a_first_call_lost_to_an_outage_makes_the_next_one_the_first_question() -> None:
    pacer = Pacer(PacerConfig(initial_window=8, probe_wait=1.0, circuit_after=3))
    pacer.started(0, 0.0)
    pacer.failed(5.0)  # no answer (a timeout): nothing learned
    assert pacer.allowed_in_flight(5.0) == 1
    pacer.started(0, 5.0)
    assert pacer.ready_at(0, 5.5) == 6.0  # its own second, from its own start


@pytest.mark.parametrize(
    ("seconds", "said"),
    [
        (8.4, "8s"),
        (59.6, "60s (1 min)"),
        (300.0, "300s (5 min)"),
        (3600.0, "3600s (1 h)"),
        (5400.0, "5400s (1 h 30 min)"),
        (10_799.0, "10799s (3 h)"),
    ],
)
def test_a_wait_past_a_minute_is_said_in_hours_and_minutes_too(seconds: float, said: str) -> None:
    """A letter said "asked to wait 10799s more": a number to divide, hours after."""
    assert said_wait(seconds) == said
