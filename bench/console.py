"""The operator console's pages on a million requests: ``python -m bench.console``.

Fills a projection (SQLite, and PostgreSQL with ``--postgres URL`` or the private cluster of
``scripts/postgres.sh``) with ``--requests`` requests (default 1,000,000) and their transitions
by bulk inserts (``bench/console_data.py``; the schema from the real migrations, so the
console's indexes are the ones a deployment has), then serves the real console app on a loopback
port and times its pages over HTTP (a bearer token, as a script would): search pages with each
kind of filter, a deep page, timelines of random requests, a person, the overview. The pages
that read Kafka (a request's content frame, the dead letters) are not timed here: they read the
broker, not the projection (``bench/PROFILE.md``, twenty-sixth round, times them). Then
``talkstream stats`` on the same projection, as a command of its own (its time and its peak
memory).

Writes ``bench/results/console-latest.json`` and re-renders BENCHMARKS.md. The goal: search and
timeline pages under 300 ms.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import click
from aiohttp import web
from sqlalchemy import text
from sqlalchemy.engine import Engine

from bench.console_data import DAY_MS, fill
from streams.console.app import build_console
from streams.console.log import Content, Letters, Sought
from streams.console.pacing import Pacing
from streams.console.queries import ConsoleQueries
from streams.ops.redrive import RedriveReport, Selection
from streams.projection.engine import make_engine, safe_url
from streams.projection.store import ProjectionStore
from streams.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "bench" / "results" / "console-latest.json"
TOKEN = "bench-console-token-0123456789"
GOAL_MS = 300

# --- timing the pages -------------------------------------------------------------------------


class NoKafka:
    """The console's log seam: the timed pages never read Kafka."""

    async def letters(self) -> Letters:
        return Letters([])

    async def content(self, sought: Sought) -> Content:
        return Content()

    async def redrive(self, selection: Selection, *, dry_run: bool) -> RedriveReport:
        return RedriveReport()


async def no_workers() -> Pacing:
    return Pacing()


async def time_pages(engine: Engine, end_ms: int, repeat: int) -> dict[str, Any]:
    settings = Settings(console_worker_urls="")
    app = build_console(
        settings,
        ConsoleQueries(engine),
        NoKafka(),
        token=TOKEN,
        now_ms=lambda: end_ms,
        pacing=no_workers,
        database=safe_url(engine),
    )
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    base = f"http://127.0.0.1:{port}"
    rng = random.Random(7)
    with engine.connect() as connection:
        ids = [r for (r,) in connection.execute(text("SELECT request_id FROM requests LIMIT 5000"))]
        person = connection.execute(
            text("SELECT person FROM requests WHERE site = 'site-07' LIMIT 1")
        ).scalar_one()
    site_name, email = person.split(":", 1)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    pages: dict[str, Any] = {}
    async with aiohttp.ClientSession(base, headers=headers) as client:

        async def get(path: str) -> str:
            async with client.get(path) as response:
                body = await response.text()
                assert response.status == 200, (path, response.status, body[:500])
            if path.startswith("/requests") and "in_flight" not in path:
                assert 'class="rid"' in body, f"{path}: no request found"
            return body

        async def measure(name: str, kind: str, paths: Callable[[], Awaitable[str]]) -> None:
            await paths()  # warm: the first reads fill the caches
            times = []
            for _ in range(repeat):
                started = time.perf_counter()
                await paths()
                times.append((time.perf_counter() - started) * 1000)
            pages[name] = _summary(kind, times)

        def page(path: str) -> Callable[[], Awaitable[str]]:
            return lambda: get(path)

        async def twentieth() -> str:
            """The link to the 20th page of the big site, followed from the first (or to its
            last, when a small ``--requests`` gives it fewer)."""
            path = "/requests?site=site-00"
            for _ in range(19):
                body = await get(path)
                marker = 'id="older" href="'
                if marker not in body:
                    break
                path = body.split(marker, 1)[1].split('"', 1)[0].replace("&amp;", "&")
            return path

        async def timeline() -> str:
            return await get(f"/request?id={rng.choice(ids)}")

        day_ago = datetime.fromtimestamp((end_ms - DAY_MS) / 1000, UTC).strftime("%Y-%m-%dT%H:%MZ")
        await measure("search: newest", "search", page("/requests"))
        await measure("search: a site", "search", page("/requests?site=site-07"))
        await measure("search: the big site", "search", page("/requests?site=site-00"))
        await measure(
            "search: a site's failed", "search", page("/requests?site=site-07&state=failed")
        )
        await measure("search: all failed", "search", page("/requests?state=failed"))
        await measure("search: limited", "search", page("/requests?state=limited"))
        await measure("search: in flight", "search", page("/requests?state=in_flight"))
        await measure("search: an email, any site", "search", page(f"/requests?email={email}"))
        await measure(
            "search: a day ago, one hour",
            "search",
            page(f"/requests?since={day_ago}&until={(end_ms - DAY_MS + 3_600_000) // 1000}"),
        )
        await measure("search: the big site, 20th page", "search", page(await twentieth()))
        await measure("timeline: a random request", "timeline", timeline)
        await measure("person", "other", page(f"/person?site={site_name}&email={email}"))
        await measure("overview: last hour", "other", page("/?window=1h"))
        await measure("overview: last 24 hours", "other", page("/?window=24h"))
    await runner.cleanup()
    return pages


def _summary(kind: str, times: list[float]) -> dict[str, Any]:
    ordered = sorted(times)
    return {
        "kind": kind,
        "runs": len(times),
        "p50_ms": round(statistics.median(ordered), 1),
        "p95_ms": round(ordered[max(0, -(-95 * len(ordered) // 100) - 1)], 1),
        "max_ms": round(ordered[-1], 1),
    }


def run_backend(url: str, count: int, repeat: int) -> dict[str, Any]:
    engine = make_engine(url)
    ProjectionStore(engine).close()  # the schema, by the real migrations (0003: the indexes)
    engine = make_engine(url)
    end_ms = int(time.time() * 1000)
    click.echo(f"filling {safe_url(engine)} with {count:,} requests ...", err=True)
    seconds = fill(engine, count, end_ms)
    with engine.connect() as connection:
        transitions = connection.execute(text("SELECT count(*) FROM transitions")).scalar_one()
    click.echo(f"  {seconds:.0f} s; timing the pages ...", err=True)
    pages = asyncio.run(time_pages(engine, end_ms, repeat))
    engine.dispose()
    click.echo("  timing talkstream stats ...", err=True)
    return {
        "backend": engine.dialect.name,
        "requests": count,
        "transitions": transitions,
        "fill_seconds": round(seconds, 1),
        "pages": pages,
        "commands": {name: time_command(url, args) for name, args in COMMANDS.items()},
    }


# the commands timed on the projection, each in a process of its own
COMMANDS = {
    "stats: every request": ["stats"],
    "stats: the last 24 hours": ["stats", "--since", "24h"],
    "stats: the big site": ["stats", "--site", "site-00"],
}
COMMAND_RUNS = 3
# runs the command in this process, then reports the process's peak memory: VmHWM, its
# memory's high-water mark since the exec (getrusage's maximum would count this bench's own
# memory, which a forked child starts with and keeps across exec)
_MEASURED = (
    "import re, sys\n"
    "from streams.cli import main\n"
    "try:\n"
    "    main(sys.argv[1:], standalone_mode=False)\n"
    "finally:\n"
    "    status = open('/proc/self/status').read()\n"
    "    peak = re.search(r'VmHWM:\\s+(\\d+) kB', status).group(1)\n"
    "    print(f'peak-kib {peak}', file=sys.stderr)\n"
)


def time_command(url: str, args: list[str]) -> dict[str, Any]:
    """A command's wall time and peak memory, best and worst of a few runs."""
    seconds, peaks = [], []
    for _ in range(COMMAND_RUNS):
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-c", _MEASURED, *args, "--database-url", url],
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        seconds.append(time.monotonic() - started)
        if done.returncode != 0:
            raise click.ClickException(f"{' '.join(args)} failed:\n{done.stderr[-2000:]}")
        peaks.append(int(done.stderr.rsplit("peak-kib ", 1)[1].split()[0]) / 1024)
    return {
        "runs": COMMAND_RUNS,
        "seconds": [round(s, 2) for s in seconds],
        "peak_mib": [round(p) for p in peaks],
    }


def _postgres(url: str | None) -> str:
    if url:
        return url
    done = subprocess.run(
        [str(ROOT / "scripts" / "postgres.sh"), "start"], capture_output=True, text=True
    )
    if done.returncode != 0:
        raise click.ClickException(f"PostgreSQL could not be started:\n{done.stderr}")
    return done.stdout.strip().splitlines()[-1]


def _fresh_postgres(server: str) -> tuple[str, Callable[[], None]]:
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url

    name = f"bench_console_{os.getpid()}"
    admin = create_engine(make_url(server).set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return make_url(server).set(database=name).render_as_string(hide_password=False), drop


@click.command()
@click.option("--requests", "count", default=1_000_000, show_default=True)
@click.option("--repeat", default=30, show_default=True, help="timed loads of each page")
@click.option("--postgres", "postgres_url", help="a PostgreSQL server URL (default: start one)")
@click.option("--sqlite-only", is_flag=True)
@click.option("--no-write", is_flag=True, help="print only: no results file, no BENCHMARKS.md")
def main(
    count: int, repeat: int, postgres_url: str | None, sqlite_only: bool, no_write: bool
) -> None:
    """Time the console's pages on a projection of a million requests."""
    started = datetime.now(UTC)
    backends = []
    with tempfile.TemporaryDirectory(prefix="bench-console-") as folder:
        backends.append(run_backend(f"sqlite:///{folder}/projection.sqlite3", count, repeat))
    if not sqlite_only:
        url, drop = _fresh_postgres(_postgres(postgres_url))
        try:
            backends.append(run_backend(url, count, repeat))
        finally:
            drop()
    result = {
        "started_at": started.isoformat(timespec="seconds"),
        "command": "python -m bench.console " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}",
        "goal_ms": GOAL_MS,
        "backends": backends,
    }
    click.echo(markdown_section(result))
    if no_write:
        return
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    from bench import markdown, report

    report.DOC.write_text(markdown.document(report.load_latest()))


def markdown_section(result: dict[str, Any] | None = None) -> str:
    """BENCHMARKS.md's console section, from ``console-latest.json`` (empty if never run)."""
    if result is None:
        if not RESULT.exists():
            return ""
        result = json.loads(RESULT.read_text())
    backends = result["backends"]
    names = list(backends[0]["pages"])
    head = " | ".join(f"{b['backend']} p50 / p95 / max" for b in backends)
    lines = [
        "## Operator console",
        "",
        f"Command: `{result['command']}` ({result['started_at']}; {result['machine']}). "
        + "; ".join(
            f"{b['backend']}: {b['requests']:,} requests and {b['transitions']:,} transitions "
            f"bulk-loaded in {b['fill_seconds']:.0f} s"
            for b in backends
        )
        + ". Each page loaded over HTTP from the real console app (bearer token) "
        f"{backends[0]['pages'][names[0]]['runs']} times after one warm-up; times in ms, "
        f"goal for search and timeline pages: under {result['goal_ms']} ms.",
        "",
        f"| page | {head} |",
        "|---|" + "---|" * len(backends),
    ]
    for name in names:
        cells = []
        for b in backends:
            p = b["pages"][name]
            slow = p["kind"] != "other" and p["p95_ms"] > result["goal_ms"]
            cell = f"{p['p50_ms']:.0f} / {p['p95_ms']:.0f} / {p['max_ms']:.0f}"
            cells.append(f"**{cell}** (over the goal)" if slow else cell)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Search pages are keyset pages of 50 over the indexes of migration 0003 (a deep page "
        "costs what the first does); a timeline is one row and its transitions by index. The "
        "overview counts what ended in its window's whole minutes from the counts a minute of "
        "migration 0007, the rest and the latencies' percentiles from the indexes of migration "
        "0005 (the ended requests by time, those in flight); not a page: no goal.",
        "",
    ]
    if all("commands" in b for b in backends):
        commands = list(backends[0]["commands"])
        lines += [
            f"The same projection read by `talkstream stats` (a process of its own, "
            f"{backends[0]['commands'][commands[0]]['runs']} runs; its wall time, start-up "
            "included, and its peak memory):",
            "",
            "| command | " + " | ".join(f"{b['backend']} s / peak MiB" for b in backends) + " |",
            "|---|" + "---|" * len(backends),
        ]
        for name in commands:
            cells = [
                f"{min(c['seconds']):.1f}-{max(c['seconds']):.1f} / {max(c['peak_mib'])}"
                for c in (b["commands"][name] for b in backends)
            ]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
