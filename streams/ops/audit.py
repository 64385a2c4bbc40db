"""Reading the SQL projection for people: a request's history, per-site statistics.

Everything here reads the projection (fast, SQL); it never touches Kafka. Times are shown as
ISO-8601 in UTC. Percentiles are computed in Python over the selected rows (nearest rank), so
SQLite and PostgreSQL give the same numbers.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from models.lifecycle import TERMINAL, State
from models.params import LATEST_EPOCH_S, person_key, person_keys, site_identity, site_named
from streams.ops import clocks
from streams.projection.store import ProjectionStore, StatsRow
from streams.projection.tables import RequestRow

_AGO = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_EPOCH_MS_ABOVE = 100_000_000_000  # larger numbers are milliseconds (from 1973 on, in ms)


# the times a range can name: from the epoch to the last millisecond ISO-8601 can write
_LATEST_MS = LATEST_EPOCH_S * 1000 + 999


def parse_time(value: str, now_ms: int) -> int:
    """Epoch ms from ISO-8601 (no zone = UTC), epoch seconds or ms, or an age like ``24h``; a
    ValueError for anything else, and for a time before 1970 or after the year 9999."""
    ms = _parsed_ms(value, now_ms)
    if not 0 <= ms <= _LATEST_MS:
        raise ValueError(f"{value!r} is out of range: a time from 1970 to the year 9999")
    return int(ms)


def _parsed_ms(value: str, now_ms: int) -> float:
    text = value.strip()
    ago = _AGO.match(text)
    if ago:
        return now_ms - float(ago.group(1)) * _UNIT_SECONDS[ago.group(2)] * 1000
    _refuse_a_compact_date(value, text)
    try:
        number = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(number):
            raise ValueError(f"{value!r} is not a time: a number must be finite")
        return number if abs(number) > _EPOCH_MS_ABOVE else number * 1000
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"{value!r} is not a time: use ISO-8601 (2026-05-20T10:00:00Z), epoch seconds or "
            "milliseconds, or an age such as 30m, 24h, 7d"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp() * 1000


def _refuse_a_compact_date(value: str, text: str) -> None:
    """``20261204`` is ISO-8601's date without dashes, and epoch seconds in August 1970 (which no
    webhook or letter is from): read as the latter, ``--since 20261204`` meant everything."""
    if not (len(text) == 8 and text.isdigit()):
        return
    try:
        day = datetime.strptime(text, "%Y%m%d").date()
    except ValueError:
        return
    raise ValueError(
        f"{value!r} is not a time: write the date {day.isoformat()} (a number is epoch seconds,"
        f" and this one would be {iso(int(text) * 1000)})"
    )


def parse_range(since: str | None, until: str | None, now_ms: int) -> tuple[int | None, int | None]:
    """A form's ``since`` and ``until`` (either may be blank) as epoch ms; a ValueError naming
    the field that is not a time, or saying the range ends before it starts (an age counts
    back from now: since 1h, until 2h is such a range)."""

    def read(name: str, value: str | None) -> int | None:
        text = (value or "").strip()
        try:
            return parse_time(text, now_ms) if text else None
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from None

    since_ms, until_ms = read("since", since), read("until", until)
    check_range(since_ms, until_ms)
    return since_ms, until_ms


def check_range(
    since_ms: int | None, until_ms: int | None, names: tuple[str, str] = ("since", "until")
) -> None:
    """A ValueError for a range that ends before it starts, with both times (it selects
    nothing; an age counts back from now, so since 1h, until 2h is one): said, not answered
    as an empty result. ``names``: the fields as the user wrote them (``--since``...)."""
    if since_ms is not None and until_ms is not None and since_ms > until_ms:
        since, until = names
        raise ValueError(
            f"{since} {iso(since_ms)} is after {until} {iso(until_ms)}: the range is empty "
            f"(an age counts back from now: {since} 2h, {until} 1h)"
        )


def iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


def source_of(store: ProjectionStore) -> dict[str, str]:
    return {
        "kind": "sql-projection",
        "database": store.url,
        "note": "projected from the lifecycle topic by the worker; "
        "`talkstream replay` rebuilds it from the log",
    }


# --- history ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    at: str | None  # as recorded: the event time for the webhook's judgement, else wall clock
    at_ms: int
    state: str
    type: str
    attempt: int
    cause: str
    error_class: str | None
    error_message: str | None
    window_start: int | None
    window_count: int | None
    source: str  # topic/partition/offset of the lifecycle event
    # the two clocks (streams.ops.clocks): when it happened on a wall clock (the arrival, for
    # the webhook's own judgement), and how long after the arrival
    wall_at: str | None = None
    since_arrival_ms: int = 0
    judged: bool = False
    # a publication's Talkable event number: the one it attempted (PublicationStarted,
    # PublicationFailed: lifecycle schema 9), or landed under (CompletionPublished: 8); None
    # otherwise, and for a transition projected before migration 0010
    event_number: str | None = None

    @classmethod
    def of(cls, step: clocks.Step) -> Step:
        return cls(
            at=iso(step.at_ms),
            at_ms=step.at_ms,
            state=step.state,
            type=step.type,
            attempt=step.attempt,
            cause=step.cause,
            error_class=step.error_class,
            error_message=step.error_message,
            window_start=step.window_start,
            window_count=step.window_count,
            source=step.source,
            wall_at=iso(step.wall_ms),
            since_arrival_ms=step.since_arrival_ms,
            judged=step.judged,
            event_number=step.event_number,
        )


@dataclass(frozen=True)
class History:
    request_id: str
    site: str
    person: str
    state: str
    terminal: bool
    received_at: str | None  # the event time it was judged at (the name predates arrivals)
    terminal_at: str | None
    duplicate_of: str | None
    model: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    generation_latency_ms: int | None
    attempts: int
    error_class: str | None
    transitions: list[Step] = field(default_factory=list)
    # the two clocks: when the webhook arrived (None: projected before arrivals were recorded,
    # migration 0002; then times are measured from the event time), the event time, and
    # arrival → terminal state
    arrived_at: str | None = None
    event_time: str | None = None
    event_offset_ms: int = 0  # event time - arrival: negative when Talkable's clock lagged
    end_to_end_ms: int | None = None
    truncated: bool = False  # its text was cut at its token cap (and published as it was)
    # which request of this id: 0 the first; 1, 2, ... the same params again after the ledger
    # forgot the person (or the fingerprint), named by the id again (migration 0008)
    occurrence: int = 0
    # the number Talkable holds its event under (with the site: its event), once published
    # (None: not published, or reported before lifecycle schema 8; migration 0009)
    event_number: str | None = None


def history(store: ProjectionStore, row: RequestRow) -> History:
    timeline = clocks.timeline_of(
        row, store.transitions(row.request_id, row.occurrence), numbered=True
    )
    return History(
        request_id=row.request_id,
        occurrence=row.occurrence,
        site=row.site,
        person=row.person,
        state=row.state,
        terminal=row.terminal,
        received_at=iso(row.received_at_ms),
        terminal_at=iso(clocks.ended_ms(row)),
        duplicate_of=row.duplicate_of,
        model=row.model,
        prompt_tokens=row.prompt_tokens,
        completion_tokens=row.completion_tokens,
        generation_latency_ms=row.generation_latency_ms,
        attempts=row.attempts,
        error_class=row.error_class,
        transitions=[Step.of(step) for step in timeline.steps],
        arrived_at=iso(row.arrived_at_ms),
        event_time=iso(row.received_at_ms),
        event_offset_ms=timeline.event_offset_ms,
        end_to_end_ms=timeline.end_to_end_ms,
        truncated=row.truncated,
        event_number=row.event_number,
    )


# the most requests of the same params ``audit --request-id`` shows after the one it names
MAX_REPEATS = 50


def find_histories(
    store: ProjectionStore,
    *,
    request_id: str | None = None,
    site: str | None = None,
    email: str | None = None,
    spellings: Sequence[str] = (),
) -> list[History]:
    """The requests of an id, oldest first (one, unless the ledger named the same params by it
    again after it forgot the person), with the requests of the same params the ledger named
    after it (:data:`MAX_REPEATS` at most: the ingress answered them the same id), or every
    request of a person (site + email, normalized), newest first: ``spellings``, the site as
    each of its webhooks typed it (``Shop``, ``shop``: one site), for the keys written before
    schema 11."""
    if request_id is not None:
        rows = store.occurrences(request_id)
        if "~" not in request_id:
            rows += store.repeats_of(request_id, MAX_REPEATS)
    elif site is not None and email is not None:
        # under the key the ledger keys them by, and the site as typed (records before
        # schema 11, whose key did not fold the site's case)
        normalized = email.strip().lower()
        rows = store.requests_of(*person_keys((*spellings, site.strip()), normalized))
    else:
        raise ValueError("give a request id, or a site and an email")
    return [history(store, row) for row in rows]


def not_found(request_id: str | None, site: str | None, email: str | None) -> str:
    """What an audit that found nothing looked for (the id as given, the person as the ledger
    keys them), so a mistyped one shows; the projector may not have reached a request just
    answered."""
    if request_id is not None:
        what = f"request {request_id}"
    else:
        what = f"request of {person_key((site or '').strip(), (email or '').strip().lower())}"
    return f"no {what} in this projection (a webhook answered moments ago may not be projected yet)"


def render_histories(histories: Sequence[History]) -> str:
    blocks = []
    for h in histories:
        generated = [i for i, s in enumerate(h.transitions) if s.state == State.GENERATED]
        cut_step = generated[-1] if h.truncated and generated else None  # the text it published
        tokens = f"{h.prompt_tokens}+{h.completion_tokens}" if h.prompt_tokens is not None else "-"
        lines = [
            f"request {h.request_id}{_again(h)}",
            f"  site {h.site}   person {h.person}"
            + (f"   Talkable event {h.event_number}" if h.event_number else ""),
            f"  state {h.state}{' (terminal)' if h.terminal else ' (in flight)'}"
            f"   finished {h.terminal_at or '-'}{_end_to_end(h)}",
            f"  {_clocks(h)}",
            f"  model {h.model or '-'}   tokens (prompt+completion) {tokens}"
            + (f" {CUT}" if h.truncated else "")
            + f"   generation {_or_dash(h.generation_latency_ms, ' ms')}   attempts {h.attempts}"
            + _error(h)
            + (f"   duplicate of {h.duplicate_of}" if h.duplicate_of else ""),
            "",
            table(
                ["time (UTC)", "state", "attempt", "since arrival", "cause", "error"],
                [
                    [
                        s.wall_at or "",
                        s.state,
                        str(s.attempt),
                        _seconds(s.since_arrival_ms, signed=True),
                        s.cause
                        + (f" {CUT}" if i == cut_step else "")
                        + (
                            f" [judged at event time {s.at}]"
                            if s.judged and s.at != s.wall_at
                            else ""
                        ),
                        ": ".join(x for x in (s.error_class, s.error_message) if x) or "",
                    ]
                    for i, s in enumerate(h.transitions)
                ],
                indent="  ",
            ),
        ]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _error(h: History) -> str:
    """The request's latest failure, kept once a retry or a redrive succeeded
    (docs/consumers.md): its outcome only in a failed state; beside any other, an earlier
    attempt's, said so (``published`` beside ``error SiteNotFound`` read as a failure)."""
    if not h.error_class:
        return ""
    if h.state in FAILED:
        return f"   error {h.error_class}"
    if h.terminal:
        return f"   earlier error {h.error_class} (before it was {h.state})"
    return f"   earlier error {h.error_class} (an earlier attempt's: it is in flight)"


# what the history says of a text cut at the completion's cap, as the console does: by no name
# (it went as ``max_tokens`` or ``max_completion_tokens``, which the request does not record)
CUT = "(text cut at its token cap)"


def _again(h: History) -> str:
    """What the header says of a request that is not the first of its id."""
    if not h.occurrence:
        return ""
    return (
        f" (request {h.occurrence + 1} of this id: the same params after the ledger forgot"
        " the person, or the fingerprint)"
    )


def _end_to_end(h: History) -> str:
    if h.end_to_end_ms is None:
        return ""
    since = "arrival" if h.arrived_at is not None else "the event time (arrival not recorded)"
    return f" ({_seconds(h.end_to_end_ms)} after {since})"


def _clocks(h: History) -> str:
    """When it arrived, and the event time it was judged at."""
    if h.arrived_at is None:
        return (
            f"arrived - (not recorded: projected before arrivals were; times below are "
            f"measured from the event time)   event time {h.event_time}"
        )
    lag = f" ({_seconds(h.event_offset_ms, signed=True)})" if h.event_offset_ms else ""
    return f"arrived {h.arrived_at}   judged at event time {h.event_time}{lag}"


def _seconds(ms: int | None, signed: bool = False) -> str:
    if ms is None:
        return "-"
    sign = ("+" if ms >= 0 else "-") if signed else ("-" if ms < 0 else "")
    return f"{sign}{abs(ms) / 1000:.3f} s"


def histories_json(store: ProjectionStore, histories: Sequence[History]) -> dict[str, Any]:
    return {"source": source_of(store), "requests": [asdict(h) for h in histories]}


# --- stats ------------------------------------------------------------------------------------

FAILED = (State.GENERATION_FAILED.value, State.PUBLISH_FAILED.value)
TERMINAL_STATES = sorted(s.value for s in TERMINAL)


@dataclass(frozen=True)
class SiteStats:
    site: str
    requests: int
    by_state: dict[str, int]  # every terminal state, plus ``in_flight``
    prompt_tokens: int
    completion_tokens: int
    latency_p50_ms: int | None
    latency_p95_ms: int | None
    limited_rate: float | None  # limited / requests
    failure_rate: float | None  # (generation_failed + publish_failed) / admitted
    # waiting for the upstream targets (pacing, 429s, an open circuit): requests that waited
    # at least a second in some queue, and the longest waits
    waited: int = 0
    wait_p95_ms: int | None = None
    wait_max_ms: int | None = None
    failures: dict[str, int] = field(default_factory=dict)  # why: error class → requests
    truncated: int = 0  # requests whose text was cut at its token cap (published as it was)
    # the site as its webhooks typed it, each spelling (``Shop``, ``shop``: one site, as the
    # ledger counts it); none for ``*``
    spellings: list[str] = field(default_factory=list)


def percentile(values: Sequence[int], p: float) -> int | None:
    """Nearest-rank percentile: the smallest value with at least p% of values at or below."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def site_stats(rows: Iterable[StatsRow], one_site: str | None = None) -> list[SiteStats]:
    """Per site (sorted), then ``*`` for all sites together when there is more than one;
    counted as the rows stream by (only the latencies and waits are kept, for percentiles).
    A site is its spellings together (``Shop``, ``shop``: one site, as the ledger counts it,
    ``models.params.site_identity``), named by its one spelling, else by the lower-cased
    site (the ledger's and the pacing's name of it), its ``spellings`` said; its percentiles
    are of all its requests, never merged from each spelling's. ``one_site``: every row is of
    that site (its spellings), counted together under that name."""
    by_site: dict[str, _Tally] = {}
    everything = _Tally()
    for row in rows:
        site = one_site if one_site is not None else site_identity(row.site)
        tally = by_site.get(site)
        if tally is None:
            tally = by_site[site] = _Tally()
        tally.add(row)
        everything.add(row)
    named = {_name(site, tally, one_site): tally for site, tally in by_site.items()}
    stats = [tally.stats(site) for site, tally in sorted(named.items())]
    if len(stats) > 1:
        stats.append(everything.stats("*"))
    return stats


def _name(identity: str, tally: _Tally, one_site: str | None) -> str:
    if one_site is not None:
        return one_site
    return site_named(tally.spellings) if tally.spellings else identity


def spelled_apart(stats: Sequence[SiteStats]) -> str:
    """The sites whose webhooks spelled them several ways, each counted as one; "" if none."""
    several = [s for s in stats if len(s.spellings) > 1]
    if not several:
        return ""
    return "sites their webhooks spelled several ways, each counted as one site: " + "; ".join(
        f"{s.site} ({', '.join(s.spellings)})" for s in several
    )


@dataclass
class _Tally:
    """One site's requests (or all of them), counted."""

    requests: int = 0
    by_state: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys([*TERMINAL_STATES, "in_flight"], 0)
    )
    admitted: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latencies: list[int] = field(default_factory=list)
    waits: list[int] = field(default_factory=list)
    failures: dict[str, int] = field(default_factory=dict)
    truncated: int = 0
    spellings: set[str] = field(default_factory=set)

    def add(self, row: StatsRow) -> None:
        self.requests += 1
        self.spellings.add(row.site)
        self.by_state[row.state if row.terminal else "in_flight"] += 1
        self.admitted += row.admitted
        self.prompt_tokens += row.prompt_tokens or 0
        self.completion_tokens += row.completion_tokens or 0
        if row.generation_latency_ms is not None:
            self.latencies.append(row.generation_latency_ms)
        if row.generation_wait_ms is not None or row.publish_wait_ms is not None:
            self.waits.append((row.generation_wait_ms or 0) + (row.publish_wait_ms or 0))
        if row.state in FAILED:
            reason = row.error_class or "unknown"
            self.failures[reason] = self.failures.get(reason, 0) + 1
        self.truncated += row.truncated

    def stats(self, site: str) -> SiteStats:
        by_state, waits = self.by_state, self.waits
        return SiteStats(
            site=site,
            requests=self.requests,
            by_state=by_state,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            latency_p50_ms=percentile(self.latencies, 50),
            latency_p95_ms=percentile(self.latencies, 95),
            limited_rate=by_state[State.LIMITED.value] / self.requests if self.requests else None,
            failure_rate=(
                sum(by_state[s] for s in FAILED) / self.admitted if self.admitted else None
            ),
            waited=sum(1 for wait in waits if wait >= WAITED_MS),
            wait_p95_ms=percentile(waits, 95),
            wait_max_ms=max(waits, default=None),
            failures=dict(sorted(self.failures.items(), key=lambda item: (-item[1], item[0]))),
            truncated=self.truncated,
            spellings=sorted(self.spellings) if site != "*" else [],
        )


WAITED_MS = 1000  # a request "waited" when its steps waited at least this long in all


# the table's columns for the states, in the order a reader scans them
_STATE_COLUMNS = {
    "published": "published",
    "limited": "limited",
    "skipped": "skipped",
    "rejected_duplicate": "duplicate",
    "generation_failed": "gen failed",
    "publish_failed": "pub failed",
    "in_flight": "in flight",
}


def render_stats(stats: Sequence[SiteStats]) -> str:
    if not stats:
        return "no requests in this range"
    headers = [
        "site",
        "requests",
        *_STATE_COLUMNS.values(),
        "tokens in",
        "tokens out",
        "p50 ms",
        "p95 ms",
        "waited",
        "wait p95",
        # rates, titled apart from the counts of the same states ("limited" twice read as one)
        "limited %",
        "failed %",
    ]
    rows = [
        [
            s.site,
            str(s.requests),
            *(str(s.by_state.get(k, 0)) for k in _STATE_COLUMNS),
            str(s.prompt_tokens),
            str(s.completion_tokens),
            _or_dash(s.latency_p50_ms),
            _or_dash(s.latency_p95_ms),
            str(s.waited),
            _or_dash(s.wait_p95_ms),
            _rate(s.limited_rate),
            _rate(s.failure_rate),
        ]
        for s in stats
    ]
    why = [
        f"  {s.site}: " + ", ".join(f"{reason} {count}" for reason, count in s.failures.items())
        for s in stats
        if s.failures and s.site != "*"
    ]
    cut = [f"  {s.site}: {s.truncated}" for s in stats if s.truncated and s.site != "*"]
    text = table(headers, rows, numeric_from=1)
    if why:
        text += "\n\nwhy requests failed (error class: requests)\n" + "\n".join(why)
    if cut:
        text += (
            "\n\ntexts cut at their token cap, kept as cut (raise the campaign's max_tokens,"
            " or max_completion_tokens when it gives that): "
            "requests\n" + "\n".join(cut)
        )
    return text


def stats_json(
    store: ProjectionStore, stats: Sequence[SiteStats], since_ms: int | None, until_ms: int | None
) -> dict[str, Any]:
    """``stats --json``: its ``range`` is of the requests' event times (``by``: the times they
    were judged at, Talkable's ``usage_limit.current_time``, the projection's
    ``received_at_ms``), which it called ``received_at`` as if it were when they arrived."""
    return {
        "source": source_of(store),
        "range": {"since": iso(since_ms), "until": iso(until_ms), "by": "event_time"},
        "sites": [asdict(s) for s in stats],
    }


# --- text tables ------------------------------------------------------------------------------


def table(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    numeric_from: int = 99,
    indent: str = "",
) -> str:
    """A plain-text table; columns from ``numeric_from`` on are right-aligned."""
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        parts = [
            c.rjust(w) if i >= numeric_from else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return (indent + "  ".join(parts)).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, rows)])


def _or_dash(value: int | None, unit: str = "") -> str:
    return "-" if value is None else f"{value}{unit}"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"
