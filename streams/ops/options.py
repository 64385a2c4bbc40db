"""What the operator commands share: a point in time as an option takes it, a range of two,
a coroutine run with its errors as the command's, a progress bar, and the projection to read."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from streams.settings import Settings

if TYPE_CHECKING:
    from streams.projection.store import ProjectionStore

T = TypeVar("T")

# where a command notes the database it opens, so that one that cannot be used is named in the
# one line the CLI says about it (``click.Context.meta`` is shared by the nested contexts)
DATABASE_URL_META = "talkstream.database_url"


def opening(url: str) -> str:
    """Note ``url`` as the database this command opens; returns it."""
    context = click.get_current_context(silent=True)
    if context is not None:
        context.meta[DATABASE_URL_META] = url
    return url


class Count(click.IntRange):
    """A whole number from ``least`` on, whose refusal says what the option takes: click's
    said "'abc' is not a valid integer range." (or "-1 is not in the range x>=0.")."""

    def __init__(self, least: int, takes: str) -> None:
        super().__init__(min=least)
        self.takes = takes

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            return super().convert(value, param, ctx)
        except click.BadParameter:
            option = f"{param.opts[0]} " if param is not None and param.opts else ""
            self.fail(f"{value!r}: {option}takes {self.takes}", param, ctx)


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


def in_order(since_ms: int | None, until_ms: int | None) -> None:
    """``--since``/``--until`` that end before they start: a usage error, not an empty answer."""
    from streams.ops.audit import check_range

    try:
        check_range(since_ms, until_ms, ("--since", "--until"))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--since'") from None


def run_async(coro: Any) -> Any:
    """Run a command's coroutine; Ctrl-C ends it with ``KeyboardInterrupt`` (asyncio cancels
    the coroutine at its next wait), even where a library swallows that cancellation on its way
    out: aiokafka's stop, awaiting its own tasks, took it for theirs, the command went on and
    exited 0 (an interrupted ``replay`` reported a whole rebuild)."""
    from streams.errors import TalkstreamError

    try:
        return asyncio.run(_heeding_ctrl_c(coro))
    except TalkstreamError as exc:
        raise click.ClickException(str(exc)) from None


async def _heeding_ctrl_c(coro: Any) -> Any:
    result = await coro
    task = asyncio.current_task()
    if task is not None and task.cancelling():  # asked to stop, and the request swallowed
        raise asyncio.CancelledError  # asyncio.run says it as the KeyboardInterrupt it was
    return result


def with_bar(label: str, work: Callable[[Callable[[int], None], Callable[[int], None]], T]) -> T:
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


def existing_projection(database_url: str | None) -> str:
    """The URL of the projection a command works on (``--database-url``, else the settings'),
    noted as the database it opens; a SQLite file that is not there is refused, naming what
    chose it (opening it would make an empty one, and at a mistyped path leave it there)."""
    from streams.projection.engine import parse_url, safe_url

    settings = None if database_url else Settings()
    url = opening(settings.resolved_database_url if settings is not None else str(database_url))
    parsed = parse_url(url)
    database = parsed.database
    file = parsed.get_backend_name() == "sqlite" and database not in (None, "", ":memory:")
    if file and not Path(str(database)).exists():
        raise click.ClickException(
            f"no projection at {safe_url(url)}: a worker's projector makes it when it starts; "
            f"{_which_projection(settings)}"
        )
    return url


def projection_reader(database_url: str | None) -> ProjectionStore:
    from streams.projection.engine import make_engine, safe_url
    from streams.projection.store import ProjectionStore

    url = existing_projection(database_url)
    store = ProjectionStore(make_engine(url), migrate_schema=False)
    if not store.is_current():
        from streams.projection import migrate

        why = migrate.not_current(store.engine)
        store.close()
        if why is not None:
            raise click.ClickException(why)
        raise click.ClickException(
            f"{safe_url(url)} is not a current projection: run the worker or `talkstream replay`"
        )
    return store


def _which_projection(settings: Settings | None) -> str:
    """What chose a projection file that is not there (``--database-url`` when ``settings``
    is None), and how to choose the workers': the default one is under the data directory,
    which is relative to the current directory (``make dev``'s ``.data`` is not found from
    another folder)."""
    if settings is None:
        return "is --database-url the workers' database?"
    if settings.database_url:
        return "is TALKSTREAM_DATABASE_URL the workers' database?"
    return (
        f"the default is under TALKSTREAM_DATA_DIR ({settings.data_dir}; unset: .data in the "
        "current directory): run this where the workers run, with their TALKSTREAM_DATA_DIR, "
        "or give --database-url"
    )


def site_spellings(store: ProjectionStore, site: str) -> list[str]:
    """``--site`` in any case: every spelling of the site the projection records (``acme``
    finds ``Acme``; ``shop`` finds ``Shop``, ``shop`` and ``SHOP``, each as its webhooks typed
    it, one site as the ledger counts it: ``models.params.site_identity``), as the console
    reads it; a name no site has is refused, naming the sites it has. One query for the
    spellings, then each read by equality (``site IN``: the indexes that lead with the site)."""
    from streams.console.queries import ConsoleQueries

    typed = site.strip()
    queries = ConsoleQueries(store.engine)
    spelled = queries.spellings(typed)
    if not spelled:  # said as a ``--to`` migration it has not is: the site, the ones it has
        raise click.BadParameter(unknown_site(typed, queries.sites()), param_hint="'--site'")
    return spelled


SITES_NAMED = 20  # the sites an unknown ``--site`` names, at most (a deployment has thousands)


def unknown_site(typed: str, sites: list[str]) -> str:
    """A ``--site`` no request of the projection has: the name given and the sites it has,
    those whose name contains it first (a site's spellings: one site, named as the console
    names it), ``SITES_NAMED`` at most. It was an empty range (exit 0) for ``stats``, and for
    ``audit`` a person not found, as a mistyped site's are."""
    from models.params import site_identity, site_named

    grouped: dict[str, list[str]] = {}
    for spelling in sites:
        grouped.setdefault(site_identity(spelling), []).append(spelling)
    if not grouped:
        return f"no site {typed!r} in this projection: it has no requests yet"
    folded = typed.casefold()
    named = sorted(
        (site_named(spelled) for spelled in grouped.values()),
        key=lambda name: (folded not in name.casefold(), name),
    )
    shown = ", ".join(named[:SITES_NAMED])
    more = f", and {len(named) - SITES_NAMED} more" if len(named) > SITES_NAMED else ""
    many = "site" if len(named) == 1 else "sites"
    return f"no site {typed!r} in this projection (it has {len(named)} {many}: {shown}{more})"


def site_shown(typed: str, spellings: list[str]) -> str:
    """The site as output names it: its one spelling (``Acme`` for ``acme``), else (several:
    ``Shop``, ``shop``) as the operator typed it."""
    return spellings[0] if len(spellings) == 1 else typed.strip()
