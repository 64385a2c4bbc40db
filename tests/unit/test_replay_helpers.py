"""Replay's helpers and its comparison: partitions shared out evenly, a forked helper's
result, progress and failure reach the caller, and verify's byte-for-byte match counts what
the field-by-field comparison would."""

from __future__ import annotations

import os
from typing import Any

import pytest

from models.events import GapProbe, LifecycleEvent, State
from models.ledger import PersonState, Policy, handle
from streams.codecs import encode
from streams.ops.helpers import Channel, Helper, HelperError, answers, run_all, shares
from streams.ops.replay import Record
from streams.ops.verify import Rederivation, VerifySummary, _comparable, _compare
from tests.unit.domain_builders import EMAIL, limit, received


def test_shares_balance_the_partitions_that_have_records() -> None:
    bounds = {0: (0, 100), 1: (0, 90), 2: (5, 5), 3: (0, 40), 4: (10, 60)}
    split = shares(bounds, 2)
    assert sorted(p for share in split for p in share) == [0, 1, 3, 4]  # 2 is empty
    sizes = sorted(sum(end - first for first, end in share.values()) for share in split)
    assert sizes == [140, 140]
    assert all(share[p] == bounds[p] for share in split for p in share)
    assert len(shares(bounds, 8)) == 4  # never more shares than partitions with records
    assert shares({0: (3, 3)}, 2) == []


def _double(channel: Channel, numbers: list[int]) -> list[int]:
    channel.progress(len(numbers))
    return [2 * n for n in numbers]


def _fail(channel: Channel) -> None:
    raise ValueError("the database refused the rows")


def _die(channel: Channel) -> None:
    os._exit(3)


def test_a_helper_returns_its_result_and_reports_progress() -> None:
    seen: list[int] = []
    assert run_all([Helper("double", _double, [1, 2, 3])], seen.append) == [[2, 4, 6]]
    assert seen == [3]


def _converse(channel: Channel, first: int) -> str:
    channel.answer(first + 1)
    second = channel.receive()
    channel.progress(2)
    channel.answer(second * 10)
    return f"told {channel.receive()}"


def test_a_helper_answers_on_the_way_and_waits_for_the_callers_word() -> None:
    seen: list[int] = []
    helper = Helper("converse", _converse, 1)
    try:
        helper.drain(seen.append)  # an answer waiting is kept for answer(), not passed over
        assert helper.answer(seen.append) == 2
        helper.send(4)
        assert helper.answer(seen.append) == 40
        assert seen == [2]
        helper.send("enough")
        assert helper.result(seen.append) == "told enough"
    finally:
        helper.stop()


def _answer_when_told(channel: Channel) -> None:
    channel.answer(f"told {channel.receive()}")


def _answer_at_once(channel: Channel) -> None:
    channel.progress(1)
    channel.answer("at once")


def test_answers_come_in_the_order_the_helpers_give_them() -> None:
    """The caller takes whichever answer comes first: a helper waiting for its word does not
    hold up one that has answered (here it answers only once told, by the caller, after)."""
    waits, quick = Helper("waits", _answer_when_told), Helper("quick", _answer_at_once)
    seen: list[int] = []
    got = []
    try:
        for helper, answer in answers([waits, quick], seen.append):
            got.append((helper.name, answer))
            if helper is quick:
                waits.send("now")
        assert got == [("quick", "at once"), ("waits", "told now")]
        assert seen == [1]
        assert run_all([waits, quick], None) == [None, None]
    finally:
        waits.stop()
        quick.stop()


def test_a_helper_that_answers_where_a_result_was_expected_is_an_error() -> None:
    helper = Helper("converse", _converse, 1)
    try:
        with pytest.raises(HelperError, match="converse: answer where done was expected"):
            helper.result(None)
    finally:
        helper.stop()


def test_a_helpers_failure_is_raised_with_its_reason() -> None:
    with pytest.raises(HelperError, match="ValueError: the database refused the rows"):
        run_all([Helper("fails", _fail)], None)


def test_a_helper_that_dies_is_reported_not_waited_for() -> None:
    with pytest.raises(HelperError, match=r"stopped without a result \(exit code 3\)"):
        run_all([Helper("dies", _die)], None)


def _event(request_id: str, state: State, previous: State | None, **fields: Any) -> LifecycleEvent:
    kinds = {State.RECEIVED: "RequestReceived", State.ADMITTED: "RequestAdmitted"}
    return LifecycleEvent(
        type=kinds[state],
        request_id=request_id,
        person="site:ada@example.com",
        site="site",
        state=state,
        previous_state=previous,
        at_ms=1_000,
        cause="webhook accepted" if state is State.RECEIVED else "admitted",
        **fields,
    )


def _checked(derived: list[LifecycleEvent], recorded: list[LifecycleEvent]) -> VerifySummary:
    check = Rederivation(Policy(), VerifySummary("requests", "lifecycle"))
    for event in derived:
        check.derived.setdefault(event.identity(), []).append(encode(event))
    for offset, event in enumerate(recorded):
        check.recorded(Record("lifecycle", 0, offset, 0, encode(event)))
    return check.compare()


def test_verify_counts_the_same_whether_bytes_match_or_fields_do() -> None:
    a = _event("a", State.RECEIVED, None)
    b = _event("b", State.RECEIVED, None)
    older = b.model_copy(update={"schema_version": 1})  # written by older code: other bytes
    summary = _checked([a, b], [a, a, older])
    assert (summary.matched, summary.repeated, summary.differences) == (2, 1, [])
    assert summary.recorded == 3 and summary.derived == 2


def test_verify_reports_changed_missing_and_unexpected_in_identity_order() -> None:
    a, b, c = (_event(r, State.RECEIVED, None) for r in "abc")
    edited = a.model_copy(update={"cause": "edited"})
    stray = _event("z", State.ADMITTED, State.RECEIVED)
    summary = _checked([c, b, a], [stray, edited, c])
    assert [(d.kind, d.request_id) for d in summary.differences] == [
        ("changed", "a"),
        ("missing", "b"),
        ("unexpected", "z"),
    ]
    assert summary.differences[0].fields == {"cause": ("webhook accepted", "edited")}
    assert summary.matched == 1


def test_an_identitys_own_differences_keep_the_order_they_were_recorded_in() -> None:
    a = _event("a", State.RECEIVED, None)
    recorded = [_comparable(a.model_copy(update={"cause": c})) for c in ("one", "two")]
    summary = VerifySummary("r", "l")
    _compare({a.identity(): [encode(a)]}, {a.identity(): [*recorded]}, summary)
    assert [d.fields for d in summary.differences] == [
        {"cause": ("webhook accepted", "one")},
        {"cause": ("webhook accepted", "two")},
    ]


def test_shares_absorbed_keep_every_derived_event_in_order_and_count_the_same() -> None:
    """Helpers' results are merged as they come (the shares' identities do not overlap; one
    that did keeps the earlier events first); an identity derived twice and recorded once is a
    missing event, as when everything was derived in one process."""
    a, b = _event("a", State.RECEIVED, None), _event("b", State.RECEIVED, None)
    check = Rederivation(Policy(), VerifySummary("requests", "lifecycle"))
    check.tally(1, [])
    check.absorb({a.identity(): [encode(a)]})
    check.tally(2, [])
    check.absorb({a.identity(): [encode(a)], b.identity(): [encode(b)]})
    assert check.derived == {a.identity(): [encode(a), encode(a)], b.identity(): [encode(b)]}
    for offset, event in enumerate([a, b]):
        check.recorded(Record("lifecycle", 0, offset, 0, encode(event)))
    summary = check.compare()
    assert (summary.messages, summary.derived, summary.recorded) == (3, 3, 2)
    assert summary.matched == 2
    assert [(d.kind, d.request_id) for d in summary.differences] == [("missing", "a")]


def _matched(
    shares: list[list[LifecycleEvent]], recorded: list[LifecycleEvent]
) -> tuple[Rederivation, bool]:
    """The helpers' way: each share matches the recorded events' digests, then settles."""
    check = Rederivation(Policy(), VerifySummary("requests", "lifecycle"))
    for offset, event in enumerate(recorded):
        check.recorded(Record("lifecycle", 0, offset, 0, encode(event)))
    matchings = []
    for derived in shares:
        share = Rederivation(Policy(), VerifySummary("requests", ""))
        for event in derived:
            share.derived.setdefault(event.identity(), []).append(encode(event))
        matchings.append(share.match(check.digests()))
    return check, check.settle(matchings)


def test_verify_by_digest_settles_what_the_comparison_would_report() -> None:
    """Every recorded event taken once by one share: the helpers' matchings are the summary,
    the same one compare() gives (repeats counted, missing events reported)."""
    a, b, c = (_event(r, State.RECEIVED, None) for r in "abc")
    cases = [
        ([[a, b], [c]], [c, a, b]),  # everything once
        ([[a, a], [c, b]], [a, c, c]),  # a derived twice, recorded once; c repeated; b missing
    ]
    for shares_, recorded in cases:
        check, whole = _matched(shares_, recorded)
        assert whole
        expected = _checked([e for share in shares_ for e in share], recorded)
        assert (check.summary.derived, check.summary.recorded) == (
            expected.derived,
            expected.recorded,
        )
        assert (check.summary.matched, check.summary.repeated) == (
            expected.matched,
            expected.repeated,
        )
        assert check.summary.differences == expected.differences
    assert [d.kind + " " + d.request_id for d in check.summary.differences] == [
        "missing a",
        "missing b",
    ]


def test_verify_by_digest_leaves_to_the_comparison_what_it_cannot_settle() -> None:
    """A recorded event not byte for byte a derived one (edited, written by older code,
    unexplained), or taken by two shares (a request's messages in two partitions): the
    summary is left untouched for compare()."""
    a, b = _event("a", State.RECEIVED, None), _event("b", State.RECEIVED, None)
    for shares_, recorded in [
        ([[a], [b]], [a, b.model_copy(update={"cause": "edited"})]),
        ([[a], [b]], [a, b.model_copy(update={"schema_version": 1})]),
        ([[a], [b]], [a, b, _event("z", State.RECEIVED, None)]),
        ([[a], [a, b]], [a, b]),
    ]:
        check, whole = _matched(shares_, recorded)
        assert not whole
        assert check.summary == VerifySummary("requests", "lifecycle")
        assert len(check.digests()) == len(recorded)  # still there for compare()


def test_verify_passes_over_a_gap_probe_it_derives_nothing_from() -> None:
    """A GapProbe on [requests] (a worker's nudge to its own ledger) decides nothing: the
    ledger's rules are not asked, and it is no record verify could not use."""
    check = Rederivation(Policy(), VerifySummary("requests", "lifecycle"))
    probe = GapProbe(partition=3, expected=53, taken=54, at_ms=1_700_000_000_000)
    check.request(Record("requests", 3, 55, 1_700_000_000_000, encode(probe)))
    assert check.summary.messages == 1
    assert check.summary.skipped == []
    assert check.derived == {}


def test_verify_names_a_message_it_skipped_as_its_dead_letter_does() -> None:
    """``replay --verify`` listed a poison message of [requests] as ``DecodeError('does not
    decode: ...')`` beside one of [lifecycle] as ``does not decode: ...``: the reason now reads
    as the message's dead letter (and as a rebuild) says it."""
    check = Rederivation(Policy(), VerifySummary("requests", "lifecycle"))
    check.request(Record("requests", 3, 92, 1_700_000_000_000, b"{not json"))
    [skipped] = check.summary.skipped
    assert skipped.reason.startswith("does not decode: value: Invalid JSON"), skipped.reason


def test_records_written_before_the_key_folded_the_sites_case_verify_as_they_were() -> None:
    """Before schema 11 the person's key kept the site as typed: ``Shop`` and ``shop`` were two
    people, and with a limit of 1 both webhooks were admitted. ``replay --verify`` reads the key
    each record carries, never derives it again from the site, so what was decided then is what
    it derives (deriving the key anew would find the second webhook limited: a difference)."""
    window = limit(amount=1)
    old = [
        received(f"req-{site}", usage_limit=window).model_copy(
            update={
                "schema_version": 10,
                "person": f"{site}:{EMAIL}",
                "spec": received(usage_limit=window).spec.model_copy(update={"site": site}),
            }
        )
        for site in ("Shop", "shop")
    ]
    states: dict[str, PersonState] = {}  # the ledger of the version that wrote them
    recorded: list[LifecycleEvent] = []
    for message in old:
        outcome = handle(states.get(message.person), message, Policy(), message.at_ms)
        states[message.person] = outcome.state
        recorded += outcome.events
    assert [e.type for e in recorded].count("RequestAdmitted") == 2

    check = Rederivation(Policy(), VerifySummary("requests", "lifecycle"))
    for offset, message in enumerate(old):
        check.request(Record("requests", 0, offset, message.at_ms, encode(message)))
    for offset, event in enumerate(recorded):
        check.recorded(Record("lifecycle", 0, offset, event.at_ms, encode(event)))
    summary = check.compare()

    assert summary.differences == [] and summary.skipped == []
    assert summary.matched == len(recorded)
