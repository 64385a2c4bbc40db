"""``talkstream audit`` and ``stats`` over a projection (SQLite and PostgreSQL), and what
``replay`` refuses before it touches Kafka."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result
from sqlalchemy import text
from sqlalchemy.exc import ArgumentError

from streams.ops.commands import register
from streams.projection.engine import describe_database_error
from streams.projection.store import ProjectionStore
from tests.postgres import database_url, postgres_server  # noqa: F401  (fixtures)
from tests.projection_support import (
    T0_MS,
    Log,
    mixed_log,
    snapshot,
    stored_requests,
    stored_transitions,
)
from tests.support import free_port


def talkstream(*args: str) -> Result:
    group = click.Group("talkstream")
    register(group)
    return CliRunner().invoke(group, list(args), catch_exceptions=False)


@pytest.fixture
def projected(database_url: str) -> str:  # noqa: F811
    store = ProjectionStore.from_url(database_url)
    store.apply(mixed_log().records)
    store.close()
    return database_url


def test_a_persons_requests_judged_in_one_second_are_listed_by_arrival(
    database_url: str,  # noqa: F811
):
    # Talkable renders the event time in whole seconds: three webhooks of one second differ
    # by their arrival only (the ids run against it)
    store = ProjectionStore.from_url(database_url)
    with store.engine.begin() as connection:
        for request_id, arrived in (("c", 100), ("b", 300), ("a", 200), ("z", None)):
            connection.execute(
                text(
                    "INSERT INTO requests (request_id, site, person, state, terminal,"
                    " received_at_ms, arrived_at_ms, updated_at_ms, attempts)"
                    " VALUES (:id, 'acme', 'acme:ada@example.com', 'limited', true, :at,"
                    " :arrived, :at, 0)"
                ),
                {"id": request_id, "at": T0_MS, "arrived": arrived and T0_MS + arrived},
            )
    assert [r.request_id for r in store.requests_of("acme:ada@example.com")] == [
        "b",
        "a",
        "c",
        "z",  # projected before arrivals were recorded
    ]
    store.close()


def _guides_daily_query(server: str, log: Log, *before: str) -> list[Any]:
    """The rows of docs/consumers.md's daily query on a fresh PostgreSQL database holding
    ``log``'s projection, after the session statements ``before``."""
    from sqlalchemy import create_engine

    from tests.postgres import fresh_postgres_database

    guide = (Path(__file__).resolve().parents[2] / "docs" / "consumers.md").read_text()
    [query] = re.findall(r"```sql\n(.*?)```", guide, re.S)
    databases = fresh_postgres_database(server)
    url = next(databases)
    store = ProjectionStore.from_url(url)
    store.apply(log.records)
    store.close()
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            for statement in before:
                connection.execute(text(statement))
            return list(connection.execute(text(query)).all())
    finally:
        engine.dispose()
        next(databases, None)


def test_the_consumer_guides_daily_query_counts_utc_days_in_any_session_time_zone(
    postgres_server: str,  # noqa: F811
):
    """docs/consumers.md's example truncated ``to_timestamp(...)``, a timestamptz, to the day
    of the session's time zone: a team's session in Los Angeles counted a request received at
    01:00 UTC on January 1st in December 31st."""
    import datetime

    log = Log()
    log.full("early-utc", at_ms=T0_MS + 3_600_000)  # 2026-01-01T01:00:00Z
    rows = _guides_daily_query(postgres_server, log, "SET TIME ZONE 'America/Los_Angeles'")
    assert [(r.site, r.day, r.published) for r in rows] == [
        ("acme", datetime.datetime(2026, 1, 1), 1)
    ]


def test_the_consumer_guides_daily_query_counts_a_site_in_any_case_as_one(
    postgres_server: str,  # noqa: F811
):
    """docs/consumers.md's "published requests and tokens per site and day" grouped by
    ``site`` as each webhook typed it: a Talkable site's webhooks spelling it ``Acme`` and
    ``acme`` (one site for talkstream, its usage limits, ``stats`` and the console) were two
    rows of one published request each."""
    import datetime

    log = Log()
    log.full("typed-up", site="Acme")
    log.full("typed-down", site="acme", email="bob@example.com", at_ms=T0_MS + 60_000)
    rows = _guides_daily_query(postgres_server, log)
    assert [(r.site, r.day, r.published, r.tokens) for r in rows] == [
        ("acme", datetime.datetime(2026, 1, 1), 2, 84)
    ]


def test_audit_shows_a_requests_history_and_where_it_came_from(projected: str):
    result = talkstream("audit", "--request-id", "retry-1", "--database-url", projected)
    assert result.exit_code == 0, result.output
    out = result.output
    assert out.startswith("source: SQL projection ")
    assert "request retry-1" in out and "state published (terminal)" in out
    assert "2026-01-01T00:00:01.000+00:00" in out  # received, in UTC
    assert "attempt 1 failed (RateLimitError); re-issued" in out
    lines = [line.split() for line in out.splitlines() if line.startswith("  2026-")]
    assert [(cells[1], cells[2]) for cells in lines] == [
        ("received", "0"),
        ("admitted", "0"),
        ("generating", "1"),
        ("generating", "2"),
        ("generated", "2"),
        ("publishing", "1"),
        ("published", "1"),
    ]
    assert "cut at its token cap" not in out


def test_audit_reads_a_request_id_pasted_with_spaces_around_it(projected: str):
    """--site and --email were read trimmed; an id copied with a space or a line's end was
    "no request  retry-1 in this projection"."""
    result = talkstream("audit", "--request-id", " retry-1\n", "--database-url", projected)
    assert result.exit_code == 0, result.output
    assert "request retry-1\n" in result.output


def redriven_log() -> Log:
    """A text Talkable refused (SiteNotFound: publish_failed), redriven once the site was
    fixed: one published, the other still publishing."""
    log = Log()
    log.redriven("redo-1", email="ada@example.com", lands=True)
    log.redriven("redo-2", email="bob@example.com", lands=False)
    return log


def test_audit_tells_an_earlier_failure_from_the_outcome(projected: str, tmp_path: Path):
    """The latest failure is kept once a redrive or a retry succeeded (docs/consumers.md):
    `state published (terminal)` beside `error SiteNotFound` read as the request's outcome."""
    url = f"sqlite:///{tmp_path / 'p.sqlite3'}"
    store = ProjectionStore.from_url(url)
    store.apply(redriven_log().records)
    store.close()

    def summary(request_id: str, database: str) -> str:
        out = talkstream("audit", "--request-id", request_id, "--database-url", database).output
        [line] = [line for line in out.splitlines() if "attempts" in line]
        return line

    published = talkstream("audit", "--request-id", "redo-1", "--database-url", url).output
    assert "state published (terminal)" in published
    assert summary("redo-1", url).endswith(
        "   earlier error SiteNotFound (before it was published)"
    )
    assert "   error SiteNotFound" not in published.split("\n\n")[0]
    [failed_step] = [line for line in published.splitlines() if " publish_failed " in line]
    assert failed_step.endswith("SiteNotFound: Talkable answered 404: no such site")
    assert summary("redo-2", url).endswith(
        "   earlier error SiteNotFound (an earlier attempt's: it is in flight)"
    )
    # a failed request's error is its outcome, named as before
    assert summary("fail-1", projected).endswith("   error AuthenticationError")
    # --json keeps its field names: error_class is the latest failure, whatever the state
    said = json.loads(
        talkstream("audit", "--request-id", "redo-1", "--database-url", url, "--json").output
    )
    [request] = said["requests"]
    assert (request["state"], request["error_class"]) == ("published", "SiteNotFound")


def test_a_failed_attempt_re_issued_is_in_its_re_issues_cause_not_in_error_class(
    tmp_path: Path,
):
    """docs/consumers.md said the latest failure (``error_class``) is kept when a retry or
    a redrive then succeeded, and that ``audit`` says ``earlier error X`` of a failure a
    retry moved past. A retriable failure the ledger re-issues (attempts remaining) ends no
    step: no ``GenerationFailed``, so no ``error_class`` on [lifecycle] nor in the
    projection, and ``audit`` names no earlier error; the re-issue's cause says it. The
    guide says so now, quoting that cause."""
    url = f"sqlite:///{tmp_path / 'p.sqlite3'}"
    log = Log()
    r = log.received("retried", at_ms=T0_MS)
    log.failed(r, at_ms=T0_MS + 500, retriable=True)
    log.generated(r, at_ms=T0_MS + 900, attempt=2)
    log.published(r, at_ms=T0_MS + 1000)
    store = ProjectionStore.from_url(url)
    try:
        store.apply(log.records)
        row = store.request("retried")
        assert row is not None
        assert (row.state, row.attempts, row.error_class, row.error_message) == (
            "published",
            2,
            None,
            None,
        )
        [reissue] = [
            t
            for t in store.transitions("retried", 0)
            if (t.type, t.attempt) == ("GenerationStarted", 2)
        ]
    finally:
        store.close()
    assert reissue.error_class is None
    assert reissue.cause == "attempt 1 failed (RateLimitError); re-issued"
    out = talkstream("audit", "--request-id", "retried", "--database-url", url).output
    [summary] = [line for line in out.splitlines() if "attempts" in line]
    assert summary.endswith("attempts 2")  # no "earlier error X"

    guide = " ".join(
        (Path(__file__).resolve().parents[2] / "docs" / "consumers.md").read_text().split()
    )
    assert "kept when a retry" not in guide and "a retry or a redrive runs" not in guide
    assert guide.count(f"`{reissue.cause}`") >= 2  # the topic's field table, the projection's


def test_a_request_redriven_and_in_flight_keeps_its_end_and_counts_in_its_state_now(
    tmp_path: Path,
):
    """docs/consumers.md said a request in flight again after a redrive "stays where it
    ended" in ``ended_minutes``: it stays in the minute it failed in, but counted under the
    state it is in (``publishing``), not ``publish_failed``; and its ``terminal_at_ms``
    stays while ``terminal`` is false. A team summing ``ended_minutes`` by state, or
    counting ended requests by ``terminal_at_ms``, counted it as ended; the guide says
    which states to sum now."""
    from tests.projection_support import ended_minutes

    log = Log()
    log.redriven("redo", lands=False)  # failed at T0 + 900 ms, redriven, publishing again
    store = ProjectionStore.from_url(f"sqlite:///{tmp_path / 'p.sqlite3'}")
    try:
        store.apply(log.records)
        row = store.request("redo")
        assert row is not None
        assert (row.state, row.terminal, row.terminal_at_ms) == ("publishing", False, T0_MS + 900)
        assert ended_minutes(store) == [(T0_MS // 60_000, "acme", "publishing", 1, 42)]
    finally:
        store.close()
    guide = " ".join(
        (Path(__file__).resolve().parents[2] / "docs" / "consumers.md").read_text().split()
    )
    ended = guide.split("`ended_minutes` (migration 0007)", 1)[1].split("For example", 1)[0]
    assert "stays where it ended" not in ended
    assert "`publishing`, `admitted` or `generating`" in ended
    assert "keeps it while the redrive runs" in guide  # terminal_at_ms, among the columns


def test_audit_and_stats_say_which_texts_were_cut_at_their_token_cap(projected: str):
    """A text cut at the completion's cap is published as it is, and its TextGenerated says
    so (lifecycle schema 5): neither `audit` nor `stats` could tell the operator. The cap is
    named as the console names it, by no name: it went as `max_tokens` or as
    `max_completion_tokens` (a reasoning model's), which the request does not record."""
    out = talkstream("audit", "--request-id", "pub-2", "--database-url", projected).output
    [line] = [line for line in out.splitlines() if "tokens (prompt+completion)" in line]
    assert "tokens (prompt+completion) 12+30 (text cut at its token cap)   generation" in line
    [step] = [line for line in out.splitlines() if "  generated  " in line]
    assert step.endswith("text generated (text cut at its token cap)")
    said = json.loads(
        talkstream("audit", "--request-id", "pub-2", "--database-url", projected, "--json").output
    )
    assert [r["truncated"] for r in said["requests"]] == [True]
    whole = talkstream("audit", "--request-id", "pub-1", "--database-url", projected, "--json")
    assert [r["truncated"] for r in json.loads(whole.output)["requests"]] == [False]

    table = talkstream("stats", "--database-url", projected).output
    assert (
        "texts cut at their token cap, kept as cut (raise the campaign's max_tokens,"
        " or max_completion_tokens when it gives that)"
    ) in table
    assert "cut at max_tokens" not in out + table  # nor by one of its two names
    cut = table.split("texts cut at their token cap")[1].split("\n\n")[0].splitlines()[1:]
    assert cut == ["  acme: 1"]  # globex's texts were not cut, and "*" is not a site
    sites = json.loads(talkstream("stats", "--database-url", projected, "--json").output)
    assert {s["site"]: s["truncated"] for s in sites["sites"]} == {"acme": 1, "globex": 0, "*": 1}


def test_audit_names_the_talkable_event_a_published_request_landed_as(projected: str):
    """The number Talkable holds a published text's event under (the campaign's own, or the
    request's default) was in no column, and `audit` could not say it: with the site, it is
    what finds the request's event in Talkable. A request whose publication was reported
    before lifecycle schema 8 says none."""
    out = talkstream("audit", "--request-id", "pub-1", "--database-url", projected).output
    assert "  site acme   person acme:ada@example.com   Talkable event order-42-complete\n" in out
    said = json.loads(
        talkstream("audit", "--request-id", "pub-1", "--database-url", projected, "--json").output
    )
    assert [r["event_number"] for r in said["requests"]] == ["order-42-complete"]
    out = talkstream("audit", "--request-id", "retry-1", "--database-url", projected).output
    assert "Talkable event" not in out
    said = json.loads(
        talkstream("audit", "--request-id", "retry-1", "--database-url", projected, "--json").output
    )
    assert [r["event_number"] for r in said["requests"]] == [None]


def test_audit_json_names_the_talkable_event_each_publication_attempted(projected: str):
    """A publication's transitions keep the Talkable event number it attempted (lifecycle
    schema 9) or landed under (schema 8) (``transitions.event_number``, migration 0010);
    `audit --json` gave no transition one. retry-1's landing was reported before schema 8:
    its start says the number attempted, its landing none."""

    def numbered(request_id: str) -> list[tuple[str, str]]:
        said = json.loads(
            talkstream(
                "audit", "--request-id", request_id, "--database-url", projected, "--json"
            ).output
        )
        [request] = said["requests"]
        return [(t["type"], t["event_number"]) for t in request["transitions"] if t["event_number"]]

    assert numbered("pub-1") == [
        ("PublicationStarted", "order-42-complete"),
        ("CompletionPublished", "order-42-complete"),
    ]
    assert numbered("retry-1") == [("PublicationStarted", "generate_text_complete-retry-1")]
    assert numbered("fail-1") == []


def test_audit_by_person_normalizes_the_email_and_lists_newest_first(projected: str):
    result = talkstream(
        "audit",
        "--site",
        "acme",
        "--email",
        " ADA@Example.com ",
        "--database-url",
        projected,
        "--json",
    )
    assert result.exit_code == 0, result.output
    answer = json.loads(result.output)
    assert answer["source"]["kind"] == "sql-projection"
    assert [r["request_id"] for r in answer["requests"]] == ["lim-1", "pub-2", "pub-1"]
    limited = answer["requests"][0]
    assert limited["state"] == "limited"
    assert limited["transitions"][-1]["cause"] == "usage window full: 2 of 2 used"
    assert limited["transitions"][-1]["window_count"] == 2
    # as text, the count comes first: a person's many requests are hundreds of lines
    text = talkstream(
        "audit", "--site", "acme", "--email", "ada@example.com", "--database-url", projected
    ).output
    assert text.splitlines()[1] == "3 requests of acme:ada@example.com, newest first"
    assert text.index("request lim-1") < text.index("request pub-2") < text.index("request pub-1")


def test_audit_by_the_id_the_ingress_answered_shows_the_requests_of_the_same_params_too(
    database_url: str,  # noqa: F811
):
    # the ingress answers every webhook of the same params with the same request_id; the
    # ledger names a repeat, and the same params once the dedupe window passed, after it
    log = Log()
    log.received("f00d", delivery="d1")
    log.received("f00d", delivery="d2", at_ms=T0_MS + 1000)  # Talkable's retry: rejected
    log.received("f00d0", delivery="d1")  # another request whose id starts the same
    store = ProjectionStore.from_url(database_url)
    store.apply(log.records)
    store.close()
    answer = json.loads(
        talkstream("audit", "--request-id", "f00d", "--database-url", database_url, "--json").output
    )
    found = [(r["request_id"], r["state"], r["duplicate_of"]) for r in answer["requests"]]
    assert found == [
        ("f00d", "generating", None),
        ("f00d~f00d/d2", "rejected_duplicate", "f00d"),
    ]
    # a repeat's own id names it alone
    answer = json.loads(
        talkstream(
            "audit", "--request-id", "f00d~f00d/d2", "--database-url", database_url, "--json"
        ).output
    )
    assert [r["request_id"] for r in answer["requests"]] == ["f00d~f00d/d2"]


def test_audit_of_an_unknown_request_says_so_and_fails(projected: str):
    """What it looked for is named (it said "no such request"), so a mistyped id or email
    shows."""
    result = talkstream("audit", "--request-id", "nope", "--database-url", projected)
    assert result.exit_code == 1
    assert result.output.splitlines()[-1] == (
        "no request nope in this projection (a webhook answered moments ago may not be "
        "projected yet)"
    )
    person = talkstream(
        "audit", "--site", "acme", "--email", " Nobody@Example.com", "--database-url", projected
    )
    assert person.exit_code == 1
    assert person.output.splitlines()[-1].startswith(
        "no request of acme:nobody@example.com in this projection"
    )


def test_audit_needs_an_id_or_a_person(projected: str):
    assert talkstream("audit", "--site", "acme", "--database-url", projected).exit_code == 2
    both = talkstream("audit", "--request-id", "x", "--site", "a", "--email", "b@c.d")
    assert both.exit_code == 2
    # it was told to give what it was given: "give --request-id, or both --site and --email"
    assert "Error: give --request-id, or --site and --email: not both" in both.output
    assert "not both" in talkstream("audit", "--request-id", "x", "--email", "b@c.d").output


def test_audit_without_a_projection_says_so_and_creates_nothing(tmp_path: Path):
    missing = tmp_path / "nothing.sqlite3"
    result = talkstream("audit", "--request-id", "x", "--database-url", f"sqlite:///{missing}")
    assert result.exit_code == 1
    assert result.output == (
        f"Error: no projection at sqlite:///{missing}: a worker's projector makes it when it "
        "starts; is --database-url the workers' database?\n"
    )
    assert not missing.exists()


@pytest.mark.parametrize("command", [("audit", "--request-id", "x"), ("stats",)])
def test_without_the_default_projection_the_data_directory_it_looked_in_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: tuple[str, ...]
):
    """Run from another folder than ``make dev``'s, the default projection (under the data
    directory, ``.data`` of the current directory) is not there: the error names the setting
    that chose it and the folder it looked in (it said "no projection at URL" alone)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TALKSTREAM_DATA_DIR", raising=False)
    monkeypatch.delenv("TALKSTREAM_DATABASE_URL", raising=False)
    monkeypatch.delenv("TALKSTREAM_APP_ID", raising=False)
    result = talkstream(*command)
    assert result.exit_code == 1
    data = tmp_path.resolve() / ".data"
    assert result.output == (
        f"Error: no projection at sqlite:///{data}/talkstream.sqlite3: a worker's projector "
        f"makes it when it starts; the default is under TALKSTREAM_DATA_DIR ({data}; unset: "
        ".data in the current directory): run this where the workers run, with their "
        "TALKSTREAM_DATA_DIR, or give --database-url\n"
    )
    assert not data.exists()
    monkeypatch.setenv("TALKSTREAM_DATABASE_URL", f"sqlite:///{tmp_path}/other.sqlite3")
    assert "is TALKSTREAM_DATABASE_URL the workers' database?" in talkstream(*command).output


def test_stats_per_site_counts_tokens_latency_and_rates(
    projected: str, monkeypatch: pytest.MonkeyPatch
):
    # the requests are read in batches (of 10,000): here of 3, so the 8 take three
    monkeypatch.setattr("streams.projection.store.STATS_BATCH", 3)
    result = talkstream("stats", "--database-url", projected, "--json")
    assert result.exit_code == 0, result.output
    sites = {s["site"]: s for s in json.loads(result.output)["sites"]}
    acme = sites["acme"]
    assert acme["requests"] == 5
    assert acme["by_state"] == {
        "generation_failed": 1,
        "limited": 1,
        "publish_failed": 0,
        "published": 3,
        "rejected_duplicate": 0,
        "skipped": 0,
        "in_flight": 0,
    }
    assert (acme["prompt_tokens"], acme["completion_tokens"]) == (36, 90)
    # generation latencies 700, 900, 1200 ms: nearest rank
    assert (acme["latency_p50_ms"], acme["latency_p95_ms"]) == (900, 1200)
    assert acme["limited_rate"] == pytest.approx(1 / 5)
    assert acme["failure_rate"] == pytest.approx(1 / 4)  # of the admitted
    # what waited for its upstream target, how long, and why requests failed
    assert (acme["waited"], acme["wait_max_ms"]) == (1, 4000)
    assert acme["failures"] == {"AuthenticationError": 1}
    globex = sites["globex"]
    assert globex["by_state"]["skipped"] == 1 and globex["by_state"]["rejected_duplicate"] == 1
    assert sites["*"]["requests"] == 8


def test_stats_over_a_time_range_and_as_a_table(projected: str):
    since, until = "2026-01-01T00:00:03Z", str((T0_MS + 5000) // 1000)
    result = talkstream(
        "stats", "--since", since, "--until", until, "--site", "acme", "--database-url", projected
    )
    assert result.exit_code == 0, result.output
    header, _, row = result.output.splitlines()[2:5]
    # the range is of event times, not of when the webhooks were received (that said so)
    assert result.output.splitlines()[0].endswith(
        "; judged (event time) from 2026-01-01T00:00:03.000+00:00 "
        "until 2026-01-01T00:00:05.000+00:00"
    )
    assert header.split()[:2] == ["site", "requests"]
    titles = re.split(r"\s{2,}", header.strip())  # each column's title says which it is
    assert len(titles) == len(set(titles)) == len(row.split()), titles
    assert titles[-2:] == ["limited %", "failed %"]
    cells = row.split()
    assert cells[:2] == ["acme", "2"]  # fail-1 and pub-2: received in [3 s, 5 s)
    # and so --json says it: the range of the event times (it said "by": "received_at")
    as_json = talkstream(
        "stats", "--since", since, "--until", until, "--site", "acme", "--database-url", projected,
        "--json",
    )  # fmt: skip
    assert json.loads(as_json.output)["range"] == {
        "since": "2026-01-01T00:00:03.000+00:00",
        "until": "2026-01-01T00:00:05.000+00:00",
        "by": "event_time",
    }
    assert cells[-2:] == ["0.0%", "50.0%"]
    assert "why requests failed" in result.output and "acme: AuthenticationError 1" in result.output
    assert "waited: requests that waited 1 s or more in their upstream targets' queues" in (
        " ".join(result.output.split())
    )
    # a site the projection has, with no request in the range: an empty range, said so
    nobody = talkstream("stats", "--site", "acme", "--until", "1", "--database-url", projected)
    assert nobody.exit_code == 0 and "no requests of site 'acme' in this range" in nobody.output
    assert nobody.output.splitlines()[0].endswith(
        "; judged (event time) from the first until 1970-01-01T00:00:01.000+00:00"
    )
    anytime = talkstream("stats", "--site", "acme", "--database-url", projected)
    assert anytime.output.splitlines()[0].endswith(
        "; judged (event time) from the first to the last"
    )


@pytest.mark.parametrize(
    "command",
    [
        ("stats",),
        ("stats", "--json"),
        ("audit", "--email", "ada@example.com"),
        ("redrive",),
        ("redrive", "--dry-run"),
    ],
)
def test_a_site_the_projection_has_not_is_refused_naming_the_sites_it_has(
    projected: str, command: tuple[str, ...], monkeypatch: pytest.MonkeyPatch
):
    """`stats --site nosuch` said "no requests of site 'nosuch' in this range" and exited 0,
    as for a site with nothing in the range, where `audit` said no such person and exited 1,
    and `redrive` read every letter to redrive none (exit 0): a mistyped site looked like a
    quiet one. Each refuses it as `migrate --to` refuses a migration it has not: the option,
    the name, the sites there are (exit 2), `redrive` before it reads a letter (no broker
    here: one it reached would fail otherwise)."""
    monkeypatch.setenv("TALKSTREAM_KAFKA_BOOTSTRAP", f"127.0.0.1:{free_port()}")
    refused = talkstream(*command, "--site", " Acmex", "--database-url", projected)
    assert refused.exit_code == 2, refused.output
    assert refused.output.splitlines()[-1] == (
        "Error: Invalid value for '--site': no site 'Acmex' in this projection (it has 2 "
        "sites: acme, globex)"
    )


def test_an_unknown_site_names_the_sites_like_it_first_and_a_few_of_the_rest(tmp_path: Path):
    """Thousands of sites are not listed: those whose name contains what was typed first, a
    site spelled several ways once (named as the console names it), then the count of the
    rest; an empty projection says it has none."""
    url = f"sqlite:///{tmp_path / 'p.sqlite3'}"
    store = ProjectionStore.from_url(url)
    store.close()
    empty = talkstream("stats", "--site", "shop", "--database-url", url)
    assert empty.exit_code == 2
    assert "no site 'shop' in this projection: it has no requests yet" in empty.output
    log = Log()
    for n in range(30):
        log.received(f"r-{n}", site=f"site-{n:02d}")
    log.received("upper", site="Shop")
    log.received("lower", site="shop")
    log.received("other", site="my-shop-2")
    store = ProjectionStore.from_url(url)
    store.apply(log.records)
    store.close()
    refused = talkstream("stats", "--site", "SHOPS", "--database-url", url)
    assert refused.exit_code == 2
    said = " ".join(refused.output.split())
    assert "no site 'SHOPS' in this projection (it has 32 sites: " in said
    listed = said.split("sites: ")[1].removesuffix(")").split(", ")
    assert listed[:2] == ["my-shop-2", "shop"], listed  # named like it, then by name
    assert len(listed) == 21 and listed[-1] == "and 12 more", listed
    assert "Shop" not in listed


def test_a_site_typed_in_another_case_is_that_site_as_the_console_takes_it(projected: str):
    """`stats --site ACME` said "no requests of site 'ACME'" and `audit --site ACME` found no
    one, where the console's search takes `ACME` for `acme`: the CLI reads a site in any
    case too, as the projection spells it; a name no site has still finds nothing."""
    assert talkstream("stats", "--site", "acme", "--database-url", projected, "--json").output
    as_typed = json.loads(
        talkstream("stats", "--site", "ACME", "--database-url", projected, "--json").output
    )
    assert [s["site"] for s in as_typed["sites"]] == ["acme"]
    audit = talkstream(
        "audit", "--site", "Acme", "--email", "ada@example.com", "--database-url", projected
    )
    assert audit.exit_code == 0, audit.output
    assert "request pub-1" in audit.output
    nobody = talkstream("stats", "--site", "ACMEX", "--database-url", projected)
    assert "no site 'ACMEX' in this projection" in nobody.output


def test_a_site_its_webhooks_spelled_several_ways_is_one_site_in_any_case(tmp_path: Path):
    """`Shop` and `shop`, as the projection records each webhook's spelling: `stats --site
    SHOP` said "no requests of site 'SHOP'", then was refused (exit 2) naming the spellings,
    as `audit` and `redrive` were: two sites to the projection, while the ledger counts them
    one (schema 11: the person's key folds the site's case), and the publisher paces them as
    one. A name in any case now reads every spelling together: `stats` counts them as one
    site (shown as typed, the spellings said), `audit` finds the person's requests under each
    spelling, and under a key a record written before schema 11 carries (``Shop:...``); a
    spelling as it is spelled finds them all the same. (`redrive --site` compares a letter's
    site in any case: ``tests/unit/test_redrive.py``.)"""
    log = Log()
    log.received("upper-1", site="Shop")
    log.received("lower-1", site="shop")
    # written before schema 11: keyed by the site as typed, another person to the ledger then
    log.received("legacy-1", site="Shop", person="Shop:ada@example.com", delivery="d0")
    url = f"sqlite:///{tmp_path / 'p.sqlite3'}"
    store = ProjectionStore.from_url(url)
    store.apply(log.records)
    store.close()
    # the assertions before: exit 2, "Invalid value for '--site': 'SHOP' is 2 sites, spelled
    # apart only in case ... ('Shop', 'shop') ... give one as it is spelled"
    said = talkstream("stats", "--site", "SHOP", "--database-url", url)
    assert said.exit_code == 0, said.output
    assert "site 'SHOP': its webhooks spelled it 2 ways (Shop, shop), counted as one site" in (
        " ".join(said.output.split())
    )
    for typed in ("SHOP", "sHoP", "Shop", "shop"):
        counted = talkstream("stats", "--site", typed, "--database-url", url, "--json")
        assert counted.exit_code == 0, counted.output
        found = json.loads(counted.output)
        assert [(s["site"], s["requests"]) for s in found["sites"]] == [(typed, 3)]
        assert found["spellings"] == ["Shop", "shop"]
        audit = talkstream(
            "audit", "--site", typed, "--email", "ada@example.com", "--database-url", url
        )
        assert audit.exit_code == 0, audit.output
        shown = {r for r in ("upper-1", "lower-1", "legacy-1") if f"request {r}" in audit.output}
        # before schema 11's key, ``shop`` found only its own (``"upper-1" not in``), and before
        # this, a spelling found the keys of its own spelling only: ``shop`` no ``legacy-1``
        assert shown == {"upper-1", "lower-1", "legacy-1"}, (typed, audit.output)


def test_stats_counts_a_sites_spellings_as_one_row_without_site_too(tmp_path: Path):
    """`stats --site shop` counted `Shop` and `shop` as one site, while `stats` alone gave each
    spelling a row of its own, as if they were two sites (the ledger counts them one, the
    publisher paces them one). Now a site is one row either way: named by its one spelling
    (``Acme``), else lower-cased, as the ledger and the pacing name it (``shop``), the
    spellings said; its percentiles are of all its requests, not merged from each spelling's
    (``Shop``'s p50 is 200 and ``shop``'s 900: together 300)."""
    log = Log()
    for i, (site, latency) in enumerate(
        (("Shop", 100), ("Shop", 200), ("Shop", 300), ("shop", 900), ("shop", 1000), ("Acme", 700))
    ):
        log.full(f"r-{i}", site=site, email=f"p{i}@example.com", latency_ms=latency)
    url = f"sqlite:///{tmp_path / 'p.sqlite3'}"
    store = ProjectionStore.from_url(url)
    store.apply(log.records)
    store.close()
    result = talkstream("stats", "--database-url", url, "--json")
    assert result.exit_code == 0, result.output
    sites = json.loads(result.output)["sites"]
    # before: [('Acme', 1, ...), ('Shop', 3, ...), ('shop', 2, ...), ('*', 6, ...)]
    assert [(s["site"], s["requests"], s.get("spellings")) for s in sites] == [
        ("Acme", 1, ["Acme"]),
        ("shop", 5, ["Shop", "shop"]),
        ("*", 6, []),
    ]
    shop = sites[1]
    assert shop["by_state"]["published"] == 5
    assert (shop["latency_p50_ms"], shop["latency_p95_ms"]) == (300, 1000)
    table = talkstream("stats", "--database-url", url)
    assert table.exit_code == 0, table.output
    assert (
        "sites their webhooks spelled several ways, each counted as one site: shop (Shop, shop)"
        in table.output
    )
    rows = [line.split()[:2] for line in table.output.splitlines()]
    assert ["shop", "5"] in rows and ["Acme", "1"] in rows
    assert not any(row and row[0] == "Shop" for row in rows), table.output
    # the same site as --site reads it: one row, its p50 the same
    one = json.loads(talkstream("stats", "--site", "SHOP", "--database-url", url, "--json").output)
    assert [(s["site"], s["requests"], s["latency_p50_ms"]) for s in one["sites"]] == [
        ("SHOP", 5, 300)
    ]


def test_stats_refuses_a_time_it_cannot_read(projected: str):
    result = talkstream("stats", "--since", "yesterday-ish", "--database-url", projected)
    assert result.exit_code == 2 and "ISO-8601" in result.output
    assert "Invalid value for '--since': 'yesterday-ish' is not a time" in result.output
    for typed, says in (("inf", "must be finite"), ("99999999999999999999", "out of range")):
        result = talkstream("stats", "--since", typed, "--database-url", projected)
        assert result.exit_code == 2 and says in result.output, result.output


@pytest.mark.parametrize("command", ["stats", "redrive"])
def test_a_range_that_ends_before_it_starts_is_refused_not_reported_empty(
    command: str, projected: str
):
    """An age counts back from now: ``--since 1h --until 2h`` ends an hour before it starts."""
    database = ["--database-url", projected] if command == "stats" else ["--dry-run"]
    result = talkstream(command, "--since", "1h", "--until", "2h", *database)
    assert result.exit_code == 2, result.output
    assert "Invalid value for '--since': " in result.output
    assert " is after --until " in result.output and "the range is empty" in result.output
    # the same range the right way round is read (stats: an hour with nothing in it)
    if command == "stats":
        assert talkstream("stats", "--since", "2h", "--until", "1h", *database).exit_code == 0


def test_replay_refuses_a_database_that_holds_a_projection(projected: str):
    before = ProjectionStore.from_url(projected)
    try:
        tables = snapshot(before)
        result = talkstream("replay", "--database-url", projected)
        assert result.exit_code == 1
        assert "already holds a projection" in result.output and "--force" in result.output
        assert snapshot(before) == tables
    finally:
        before.close()


def test_replay_verify_reads_topics_only():
    result = talkstream("replay", "--verify", "--database-url", "sqlite://")
    assert result.exit_code == 2
    assert "Error: --verify reads the topics only: no --database-url (a rebuild's)" in result.output
    # --until is a rebuild's: never ignored by a verify, nor without a database to rebuild
    result = talkstream("replay", "--verify", "--until", "1h")
    assert result.exit_code == 2
    assert "Error: --verify reads the topics only: no --until (a rebuild's)" in result.output
    # --force too, named as the option given (it was told "no --database-url/--until")
    result = talkstream("replay", "--verify", "--force")
    assert result.exit_code == 2
    assert "Error: --verify reads the topics only: no --force (a rebuild's)" in result.output
    result = talkstream("replay", "--verify", "--force", "--database-url", "sqlite://")
    assert "no --database-url, --force (a rebuild's)" in result.output
    result = talkstream("replay", "--until", "1h")
    assert result.exit_code == 2 and "give --database-url: replay builds" in result.output


def test_a_projection_of_one_log_reads_the_same_on_both_databases(projected: str, tmp_path: Path):
    other = f"sqlite:///{tmp_path / 'other.sqlite3'}"
    store = ProjectionStore.from_url(other)
    store.apply(mixed_log().records)
    store.close()
    outputs = [
        talkstream("stats", "--database-url", url, "--json").output for url in (projected, other)
    ]
    first, second = (json.loads(o)["sites"] for o in outputs)
    assert first == second


def test_the_schemas_command_finds_no_drift():
    result = talkstream("schemas", "--check")
    assert result.exit_code == 0 and "match the models" in result.output


def test_times_of_an_unlimited_request_follow_its_receive_time(tmp_path: Path):
    log = Log()
    log.received("r1", at_ms=T0_MS + 123)
    url = f"sqlite:///{tmp_path / 'p.sqlite3'}"
    store = ProjectionStore.from_url(url)
    store.apply(log.records)
    store.close()
    answer = json.loads(
        talkstream("audit", "--request-id", "r1", "--database-url", url, "--json").output
    )
    request = answer["requests"][0]
    assert request["state"] == "generating" and request["terminal"] is False
    assert request["received_at"] == "2026-01-01T00:00:00.123+00:00"


def late_log() -> Log:
    """A webhook whose Liquid-rendered current_time was 44 s old when it reached the ingress,
    then generated 1.2 s after it arrived and published."""
    r = Log().received("late-1", at_ms=T0_MS, limit=3)  # judged at T0 (its current_time)
    arrived = T0_MS + 44_000
    log = Log()
    log.send(r.model_copy(update={"at_ms": arrived}))  # the ingress's clock: the arrival
    log.generated(r, at_ms=arrived + 1200, latency_ms=1100)
    log.published(r, at_ms=arrived + 1300)
    return log


def test_audit_shows_when_a_webhook_arrived_and_the_event_time_it_was_judged_at(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'p.sqlite3'}"
    store = ProjectionStore.from_url(url)
    store.apply(late_log().records)
    store.close()
    out = talkstream("audit", "--request-id", "late-1", "--database-url", url).output
    assert (
        "arrived 2026-01-01T00:00:44.000+00:00   judged at event time "
        "2026-01-01T00:00:00.000+00:00 (-44.000 s)"
    ) in out
    assert "finished 2026-01-01T00:00:45.300+00:00 (1.300 s after arrival)" in out
    lines = [line.split() for line in out.splitlines() if line.startswith("  2026-")]
    # the judgement is placed at the arrival; latencies are measured from it, not 44 s earlier
    assert [(c[0], c[1], c[3], c[4]) for c in lines] == [
        ("2026-01-01T00:00:44.000+00:00", "received", "+0.000", "s"),
        ("2026-01-01T00:00:44.000+00:00", "admitted", "+0.000", "s"),
        ("2026-01-01T00:00:44.000+00:00", "generating", "+0.000", "s"),
        ("2026-01-01T00:00:45.200+00:00", "generated", "+1.200", "s"),
        ("2026-01-01T00:00:45.200+00:00", "publishing", "+1.200", "s"),
        ("2026-01-01T00:00:45.300+00:00", "published", "+1.300", "s"),
    ]
    assert out.count("[judged at event time 2026-01-01T00:00:00.000+00:00]") == 3

    answer = json.loads(
        talkstream("audit", "--request-id", "late-1", "--database-url", url, "--json").output
    )
    request = answer["requests"][0]
    assert request["arrived_at"] == "2026-01-01T00:00:44.000+00:00"
    assert request["event_time"] == request["received_at"] == "2026-01-01T00:00:00.000+00:00"
    assert (request["event_offset_ms"], request["end_to_end_ms"]) == (-44_000, 1300)
    assert [t["since_arrival_ms"] for t in request["transitions"]] == [0, 0, 0, 1200, 1200, 1300]


def test_audit_lists_the_judgement_first_when_talkables_clock_was_ahead(tmp_path: Path):
    """A current_time 9 s ahead of the ingress's clock (it takes up to 300 s): the results
    came, on the executors' clock, before the event time, and the history listed the failure
    first and the webhook received 9 s after it arrived."""
    url = f"sqlite:///{tmp_path / 'p.sqlite3'}"
    r = Log().received("early-1", at_ms=T0_MS + 9_000, limit=3)  # judged at its current_time
    log = Log()
    log.send(r.model_copy(update={"at_ms": T0_MS}))  # the ingress's clock: the arrival
    log.generated(r, at_ms=T0_MS + 1200, latency_ms=1100)
    log.published(r, at_ms=T0_MS + 1300)
    store = ProjectionStore.from_url(url)
    store.apply(log.records)
    store.close()
    out = talkstream("audit", "--request-id", "early-1", "--database-url", url).output
    assert "finished 2026-01-01T00:00:01.300+00:00 (1.300 s after arrival)" in out
    lines = [line.split() for line in out.splitlines() if line.startswith("  2026-")]
    assert [(c[0], c[1], c[3]) for c in lines] == [
        ("2026-01-01T00:00:00.000+00:00", "received", "+0.000"),
        ("2026-01-01T00:00:00.000+00:00", "admitted", "+0.000"),
        ("2026-01-01T00:00:00.000+00:00", "generating", "+0.000"),
        ("2026-01-01T00:00:01.200+00:00", "generated", "+1.200"),
        ("2026-01-01T00:00:01.200+00:00", "publishing", "+1.200"),
        ("2026-01-01T00:00:01.300+00:00", "published", "+1.300"),
    ]
    assert out.count("[judged at event time 2026-01-01T00:00:09.000+00:00]") == 3
    answer = json.loads(
        talkstream("audit", "--request-id", "early-1", "--database-url", url, "--json").output
    )
    steps = answer["requests"][0]["transitions"]
    assert [(t["state"], t["judged"], t["since_arrival_ms"]) for t in steps] == [
        ("received", True, 0),
        ("admitted", True, 0),
        ("generating", True, 0),
        ("generated", False, 1200),
        ("publishing", False, 1200),
        ("published", False, 1300),
    ]


def test_audit_of_a_webhook_limited_on_arrival_says_it_finished_when_it_arrived(tmp_path: Path):
    """Recorded at its event time (44 s before it arrived), the judgement took no time."""
    url = f"sqlite:///{tmp_path / 'p.sqlite3'}"
    r = Log().received("late-lim", at_ms=T0_MS, limit=0)
    log = Log()
    log.send(r.model_copy(update={"at_ms": T0_MS + 44_000}))
    store = ProjectionStore.from_url(url)
    store.apply(log.records)
    store.close()
    out = talkstream("audit", "--request-id", "late-lim", "--database-url", url).output
    assert "state limited (terminal)" in out
    assert "finished 2026-01-01T00:00:44.000+00:00 (0.000 s after arrival)" in out
    answer = json.loads(
        talkstream("audit", "--request-id", "late-lim", "--database-url", url, "--json").output
    )
    request = answer["requests"][0]
    assert (request["terminal_at"], request["end_to_end_ms"]) == (
        "2026-01-01T00:00:44.000+00:00",
        0,
    )


def test_audit_of_a_request_projected_before_arrivals_were_recorded_says_so(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'p.sqlite3'}"
    store = ProjectionStore.from_url(url)
    store.apply(late_log().records)
    with store.engine.begin() as connection:  # as rows projected before migration 0002 are
        connection.execute(text("UPDATE requests SET arrived_at_ms = NULL"))
    store.close()
    out = talkstream("audit", "--request-id", "late-1", "--database-url", url).output
    assert "arrived - (not recorded: projected before arrivals were" in out
    assert "event time 2026-01-01T00:00:00.000+00:00" in out
    assert (
        "finished 2026-01-01T00:00:45.300+00:00 (45.300 s after the event time (arrival not "
        "recorded))"
    ) in out


def test_a_database_that_cannot_be_used_is_one_line_without_its_password():
    """A server that does not answer, a scheme SQLAlchemy does not know, a URL that is not one:
    each command that opens the projection ends with one line naming the database (from
    --database-url or TALKSTREAM_DATABASE_URL) and saying what the driver said, exit 1, no
    traceback, and never the password."""
    from streams.cli import main

    port = free_port()  # nothing listens there
    cases = {
        f"postgresql+psycopg://ada:s3cret-pw@127.0.0.1:{port}/db": (
            f"Error: the database postgresql+psycopg://ada:***@127.0.0.1:{port}/db cannot be "
            "used: OperationalError: connection failed"
        ),
        # Heroku's and many a compose file's scheme: the one SQLAlchemy knows is named (it
        # said "Can't load plugin: sqlalchemy.dialects:postgres")
        "postgres://ada:s3cret-pw@127.0.0.1/db": (
            "Error: the database URL cannot be used (postgres:// names no database SQLAlchemy "
            "knows: PostgreSQL's is postgresql+psycopg:// (or postgresql://)): set "
            "TALKSTREAM_DATABASE_URL or --database-url to sqlite:///PATH or "
            "postgresql+psycopg://USER:PASSWORD@HOST/DB"
        ),
        "nosuchdb://ada:s3cret-pw@127.0.0.1/db": (
            "Error: the database URL cannot be used (nosuchdb:// names no database SQLAlchemy "
            "knows): set"
        ),
        "not a url": "Error: the database URL cannot be used (Could not parse SQLAlchemy URL",
    }
    for url, said in cases.items():
        for command in (["audit", "--request-id", "r1"], ["stats"], ["replay"]):
            result = CliRunner().invoke(main, [*command, "--database-url", url])
            assert result.exit_code == 1, (command, url, result.output)
            assert result.output.startswith(said), (command, url, result.output)
            assert result.output.count("\n") == 1, result.output
            assert "s3cret-pw" not in result.output

    from_env = CliRunner(
        env={"TALKSTREAM_DATABASE_URL": f"postgresql+psycopg://ada:s3cret-pw@127.0.0.1:{port}/db"}
    ).invoke(main, ["stats"])
    assert from_env.exit_code == 1
    assert from_env.output.startswith(
        f"Error: the database postgresql+psycopg://ada:***@127.0.0.1:{port}/db cannot be used: "
    ), from_env.output

    echoed = ArgumentError("cannot use postgresql+psycopg://ada:s3cret-pw@db.example.com/x")
    assert "ada:***@db.example.com" in describe_database_error(echoed)


def test_a_url_that_names_no_usable_database_is_one_line_and_names_what_is_wrong(tmp_path: Path):
    """A dialect whose driver is not installed (talkstream installs psycopg 3, not psycopg2), an
    asyncio driver, a file that is not a SQLite database: each command that opens the
    projection ends with one line saying so, exit 1, no traceback, never the password; the
    file is left as it was."""
    from streams.cli import main

    notes = tmp_path / "notes.txt"
    notes.write_text("not a database\n" * 40)
    elsewhere = {"TALKSTREAM_DATA_DIR": str(tmp_path / "state")}
    cases = {
        "mysql://ada:s3cret-pw@127.0.0.1/db": (
            "Error: the database URL cannot be used (mysql needs the mysqldb driver, which is "
            "not installed: No module named 'MySQLdb'): set TALKSTREAM_DATABASE_URL or "
            "--database-url to sqlite:///PATH or postgresql+psycopg://USER:PASSWORD@HOST/DB"
        ),
        "postgresql+psycopg2://ada:s3cret-pw@127.0.0.1/db": (
            "Error: the database URL cannot be used (postgresql+psycopg2 needs the psycopg2 "
            "driver, which is not installed: No module named 'psycopg2')"
        ),
        "postgresql+psycopg_async://ada:s3cret-pw@127.0.0.1/db": (
            "Error: the database URL cannot be used (postgresql+psycopg_async is an asyncio "
            "driver: talkstream opens the projection synchronously)"
        ),
        f"sqlite:///{notes}": (
            f"Error: the database sqlite:///{notes} cannot be used: DatabaseError: file is not "
            "a database"
        ),
    }
    for url, said in cases.items():
        for command in (["audit", "--request-id", "r1"], ["stats"], ["replay"]):
            result = CliRunner(env=elsewhere).invoke(main, [*command, "--database-url", url])
            assert result.exit_code == 1, (command, url, result.output)
            assert result.output.startswith(said), (command, url, result.output)
            assert result.output.count("\n") == 1, result.output
            assert "s3cret-pw" not in result.output
    assert notes.read_text() == "not a database\n" * 40


def test_replay_into_a_directory_that_cannot_be_made_says_which(tmp_path: Path):
    """A file where the SQLite file's directory would be: one line naming it, not a
    NotADirectoryError traceback; under TALKSTREAM_DATA_DIR, the data directory is named."""
    from streams.cli import main

    in_the_way = tmp_path / "data"
    in_the_way.write_text("not a directory")
    elsewhere = {"TALKSTREAM_DATA_DIR": str(tmp_path / "state")}
    for url in (f"sqlite:///{in_the_way}/p.sqlite3", f"sqlite:///{in_the_way}/sub/p.sqlite3"):
        result = CliRunner(env=elsewhere).invoke(main, ["replay", "--database-url", url])
        assert result.exit_code == 1, result.output
        assert result.output == (
            "Error: the database URL cannot be used (cannot create the directory "
            f"{Path(url.removeprefix('sqlite:///')).parent} of the SQLite file: Not a "
            "directory): set TALKSTREAM_DATABASE_URL or --database-url to sqlite:///PATH or "
            "postgresql+psycopg://USER:PASSWORD@HOST/DB\n"
        )
    data_dir = {"TALKSTREAM_DATA_DIR": str(in_the_way)}
    url = f"sqlite:///{in_the_way}/p.sqlite3"
    result = CliRunner(env=data_dir).invoke(main, ["replay", "--database-url", url])
    assert result.exit_code == 1, result.output
    assert result.output == (
        f"Error: cannot use the data directory {in_the_way} (TALKSTREAM_DATA_DIR): "
        f"Not a directory: {in_the_way}\n"
    )
    assert in_the_way.read_text() == "not a directory"


def test_a_replay_that_fails_leaves_no_sqlite_file_it_created(tmp_path: Path, monkeypatch):
    """Kafka out of reach: ``replay --database-url sqlite:///new.db`` failed after it had made
    the file (migrated, empty), its lock file and its directory, and left them: a run again
    then found a file of its own making. What it created goes; a file that was there stays,
    with what it held."""
    from streams.cli import main

    port = free_port()
    monkeypatch.setenv("TALKSTREAM_KAFKA_BOOTSTRAP", f"127.0.0.1:{port}")
    monkeypatch.setenv("TALKSTREAM_DATA_DIR", str(tmp_path / "data"))
    new = tmp_path / "made" / "here" / "new.db"
    result = CliRunner().invoke(main, ["replay", "--database-url", f"sqlite:///{new}"])
    assert (result.exit_code, result.output) == (
        1,
        f"Error: Kafka at 127.0.0.1:{port}: nothing listens there (connection refused); "
        f"Kafka's address is TALKSTREAM_KAFKA_BOOTSTRAP=127.0.0.1:{port}\n",
    )
    assert list(tmp_path.iterdir()) == []  # no file, no lock file, no directory

    there = tmp_path / "there.db"
    store = ProjectionStore.from_url(f"sqlite:///{there}", migrate_schema=False)
    with store.engine.begin() as connection:
        connection.execute(text("CREATE TABLE notes (line TEXT)"))
        connection.execute(text("INSERT INTO notes VALUES ('kept')"))
    store.close()
    result = CliRunner().invoke(main, ["replay", "--database-url", f"sqlite:///{there}"])
    assert result.exit_code == 1, result.output
    kept = ProjectionStore.from_url(f"sqlite:///{there}", migrate_schema=False)
    try:
        with kept.engine.connect() as connection:
            assert connection.execute(text("SELECT line FROM notes")).scalars().all() == ["kept"]
    finally:
        kept.close()


def test_verify_prints_the_first_differences_and_how_many_more(tmp_path: Path, capsys):
    """A log with thousands of differences: ``--verify`` printed every one (a terminal
    flooded, the summary scrolled away). It prints the first ``--show`` (20), the count of
    the rest and of each kind, and exits 1 all the same; ``--show 0`` prints every one, and
    ``--differences-file`` holds every one whatever is printed."""
    from streams.ops.commands import report_verified
    from streams.ops.replay import Skipped
    from streams.ops.verify import Difference, VerifySummary

    summary = VerifySummary("t-requests", "t-lifecycle")
    summary.differences = [
        Difference("missing" if i % 3 else "changed", f"r-{i:05}", "RequestReceived", "received", 1)
        for i in range(5000)
    ]
    summary.skipped = [Skipped("t-requests", 0, offset, "not JSON") for offset in range(30)]
    every = tmp_path / "differences.txt"

    assert report_verified(summary, 20, every) is False
    printed = capsys.readouterr().out.splitlines()
    assert printed[:20] == [f"  skipped t-requests/0/{offset}: not JSON" for offset in range(20)]
    assert printed[20].startswith("  ... and 10 more skipped records (--show 0 prints every one")
    assert printed[21] == (f"5000 differences: 3333 missing, 1667 changed (every one in {every})")
    assert printed[22:42] == [f"  {d.describe()}" for d in summary.differences[:20]]
    assert printed[42].startswith("  ... and 4980 more differences (--show 0 prints every one")
    assert len(printed) == 43
    assert every.read_text().splitlines() == [d.describe() for d in summary.differences]

    assert report_verified(summary, 0, None) is False
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 30 + 1 + 5000 and "more" not in printed[-1]

    assert report_verified(VerifySummary("t-requests", "t-lifecycle"), 20, every) is True
    assert capsys.readouterr().out == (
        "no differences: every recorded decision is what the rules derive\n"
    )
    assert every.read_text() == ""


def test_verify_counts_the_records_it_skipped_apart_from_the_messages_it_derived_from():
    """``--verify`` said "from 100 messages" of a log with 3 records that did not decode,
    which it skipped (the ledger dead-letters them) and listed below: the count said they
    were re-derived. They are counted apart."""
    from streams.ops.commands import verified_counts
    from streams.ops.replay import Skipped
    from streams.ops.verify import VerifySummary

    summary = VerifySummary("t-requests", "t-lifecycle", messages=100, derived=240)
    summary.recorded = summary.matched = 240
    summary.skipped = [Skipped("t-requests", 0, offset, "not JSON") for offset in (4, 5, 6)]
    assert verified_counts(summary) == (
        "re-derived 240 lifecycle events from 97 messages on t-requests (3 more skipped, "
        "listed below); 240 recorded on t-lifecycle; 240 match (0.0s)"
    )
    summary.skipped = []
    assert verified_counts(summary).startswith(
        "re-derived 240 lifecycle events from 100 messages on t-requests; 240 recorded"
    )


def test_differences_file_is_a_verify_option():
    result = talkstream(
        "replay", "--database-url", "sqlite://", "--differences-file", "differences.txt"
    )
    assert result.exit_code == 2 and "--differences-file is --verify's" in result.output


def test_a_differences_file_that_cannot_be_written_is_said_before_the_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """`replay --verify --differences-file missing/dir/f` read both topics, then ended in a
    FileNotFoundError traceback. Now it is refused before Kafka is asked anything (here, no
    broker answers at all), and a write that fails at the end is one line too."""
    from streams.ops.commands import report_verified
    from streams.ops.verify import VerifySummary

    monkeypatch.setenv("TALKSTREAM_KAFKA_BOOTSTRAP", f"127.0.0.1:{free_port()}")
    monkeypatch.setenv("TALKSTREAM_DATA_DIR", str(tmp_path))
    missing = tmp_path / "no-such-folder" / "differences.txt"
    result = talkstream("replay", "--verify", "--differences-file", str(missing))
    assert result.exit_code == 2, result.output
    assert "Invalid value for '--differences-file'" in result.output
    assert f"{missing.parent} is not a folder" in result.output
    assert "nothing listens" not in result.output and not missing.parent.exists()

    summary = VerifySummary("talkstream-requests", "talkstream-lifecycle")
    with pytest.raises(click.ClickException, match=r"cannot write .*differences.txt"):
        report_verified(summary, 20, missing)


def test_a_rebuild_counts_as_replayed_only_the_events_it_could_read(capsys):
    """A rebuild of 98 records of which one did not decode said "replayed 98 lifecycle
    events", then "97 transitions" and "1 records did not decode" (seen on a running system
    with a record that is no lifecycle event on the topic)."""
    from streams.ops.commands import report_rebuilt
    from streams.ops.replay import RebuildSummary, Skipped

    summary = RebuildSummary(topic="t-lifecycle", database="sqlite://", partitions=8)
    summary.records, summary.transitions = 98, 97
    summary.skipped = [Skipped("t-lifecycle", 5, 20, "does not decode")]
    report_rebuilt(summary, None)
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("replayed 97 lifecycle events from t-lifecycle (8 partitions)")
    assert printed[2:] == [
        "  1 record did not decode (dead-lettered live):",
        "    t-lifecycle/5/20: does not decode",
    ]


def test_a_rebuild_prints_the_first_records_that_did_not_decode_and_how_many_more(capsys):
    """A rebuild listed every record of [lifecycle] that did not decode, however many."""
    from streams.ops.commands import report_rebuilt
    from streams.ops.replay import RebuildSummary, Skipped

    summary = RebuildSummary(topic="t-lifecycle", database="sqlite://", partitions=8)
    summary.skipped = [Skipped("t-lifecycle", 0, offset, "not JSON") for offset in range(500)]
    report_rebuilt(summary, None)
    printed = capsys.readouterr().out.splitlines()
    assert printed[2] == "  500 records did not decode (dead-lettered live):"
    assert printed[3:23] == [f"    t-lifecycle/0/{offset}: not JSON" for offset in range(20)]
    assert printed[23] == (
        "  ... and 480 more records that did not decode (--show 0 prints every one)"
    )
    assert len(printed) == 24
    report_rebuilt(summary, None, show=0)
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 3 + 500 and "more" not in printed[-1]


def _revision(url: str) -> str | None:
    from streams.projection import migrate

    store = ProjectionStore.from_url(url, migrate_schema=False)
    try:
        with store.engine.connect() as connection:
            return migrate.current(connection)
    finally:
        store.close()


def test_a_projection_taken_down_for_a_rollback_is_what_the_older_version_knows(
    projected: str,
):
    """Before a rollback to a version without the newest migration (its projector could not
    start on it): `migrate --to` its newest, the rows kept; this version takes it up again."""
    from alembic.script import ScriptDirectory
    from sqlalchemy import inspect

    from streams.projection import migrate

    head = migrate.head()
    older = ScriptDirectory.from_config(migrate.alembic_config()).get_revision(head).down_revision
    assert isinstance(older, str)
    before = ProjectionStore.from_url(projected)
    rows = snapshot(before)
    before.close()

    result = talkstream("migrate", "--to", older, "--database-url", projected)
    assert result.exit_code == 0, result.output
    assert f"migration {head} -> {older}" in result.output
    assert _revision(projected) == older
    store = ProjectionStore.from_url(projected, migrate_schema=False)
    try:
        indexes = {ix["name"] for ix in inspect(store.engine).get_indexes("requests")}
        if head == "0005":  # the index the versions before 0005 read
            assert "ix_requests_terminal_at" in indexes and "ix_requests_ended" not in indexes
        columns = {c["name"] for c in inspect(store.engine).get_columns("requests")}
        if head == "0006":  # the column the versions before 0006 do not write
            assert "truncated" not in columns and any(r["truncated"] for r in rows[0])
        if head == "0008":  # the key the versions before 0008 have: the request id alone
            assert "occurrence" not in columns
        if head == "0009":  # the column the versions before 0009 do not write
            assert "event_number" not in columns and any(r["event_number"] for r in rows[0])
        assert stored_requests(store) == [
            {name: value for name, value in row.items() if name in columns} for row in rows[0]
        ]
        steps = {c["name"] for c in inspect(store.engine).get_columns("transitions")}
        if head == "0010":  # the transitions' column the versions before 0010 do not write
            assert "event_number" not in steps and any(r["event_number"] for r in rows[1])
        assert stored_transitions(store) == [
            {name: value for name, value in row.items() if name in steps} for row in rows[1]
        ]
    finally:
        store.close()
    again = talkstream("migrate", "--to", older, "--database-url", projected)
    assert again.exit_code == 0 and f"at migration {older} already" in again.output

    store = ProjectionStore.from_url(projected)  # this version's projector at its start
    try:
        assert store.is_current()
        # what the migrations down and up again dropped (a replay gives it back, from the log)
        lost = {"0006": {"truncated": False}, "0009": {"event_number": None}}.get(head, {})
        lost_steps = {"0010": {"event_number": None}}.get(head, {})
        assert snapshot(store) == (
            [row | lost for row in rows[0]],
            [row | lost_steps for row in rows[1]],
            rows[2],
        )
    finally:
        store.close()


def test_a_projection_a_newer_version_migrated_is_refused_saying_what_to_do(
    projected: str, tmp_path
):
    """An older version's projector on a projection migrated past what it knows stopped with
    Alembic's traceback ("Can't locate revision identified by ..."), again every second."""
    from streams.errors import ConfigError
    from streams.projection import migrate

    store = ProjectionStore.from_url(projected, migrate_schema=False)
    with store.engine.begin() as connection:  # as a newer version leaves it
        connection.execute(text(f"UPDATE {migrate.VERSION_TABLE} SET version_num = '9999'"))
    store.close()

    advice = rf"at migration 9999, which this version .*`talkstream migrate --to {migrate.head()}"
    with pytest.raises(ConfigError, match=advice):
        ProjectionStore.from_url(projected)
    result = talkstream("migrate", "--database-url", projected)
    assert result.exit_code == 1
    assert "at migration 9999" in result.output
    audit = talkstream("audit", "--request-id", "r1", "--database-url", projected)
    assert audit.exit_code == 1 and "at migration 9999, which this version" in audit.output
    unknown = talkstream("migrate", "--to", "0042x", "--database-url", projected)
    assert unknown.exit_code == 2  # a usage error, named as the option's
    assert "Invalid value for '--to': no migration '0042x' in this version" in unknown.output
    # said before the database is looked at: not "no projection at ..." for a second try
    nowhere = f"sqlite:///{tmp_path / 'nowhere.sqlite3'}"
    unknown = talkstream("migrate", "--to", "0042x", "--database-url", nowhere)
    assert (unknown.exit_code, unknown.output.splitlines()[-1]) == (
        2,
        "Error: Invalid value for '--to': no migration '0042x' in this version (it has "
        f"{', '.join(sorted(migrate.revisions()))}; head: the newest)",
    )
    assert _revision(projected) == "9999"


@pytest.mark.parametrize(
    ("url", "command"),
    [
        ("sqlite:////srv/talk stream/p.sqlite3", "`talkstream migrate --database-url "
         "'sqlite:////srv/talk stream/p.sqlite3'`"),
        ("postgresql+psycopg://ada:s3cret-pw@db/p", "`talkstream migrate --database-url URL` "
         "(URL: postgresql+psycopg://ada:***@db/p, with its password for ***)"),
    ],
)  # fmt: skip
def test_the_command_that_migrates_a_projection_can_be_pasted_and_says_no_password(
    url: str, command: str
) -> None:
    """It quoted the URL as shown, its password as ***: pasted, it was refused."""
    from sqlalchemy import create_engine

    from streams.projection import migrate

    assert migrate.migrate_command(create_engine(url)) == command


def test_a_projection_left_at_an_older_migration_names_the_command_that_brings_it_up(
    projected: str,
):
    """After a rollback's `migrate --to`, the upgraded version's `audit` and `stats` said "not a
    current projection: run the worker or `talkstream replay`" (a replay refuses a used
    database): `talkstream migrate` is what brings it up."""
    from alembic.script import ScriptDirectory

    from streams.projection import migrate

    head = migrate.head()
    older = ScriptDirectory.from_config(migrate.alembic_config()).get_revision(head).down_revision
    assert isinstance(older, str)
    assert talkstream("migrate", "--to", older, "--database-url", projected).exit_code == 0

    for command in (("audit", "--request-id", "retry-1"), ("stats",)):
        refused = talkstream(*command, "--database-url", projected)
        assert refused.exit_code == 1
        assert f"is at migration {older}, older than this version" in refused.output
        assert "`talkstream migrate --database-url " in refused.output
    assert talkstream("migrate", "--database-url", projected).exit_code == 0
    audit = talkstream("audit", "--request-id", "retry-1", "--database-url", projected)
    assert audit.exit_code == 0 and "request retry-1" in audit.output


def test_each_commands_database_url_says_what_it_does_there() -> None:
    """`migrate --help` called the projection it writes "the projection to read", as audit's
    and stats' help do."""
    helps = {
        command: " ".join(talkstream(command, "--help").output.split())
        for command in ("audit", "stats", "migrate")
    }
    assert "--database-url TEXT the projection to read (default:" in helps["audit"]
    assert "--database-url TEXT the projection to read (default:" in helps["stats"]
    assert "--database-url TEXT the projection to migrate (default:" in helps["migrate"]


def test_migrate_of_a_sqlite_file_that_is_not_there_makes_none(tmp_path: Path):
    """`talkstream migrate --to 0004` before a rollback, its path mistyped, made an empty
    projection there ("migration none -> 0004") and exited 0, leaving the real one where the
    older version refuses it. A SQLite file that is not there is refused as audit and stats
    refuse it (a worker's projector makes it)."""
    missing = tmp_path / "mistyped.sqlite3"
    for args in ((), ("--to", "0004")):
        result = talkstream("migrate", *args, "--database-url", f"sqlite:///{missing}")
        assert result.exit_code == 1
        assert result.output == (
            f"Error: no projection at sqlite:///{missing}: a worker's projector makes it when "
            "it starts; is --database-url the workers' database?\n"
        )
    assert list(tmp_path.iterdir()) == []


def test_migrate_refuses_tables_without_a_history_as_a_projector_does(projected: str):
    """`talkstream migrate` on a projection whose tables have no migration history ended in
    Alembic's "table requests already exists", where a projector names the way out."""
    from streams.projection import migrate

    store = ProjectionStore.from_url(projected, migrate_schema=False)
    rows = snapshot(store)
    with store.engine.begin() as connection:
        connection.execute(text(f"DROP TABLE {migrate.VERSION_TABLE}"))
    store.close()

    advice = "has tables but no migration history"
    result = talkstream("migrate", "--database-url", projected)
    assert result.exit_code == 1 and advice in result.output, result.output
    assert "talkstream replay --database-url" in result.output and "--force" in result.output
    stats = talkstream("stats", "--database-url", projected)
    assert stats.exit_code == 1 and advice in stats.output
    store = ProjectionStore.from_url(projected, migrate_schema=False)
    try:
        assert snapshot(store) == rows  # nothing was changed
    finally:
        store.close()


def test_verify_matches_each_request_of_an_id_the_ledger_took_again():
    """The same params a month later, the person forgotten: a request named by the earlier
    one's id, its transitions of the same identities. ``--verify`` compared each recorded one
    with the first derived for its identity: three decisions "changed", exit 1. Now each is
    matched with the one it is, alone and in helpers (by digest); a re-emission is counted,
    and an edit of the later request is a change of it."""
    from streams.codecs import encode
    from streams.ops.replay import Record
    from streams.ops.verify import Rederivation, VerifySummary

    day = 86_400_000
    log = Log()
    log.full("same-id", at_ms=T0_MS, limit=2)
    again = log.received("same-id", at_ms=T0_MS + 32 * day, limit=2, delivery="d2")
    log.failed(again, at_ms=again.at_ms + 500)
    events = [s.event for s in log.records]

    def verified(recorded: list) -> VerifySummary:
        summary = VerifySummary("t-requests", "t-lifecycle")
        check = Rederivation(log.policy, summary)
        for offset, message in enumerate(log.messages):
            check.request(Record("t-requests", 0, offset, message.at_ms, encode(message)))
        for offset, event in enumerate(recorded):
            check.recorded(Record("t-lifecycle", 0, offset, 0, encode(event)))
        # the helpers' way (by digest) settles it when every record is byte for byte derived
        helper = Rederivation(log.policy, VerifySummary("t-requests", ""))
        helper.derived = check.derived
        settled = check.settle([helper.match(check.digests())])
        return summary if settled else check.compare()

    clean = verified(events)
    assert (clean.matched, clean.repeated, clean.differences) == (10, 0, [])
    repeated = verified([*events, events[6]])  # the later RequestReceived emitted twice
    assert (repeated.matched, repeated.repeated, repeated.differences) == (10, 1, [])
    dropped = verified(events[:-1])
    assert [d.describe() for d in dropped.differences] == [
        "missing    same-id GenerationFailed state=generation_failed attempt=1"
    ]
    edited = [*events[:7], events[7].model_copy(update={"cause": "admitted (edited)"}), *events[8:]]
    [changed] = verified(edited).differences
    assert changed.kind == "changed" and changed.fields == {
        "cause": ("admitted", "admitted (edited)")
    }
    assert verified(edited).matched == 9
