"""``talkstream redrive``: re-issue dead-lettered work once its cause is fixed, from the
command line (``streams/ops/redrive.py`` does it; the console's dead-letter page too)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from streams.ops.options import TIME, in_order, projection_reader, run_async, site_spellings
from streams.settings import Settings

if TYPE_CHECKING:
    from streams.projection.store import ProjectionStore


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
@click.option("--site", default=None, help="only parked work of this site (in any case)")
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
    help="reconsider letters redriven before (each run otherwise passes over the letters "
    "earlier runs redrove)",
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

    in_order(since_ms, until_ms)
    if request_id is not None:  # copied with a space or a line's end, as --site may be
        request_id = request_id.strip()
    settings = Settings()
    topic = _letters_from(settings, topic)
    parked_by = _ParkedBy(database_url)
    if site is not None:  # a site no request of the projection has: refused as stats does
        parked_by.check_site(site)
    selection = Selection(
        request_id=request_id,
        topic=topic,
        reason_contains=reason_contains,
        site=site.strip() if site is not None else None,  # in any case: every spelling
        since_ms=since_ms,
        until_ms=until_ms,
    )
    try:
        report = run_async(
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
    for what in report.too_old:
        click.echo(f"too old to redrive: {what}")
    for what in report.never_parked:
        click.echo(f"never parked, nothing to redrive: {what}")
    for what in report.undecodable:
        click.echo(f"does not decode, not redriven: {what}")
    click.echo(
        f"{report.examined} dead letters examined, {len(report.redriven)} "
        f"{'to redrive' if dry_run else 'redriven'}, {report.skipped} not selected, "
        f"{report.unreadable} unreadable"
        + (f", {len(report.not_parked)} not parked any more" if report.not_parked else "")
        + (f", {report.superseded} older of the same requests" if report.superseded else "")
        + (f", {report.repeated} more letters of the same records" if report.repeated else "")
        + (
            f", {len(report.earlier_attempt)} of an earlier attempt"
            if report.earlier_attempt
            else ""
        )
        + (f", {len(report.too_old)} too old to redrive" if report.too_old else "")
        + (f", {len(report.never_parked)} never parked" if report.never_parked else "")
        + (f", {report.empty} with no record to send back" if report.empty else "")
        + (f", {len(report.undecodable)} that do not decode" if report.undecodable else "")
    )
    if report.undecodable:
        count = len(report.undecodable)
        click.echo(
            f"{count} letter of a record that does not decode is not redriven: fix the producer;"
            " it stays in the dead-letter topic"
            if count == 1
            else f"{count} letters of records that do not decode are not redriven: fix the"
            " producer; they stay in the dead-letter topic"
        )
    if request_id is not None and not (
        report.redriven
        or report.not_parked
        or report.earlier_attempt
        or report.too_old
        or report.never_parked
        or report.undecodable
    ):
        # asked for one request, it said "0 redriven" and exited 0: a mistyped id looked done
        raise click.ClickException(
            f"no dead letter of request {request_id} to redrive: none the filters select "
            f"carries that id (the id the ingress answered? `talkstream audit --request-id "
            f"{request_id}` says whether it is parked), or an earlier run redrove it "
            "(--from-beginning reconsiders those)"
        )


class _ParkedBy:
    """The projection, to leave alone requests no longer parked: opened once there are
    letters to redrive. Without one, every selected letter goes to the ledger, which
    re-issues only what is still parked. (``--site`` is checked against it when there is one;
    a letter's command names its site, compared in any case, every spelling of the site
    selected.)"""

    def __init__(self, database_url: str | None) -> None:
        self.database_url = database_url
        self.store: ProjectionStore | None = None
        self.tried = False

    def check_site(self, site: str) -> None:
        """``--site`` as ``stats`` and ``audit`` take it: a site no request of the projection
        has is refused (exit 2), naming the sites it has (it redrove none and exited 0, as
        for a site with nothing parked: a mistyped site looked done). Without a projection,
        the letters alone say (each names its command's site)."""
        store = self._opened()
        if store is None:
            return
        try:
            site_spellings(store, site)
        except click.BadParameter:
            self.close()
            raise

    def states_of(self, request_ids: list[str]) -> dict[str, str]:
        store = self._opened()
        return store.states_of(request_ids) if store is not None else {}

    def _opened(self) -> ProjectionStore | None:
        if not self.tried:
            self.tried = True
            self.store = self._open()
        return self.store

    def _open(self) -> ProjectionStore | None:
        from sqlalchemy.exc import SQLAlchemyError

        try:
            return projection_reader(self.database_url)
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
