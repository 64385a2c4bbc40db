"""``talkstream replay | audit | stats | schemas | redrive``: the operator tools over the log
and the projection (``redrive``'s command in ``streams/ops/redrive_command.py``; what they share
in ``streams/ops/options.py``).

Wired into the ``talkstream`` group by ``register(main)`` in ``streams/cli.py``.
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import click

from streams.ops.options import (
    TIME,
    Count,
    existing_projection,
    in_order,
    opening,
    projection_reader,
    run_async,
    site_shown,
    site_spellings,
    with_bar,
)
from streams.ops.redrive_command import redrive
from streams.settings import Settings

if TYPE_CHECKING:
    from streams.ops.replay import RebuildSummary
    from streams.ops.verify import VerifySummary
    from streams.projection.store import ProjectionStore

SHOWN = 20  # differences and records that did not decode printed unless told otherwise


def register(main: click.Group) -> None:
    for command in (replay, audit, stats, schemas, redrive, migrate):
        main.add_command(command)


# --- replay -----------------------------------------------------------------------------------


@click.command()
@click.option(
    "--database-url",
    help="the (fresh) database to rebuild the projection in, a SQLAlchemy URL "
    "(sqlite:///path, postgresql+psycopg://user@host/db); required without --verify: no "
    "default, unlike the other commands' --database-url",
)
@click.option("--force", is_flag=True, help="empty a non-empty database first (stop its worker)")
@click.option(
    "--until",
    type=TIME,
    help="a rebuild only (--verify refuses it): stop at this point in time: ISO-8601 (UTC if "
    "no zone), epoch seconds or ms, or an age such as 2h. Compared with the Kafka timestamp "
    "of each lifecycle record (when the ledger wrote it), not the event's at_ms.",
)
@click.option(
    "--verify",
    is_flag=True,
    help="instead: re-derive every decision from [requests] with the pure rules and compare "
    "with [lifecycle]; exit 1 on any difference",
)
@click.option(
    "--show",
    type=Count(0, "a whole number, 0 or more (how many to print; 0: every one)"),
    default=SHOWN,
    show_default=True,
    help="print the first N differences (--verify) and records that did not decode, then how "
    "many more; 0: every one",
)
@click.option(
    "--differences-file",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    callback=lambda _ctx, _param, path: _can_write(path),
    help="--verify: write every difference to this file, one a line (whatever --show prints)",
)
@click.option(
    "--processes",
    type=Count(1, "a whole number, 1 or more (how many processes share the work)"),
    default=None,
    help="processes sharing the work, a share of the partitions each (default: one per "
    "core); 1 = all in this process. --verify: re-deriving [requests]; a rebuild: of "
    "[lifecycle] into an empty projection",
)
def replay(
    database_url: str | None,
    force: bool,
    until: int | None,
    verify: bool,
    show: int,
    differences_file: Path | None,
    processes: int | None,
) -> None:
    """Rebuild the SQL projection from the lifecycle topic, or verify the recorded decisions.

    Read-only towards the world: a group-less consumer reads up to the end offsets captured at
    start; nothing is produced, OpenAI and Talkable are not called.
    """
    settings = Settings()
    if verify:
        # each option of a rebuild given, named: a --force alone was told of the other two
        given = [
            name
            for name, value in (
                ("--database-url", database_url),
                ("--until", until),
                ("--force", force),
            )
            if value is not None and value is not False
        ]
        if given:
            raise click.UsageError(
                f"--verify reads the topics only: no {', '.join(given)} (a rebuild's)"
            )
        _verify(settings, processes, show, differences_file)
        return
    if differences_file is not None:
        raise click.UsageError("--differences-file is --verify's")
    if not database_url:
        raise click.UsageError("give --database-url: replay builds a fresh projection there")
    _rebuild(settings, database_url, force, until, processes, show)


def _can_write(path: Path | None) -> Path | None:
    """A file ``--verify`` will write once it has read both topics: one that cannot be written
    (its folder missing or not ours) is said now, not by a traceback at the end of the work."""
    if path is None:
        return None
    folder = path.parent
    if not folder.is_dir():
        raise click.BadParameter(f"{folder} is not a folder", param_hint="'--differences-file'")
    if not os.access(path if path.exists() else folder, os.W_OK):
        raise click.BadParameter(f"{path} cannot be written", param_hint="'--differences-file'")
    return path


def _rebuild(
    settings: Settings,
    database_url: str,
    force: bool,
    until_ms: int | None,
    processes: int | None,
    show: int = SHOWN,
) -> None:
    from sqlalchemy.exc import IntegrityError

    from streams.errors import TalkstreamError
    from streams.ops.replay import rebuild
    from streams.projection.engine import make_engine, new_sqlite_paths, remove_new, safe_url
    from streams.projection.store import ProjectionStore

    # a SQLite file this replay creates is removed if the replay fails: it held nothing, or a
    # part (a fresh one is what replay builds, and a run again would refuse a used file)
    created = new_sqlite_paths(database_url)
    engine = make_engine(opening(database_url))
    store = ProjectionStore(engine, migrate_schema=False)
    failed = True
    try:
        _prepare(store, database_url, force)
        topic = settings.topic("lifecycle")
        summary = with_bar(
            f"replaying {topic}",
            lambda on_total, progress: run_async(
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
        failed = False
    except TalkstreamError as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        failed = False  # kept: what it holds is said below
        # each batch is one transaction, applied in its partition's order: what is left is every
        # partition's events up to some offset, which a worker's projector goes on from
        click.echo(
            f"\nreplay interrupted: {safe_url(database_url)} holds the projection of each "
            "partition's lifecycle events up to where it stopped; run `talkstream replay "
            "--force` to rebuild it whole (or start a worker on it: its projector goes on "
            "from there)",
            err=True,
        )
        raise
    except IntegrityError:
        # a row it wrote was there already: another process writes into this projection (a
        # running projector fills one emptied under it from the log by itself, at its next
        # batch), which is that process's now
        failed = False
        raise click.ClickException(
            f"another process wrote into {safe_url(database_url)} during the rebuild (a "
            "worker's projector?): stop every worker and projector writing to it, then run "
            "again"
        ) from None
    finally:
        store.close()
        if failed:
            remove_new(created)
    report_rebuilt(summary, until_ms, show)


def report_rebuilt(summary: RebuildSummary, until_ms: int | None, show: int = SHOWN) -> None:
    """What a rebuild prints: what it replayed, what it built, and the first ``show`` records
    that did not decode (0: all) and how many more."""
    from streams.ops.audit import iso

    cut = f" up to {iso(until_ms)} (Kafka record time)" if until_ms is not None else ""
    skipped = len(summary.skipped)  # read, but no lifecycle event: not replayed
    click.echo(
        f"replayed {summary.records - skipped} lifecycle events from {summary.topic} "
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
        records = "record" if skipped == 1 else "records"
        click.echo(f"  {skipped} {records} did not decode (dead-lettered live):")
        lines = [f"  {s.topic}/{s.partition}/{s.offset}: {s.reason}" for s in summary.skipped]
        _capped(lines, show, "records that did not decode", every="")


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


def _verify(
    settings: Settings, processes: int | None, show: int, differences_file: Path | None
) -> None:
    from streams.app import policy_from
    from streams.ops.verify import verify

    requests, lifecycle = settings.topic("requests"), settings.topic("lifecycle")
    summary = with_bar(
        f"verifying {requests} -> {lifecycle}",
        lambda on_total, progress: run_async(
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
    click.echo(verified_counts(summary))
    if not report_verified(summary, show, differences_file):
        sys.exit(1)


def verified_counts(summary: VerifySummary) -> str:
    """``--verify``'s first line: what it re-derived from how many messages, and apart from
    those, how many it skipped (they did not decode, or the rules failed on them: the ledger
    dead-letters them and derives nothing), which were counted among the messages derived
    from."""
    skipped = len(summary.skipped)
    return (
        f"re-derived {summary.derived} lifecycle events from {summary.messages - skipped} "
        f"messages on {summary.requests_topic}"
        + (f" ({skipped} more skipped, listed below)" if skipped else "")
        + f"; {summary.recorded} recorded on {summary.lifecycle_topic}; {summary.matched} match"
        + (f", {summary.repeated} repeated (at-least-once re-emission)" if summary.repeated else "")
        + f" ({summary.seconds:.1f}s)"
    )


def report_verified(summary: VerifySummary, show: int, differences_file: Path | None) -> bool:
    """What ``--verify`` prints after its counts: the records skipped and the differences, the
    first ``show`` of each (0: all) and how many more; every difference also to
    ``differences_file``. A log with thousands of differences printed every one of them. True
    when there are none."""
    skipped = [f"skipped {s.topic}/{s.partition}/{s.offset}: {s.reason}" for s in summary.skipped]
    _capped(skipped, show, "skipped records")
    differences = summary.differences
    if differences_file is not None:
        try:
            with differences_file.open("w", encoding="utf-8") as out:
                out.writelines(f"{difference.describe()}\n" for difference in differences)
        except OSError as exc:  # a disk full, a folder removed meanwhile
            raise click.ClickException(f"cannot write {differences_file}: {exc.strerror}") from None
    if not differences:
        click.echo("no differences: every recorded decision is what the rules derive")
        return True
    kinds = Counter(difference.kind for difference in differences)
    click.echo(
        f"{len(differences)} differences: "
        + ", ".join(f"{kinds[k]} {k}" for k in ("missing", "unexpected", "changed") if kinds[k])
        + (f" (every one in {differences_file})" if differences_file is not None else "")
    )
    _capped([difference.describe() for difference in differences], show, "differences")
    return False


def _capped(
    lines: list[str],
    show: int,
    what: str,
    every: str = ", --differences-file FILE writes every difference",
) -> None:
    """The first ``show`` of ``lines`` (0: all), then how many more (a log of thousands of
    them printed every one)."""
    shown = lines if show == 0 else lines[:show]
    for line in shown:
        click.echo(f"  {line}")
    if len(lines) > len(shown):
        click.echo(
            f"  ... and {len(lines) - len(shown)} more {what} (--show 0 prints every one{every})"
        )


# --- audit and stats --------------------------------------------------------------------------


_DB_HELP = "the projection to read (default: TALKSTREAM_DATABASE_URL, else the SQLite file)"


@click.command()
@click.option("--request-id", help="one request")
@click.option("--site", help="with --email: every request of that person (site in any case)")
@click.option("--email", help="with --site: the person's email (in any case)")
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
    from streams.ops.audit import find_histories, histories_json, not_found, render_histories

    if request_id is not None:  # copied with a space or a line's end, as --site and --email
        request_id = request_id.strip()
    if request_id is not None and (site is not None or email is not None):
        raise click.UsageError("give --request-id, or --site and --email: not both")
    if request_id is None and (site is None or email is None):
        raise click.UsageError("give --request-id, or both --site and --email")
    store = projection_reader(database_url)
    try:
        spellings = site_spellings(store, site) if site is not None else []
        found = find_histories(
            store, request_id=request_id, site=site, email=email, spellings=spellings
        )
        if as_json:
            click.echo(json.dumps(histories_json(store, found), indent=2))
        else:
            click.echo(f"source: SQL projection {store.url} (projected from the lifecycle topic)")
            if found and request_id is None:  # a person's: how many follow, before the first
                many = "request" if len(found) == 1 else "requests"
                click.echo(f"{len(found)} {many} of {found[0].person}, newest first")
            click.echo()
            click.echo(render_histories(found) if found else not_found(request_id, site, email))
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
@click.option("--site", help="only this site (in any case)")
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
    failure rates, texts cut at their token cap, for requests judged in [--since, --until) (by
    their event time). Read from the SQL projection.

    limited % = limited / requests; failed % = (generation_failed + publish_failed) / admitted;
    latency: OpenAI call time of generated requests (nearest-rank percentiles).
    """
    from streams.ops.audit import (
        WAITED_MS,
        iso,
        render_stats,
        site_stats,
        spelled_apart,
        stats_json,
    )

    in_order(since_ms, until_ms)
    store = projection_reader(database_url)
    try:
        # in any case, every spelling of the site (Shop, shop: one site), counted as one
        spellings = site_spellings(store, site) if site is not None else None
        if site is not None and spellings is not None:
            site = site_shown(site, spellings)
        result = site_stats(store.stats_rows(since_ms, until_ms, spellings), one_site=site)
        if as_json:
            found = stats_json(store, result, since_ms, until_ms)
            if spellings is not None:  # as its webhooks typed it, each
                found["spellings"] = spellings
            click.echo(json.dumps(found, indent=2))
            return
        # by event time (``usage_limit.current_time``), which may be ahead of the clock
        span = (
            f"judged (event time) from {iso(since_ms) or 'the first'} "
            f"{f'until {iso(until_ms)}' if until_ms is not None else 'to the last'}"
        )
        click.echo(f"source: SQL projection {store.url}; {span}")
        if spellings is not None and len(spellings) > 1:
            click.echo(
                f"site {site!r}: its webhooks spelled it {len(spellings)} ways"
                f" ({', '.join(spellings)}), counted as one site"
            )
        elif site is None and (apart := spelled_apart(result)):
            click.echo(apart)
        click.echo()
        if not result and site is not None:
            click.echo(f"no requests of site {site!r} in this range")
        else:
            click.echo(render_stats(result))
        if result:
            click.echo()
            click.echo(
                "limited % = limited/requests; failed % = (gen failed + pub failed)/admitted; "
                "tokens: prompt (in) and completion (out); p50/p95: OpenAI call time; "
                f"waited: requests that waited {WAITED_MS // 1000} s or more in their upstream "
                "targets' queues; wait p95: of the requests that waited at all, ms"
            )
    finally:
        store.close()


# --- schemas ----------------------------------------------------------------------------------


@click.command()
@click.option("--check", is_flag=True, help="only report drift from the models (exit 1)")
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    help="where the files are (default: schemas/ of the checkout talkstream runs from; "
    "required when it runs installed)",
)
def schemas(check: bool, directory: Path | None) -> None:
    """Write the JSON Schema of every topic's values to schemas/ (from models/)."""
    from streams.ops import schemas as generator

    if directory is None and not generator.in_checkout():
        raise click.UsageError("not run from a checkout of talkstream: give --dir DIR")
    if check and directory is not None and not directory.is_dir():
        # a mistyped folder: each schema was said "missing", with a command that regenerates
        # the checkout's
        raise click.BadParameter(
            f"{directory} does not exist: nothing to check", param_hint="'--dir'"
        )
    args = ["--check"] if check else []
    sys.exit(generator.main(args + (["--dir", str(directory)] if directory else [])))


# --- migrate ----------------------------------------------------------------------------------


def _known_migration(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    """A ``--to`` this version has no migration of, said as the option's before any database
    is opened (it was said after, and without naming the option)."""
    from streams.projection.migrate import revisions

    if value != "head" and value not in revisions():
        known = ", ".join(sorted(revisions()))
        raise click.BadParameter(
            f"no migration {value!r} in this version (it has {known}; head: the newest)"
        )
    return value


@click.command()
@click.option(
    "--to",
    "target",
    default="head",
    show_default=True,
    callback=_known_migration,
    help="the migration to bring the projection to: before rolling back to an older version, "
    "the newest it knows (its streams/projection/migrations/versions/)",
)
@click.option("--database-url", help=_DB_HELP.replace("to read", "to migrate"))
def migrate(target: str, database_url: str | None) -> None:
    """Bring the SQL projection to a migration: up (what a worker's projector does at start),
    or down before a rollback to an older version (stop this version's workers first: a
    projector of it migrates the projection up again at its start)."""
    from streams.errors import TalkstreamError
    from streams.projection import migrate as migrations
    from streams.projection.engine import make_engine, safe_url

    url = existing_projection(database_url)
    engine = make_engine(url)
    try:
        was, now = migrations.migrate_to(engine, target)
    except TalkstreamError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        engine.dispose()
    if was == now:
        click.echo(f"{safe_url(url)} is at migration {now} already")
    else:
        click.echo(f"{safe_url(url)}: migration {was or 'none'} -> {now}")
