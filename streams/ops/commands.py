"""``talkstream replay | audit | stats | schemas | redrive``: the operator tools over the log
and the projection.

Wired into the ``talkstream`` group by ``register(main)`` in ``streams/cli.py``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

from streams.settings import Settings

if TYPE_CHECKING:
    from streams.projection.store import ProjectionStore

T = TypeVar("T")


def register(main: click.Group) -> None:
    for command in (replay, audit, stats, schemas, redrive):
        main.add_command(command)


class _Time(click.ParamType):
    """A point in time as the commands take it (ISO-8601, epoch seconds or ms, or an age such
    as 2h), in epoch ms; a value that is none of these names its option."""

    name = "TIME"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        from streams.ops.audit import parse_time

        if isinstance(value, int):
            return value
        try:
            return parse_time(value, int(time.time() * 1000))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


TIME = _Time()


def _in_order(since_ms: int | None, until_ms: int | None) -> None:
    """``--since``/``--until`` that end before they start: a usage error, not an empty answer."""
    from streams.ops.audit import check_range

    try:
        check_range(since_ms, until_ms, ("--since", "--until"))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--since'") from None


def _run(coro: Any) -> Any:
    from streams.errors import TalkstreamError

    try:
        return asyncio.run(coro)
    except TalkstreamError as exc:
        raise click.ClickException(str(exc)) from None


def _with_bar(label: str, work: Callable[[Callable[[int], None], Callable[[int], None]], T]) -> T:
    """Run ``work(on_total, progress)`` under a progress bar on stderr (sized once known)."""
    bar: Any = None

    def on_total(total: int) -> None:
        nonlocal bar
        bar = click.progressbar(length=max(total, 1), label=label, file=sys.stderr)
        bar.__enter__()

    def progress(n: int) -> None:
        if bar is not None:
            bar.update(n)

    try:
        return work(on_total, progress)
    finally:
        if bar is not None:
            bar.__exit__(None, None, None)


# --- replay -----------------------------------------------------------------------------------


@click.command()
@click.option(
    "--database-url",
    help="the (fresh) database to rebuild the projection in, a SQLAlchemy URL "
    "(sqlite:///path, postgresql+psycopg://user@host/db)",
)
@click.option("--force", is_flag=True, help="empty a non-empty database first (stop its worker)")
@click.option(
    "--until",
    type=TIME,
    help="stop at this point in time: ISO-8601 (UTC if no zone), epoch seconds or ms, or an "
    "age such as 2h. Compared with the Kafka timestamp of each lifecycle record (when the "
    "ledger wrote it), not the event's at_ms.",
)
@click.option(
    "--verify",
    is_flag=True,
    help="instead: re-derive every decision from [requests] with the pure rules and compare "
    "with [lifecycle]; exit 1 on any difference",
)
@click.option(
    "--processes",
    type=click.IntRange(min=1),
    default=None,
    help="processes sharing the work, a share of the partitions each (default: one per "
    "core); 1 = all in this process. --verify: re-deriving [requests]; a rebuild: of "
    "[lifecycle] into an empty projection",
)
def replay(
    database_url: str | None, force: bool, until: int | None, verify: bool, processes: int | None
) -> None:
    """Rebuild the SQL projection from the lifecycle topic, or verify the recorded decisions.

    Read-only towards the world: a group-less consumer reads up to the end offsets captured at
    start; nothing is produced, OpenAI and Talkable are not called.
    """
    settings = Settings()
    if verify:
        if database_url or until is not None or force:
            raise click.UsageError("--verify reads the topics only: no --database-url/--until")
        _verify(settings, processes)
        return
    if not database_url:
        raise click.UsageError("give --database-url: replay builds a fresh projection there")
    _rebuild(settings, database_url, force, until, processes)


def _rebuild(
    settings: Settings,
    database_url: str,
    force: bool,
    until_ms: int | None,
    processes: int | None,
) -> None:
    from streams.errors import TalkstreamError
    from streams.ops.audit import iso
    from streams.ops.replay import rebuild
    from streams.projection.engine import make_engine
    from streams.projection.store import ProjectionStore

    engine = make_engine(database_url)
    store = ProjectionStore(engine, migrate_schema=False)
    try:
        _prepare(store, database_url, force)
        topic = settings.topic("lifecycle")
        summary = _with_bar(
            f"replaying {topic}",
            lambda on_total, progress: _run(
                rebuild(
                    settings,
                    topic,
                    store,
                    until_ms=until_ms,
                    on_total=on_total,
                    progress=progress,
                    processes=processes,
                )
            ),
        )
    except TalkstreamError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        store.close()
    cut = f" up to {iso(until_ms)} (Kafka record time)" if until_ms is not None else ""
    click.echo(
        f"replayed {summary.records} lifecycle events from {summary.topic} "
        f"({summary.partitions} partitions){cut} into {summary.database} "
        f"in {summary.seconds:.1f}s"
    )
    states = ", ".join(f"{k} {v}" for k, v in sorted(summary.states.items())) or "none"
    click.echo(f"  {summary.requests} requests ({states}); {summary.transitions} transitions")
    if summary.split_requests:
        click.echo(
            "  a request's events were in two shares of the partitions (partitions added while "
            "it was in flight): rebuilt again in one process"
        )
    if summary.skipped:
        click.echo(f"  {len(summary.skipped)} records did not decode (dead-lettered live):")
        for s in summary.skipped:
            click.echo(f"    {s.topic}/{s.partition}/{s.offset}: {s.reason}")


def _prepare(store: ProjectionStore, database_url: str, force: bool) -> None:
    """A fresh, migrated projection: refuse a used one unless ``force`` (then empty it)."""
    from streams.projection import migrate
    from streams.projection.engine import safe_url

    if store.is_empty():
        migrate.upgrade(store.engine)
        return
    if not force:
        raise click.ClickException(
            f"{safe_url(database_url)} already holds a projection; replay builds a fresh one: "
            "point --database-url at an empty database, or add --force to empty this one "
            "first (stop any worker writing to it)"
        )
    store.reset()


def _verify(settings: Settings, processes: int | None) -> None:
    from streams.app import policy_from
    from streams.ops.verify import verify

    requests, lifecycle = settings.topic("requests"), settings.topic("lifecycle")
    summary = _with_bar(
        f"verifying {requests} -> {lifecycle}",
        lambda on_total, progress: _run(
            verify(
                settings,
                requests,
                lifecycle,
                policy_from(settings),
                on_total=on_total,
                progress=progress,
                processes=processes,
            )
        ),
    )
    click.echo(
        f"re-derived {summary.derived} lifecycle events from {summary.messages} messages on "
        f"{requests}; {summary.recorded} recorded on {lifecycle}; {summary.matched} match"
        + (f", {summary.repeated} repeated (at-least-once re-emission)" if summary.repeated else "")
        + f" ({summary.seconds:.1f}s)"
    )
    for s in summary.skipped:
        click.echo(f"  skipped {s.topic}/{s.partition}/{s.offset}: {s.reason}")
    if summary.differences:
        click.echo(f"{len(summary.differences)} differences:")
        for difference in summary.differences:
            click.echo(f"  {difference.describe()}")
        sys.exit(1)
    click.echo("no differences: every recorded decision is what the rules derive")


# --- audit and stats --------------------------------------------------------------------------


def _reader(database_url: str | None) -> ProjectionStore:
    from sqlalchemy.engine import make_url

    from streams.projection.engine import make_engine, safe_url
    from streams.projection.store import ProjectionStore

    url = database_url or Settings().resolved_database_url
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        from pathlib import Path

        if not Path(parsed.database).exists():
            raise click.ClickException(f"no projection at {safe_url(url)}")
    store = ProjectionStore(make_engine(url), migrate_schema=False)
    if not store.is_current():
        store.close()
        raise click.ClickException(
            f"{safe_url(url)} is not a current projection: run the worker or `talkstream replay`"
        )
    return store


_DB_HELP = "the projection to read (default: TALKSTREAM_DATABASE_URL, else the SQLite file)"


@click.command()
@click.option("--request-id", help="one request")
@click.option("--site", help="with --email: every request of that person")
@click.option("--email")
@click.option("--database-url", help=_DB_HELP)
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def audit(
    request_id: str | None,
    site: str | None,
    email: str | None,
    database_url: str | None,
    as_json: bool,
) -> None:
    """The full history of a request (or of every request of a person): each transition with
    its time, cause, attempt and error. Read from the SQL projection.

    Two clocks: when the webhook arrived at the ingress, and the event time it was judged at
    (Talkable's rendered usage_limit.current_time, which can be older); the webhook's own
    judgement is placed at the arrival, and every step is measured from the arrival."""
    from streams.ops.audit import find_histories, histories_json, render_histories

    by_person = site is not None and email is not None
    if (request_id is None) == (not by_person) or (request_id and (site or email)):
        raise click.UsageError("give --request-id, or both --site and --email")
    store = _reader(database_url)
    try:
        found = find_histories(store, request_id=request_id, site=site, email=email)
        if as_json:
            click.echo(json.dumps(histories_json(store, found), indent=2))
        else:
            click.echo(f"source: SQL projection {store.url} (projected from the lifecycle topic)")
            click.echo()
            click.echo(render_histories(found) if found else "no such request")
    finally:
        store.close()
    if not found:
        sys.exit(1)


@click.command()
@click.option(
    "--since",
    "since_ms",
    type=TIME,
    help="judged at or after (ISO-8601, epoch, or 24h): the webhook's event time, Talkable's "
    "usage_limit.current_time, which a retried or late webhook has from before it arrived",
)
@click.option("--until", "until_ms", type=TIME, help="judged before (ISO-8601, epoch, or an age)")
@click.option("--site", help="only this site")
@click.option("--database-url", help=_DB_HELP)
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def stats(
    since_ms: int | None,
    until_ms: int | None,
    site: str | None,
    database_url: str | None,
    as_json: bool,
) -> None:
    """Per site: requests by terminal state, tokens, p50/p95 generation latency, limited and
    failure rates, for requests judged in [--since, --until) (by their event time). Read from
    the SQL projection.

    limited = limited / requests; failed = (generation_failed + publish_failed) / admitted;
    latency: OpenAI call time of generated requests (nearest-rank percentiles).
    """
    from streams.ops.audit import WAITED_MS, iso, render_stats, site_stats, stats_json

    _in_order(since_ms, until_ms)
    store = _reader(database_url)
    try:
        result = site_stats(store.stats_rows(since_ms, until_ms, site))
        if as_json:
            click.echo(json.dumps(stats_json(store, result, since_ms, until_ms), indent=2))
            return
        span = f"received from {iso(since_ms) or 'the start'} until {iso(until_ms) or 'now'}"
        click.echo(f"source: SQL projection {store.url}; {span}")
        click.echo()
        if not result and site is not None:
            click.echo(f"no requests of site {site!r} in this range")
        else:
            click.echo(render_stats(result))
        if result:
            click.echo()
            click.echo(
                "limited = limited/requests; failed = (gen failed + pub failed)/admitted; "
                "tokens: prompt (in) and completion (out); p50/p95: OpenAI call time; "
                f"waited: requests that waited {WAITED_MS // 1000} s or more in their upstream "
                "targets' queues; wait p95: of the requests that waited at all, ms"
            )
    finally:
        store.close()


# --- schemas ----------------------------------------------------------------------------------


@click.command()
@click.option("--check", is_flag=True, help="only report drift from the models (exit 1)")
def schemas(check: bool) -> None:
    """Write the JSON Schema of every topic's values to schemas/ (from models/)."""
    from streams.ops import schemas as generator

    sys.exit(generator.main(["--check"] if check else []))


# --- redrive ----------------------------------------------------------------------------------


def _letters_from(settings: Settings, topic: str | None) -> str | None:
    """``--topic`` as the full name the letters carry; a name that no letter can carry is a
    usage error listing those that can (rather than a redrive that silently selects none)."""
    from streams.topics import letter_source

    if topic is None:
        return None
    try:
        return letter_source(settings, topic)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--topic'") from None


@click.command()
@click.option("--request-id", default=None, help="only this request's dead letters")
@click.option("--site", default=None, help="only parked work of this site")
@click.option(
    "--topic",
    default=None,
    help="only letters from this topic: its full name or its name without the app id "
    "(requests, generate, completions, lifecycle)",
)
@click.option(
    "--reason-contains", default=None, help="only letters whose reason contains it (any case)"
)
@click.option(
    "--since", "since_ms", type=TIME, help="only letters written since (ISO-8601, epoch, 2h)"
)
@click.option("--until", "until_ms", type=TIME, help="only letters written until")
@click.option(
    "--from-beginning",
    is_flag=True,
    help="reconsider letters redriven before (each run otherwise starts after the letters "
    "earlier runs redrove, up to the first one they did not select)",
)
@click.option("--dry-run", is_flag=True, help="list what would be redriven, change nothing")
@click.option(
    "--database-url",
    help="the projection that says which requests are still parked (default: "
    "TALKSTREAM_DATABASE_URL, else the SQLite file)",
)
def redrive(
    request_id: str | None,
    site: str | None,
    topic: str | None,
    reason_contains: str | None,
    since_ms: int | None,
    until_ms: int | None,
    from_beginning: bool,
    dry_run: bool,
    database_url: str | None,
) -> None:
    """Re-issue dead-lettered work once its cause is fixed (parked requests go through the
    ledger, which runs them as their next attempt)."""
    from streams.ops.redrive import Selection
    from streams.ops.redrive import redrive as run_redrive
    from streams.runtime import now_ms

    _in_order(since_ms, until_ms)
    settings = Settings()
    selection = Selection(
        request_id=request_id,
        topic=_letters_from(settings, topic),
        reason_contains=reason_contains,
        site=site,
        since_ms=since_ms,
        until_ms=until_ms,
    )
    parked_by = _ParkedBy(database_url)
    try:
        report = _run(
            run_redrive(
                settings,
                selection,
                dry_run=dry_run,
                from_beginning=from_beginning,
                now_ms=now_ms,
                states=parked_by.states_of,
            )
        )
    finally:
        parked_by.close()
    for letter in report.redriven:  # its reason, site and source; never its value (keys)
        click.echo(f"{'would redrive' if dry_run else 'redriven'}: {letter}")
    for what in report.not_parked:
        click.echo(f"not parked any more, left alone: {what}")
    for what in report.earlier_attempt:
        click.echo(f"an earlier attempt's letter, left alone: {what}")
    click.echo(
        f"{report.examined} dead letters examined, {len(report.redriven)} "
        f"{'to redrive' if dry_run else 'redriven'}, {report.skipped} not selected, "
        f"{report.unreadable} unreadable"
        + (f", {len(report.not_parked)} not parked any more" if report.not_parked else "")
        + (f", {report.superseded} older of the same requests" if report.superseded else "")
        + (
            f", {len(report.earlier_attempt)} of an earlier attempt"
            if report.earlier_attempt
            else ""
        )
    )


class _ParkedBy:
    """The projection, to leave alone requests no longer parked: opened once there are letters
    to redrive. Without one, every selected letter goes to the ledger, which re-issues only
    what is still parked."""

    def __init__(self, database_url: str | None) -> None:
        self.database_url = database_url
        self.store: ProjectionStore | None = None
        self.tried = False

    def states_of(self, request_ids: list[str]) -> dict[str, str]:
        if not self.tried:
            self.tried = True
            self.store = self._open()
        return self.store.states_of(request_ids) if self.store is not None else {}

    def _open(self) -> ProjectionStore | None:
        from sqlalchemy.exc import SQLAlchemyError

        try:
            return _reader(self.database_url)
        except (click.ClickException, SQLAlchemyError) as exc:
            why = exc.message if isinstance(exc, click.ClickException) else type(exc).__name__
            click.echo(
                f"note: {why}; every selected letter goes to the ledger, which re-issues only"
                " the requests still parked",
                err=True,
            )
            return None

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
